import { type KeyboardEvent, useEffect, useId, useRef, useState } from 'react';
import type { User } from '../protocol/generated/User';
import { Avatar } from './Avatar';
import { useSession } from './SessionContext';

/**
 * Search people by username prefix (`getUsers`). Results are buttons: Tab or the arrow keys reach them, Enter
 * picks one. Enter in the box picks the person typed in full, or the only one found.
 */
export function PeopleSearch({
  label,
  placeholder,
  onPick,
  exclude = [],
  actionLabel = 'Message',
  autoFocus = false,
  debounceMs = 200,
}: {
  label: string;
  placeholder?: string;
  onPick: (user: User) => void;
  exclude?: readonly number[];
  actionLabel?: string;
  autoFocus?: boolean;
  debounceMs?: number;
}) {
  const session = useSession();
  const [query, setQuery] = useState('');
  const [results, setResults] = useState<User[] | null>(null);
  /** The text `results` answer: until the answer for what is typed now comes, they are another search's. */
  const [resultsFor, setResultsFor] = useState('');
  const [failed, setFailed] = useState(false);
  const inputId = useId();
  const listId = useId();
  const inputRef = useRef<HTMLInputElement>(null);
  const listRef = useRef<HTMLUListElement>(null);
  const latest = useRef(0);

  useEffect(() => {
    const prefix = query.trim();
    if (!prefix) {
      // A search still on its way is for a box that has been cleared since: its answer must not show.
      latest.current++;
      setResults(null);
      setFailed(false);
      return;
    }
    const n = ++latest.current;
    const timer = setTimeout(() => {
      session
        .searchUsers(prefix)
        .then((users) => {
          if (latest.current !== n) return;
          setResults(users);
          setResultsFor(prefix);
          setFailed(false);
        })
        .catch(() => {
          if (latest.current !== n) return;
          setResults([]);
          setFailed(true);
        });
    }, debounceMs);
    return () => clearTimeout(timer);
  }, [query, session, debounceMs]);

  const shown = results?.filter((u) => !exclude.includes(u.id)) ?? null;

  function focusResult(index: number) {
    const buttons = listRef.current?.querySelectorAll<HTMLButtonElement>('button');
    if (!buttons || buttons.length === 0) return;
    const i = Math.max(-1, Math.min(index, buttons.length - 1));
    if (i < 0) inputRef.current?.focus();
    else buttons[i]?.focus();
  }

  function onInputKey(event: KeyboardEvent<HTMLInputElement>) {
    if (event.key === 'Enter') {
      // Never the enclosing form's submit (New group would be created without the person being typed): Enter
      // picks the person whose name was typed in full, or the only one found; otherwise it moves to the results.
      event.preventDefault();
      if (event.nativeEvent.isComposing) return;
      // Only from the answer to what is typed now: the list still shown can be an earlier search's.
      if (!shown || resultsFor !== query.trim()) return;
      const typed = query.trim().toLowerCase();
      const match = shown.find((u) => u.username.toLowerCase() === typed) ?? (shown.length === 1 ? shown[0] : undefined);
      if (match) pick(match);
      else focusResult(0);
    } else if (event.key === 'ArrowDown') {
      event.preventDefault();
      focusResult(0);
    } else if (event.key === 'Escape' && query) {
      // Clears the box only: a dialog around it stays open.
      event.preventDefault();
      event.stopPropagation();
      setQuery('');
    }
  }

  function onResultKey(event: KeyboardEvent<HTMLButtonElement>, index: number) {
    if (event.key === 'ArrowDown') {
      event.preventDefault();
      focusResult(index + 1);
    } else if (event.key === 'ArrowUp') {
      event.preventDefault();
      focusResult(index - 1);
    } else if (event.key === 'Escape') {
      event.preventDefault();
      event.stopPropagation();
      setQuery('');
      inputRef.current?.focus();
    }
  }

  function pick(user: User) {
    onPick(user);
    setQuery('');
    inputRef.current?.focus();
  }

  return (
    <div className="people-search">
      <label htmlFor={inputId} className="visually-hidden">
        {label}
      </label>
      <div className="search-input">
        <svg viewBox="0 0 24 24" width="18" height="18" aria-hidden="true">
          <circle cx="11" cy="11" r="6.5" fill="none" stroke="currentColor" strokeWidth="2" />
          <path d="M16 16l4 4" stroke="currentColor" strokeWidth="2" strokeLinecap="round" />
        </svg>
        <input
          ref={inputRef}
          id={inputId}
          type="search"
          placeholder={placeholder ?? label}
          autoComplete="off"
          autoCapitalize="none"
          spellCheck={false}
          value={query}
          onChange={(e) => setQuery(e.target.value)}
          onKeyDown={onInputKey}
          aria-controls={shown ? listId : undefined}
          autoFocus={autoFocus}
        />
      </div>
      {shown && (
        <div className="people-search__results">
          <p className="visually-hidden" role="status">
            {failed ? 'Search failed' : `${shown.length} ${shown.length === 1 ? 'person' : 'people'} found`}
          </p>
          {shown.length === 0 ? (
            <p className="people-search__empty">{failed ? "Couldn't search right now." : 'No one found with that name.'}</p>
          ) : (
            <ul id={listId} ref={listRef} aria-label="People">
              {shown.map((user, index) => (
                <li key={user.id}>
                  <button type="button" className="person" onClick={() => pick(user)} onKeyDown={(e) => onResultKey(e, index)}>
                    <Avatar name={user.username} seed={user.id} size={32} />
                    <span className="person__name">{user.username}</span>
                    <span className="person__action">
                      {actionLabel}
                      <span className="visually-hidden"> {user.username}</span>
                    </span>
                  </button>
                </li>
              ))}
            </ul>
          )}
        </div>
      )}
    </div>
  );
}
