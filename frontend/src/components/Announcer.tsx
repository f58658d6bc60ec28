import { useChat } from './SessionContext';

/** A polite live region: screen readers hear new messages without the history being re-read. */
export function Announcer() {
  const announcement = useChat((s) => s.announcement);
  return (
    <div className="visually-hidden" aria-live="polite" aria-atomic="true" data-testid="announcer">
      <span key={announcement.n}>{announcement.text}</span>
    </div>
  );
}
