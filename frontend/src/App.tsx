import { useCallback, useEffect, useState } from 'react';
import { type RestClient, createRestClient } from './api/rest';
import type { WebSocketFactory } from './api/ws';
import { AuthScreen } from './components/AuthScreen';
import { ChatShell } from './components/ChatShell';
import { SessionContext } from './components/SessionContext';
import { EXPIRY_MARGIN_MS, type StorageLike, type StoredAuth, clearAuth, loadAuth, safeLocalStorage, saveAuth } from './state/auth';
import { ChatSession, type SessionOptions } from './state/session';

/** setTimeout's delay is a signed 32-bit number of milliseconds. */
const MAX_TIMER_MS = 2 ** 31 - 1;

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
  const [auth, setAuth] = useState<StoredAuth | null>(() => loadAuth(storage));
  const [notice, setNotice] = useState<string | null>(null);

  const logout = useCallback(
    (reason: string | null) => {
      clearAuth(storage);
      setAuth(null);
      setNotice(reason);
    },
    [storage],
  );

  // The token's lifetime is the session's: log out when it expires (checking again after setTimeout's longest
  // delay, for tokens that live longer than that).
  const [expiryCheck, setExpiryCheck] = useState(0);
  useEffect(() => {
    if (!auth) return;
    const ms = Math.max(0, auth.expiresAt - EXPIRY_MARGIN_MS - Date.now());
    const timer =
      ms > MAX_TIMER_MS
        ? setTimeout(() => setExpiryCheck((n) => n + 1), MAX_TIMER_MS)
        : setTimeout(() => logout('Your session expired. Please log in again.'), ms);
    return () => clearTimeout(timer);
  }, [auth, logout, expiryCheck]);

  // Logging in or out in another tab does the same here.
  useEffect(() => {
    const onStorage = (event: StorageEvent) => {
      if (event.key !== null && event.key !== 'warren.auth') return;
      const next = loadAuth(storage);
      setAuth((current) => (current?.token === next?.token ? current : next));
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
    <ChatApp
      key={auth.token}
      auth={auth}
      options={{
        rest,
        ...(storage ? { storage } : {}),
        ...(createSocket ? { createSocket } : {}),
        ...(socketUrl ? { socketUrl } : {}),
        ...sessionOptions,
      }}
      onLogout={(reason) => logout(reason)}
    />
  );
}

function ChatApp({
  auth,
  options,
  onLogout,
}: {
  auth: StoredAuth;
  options: Partial<SessionOptions>;
  onLogout: (reason: string | null) => void;
}) {
  const [session] = useState(
    () =>
      new ChatSession({
        ...options,
        auth,
        onUnauthorized: () => onLogoutRef.current('Your session ended. Please log in again.'),
      }),
  );
  const onLogoutRef = useLatest(onLogout);

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
          onLogout(null);
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
