import { useCallback, useEffect, useMemo, useState } from 'react';
import { directPeer } from '../state/conversations';
import { pendingFor } from '../state/pending';
import { conversationTitle } from '../state/session';
import { visibleMessages } from '../state/timeline';
import { displayName } from '../state/users';
import { Avatar } from './Avatar';
import { Composer } from './Composer';
import { plural } from './format';
import { MembersDialog } from './MembersDialog';
import { MessageList } from './MessageList';
import { useChat, useSession } from './SessionContext';

const EMPTY: never[] = [];

export function ConversationView({ onBack, drafts }: { onBack: () => void; drafts: Map<string, string> }) {
  const session = useSession();
  const selected = useChat((s) => s.selected);
  const me = useChat((s) => s.me);
  const users = useChat((s) => s.users);
  const pending = useChat((s) => s.pending);
  const connection = useChat((s) => s.connection);
  const conversationId = selected?.kind === 'conversation' ? selected.id : undefined;
  const state = useChat((s) => (conversationId !== undefined ? s.conversations[conversationId] : undefined));
  const timeline = useChat((s) => (conversationId !== undefined ? s.timelines[conversationId] : undefined));
  const loadingOlder = useChat((s) => (conversationId !== undefined ? !!s.loadingOlder[conversationId] : false));
  const loadingNewest = useChat((s) => (conversationId !== undefined ? !!s.loadingNewest[conversationId] : false));
  const loadFailed = useChat((s) => (conversationId !== undefined ? !!s.loadFailed[conversationId] : false));
  const [atBottom, setAtBottom] = useState(true);
  const [showMembers, setShowMembers] = useState(false);

  const conversation = state?.conversation;
  const peerId =
    selected?.kind === 'draft'
      ? selected.userId
      : conversation?.kind === 'direct'
        ? directPeer(conversation, me.id)
        : undefined;
  const messages = useMemo(() => (timeline ? visibleMessages(timeline) : EMPTY), [timeline]);
  const pendingHere = useMemo(
    () => pendingFor(pending, { ...(conversationId !== undefined ? { conversationId } : {}), ...(peerId !== undefined ? { directPeerId: peerId } : {}) }),
    [pending, conversationId, peerId],
  );
  const online = connection.status === 'open';
  const head = timeline?.head;
  const loaded = timeline !== undefined && timeline.lo !== null;
  const readSeq = state?.readSeq;

  // Reading: whenever the newest messages are on screen in a visible, focused window, move the read position.
  useEffect(() => {
    if (conversationId === undefined || !atBottom || !online || !loaded) return;
    const mark = () => {
      // Seen, not merely shown: a window visible beside the one the user works in is not read from.
      if (document.visibilityState !== 'hidden' && document.hasFocus()) session.markRead(conversationId);
    };
    mark();
    window.addEventListener('focus', mark);
    document.addEventListener('visibilitychange', mark);
    return () => {
      window.removeEventListener('focus', mark);
      document.removeEventListener('visibilitychange', mark);
    };
  }, [session, conversationId, atBottom, online, loaded, head, readSeq]);

  const onLoadOlder = useCallback(() => {
    if (conversationId !== undefined) void session.loadOlder(conversationId);
  }, [session, conversationId]);
  const onRetry = useCallback((id: string) => session.retry(id), [session]);
  const onDiscard = useCallback((id: string) => session.discard(id), [session]);

  if (!selected) return null;
  if (selected.kind === 'conversation' && !conversation) {
    return (
      <section className="conversation conversation--missing">
        <ConversationHeader title="Conversation" subtitle="" onBack={onBack} seed={0} group={false} />
        <p className="conversation__missing">This conversation isn't available.</p>
      </section>
    );
  }

  const title = conversation
    ? conversationTitle(conversation, me.id, users)
    : displayName(users, selected.kind === 'draft' ? selected.userId : 0);
  const group = conversation?.kind === 'group';
  const subtitle = group
    ? plural(conversation?.members.length ?? 0, 'member')
    : conversation
      ? 'Direct message'
      : 'New conversation';
  // A direct conversation goes by its peer, like the view of a person it starts from: when the first message (or a
  // `conversation` frame) turns that view into the conversation, what was typed meanwhile stays in the box, and
  // the view keeps its place. (There is one direct conversation per pair of people.)
  const key = peerId !== undefined && !group ? `u${peerId}` : `c${conversationId ?? ''}`;

  return (
    <section className="conversation" aria-labelledby="conversation-title">
      <ConversationHeader
        title={title}
        subtitle={subtitle}
        onBack={onBack}
        seed={group ? (conversation?.id ?? 0) * 7 : (peerId ?? 0)}
        group={group}
        {...(group ? { onMembers: () => setShowMembers(true) } : {})}
      />
      <MessageList
        conversationKey={key}
        messages={messages}
        pending={pendingHere}
        meId={me.id}
        users={users}
        hasMoreBefore={timeline?.hasMoreBefore ?? false}
        loadingOlder={loadingOlder}
        loadingNewest={loadingNewest || (!loadFailed && conversation !== undefined && timeline?.lo === null)}
        {...(loadFailed && conversationId !== undefined
          ? { onRetryLoad: () => void session.ensureLoaded(conversationId) }
          : {})}
        onLoadOlder={onLoadOlder}
        onRetry={onRetry}
        onDiscard={onDiscard}
        onAtBottomChange={setAtBottom}
      />
      <Composer
        placeholder={group ? `Message ${title}` : `Message ${title}`}
        onSend={(text) => session.send(text)}
        offline={!online && connection.hasConnected}
        focusKey={key}
        drafts={drafts}
      />
      {showMembers && conversation && <MembersDialog conversation={conversation} onClose={() => setShowMembers(false)} />}
    </section>
  );
}

function ConversationHeader({
  title,
  subtitle,
  onBack,
  onMembers,
  seed,
  group,
}: {
  title: string;
  subtitle: string;
  onBack: () => void;
  onMembers?: () => void;
  seed: number;
  group: boolean;
}) {
  return (
    <header className="conversation-header">
      <button type="button" className="icon-button back-button" onClick={onBack} aria-label="Back to conversations">
        <svg viewBox="0 0 24 24" width="22" height="22" aria-hidden="true">
          <path d="M15 5l-7 7 7 7" fill="none" stroke="currentColor" strokeWidth="2" strokeLinecap="round" strokeLinejoin="round" />
        </svg>
      </button>
      <Avatar name={title} seed={seed} size={36} group={group} />
      <div className="conversation-header__text">
        <h2 id="conversation-title">{title}</h2>
        {subtitle && <p>{subtitle}</p>}
      </div>
      {onMembers && (
        <button type="button" className="button button--ghost button--small" onClick={onMembers}>
          Members
        </button>
      )}
    </header>
  );
}
