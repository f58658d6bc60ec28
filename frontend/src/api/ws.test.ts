import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { FakeServer } from '../test/fakeSocket';
import { alice } from '../test/fixtures';
import { backoffDelay } from './backoff';
import { ApiRequestError } from './errors';
import { type SocketStatus, WarrenSocket } from './ws';

function setup(overrides: Partial<ConstructorParameters<typeof WarrenSocket>[0]> = {}) {
  const server = new FakeServer();
  const statuses: SocketStatus[] = [];
  const unauthorized = vi.fn();
  const disconnects: number[] = [];
  const socket = new WarrenSocket({
    url: 'ws://test/ws',
    token: () => 'tok',
    createSocket: server.factory,
    requestTimeoutMs: 1_000,
    backoff: { baseMs: 1_000, maxMs: 8_000 },
    random: () => 0.5,
    onStatus: (s) => statuses.push(s),
    onUnauthorized: unauthorized,
    onDisconnect: (code) => disconnects.push(code),
    ...overrides,
  });
  return { server, socket, statuses, unauthorized, disconnects };
}

describe('backoff', () => {
  it('grows exponentially with jitter and a cap', () => {
    const opts = { baseMs: 500, maxMs: 4_000 };
    expect(backoffDelay(0, opts, () => 0)).toBe(250);
    expect(backoffDelay(0, opts, () => 1)).toBe(500);
    expect(backoffDelay(3, opts, () => 1)).toBe(4_000);
    expect(backoffDelay(10, opts, () => 1)).toBe(4_000);
    expect(backoffDelay(10, opts, () => 0)).toBe(2_000);
  });
});

