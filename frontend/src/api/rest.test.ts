import { describe, expect, it, vi } from 'vitest';
import { alice } from '../test/fixtures';
import { createRestClient, parseRetryAfter } from './rest';

function json(status: number, body: unknown, headers: Record<string, string> = {}) {
  return new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json', ...headers } });
}

describe('REST client', () => {
  it('posts credentials and returns the auth response', async () => {
    const fetch = vi.fn(async () => json(201, { user: alice, token: 't', expiresAt: 9 }));
    const rest = createRestClient({ fetch });
    await expect(rest.register({ username: 'alice', password: 'pw' })).resolves.toMatchObject({ token: 't' });
    expect(fetch).toHaveBeenCalledWith('/api/register', expect.objectContaining({ method: 'POST' }));
  });

  it('turns error bodies into typed errors with Retry-After', async () => {
    const rest = createRestClient({
      fetch: async () => json(429, { error: { code: 'rate_limited', message: 'slow down' } }, { 'Retry-After': '42' }),
    });
    await expect(rest.login({ username: 'a', password: 'b' })).rejects.toMatchObject({
      code: 'rate_limited',
      status: 429,
      retryAfterSeconds: 42,
    });
  });

  it('maps a body-less failure by its status, and a network failure to `network`', async () => {
    const rest = createRestClient({ fetch: async () => new Response('bad gateway', { status: 503 }) });
    await expect(rest.me('t')).rejects.toMatchObject({ code: 'unavailable' });
    const offline = createRestClient({ fetch: async () => Promise.reject(new TypeError('Failed to fetch')) });
    await expect(offline.me('t')).rejects.toMatchObject({ code: 'network' });
  });

  it('sends the bearer token and query for user search', async () => {
    const fetch = vi.fn(async (_url: string, _init?: RequestInit) => json(200, { users: [] }));
    await createRestClient({ fetch }).getUsers('tok', { prefix: 'al', limit: 5 });
    const [url, init] = fetch.mock.calls[0]!;
    expect(url).toBe('/api/users?prefix=al&limit=5');
    expect((init?.headers as Record<string, string>).Authorization).toBe('Bearer tok');
    await createRestClient({ fetch }).getUsers('tok', { ids: [3, 1] });
    expect(fetch.mock.calls[1]![0]).toBe('/api/users?ids=3%2C1');
  });

  it('parses Retry-After seconds and dates', () => {
    expect(parseRetryAfter('7')).toBe(7);
    expect(parseRetryAfter(new Date(10_000).toUTCString(), 0)).toBe(10);
    expect(parseRetryAfter(null)).toBeUndefined();
  });
});
