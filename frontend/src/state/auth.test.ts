import { describe, expect, it } from 'vitest';
import { alice } from '../test/fixtures';
import { loadAuth, refreshDueAt } from './auth';

function storageWith(value: unknown) {
  const map = new Map<string, string>([['warren.auth', JSON.stringify(value)]]);
  return {
    getItem: (k: string) => map.get(k) ?? null,
    setItem: (k: string, v: string) => void map.set(k, v),
    removeItem: (k: string) => void map.delete(k),
    map,
  };
}

describe('auth', () => {
  const now = Date.UTC(2026, 0, 15, 9, 0, 0);

  it('a token is refreshed once half of its life is gone', () => {
    expect(refreshDueAt({ user: alice, token: 't', issuedAt: now, expiresAt: now + 86_400_000 })).toBe(now + 43_200_000);
  });

  it('a session saved before tokens had issuedAt still loads, and is due for a refresh at once', () => {
    const storage = storageWith({ user: alice, token: 'old', expiresAt: now + 3_600_000 });
    const auth = loadAuth(storage, now);
    expect(auth).toEqual({ user: alice, token: 'old', expiresAt: now + 3_600_000 });
    expect(refreshDueAt(auth!)).toBeLessThanOrEqual(now);
    expect(storage.map.has('warren.auth')).toBe(true);
  });

  it('a saved session with an issuedAt that is not a number is corrupt, and removed', () => {
    const storage = storageWith({ user: alice, token: 't', issuedAt: 'yesterday', expiresAt: now + 3_600_000 });
    expect(loadAuth(storage, now)).toBeNull();
    expect(storage.map.has('warren.auth')).toBe(false);
  });
});
