import type { AuthResponse } from '../protocol/generated/AuthResponse';

/** A session as saved; one saved before tokens could be refreshed has no `issuedAt`. */
export type StoredAuth = Omit<AuthResponse, 'issuedAt'> & { issuedAt?: number };

const KEY = 'warren.auth';
/** Treat a token as expired a little early, so no request goes out with a token that dies in flight. */
export const EXPIRY_MARGIN_MS = 5_000;
/** setTimeout's delay is a signed 32-bit number of milliseconds. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

function isAuth(value: unknown): value is StoredAuth {
  if (typeof value !== 'object' || value === null) return false;
  const v = value as Partial<StoredAuth>;
  return (
    typeof v.token === 'string' &&
    typeof v.expiresAt === 'number' &&
    (v.issuedAt === undefined || typeof v.issuedAt === 'number') &&
    typeof v.user === 'object' &&
    v.user !== null &&
    typeof v.user.id === 'number' &&
    typeof v.user.username === 'string'
  );
}

export function isExpired(auth: StoredAuth, now: number = Date.now()): boolean {
  return auth.expiresAt - EXPIRY_MARGIN_MS <= now;
}

/**
 * When to refresh the token: once half of its life is gone (by this device's clock, like `isExpired`; with a
 * skewed clock that moment may be past already, and the refresh is due at once). A token saved without
 * `issuedAt` is due at once too: refreshing is how it gets one.
 */
export function refreshDueAt(auth: StoredAuth): number {
  if (auth.issuedAt === undefined) return 0;
  return auth.issuedAt + (auth.expiresAt - auth.issuedAt) / 2;
}

/** The saved session, if it is still valid; an expired or corrupt one is removed. */
export function loadAuth(storage: StorageLike | undefined, now: number = Date.now()): StoredAuth | null {
  if (!storage) return null;
  let parsed: unknown;
  try {
    parsed = JSON.parse(storage.getItem(KEY) ?? 'null');
  } catch {
    parsed = null;
  }
  if (!isAuth(parsed) || isExpired(parsed, now)) {
    storage.removeItem(KEY);
    return null;
  }
  return parsed;
}

export function saveAuth(storage: StorageLike | undefined, auth: StoredAuth): void {
  try {
    storage?.setItem(KEY, JSON.stringify(auth));
  } catch {
    // Storage full or disabled: the session lasts until the tab closes.
  }
}

export function clearAuth(storage: StorageLike | undefined): void {
  try {
    storage?.removeItem(KEY);
  } catch {
    // ignore
  }
}

export function safeLocalStorage(): StorageLike | undefined {
  try {
    return typeof window !== 'undefined' ? window.localStorage : undefined;
  } catch {
    return undefined;
  }
}
