import { Fragment, type ReactNode, useCallback, useEffect, useLayoutEffect, useRef, useState } from 'react';
import type { Message } from '../protocol/generated/Message';
import type { PendingSend } from '../state/pending';
import { type UsersCache, displayName } from '../state/users';
import { dayLabel, formatFull, formatTime, sameDay } from './format';

/** Within this distance of the bottom the list counts as "at the bottom" (new messages keep it there). */
const BOTTOM_SLACK_PX = 48;
/** Start loading older messages this close to the top. */
const TOP_PRELOAD_PX = 400;
/** Messages from the same sender within this time form one run (the name shows once). */
const RUN_GAP_MS = 5 * 60 * 1000;

const URL_PATTERN = /\bhttps?:\/\/[^\s<>"']+[^\s<>"'.,;:!?)\]]/g;

/** Plain text with http(s) links made clickable; nothing else is interpreted. */
function linkify(text: string): ReactNode[] {
  const out: ReactNode[] = [];
  let last = 0;
  for (const match of text.matchAll(URL_PATTERN)) {
    const index = match.index ?? 0;
    if (index > last) out.push(text.slice(last, index));
    out.push(
      <a key={index} href={match[0]} target="_blank" rel="noopener noreferrer">
        {match[0]}
      </a>,
    );
    last = index + match[0].length;
  }
  if (last < text.length) out.push(text.slice(last));
  return out;
}

function failureText(send: PendingSend): string {
  switch (send.error?.code) {
    case 'disconnected':
    case 'network':
      return 'Not sent yet — it will be sent when the connection is back.';
    case 'timeout':
      return 'Not sent — no answer in time.';
    case 'rate_limited':
      return 'Not sent — too many messages, wait a moment.';
    case 'forbidden':
      return "Not sent — you're not a member of this conversation.";
    case 'validation':
    case 'payload_too_large':
      return `Not sent — ${send.error.message}.`;
    default:
      return 'Not sent.';
  }
}

export interface MessageListProps {
  /** Changes when another conversation is shown (scroll resets to the bottom). */
  conversationKey: string;
  messages: readonly Message[];
  pending: readonly PendingSend[];
  meId: number;
  users: UsersCache;
  hasMoreBefore: boolean;
  loadingOlder: boolean;
  loadingNewest: boolean;
  /** Set when the newest messages could not be loaded: offers to try again. */
  onRetryLoad?: () => void;
  onLoadOlder: () => void;
  onRetry: (clientMessageId: string) => void;
  onDiscard: (clientMessageId: string) => void;
  onAtBottomChange: (atBottom: boolean) => void;
}

export function MessageList(props: MessageListProps) {
  const { messages, pending, meId, users, hasMoreBefore, loadingOlder, loadingNewest, onLoadOlder } = props;
  const scroller = useRef<HTMLDivElement>(null);
  const stick = useRef(true);
  const lastHeight = useRef(0);
  const firstSeq = useRef<number | undefined>(undefined);
  const lastSeq = useRef<number | undefined>(undefined);
  const pendingCount = useRef(0);
  const [atBottom, setAtBottom] = useState(true);
  const [newBelow, setNewBelow] = useState(0);
  const { onAtBottomChange, conversationKey } = props;
  // The session swallows a failed older page; here it shows as `loadingOlder` dropping with nothing added above.
  // Worked out while rendering (not in an effect) so the preload below never sees the flag drop before the
  // failure, which would ask again at once — a tight loop when the server refuses straight away.
  const oldest = messages[0]?.seq;
  const [older, setOlder] = useState({ loading: loadingOlder, key: conversationKey, oldest, failed: false });
  if (older.loading !== loadingOlder || older.key !== conversationKey) {
    const failed = !loadingOlder && older.loading && older.key === conversationKey && older.oldest === oldest && hasMoreBefore;
    setOlder({ loading: loadingOlder, key: conversationKey, oldest, failed });
  }
  const olderFailed = older.failed;

  const updateBottom = useCallback(
    (value: boolean) => {
      stick.current = value;
      setAtBottom(value);
      if (value) setNewBelow(0);
      onAtBottomChange(value);
    },
    [onAtBottomChange],
  );

  // A new conversation starts at its newest message.
  useLayoutEffect(() => {
    stick.current = true;
    firstSeq.current = undefined;
    lastSeq.current = undefined;
    setNewBelow(0);
    setAtBottom(true);
    onAtBottomChange(true);
  }, [conversationKey, onAtBottomChange]);

  // Keep the view steady: older messages added above keep what is on screen in place; new ones below follow
  // only when the reader was at the bottom (otherwise they are counted on the "jump" button).
  useLayoutEffect(() => {
    const el = scroller.current;
    if (!el) return;
    const first = messages[0]?.seq;
    const last = messages[messages.length - 1]?.seq;
    const prepended = first !== undefined && firstSeq.current !== undefined && first < firstSeq.current;
    if (prepended && !stick.current) {
      el.scrollTop += el.scrollHeight - lastHeight.current;
    } else if (stick.current) {
      el.scrollTop = el.scrollHeight;
    } else if (last !== undefined && lastSeq.current !== undefined && last > lastSeq.current) {
      const added = messages.filter((m) => m.seq > (lastSeq.current ?? 0) && m.senderId !== meId).length;
      if (added) setNewBelow((n) => n + added);
    }
    // The user's own new message always brings them to the bottom.
    if (pending.length > pendingCount.current) {
      el.scrollTop = el.scrollHeight;
      if (!stick.current) updateBottom(true);
    }
    pendingCount.current = pending.length;
    firstSeq.current = first;
    lastSeq.current = last;
    lastHeight.current = el.scrollHeight;
  }, [messages, pending, meId, updateBottom]);

  // A short history that does not fill the view cannot be scrolled up: fetch more right away. After a failure
  // only the Retry button asks again.
  useEffect(() => {
    const el = scroller.current;
    if (!el || el.clientHeight === 0) return;
    if (
      hasMoreBefore &&
      !loadingOlder &&
      !loadingNewest &&
      !olderFailed &&
      el.scrollHeight <= el.clientHeight + TOP_PRELOAD_PX / 4
    ) {
      onLoadOlder();
    }
  }, [messages, hasMoreBefore, loadingOlder, loadingNewest, olderFailed, onLoadOlder]);

  function onScroll() {
    const el = scroller.current;
    if (!el) return;
    const bottom = el.scrollHeight - el.scrollTop - el.clientHeight <= BOTTOM_SLACK_PX;
    if (bottom !== stick.current) updateBottom(bottom);
    if (el.scrollTop < TOP_PRELOAD_PX && hasMoreBefore && !loadingOlder && !olderFailed) onLoadOlder();
  }

  function jumpToLatest() {
    const el = scroller.current;
    if (!el) return;
    // Smooth over a short distance; a long way back down goes at once (a long smooth scroll feels stuck).
    const distance = el.scrollHeight - el.scrollTop - el.clientHeight;
    const reduced = typeof window.matchMedia === 'function' && window.matchMedia('(prefers-reduced-motion: reduce)').matches;
    if (typeof el.scrollTo === 'function' && distance < el.clientHeight * 2 && !reduced) {
      el.scrollTo({ top: el.scrollHeight, behavior: 'smooth' });
    } else {
      el.scrollTop = el.scrollHeight;
    }
    updateBottom(true);
  }

  const items: ReactNode[] = [];
  let previous: { senderId: number; at: number } | null = null;
  for (const m of messages) {
    const newDay = !previous || !sameDay(previous.at, m.sentAt);
    if (newDay) items.push(<DaySeparator key={`day-${m.seq}`} at={m.sentAt} />);
    const runStart = newDay || previous?.senderId !== m.senderId || m.sentAt - (previous?.at ?? 0) > RUN_GAP_MS;
    items.push(
      <MessageItem key={m.seq} message={m} own={m.senderId === meId} runStart={runStart} name={displayName(users, m.senderId)} />,
    );
    previous = { senderId: m.senderId, at: m.sentAt };
  }
  pending.forEach((p, i) => {
    if (i === 0 && (!previous || !sameDay(previous.at, p.createdAt))) {
      items.push(<DaySeparator key={`day-pending`} at={p.createdAt} />);
    }
    items.push(
      <PendingItem
        key={`pending-${p.clientMessageId}`}
        send={p}
        runStart={i === 0 && previous?.senderId !== meId}
        onRetry={props.onRetry}
        onDiscard={props.onDiscard}
      />,
    );
  });

  const empty = messages.length === 0 && pending.length === 0;

  return (
    <div className="message-pane">
      <div
        ref={scroller}
        className="messages"
        onScroll={onScroll}
        tabIndex={0}
        role="region"
        aria-label="Messages"
        aria-busy={loadingOlder || loadingNewest}
      >
        <div className="messages__top">
          {props.onRetryLoad && !loadingNewest ? (
            <p className="messages__loading" role="alert">
              Couldn't load the messages.{' '}
              <button type="button" className="link-button" onClick={props.onRetryLoad}>
                Retry
              </button>
            </p>
          ) : loadingOlder || loadingNewest ? (
            <p className="messages__loading" role="status">
              Loading messages…
            </p>
          ) : olderFailed ? (
            <p className="messages__loading" role="alert">
              Couldn't load earlier messages.{' '}
              <button type="button" className="link-button" onClick={onLoadOlder}>
                Retry
              </button>
            </p>
          ) : hasMoreBefore ? (
            <button type="button" className="button button--ghost button--small" onClick={onLoadOlder}>
              Load earlier messages
            </button>
          ) : !empty ? (
            <p className="messages__start">This is the beginning of the conversation.</p>
          ) : null}
        </div>
        {empty && !loadingNewest && !props.onRetryLoad ? (
          <p className="messages__empty">No messages yet. Say hello!</p>
        ) : (
          <ol className="messages__list">
            {items}
          </ol>
        )}
      </div>
      {!atBottom && (
        <button type="button" className="jump-button" onClick={jumpToLatest}>
          <svg viewBox="0 0 24 24" width="18" height="18" aria-hidden="true">
            <path d="M12 5v14M6 13l6 6 6-6" fill="none" stroke="currentColor" strokeWidth="2" strokeLinecap="round" strokeLinejoin="round" />
          </svg>
          {newBelow > 0 ? `${newBelow} new ${newBelow === 1 ? 'message' : 'messages'}` : 'Jump to latest'}
        </button>
      )}
    </div>
  );
}

function DaySeparator({ at }: { at: number }) {
  return (
    <li className="day-separator">
      <span>{dayLabel(at)}</span>
    </li>
  );
}

function MessageItem({ message, own, runStart, name }: { message: Message; own: boolean; runStart: boolean; name: string }) {
  return (
    <li
      className={`msg ${own ? 'msg--own' : 'msg--other'}${runStart ? ' msg--run-start' : ''}`}
      data-seq={message.seq}
      data-testid="message"
    >
      {runStart &&
        (own ? (
          <span className="visually-hidden">You:</span>
        ) : (
          <span className="msg__sender">{name}</span>
        ))}
      <div className="msg__bubble">
        <p className="msg__body">{linkify(message.body)}</p>
        <time className="msg__time" dateTime={new Date(message.sentAt).toISOString()} title={formatFull(message.sentAt)}>
          {formatTime(message.sentAt)}
        </time>
      </div>
    </li>
  );
}

function PendingItem({
  send,
  runStart,
  onRetry,
  onDiscard,
}: {
  send: PendingSend;
  runStart: boolean;
  onRetry: (id: string) => void;
  onDiscard: (id: string) => void;
}) {
  // Cut off by a disconnect (or written while offline): it goes out by itself after the reconnect; refused for a
  // passing reason (the service was busy or down): it goes out by itself after a pause. Either way it shows as
  // waiting rather than failed.
  const queued = send.status === 'failed' && send.autoResend;
  const offline = send.error?.code === 'disconnected' || send.error?.code === 'network';
  const failed = send.status === 'failed' && !send.autoResend;
  const state = failed ? 'msg--failed' : queued ? 'msg--pending msg--queued' : 'msg--pending';
  return (
    <li
      className={`msg msg--own${runStart ? ' msg--run-start' : ''} ${state}`}
      data-client-message-id={send.clientMessageId}
      data-testid="pending-message"
    >
      {runStart && <span className="visually-hidden">You:</span>}
      <div className="msg__bubble">
        <p className="msg__body">{linkify(send.body)}</p>
        <span className="msg__time">
          {failed ? (
            <Fragment>
              <svg viewBox="0 0 24 24" width="14" height="14" aria-hidden="true">
                <circle cx="12" cy="12" r="9" fill="none" stroke="currentColor" strokeWidth="2" />
                <path d="M12 7v6M12 16.5v.5" stroke="currentColor" strokeWidth="2" strokeLinecap="round" />
              </svg>
              <span className="visually-hidden">Not sent</span>
            </Fragment>
          ) : (
            <Fragment>
              <svg viewBox="0 0 24 24" width="14" height="14" aria-hidden="true">
                <circle cx="12" cy="12" r="9" fill="none" stroke="currentColor" strokeWidth="2" />
                <path d="M12 7v5l3 2" fill="none" stroke="currentColor" strokeWidth="2" strokeLinecap="round" />
              </svg>
              <span>{queued ? (offline ? 'Waiting for connection…' : 'Trying again shortly…') : 'Sending…'}</span>
            </Fragment>
          )}
        </span>
      </div>
      {failed && (
        <div className="msg__failure">
          <span role="status">{failureText(send)}</span>
          <button type="button" className="link-button" onClick={() => onRetry(send.clientMessageId)}>
            Retry
          </button>
          <button type="button" className="link-button link-button--muted" onClick={() => onDiscard(send.clientMessageId)}>
            Delete
          </button>
        </div>
      )}
      {/* Resent by itself for as long as the server refuses it: the user must be able to give up on it. Not
          "Delete": these failures (a timeout, say) may come after the message was stored, and then it arrives
          anyway. */}
      {queued && !offline && (
        <div className="msg__failure">
          <button
            type="button"
            className="link-button link-button--muted"
            title="It may have been delivered already; if so, it will still appear."
            onClick={() => onDiscard(send.clientMessageId)}
          >
            Stop trying
          </button>
        </div>
      )}
    </li>
  );
}
