import { act, fireEvent, render, screen, waitFor, within } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { App } from '../App';
import { dayLabel } from './format';
import type { RestClient } from '../api/rest';
import type { SessionOptions } from '../state/session';
import type { ConversationEntry } from '../protocol/generated/ConversationEntry';
import type { ErrorCode } from '../protocol/generated/ErrorCode';
import { FakeServer, flush } from '../test/fakeSocket';
import { alice, bob, carol, conv, entry, msg } from '../test/fixtures';

const users = [alice, bob, carol];

function storedLogin(expiresAt = Date.now() + 3_600_000, issuedAt = Date.now()) {
  window.localStorage.setItem('warren.auth', JSON.stringify({ user: alice, token: 'tok-1', issuedAt, expiresAt }));
}

const rest: RestClient = {
  login: vi.fn(async () => ({ user: alice, token: 'tok-2', issuedAt: Date.now(), expiresAt: Date.now() + 3_600_000 })),
  register: vi.fn(),
  me: vi.fn(),
  getUsers: vi.fn(async () => ({ users: [] })),
};

function renderApp(entries: ConversationEntry[], options: Partial<SessionOptions> = {}) {
  const server = new FakeServer();
  server.handlers = {
    listConversations: () => ({ conversations: entries }),
    sync: () => ({ conversations: entries, messages: [], truncated: [], removed: [] }),
    getUsers: (f) => ({
      users: f.ids
        ? users.filter((u) => f.ids!.includes(u.id))
        : users.filter((u) => u.id > (f.after ?? 0) && (!f.prefix || u.username.startsWith(f.prefix))).slice(0, f.limit ?? 20),
    }),
    getMessages: (f) =>
      f.conversationId === 7 && f.before === undefined && f.after === undefined
        ? { messages: [msg(7, 1, bob.id, 'hi alice'), msg(7, 2, alice.id, 'hey bob'), msg(7, 3, bob.id, 'how are you?')], hasMoreBefore: false, hasMoreAfter: false }
        : undefined,
    markRead: (f) => ({ conversationId: f.conversationId, readSeq: f.seq }),
  };
  const user = userEvent.setup();
  const view = render(
    <App
      rest={rest}
      createSocket={server.factory}
      socketUrl="ws://test/ws"
      sessionOptions={{ backoff: { baseMs: 20, maxMs: 20 }, random: () => 1, sendTimeoutMs: 5_000, ...options }}
    />,
  );
  return { server, user, view };
}

async function connected(server: FakeServer) {
  await act(async () => {
    server.accept(alice);
    await flush();
  });
}

/** Logged in and connected, Ann writes "are you there?" to Bob, and the server refuses it with `error`. */
async function sendRefusedWith(error: { code: ErrorCode; message: string }) {
  storedLogin();
  const { server, user } = renderApp(entries());
  server.handlers.sendMessage = () => ({ error });
  await connected(server);
  await user.click(screen.getByRole('button', { name: /bob/ }));
  await act(() => flush());
  await user.type(screen.getByRole('textbox', { name: 'Message' }), 'are you there?{Enter}');
  await act(() => flush());
  return { server, user, pending: screen.getByTestId('pending-message') };
}

/** Opens the New group dialog from the sidebar. */
async function openNewGroup(user: ReturnType<typeof userEvent.setup>) {
  await user.click(screen.getByRole('button', { name: 'New group' }));
  return screen.getByRole('dialog', { name: 'New group' });
}

const entries = () => [
  entry(conv(7, [alice.id, bob.id], 3), 1, msg(7, 3, bob.id, 'how are you?')),
  entry(conv(8, [alice.id, bob.id, carol.id], 0, { kind: 'group', title: 'Weekend plans' }), 0),
];

afterEach(() => {
  vi.clearAllMocks();
});

