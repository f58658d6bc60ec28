import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { RestClient } from '../api/rest';
import type { AuthResponse } from '../protocol/generated/AuthResponse';
import type { SyncResponse } from '../protocol/generated/SyncResponse';
import type { ConversationEntry } from '../protocol/generated/ConversationEntry';
import type { ErrorCode } from '../protocol/generated/ErrorCode';
import type { Message } from '../protocol/generated/Message';
import { FakeServer, flush } from '../test/fakeSocket';
import { alice, bob, carol, conv, entry, msg } from '../test/fixtures';
import { unreadCount } from './conversations';
import { ChatSession, type SessionOptions, conversationTitle, isBlankText } from './session';
import { visibleMessages } from './timeline';
import domainRs from '../../../message-service/src/domain.rs?raw';

const users = [alice, bob, carol];
const sessions: ChatSession[] = [];

afterEach(() => {
  for (const s of sessions.splice(0)) s.stop();
});

function memoryStorage() {
  const map = new Map<string, string>();
  return {
    getItem: (k: string) => map.get(k) ?? null,
    setItem: (k: string, v: string) => void map.set(k, v),
    removeItem: (k: string) => void map.delete(k),
    map,
  };
}

function setup(initial: ConversationEntry[], options: Partial<SessionOptions> = {}) {
  const server = new FakeServer();
  let entries = initial;
  server.handlers = {
    listConversations: () => ({ conversations: entries }),
    sync: () => ({ conversations: entries, messages: [], truncated: [], removed: [] }),
    getUsers: (f) => {
      if (f.ids) return { users: users.filter((u) => f.ids!.includes(u.id)) };
      const after = f.after ?? 0;
      return { users: users.filter((u) => u.id > after && (!f.prefix || u.username.startsWith(f.prefix))).slice(0, f.limit ?? 20) };
    },
  };
  const win = new EventTarget();
  let n = 0;
  const session = new ChatSession({
    auth: { user: alice, token: 'tok', issuedAt: Date.now(), expiresAt: Date.now() + 3_600_000 },
    socketUrl: 'ws://test/ws',
    createSocket: server.factory,
    windowTarget: win as unknown as Window,
    documentTarget: { addEventListener() {}, removeEventListener() {}, visibilityState: 'visible' },
    backoff: { baseMs: 10, maxMs: 10 },
    random: () => 1,
    newId: () => `cm-${++n}`,
    storage: memoryStorage(),
    requestTimeoutMs: 2_000,
    ...options,
  });
  sessions.push(session);
  session.start();
  return {
    server,
    session,
    win,
    setEntries: (e: ConversationEntry[]) => (entries = e),
    state: () => session.store.getState(),
    seqs: (cid: number) => visibleMessages(session.store.getState().timelines[cid]!).map((m) => m.seq),
  };
}

/** Waits (bounded) until the client opened its `n`-th socket: the reconnect backoff has run. */
async function reconnected(t: ReturnType<typeof setup>, n = 2) {
  for (let i = 0; i < 100 && t.server.sockets.length < n; i++) await new Promise((r) => setTimeout(r, 5));
  expect(t.server.sockets).toHaveLength(n);
}

/** Waits (bounded) until every send of the session is settled: the resend pauses have run. */
async function nothingPending(t: ReturnType<typeof setup>) {
  for (let i = 0; i < 100 && Object.keys(t.state().pending).length > 0; i++) await new Promise((r) => setTimeout(r, 10));
}

/** The client message ids of the newest `n` messages shown in a conversation, in seq order. */
function lastStoredIds(t: ReturnType<typeof setup>, cid: number, n: number): string[] {
  return visibleMessages(t.state().timelines[cid]!).map((m) => m.clientMessageId).slice(-n);
}

const dm = (lastSeq: number, readSeq: number) => entry(conv(7, [alice.id, bob.id], lastSeq), readSeq, lastSeq ? msg(7, lastSeq, bob.id) : undefined);
const group = entry(conv(8, [alice.id, bob.id, carol.id], 0, { kind: 'group', title: 'Team' }), 0);
const page = (from: number, to: number, more = { hasMoreBefore: from > 1, hasMoreAfter: false }) => ({
  messages: Array.from({ length: to - from + 1 }, (_, i) => msg(7, from + i, bob.id)),
  ...more,
});

/** Connects, answers the first list + sync, and opens conversation 7 with messages `from..to`. */
async function connectAndOpen(t: ReturnType<typeof setup>, from = 3, to = 12) {
  t.server.accept(alice);
  await flush();
  t.server.handlers.getMessages = (f) => (f.before === undefined && f.after === undefined ? page(from, to) : undefined);
  t.session.select({ kind: 'conversation', id: 7 });
  await flush();
  delete t.server.handlers.getMessages;
}

