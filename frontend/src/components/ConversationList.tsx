import { useMemo } from 'react';
import { type ConversationState, directPeer, sortConversations, unreadCount } from '../state/conversations';
import { conversationTitle } from '../state/session';
import { displayName } from '../state/users';
import { Avatar } from './Avatar';
import { listTime } from './format';
import { useChat, useSession } from './SessionContext';

export function ConversationList() {
  const session = useSession();
  const conversations = useChat((s) => s.conversations);
  const users = useChat((s) => s.users);
  const me = useChat((s) => s.me);
  const selected = useChat((s) => s.selected);
  const synced = useChat((s) => s.synced);
  const sorted = useMemo(() => sortConversations(conversations), [conversations]);

  if (sorted.length === 0) {
    return (
      <div className="conversation-list__empty">
        {synced ? (
          <>
            <p>No conversations yet.</p>
            <p>Find someone above to send your first message, or start a group.</p>
          </>
        ) : (
          <p role="status">Loading conversations…</p>
        )}
      </div>
    );
  }

  return (
    <nav className="conversation-list" aria-label="Conversations">
      <ul>
        {sorted.map((c) => (
          <ConversationItem
            key={c.conversation.id}
            state={c}
            title={conversationTitle(c.conversation, me.id, users)}
            preview={preview(c, me.id, users)}
            seed={c.conversation.kind === 'group' ? c.conversation.id * 7 : (directPeer(c.conversation, me.id) ?? c.conversation.id)}
            current={selected?.kind === 'conversation' && selected.id === c.conversation.id}
            onOpen={() => session.select({ kind: 'conversation', id: c.conversation.id })}
          />
        ))}
      </ul>
    </nav>
  );
}

function preview(c: ConversationState, meId: number, users: Parameters<typeof displayName>[0]): string {
  const m = c.lastMessage;
  if (!m) return c.conversation.kind === 'group' ? 'Group created' : 'No messages yet';
  const body = m.body.replace(/\s+/g, ' ');
  if (m.senderId === meId) return `You: ${body}`;
  if (c.conversation.kind === 'group') return `${displayName(users, m.senderId)}: ${body}`;
  return body;
}

function ConversationItem({
  state,
  title,
  preview: text,
  seed,
  current,
  onOpen,
}: {
  seed: number;
  state: ConversationState;
  title: string;
  preview: string;
  current: boolean;
  onOpen: () => void;
}) {
  const unread = unreadCount(state);
  const c = state.conversation;
  const unreadLabel = unread > 0 ? `${unread} unread ${unread === 1 ? 'message' : 'messages'}` : '';
  return (
    <li>
      <button
        type="button"
        className={`conversation-item${current ? ' is-current' : ''}${unread > 0 ? ' has-unread' : ''}`}
        aria-current={current ? 'true' : undefined}
        onClick={onOpen}
        data-conversation-id={c.id}
      >
        <Avatar name={title} seed={seed} group={c.kind === 'group'} />
        <span className="conversation-item__text">
          <span className="conversation-item__top">
            <span className="conversation-item__title">{title}</span>
            <time className="conversation-item__time" dateTime={new Date(c.lastActivityAt).toISOString()}>
              {listTime(c.lastActivityAt)}
            </time>
          </span>
          <span className="conversation-item__bottom">
            <span className="conversation-item__preview">{text}</span>
            {unread > 0 && (
              <span className="badge" data-testid="unread-badge">
                <span aria-hidden="true">{unread > 99 ? '99+' : unread}</span>
                <span className="visually-hidden">{unreadLabel}</span>
              </span>
            )}
          </span>
        </span>
      </button>
    </li>
  );
}