describe('WarrenSocket', () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('authenticates with the first frame and opens on ready', () => {
    const { server, socket, statuses } = setup();
    socket.start();
    expect(server.sockets).toHaveLength(1);
    expect(socket.isOpen).toBe(false);
    server.accept(alice);
    expect(server.current.sent[0]).toEqual({ type: 'auth', token: 'tok' });
    expect(socket.isOpen).toBe(true);
    expect(statuses).toEqual(['connecting', 'open']);
  });

  it('correlates replies with requests by id, whatever order they come in', async () => {
    const { server, socket } = setup();
    socket.start();
    const ws = server.accept(alice);
    const a = socket.request('getUsers', { prefix: 'a' });
    const b = socket.request('getSelf', {});
    const [reqA, reqB] = [ws.lastRequest('getUsers'), ws.lastRequest('getSelf')];
    expect(reqA.id).not.toBe(reqB.id);
    ws.reply(reqB, 'getSelf', alice);
    ws.reply(reqA, 'getUsers', { users: [alice] });
    await expect(a).resolves.toEqual({ users: [alice] });
    await expect(b).resolves.toEqual(alice);
  });

  it('rejects with the server error code', async () => {
    const { server, socket } = setup();
    socket.start();
    const ws = server.accept(alice);
    const p = socket.request('markRead', { conversationId: 1, seq: 2 });
    ws.fail(ws.lastRequest('markRead'), { code: 'forbidden', message: 'not a member' });
    await expect(p).rejects.toMatchObject({ code: 'forbidden', message: 'not a member' });
  });

  it('times a request out, and ignores its late reply', async () => {
    const { server, socket } = setup();
    socket.start();
    const ws = server.accept(alice);
    const p = socket.request('getSelf', {});
    const assertion = expect(p).rejects.toMatchObject({ code: 'timeout' });
    await vi.advanceTimersByTimeAsync(1_001);
    await assertion;
    expect(() => ws.reply(ws.lastRequest('getSelf'), 'getSelf', alice)).not.toThrow();
  });

  it('fails at once when not connected', async () => {
    const { socket } = setup();
    socket.start();
    await expect(socket.request('getSelf', {})).rejects.toBeInstanceOf(ApiRequestError);
    await expect(socket.request('getSelf', {})).rejects.toMatchObject({ code: 'disconnected' });
  });

  it('fails requests in flight when the socket closes, then reconnects with growing backoff', async () => {
    const { server, socket, statuses, disconnects } = setup();
    socket.start();
    const ws = server.accept(alice);
    const p = socket.request('getSelf', {});
    const assertion = expect(p).rejects.toMatchObject({ code: 'disconnected' });
    ws.serverClose(1001, 'going away');
    await assertion;
    expect(disconnects).toEqual([1001]);
    expect(statuses[statuses.length - 1]).toBe('reconnecting');
    // random 0.5 → 75% of the exponential delay: 750 ms, then 1500 ms, then 3000 ms.
    await vi.advanceTimersByTimeAsync(749);
    expect(server.sockets).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(server.sockets).toHaveLength(2);
    server.current.serverClose(1006);
    await vi.advanceTimersByTimeAsync(1_499);
    expect(server.sockets).toHaveLength(2);
    await vi.advanceTimersByTimeAsync(1);
    expect(server.sockets).toHaveLength(3);
    server.current.serverClose(1006);
    await vi.advanceTimersByTimeAsync(3_000);
    expect(server.sockets).toHaveLength(4);
    // A ready resets the backoff of failed attempts (closed before any answer, this one is the first of a streak of
    // its own, with the first pause).
    server.accept(alice);
    expect(socket.isOpen).toBe(true);
    server.current.serverClose(4008, 'slow consumer');
    await vi.advanceTimersByTimeAsync(750);
    expect(server.sockets).toHaveLength(5);
  });

  it('stops and reports when the token is refused (4001)', async () => {
    const { server, socket, unauthorized, statuses } = setup();
    socket.start();
    server.accept(alice);
    server.current.serverClose(4001, 'token expired');
    await vi.advanceTimersByTimeAsync(60_000);
    expect(server.sockets).toHaveLength(1);
    expect(unauthorized).toHaveBeenCalledWith('token expired');
    expect(statuses[statuses.length - 1]).toBe('closed');
  });

  it('gives up on a connection that never answers auth', async () => {
    const { server, socket } = setup({ authTimeoutMs: 2_000 });
    socket.start();
    server.current.open();
    await vi.advanceTimersByTimeAsync(2_000);
    expect(server.sockets[0]?.closedByClient).not.toBeNull();
    await vi.advanceTimersByTimeAsync(750);
    expect(server.sockets).toHaveLength(2);
  });

  it('gives up on a connection attempt that never opens', async () => {
    const { server, socket } = setup({ authTimeoutMs: 2_000 });
    socket.start();
    await vi.advanceTimersByTimeAsync(1_999);
    expect(server.sockets[0]?.closedByClient).toBeNull();
    await vi.advanceTimersByTimeAsync(1);
    expect(server.sockets[0]?.closedByClient).not.toBeNull();
    expect(socket.status).toBe('reconnecting');
    await vi.advanceTimersByTimeAsync(750);
    expect(server.sockets).toHaveLength(2);
  });

  it('reconnectNow replaces a presumed-dead socket immediately', () => {
    const { server, socket } = setup();
    socket.start();
    server.accept(alice);
    socket.reconnectNow();
    expect(server.sockets).toHaveLength(2);
    expect(server.sockets[0]?.closedByClient).not.toBeNull();
  });

  it('stop closes for good', async () => {
    const { server, socket } = setup();
    socket.start();
    server.accept(alice);
    socket.stop();
    await vi.advanceTimersByTimeAsync(60_000);
    expect(server.sockets).toHaveLength(1);
    expect(socket.status).toBe('closed');
  });

  it('keeps at most maxInFlight requests on the wire, queueing the rest (user actions first)', async () => {
    const { server, socket } = setup({ maxInFlight: 2 });
    socket.start();
    const ws = server.accept(alice);
    const background = [1, 2, 3].map((n) => socket.request('getConversation', { conversationId: n }));
    const send = socket.request(
      'sendMessage',
      { conversationId: 1, clientMessageId: 'c1', body: 'hi' },
      { priority: 'high' },
    );
    expect(ws.sent.filter((f) => f.type !== 'auth')).toHaveLength(2);
    expect(socket.queued).toBe(2);
    // A reply frees a slot: the send goes before the third background request.
    ws.fail(ws.requests('getConversation')[0]!, { code: 'not_found', message: 'gone' });
    await expect(background[0]).rejects.toMatchObject({ code: 'not_found' });
    expect(ws.sent[ws.sent.length - 1]?.type).toBe('sendMessage');
    expect(socket.queued).toBe(1);
    // A disconnect fails what is on the wire and what is queued alike.
    ws.serverClose(1006);
    await expect(send).rejects.toMatchObject({ code: 'disconnected' });
    await expect(background[1]).rejects.toMatchObject({ code: 'disconnected' });
    await expect(background[2]).rejects.toMatchObject({ code: 'disconnected' });
    expect(socket.queued).toBe(0);
  });

  it('keeps at most 4 requests with large answers on the wire; a page the user asks for goes next, others go past', async () => {
    const { server, socket } = setup({ requestTimeoutMs: 60_000 });
    socket.start();
    const ws = server.accept(alice);
    // A catch-up: six conversations' missing messages.
    const catchUp = [1, 2, 3, 4, 5, 6].map((n) => socket.request('getMessages', { conversationId: n, after: 0 }));
    expect(ws.requests('getMessages')).toHaveLength(4);
    // Requests with small answers are not held behind them.
    const users = socket.request('getUsers', {});
    expect(ws.requests('getUsers')).toHaveLength(1);
    // A page the user scrolled to waits for the next turn, ahead of the catch-up's.
    const page = socket.request('getMessages', { conversationId: 9, limit: 50 }, { priority: 'high' });
    const sync = socket.request('sync', { heads: [] });
    expect(ws.requests('getMessages')).toHaveLength(4);
    expect(ws.requests('sync')).toHaveLength(0);
    expect(socket.queued).toBe(4);

    const empty = { messages: [], hasMoreBefore: false, hasMoreAfter: false };
    ws.reply(ws.requests('getMessages')[0]!, 'getMessages', empty);
    await expect(catchUp[0]).resolves.toEqual(empty);
    expect(ws.requests('getMessages')).toHaveLength(5);
    expect(ws.lastRequest('getMessages')).toMatchObject({ conversationId: 9, limit: 50 });
    // An error frees a turn too; the rest go in the order they were asked for.
    ws.fail(ws.requests('getMessages')[1]!, { code: 'forbidden', message: 'not a member' });
    await expect(catchUp[1]).rejects.toMatchObject({ code: 'forbidden' });
    expect(ws.lastRequest('getMessages')).toMatchObject({ conversationId: 5 });
    expect(ws.requests('sync')).toHaveLength(0);
    expect(socket.queued).toBe(2);
    ws.serverClose(1006);
    for (const request of [...catchUp.slice(2), users, page, sync]) {
      await expect(request).rejects.toMatchObject({ code: 'disconnected' });
    }
  });

  it('pings the gateway while open; an unanswered ping drops the socket and reconnects at once', async () => {
    const { server, socket, statuses, disconnects } = setup({ keepAliveIntervalMs: 15_000, keepAliveTimeoutMs: 10_000 });
    socket.start();
    const ws = server.accept(alice);
    await vi.advanceTimersByTimeAsync(14_999);
    expect(ws.requests('ping')).toHaveLength(0);
    await vi.advanceTimersByTimeAsync(1);
    const ping = ws.lastRequest('ping');
    ws.reply(ping, 'ping', { serverTime: 1 });
    await vi.advanceTimersByTimeAsync(14_999);
    expect(server.sockets).toHaveLength(1);
    expect(socket.isOpen).toBe(true);
    // The second ping goes unanswered: after the timeout the socket is replaced, without waiting for a backoff.
    await vi.advanceTimersByTimeAsync(1);
    expect(ws.requests('ping')).toHaveLength(2);
    await vi.advanceTimersByTimeAsync(9_999);
    expect(server.sockets).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(ws.closedByClient).not.toBeNull();
    expect(disconnects).toEqual([1000]);
    expect(server.sockets).toHaveLength(2);
    expect(statuses[statuses.length - 1]).toBe('reconnecting');
    // No pings on the old socket any more, nor on the new one before it is ready.
    await vi.advanceTimersByTimeAsync(30_000);
    expect(ws.requests('ping')).toHaveLength(2);
    expect(server.current.sent.filter((f) => f.type === 'ping')).toHaveLength(0);
  });

  it('connections presumed dead one after another reconnect after growing pauses, though each authenticates; an answered ping ends the streak', async () => {
    const { server, socket } = setup({ keepAliveIntervalMs: 15_000, keepAliveTimeoutMs: 10_000 });
    socket.start();
    server.accept(alice);
    // Unanswered pings: at once the first time, then 750 ms, 1500 ms (random 0.5: 75% of 1 s, 2 s)…
    await vi.advanceTimersByTimeAsync(25_000);
    expect(server.sockets).toHaveLength(2);
    for (const [n, pause] of [
      [3, 750],
      [4, 1_500],
    ] as const) {
      server.accept(alice);
      await vi.advanceTimersByTimeAsync(25_000);
      expect(server.sockets).toHaveLength(n - 1);
      await vi.advanceTimersByTimeAsync(pause - 1);
      expect(server.sockets).toHaveLength(n - 1);
      await vi.advanceTimersByTimeAsync(1);
      expect(server.sockets).toHaveLength(n);
    }
    // Asked by the session (its sync got no answer), the same.
    server.accept(alice);
    socket.reconnectUnresponsive();
    expect(server.sockets).toHaveLength(4);
    await vi.advanceTimersByTimeAsync(3_000);
    expect(server.sockets).toHaveLength(5);
    // A connection that answers a ping is alive: the next one presumed dead is replaced at once.
    const ws = server.accept(alice);
    await vi.advanceTimersByTimeAsync(15_000);
    ws.reply(ws.lastRequest('ping'), 'ping', { serverTime: 1 });
    await vi.advanceTimersByTimeAsync(25_000);
    expect(server.sockets).toHaveLength(6);
    socket.stop();
  });

  it('connections closed after ready but before any answer, whatever the code, count toward the same growing pauses; once one answers, a close reconnects promptly again', async () => {
    const { server, socket } = setup({ keepAliveIntervalMs: 0 });
    socket.start();
    // A slow link: each connection authenticates, then the gateway gives up on writing the large answer (4008), or
    // the link drops (1006). random 0.5: 750 ms, 750 ms, 1500 ms, 3000 ms, as after connections presumed dead.
    for (const [n, code, pause] of [
      [2, 4008, 750],
      [3, 1006, 750],
      [4, 4008, 1_500],
      [5, 1001, 3_000],
    ] as const) {
      server.accept(alice);
      await vi.advanceTimersByTimeAsync(10_000);
      server.current.serverClose(code);
      await vi.advanceTimersByTimeAsync(pause - 1);
      expect(server.sockets, `close ${code}`).toHaveLength(n - 1);
      await vi.advanceTimersByTimeAsync(1);
      expect(server.sockets, `close ${code}`).toHaveLength(n);
    }
    // One after a client-side verdict goes on from there: 6000 ms.
    server.accept(alice);
    socket.reconnectUnresponsive();
    await vi.advanceTimersByTimeAsync(5_999);
    expect(server.sockets).toHaveLength(5);
    await vi.advanceTimersByTimeAsync(1);
    expect(server.sockets).toHaveLength(6);
    // This one answers (the session's sync): the gateway's shutdown close (1001) later reconnects after the first
    // pause, as does the next connection's close once it answered too.
    server.accept(alice);
    socket.markResponsive();
    await vi.advanceTimersByTimeAsync(60_000);
    server.current.serverClose(1001, 'shutting down');
    await vi.advanceTimersByTimeAsync(750);
    expect(server.sockets).toHaveLength(7);
    server.accept(alice);
    socket.markResponsive();
    server.current.serverClose(1006);
    await vi.advanceTimersByTimeAsync(750);
    expect(server.sockets).toHaveLength(8);
    socket.stop();
  });

  it('a connection whose keep-alive ping was answered is alive: a close after it reconnects promptly, even after a streak', async () => {
    const { server, socket } = setup({ keepAliveIntervalMs: 15_000, keepAliveTimeoutMs: 10_000 });
    socket.start();
    for (let n = 2; n <= 4; n++) {
      server.accept(alice);
      server.current.serverClose(4008);
      await vi.advanceTimersByTimeAsync(10_000);
      expect(server.sockets).toHaveLength(n);
    }
    const ws = server.accept(alice);
    await vi.advanceTimersByTimeAsync(15_000);
    ws.reply(ws.lastRequest('ping'), 'ping', { serverTime: 1 });
    ws.serverClose(1001, 'shutting down');
    await vi.advanceTimersByTimeAsync(749);
    expect(server.sockets).toHaveLength(4);
    await vi.advanceTimersByTimeAsync(1);
    expect(server.sockets).toHaveLength(5);
    socket.stop();
  });

  it('a ping goes out even when the request queue is full', async () => {
    const { server, socket } = setup({ maxInFlight: 1, requestTimeoutMs: 60_000, keepAliveIntervalMs: 15_000 });
    socket.start();
    const ws = server.accept(alice);
    void socket.request('getSelf', {}).catch(() => {});
    void socket.request('getSelf', {}).catch(() => {});
    expect(socket.queued).toBe(1);
    await vi.advanceTimersByTimeAsync(15_000);
    expect(ws.requests('ping')).toHaveLength(1);
    ws.reply(ws.lastRequest('ping'), 'ping', { serverTime: 1 });
    await vi.advanceTimersByTimeAsync(10_000);
    expect(socket.isOpen).toBe(true);
    socket.stop();
  });

  it('times out a request still waiting in the queue', async () => {
    const { server, socket } = setup({ maxInFlight: 1 });
    socket.start();
    server.accept(alice);
    const first = socket.request('getSelf', {});
    const second = socket.request('getSelf', {});
    const both = Promise.all([
      expect(first).rejects.toMatchObject({ code: 'timeout' }),
      expect(second).rejects.toMatchObject({ code: 'timeout' }),
    ]);
    await vi.advanceTimersByTimeAsync(1_001);
    await both;
    expect(socket.queued).toBe(0);
  });
});