describe('session: sync', () => {
  it("the first sync sends no heads; each conversation's newest messages become its newest page", async () => {
    const t = setup([dm(12, 10), group]);
    // The server's answer for conversations missing from heads: their newest messages (here 3..12).
    t.server.handlers.sync = () => ({ conversations: [dm(12, 10), group], messages: page(3, 12).messages, truncated: [], removed: [] });
    const ws = t.server.accept(alice);
    await flush();
    const types = ws.sent.map((f) => f.type).filter((type) => type !== 'getUsers');
    expect(types).toEqual(['auth', 'sync']);
    expect(ws.lastRequest('sync').heads).toEqual([]);
    expect(t.state().synced).toBe(true);
    expect(unreadCount(t.state().conversations[7]!)).toBe(2);
    expect(t.state().timelines[7]).toMatchObject({ head: 12, lo: 3, hasMoreBefore: true });
    expect(t.state().timelines[8]).toMatchObject({ head: 0, lo: 1, hasMoreBefore: false });
    // Opening needs no request; scrolling back pages with getMessages before the oldest shown.
    t.session.select({ kind: 'conversation', id: 7 });
    await flush();
    expect(ws.requests('getMessages')).toHaveLength(0);
    expect(t.seqs(7)).toEqual([3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    t.server.handlers.getMessages = (f) => (f.before === 3 ? page(1, 2) : undefined);
    await t.session.loadOlder(7);
    expect(t.seqs(7)).toEqual(Array.from({ length: 12 }, (_, i) => i + 1));
    // Later syncs carry the heads held.
    t.server.current.receive({ type: 'resync', reason: 'test' });
    await flush();
    expect(ws.lastRequest('sync').heads).toEqual([
      { conversationId: 7, seq: 12 },
      { conversationId: 8, seq: 0 },
    ]);
  });

  it('a new conversation whose sync answer was cut short follows its tail and loads when opened', async () => {
    const t = setup([dm(12, 12)]);
    t.server.handlers.sync = () => ({ conversations: [dm(12, 12)], messages: page(3, 5).messages, truncated: [7], removed: [] });
    const ws = t.server.accept(alice);
    await flush();
    expect(t.state().timelines[7]).toMatchObject({ head: 12, lo: null });
    expect(ws.requests('getMessages')).toHaveLength(0);
    t.server.handlers.getMessages = (f) => (f.before === undefined && f.after === undefined ? page(3, 12) : undefined);
    t.session.select({ kind: 'conversation', id: 7 });
    await flush();
    expect(t.seqs(7)).toEqual([3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
  });

  it('a conversation never opened that fell far behind follows its tail again instead of fetching the backlog', async () => {
    const t = setup([dm(12, 12)]);
    const ws = t.server.accept(alice);
    await flush();
    // Never opened, but it holds live messages.
    ws.receive({ type: 'message', message: msg(7, 13, bob.id) });
    await flush();
    expect(t.state().timelines[7]).toMatchObject({ head: 13, lo: null });
    // After a long time away: 5,000 more, and the answer is cut short.
    const behind = entry(conv(7, [alice.id, bob.id], 5_013), 12, msg(7, 5_013, bob.id));
    t.server.handlers.sync = () => ({ conversations: [behind], messages: page(14, 213).messages, truncated: [7], removed: [] });
    ws.receive({ type: 'resync', reason: 'test' });
    await flush(5);
    expect(ws.requests('getMessages')).toHaveLength(0);
    expect(t.state().timelines[7]).toMatchObject({ head: 5_013, lo: null });
    expect(t.state().timelines[7]!.bySeq.size).toBe(0);
    expect(unreadCount(t.state().conversations[7]!)).toBe(5_001);
    // Opening loads the newest page; a live message after it is kept.
    t.server.handlers.getMessages = (f) => (f.before === undefined && f.after === undefined ? page(4_964, 5_013) : undefined);
    t.session.select({ kind: 'conversation', id: 7 });
    await flush();
    ws.receive({ type: 'message', message: msg(7, 5_014, bob.id) });
    expect(t.seqs(7)).toEqual(Array.from({ length: 51 }, (_, i) => 4_964 + i));
  });

  it('a never-opened conversation named in truncated without an entry gets its entry and follows its tail', async () => {
    const many = Array.from({ length: 200 }, (_, i) => entry(conv(100 + i, [alice.id, bob.id], 0, { kind: 'group' }), 0));
    const team = (lastSeq: number) => entry(conv(8, [alice.id, bob.id, carol.id], lastSeq, { kind: 'group', title: 'Team' }), 10);
    const t = setup([...many, team(10)]);
    const ws = t.server.accept(alice);
    await flush();
    ws.receive({ type: 'message', message: msg(8, 11, bob.id) });
    await flush();
    expect(t.state().timelines[8]).toMatchObject({ head: 11, lo: null });
    // More of the user's conversations were behind than the answer has entries for: this one is only named.
    t.server.handlers.sync = () => ({ conversations: many, messages: [], truncated: [8], removed: [] });
    t.server.handlers.getConversation = (f) => (f.conversationId === 8 ? team(900) : undefined);
    ws.receive({ type: 'resync', reason: 'test' });
    await flush(5);
    expect(ws.requests('getMessages')).toHaveLength(0);
    expect(ws.lastRequest('getConversation').conversationId).toBe(8);
    expect(t.state().timelines[8]).toMatchObject({ head: 900, lo: null });
    expect(unreadCount(t.state().conversations[8]!)).toBe(890);
  });

  /** Conversation 7, never opened, is opened; its newest page is asked for and left unanswered. */
  async function openingWithNewestPageUnanswered() {
    const t = setup([dm(12, 12)]);
    const ws = t.server.accept(alice);
    await flush();
    t.session.select({ kind: 'conversation', id: 7 });
    await flush();
    return { t, ws, newest: ws.lastRequest('getMessages') };
  }

  it('an entry that moves past a newest page still loading leaves no hole in what is shown', async () => {
    const { t, ws, newest } = await openingWithNewestPageUnanswered();
    // Asked before 13–15 were sent; a sync brings them, with an entry at 15, before the page is answered.
    t.server.handlers.sync = () => ({ conversations: [dm(15, 12)], messages: page(13, 15).messages, truncated: [], removed: [] });
    ws.receive({ type: 'resync', reason: 'test' });
    await flush();
    ws.reply(newest, 'getMessages', page(3, 12));
    await flush();
    expect(t.seqs(7)).toEqual(Array.from({ length: 13 }, (_, i) => 3 + i));
  });

  it('a catch-up of a conversation whose newest page failed to load stops: nothing would show it', async () => {
    const { t, ws, newest } = await openingWithNewestPageUnanswered();
    t.server.handlers.sync = () => ({ conversations: [dm(5_013, 12)], messages: page(13, 212).messages, truncated: [7], removed: [] });
    ws.receive({ type: 'resync', reason: 'test' });
    await flush();
    // Its newest page is loading, so the cut-short conversation is caught up, from 212.
    const after = ws.lastRequest('getMessages');
    expect(after).toMatchObject({ conversationId: 7, after: 212 });
    ws.fail(newest, { code: 'unavailable', message: 'down' });
    await flush();
    ws.reply(after, 'getMessages', page(213, 312, { hasMoreBefore: true, hasMoreAfter: true }));
    await flush();
    expect(ws.requests('getMessages')).toHaveLength(2);
  });

  it('with more conversations than sync answers for, the rest are listed once', async () => {
    const many = Array.from({ length: 200 }, (_, i) => entry(conv(100 + i, [alice.id, bob.id], 0, { kind: 'group' }), 0));
    const t = setup(many);
    const older = entry(conv(50, [alice.id, carol.id], 0, { kind: 'group', title: 'old' }), 0);
    t.server.handlers.listConversations = () => ({ conversations: [...many, older] });
    const ws = t.server.accept(alice);
    await flush();
    expect(ws.requests('listConversations')).toHaveLength(1);
    expect(t.state().conversations[50]).toBeDefined();
    ws.receive({ type: 'resync', reason: 'test' });
    await flush();
    expect(ws.requests('listConversations')).toHaveLength(1);
  });

  it('on reconnect, sync carries the newest contiguous seq held of every conversation', async () => {
    const t = setup([dm(12, 12), group]);
    await connectAndOpen(t);
    expect(t.seqs(7)).toEqual([3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    t.server.current.receive({ type: 'message', message: msg(7, 13, bob.id) });
    t.server.current.receive({ type: 'message', message: msg(8, 1, carol.id) });
    t.server.current.serverClose(1001, 'restart');
    expect(t.state().connection.status).toBe('reconnecting');
    await reconnected(t);
    const ws2 = t.server.accept(alice);
    await flush();
    expect(ws2.requests('listConversations')).toHaveLength(0);
    expect(ws2.lastRequest('sync').heads).toEqual([
      { conversationId: 7, seq: 13 },
      { conversationId: 8, seq: 1 },
    ]);
  });

  it('reconnects and syncs after a slow-consumer close (4008)', async () => {
    const t = setup([dm(2, 2)]);
    t.server.accept(alice);
    await flush();
    t.server.current.serverClose(4008, 'slow consumer');
    await reconnected(t);
    const ws2 = t.server.accept(alice);
    await flush();
    expect(ws2.requests('sync')).toHaveLength(1);
  });

  it('applies what sync returns and pages truncated conversations with getMessages after', async () => {
    const t = setup([dm(12, 12)]);
    await connectAndOpen(t);
    const afters: number[] = [];
    t.server.handlers.sync = () => ({
      conversations: [dm(17, 12)],
      messages: [msg(7, 13, bob.id), msg(7, 14, bob.id)],
      truncated: [7],
      removed: [],
    });
    t.server.handlers.getMessages = (f) => {
      afters.push(f.after ?? -1);
      if (f.after === 14) return page(15, 16, { hasMoreBefore: true, hasMoreAfter: true });
      if (f.after === 16) return page(17, 17);
      return { messages: [], hasMoreBefore: true, hasMoreAfter: false };
    };
    t.server.current.receive({ type: 'resync', reason: 'broker reconnected' });
    await flush(10);
    expect(afters).toEqual([14, 16]);
    expect(t.seqs(7)).toEqual(Array.from({ length: 15 }, (_, i) => i + 3));
    expect(t.state().timelines[7]!.head).toBe(17);
    expect(unreadCount(t.state().conversations[7]!)).toBe(5);
  });

  it('a gap in live messages fetches getMessages after the last contiguous seq', async () => {
    const t = setup([dm(12, 12)]);
    await connectAndOpen(t);
    const ws = t.server.current;
    ws.receive({ type: 'message', message: msg(7, 15, bob.id) });
    await flush(1);
    const req = ws.lastRequest('getMessages');
    expect(req).toMatchObject({ conversationId: 7, after: 12 });
    ws.reply(req, 'getMessages', page(13, 15));
    await flush();
    expect(t.seqs(7)).toEqual([3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
    expect(t.state().timelines[7]!.head).toBe(15);
  });

  it('a message that arrives twice, or late, shows once and in seq order', async () => {
    const t = setup([dm(12, 12)]);
    await connectAndOpen(t);
    const ws = t.server.current;
    t.server.handlers.getMessages = () => page(13, 14);
    ws.receive({ type: 'message', message: msg(7, 14, bob.id) });
    ws.receive({ type: 'message', message: msg(7, 13, bob.id) });
    ws.receive({ type: 'message', message: msg(7, 14, bob.id) });
    await flush();
    expect(t.seqs(7)).toEqual([3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]);
    expect(t.state().conversations[7]!.conversation.lastSeq).toBe(14);
  });

  it('syncs on resync frames, on window focus and on the interval from ready', async () => {
    const t = setup([dm(1, 1)]);
    const ws = t.server.accept(alice, 1_000);
    await flush();
    expect(ws.requests('sync')).toHaveLength(1);
    ws.receive({ type: 'resync', reason: 'lagged' });
    await flush();
    expect(ws.requests('sync')).toHaveLength(2);
    t.win.dispatchEvent(new Event('focus'));
    await flush();
    expect(ws.requests('sync')).toHaveLength(3);
    await new Promise((r) => setTimeout(r, 1_100));
    await flush();
    expect(ws.requests('sync').length).toBeGreaterThanOrEqual(4);
  });

  it('a live message in a conversation not known yet fetches its entry', async () => {
    const t = setup([]);
    const ws = t.server.accept(alice);
    await flush();
    t.server.handlers.getConversation = () => entry(conv(9, [alice.id, carol.id], 1), 0, msg(9, 1, carol.id));
    ws.receive({ type: 'message', message: msg(9, 1, carol.id, 'hi alice') });
    await flush();
    expect(ws.lastRequest('getConversation').conversationId).toBe(9);
    expect(t.state().conversations[9]?.lastMessage?.body).toBe('m1');
    expect(unreadCount(t.state().conversations[9]!)).toBe(1);
    expect(t.state().users[carol.id]?.username).toBe('carol');
  });

  it('being added to a group shows it with its history read', async () => {
    const t = setup([]);
    const ws = t.server.accept(alice);
    await flush();
    t.server.handlers.getConversation = () => entry(conv(8, [alice.id, bob.id, carol.id], 5, { kind: 'group', title: 'Team' }), 5);
    ws.receive({ type: 'conversation', conversation: conv(8, [alice.id, bob.id, carol.id], 5, { kind: 'group', title: 'Team' }) });
    expect(unreadCount(t.state().conversations[8]!)).toBe(0);
    await flush();
    expect(ws.lastRequest('getConversation').conversationId).toBe(8);
    expect(unreadCount(t.state().conversations[8]!)).toBe(0);
    ws.receive({ type: 'message', message: msg(8, 6, bob.id) });
    expect(unreadCount(t.state().conversations[8]!)).toBe(1);
  });

  it('a membership frame for a group not listed yet does not erase its unread messages', async () => {
    const t = setup([]);
    // The page's first sync has not answered yet when someone joins a group the user has 3 unread messages in.
    t.server.handlers.sync = () => undefined;
    const ws = t.server.accept(alice);
    await flush();
    const team = conv(8, [alice.id, bob.id, carol.id], 5, { kind: 'group', title: 'Team' });
    t.server.handlers.getConversation = () => entry(team, 2);
    ws.receive({ type: 'conversation', conversation: team });
    await flush();
    expect(ws.lastRequest('getConversation').conversationId).toBe(8);
    expect(unreadCount(t.state().conversations[8]!)).toBe(3);
    ws.reply(ws.lastRequest('sync'), 'sync', { conversations: [entry(team, 2)], messages: [], truncated: [], removed: [] });
    await flush();
    expect(unreadCount(t.state().conversations[8]!)).toBe(3);
  });

  it('read frames and markRead move the unread count', async () => {
    const t = setup([dm(12, 4)]);
    await connectAndOpen(t);
    expect(unreadCount(t.state().conversations[7]!)).toBe(8);
    const ws = t.server.current;
    ws.receive({ type: 'read', position: { conversationId: 7, readSeq: 10 } });
    expect(unreadCount(t.state().conversations[7]!)).toBe(2);
    t.server.handlers.markRead = (f) => ({ conversationId: f.conversationId, readSeq: f.seq });
    t.session.markRead(7);
    t.session.markRead(7); // not sent twice
    await flush();
    expect(ws.requests('markRead')).toEqual([expect.objectContaining({ conversationId: 7, seq: 12 })]);
    expect(unreadCount(t.state().conversations[7]!)).toBe(0);
  });

  it('a conversation frame that no longer lists the user removes it', async () => {
    const t = setup([dm(1, 1), group]);
    t.server.accept(alice);
    await flush();
    t.session.select({ kind: 'conversation', id: 8 });
    t.server.current.receive({ type: 'conversation', conversation: conv(8, [bob.id, carol.id], 0, { kind: 'group', title: 'Team' }) });
    expect(t.state().conversations[8]).toBeUndefined();
    expect(t.state().selected).toBeNull();
    expect(t.state().notice).toMatch(/Team/);
  });

  it('a sync answered after a removal, but asked before it, does not bring the conversation back', async () => {
    const t = setup([dm(1, 1), group]);
    const ws = t.server.accept(alice);
    await flush();
    t.server.handlers.sync = () => undefined; // answered by hand below
    t.server.current.receive({ type: 'resync', reason: 'test' });
    await flush();
    const asked = ws.lastRequest('sync');
    const after = conv(8, [bob.id, carol.id], 0, { kind: 'group', title: 'Team' });
    ws.receive({ type: 'conversation', conversation: after });
    expect(t.state().conversations[8]).toBeUndefined();
    // The sync's answer was computed while the user was still a member.
    ws.reply(asked, 'sync', { conversations: [dm(1, 1), group], messages: [], truncated: [], removed: [] });
    await flush();
    expect(t.state().conversations[8]).toBeUndefined();
    expect(t.state().conversations[7]).toBeDefined();
    // Added back later: a sync asked after that brings it again.
    ws.receive({ type: 'conversation', conversation: conv(8, [alice.id, bob.id, carol.id], 0, { kind: 'group', title: 'Team' }) });
    expect(t.state().conversations[8]).toBeDefined();
  });

  it('leaving a group removes it without telling the user they are no longer a member', async () => {
    const t = setup([dm(1, 1), group]);
    const ws = t.server.accept(alice);
    await flush();
    t.session.select({ kind: 'conversation', id: 8 });
    const left = t.session.leave(8);
    const request = ws.lastRequest('leaveConversation');
    // The service tells the leaver's sockets before it answers.
    const after = conv(8, [bob.id, carol.id], 0, { kind: 'group', title: 'Team' });
    ws.receive({ type: 'conversation', conversation: after });
    ws.reply(request, 'leaveConversation', after);
    await left;
    expect(t.state().conversations[8]).toBeUndefined();
    expect(t.state().selected).toBeNull();
    expect(t.state().notice).toBeNull();
  });

  it('loads older pages before the oldest seq shown', async () => {
    const t = setup([dm(12, 12)]);
    await connectAndOpen(t);
    t.server.handlers.getMessages = (f) => (f.before === 3 ? page(1, 2) : undefined);
    await t.session.loadOlder(7);
    expect(t.server.current.lastRequest('getMessages')).toMatchObject({ before: 3 });
    expect(t.seqs(7)).toEqual(Array.from({ length: 12 }, (_, i) => i + 1));
    expect(t.state().timelines[7]!.hasMoreBefore).toBe(false);
  });
});

describe('session: memory of conversations not shown', () => {
  const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

  it('a conversation left keeps its newest 200 messages, and scrolling back in it pages the rest in again', async () => {
    const t = setup([dm(1_000, 1_000), group]);
    await connectAndOpen(t, 1, 1_000);
    expect(t.seqs(7)).toHaveLength(1_000);

    t.session.select({ kind: 'conversation', id: 8 });
    await flush();

    expect(t.seqs(7)).toEqual(range(801, 1_000));
    expect(t.state().timelines[7]).toMatchObject({ head: 1_000, lo: 801, hasMoreBefore: true });
    t.session.select({ kind: 'conversation', id: 7 });
    await flush();
    expect(t.server.current.requests('getMessages')).toHaveLength(1);
    t.server.handlers.getMessages = (f) => (f.before === 801 ? page(751, 800) : undefined);
    await t.session.loadOlder(7);
    expect(t.seqs(7)).toEqual(range(751, 1_000));
  });

  it('a conversation not shown stops growing with its live messages; the one shown keeps them all', async () => {
    const t = setup([dm(12, 12), group]);
    await connectAndOpen(t);
    const ws = t.server.current;
    t.session.select({ kind: 'conversation', id: 8 });
    await flush();

    for (let seq = 13; seq <= 1_012; seq++) ws.receive({ type: 'message', message: msg(7, seq, bob.id) });
    await flush();

    const hidden = t.state().timelines[7]!;
    expect(hidden.bySeq.size).toBeLessThan(400);
    expect(hidden.head).toBe(1_012);
    expect(t.seqs(7).slice(-3)).toEqual([1_010, 1_011, 1_012]);
    expect(ws.requests('getMessages')).toHaveLength(1);
    // The conversation shown holds everything that came while it was shown.
    t.session.select({ kind: 'conversation', id: 8 });
    for (let seq = 1; seq <= 500; seq++) ws.receive({ type: 'message', message: msg(8, seq, carol.id) });
    await flush();
    expect(visibleMessages(t.state().timelines[8]!)).toHaveLength(500);
  });

  it('an older page that comes after the user left the conversation leaves no hole in it', async () => {
    const t = setup([dm(1_000, 1_000), group]);
    await connectAndOpen(t, 501, 1_000);
    const ws = t.server.current;
    const older = t.session.loadOlder(7);
    await flush();
    const asked = ws.lastRequest('getMessages');
    expect(asked.before).toBe(501);
    t.session.select({ kind: 'conversation', id: 8 });
    ws.reply(asked, 'getMessages', page(451, 500));
    await older;

    expect(t.seqs(7)).toEqual(range(801, 1_000));
    expect(t.state().timelines[7]).toMatchObject({ lo: 801, hasMoreBefore: true });
    expect(ws.requests('getMessages')).toHaveLength(2);
  });

  it('an older page dropped because the user left and came back meanwhile is asked for again from the window', async () => {
    const t = setup([dm(1_000, 1_000), group]);
    await connectAndOpen(t, 501, 1_000);
    const ws = t.server.current;
    const older = t.session.loadOlder(7);
    await flush();
    const asked = ws.lastRequest('getMessages');
    t.session.select({ kind: 'conversation', id: 8 });
    t.session.select({ kind: 'conversation', id: 7 });
    await flush();
    ws.reply(asked, 'getMessages', page(451, 500));
    await older;

    const again = ws.lastRequest('getMessages');
    expect(again.before).toBe(801);
    expect(t.state().loadingOlder[7]).toBe(true);
    ws.reply(again, 'getMessages', page(751, 800));
    await flush();
    expect(t.seqs(7)).toEqual(range(751, 1_000));
    expect(t.state().loadingOlder[7]).toBeFalsy();
  });
});

describe('session: a page refused as forbidden', () => {
  const forbidden = { error: { code: 'forbidden' as const, message: 'you are not a member of that conversation' } };
  // With messages: an empty conversation has no page to ask for.
  const team = entry(conv(8, [alice.id, bob.id, carol.id], 5, { kind: 'group', title: 'Team' }), 5, msg(8, 5, bob.id));
  /** The 200 conversations one sync answers for, all more recent than Team, which only the full list holds. */
  const recent = Array.from({ length: 200 }, (_, i) => entry(conv(100 + i, [alice.id, bob.id], 1, { kind: 'group' }), 1));

  /** Connected, with Team listed only by the full list (the sync's is 200 more recent ones). */
  async function withTeamBeyondTheSync(sync?: () => SyncResponse) {
    const t = setup(recent);
    t.server.handlers.listConversations = () => ({ conversations: [...recent, team] });
    if (sync) t.server.handlers.sync = sync;
    t.server.accept(alice);
    await flush();
    return t;
  }

  it('removed from an older conversation than sync answers for: its unsent message, refused, removes it, says so, and is discarded', async () => {
    const t = await withTeamBeyondTheSync();
    expect(t.state().conversations[8]).toBeDefined();
    // Offline, the user writes to Team, and is removed from it; the reconnect's sync, incomplete, does not name it
    // in `removed` (the removal came after it was answered, or the service predates `removed`).
    t.server.current.serverClose(1006);
    await flush(1);
    t.session.send('written offline', { conversationId: 8 });
    await reconnected(t);
    t.server.handlers.sendMessage = () => forbidden;
    t.server.handlers.getMessages = () => forbidden;
    t.server.accept(alice);
    await flush();
    // The resend after the reconnect is refused: that is the removal.
    expect(t.server.current.requests('sendMessage')).toHaveLength(1);
    expect(t.server.current.requests('getMessages')).toHaveLength(0);
    expect(t.state().conversations[8]).toBeUndefined();
    expect(t.state().timelines[8]).toBeUndefined();
    expect(t.state().selected).toBeNull();
    expect(t.state().notice).toBe('You are no longer a member of Team. Your unsent message to it was discarded.');
    expect(t.state().pending).toEqual({});
    expect(t.state().loadFailed).toEqual({});
    expect(t.state().loadingNewest).toEqual({});
  });

  it('removed from an older conversation than sync answers for: the sync names it, and it is removed with its unsent message', async () => {
    const t = await withTeamBeyondTheSync();
    expect(t.state().conversations[8]).toBeDefined();
    t.server.current.serverClose(1006);
    await flush(1);
    t.session.send('written offline', { conversationId: 8 });
    await reconnected(t);
    t.server.handlers.sync = ({ heads }) => ({
      conversations: recent,
      messages: [],
      truncated: [],
      removed: heads.some((h) => h.conversationId === 8) ? [8] : [],
    });
    t.server.accept(alice);
    await flush();
    expect(t.server.current.lastRequest('sync').heads).toContainEqual({ conversationId: 8, seq: 5 });
    expect(t.state().conversations[8]).toBeUndefined();
    expect(t.state().timelines[8]).toBeUndefined();
    expect(t.state().notice).toBe('You are no longer a member of Team. Your unsent message to it was discarded.');
    expect(t.state().pending).toEqual({});
    expect(t.server.current.requests('sendMessage')).toHaveLength(0);
    expect(Object.keys(t.state().conversations)).toHaveLength(200);
  });

  it('a sync answer without removed (a gateway older than the field) is applied all the same', async () => {
    const t = await withTeamBeyondTheSync(() => ({ conversations: recent, messages: [], truncated: [] }) as unknown as SyncResponse);
    expect(t.state().synced).toBe(true);
    expect(t.state().conversations[8]).toBeDefined();
  });

  it('an older page refused as forbidden removes the conversation the same way', async () => {
    const t = setup([dm(12, 12), team]);
    await connectAndOpen(t);
    t.server.handlers.getMessages = () => forbidden;
    await t.session.loadOlder(7);
    expect(t.server.current.lastRequest('getMessages')).toMatchObject({ before: 3 });
    expect(t.state().conversations[7]).toBeUndefined();
    expect(t.state().selected).toBeNull();
    expect(t.state().notice).toBe('You are no longer a member of bob.');
    expect(t.state().loadingOlder).toEqual({});
  });

  it('a gap repair (getMessages after) refused as forbidden removes the conversation the same way', async () => {
    const t = setup([dm(12, 12), team]);
    const ws = t.server.accept(alice);
    await flush();
    t.server.handlers.getMessages = () => ({ messages: [1, 2, 3, 4, 5].map((seq) => msg(8, seq, bob.id)), hasMoreBefore: false, hasMoreAfter: false });
    t.session.select({ kind: 'conversation', id: 8 });
    await flush();
    // Removed after message 8 was sent: the repair of the gap before it is refused.
    t.server.handlers.getMessages = () => forbidden;
    ws.receive({ type: 'message', message: msg(8, 8, bob.id) });
    await flush();
    expect(ws.lastRequest('getMessages')).toMatchObject({ conversationId: 8, after: 5 });
    expect(t.state().conversations[8]).toBeUndefined();
    expect(t.state().conversations[7]).toBeDefined();
    expect(t.state().selected).toBeNull();
    expect(t.state().notice).toBe('You are no longer a member of Team.');
  });

  /** Connected, with a resync's `sync` asked and left for the test to answer by hand. */
  async function withSyncHeld() {
    const t = setup([dm(12, 12), team]);
    const ws = t.server.accept(alice);
    await flush();
    t.server.handlers.sync = () => undefined;
    ws.receive({ type: 'resync', reason: 'test' });
    await flush();
    return { t, ws, asked: ws.lastRequest('sync') };
  }

  it('a sync asked before the refusal, answered after it, does not bring the conversation back', async () => {
    const { t, ws, asked } = await withSyncHeld();
    t.server.handlers.getMessages = () => forbidden;
    t.session.select({ kind: 'conversation', id: 8 });
    await flush();
    expect(t.state().conversations[8]).toBeUndefined();
    // The sync's answer was computed while the user was still a member.
    ws.reply(asked, 'sync', { conversations: [dm(12, 12), team], messages: [], truncated: [], removed: [] });
    await flush();
    expect(t.state().conversations[8]).toBeUndefined();
    expect(t.state().conversations[7]).toBeDefined();
  });

  it('a refusal asked before the user was added back does not remove the conversation', async () => {
    const t = setup([dm(12, 12), team]);
    const ws = t.server.accept(alice);
    await flush();
    t.server.handlers.getMessages = () => undefined; // answered by hand below
    t.session.select({ kind: 'conversation', id: 8 });
    await flush();
    const asked = ws.lastRequest('getMessages');
    // Removed and added back while the page was out: the frame re-adding comes before the page's refusal.
    ws.receive({ type: 'conversation', conversation: team.conversation });
    await flush();
    ws.fail(asked, forbidden.error);
    await flush();
    expect(t.state().conversations[8]).toBeDefined();
    expect(t.state().notice).toBeNull();
    expect(t.state().loadFailed[8]).toBe(true);
  });

  it('a send refused before the user was added back fails, and keeps the conversation', async () => {
    const t = setup([dm(12, 12), team]);
    const ws = t.server.accept(alice);
    await flush();
    t.server.handlers.sendMessage = () => undefined; // answered by hand below
    t.session.send('still here?', { conversationId: 8 });
    await flush();
    const asked = ws.lastRequest('sendMessage');
    ws.receive({ type: 'conversation', conversation: team.conversation });
    await flush();
    ws.fail(asked, forbidden.error);
    await flush();
    expect(t.state().conversations[8]).toBeDefined();
    expect(t.state().notice).toBeNull();
    expect(t.state().pending['cm-1']).toMatchObject({ status: 'failed', error: { code: 'forbidden' }, autoResend: false });
  });

  it('a complete sync asked before the user was added back does not remove the conversation', async () => {
    const { t, ws, asked } = await withSyncHeld();
    ws.receive({ type: 'conversation', conversation: team.conversation });
    await flush();
    // Computed while the user was briefly out of Team.
    ws.reply(asked, 'sync', { conversations: [dm(12, 12)], messages: [], truncated: [], removed: [] });
    await flush();
    expect(t.state().conversations[8]).toBeDefined();
    expect(t.state().notice).toBeNull();
  });

  it('a page that fails for any other reason keeps the conversation', async () => {
    const t = setup([dm(12, 12), team]);
    await connectAndOpen(t);
    const ws = t.server.current;
    for (const code of ['timeout', 'unavailable', 'internal', 'rate_limited'] satisfies ErrorCode[]) {
      t.server.handlers.getMessages = () => ({ error: { code, message: 'not now' } });
      t.session.select({ kind: 'conversation', id: 8 });
      await flush();
      expect(t.state().loadFailed[8], code).toBe(true);
      await t.session.loadOlder(7);
      await t.session.catchUp(7);
    }
    expect(ws.requests('getMessages').filter((f) => f.before === 3)).toHaveLength(4);
    expect(ws.requests('getMessages').filter((f) => f.after === 12)).toHaveLength(4);
    // Cut off by a drop.
    delete t.server.handlers.getMessages;
    t.session.select({ kind: 'conversation', id: 8 });
    ws.serverClose(1006);
    await flush();
    expect(t.state().loadFailed[8]).toBe(true);
    expect(t.state().conversations[7]).toBeDefined();
    expect(t.state().conversations[8]).toBeDefined();
    expect(t.state().selected).toEqual({ kind: 'conversation', id: 8 });
    expect(t.state().notice).toBeNull();
  });
});

describe('session: a sync that gets no answer', () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  const settle = () => vi.advanceTimersByTimeAsync(0);

  it('reconnects after growing pauses, though every connection authenticates; once a sync answers, what was typed meanwhile goes out', async () => {
    // A slow link: the gateway authenticates, but the sync's large answer never arrives in time.
    const t = setup([dm(12, 12)], {
      requestTimeoutMs: 5_000,
      syncTimeoutMs: 5_000,
      backoff: { baseMs: 1_000, maxMs: 8_000 },
      random: () => 1,
      keepAliveIntervalMs: 0,
    });
    t.server.handlers.sync = () => undefined;
    t.server.accept(alice);
    await settle();
    // The first time, the socket is presumed dead and replaced at once.
    await vi.advanceTimersByTimeAsync(5_000);
    expect(t.server.sockets).toHaveLength(2);
    t.server.accept(alice);
    await settle();
    t.session.send('typed meanwhile', { conversationId: 7 });
    // Then after 1 s, 2 s…: the backoff grows across the connections whose sync got no answer.
    for (const [n, pause] of [
      [3, 1_000],
      [4, 2_000],
    ] as const) {
      await vi.advanceTimersByTimeAsync(5_000);
      expect(t.server.sockets).toHaveLength(n - 1);
      await vi.advanceTimersByTimeAsync(pause - 1);
      expect(t.server.sockets).toHaveLength(n - 1);
      await vi.advanceTimersByTimeAsync(1);
      expect(t.server.sockets).toHaveLength(n);
      t.server.accept(alice);
      await settle();
    }
    expect(t.server.sockets.flatMap((ws) => ws.requests('sendMessage'))).toEqual([]);
    // This one answers: the message typed meanwhile goes out.
    t.server.current.reply(t.server.current.lastRequest('sync'), 'sync', { conversations: [dm(12, 12)], messages: [], truncated: [], removed: [] });
    t.server.handlers.sendMessage = (f) => msg(7, 13, alice.id, f.body, { clientMessageId: f.clientMessageId });
    await settle();
    expect(t.server.current.requests('sendMessage').map((f) => f.body)).toEqual(['typed meanwhile']);
    expect(t.state().pending).toEqual({});
    // An answered sync ends the streak: the next sync with no answer replaces the socket at once again.
    t.server.current.receive({ type: 'resync', reason: 'test' });
    await vi.advanceTimersByTimeAsync(5_000);
    expect(t.server.sockets).toHaveLength(5);
  });

  it('closed by the gateway each time before the sync answer is in (4008: too slow), it reconnects after growing pauses; once a sync answers, what was typed meanwhile goes out, and a later close reconnects promptly', async () => {
    const t = setup([dm(12, 12)], { backoff: { baseMs: 1_000, maxMs: 8_000 }, random: () => 1, keepAliveIntervalMs: 0 });
    t.server.handlers.sync = () => undefined;
    t.server.accept(alice);
    await settle();
    t.session.send('typed meanwhile', { conversationId: 7 });
    // The gateway could not write the answer within its 10 s, each time: 1 s, 1 s, 2 s, 4 s.
    for (const [n, pause] of [
      [2, 1_000],
      [3, 1_000],
      [4, 2_000],
      [5, 4_000],
    ] as const) {
      await vi.advanceTimersByTimeAsync(10_000);
      t.server.current.serverClose(4008, 'too slow, reconnect and sync');
      await vi.advanceTimersByTimeAsync(pause - 1);
      expect(t.server.sockets).toHaveLength(n - 1);
      await vi.advanceTimersByTimeAsync(1);
      expect(t.server.sockets).toHaveLength(n);
      t.server.accept(alice);
      await settle();
    }
    expect(t.server.sockets.flatMap((ws) => ws.requests('sendMessage'))).toEqual([]);
    // This one answers: the message typed meanwhile goes out.
    t.server.current.reply(t.server.current.lastRequest('sync'), 'sync', { conversations: [dm(12, 12)], messages: [], truncated: [], removed: [] });
    t.server.handlers.sendMessage = (f) => msg(7, 13, alice.id, f.body, { clientMessageId: f.clientMessageId });
    await settle();
    expect(t.server.current.requests('sendMessage').map((f) => f.body)).toEqual(['typed meanwhile']);
    expect(t.state().pending).toEqual({});
    // The connection worked: the gateway's shutdown close reconnects after the first pause, not the streak's.
    t.server.current.serverClose(1001, 'shutting down');
    await vi.advanceTimersByTimeAsync(1_000);
    expect(t.server.sockets).toHaveLength(6);
  });

  it('waits longer for a sync than for other requests: its answer can be large', async () => {
    const t = setup([dm(12, 12)], { requestTimeoutMs: 2_000, keepAliveIntervalMs: 0 });
    t.server.handlers.sync = () => undefined;
    t.server.accept(alice);
    await settle();
    await vi.advanceTimersByTimeAsync(10_000);
    expect(t.server.sockets).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(20_000);
    expect(t.server.sockets).toHaveLength(2);
  });
});

describe('session: sending', () => {
  const own = (seq: number, clientMessageId: string, body = 'hello'): Message =>
    msg(7, seq, alice.id, body, { clientMessageId });

  it('shows a send as pending at once, then as sent with its seq; the live echo does not double it', async () => {
    const t = setup([dm(12, 12)]);
    await connectAndOpen(t);
    const ws = t.server.current;
    const id = t.session.send('hello');
    expect(id).toBe('cm-1');
    expect(t.state().pending['cm-1']).toMatchObject({ status: 'sending', body: 'hello' });
    const req = ws.lastRequest('sendMessage');
    expect(req).toMatchObject({ conversationId: 7, clientMessageId: 'cm-1', body: 'hello' });
    expect(req.toUserId).toBeUndefined();
    ws.reply(req, 'sendMessage', own(13, 'cm-1'));
    ws.receive({ type: 'message', message: own(13, 'cm-1') });
    await flush();
    expect(t.state().pending).toEqual({});
    expect(t.seqs(7).filter((s) => s === 13)).toHaveLength(1);
    expect(t.state().timelines[7]!.bySeq.get(13)?.clientMessageId).toBe('cm-1');
  });

  it("sending reads the conversation: no unread, and no markRead for the user's own messages", async () => {
    const t = setup([dm(12, 12)]);
    t.server.handlers.markRead = (f) => ({ conversationId: f.conversationId, readSeq: f.seq });
    await connectAndOpen(t);
    const ws = t.server.current;
    t.server.handlers.sendMessage = (f) => own(13, f.clientMessageId);
    t.session.send('hello');
    await flush();
    expect(t.state().conversations[7]!.readSeq).toBe(13);
    t.session.markRead(7);
    // The user's other device sent one too: still nothing unread.
    ws.receive({ type: 'message', message: own(14, 'elsewhere') });
    t.session.markRead(7);
    await flush();
    expect(unreadCount(t.state().conversations[7]!)).toBe(0);
    expect(ws.requests('markRead')).toHaveLength(0);
  });

  it('the live echo arriving before the reply confirms the send too', async () => {
    const t = setup([dm(12, 12)]);
    await connectAndOpen(t);
    const ws = t.server.current;
    t.session.send('hello');
    ws.receive({ type: 'message', message: own(13, 'cm-1') });
    expect(t.state().pending).toEqual({});
    ws.reply(ws.lastRequest('sendMessage'), 'sendMessage', own(13, 'cm-1'));
    await flush();
    expect(t.seqs(7).slice(-2)).toEqual([12, 13]);
    expect(t.state().pending).toEqual({});
  });

  it('an error fails the send; Retry sends it again with the same client message id', async () => {
    const t = setup([dm(12, 12)]);
    await connectAndOpen(t);
    t.server.handlers.sendMessage = () => ({ error: { code: 'validation', message: 'too long' } });
    t.session.send('hello');
    await flush();
    expect(t.state().pending['cm-1']).toMatchObject({ status: 'failed', error: { code: 'validation' }, autoResend: false });
    t.server.handlers.sendMessage = (f) => own(13, f.clientMessageId);
    t.session.retry('cm-1');
    expect(t.state().pending['cm-1']?.status).toBe('sending');
    await flush();
    const sends = t.server.current.requests('sendMessage');
    expect(sends).toHaveLength(2);
    expect(sends.map((s) => s.clientMessageId)).toEqual(['cm-1', 'cm-1']);
    expect(sends[0]!.id).not.toBe(sends[1]!.id);
    expect(t.state().pending).toEqual({});
    expect(t.seqs(7).slice(-1)).toEqual([13]);
  });

  it('a send that failed for a passing reason is sent again by itself, with the same id, after growing pauses', async () => {
    const t = setup([dm(12, 12)], { resendDelayMs: 20 });
    await connectAndOpen(t);
    const ws = t.server.current;
    const refusals: ErrorCode[] = ['unavailable', 'timeout', 'internal'];
    t.server.handlers.sendMessage = (f) => {
      const code = refusals.shift();
      return code ? { error: { code, message: 'not now' } } : own(13, f.clientMessageId);
    };
    t.session.send('hello');
    await flush();
    expect(t.state().pending['cm-1']).toMatchObject({ status: 'failed', error: { code: 'unavailable' }, autoResend: true });
    const started = Date.now();
    await nothingPending(t);
    expect(t.state().pending).toEqual({});
    expect(ws.requests('sendMessage').map((s) => s.clientMessageId)).toEqual(['cm-1', 'cm-1', 'cm-1', 'cm-1']);
    // Pauses of 20, 40 and 80 ms before the three resends.
    expect(Date.now() - started).toBeGreaterThanOrEqual(130);
    expect(t.seqs(7).slice(-1)).toEqual([13]);
  });

  it('a send typed while an earlier one waits to be resent goes after it, not before', async () => {
    const t = setup([dm(12, 12)], { resendDelayMs: 40 });
    await connectAndOpen(t);
    const ws = t.server.current;
    let down = true;
    let seq = 12;
    t.server.handlers.sendMessage = (f) => (down ? { error: { code: 'unavailable', message: 'down' } } : own(++seq, f.clientMessageId));
    t.session.send('first');
    await flush();
    expect(t.state().pending['cm-1']).toMatchObject({ status: 'failed', autoResend: true });
    // The service is back, but the first send waits out its pause: the second waits behind it.
    down = false;
    t.session.send('second');
    t.session.send('third');
    await flush();
    expect(ws.requests('sendMessage').map((s) => s.clientMessageId)).toEqual(['cm-1']);
    expect(t.state().pending['cm-2']).toMatchObject({ status: 'failed', autoResend: true });
    await nothingPending(t);
    expect(t.state().pending).toEqual({});
    expect(ws.requests('sendMessage').map((s) => s.clientMessageId)).toEqual(['cm-1', 'cm-1', 'cm-2', 'cm-3']);
    expect(visibleMessages(t.state().timelines[7]!).map((m) => [m.seq, m.clientMessageId]).slice(-3)).toEqual([
      [13, 'cm-1'],
      [14, 'cm-2'],
      [15, 'cm-3'],
    ]);
    // Another conversation's sends are not held behind this one's.
    t.server.handlers.sendMessage = (f) => (f.conversationId === 7 ? { error: { code: 'unavailable', message: 'down' } } : undefined);
    t.session.send('stuck');
    await flush();
    t.session.send('elsewhere', { conversationId: 8 });
    await flush();
    expect(ws.lastRequest('sendMessage')).toMatchObject({ conversationId: 8, clientMessageId: 'cm-5' });
  });

  it('a send to a direct conversation waits behind one made to the person before the conversation was known', async () => {
    const t = setup([dm(12, 12)], { resendDelayMs: 10_000 });
    await connectAndOpen(t);
    const ws = t.server.current;
    t.server.handlers.sendMessage = (f) => ('toUserId' in f && f.toUserId !== undefined ? { error: { code: 'unavailable', message: 'down' } } : undefined);
    t.session.send('first', { toUserId: bob.id });
    await flush();
    expect(t.state().pending['cm-1']).toMatchObject({ status: 'failed', autoResend: true });
    t.session.send('second', { conversationId: 7 });
    t.session.send('elsewhere', { conversationId: 8 });
    await flush();
    expect(ws.requests('sendMessage').map((f) => f.clientMessageId)).toEqual(['cm-1', 'cm-3']);
    expect(t.state().pending['cm-2']).toMatchObject({ status: 'failed', error: { code: 'unavailable' } });
  });

  it('a send to a direct conversation waits while one made to the person is still on its way, then follows it', async () => {
    const t = setup([dm(12, 12)], { resendDelayMs: 10_000 });
    await connectAndOpen(t);
    const ws = t.server.current;
    t.session.send('first', { toUserId: bob.id });
    await flush();
    expect(t.state().pending['cm-1']).toMatchObject({ status: 'sending' });

    // The two forms travel apart (the gateway keeps order per conversation as named), so this one waits.
    t.session.send('second', { conversationId: 7 });
    await flush();
    expect(ws.requests('sendMessage').map((f) => f.clientMessageId)).toEqual(['cm-1']);
    ws.reply(ws.lastRequest('sendMessage'), 'sendMessage', own(13, 'cm-1', 'first'));
    await flush();
    expect(ws.requests('sendMessage').map((f) => f.clientMessageId)).toEqual(['cm-1', 'cm-2']);
  });

  it('a send held behind one that a live frame confirms goes at once, though that one\'s own request then fails', async () => {
    const t = setup([dm(12, 12)], { resendDelayMs: 10_000 });
    await connectAndOpen(t);
    const ws = t.server.current;
    t.server.handlers.sendMessage = () => ({ error: { code: 'unavailable', message: 'busy' } });
    t.session.send('first');
    await flush();
    delete t.server.handlers.sendMessage;
    t.session.send('second');
    await flush();
    expect(t.state().pending['cm-2']).toMatchObject({ status: 'failed', error: { code: 'unavailable' } });

    t.session.retry('cm-1');
    await flush();
    const resent = ws.lastRequest('sendMessage');
    ws.receive({ type: 'message', message: own(13, 'cm-1', 'first') });
    ws.fail(resent, { code: 'timeout', message: 'sendMessage did not answer in time' });
    await flush();

    expect(t.state().pending['cm-1']).toBeUndefined();
    expect(ws.requests('sendMessage').map((f) => f.clientMessageId)).toEqual(['cm-1', 'cm-1', 'cm-2']);
  });

  it('a held send goes only once the one before it is stored, not with a resend that is refused again', async () => {
    const t = setup([dm(12, 12)], { resendDelayMs: 20 });
    await connectAndOpen(t);
    const ws = t.server.current;
    let refusals = 3;
    let seq = 12;
    t.server.handlers.sendMessage = (f) =>
      f.clientMessageId === 'cm-1' && refusals-- > 0 ? { error: { code: 'unavailable', message: 'busy' } } : own(++seq, f.clientMessageId);
    t.session.send('first');
    await flush();
    t.session.send('second');
    await nothingPending(t);
    expect(ws.requests('sendMessage').map((f) => f.clientMessageId)).toEqual(['cm-1', 'cm-1', 'cm-1', 'cm-1', 'cm-2']);
    expect(lastStoredIds(t, 7, 2)).toEqual(['cm-1', 'cm-2']);
  });

  it('a send held behind one that is settled some other way goes after its first pause, however long it waited', async () => {
    const t = setup([dm(12, 12)], { resendDelayMs: 20 });
    await connectAndOpen(t);
    const ws = t.server.current;
    t.server.handlers.sendMessage = (f) => (f.clientMessageId === 'cm-1' ? { error: { code: 'unavailable', message: 'down' } } : own(14, f.clientMessageId));
    t.session.send('first');
    await flush();
    t.session.send('second');
    // The first keeps failing, its pause doubling (20, 40, 80, 160, 320 ms); the second looks again every 20 ms.
    await new Promise((r) => setTimeout(r, 650));
    expect(ws.requests('sendMessage').filter((f) => f.clientMessageId === 'cm-2')).toHaveLength(0);
    // Another device's copy of the first is stored (a live frame confirms it): the second goes within a pause or so,
    // not after a pause that doubled each time it looked.
    ws.receive({ type: 'message', message: own(13, 'cm-1') });
    for (let i = 0; i < 30 && !ws.requests('sendMessage').some((f) => f.clientMessageId === 'cm-2'); i++) {
      await new Promise((r) => setTimeout(r, 10));
    }
    expect(ws.requests('sendMessage').filter((f) => f.clientMessageId === 'cm-2')).toHaveLength(1);
  });

  it('discarding a send that others wait behind lets them go at once, in order', async () => {
    const t = setup([dm(12, 12)], { resendDelayMs: 10_000 });
    await connectAndOpen(t);
    const ws = t.server.current;
    let seq = 12;
    t.server.handlers.sendMessage = (f) =>
      f.clientMessageId === 'cm-1' ? { error: { code: 'unavailable', message: 'down' } } : own(++seq, f.clientMessageId);
    t.session.send('first');
    await flush();
    t.session.send('second');
    t.session.send('third');
    await flush();
    expect(ws.requests('sendMessage')).toHaveLength(1);
    // Discarding one that waits behind lets nothing go: the first still waits out its pause.
    t.session.send('fourth');
    t.session.discard('cm-4');
    await flush();
    expect(ws.requests('sendMessage')).toHaveLength(1);
    expect(t.state().pending['cm-2']).toMatchObject({ status: 'failed', autoResend: true, error: { code: 'unavailable' } });
    t.session.discard('cm-1');
    await flush();
    expect(ws.requests('sendMessage').map((s) => s.clientMessageId)).toEqual(['cm-1', 'cm-2', 'cm-3']);
    expect(t.state().pending).toEqual({});
  });

  it('a discarded send is not sent again', async () => {
    const t = setup([dm(12, 12)], { resendDelayMs: 20 });
    await connectAndOpen(t);
    t.server.handlers.sendMessage = () => ({ error: { code: 'unavailable', message: 'down' } });
    t.session.send('hello');
    await flush();
    t.session.discard('cm-1');
    await new Promise((r) => setTimeout(r, 60));
    expect(t.server.current.requests('sendMessage')).toHaveLength(1);
    expect(t.state().pending).toEqual({});
  });

  it('a send with no reply in time fails with timeout', async () => {
    const t = setup([dm(12, 12)], { sendTimeoutMs: 30 });
    await connectAndOpen(t);
    t.session.send('hello');
    await new Promise((r) => setTimeout(r, 60));
    expect(t.state().pending['cm-1']).toMatchObject({ status: 'failed', error: { code: 'timeout' } });
  });

  it('a send cut off by a disconnect is resent after the reconnect sync, with the same id', async () => {
    const t = setup([dm(12, 12)]);
    await connectAndOpen(t);
    t.session.send('hello');
    t.server.current.serverClose(1006);
    await flush(1);
    expect(t.state().pending['cm-1']).toMatchObject({ status: 'failed', autoResend: true });
    // Sent while offline: failed at once, resent later too.
    t.session.send('second');
    expect(t.state().pending['cm-2']).toMatchObject({ status: 'failed', error: { code: 'disconnected' } });
    await reconnected(t);
    let syncAnswered = false;
    t.server.handlers.sync = () => {
      syncAnswered = true;
      return { conversations: [dm(12, 12)], messages: [], truncated: [], removed: [] };
    };
    t.server.handlers.sendMessage = (f) => {
      expect(syncAnswered).toBe(true);
      return own(f.clientMessageId === 'cm-1' ? 13 : 14, f.clientMessageId, f.body);
    };
    const ws2 = t.server.accept(alice);
    await flush();
    const types = ws2.sent.map((f) => f.type);
    expect(types.indexOf('sync')).toBeLessThan(types.indexOf('sendMessage'));
    expect(ws2.requests('sendMessage').map((s) => s.clientMessageId)).toEqual(['cm-1', 'cm-2']);
    expect(t.state().pending).toEqual({});
    expect(t.seqs(7).slice(-2)).toEqual([13, 14]);
  });

  it('a sync the gateway answers with timeout keeps the socket, and the interrupted sends still go out', async () => {
    const t = setup([dm(12, 12)]);
    await connectAndOpen(t);
    t.session.send('hello');
    t.server.current.serverClose(1006);
    await flush(1);
    await reconnected(t);
    t.server.handlers.sync = () => ({ error: { code: 'timeout', message: 'sync did not answer in time' } });
    t.server.handlers.sendMessage = (f) => own(13, f.clientMessageId, f.body);
    const ws2 = t.server.accept(alice);
    await flush();
    expect(ws2.requests('sync')).toHaveLength(1);
    expect(ws2.requests('sendMessage').map((s) => s.clientMessageId)).toEqual(['cm-1']);
    expect(t.state().pending).toEqual({});
    // No reconnect: the socket answered.
    await new Promise((r) => setTimeout(r, 50));
    expect(t.server.sockets).toHaveLength(2);
  });

  it('a send the server stored before the drop is confirmed by sync and not sent again', async () => {
    const t = setup([dm(12, 12)]);
    await connectAndOpen(t);
    t.session.send('hello');
    t.server.current.serverClose(1001);
    await reconnected(t);
    t.server.handlers.sync = () => ({ conversations: [dm(13, 12)], messages: [own(13, 'cm-1')], truncated: [], removed: [] });
    const ws2 = t.server.accept(alice);
    await flush();
    expect(ws2.lastRequest('sync').heads).toEqual([{ conversationId: 7, seq: 12 }]);
    expect(ws2.requests('sendMessage')).toHaveLength(0);
    expect(t.state().pending).toEqual({});
    expect(t.seqs(7).slice(-1)).toEqual([13]);
  });

  it('sends cut off by a drop are resent one at a time per conversation: one refused again is not overtaken', async () => {
    const t = setup([dm(12, 12), group], { resendDelayMs: 20 });
    await connectAndOpen(t);
    t.session.send('first');
    t.session.send('second');
    t.session.send('to the group', { conversationId: 8 });
    t.server.current.serverClose(1006);
    await flush(1);
    await reconnected(t);
    let refusals = 2;
    let seq = 12;
    t.server.handlers.sendMessage = (f) =>
      f.clientMessageId === 'cm-1' && refusals-- > 0
        ? { error: { code: 'unavailable', message: 'busy' } }
        : f.conversationId === 8
          ? msg(8, 1, alice.id, f.body, { clientMessageId: f.clientMessageId })
          : own(++seq, f.clientMessageId, f.body);
    const ws2 = t.server.accept(alice);
    await flush();

    // The first to each conversation goes; the second waits behind the first, which is refused again.
    expect(ws2.requests('sendMessage').map((f) => f.clientMessageId)).toEqual(['cm-1', 'cm-3']);
    expect(t.state().pending['cm-2']).toMatchObject({ status: 'failed', error: { code: 'unavailable' } });
    await nothingPending(t);
    expect(ws2.requests('sendMessage').map((f) => f.clientMessageId)).toEqual(['cm-1', 'cm-3', 'cm-1', 'cm-1', 'cm-2']);
    expect(lastStoredIds(t, 7, 2)).toEqual(['cm-1', 'cm-2']);
  });

  it('a held send does not go while the one before it is still on its way, however long its answer takes', async () => {
    const t = setup([dm(12, 12)], { resendDelayMs: 20 });
    await connectAndOpen(t);
    t.session.send('first');
    t.session.send('second');
    t.server.current.serverClose(1006);
    await flush(1);
    await reconnected(t);
    const ws2 = t.server.accept(alice);
    await flush();
    const first = ws2.lastRequest('sendMessage');
    expect(first.clientMessageId).toBe('cm-1');

    // The first is not answered for many of the second's pauses.
    await new Promise((r) => setTimeout(r, 200));
    expect(ws2.requests('sendMessage').map((f) => f.clientMessageId)).toEqual(['cm-1']);
    // Refused again: the second still waits; once the first is stored, it goes.
    ws2.fail(first, { code: 'unavailable', message: 'busy' });
    t.server.handlers.sendMessage = (f) => own(f.clientMessageId === 'cm-1' ? 13 : 14, f.clientMessageId, f.body);
    await nothingPending(t);
    expect(ws2.requests('sendMessage').map((f) => f.clientMessageId)).toEqual(['cm-1', 'cm-1', 'cm-2']);
    expect(lastStoredIds(t, 7, 2)).toEqual(['cm-1', 'cm-2']);
  });

  it("of two sends refused together, the later one's pause waits for the earlier one's resend to be stored", async () => {
    const t = setup([dm(12, 12)], { resendDelayMs: 20 });
    await connectAndOpen(t);
    const ws = t.server.current;
    let refusals = 2;
    t.server.handlers.sendMessage = () => (refusals-- > 0 ? { error: { code: 'unavailable', message: 'busy' } } : undefined);
    t.session.send('first');
    t.session.send('second');
    await flush();

    // Both refused; after the pauses the first goes again and is not answered for a long while.
    await new Promise((r) => setTimeout(r, 200));
    expect(ws.requests('sendMessage').map((f) => f.clientMessageId)).toEqual(['cm-1', 'cm-2', 'cm-1']);
    t.server.handlers.sendMessage = (f) => own(14, f.clientMessageId, f.body);
    ws.reply(ws.lastRequest('sendMessage'), 'sendMessage', own(13, 'cm-1', 'first'));
    await nothingPending(t);
    expect(ws.requests('sendMessage').map((f) => f.clientMessageId)).toEqual(['cm-1', 'cm-2', 'cm-1', 'cm-2']);
    expect(lastStoredIds(t, 7, 2)).toEqual(['cm-1', 'cm-2']);
  });

  it('a message typed while the reconnect syncs goes after the ones the drop interrupted', async () => {
    const t = setup([dm(12, 12)]);
    await connectAndOpen(t);
    t.session.send('first, cut off');
    t.server.current.serverClose(1006);
    await flush(1);
    await reconnected(t);
    let answerSync: (() => void) | undefined;
    t.server.handlers.sync = () => undefined; // answered by hand below
    let seq = 12;
    t.server.handlers.sendMessage = (f) => own(++seq, f.clientMessageId, f.body);
    const ws2 = t.server.accept(alice);
    await flush();
    answerSync = () => ws2.reply(ws2.lastRequest('sync'), 'sync', { conversations: [dm(12, 12)], messages: [], truncated: [], removed: [] });
    t.session.send('second, typed during the sync');
    await flush();
    expect(ws2.requests('sendMessage')).toHaveLength(0);
    answerSync();
    await flush();
    expect(ws2.requests('sendMessage').map((f) => f.body)).toEqual(['first, cut off', 'second, typed during the sync']);
    expect(t.state().pending).toEqual({});
  });

  it('a body is sent as typed, and its length counted in characters as the server counts', async () => {
    const t = setup([dm(12, 12)]);
    await connectAndOpen(t);
    t.session.send('  indented();\n    more();\n');
    expect(t.server.current.lastRequest('sendMessage').body).toBe('  indented();\n    more();\n');
    // 4,000 emoji are 8,000 UTF-16 units but 4,000 characters: allowed; one more is not.
    expect(t.session.send('😀'.repeat(4_000))).not.toBeNull();
    expect(t.session.send('😀'.repeat(4_001))).toBeNull();
  });

  it("two tabs of one user share the stored unsent messages without erasing each other's", async () => {
    const storage = memoryStorage();
    const key = `warren.pending.${alice.id}`;
    const tabA = setup([dm(12, 12)], { storage, newId: () => 'from-a' });
    const tabB = setup([dm(12, 12)], { storage, newId: () => 'from-b' });
    await connectAndOpen(tabB);
    // Tab A is offline: its message waits, stored.
    tabA.session.send('written in tab A', { conversationId: 7 });
    expect(storage.map.get(key)).toContain('from-a');
    // Tab B sends and is answered: its own record goes, tab A's stays.
    tabB.session.send('written in tab B');
    expect(storage.map.get(key)).toContain('from-a');
    expect(storage.map.get(key)).toContain('from-b');
    const request = tabB.server.current.lastRequest('sendMessage');
    tabB.server.current.reply(request, 'sendMessage', own(13, 'from-b', 'written in tab B'));
    await flush();
    expect(tabB.state().pending).toEqual({});
    expect(storage.map.get(key)).toContain('from-a');
    expect(storage.map.get(key)).not.toContain('from-b');
    // Tab A is closed before it reconnects; a new tab finds its message and sends it.
    tabA.session.stop();
    const reopened = setup([dm(13, 13)], { storage, newId: () => 'from-c' });
    expect(Object.keys(reopened.state().pending)).toEqual(['from-a']);
  });

  /** Another tab wrote the record of unsent messages: the browser tells this tab's window. */
  const storageEvent = (tab: ReturnType<typeof setup>) =>
    tab.win.dispatchEvent(new StorageEvent('storage', { key: `warren.pending.${alice.id}` }));

  it("the unsent message of a tab closed while offline is sent by the user's other tab when it reconnects", async () => {
    const storage = memoryStorage();
    const tabB = setup([dm(12, 12)], { storage, newId: () => 'from-b' });
    await connectAndOpen(tabB);
    tabB.server.current.serverClose(1006);
    await flush(1);
    tabB.session.send('mine');
    // Offline too, tab A queues a message, and the user closes it.
    const tabA = setup([dm(12, 12)], { storage, newId: () => 'from-a' });
    tabA.session.send('running late', { conversationId: 7 });
    tabA.session.stop();
    await reconnected(tabB);
    let seq = 12;
    tabB.server.handlers.sendMessage = (f) => own(++seq, f.clientMessageId, f.body);
    const ws = tabB.server.accept(alice);
    await flush();
    expect(ws.requests('sendMessage').map((f) => f.clientMessageId).sort()).toEqual(['from-a', 'from-b']);
    expect(tabB.state().pending).toEqual({});
    expect(tabB.seqs(7).slice(-2)).toEqual([13, 14]);
    expect(storage.map.get(`warren.pending.${alice.id}`)).toBeUndefined();
  });

  it('a message another tab queued offline shows in this connected tab and is sent from here; the other tab shows it once, sent', async () => {
    const storage = memoryStorage();
    const tabB = setup([dm(12, 12)], { storage, newId: () => 'from-b' });
    await connectAndOpen(tabB);
    tabB.server.handlers.sendMessage = () => undefined; // answered by hand below
    const tabA = setup([dm(12, 12)], { storage, newId: () => 'from-a' });
    tabA.session.send('running late', { conversationId: 7 });
    storageEvent(tabB);
    expect(tabB.state().pending['from-a']).toMatchObject({ body: 'running late', status: 'sending' });
    const ws = tabB.server.current;
    const request = ws.lastRequest('sendMessage');
    expect(request).toMatchObject({ clientMessageId: 'from-a', conversationId: 7, body: 'running late' });
    ws.reply(request, 'sendMessage', own(13, 'from-a', 'running late'));
    await flush();
    expect(tabB.state().pending).toEqual({});
    expect(tabB.seqs(7).slice(-1)).toEqual([13]);
    expect(storage.map.get(`warren.pending.${alice.id}`)).toBeUndefined();
    // Tab A, offline, keeps showing it as waiting (it has not seen it stored, and must not see it vanish) until its
    // reconnect's sync brings the stored message: then it shows once, and is not sent again.
    storageEvent(tabA);
    expect(Object.keys(tabA.state().pending)).toEqual(['from-a']);
    tabA.server.handlers.sync = () => ({ conversations: [dm(13, 12)], messages: [own(13, 'from-a', 'running late')], truncated: [], removed: [] });
    tabA.server.accept(alice);
    await flush();
    expect(tabA.server.current.requests('sendMessage')).toEqual([]);
    expect(tabA.state().pending).toEqual({});
    expect(visibleMessages(tabA.state().timelines[7]!).filter((m) => m.clientMessageId === 'from-a')).toHaveLength(1);
  });

  it("another tab's message taken up here waits behind this tab's earlier one that waits to be resent", async () => {
    const storage = memoryStorage();
    const tabB = setup([dm(12, 12)], { storage, newId: () => 'from-b', resendDelayMs: 60 });
    await connectAndOpen(tabB);
    const ws = tabB.server.current;
    let down = true;
    let seq = 12;
    tabB.server.handlers.sendMessage = (f) =>
      down ? { error: { code: 'unavailable', message: 'down' } } : own(++seq, f.clientMessageId, f.body);
    tabB.session.send('first');
    await flush();
    expect(tabB.state().pending['from-b']).toMatchObject({ status: 'failed', autoResend: true });
    down = false;
    await new Promise((r) => setTimeout(r, 5));
    // Typed later in an offline tab, and taken up here while the first still waits out its pause.
    const tabA = setup([dm(12, 12)], { storage, newId: () => 'from-a' });
    tabA.session.send('second', { conversationId: 7 });
    storageEvent(tabB);
    // Shown as going with the first (not as waiting for a connection that is there).
    expect(tabB.state().pending['from-a']).toMatchObject({ status: 'failed', autoResend: true, error: { code: 'unavailable' } });
    expect(ws.requests('sendMessage').map((f) => f.clientMessageId)).toEqual(['from-b']);
    for (let i = 0; i < 100 && Object.keys(tabB.state().pending).length > 0; i++) await new Promise((r) => setTimeout(r, 10));
    expect(ws.requests('sendMessage').map((f) => f.clientMessageId)).toEqual(['from-b', 'from-b', 'from-a']);
    expect(tabB.seqs(7).slice(-2)).toEqual([13, 14]);
  });

  it("a message one tab gave up on is not brought back by another tab that holds it, told or not", async () => {
    for (const told of [false, true]) {
      const storage = memoryStorage();
      const key = `warren.pending.${alice.id}`;
      const tabA = setup([dm(12, 12)], { storage, newId: () => 'from-a' });
      tabA.session.send('never mind', { conversationId: 7 });
      // Tab B opens while it waits: it holds it too.
      let n = 0;
      const tabB = setup([dm(12, 12)], { storage, newId: () => `from-b-${++n}` });
      expect(Object.keys(tabB.state().pending)).toEqual(['from-a']);
      tabA.session.discard('from-a');
      expect(storage.map.get(key)).toBeUndefined();
      if (told) {
        storageEvent(tabB);
        expect(tabB.state().pending, 'told').toEqual({});
      }
      // Tab B writes the record for a message of its own: the discarded one stays discarded.
      tabB.session.send('something else', { conversationId: 7 });
      expect(storage.map.get(key), `told: ${told}`).not.toContain('from-a');
      expect(Object.keys(tabB.state().pending), `told: ${told}`).toEqual(['from-b-1']);
      // And not sent when it connects.
      tabB.server.accept(alice);
      await flush();
      expect(tabB.server.current.requests('sendMessage').map((f) => f.clientMessageId)).toEqual(['from-b-1']);
      tabA.session.stop();
      tabB.session.stop();
    }
  });

  it("another tab's send this tab already holds as a message is not taken up as unsent, so it never shows twice", async () => {
    const storage = memoryStorage();
    const tabB = setup([dm(12, 12)], { storage, newId: () => 'from-b' });
    await connectAndOpen(tabB);
    // Tab A sends; its answer has not come, but the live frame reached tab B.
    const tabA = setup([dm(12, 12)], { storage, newId: () => 'from-a' });
    tabA.server.handlers.sendMessage = () => undefined;
    tabA.server.accept(alice);
    await flush();
    tabA.session.send('on my way', { conversationId: 7 });
    tabB.server.current.receive({ type: 'message', message: own(13, 'from-a', 'on my way') });
    storageEvent(tabB);
    tabB.server.current.serverClose(1006);
    await reconnected(tabB);
    tabB.server.accept(alice);
    await flush();
    expect(tabB.state().pending).toEqual({});
    expect(tabB.server.current.requests('sendMessage')).toEqual([]);
    expect(tabB.seqs(7).slice(-1)).toEqual([13]);
  });

  it('removed from a group while offline: the sync says so, and the unsent message to it is discarded, not resent', async () => {
    const storage = memoryStorage();
    const t = setup([dm(12, 12), group], { storage });
    t.server.accept(alice);
    await flush();
    t.session.select({ kind: 'conversation', id: 8 });
    await flush();
    t.server.current.serverClose(1006);
    await flush(1);
    t.session.send('written offline');
    expect(t.state().pending['cm-1']).toMatchObject({ status: 'failed', autoResend: true });
    await reconnected(t);
    t.setEntries([dm(12, 12)]);
    const ws2 = t.server.accept(alice);
    await flush();
    expect(t.state().conversations[8]).toBeUndefined();
    expect(t.state().selected).toBeNull();
    expect(t.state().notice).toBe('You are no longer a member of Team. Your unsent message to it was discarded.');
    expect(t.state().pending).toEqual({});
    expect(ws2.requests('sendMessage')).toHaveLength(0);
    expect(storage.map.get(`warren.pending.${alice.id}`)).toBeUndefined();
  });

  it('a send refused for good still waits for Retry or Delete after a reload, and is not resent by itself', async () => {
    const storage = memoryStorage();
    const first = setup([dm(12, 12)], { storage });
    await connectAndOpen(first);
    first.session.send('too late');
    const ws = first.server.current;
    ws.fail(ws.lastRequest('sendMessage'), { code: 'validation', message: 'a message can be at most 4000 characters' });
    await flush();
    expect(first.state().pending['cm-1']).toMatchObject({ status: 'failed', autoResend: false });
    first.session.stop();
    const second = setup([dm(12, 12)], { storage, newId: () => 'other' });
    expect(second.state().pending['cm-1']).toMatchObject({ status: 'failed', autoResend: false, error: { code: 'validation' } });
    second.server.accept(alice);
    await flush();
    expect(second.server.current.requests('sendMessage')).toHaveLength(0);
  });

  it('after a reload, an unsent message to a conversation no longer listed is discarded with a notice', async () => {
    const storage = memoryStorage();
    const refused = {
      clientMessageId: 'old',
      target: { conversationId: 8 },
      body: 'to a group I was removed from',
      createdAt: 1,
      status: 'failed',
      error: { code: 'forbidden', message: 'you are not a member of that conversation' },
      autoResend: false,
    };
    storage.setItem(`warren.pending.${alice.id}`, JSON.stringify([refused, { clientMessageId: 'broken', body: 'x', target: null }]));
    const t = setup([dm(12, 12)], { storage });
    expect(Object.keys(t.state().pending)).toEqual(['old']);
    t.server.accept(alice);
    await flush();
    expect(t.state().pending).toEqual({});
    expect(t.state().notice).toBe('Your unsent message to a conversation you are no longer in was discarded.');
    expect(t.server.current.requests('sendMessage')).toHaveLength(0);
    expect(storage.map.get(`warren.pending.${alice.id}`)).toBeUndefined();
  });

  it('unsent messages survive a reload and are resent with the same id', async () => {
    const storage = memoryStorage();
    const first = setup([dm(12, 12)], { storage });
    await connectAndOpen(first);
    first.session.send('keep me');
    first.session.stop();
    expect(storage.map.get(`warren.pending.${alice.id}`)).toContain('cm-1');
    const second = setup([dm(12, 12)], { storage, newId: () => 'other' });
    second.server.handlers.sendMessage = (f) => own(13, f.clientMessageId, f.body);
    expect(second.state().pending['cm-1']?.status).toBe('failed');
    second.server.accept(alice);
    await flush();
    expect(second.server.current.lastRequest('sendMessage')).toMatchObject({ clientMessageId: 'cm-1', body: 'keep me' });
    expect(second.state().pending).toEqual({});
  });

  it('a first message to a person goes with toUserId; the view moves to the new conversation', async () => {
    const t = setup([]);
    const ws = t.server.accept(alice);
    await flush();
    t.server.handlers.getConversation = () => entry(conv(9, [alice.id, bob.id], 1), 1, msg(9, 1, alice.id));
    t.session.openDirect(bob.id);
    expect(t.state().selected).toEqual({ kind: 'draft', userId: bob.id });
    t.session.send('hi bob');
    const req = ws.lastRequest('sendMessage');
    expect(req).toMatchObject({ toUserId: bob.id, clientMessageId: 'cm-1' });
    expect(req.conversationId).toBeUndefined();
    ws.reply(req, 'sendMessage', msg(9, 1, alice.id, 'hi bob', { clientMessageId: 'cm-1' }));
    await flush();
    expect(t.state().selected).toEqual({ kind: 'conversation', id: 9 });
    expect(t.state().pending).toEqual({});
    expect(t.state().conversations[9]).toBeDefined();
    expect(visibleMessages(t.state().timelines[9]!).map((m) => m.body)).toEqual(['hi bob']);
  });

  it('a first message to a person whose conversation already has history loads that history', async () => {
    const t = setup([]);
    const ws = t.server.accept(alice);
    await flush();
    // The conversation exists (another device started it) but this tab has not listed it.
    t.server.handlers.getConversation = () => entry(conv(9, [alice.id, bob.id], 6), 6, msg(9, 6, alice.id));
    t.server.handlers.getMessages = (f) =>
      f.conversationId === 9 ? { messages: [1, 2, 3, 4, 5, 6].map((seq) => msg(9, seq, bob.id)), hasMoreBefore: false, hasMoreAfter: false } : undefined;
    t.session.openDirect(bob.id);
    t.session.send('hi again');
    ws.reply(ws.lastRequest('sendMessage'), 'sendMessage', msg(9, 6, alice.id, 'hi again', { clientMessageId: 'cm-1' }));
    await flush();
    expect(t.state().selected).toEqual({ kind: 'conversation', id: 9 });
    expect(ws.requests('getMessages').map((f) => f.conversationId)).toContain(9);
    expect(visibleMessages(t.state().timelines[9]!).map((m) => m.seq)).toEqual([1, 2, 3, 4, 5, 6]);
  });

  it('refuses a body that would show as nothing, as the server does', async () => {
    const t = setup([dm(12, 12)]);
    await connectAndOpen(t);
    for (const body of ['\u200b', '\u200b \u200b', '\u00ad', '\ufeff\n', '\u2060']) expect(t.session.send(body)).toBeNull();
    expect(t.server.current.requests('sendMessage')).toHaveLength(0);
    expect(t.state().pending).toEqual({});
    expect(t.session.send('a\u200b')).not.toBeNull();
  });

  it('half an emoji (a lone surrogate, pasted) goes as the replacement character the screen shows, not as a frame the gateway refuses', async () => {
    const t = setup([dm(12, 12)]);
    await connectAndOpen(t);
    const broken = 'late \ud83d again \ude00 and 😀 whole';
    t.session.send(broken);
    const body = t.server.current.lastRequest('sendMessage').body;
    expect(body).toBe('late \ufffd again \ufffd and 😀 whole');
    expect(t.state().pending['cm-1']?.body).toBe(body);
    // Well-formed, so the frame is valid UTF-8 JSON: no lone surrogate escape in it.
    expect(JSON.stringify(body)).not.toMatch(/\\ud[89a-f]/i);
    // Counted as before: a replacement character is one character, as the lone surrogate was.
    expect(t.session.send(`${'x'.repeat(3_999)}\ud83d`)).not.toBeNull();
    expect(t.session.send(`${'x'.repeat(4_000)}\ud83d`)).toBeNull();
  });

  it('rejects empty and over-long messages', async () => {
    const t = setup([dm(12, 12)]);
    await connectAndOpen(t);
    expect(t.session.send('   \n ')).toBeNull();
    expect(t.session.send('x'.repeat(4_001))).toBeNull();
    expect(t.server.current.requests('sendMessage')).toHaveLength(0);
  });
});

describe('session: token refresh', () => {
  const HOUR = 3_600_000;
  const MINUTE = 60_000;

  beforeEach(() => {
    vi.useFakeTimers({ shouldAdvanceTime: true });
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  const token = (value: string, life = 2 * HOUR): AuthResponse => ({
    user: alice,
    token: value,
    issuedAt: Date.now(),
    expiresAt: Date.now() + life,
  });

  /** A session with a token of two hours, connected (keep-alive off: nothing answers pings here). */
  async function connectedWith(auth: SessionOptions['auth'] = token('tok'), options: Partial<SessionOptions> = {}) {
    const refreshed: AuthResponse[] = [];
    const t = setup([dm(2, 2)], { auth, keepAliveIntervalMs: 0, onAuthRefreshed: (next) => refreshed.push(next), ...options });
    t.server.accept(alice, 10 * HOUR);
    await flush();
    return { ...t, refreshed, refreshes: () => t.server.sockets.flatMap((ws) => ws.requests('refreshToken')) };
  }

  async function advance(ms: number) {
    await vi.advanceTimersByTimeAsync(ms);
  }

  it('refreshes over the socket halfway through the life of the token, then goes by the new one', async () => {
    const getUsers = vi.fn(async () => ({ users: [bob] }));
    const rest: RestClient = { register: vi.fn(), login: vi.fn(), me: vi.fn(), getUsers };
    const t = await connectedWith(token('tok'), { rest });
    t.server.handlers.refreshToken = () => token('tok-2');
    await advance(59 * MINUTE);
    expect(t.refreshes()).toHaveLength(0);
    await advance(2 * MINUTE);
    expect(t.refreshes()).toEqual([{ type: 'refreshToken', id: expect.any(String) }]);
    expect(t.refreshed.map((a) => a.token)).toEqual(['tok-2']);

    // The next one is halfway through the new token's life.
    t.server.handlers.refreshToken = () => token('tok-3');
    await advance(58 * MINUTE);
    expect(t.refreshes()).toHaveLength(1);
    await advance(2 * MINUTE);
    expect(t.refreshed.map((a) => a.token)).toEqual(['tok-2', 'tok-3']);

    // REST calls (while offline) and the reconnect carry the newest token.
    t.server.current.serverClose(1006);
    await t.session.searchUsers('b');
    expect(getUsers).toHaveBeenCalledWith('tok-3', { prefix: 'b', limit: 20 });
    await advance(50);
    expect(t.server.sockets).toHaveLength(2);
    t.server.accept(alice, 10 * HOUR);
    expect(t.server.current.sent[0]).toEqual({ type: 'auth', token: 'tok-3' });
    await advance(MINUTE);
    expect(t.refreshes()).toHaveLength(2);
  });

  it('a refresh refused as unauthorized (the session is too old) is not asked for again', async () => {
    const t = await connectedWith();
    t.server.handlers.refreshToken = () => ({ error: { code: 'unauthorized', message: 'the session is too old to be refreshed' } });
    await advance(61 * MINUTE);
    expect(t.refreshes()).toHaveLength(1);
    await advance(50 * MINUTE);
    expect(t.refreshes()).toHaveLength(1);
    // Not after a reconnect either.
    t.server.current.serverClose(1006);
    await advance(50);
    t.server.accept(alice, 10 * HOUR);
    await advance(5 * MINUTE);
    expect(t.refreshes()).toHaveLength(1);
    expect(t.refreshed).toEqual([]);
  });

  it('a refresh that fails for a passing reason is asked for again after a pause, not at once, nor on reconnect', async () => {
    const t = await connectedWith();
    t.server.handlers.refreshToken = () => ({ error: { code: 'unavailable', message: 'user-service is down' } });
    await advance(60 * MINUTE + 1_000);
    expect(t.refreshes()).toHaveLength(1);
    await advance(30_000);
    expect(t.refreshes()).toHaveLength(1);
    await advance(30_000);
    expect(t.refreshes()).toHaveLength(2);
    // A reconnect does not cut the pause short.
    t.server.current.serverClose(1006);
    await advance(50);
    t.server.accept(alice, 10 * HOUR);
    await advance(1_000);
    expect(t.refreshes()).toHaveLength(2);
    t.server.handlers.refreshToken = () => token('tok-2');
    await advance(MINUTE);
    expect(t.refreshes()).toHaveLength(3);
    expect(t.refreshed.map((a) => a.token)).toEqual(['tok-2']);
  });

  it('a refresh refused for any reason but unauthorized (bad_request, from a gateway and user-service of different releases) is asked for again after the pause', async () => {
    const t = await connectedWith();
    t.server.handlers.refreshToken = () => ({ error: { code: 'bad_request', message: 'unknown field' } });
    await advance(60 * MINUTE + 1_000);
    expect(t.refreshes()).toHaveLength(1);
    // Due at 60 minutes, so tried again at 61.
    await advance(MINUTE - 2_000);
    expect(t.refreshes()).toHaveLength(1);
    await advance(2_000);
    expect(t.refreshes()).toHaveLength(2);
    // The upgrade is done: the next one goes through, and refreshing carries on from there.
    t.server.handlers.refreshToken = () => token('tok-2');
    await advance(MINUTE);
    expect(t.refreshes()).toHaveLength(3);
    expect(t.refreshed.map((a) => a.token)).toEqual(['tok-2']);
    t.server.handlers.refreshToken = () => token('tok-3');
    await advance(61 * MINUTE);
    expect(t.refreshed.map((a) => a.token)).toEqual(['tok-2', 'tok-3']);
  });

  it("once refreshed tokens are cut at the session's end, it is not asked for again", async () => {
    const t = await connectedWith();
    const end = Date.now() + 150 * MINUTE;
    t.server.handlers.refreshToken = () => ({ ...token('capped'), expiresAt: end });
    await advance(61 * MINUTE);
    expect(t.refreshes()).toHaveLength(1);
    // 89 minutes left: the next refresh halfway there brings the same end.
    await advance(45 * MINUTE);
    expect(t.refreshes()).toHaveLength(2);
    await advance(40 * MINUTE);
    expect(t.refreshes()).toHaveLength(2);
    expect(t.refreshed.map((a) => a.expiresAt)).toEqual([end, end]);
  });

  it('with this device\'s clock far ahead of the server\'s, new tokens are refreshed before they look expired here, not at once', async () => {
    // The server's times, read by a clock 90 minutes fast: every two-hour token looks past half its life, with
    // 30 minutes left.
    const skewed = (value: string): AuthResponse => ({ user: alice, token: value, issuedAt: Date.now() - 90 * MINUTE, expiresAt: Date.now() + 30 * MINUTE });
    const refreshed: AuthResponse[] = [];
    const t = setup([dm(2, 2)], { auth: skewed('tok'), keepAliveIntervalMs: 0, onAuthRefreshed: (next) => refreshed.push(next) });
    let n = 0;
    t.server.handlers.refreshToken = () => skewed(`tok-${++n}`);
    t.server.accept(alice, 10 * HOUR);
    const refreshes = () => t.server.current.requests('refreshToken');
    await advance(10_000);
    expect(refreshes()).toHaveLength(1);
    // Halfway to that expiry (less the safety margin), each time.
    await advance(14 * MINUTE);
    expect(refreshes()).toHaveLength(1);
    await advance(2 * MINUTE);
    expect(refreshes()).toHaveLength(2);
    await advance(16 * MINUTE);
    expect(refreshes()).toHaveLength(3);
    expect(refreshed.map((a) => a.token)).toEqual(['tok-1', 'tok-2', 'tok-3']);
  });

  it('a token past half its life, or saved without issuedAt, is refreshed as soon as the socket is ready', async () => {
    const overdue = { user: alice, token: 'tok', issuedAt: Date.now() - 3 * HOUR, expiresAt: Date.now() + HOUR };
    const legacy = { user: alice, token: 'tok', expiresAt: Date.now() + HOUR };
    for (const auth of [overdue, legacy]) {
      const t = setup([dm(2, 2)], { auth, keepAliveIntervalMs: 0 });
      t.server.handlers.refreshToken = () => token('tok-2');
      await flush();
      expect(t.server.current.requests('refreshToken')).toHaveLength(0);
      t.server.accept(alice, 10 * HOUR);
      await flush();
      expect(t.server.current.requests('refreshToken')).toHaveLength(1);
      t.session.stop();
    }
  });

  it('an expired token is not refreshed', async () => {
    const t = await connectedWith({ user: alice, token: 'tok', issuedAt: Date.now() - 2 * HOUR, expiresAt: Date.now() - 1_000 });
    await advance(5 * MINUTE);
    expect(t.refreshes()).toHaveLength(0);
  });

  it('a refresh answered as the session stops is not reported (logging out must not sign in again)', async () => {
    const t = await connectedWith();
    await advance(60 * MINUTE + 1_000);
    const refresh = t.server.current.lastRequest('refreshToken');
    t.server.current.reply(refresh, 'refreshToken', token('tok-2'));
    t.session.stop();
    await flush();
    expect(t.refreshed).toEqual([]);
  });

  /**
   * A session whose wall clock (`now`) can jump ahead while its timers stand still, as a sleeping laptop's do: a
   * token of one hour, connected, with a document whose `visibilitychange` the test fires.
   */
  async function sleepyLaptop(syncIntervalMs = 10 * HOUR) {
    let slept = 0;
    const doc = Object.assign(new EventTarget(), { visibilityState: 'visible' as DocumentVisibilityState });
    const refreshed: AuthResponse[] = [];
    const t = setup([dm(2, 2)], {
      auth: token('tok', HOUR),
      now: () => Date.now() + slept,
      documentTarget: doc as unknown as Document,
      keepAliveIntervalMs: 0,
      onAuthRefreshed: (next) => refreshed.push(next),
    });
    t.server.handlers.refreshToken = () => token('tok-2', HOUR);
    t.server.accept(alice, syncIntervalMs);
    await flush();
    return {
      ...t,
      doc,
      refreshed,
      sleep: (ms: number) => void (slept += ms),
      refreshes: () => t.server.sockets.flatMap((ws) => ws.requests('refreshToken')),
    };
  }

  it('a refresh missed while the machine slept goes as soon as the socket is back', async () => {
    const t = await sleepyLaptop();
    t.sleep(40 * MINUTE);
    t.server.current.serverClose(1006);
    await advance(50);
    t.server.accept(alice, 10 * HOUR);
    await flush();
    expect(t.refreshes()).toHaveLength(1);
    expect(t.refreshed.map((a) => a.token)).toEqual(['tok-2']);
  });

  it('a refresh missed while the machine slept goes when the page becomes visible or the window gets focus', async () => {
    for (const wake of ['visibilitychange', 'focus'] as const) {
      const t = await sleepyLaptop();
      t.sleep(40 * MINUTE);
      await advance(1_000);
      expect(t.refreshes()).toHaveLength(0);
      (wake === 'focus' ? t.win : t.doc).dispatchEvent(new Event(wake));
      await flush();
      expect(t.refreshes(), wake).toHaveLength(1);
      t.session.stop();
    }
  });

  it('a refresh missed while the machine slept goes at the next periodic sync, with no event at all', async () => {
    const t = await sleepyLaptop(30_000);
    t.sleep(40 * MINUTE);
    await advance(30_000);
    expect(t.refreshes()).toHaveLength(1);
  });

  it('after a short sleep the refresh is not early: the timer is set again from the wall clock', async () => {
    const t = await sleepyLaptop();
    t.sleep(10 * MINUTE);
    t.win.dispatchEvent(new Event('focus'));
    await flush();
    expect(t.refreshes()).toHaveLength(0);
    // Due 30 minutes after sign-in by the wall clock: 20 minutes of timers from here, not 30.
    await advance(19 * MINUTE);
    expect(t.refreshes()).toHaveLength(0);
    await advance(2 * MINUTE);
    expect(t.refreshes()).toHaveLength(1);
  });

  it('stopping leaves no refresh waiting', async () => {
    const t = await connectedWith();
    t.session.stop();
    expect(vi.getTimerCount()).toBe(0);
  });
});

describe('isBlankText', () => {
  it('is true of white space, control and invisible characters only, as the server counts them', () => {
    const blank = [
      '',
      '\n\t ',
      '\u200b', // zero-width space
      '\u200b  \u200b',
      '\u00ad', // soft hyphen
      '\ufeff', // byte order mark
      '\udb40\udc41', // tag latin capital letter A (U+E0041)
      '\u2060\u034f\u180e\u3164', // word joiner, combining grapheme joiner, Mongolian vowel separator, Hangul filler
      '\ufe0f', // a variation selector alone
      '\u0007\u0085', // controls
    ];
    for (const text of blank) expect(isBlankText(text), JSON.stringify(text)).toBe(true);
    for (const text of ['a\u200b', '\u2764\ufe0f', '👍', '.', ' x ']) expect(isBlankText(text), JSON.stringify(text)).toBe(false);
  });

  it('counts as invisible exactly the code points the message-service does', () => {
    // The server's table of default-ignorable code points, read from its source: the two rules cannot drift apart
    // unnoticed (a new Unicode version, or an edit on one side only).
    const table = /fn is_default_ignorable[\s\S]*?matches!\(([\s\S]*?)\)\s*\}/.exec(domainRs)?.[1] ?? '';
    const ranges = [...table.matchAll(/'\\u\{([0-9A-F]+)\}'(?:\.\.='\\u\{([0-9A-F]+)\}')?/g)].map((m) => {
      const lo = parseInt(m[1] ?? '', 16);
      return [lo, m[2] ? parseInt(m[2], 16) : lo] as const;
    });
    expect(ranges.length).toBeGreaterThan(10);
    const serverIgnorable = (cp: number) => ranges.some(([lo, hi]) => lo <= cp && cp <= hi);
    const differ: string[] = [];
    for (let cp = 0; cp <= 0x10ffff; cp++) {
      if (cp >= 0xd800 && cp <= 0xdfff) continue;
      const ch = String.fromCodePoint(cp);
      const server = /^[\p{White_Space}\p{Cc}]$/u.test(ch) || serverIgnorable(cp);
      if (isBlankText(ch) !== server) differ.push(cp.toString(16));
    }
    expect(differ).toEqual([]);
  });

  it('names a group whose stored title shows nothing "Untitled group"', () => {
    const title = (t: string) => conversationTitle(conv(8, [alice.id, bob.id], 0, { kind: 'group', title: t }), alice.id, {});
    expect(title('\u200b\u200d')).toBe('Untitled group');
    expect(title('  Team ')).toBe('Team');
  });
});