describe('App', () => {
  it('stays logged in across a reload: a stored token connects the socket', async () => {
    storedLogin();
    const { server } = renderApp(entries());
    expect(server.sockets).toHaveLength(1);
    await connected(server);
    expect(server.current.sent[0]).toEqual({ type: 'auth', token: 'tok-1' });
    expect(screen.getByText('alice', { selector: '.me__name' })).toBeTruthy();
  });

  it('an expired stored token shows the login form', () => {
    storedLogin(Date.now() - 1_000);
    renderApp(entries());
    expect(screen.getByRole('heading', { name: 'Welcome back' })).toBeTruthy();
    expect(window.localStorage.getItem('warren.auth')).toBeNull();
  });

  it('logs in, then connects with the new token', async () => {
    const { server, user } = renderApp(entries());
    await user.type(screen.getByLabelText('Username'), 'alice');
    await user.type(screen.getByLabelText('Password'), 'secret-password');
    await user.click(screen.getByRole('button', { name: 'Log in' }));
    await waitFor(() => expect(server.sockets).toHaveLength(1));
    await connected(server);
    expect(server.current.sent[0]).toEqual({ type: 'auth', token: 'tok-2' });
    expect(JSON.parse(window.localStorage.getItem('warren.auth') ?? '{}').token).toBe('tok-2');
  });

  it('lists conversations by activity with unread badges, updated live and by read frames', async () => {
    storedLogin();
    const { server } = renderApp(entries());
    await connected(server);
    const nav = screen.getByRole('navigation', { name: 'Conversations' });
    const items = within(nav).getAllByRole('button');
    expect(items.map((b) => b.querySelector('.conversation-item__title')?.textContent)).toEqual(['bob', 'Weekend plans']);
    expect(within(items[0]!).getByText('2 unread messages')).toBeTruthy();
    expect(within(items[0]!).getByText('how are you?')).toBeTruthy();
    await act(async () => {
      server.current.receive({ type: 'message', message: msg(8, 1, carol.id, 'saturday?', { sentAt: Date.now() }) });
      await flush();
    });
    const reordered = within(nav).getAllByRole('button');
    expect(reordered[0]!.textContent).toContain('Weekend plans');
    expect(within(reordered[0]!).getByText('carol: saturday?')).toBeTruthy();
    expect(within(reordered[0]!).getByText('1 unread message')).toBeTruthy();
    expect(screen.getByTestId('announcer').textContent).toBe('New message from carol in Weekend plans');
    await act(async () => {
      server.current.receive({ type: 'read', position: { conversationId: 8, readSeq: 1 } });
    });
    expect(within(reordered[0]!).queryByTestId('unread-badge')).toBeNull();
  });

  it('opens a conversation: history with names, own messages styled apart, read position moved', async () => {
    storedLogin();
    const { server, user } = renderApp(entries());
    await connected(server);
    await user.click(screen.getByRole('button', { name: /bob/ }));
    await act(() => flush());
    const log = screen.getByRole('region', { name: 'Messages' });
    const messages = within(log).getAllByTestId('message');
    expect(messages.map((m) => m.querySelector('.msg__body')?.textContent)).toEqual(['hi alice', 'hey bob', 'how are you?']);
    expect(messages.map((m) => m.classList.contains('msg--own'))).toEqual([false, true, false]);
    expect(within(messages[0]!).getByText('bob')).toBeTruthy();
    expect(within(log).getByText(dayLabel(msg(7, 1, bob.id).sentAt))).toBeTruthy();
    expect(server.current.lastRequest('markRead')).toMatchObject({ conversationId: 7, seq: 3 });
    await waitFor(() => expect(screen.queryAllByTestId('unread-badge')).toHaveLength(0));
  });

  it("a conversation whose messages could not be loaded says so and offers Retry, instead of loading forever", async () => {
    storedLogin();
    const { server, user } = renderApp(entries());
    const answer = server.handlers.getMessages;
    server.handlers.getMessages = () => ({ error: { code: 'unavailable', message: 'message-service is down' } });
    await connected(server);
    await user.click(screen.getByRole('button', { name: /bob/ }));
    await act(() => flush());
    const log = screen.getByRole('region', { name: 'Messages' });
    expect(within(log).getByRole('alert').textContent).toContain("Couldn't load the messages.");
    expect(within(log).queryByText('Loading messages…')).toBeNull();
    server.handlers.getMessages = answer;
    await user.click(within(log).getByRole('button', { name: 'Retry' }));
    await act(() => flush());
    expect(within(log).getAllByTestId('message')).toHaveLength(3);
    expect(within(log).queryByRole('alert')).toBeNull();
  });

  it('a conversation the user was removed from while away closes when opened, with the removal notice, not a spinner or Retry', async () => {
    storedLogin();
    const plans = entry(conv(8, [alice.id, bob.id, carol.id], 4, { kind: 'group', title: 'Weekend plans' }), 4, msg(8, 4, carol.id));
    const { server, user } = renderApp([entries()[0]!, plans]);
    server.handlers.getMessages = () => ({ error: { code: 'forbidden', message: 'you are not a member of that conversation' } });
    await connected(server);
    await user.click(screen.getByRole('button', { name: /Weekend plans/ }));
    await act(() => flush());
    expect(screen.queryByRole('region', { name: 'Messages' })).toBeNull();
    expect(screen.queryByRole('button', { name: 'Retry' })).toBeNull();
    expect(screen.getByRole('heading', { name: 'Pick a conversation' })).toBeTruthy();
    expect(screen.getByText('You are no longer a member of Weekend plans.')).toBeTruthy();
    const nav = screen.getByRole('navigation', { name: 'Conversations' });
    expect(within(nav).queryByRole('button', { name: /Weekend plans/ })).toBeNull();
    await act(() => flush());
    expect(server.current.requests('getMessages')).toHaveLength(1);
  });

  it('an older page that fails is not asked for again by itself: it offers Retry, and a success clears that', async () => {
    // jsdom lays nothing out: a short history that does not fill the view, so older pages load by themselves.
    const clientHeight = vi.spyOn(HTMLElement.prototype, 'clientHeight', 'get').mockReturnValue(600);
    const scrollHeight = vi.spyOn(HTMLElement.prototype, 'scrollHeight', 'get').mockReturnValue(300);
    try {
      storedLogin();
      const newest = [11, 12, 13].map((seq) => msg(7, seq, bob.id));
      const { server, user } = renderApp([entry(conv(7, [alice.id, bob.id], 13), 13, newest[2])]);
      server.handlers.getMessages = (f) =>
        f.before === undefined ? { messages: newest, hasMoreBefore: true, hasMoreAfter: false } : undefined;
      await connected(server);
      await user.click(screen.getByRole('button', { name: /bob/ }));
      await act(() => flush());
      const olderRequests = () => server.current.requests('getMessages').filter((f) => f.before !== undefined);
      expect(olderRequests()).toHaveLength(1);
      await act(async () => {
        server.current.fail(olderRequests()[0]!, { code: 'unavailable', message: 'message-service is down' });
        await flush();
      });
      expect(olderRequests()).toHaveLength(1);
      const log = screen.getByRole('region', { name: 'Messages' });
      expect(within(log).getByRole('alert').textContent).toContain("Couldn't load earlier messages.");
      server.handlers.getMessages = () => ({
        messages: Array.from({ length: 10 }, (_, i) => msg(7, i + 1, bob.id)),
        hasMoreBefore: false,
        hasMoreAfter: false,
      });
      await user.click(within(log).getByRole('button', { name: 'Retry' }));
      await act(() => flush());
      expect(olderRequests()).toHaveLength(2);
      expect(within(log).getAllByTestId('message')).toHaveLength(13);
      expect(within(log).queryByRole('alert')).toBeNull();
    } finally {
      clientHeight.mockRestore();
      scrollHeight.mockRestore();
    }
  });

  it('Enter sends, Shift+Enter adds a line; the message shows as sending, then sent', async () => {
    storedLogin();
    const { server, user } = renderApp(entries());
    await connected(server);
    await user.click(screen.getByRole('button', { name: /bob/ }));
    await act(() => flush());
    const box = screen.getByRole('textbox', { name: 'Message' });
    await user.type(box, 'hello{Shift>}{Enter}{/Shift}world');
    expect((box as HTMLTextAreaElement).value).toBe('hello\nworld');
    expect(server.current.requests('sendMessage')).toHaveLength(0);
    await user.type(box, '{Enter}');
    expect((box as HTMLTextAreaElement).value).toBe('');
    const req = server.current.lastRequest('sendMessage');
    expect(req).toMatchObject({ conversationId: 7, body: 'hello\nworld' });
    expect(req.clientMessageId).toMatch(/^[0-9a-f-]{36}$/);
    const pending = screen.getByTestId('pending-message');
    expect(pending.textContent).toContain('Sending…');
    await act(async () => {
      server.current.reply(req, 'sendMessage', msg(7, 4, alice.id, 'hello\nworld', { clientMessageId: req.clientMessageId }));
      server.current.receive({ type: 'message', message: msg(7, 4, alice.id, 'hello\nworld', { clientMessageId: req.clientMessageId }) });
      await flush();
    });
    expect(screen.queryByTestId('pending-message')).toBeNull();
    const sent = screen.getAllByTestId('message');
    expect(sent).toHaveLength(4);
    expect(sent[3]!.classList.contains('msg--own')).toBe(true);
    expect(sent[3]!.getAttribute('data-seq')).toBe('4');
  });

  it('Enter that confirms an input method composition does not send, also as Safari reports it (keyCode 229)', async () => {
    storedLogin();
    const { server, user } = renderApp(entries());
    await connected(server);
    await user.click(screen.getByRole('button', { name: /bob/ }));
    await act(() => flush());
    const box = screen.getByRole('textbox', { name: 'Message' }) as HTMLTextAreaElement;
    fireEvent.change(box, { target: { value: 'こんにちは' } });
    // Safari ends the composition before the keydown of the Enter that confirmed it: isComposing is false then.
    fireEvent.keyDown(box, { key: 'Enter', keyCode: 229 });
    fireEvent.keyDown(box, { key: 'Enter', isComposing: true });
    expect(server.current.requests('sendMessage')).toHaveLength(0);
    expect(box.value).toBe('こんにちは');
    fireEvent.keyDown(box, { key: 'Enter', keyCode: 13 });
    expect(server.current.lastRequest('sendMessage')).toMatchObject({ body: 'こんにちは' });
  });

  it('a message of invisible characters only cannot be sent: Send stays disabled and Enter does nothing', async () => {
    storedLogin();
    const { server, user } = renderApp(entries());
    await connected(server);
    await user.click(screen.getByRole('button', { name: /bob/ }));
    await act(() => flush());
    const box = screen.getByRole('textbox', { name: 'Message' }) as HTMLTextAreaElement;
    const send = screen.getByRole('button', { name: 'Send' }) as HTMLButtonElement;
    await user.type(box, '\u200b \u2060\u00ad');
    expect(box.value).toBe('\u200b \u2060\u00ad');
    expect(send.disabled).toBe(true);
    await user.type(box, '{Enter}');
    expect(server.current.requests('sendMessage')).toHaveLength(0);
    await user.type(box, 'x');
    expect(send.disabled).toBe(false);
  });

  it('keeps a draft per conversation: it stays with its conversation and is not sent to the next one opened', async () => {
    storedLogin();
    const { server, user } = renderApp(entries());
    await connected(server);
    await user.click(screen.getByRole('button', { name: /bob/ }));
    await act(() => flush());
    await user.type(screen.getByRole('textbox', { name: 'Message' }), 'half a thought');
    await user.click(screen.getByRole('button', { name: /Weekend plans/ }));
    await act(() => flush());
    const box = screen.getByRole('textbox', { name: 'Message' }) as HTMLTextAreaElement;
    expect(box.value).toBe('');
    await user.type(box, '{Enter}');
    expect(server.current.requests('sendMessage')).toHaveLength(0);
    await user.click(screen.getByRole('button', { name: /bob/ }));
    await act(() => flush());
    expect((screen.getByRole('textbox', { name: 'Message' }) as HTMLTextAreaElement).value).toBe('half a thought');
  });

  it('a send refused for a passing reason shows as waiting, not failed', async () => {
    const { pending: waiting } = await sendRefusedWith({ code: 'unavailable', message: 'try later' });
    expect(waiting.classList.contains('msg--failed')).toBe(false);
    expect(within(waiting).getByText('Trying again shortly…')).toBeTruthy();
  });

  it('a send that is being tried again can be given up on, so one the server keeps refusing does not stay for ever', async () => {
    const { user, pending: waiting } = await sendRefusedWith({ code: 'internal', message: 'something broke' });
    expect(within(waiting).getByText('Trying again shortly…')).toBeTruthy();
    expect(within(waiting).queryByRole('button', { name: 'Retry' })).toBeNull();
    await user.click(within(waiting).getByRole('button', { name: 'Stop trying' }));
    expect(screen.queryByTestId('pending-message')).toBeNull();
  });

  it('a failed send offers Retry, which resends the same client message id', async () => {
    const { server, user, pending: failed } = await sendRefusedWith({ code: 'validation', message: 'too long' });
    expect(failed.classList.contains('msg--failed')).toBe(true);
    const first = server.current.lastRequest('sendMessage');
    server.handlers.sendMessage = (f) => msg(7, 4, alice.id, f.body, { clientMessageId: f.clientMessageId });
    await user.click(within(failed).getByRole('button', { name: 'Retry' }));
    await act(() => flush());
    const sends = server.current.requests('sendMessage');
    expect(sends).toHaveLength(2);
    expect(sends[1]!.clientMessageId).toBe(first.clientMessageId);
    expect(screen.queryByTestId('pending-message')).toBeNull();
    expect(screen.getAllByTestId('message').filter((m) => m.textContent?.includes('are you there?'))).toHaveLength(1);
  });

  it('shows "Reconnecting…" while the connection is down, and syncs when it is back', async () => {
    storedLogin();
    const { server } = renderApp(entries());
    await connected(server);
    expect(screen.queryByText('Reconnecting…')).toBeNull();
    act(() => server.current.serverClose(1001, 'restart'));
    expect(screen.getByText('Reconnecting…')).toBeTruthy();
    await waitFor(() => expect(server.sockets).toHaveLength(2));
    await connected(server);
    expect(screen.queryByText('Reconnecting…')).toBeNull();
    expect(server.current.lastRequest('sync').heads).toEqual([
      { conversationId: 7, seq: 3 },
      { conversationId: 8, seq: 0 },
    ]);
  });

  it('the countdown to the next reconnect shows, but only the state is announced, not every second', async () => {
    storedLogin();
    const { server } = renderApp(entries(), { backoff: { baseMs: 10_000, maxMs: 10_000 } });
    await connected(server);
    act(() => server.current.serverClose(1001, 'restart'));
    expect(screen.getByText('Reconnecting…').closest('[aria-live="polite"]')).not.toBeNull();
    const countdown = screen.getByText(/Next try in \d+ s\./);
    const announced = countdown.closest('[aria-live]') !== null && countdown.closest('[aria-hidden="true"]') === null;
    expect(announced).toBe(false);
  });

  it('a message written while the connection is down waits, then goes out once after the reconnect', async () => {
    storedLogin();
    const { server, user } = renderApp(entries());
    await connected(server);
    await user.click(screen.getByRole('button', { name: /bob/ }));
    await act(() => flush());
    act(() => server.current.serverClose(1006));
    expect(screen.getByText("You're offline. Messages you send now go out when the connection is back.")).toBeTruthy();
    await user.type(screen.getByRole('textbox', { name: 'Message' }), 'sent offline{Enter}');
    const waiting = screen.getByTestId('pending-message');
    expect(waiting.classList.contains('msg--queued')).toBe(true);
    expect(waiting.classList.contains('msg--failed')).toBe(false);
    expect(waiting.textContent).toContain('Waiting for connection…');
    expect(within(waiting).queryByRole('button', { name: 'Retry' })).toBeNull();
    server.handlers.sendMessage = (f) => msg(7, 4, alice.id, f.body, { clientMessageId: f.clientMessageId });
    await waitFor(() => expect(server.sockets).toHaveLength(2));
    await connected(server);
    await act(() => flush());
    expect(server.current.requests('sendMessage')).toHaveLength(1);
    expect(screen.queryByTestId('pending-message')).toBeNull();
    expect(screen.getAllByTestId('message').filter((m) => m.textContent?.includes('sent offline'))).toHaveLength(1);
  });

  it('a refused token (4001) returns to the login screen with a reason', async () => {
    storedLogin();
    const { server } = renderApp(entries());
    await connected(server);
    act(() => server.current.serverClose(4001, 'token expired'));
    expect(await screen.findByText('Your session ended. Please log in again.')).toBeTruthy();
    expect(window.localStorage.getItem('warren.auth')).toBeNull();
  });

  it('logs out', async () => {
    storedLogin();
    const { server, user } = renderApp(entries());
    await connected(server);
    await user.click(screen.getByRole('button', { name: 'Log out' }));
    expect(screen.getByRole('heading', { name: 'Welcome back' })).toBeTruthy();
    expect(window.localStorage.getItem('warren.auth')).toBeNull();
    expect(server.current.closedByClient).not.toBeNull();
  });

  it('finds a person and starts a direct conversation with toUserId', async () => {
    storedLogin();
    const { server, user } = renderApp([]);
    await connected(server);
    await user.type(screen.getByRole('searchbox', { name: 'Find people' }), 'car');
    const result = await screen.findByRole('button', { name: /carol/ });
    await user.click(result);
    expect(screen.getByRole('heading', { name: 'carol' })).toBeTruthy();
    await user.type(screen.getByRole('textbox', { name: 'Message' }), 'hi carol{Enter}');
    const req = server.current.lastRequest('sendMessage');
    expect(req).toMatchObject({ toUserId: carol.id, body: 'hi carol' });
    expect(req.conversationId).toBeUndefined();
    server.handlers.getConversation = () => entry(conv(11, [alice.id, carol.id], 1), 1, msg(11, 1, alice.id, 'hi carol'));
    await act(async () => {
      server.current.reply(req, 'sendMessage', msg(11, 1, alice.id, 'hi carol', { clientMessageId: req.clientMessageId }));
      await flush();
    });
    expect(screen.getAllByTestId('message').map((m) => m.querySelector('.msg__body')?.textContent)).toEqual(['hi carol']);
    const nav = screen.getByRole('navigation', { name: 'Conversations' });
    expect(within(nav).getByRole('button', { name: /carol/ }).getAttribute('aria-current')).toBe('true');
  });

  it('what is typed after the first message to a new person stays in the box when the view becomes their conversation', async () => {
    storedLogin();
    const { server, user } = renderApp([]);
    await connected(server);
    await user.type(screen.getByRole('searchbox', { name: 'Find people' }), 'car');
    await user.click(await screen.findByRole('button', { name: /carol/ }));
    const box = () => screen.getByRole('textbox', { name: 'Message' }) as HTMLTextAreaElement;
    await user.type(box(), 'hi carol{Enter}');
    const req = server.current.lastRequest('sendMessage');
    await user.type(box(), 'are you free on');
    server.handlers.getConversation = () => entry(conv(11, [alice.id, carol.id], 1), 1, msg(11, 1, alice.id, 'hi carol'));
    await act(async () => {
      server.current.reply(req, 'sendMessage', msg(11, 1, alice.id, 'hi carol', { clientMessageId: req.clientMessageId }));
      await flush();
    });
    const nav = screen.getByRole('navigation', { name: 'Conversations' });
    expect(within(nav).getByRole('button', { name: /carol/ }).getAttribute('aria-current')).toBe('true');
    expect(box().value).toBe('are you free on');
    // Still that conversation's draft when coming back to it.
    await user.type(box(), ' saturday?');
    await user.type(screen.getByRole('searchbox', { name: 'Find people' }), 'bo');
    await user.click(await screen.findByRole('button', { name: /bob/ }));
    expect(box().value).toBe('');
    await user.click(within(nav).getByRole('button', { name: /carol/ }));
    expect(box().value).toBe('are you free on saturday?');
  });

  it('creates a group with members picked by search', async () => {
    storedLogin();
    const { server, user } = renderApp([]);
    server.handlers.createGroup = (f) => conv(20, [alice.id, ...f.memberIds].sort(), 0, { kind: 'group', title: f.title });
    await connected(server);
    const dialog = await openNewGroup(user);
    await user.type(within(dialog).getByLabelText('Group name'), 'Book club');
    await user.type(within(dialog).getByRole('searchbox', { name: 'Add members' }), 'b');
    await user.click(await within(dialog).findByRole('button', { name: /bob/ }));
    expect(within(dialog).getByRole('list', { name: 'Selected members' }).textContent).toContain('bob');
    await user.click(within(dialog).getByRole('button', { name: 'Create group' }));
    await act(() => flush());
    expect(server.current.lastRequest('createGroup')).toMatchObject({ title: 'Book club', memberIds: [bob.id] });
    expect(screen.queryByRole('dialog')).toBeNull();
    expect(screen.getByRole('heading', { name: 'Book club' })).toBeTruthy();
  });

  it('New group takes a name of 100 characters of emoji, refuses 101, and sends half an emoji as the character it shows as', async () => {
    storedLogin();
    const { server, user } = renderApp([]);
    await connected(server);
    const dialog = await openNewGroup(user);
    const name = within(dialog).getByLabelText('Group name') as HTMLInputElement;
    // Each emoji is two UTF-16 units: a `maxLength` of 100 would have cut this name at 50.
    await user.click(name);
    await user.paste('🎉'.repeat(101));
    expect([...name.value]).toHaveLength(101);
    await user.click(within(dialog).getByRole('button', { name: 'Create group' }));
    expect(within(dialog).getByRole('alert').textContent).toBe('A group name can be at most 100 characters.');
    expect(server.current.requests('createGroup')).toHaveLength(0);
    // 99 emoji and half of one (a cut made by UTF-16 units): 100 characters, the half sent as the replacement
    // character it shows as, since JSON cannot carry it to the server.
    await user.clear(name);
    await user.paste(`${'🎉'.repeat(99)}\ud83c`);
    await user.click(within(dialog).getByRole('button', { name: 'Create group' }));
    await act(() => flush());
    expect(server.current.lastRequest('createGroup')).toMatchObject({ title: `${'🎉'.repeat(99)}\ufffd` });
  });

  it('removing a picked member in New group moves focus to the next one, then to the search, and Escape still closes', async () => {
    storedLogin();
    const { server, user } = renderApp([]);
    await connected(server);
    const dialog = await openNewGroup(user);
    const search = within(dialog).getByRole('searchbox', { name: 'Add members' });
    for (const name of ['bob', 'carol']) {
      await user.type(search, name.slice(0, 2));
      await user.click(await within(dialog).findByRole('button', { name: new RegExp(name) }));
    }
    await user.click(within(dialog).getByRole('button', { name: 'Remove bob' }));
    expect(document.activeElement).toBe(within(dialog).getByRole('button', { name: 'Remove carol' }));
    await user.click(within(dialog).getByRole('button', { name: 'Remove carol' }));
    expect(document.activeElement).toBe(search);
    await user.keyboard('{Escape}');
    expect(screen.queryByRole('dialog')).toBeNull();
  });

  it('removing a member in Members moves focus to the next one, then to the search, and Escape still closes', async () => {
    storedLogin();
    const { server, user } = renderApp(entries());
    let members = [alice.id, bob.id, carol.id];
    server.handlers.removeMember = (f) => {
      members = members.filter((id) => id !== f.userId);
      return conv(8, members, 0, { kind: 'group', title: 'Weekend plans' });
    };
    await connected(server);
    await user.click(screen.getByRole('button', { name: /Weekend plans/ }));
    await user.click(screen.getByRole('button', { name: 'Members' }));
    const dialog = screen.getByRole('dialog', { name: 'Members of Weekend plans' });
    await user.click(within(dialog).getByRole('button', { name: /^Remove\s*bob$/ }));
    await act(() => flush());
    expect(within(dialog).queryByRole('button', { name: /^Remove\s*bob$/ })).toBeNull();
    expect(document.activeElement).toBe(within(dialog).getByRole('button', { name: /^Remove\s*carol$/ }));
    await user.click(within(dialog).getByRole('button', { name: /^Remove\s*carol$/ }));
    await act(() => flush());
    expect(document.activeElement).toBe(within(dialog).getByRole('searchbox', { name: 'Add people' }));
    await user.keyboard('{Escape}');
    expect(screen.queryByRole('dialog')).toBeNull();
  });

  it('Enter in the members search adds the person typed, and does not create the group', async () => {
    storedLogin();
    const { server, user } = renderApp([]);
    server.handlers.createGroup = (f) => conv(20, [alice.id, ...f.memberIds].sort(), 0, { kind: 'group', title: f.title });
    await connected(server);
    const dialog = await openNewGroup(user);
    await user.type(within(dialog).getByLabelText('Group name'), 'Friday team');
    const search = within(dialog).getByRole('searchbox', { name: 'Add members' });
    await user.type(search, 'bob');
    await within(dialog).findByRole('button', { name: /bob/ });
    await user.keyboard('{Enter}');
    expect(server.current.requests('createGroup')).toHaveLength(0);
    expect(within(dialog).getByRole('list', { name: 'Selected members' }).textContent).toContain('bob');
    expect((search as HTMLInputElement).value).toBe('');
    // With several found and none typed in full, Enter goes to the results for the user to choose.
    server.handlers.getUsers = () => ({ users: [carol, { ...carol, id: 9, username: 'cat' }] });
    await user.type(search, 'ca');
    await within(dialog).findByRole('button', { name: /cat/ });
    await user.keyboard('{Enter}');
    expect(document.activeElement?.textContent).toContain('carol');
    expect(within(dialog).getByRole('list', { name: 'Selected members' }).textContent).not.toContain('carol');
    expect(server.current.requests('createGroup')).toHaveLength(0);
    await user.click(within(dialog).getByRole('button', { name: 'Create group' }));
    await act(() => flush());
    expect(server.current.lastRequest('createGroup')).toMatchObject({ title: 'Friday team', memberIds: [bob.id] });
  });

  it('Enter does not pick from the results of an earlier search still shown while the new one is on its way', async () => {
    storedLogin();
    const { server, user } = renderApp([]);
    await connected(server);
    const dialog = await openNewGroup(user);
    const search = within(dialog).getByRole('searchbox', { name: 'Add members' });
    await user.type(search, 'b');
    await within(dialog).findByRole('button', { name: /bob/ });
    server.handlers.getUsers = () => undefined;
    // "bx" finds no one, but its answer has not come: bob, the one found for "b", is still shown.
    await user.type(search, 'x{Enter}');
    expect(within(dialog).getByRole('button', { name: /bob/ })).toBeTruthy();
    expect(within(dialog).queryByRole('list', { name: 'Selected members' })).toBeNull();
    expect(server.current.requests('createGroup')).toHaveLength(0);
  });

  it('a search answered after its box was cleared shows nothing', async () => {
    storedLogin();
    const { server, user } = renderApp([]);
    server.handlers.getUsers = () => undefined;
    await connected(server);
    const search = screen.getByRole('searchbox', { name: 'Find people' });
    await user.type(search, 'b');
    await waitFor(() => expect(server.current.requests('getUsers').length).toBeGreaterThan(0));
    await user.keyboard('{Escape}');
    expect((search as HTMLInputElement).value).toBe('');
    await act(async () => {
      server.current.reply(server.current.lastRequest('getUsers'), 'getUsers', { users: [bob] });
      await flush();
    });
    expect(screen.queryByRole('list', { name: 'People' })).toBeNull();
    expect(screen.queryByRole('button', { name: /Message\s*bob/ })).toBeNull();
  });

  it('Escape closes a dialog and Tab returns into it after focus fell to the page (a Cancel that disappears)', async () => {
    storedLogin();
    const { server, user } = renderApp(entries());
    await connected(server);
    await user.click(screen.getByRole('button', { name: /Weekend plans/ }));
    await user.click(screen.getByRole('button', { name: 'Members' }));
    const dialog = screen.getByRole('dialog', { name: 'Members of Weekend plans' });
    await user.click(within(dialog).getByRole('button', { name: 'Leave group…' }));
    await user.click(within(dialog).getByRole('button', { name: 'Cancel' }));
    expect(document.activeElement).toBe(document.body);
    await user.keyboard('{Tab}');
    expect(dialog.contains(document.activeElement)).toBe(true);
    (document.activeElement as HTMLElement).blur();
    await user.keyboard('{Escape}');
    expect(screen.queryByRole('dialog')).toBeNull();
  });

  it('after leaving a group, focus is on the pane that replaces it, not lost to the page', async () => {
    storedLogin();
    const { server, user } = renderApp(entries());
    server.handlers.leaveConversation = () => conv(8, [bob.id, carol.id], 0, { kind: 'group', title: 'Weekend plans' });
    await connected(server);
    await user.click(screen.getByRole('button', { name: /Weekend plans/ }));
    await user.click(screen.getByRole('button', { name: 'Members' }));
    const dialog = screen.getByRole('dialog', { name: 'Members of Weekend plans' });
    await user.click(within(dialog).getByRole('button', { name: 'Leave group…' }));
    await user.click(within(dialog).getByRole('button', { name: 'Leave group' }));
    await act(() => flush());
    expect(screen.queryByRole('dialog')).toBeNull();
    await waitFor(() => expect(document.activeElement).toBe(screen.getByRole('heading', { name: 'Pick a conversation' })));
  });

  it('a window that is visible but not focused does not mark messages read until it gets focus', async () => {
    const focused = vi.spyOn(document, 'hasFocus').mockReturnValue(false);
    try {
      storedLogin();
      const { server, user } = renderApp(entries());
      await connected(server);
      await user.click(screen.getByRole('button', { name: /bob/ }));
      await act(() => flush());
      expect(screen.getAllByTestId('message')).toHaveLength(3);
      expect(server.current.requests('markRead')).toHaveLength(0);
      focused.mockReturnValue(true);
      await act(async () => {
        window.dispatchEvent(new Event('focus'));
        await flush();
      });
      expect(server.current.lastRequest('markRead')).toMatchObject({ conversationId: 7, seq: 3 });
    } finally {
      focused.mockRestore();
    }
  });

  it('a group name of invisible characters only is asked for again, not sent', async () => {
    storedLogin();
    const { server, user } = renderApp([]);
    await connected(server);
    const dialog = await openNewGroup(user);
    await user.type(within(dialog).getByLabelText('Group name'), '\u200b\u200d');
    await user.click(within(dialog).getByRole('button', { name: 'Create group' }));
    expect(within(dialog).getByRole('alert').textContent).toBe('Give the group a name.');
    expect(server.current.requests('createGroup')).toEqual([]);
  });

  it('a group change with no answer says so in words, not with the client\'s own error text', async () => {
    storedLogin();
    const { server, user } = renderApp(entries(), { requestTimeoutMs: 50 });
    await connected(server);
    await user.click(screen.getByRole('button', { name: /Weekend plans/ }));
    await user.click(screen.getByRole('button', { name: 'Members' }));
    const members = screen.getByRole('dialog', { name: 'Members of Weekend plans' });
    await user.click(within(members).getByRole('button', { name: /^Remove\s*bob$/ }));
    await waitFor(() =>
      expect(within(members).getByRole('alert').textContent).toBe('The server did not answer in time. Try again.'),
    );
    await user.click(within(members).getByRole('button', { name: 'Close' }));
    const newGroup = await openNewGroup(user);
    await user.type(within(newGroup).getByLabelText('Group name'), 'Book club');
    await user.click(within(newGroup).getByRole('button', { name: 'Create group' }));
    await waitFor(() =>
      expect(within(newGroup).getByRole('alert').textContent).toBe('The server did not answer in time. Try again.'),
    );
  });

  it('trying a group create again after no answer asks for the same group, so it is made once', async () => {
    storedLogin();
    const { server, user } = renderApp(entries(), { requestTimeoutMs: 50 });
    await connected(server);
    const dialog = await openNewGroup(user);
    await user.type(within(dialog).getByLabelText('Group name'), 'Book club');
    await user.click(within(dialog).getByRole('button', { name: 'Create group' }));
    await waitFor(() => expect(within(dialog).getByRole('alert').textContent).toBe('The server did not answer in time. Try again.'));
    await user.click(within(dialog).getByRole('button', { name: 'Create group' }));
    await waitFor(() => expect(server.current.requests('createGroup')).toHaveLength(2));
    const [first, second] = server.current.requests('createGroup');
    expect(first?.clientGroupId).toMatch(/^[A-Za-z0-9_-]{1,64}$/);
    expect(second?.clientGroupId).toBe(first?.clientGroupId);

    // Another name is another group: a new id, answered this time.
    await waitFor(() => expect(within(dialog).getByRole('button', { name: 'Create group' })).toBeTruthy());
    server.handlers.createGroup = (f) => conv(21, [alice.id, ...f.memberIds].sort(), 0, { kind: 'group', title: f.title });
    await user.type(within(dialog).getByLabelText('Group name'), ' 2');
    await user.click(within(dialog).getByRole('button', { name: 'Create group' }));
    await waitFor(() => expect(screen.queryByRole('dialog')).toBeNull());
    const third = server.current.lastRequest('createGroup');
    expect(third).toMatchObject({ title: 'Book club 2' });
    expect(third.clientGroupId).not.toBe(first?.clientGroupId);
  });
});

