import type { User } from '../protocol/generated/User';

export type UsersCache = Readonly<Record<number, User>>;

export function mergeUsers(cache: UsersCache, users: readonly User[]): UsersCache {
  let next: Record<number, User> | null = null;
  for (const user of users) {
    const known = (next ?? cache)[user.id];
    if (known && known.username === user.username) continue;
    next ??= { ...cache };
    next[user.id] = user;
  }
  return next ?? cache;
}

export function missingIds(cache: UsersCache, ids: Iterable<number>): number[] {
  const out = new Set<number>();
  for (const id of ids) if (!(id in cache) && Number.isInteger(id) && id > 0) out.add(id);
  return [...out].sort((a, b) => a - b);
}

/**
 * The protocol has no "users by id" request; `getUsers` pages users by id (`after` the last id, `limit`), so
 * a window `after = min - 1, limit = max - min + 1` returns every wanted user whose id lies in it. Ids are
 * grouped into windows no wider than `maxLimit`.
 */
export function lookupWindows(ids: readonly number[], maxLimit = 100): { after: number; limit: number }[] {
  const sorted = [...new Set(ids)].sort((a, b) => a - b);
  const windows: { after: number; limit: number }[] = [];
  let start: number | undefined;
  let end = 0;
  for (const id of sorted) {
    if (start === undefined) {
      start = id;
      end = id;
    } else if (id - start + 1 <= maxLimit) {
      end = id;
    } else {
      windows.push({ after: start - 1, limit: end - start + 1 });
      start = id;
      end = id;
    }
  }
  if (start !== undefined) windows.push({ after: start - 1, limit: end - start + 1 });
  return windows;
}

export function displayName(cache: UsersCache, id: number): string {
  return cache[id]?.username ?? `user ${id}`;
}
