import { type FormEvent, useEffect, useId, useRef, useState } from 'react';
import { asApiRequestError } from '../api/errors';
import type { User } from '../protocol/generated/User';
import { newClientId } from '../state/ids';
import { MAX_TITLE_CHARS, isBlankText, messageLength } from '../state/session';
import { requestErrorText } from './format';
import { Modal } from './Modal';
import { PeopleSearch } from './PeopleSearch';
import { useChat, useSession } from './SessionContext';

export function NewGroupDialog({ onClose }: { onClose: () => void }) {
  const session = useSession();
  const me = useChat((s) => s.me);
  const [title, setTitle] = useState('');
  const [members, setMembers] = useState<User[]>([]);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const titleId = useId();
  // The last group asked for and its id: trying again after an error (a timeout, a lost connection) asks for the
  // same group with the same id, so a first attempt that did go through is not made twice. A changed title or
  // member list is another group, with a new id.
  const attempt = useRef<{ request: string; clientGroupId: string } | null>(null);
  const chipsRef = useRef<HTMLDivElement>(null);
  /**
   * Where focus goes once a removed member's chip is gone (its button had it, and focus would fall to the page,
   * out of the dialog, where Escape no longer closes it): the next chip's button, else the previous one's, else the
   * search.
   */
  const focusAfterRemoval = useRef<number | 'search' | null>(null);
  useEffect(() => {
    const target = focusAfterRemoval.current;
    if (target === null) return;
    focusAfterRemoval.current = null;
    const field = chipsRef.current;
    const element =
      target === 'search'
        ? field?.querySelector<HTMLElement>('input[type="search"]')
        : field?.querySelector<HTMLElement>(`[data-member-id="${target}"]`);
    element?.focus();
  }, [members]);

  function removeMember(id: number) {
    const index = members.findIndex((m) => m.id === id);
    focusAfterRemoval.current = (members[index + 1] ?? members[index - 1])?.id ?? 'search';
    setMembers((list) => list.filter((x) => x.id !== id));
  }

  async function onSubmit(event: FormEvent) {
    event.preventDefault();
    // Invisible characters only (a zero-width space, say) count as no name, as the server counts them.
    if (isBlankText(title)) {
      setError('Give the group a name.');
      return;
    }
    // Counted in characters (code points) after trimming, as the server counts them. The field has no `maxLength`:
    // that counts UTF-16 units, so it would stop a name of emoji at half the length the server takes.
    if (messageLength(title.trim()) > MAX_TITLE_CHARS) {
      setError(`A group name can be at most ${MAX_TITLE_CHARS} characters.`);
      return;
    }
    const memberIds = members.map((m) => m.id);
    const request = JSON.stringify([title.trim(), [...memberIds].sort((a, b) => a - b)]);
    if (attempt.current?.request !== request) attempt.current = { request, clientGroupId: newClientId() };
    const { clientGroupId } = attempt.current;
    setBusy(true);
    setError(null);
    try {
      await session.createGroup(title, memberIds, clientGroupId);
      onClose();
    } catch (e) {
      const err = asApiRequestError(e);
      setError(requestErrorText(err));
      setBusy(false);
    }
  }

  return (
    <Modal title="New group" onClose={onClose}>
      <form onSubmit={onSubmit} className="new-group">
        <div className="field">
          <label htmlFor={titleId}>Group name</label>
          <input
            id={titleId}
            value={title}
            onChange={(e) => setTitle(e.target.value)}
            data-autofocus
            autoComplete="off"
          />
        </div>
        <div className="field" ref={chipsRef}>
          <span className="field__label">Members</span>
          {members.length > 0 && (
            <ul className="chips" aria-label="Selected members">
              {members.map((m) => (
                <li key={m.id} className="chip">
                  {m.username}
                  <button
                    type="button"
                    className="chip__remove"
                    onClick={() => removeMember(m.id)}
                    aria-label={`Remove ${m.username}`}
                    data-member-id={m.id}
                  >
                    ×
                  </button>
                </li>
              ))}
            </ul>
          )}
          <PeopleSearch
            label="Add members"
            placeholder="Add people by username"
            actionLabel="Add"
            exclude={[me.id, ...members.map((m) => m.id)]}
            onPick={(user) => setMembers((list) => [...list, user])}
          />
        </div>
        <div className="form-error" role="alert">
          {error}
        </div>
        <div className="modal__footer">
          <button type="button" className="button button--ghost" onClick={onClose}>
            Cancel
          </button>
          <button type="submit" className="button button--primary" disabled={busy}>
            {busy ? 'Creating…' : 'Create group'}
          </button>
        </div>
      </form>
    </Modal>
  );
}
