import { render, screen } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { describe, expect, it, vi } from 'vitest';
import { createRestClient } from '../api/rest';
import { alice } from '../test/fixtures';
import { AuthScreen } from './AuthScreen';

function respond(status: number, body: unknown, headers: Record<string, string> = {}) {
  return vi.fn(async (_url: string, _init?: RequestInit) =>
    new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json', ...headers } }),
  );
}

async function submit(mode: 'login' | 'register', fetch: ReturnType<typeof respond>, username = 'alice', password = 'correct horse') {
  const onAuthenticated = vi.fn();
  const user = userEvent.setup();
  render(<AuthScreen rest={createRestClient({ fetch })} onAuthenticated={onAuthenticated} />);
  if (mode === 'register') await user.click(screen.getByRole('button', { name: 'Create an account' }));
  await user.type(screen.getByLabelText('Username'), username);
  await user.type(screen.getByLabelText('Password'), password);
  await user.click(screen.getByRole('button', { name: mode === 'login' ? 'Log in' : 'Create account' }));
  return { onAuthenticated, user };
}

describe('AuthScreen', () => {
  it('says a taken username is taken (409)', async () => {
    const fetch = respond(409, { error: { code: 'conflict', message: 'username is taken' } });
    await submit('register', fetch);
    expect(await screen.findByRole('alert')).toHaveProperty('textContent', 'That username is taken. Try another one.');
    expect(fetch.mock.calls[0]![0]).toBe('/api/register');
  });

  it("shows the server's validation rule (422)", async () => {
    const fetch = respond(422, { error: { code: 'validation', message: 'password must be 8 to 128 characters' } });
    await submit('register', fetch, 'alice', 'short');
    expect((await screen.findByRole('alert')).textContent).toBe('Password must be 8 to 128 characters.');
    expect(screen.getByLabelText('Password').getAttribute('aria-invalid')).toBe('true');
  });

  it('says when to try again after too many attempts (429 + Retry-After)', async () => {
    const fetch = respond(429, { error: { code: 'rate_limited', message: 'too many attempts, try again later' } }, { 'Retry-After': '30' });
    await submit('login', fetch);
    const alert = await screen.findByRole('alert');
    expect(alert.textContent).toMatch(/Too many attempts\. Try again in (30|29) seconds\./);
    expect((screen.getByRole('button', { name: 'Log in' }) as HTMLButtonElement).disabled).toBe(true);
  });

  it('says a wrong password is wrong (401) and keeps the form', async () => {
    const fetch = respond(401, { error: { code: 'unauthorized', message: 'invalid username or password' } });
    const { onAuthenticated } = await submit('login', fetch);
    expect((await screen.findByRole('alert')).textContent).toBe('Wrong username or password.');
    expect(onAuthenticated).not.toHaveBeenCalled();
    expect((screen.getByLabelText('Username') as HTMLInputElement).value).toBe('alice');
  });

  it('says when the server cannot be reached', async () => {
    const fetch = vi.fn(async () => Promise.reject(new TypeError('Failed to fetch')));
    await submit('login', fetch as unknown as ReturnType<typeof respond>);
    expect((await screen.findByRole('alert')).textContent).toMatch(/Can't reach Warren/);
  });

  it('hands the auth response over on success', async () => {
    const auth = { user: alice, token: 'tok', expiresAt: Date.now() + 60_000 };
    const fetch = respond(200, auth);
    const { onAuthenticated } = await submit('login', fetch);
    await vi.waitFor(() => expect(onAuthenticated).toHaveBeenCalledWith(auth));
    const body = JSON.parse(String(fetch.mock.calls[0]![1]?.body));
    expect(body).toEqual({ username: 'alice', password: 'correct horse' });
  });
});
