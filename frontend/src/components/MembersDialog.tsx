import { useEffect, useRef, useState } from 'react';
import { asApiRequestError } from '../api/errors';
import type { Conversation } from '../protocol/generated/Conversation';
import { displayName } from '../state/users';
import { Avatar } from './Avatar';
import { requestErrorText } from './format';
import { Modal } from './Modal';
import { PeopleSearch } from './PeopleSearch';
import { useChat, useSession } from './SessionContext';

/** A group's members: add people, remove someone, or leave. */
export function MembersDialog({ conversation, onClose }: { conversation: Conversation; onClose: () => void }) {
  const session = useSession();
  const users = useChat((s) => s.users);
  const me = useChat((s) => s.me);
  // Follow live membership changes while the dialog is open.
  const live = useChat((s) => s.conversations[conversation.id]?.conversation) ?? conversation;
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [confirmLeave, setConfirmLeave] = useState(false);
  const listRef = useRef<HTMLUListElement>(null);
  /**
   * Where focus goes once a removal is over and the buttons are enabled again: after a removal, the next member's
   * Remove (else the previous one's, else the search), since the removed member's button, which had focus, is gone
   * and focus would fall to the page, out of the dialog, where Escape no longer closes it; after a failure, the
   * same button again.
   */
  const focusAfterRemoval = useRef<number | 'search' | null>(null);
  useEffect(() => {
    const target = focusAfterRemoval.current;
    if (busy || target === null) return;
    focusAfterRemoval.current = null;
    const element =
      target === 'search'
        ? listRef.current?.closest('[role="dialog"]')?.querySelector<HTMLElement>('input[type="search"]')
        : listRef.current?.querySelector<HTMLElement>(`[data-member-id="${target}"]`);
    element?.focus();
  });

  function remove(id: number) {
    const others = live.members.filter((m) => m !== me.id);
    const index = others.indexOf(id);
    const neighbour = others[index + 1] ?? others[index - 1];
    focusAfterRemoval.current = id;
    void run(
      () => session.removeMember(live.id, id),
      () => (focusAfterRemoval.current = neighbour ?? 'search'),
    );
  }

  useEffect(() => {
    void session.resolveUsers(live.members);
  }, [session, live.members]);

  async function run(action: () => Promise<unknown>, done?: () => void) {
    setBusy(true);
    setError(null);
    try {
      await action();
      done?.();
    } catch (e) {
      const err = asApiRequestError(e);
      setError(err.code === 'forbidden' ? "You're not allowed to do that." : requestErrorText(err));
    } finally {
      setBusy(false);
    }
  }

  return (
    <Modal title={`Members of ${live.title ?? 'this group'}`} onClose={onClose}>
      <PeopleSearch
        label="Add people"
        placeholder="Add people by username"
        actionLabel="Add"
        exclude={live.members}
        onPick={(user) => void run(() => session.addMembers(live.id, [user.id]))}
      />
      <ul className="member-list" aria-label="Members" ref={listRef}>
        {live.members.map((id) => (
          <li key={id} className="member">
            <Avatar name={displayName(users, id)} seed={id} size={32} />
            <span className="member__name">
              {displayName(users, id)}
              {id === me.id && <span className="member__you"> (you)</span>}
            </span>
            {id !== me.id && (
              <button
                type="button"
                className="button button--ghost button--small"
                disabled={busy}
                onClick={() => remove(id)}
                data-member-id={id}
              >
                Remove<span className="visually-hidden"> {displayName(users, id)}</span>
              </button>
            )}
          </li>
        ))}
      </ul>
      <div className="form-error" role="alert">
        {error}
      </div>
      <div className="modal__footer">
        {confirmLeave ? (
          <>
            <span>Leave this group? You won't get its messages any more.</span>
            <button type="button" className="button button--ghost" onClick={() => setConfirmLeave(false)}>
              Cancel
            </button>
            <button
              type="button"
              className="button button--danger"
              disabled={busy}
              onClick={() => void run(() => session.leave(live.id), onClose)}
              autoFocus
            >
              Leave group
            </button>
          </>
        ) : (
          <button type="button" className="button button--danger-ghost" onClick={() => setConfirmLeave(true)}>
            Leave group…
          </button>
        )}
      </div>
    </Modal>
  );
}