describe('App session expiry and refresh', () => {
  beforeEach(() => {
    vi.useFakeTimers({ shouldAdvanceTime: true });
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  async function advance(ms: number) {
    await act(async () => {
      await vi.advanceTimersByTimeAsync(ms);
    });
  }

  const fresh = (token: string, lifeMs: number) => ({ user: alice, token, issuedAt: Date.now(), expiresAt: Date.now() + lifeMs });
  const stored = () => JSON.parse(window.localStorage.getItem('warren.auth') ?? 'null');

  /** Another tab writes the session (the browser tells every other tab with a storage event). */
  function storeFromAnotherTab(auth: unknown) {
    act(() => {
      if (auth === null) window.localStorage.removeItem('warren.auth');
      else window.localStorage.setItem('warren.auth', JSON.stringify(auth));
      window.dispatchEvent(new StorageEvent('storage', { key: 'warren.auth' }));
    });
  }

  it('logs out when the token expires', async () => {
    storedLogin(Date.now() + 65_000);
    const { server } = renderApp(entries());
    await connected(server);
    expect(screen.queryByRole('heading', { name: 'Welcome back' })).toBeNull();
    await advance(61_000);
    expect(screen.getByRole('heading', { name: 'Welcome back' })).toBeTruthy();
    expect(screen.getByText('Your session expired. Please log in again.')).toBeTruthy();
    expect(window.localStorage.getItem('warren.auth')).toBeNull();
  });

  it('refreshes the token halfway through its life without remounting the chat; the new one is saved, sets the expiry and reconnects', async () => {
    storedLogin(Date.now() + 120_000);
    const { server, user } = renderApp(entries(), { keepAliveIntervalMs: 0 });
    server.handlers.refreshToken = () => fresh('tok-2', 120_000);
    await connected(server);
    await user.click(screen.getByRole('button', { name: /bob/ }));
    await act(() => flush());
    expect(screen.getAllByTestId('message')).toHaveLength(3);
    await advance(59_000);
    expect(server.current.requests('refreshToken')).toHaveLength(0);
    await advance(2_000);
    expect(server.current.requests('refreshToken')).toHaveLength(1);
    expect(stored()).toMatchObject({ token: 'tok-2' });
    // The same chat: no second socket, the conversation still open.
    expect(server.sockets).toHaveLength(1);
    expect(screen.getByRole('heading', { name: 'bob' })).toBeTruthy();
    expect(screen.getAllByTestId('message')).toHaveLength(3);
    // Past the first token's expiry, still signed in.
    delete server.handlers.refreshToken;
    await advance(60_000);
    expect(screen.queryByRole('heading', { name: 'Welcome back' })).toBeNull();
    act(() => server.current.serverClose(1006));
    await advance(100);
    expect(server.sockets).toHaveLength(2);
    await connected(server);
    expect(server.current.sent[0]).toEqual({ type: 'auth', token: 'tok-2' });
  });

  it('a refresh refused as unauthorized is not asked for again, and the session ends at expiry as before', async () => {
    storedLogin(Date.now() + 200_000);
    const { server } = renderApp(entries(), { keepAliveIntervalMs: 0 });
    server.handlers.refreshToken = () => ({ error: { code: 'unauthorized', message: 'the session is too old to be refreshed' } });
    await connected(server);
    await advance(101_000);
    expect(server.current.requests('refreshToken')).toHaveLength(1);
    expect(screen.queryByRole('heading', { name: 'Welcome back' })).toBeNull();
    await advance(95_000);
    expect(screen.getByText('Your session expired. Please log in again.')).toBeTruthy();
    expect(server.sockets[0]!.requests('refreshToken')).toHaveLength(1);
    expect(window.localStorage.getItem('warren.auth')).toBeNull();
  });

  it('a session saved by the previous version (no issuedAt) stays signed in and is refreshed at once', async () => {
    window.localStorage.setItem('warren.auth', JSON.stringify({ user: alice, token: 'tok-1', expiresAt: Date.now() + 3_600_000 }));
    const { server } = renderApp(entries(), { keepAliveIntervalMs: 0 });
    server.handlers.refreshToken = () => fresh('tok-2', 86_400_000);
    await connected(server);
    expect(server.current.sent[0]).toEqual({ type: 'auth', token: 'tok-1' });
    expect(screen.getByText('alice', { selector: '.me__name' })).toBeTruthy();
    expect(server.current.requests('refreshToken')).toHaveLength(1);
    expect(stored()).toMatchObject({ token: 'tok-2', issuedAt: expect.any(Number) });
  });

  it('logging out in another tab, or in as someone else, does the same here', async () => {
    storedLogin();
    const { server } = renderApp(entries(), { keepAliveIntervalMs: 0 });
    await connected(server);
    storeFromAnotherTab({ user: bob, token: 'tok-b', issuedAt: Date.now(), expiresAt: Date.now() + 3_600_000 });
    expect(screen.getByText('bob', { selector: '.me__name' })).toBeTruthy();
    expect(server.sockets).toHaveLength(2);
    storeFromAnotherTab(null);
    expect(screen.getByRole('heading', { name: 'Welcome back' })).toBeTruthy();
  });

  it("another tab's newer token of the same user neither remounts nor logs out this tab", async () => {
    storedLogin();
    const { server, user } = renderApp(entries(), { keepAliveIntervalMs: 0 });
    await connected(server);
    await user.click(screen.getByRole('button', { name: /bob/ }));
    await act(() => flush());
    storeFromAnotherTab(fresh('tok-9', 7_200_000));
    await act(() => flush());
    expect(server.sockets).toHaveLength(1);
    expect(server.current.closedByClient).toBeNull();
    expect(screen.getByRole('heading', { name: 'bob' })).toBeTruthy();
    expect(screen.getAllByTestId('message')).toHaveLength(3);
    expect(stored()).toMatchObject({ token: 'tok-9' });
  });

  it("a refresh answered after another tab stored a newer token keeps that one stored (this tab goes on with its own)", async () => {
    storedLogin(Date.now() + 120_000);
    const { server } = renderApp(entries(), { keepAliveIntervalMs: 0 });
    await connected(server);
    await advance(61_000);
    const refresh = server.current.lastRequest('refreshToken');
    storeFromAnotherTab(fresh('tok-9', 7_200_000));
    await act(async () => {
      server.current.reply(refresh, 'refreshToken', fresh('tok-2', 120_000));
      await flush();
    });
    expect(stored()).toMatchObject({ token: 'tok-9' });
    act(() => server.current.serverClose(1006));
    await advance(100);
    await connected(server);
    expect(server.current.sent[0]).toEqual({ type: 'auth', token: 'tok-2' });
  });

  it('a refresh answered after another tab logged out, before its storage event came, does not sign the user in again', async () => {
    storedLogin(Date.now() + 120_000);
    const { server } = renderApp(entries(), { keepAliveIntervalMs: 0 });
    await connected(server);
    await advance(61_000);
    const refresh = server.current.lastRequest('refreshToken');
    window.localStorage.removeItem('warren.auth');
    await act(async () => {
      server.current.reply(refresh, 'refreshToken', fresh('tok-2', 120_000));
      await flush();
    });
    expect(window.localStorage.getItem('warren.auth')).toBeNull();
    storeFromAnotherTab(null);
    expect(screen.getByRole('heading', { name: 'Welcome back' })).toBeTruthy();
  });

  it("a refused token (4001) while another user's token is stored (its storage event not here yet) leaves that one stored", async () => {
    storedLogin();
    const { server } = renderApp(entries(), { keepAliveIntervalMs: 0 });
    await connected(server);
    const bobs = { user: bob, token: 'tok-b', issuedAt: Date.now(), expiresAt: Date.now() + 3_600_000 };
    window.localStorage.setItem('warren.auth', JSON.stringify(bobs));
    act(() => server.current.serverClose(4001, 'the session expired; sign in again'));
    expect(await screen.findByText('Your session ended. Please log in again.')).toBeTruthy();
    expect(stored()).toMatchObject({ token: 'tok-b' });
    storeFromAnotherTab(bobs);
    expect(screen.getByText('bob', { selector: '.me__name' })).toBeTruthy();
  });

  it('a tab whose token expires takes over the newer one another tab stored, rather than log out, and leaves it stored', async () => {
    storedLogin(Date.now() + 65_000);
    const { server } = renderApp(entries(), { keepAliveIntervalMs: 0 });
    // This tab could not refresh (the user-service was down for it); another tab could.
    server.handlers.refreshToken = () => ({ error: { code: 'unavailable', message: 'user-service is down' } });
    await connected(server);
    storeFromAnotherTab(fresh('tok-9', 7_200_000));
    await advance(61_000);
    expect(screen.queryByRole('heading', { name: 'Welcome back' })).toBeNull();
    expect(stored()).toMatchObject({ token: 'tok-9' });
    expect(server.sockets).toHaveLength(2);
    await connected(server);
    expect(server.current.sent[0]).toEqual({ type: 'auth', token: 'tok-9' });
    expect(screen.getByText('alice', { selector: '.me__name' })).toBeTruthy();
  });

  it('a refused token (4001) with a newer one of the same user stored takes over that one, and leaves it stored', async () => {
    storedLogin();
    const { server } = renderApp(entries(), { keepAliveIntervalMs: 0 });
    await connected(server);
    storeFromAnotherTab(fresh('tok-9', 7_200_000));
    act(() => server.current.serverClose(4001, 'the session expired; sign in again'));
    await act(() => flush());
    expect(screen.queryByText('Your session ended. Please log in again.')).toBeNull();
    expect(stored()).toMatchObject({ token: 'tok-9' });
    expect(server.sockets).toHaveLength(2);
    await connected(server);
    expect(server.current.sent[0]).toEqual({ type: 'auth', token: 'tok-9' });
  });
});
