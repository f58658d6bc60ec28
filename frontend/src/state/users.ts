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

/** `getUsers` looks up at most this many ids at once (`MAX_USERS_PAGE`, common/src/protocol/users.rs). */
export const MAX_USERS_BY_ID = 100;

/** Splits ids (deduplicated, ascending) into `getUsers { ids }` batches of at most `max`. */
export function idBatches(ids: readonly number[], max = MAX_USERS_BY_ID): number[][] {
  const sorted = [...new Set(ids)].sort((a, b) => a - b);
  const batches: number[][] = [];
  for (let i = 0; i < sorted.length; i += max) batches.push(sorted.slice(i, i + max));
  return batches;
}

export function displayName(cache: UsersCache, id: number): string {
  return cache[id]?.username ?? `user ${id}`;
}
