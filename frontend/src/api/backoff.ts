export interface BackoffOptions {
  /** First delay, before jitter. */
  baseMs: number;
  /** Upper bound, before jitter. */
  maxMs: number;
}

export const DEFAULT_BACKOFF: BackoffOptions = { baseMs: 500, maxMs: 30_000 };

/**
 * Exponential backoff with "equal jitter": half the exponential delay is fixed, half is random, so reconnecting
 * clients spread out after a gateway restart but none retries immediately in a tight loop.
 * `attempt` counts from 0 (the first retry).
 */
export function backoffDelay(attempt: number, options: BackoffOptions = DEFAULT_BACKOFF, random: () => number = Math.random): number {
  const exponential = Math.min(options.maxMs, options.baseMs * 2 ** Math.min(attempt, 30));
  const half = exponential / 2;
  return Math.round(half + random() * half);
}
