import { useEffect, useState } from 'react';
import { useChat, useSession } from './SessionContext';

/** "Reconnecting…" while the socket is down, with the time to the next attempt and a way to try now. */
export function ConnectionBanner() {
  const session = useSession();
  const connection = useChat((s) => s.connection);
  const [now, setNow] = useState(() => Date.now());
  const waiting = connection.status === 'reconnecting' && connection.retryAt !== undefined;

  useEffect(() => {
    if (!waiting) return;
    const timer = setInterval(() => setNow(Date.now()), 1_000);
    return () => clearInterval(timer);
  }, [waiting]);

  const down = connection.status === 'reconnecting' || (connection.status === 'connecting' && connection.hasConnected);
  const connecting = connection.status === 'connecting' && !connection.hasConnected;
  const seconds = waiting ? Math.ceil(((connection.retryAt ?? now) - now) / 1000) : 0;

  return (
    <div className="banner-slot" role="status" aria-live="polite">
      {down && (
        <div className="banner banner--warning">
          <span className="spinner" aria-hidden="true" />
          <span>
            Reconnecting…
            {/* Visible only: inside the live region a countdown would be read out every second. */}
            {seconds > 1 && <span className="banner__detail" aria-hidden="true"> Next try in {seconds} s.</span>}
          </span>
          <button type="button" className="link-button" onClick={() => session.reconnectNow()}>
            Retry now
          </button>
        </div>
      )}
      {connecting && (
        <div className="banner banner--info">
          <span className="spinner" aria-hidden="true" />
          <span>Connecting…</span>
        </div>
      )}
    </div>
  );
}
