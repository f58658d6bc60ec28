import { useCallback, useEffect, useState } from 'react';
import { type RestClient, createRestClient } from './api/rest';
import type { WebSocketFactory } from './api/ws';
import { AuthScreen } from './components/AuthScreen';
import { ChatShell } from './components/ChatShell';
import { SessionContext } from './components/SessionContext';
import type { AuthResponse } from './protocol/generated/AuthResponse';
import {
  EXPIRY_MARGIN_MS,
  MAX_TIMER_MS,
  type StorageLike,
  type StoredAuth,
  clearAuth,
  loadAuth,
  safeLocalStorage,
  saveAuth,
} from './state/auth';
import { ChatSession, type SessionOptions } from './state/session';

export interface AppProps {
  rest?: RestClient;
  storage?: StorageLike;
  /** Tests pass a fake socket; the browser uses the real one. */
  createSocket?: WebSocketFactory;
  socketUrl?: string;
  sessionOptions?: Partial<SessionOptions>;
}

export function App({ rest: restProp, storage: storageProp, createSocket, socketUrl, sessionOptions }: AppProps) {
  const [rest] = useState(() => restProp ?? createRestClient());
  const [storage] = useState(() => storageProp ?? safeLocalStorage());
  /** This tab's token: the one its session connects with (refreshed in place, so not always the stored one). */
  const [auth, setAuth] = useState<StoredAuth | null>(() => loadAuth(storage));
  /** Counts the sessions started for the same user: a new one starts when this tab takes over another's token. */
  const [generation, setGeneration] = useState(0);
  const [notice, setNotice] = useState<string | null>(null);

  /** "Log out": in every tab. */
  const logout = useCallback(() => {
    clearAuth(storage);
    setAuth(null);
    setNotice(null);
  }, [storage]);

  /**
   * This tab's token is over: expired, or refused by the gateway. Another tab may have kept the same user's
   * session going meanwhile (it refreshed while this one slept, or while this one's refreshes failed): then carry
   * on with its stored token, in a new session, rather than log every tab out. Otherwise log out here, clearing
   * the stored token only if it is this tab's own, or not valid: another tab's is that tab's business.
   */
  const sessionOver = useCallback(
    (current: StoredAuth, reason: string) => {
      const stored = loadAuth(storage);
      if (stored && stored.user.id === current.user.id && stored.token !== current.token) {
        setAuth(stored);
        setGeneration((n) => n + 1);
        return;
      }
      if (!stored || stored.token === current.token) clearAuth(storage);
      setAuth(null);
      setNotice(reason);
    },
    [storage],
  );

  /** The session refreshed this tab's token. */
  const refreshed = useCallback(
    (next: AuthResponse) => {
      // Saved for reloads and new tabs, unless another tab logged out or in as someone else meanwhile (its storage
      // event is on its way here) or saved a newer token of its own.
      const stored = loadAuth(storage);
      if (stored && stored.user.id === next.user.id && stored.expiresAt <= next.expiresAt) saveAuth(storage, next);
      setAuth(next);
    },
    [storage],
  );

  // The token's lifetime is the session's (the session refreshes it in time, while it can): it is over when the
  // token expires (checking again after setTimeout's longest delay, for tokens that live longer than that).
  const [expiryCheck, setExpiryCheck] = useState(0);
  useEffect(() => {
    if (!auth) return;
    const ms = Math.max(0, auth.expiresAt - EXPIRY_MARGIN_MS - Date.now());
    const timer =
      ms > MAX_TIMER_MS
        ? setTimeout(() => setExpiryCheck((n) => n + 1), MAX_TIMER_MS)
        : setTimeout(() => sessionOver(auth, 'Your session expired. Please log in again.'), ms);
    return () => clearTimeout(timer);
  }, [auth, sessionOver, expiryCheck]);

  // Logging in or out in another tab does the same here. Another token of the same user (that tab refreshed, or
  // signed in again) changes nothing: this tab's socket lives by this tab's own token, which it refreshes itself.
  useEffect(() => {
    const onStorage = (event: StorageEvent) => {
      if (event.key !== null && event.key !== 'warren.auth') return;
      const next = loadAuth(storage);
      setAuth((current) => (current && next && current.user.id === next.user.id ? current : next));
    };
    window.addEventListener('storage', onStorage);
    return () => window.removeEventListener('storage', onStorage);
  }, [storage]);

  if (!auth) {
    return (
      <AuthScreen
        rest={rest}
        notice={notice}
        onAuthenticated={(next) => {
          saveAuth(storage, next);
          setNotice(null);
          setAuth(next);
        }}
      />
    );
  }
  return (
    // Not keyed by the token: a refreshed one must not remount the chat (its state, its socket).
    <ChatApp
      key={`${auth.user.id}/${generation}`}
      auth={auth}
      options={{
        rest,
        ...(storage ? { storage } : {}),
        ...(createSocket ? { createSocket } : {}),
        ...(socketUrl ? { socketUrl } : {}),
        ...sessionOptions,
      }}
      onAuthRefreshed={refreshed}
      onSessionOver={(reason) => sessionOver(auth, reason)}
      onLogout={logout}
    />
  );
}

function ChatApp({
  auth,
  options,
  onAuthRefreshed,
  onSessionOver,
  onLogout,
}: {
  /** The token to start with; the session refreshes it itself. */
  auth: StoredAuth;
  options: Partial<SessionOptions>;
  onAuthRefreshed: (next: AuthResponse) => void;
  onSessionOver: (reason: string) => void;
  onLogout: () => void;
}) {
  const [session] = useState(
    () =>
      new ChatSession({
        ...options,
        auth,
        onAuthRefreshed: (next) => onAuthRefreshedRef.current(next),
        onUnauthorized: () => onSessionOverRef.current('Your session ended. Please log in again.'),
      }),
  );
  const onAuthRefreshedRef = useLatest(onAuthRefreshed);
  const onSessionOverRef = useLatest(onSessionOver);

  useEffect(() => {
    session.start();
    return () => session.stop();
  }, [session]);

  return (
    <SessionContext.Provider value={session}>
      <ChatShell
        onLogout={() => {
          session.stop();
          session.discardLocalData();
          onLogout();
        }}
      />
    </SessionContext.Provider>
  );
}

function useLatest<T>(value: T): { current: T } {
  const [ref] = useState(() => ({ current: value }));
  ref.current = value;
  return ref;
}
