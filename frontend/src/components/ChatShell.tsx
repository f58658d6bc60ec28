import { useEffect, useRef, useState } from 'react';
import { unreadCount } from '../state/conversations';
import { Announcer } from './Announcer';
import { Avatar } from './Avatar';
import { ConnectionBanner } from './ConnectionBanner';
import { ConversationList } from './ConversationList';
import { ConversationView } from './ConversationView';
import { NewGroupDialog } from './NewGroupDialog';
import { PeopleSearch } from './PeopleSearch';
import { useChat, useSession } from './SessionContext';

/** Two panes on wide screens (list + conversation), one at a time on narrow ones. */
export function ChatShell({ onLogout }: { onLogout: () => void }) {
  const session = useSession();
  const me = useChat((s) => s.me);
  const selected = useChat((s) => s.selected);
  const notice = useChat((s) => s.notice);
  const conversations = useChat((s) => s.conversations);
  const [newGroup, setNewGroup] = useState(false);
  /** What is typed in the message box, per conversation (see `Composer`): for as long as the chat is open. */
  const [drafts] = useState(() => new Map<string, string>());

  const totalUnread = Object.values(conversations).reduce((n, c) => n + unreadCount(c), 0);
  useEffect(() => {
    document.title = totalUnread > 0 ? `(${totalUnread}) Warren` : 'Warren';
  }, [totalUnread]);
  useEffect(() => () => void (document.title = 'Warren'), []);

  // A conversation closed other than by Back (the user left it or was removed; the Members dialog and the
  // view go together) leaves focus on nothing, the page itself: keyboard and screen-reader users are put on the
  // pane that replaces it instead.
  const emptyHeading = useRef<HTMLHeadingElement>(null);
  const wasSelected = useRef(selected !== null);
  useEffect(() => {
    const closed = wasSelected.current && selected === null;
    wasSelected.current = selected !== null;
    if (!closed) return;
    const frame = requestAnimationFrame(() => {
      if (document.activeElement === null || document.activeElement === document.body) emptyHeading.current?.focus();
    });
    return () => cancelAnimationFrame(frame);
  }, [selected]);

  function back() {
    const id = selected?.kind === 'conversation' ? selected.id : undefined;
    session.select(null);
    // Return focus to the conversation just left, so keyboard users keep their place.
    requestAnimationFrame(() => {
      const item = id !== undefined ? document.querySelector<HTMLElement>(`[data-conversation-id="${id}"]`) : null;
      item?.focus();
    });
  }

  return (
    <div className={`shell ${selected ? 'shell--conversation' : 'shell--list'}`}>
      <ConnectionBanner />
      <aside className="sidebar" aria-label="Conversations and people">
        <header className="sidebar__header">
          <div className="me">
            <Avatar name={me.username} seed={me.id} size={34} />
            <div className="me__text">
              <span className="me__label">Signed in as</span>
              <span className="me__name">{me.username}</span>
            </div>
          </div>
          <button type="button" className="icon-button" onClick={() => setNewGroup(true)} aria-label="New group" title="New group">
            <svg viewBox="0 0 24 24" width="22" height="22" aria-hidden="true">
              <circle cx="9" cy="8" r="3.2" fill="none" stroke="currentColor" strokeWidth="1.8" />
              <path d="M3 19c0-3.3 2.7-5.5 6-5.5s6 2.2 6 5.5" fill="none" stroke="currentColor" strokeWidth="1.8" strokeLinecap="round" />
              <path d="M19 8v6M16 11h6" stroke="currentColor" strokeWidth="1.8" strokeLinecap="round" />
            </svg>
          </button>
          <button type="button" className="button button--ghost button--small" onClick={onLogout}>
            Log out
          </button>
        </header>
        <PeopleSearch
          label="Find people"
          placeholder="Find people to message"
          exclude={[me.id]}
          onPick={(user) => session.openDirect(user.id)}
        />
        <ConversationList />
      </aside>
      <main className="main">
        {selected ? (
          <ConversationView onBack={back} drafts={drafts} />
        ) : (
          <div className="main__empty">
            <svg viewBox="0 0 64 64" width="72" height="72" aria-hidden="true">
              <path d="M12 18c0-4.4 3.6-8 8-8h24c4.4 0 8 3.6 8 8v16c0 4.4-3.6 8-8 8H30l-10 9v-9c-4.4 0-8-3.6-8-8z" fill="none" stroke="currentColor" strokeWidth="3" strokeLinejoin="round" />
            </svg>
            <h2 ref={emptyHeading} tabIndex={-1}>
              Pick a conversation
            </h2>
            <p>Or find someone by name to start a new one.</p>
          </div>
        )}
      </main>
      {notice && (
        <div className="toast" role="status">
          <span>{notice}</span>
          <button type="button" className="link-button" onClick={() => session.dismissNotice()}>
            Dismiss
          </button>
        </div>
      )}
      <Announcer />
      {newGroup && <NewGroupDialog onClose={() => setNewGroup(false)} />}
    </div>
  );
}
