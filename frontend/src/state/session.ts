import type { BackoffOptions } from '../api/backoff';
import { asApiRequestError } from '../api/errors';
import type { RestClient } from '../api/rest';
import {
  type LiveFrame,
  type Op,
  type ReadyFrame,
  type ReplyOf,
  type RequestParams,
  type WebSocketFactory,
  WarrenSocket,
  defaultSocketUrl,
} from '../api/ws';
import type { AuthResponse } from '../protocol/generated/AuthResponse';
import type { Conversation } from '../protocol/generated/Conversation';
import type { ConversationEntry } from '../protocol/generated/ConversationEntry';
import type { Head } from '../protocol/generated/Head';
import type { Message } from '../protocol/generated/Message';
import type { MessagesPage } from '../protocol/generated/MessagesPage';
import type { User } from '../protocol/generated/User';
import { EXPIRY_MARGIN_MS, MAX_TIMER_MS, type StorageLike, type StoredAuth, isExpired, refreshDueAt } from './auth';
import {
  applyConversation,
  applyMessages,
  applyRead,
  directPeer,
  findDirect,
  removeConversation,
  sortConversations,
  upsertEntry,
} from './conversations';
import { newClientId } from './ids';
import {
  type PendingSend,
  type PendingSends,
  type SendTarget,
  addPending,
  confirmPending,
  markFailed,
  markSending,
  removePending,
  splitBySendTarget,
  toResend,
} from './pending';
import { type ChatState, type ChatStore, type Selection, createChatStore } from './store';
import {
  type PageKind,
  type Timeline,
  applyPage,
  emptyTimeline,
  mergeMessages,
  newestSeq,
  setBaseline,
  trimTimeline,
} from './timeline';
import { displayName, idBatches, mergeUsers, missingIds } from './users';

/** Protocol limits (common/src/protocol/messages.rs). */
export const MAX_MESSAGE_CHARS = 4_000;

/** The unsent messages stored under `key` (every tab's), as written; unreadable records are skipped. */
function readPendingRecord(storage: SessionOptions['storage'], key: string): PendingSend[] {
  try {
    const raw = storage?.getItem(key);
    const list: unknown = raw ? JSON.parse(raw) : [];
    if (!Array.isArray(list)) return [];
    return list.filter(
      (p): p is PendingSend =>
        typeof p?.clientMessageId === 'string' &&
        typeof p.body === 'string' &&
        typeof p.target === 'object' &&
        p.target !== null &&
        ('conversationId' in p.target || 'toUserId' in p.target),
    );
  } catch {
    return [];
  }
}

/**
 * Messages kept of a conversation that is not shown: the newest four pages (see `trimTimeline`). A conversation is
 * trimmed when the user leaves it, and whenever one not shown has grown to `HIDDEN_TRIM_AT`, so the cost is one
 * copy per 200 messages rather than a growing timeline copied with every message.
 */
const HIDDEN_KEEP = 200;
const HIDDEN_TRIM_AT = 400;

/** Whether `cid` is the conversation shown. */
function isShown(selected: Selection | null, cid: number): boolean {
  return selected?.kind === 'conversation' && selected.id === cid;
}

/** `timeline`, trimmed if its conversation is not shown and has grown past `HIDDEN_TRIM_AT`. */
function fitHidden(timeline: Timeline, cid: number, selected: Selection | null): Timeline {
  return !isShown(selected, cid) && timeline.bySeq.size >= HIDDEN_TRIM_AT ? trimTimeline(timeline, HIDDEN_KEEP) : timeline;
}

/** How long, and how many, discarded sends are remembered for the user's other tabs (see `ChatSession`). */
const DISCARDED_TTL_MS = 7 * 24 * 3_600_000;
const MAX_DISCARDED = 200;

/** The client message ids of sends discarded in any tab, and when (a record of `{ clientMessageId, at }`). */
function readDiscarded(storage: SessionOptions['storage'], key: string): Map<string, number> {
  const discarded = new Map<string, number>();
  try {
    const raw = storage?.getItem(key);
    const list: unknown = raw ? JSON.parse(raw) : [];
    if (!Array.isArray(list)) return discarded;
    for (const d of list) {
      if (typeof d?.clientMessageId === 'string' && typeof d.at === 'number') discarded.set(d.clientMessageId, d.at);
    }
  } catch {
    // Unreadable: nothing is known to be discarded.
  }
  return discarded;
}

/** The notice for conversations the user was removed from, and how many of their unsent messages went with them. */
function noLongerMember(titles: readonly string[], dropped: number): string {
  const it = titles.length === 1 ? 'it' : 'them';
  const unsent =
    dropped === 0
      ? ''
      : dropped === 1
        ? ` Your unsent message to ${it} was discarded.`
        : ` Your ${dropped} unsent messages to ${it} were discarded.`;
  return `You are no longer a member of ${titles.join(', ')}.${unsent}`;
}

/** A body's length as the server counts it: in characters (code points), not UTF-16 units (an emoji is one). */
export function messageLength(text: string): number {
  let n = 0;
  for (const _ of text) n++;
  return n;
}

/**
 * The text with every lone surrogate (half an emoji, from a paste or a cut made by UTF-16 units) replaced with
 * U+FFFD, as `String.prototype.toWellFormed` does (not in every browser yet). A lone surrogate cannot be sent: JSON
 * carries it as an escape the gateway refuses (`bad_request`), and Retry would fail the same way for ever. The
 * browser already draws it as the replacement character, so this sends what the user sees, rather than refuse a
 * message over a character they cannot see nor find to delete; the length does not change (one for one).
 */
export function toWellFormed(text: string): string {
  let out: string[] | null = null;
  let from = 0;
  for (let i = 0; i < text.length; i++) {
    const unit = text.charCodeAt(i);
    if (unit < 0xd800 || unit > 0xdfff) continue;
    const next = i + 1 < text.length ? text.charCodeAt(i + 1) : 0;
    if (unit <= 0xdbff && next >= 0xdc00 && next <= 0xdfff) {
      i++; // a whole pair
      continue;
    }
    (out ??= []).push(text.slice(from, i), '\uFFFD');
    from = i + 1;
  }
  return out ? out.join('') + text.slice(from) : text;
}

const BLANK = /^[\p{White_Space}\p{Cc}\p{Default_Ignorable_Code_Point}]*$/u;

/**
 * Whether the server refuses a body or a group title as blank (message-service `shows_nothing`): nothing but white
 * space, control characters and default-ignorable ones (zero-width space, word joiner, soft hyphen, variation
 * selectors, tags…), which show as nothing and which `trim` keeps.
 */
export function isBlankText(text: string): boolean {
  return BLANK.test(text);
}

export const MAX_TITLE_CHARS = 100;
export const MAX_PAGE = 100;
export const MAX_CONVERSATIONS_PAGE = 200;
export const MAX_SYNC_HEADS = 1_000;

export interface SessionOptions {
  auth: StoredAuth;
  socketUrl?: string;
  createSocket?: WebSocketFactory;
  requestTimeoutMs?: number;
  /**
   * How long `sync` waits for its answer, counted from the call (default 30 s): longer than other requests, as the
   * services may take a while to gather it and it can be large (up to 2 MiB of bodies). This is not the time the
   * answer has to arrive: the gateway gives the writing of any frame `WARREN_WS_WRITE_TIMEOUT_MS` (10 s by default)
   * and closes a socket that cannot take it in that time with 4008, which `WarrenSocket` counts as a connection
   * that carried no answer.
   */
  syncTimeoutMs?: number;
  /** How long a send waits for its reply before it is shown as failed. */
  sendTimeoutMs?: number;
  /** First wait before a send that failed for a passing reason is sent again by itself (doubling, to 30 s). */
  resendDelayMs?: number;
  backoff?: BackoffOptions;
  random?: () => number;
  now?: () => number;
  newId?: () => string;
  /** Where unsent messages are kept across reloads. */
  storage?: StorageLike;
  /** Where `focus` and `online` are listened for (the window). */
  windowTarget?: Pick<Window, 'addEventListener' | 'removeEventListener'>;
  documentTarget?: Pick<Document, 'addEventListener' | 'removeEventListener' | 'visibilityState'>;
  /** Messages per history page. */
  pageSize?: number;
  /** The gateway refused the token: the user must log in again. */
  onUnauthorized?: (reason: string) => void;
  /** The token was refreshed: the session uses the new one from now on; save it for reloads. */
  onAuthRefreshed?: (auth: AuthResponse) => void;
  /** How long to wait before asking for a refresh again after it failed (for any reason but `unauthorized`). */
  refreshRetryMs?: number;
  /** For people search while the socket is reconnecting. */
  rest?: RestClient;
  /** Requests on the wire at once (the gateway allows 32 by default). */
  maxInFlight?: number;
  /** How often an open socket pings the gateway, and how long it waits for the answer (see `WarrenSocket`). */
  keepAliveIntervalMs?: number;
  keepAliveTimeoutMs?: number;
}

function groupByConversation(messages: readonly Message[]): Map<number, Message[]> {
  const groups = new Map<number, Message[]>();
  for (const m of messages) {
    let list = groups.get(m.conversationId);
    if (!list) groups.set(m.conversationId, (list = []));
    list.push(m);
  }
  for (const list of groups.values()) list.sort((a, b) => a.seq - b.seq);
  return groups;
}

/**
 * Failures that say nothing about the message itself — the server may even have stored it (`timeout`,
 * `unavailable`, `internal`) or asked for a pause (`rate_limited`) — so the app sends it again by itself, with
 * the same client message id (stored at most once). Other failures (`validation`, `conflict`, …) wait for the
 * user.
 */
const PASSING_FAILURES: ReadonlySet<string> = new Set(['disconnected', 'timeout', 'unavailable', 'internal', 'rate_limited']);
const MAX_RESEND_DELAY_MS = 30_000;
const REFRESH_RETRY_MS = 60_000;
const SYNC_TIMEOUT_MS = 30_000;
/** The shortest wait between two successful refreshes. */
const MIN_REFRESH_GAP_MS = 10_000;

function pendingKey(userId: number): string {
  return `warren.pending.${userId}`;
}

function discardedKey(userId: number): string {
  return `warren.pending.${userId}.discarded`;
}

/** A send that waits for the connection. */
const NOT_SENT_YET = { code: 'disconnected', message: 'Not sent yet' } as const;
/** A send held behind an earlier one to the same place that waits to be resent (`ChatSession.waitsBehind`). */
const WAITING_BEHIND = { code: 'unavailable', message: 'waiting for the message before it' } as const;

/**
 * A stored unsent message as this tab takes it up (after a reload, or from another tab): one the server refused for
 * good (not a member, too long) still waits for the user's Retry or Delete; everything else goes again after the
 * next sync.
 */
function asTakenUp(p: PendingSend): PendingSend {
  const waitsForUser = p.status === 'failed' && p.autoResend === false && p.error !== undefined;
  return waitsForUser ? p : { ...p, status: 'failed', error: NOT_SENT_YET, autoResend: true };
}

/**
 * One signed-in user's live session: owns the socket and the store, keeps the store consistent with the
 * server (sync on every connect, on `resync`, on focus and on a timer; gap repair; pending sends), and offers
 * the actions the UI calls. All state changes go through the pure functions in this folder.
 */
export class ChatSession {
  readonly store: ChatStore;
  private readonly socket: WarrenSocket;
  private readonly opts: SessionOptions;
  /** Automatic resends waiting for their pause, and how many each send has had. */
  private readonly resendTimers = new Map<string, ReturnType<typeof setTimeout>>();
  /**
   * Client message ids of every unsent message this tab has held (see `persistPending`).
   *
   * Unsent messages are shared by the user's tabs through one record in storage (`warren.pending.<userId>`), so
   * that one queued offline is not lost when its tab is closed or reloaded. The rules:
   * - Each tab writes its own unsent messages there and keeps the other tabs' entries; it removes those it held and
   *   let go (stored, discarded, or to a conversation the user is no longer in).
   * - A tab takes up (adopts) the other tabs' entries: on every (re)connect all of them (their tab may be closed,
   *   even mid-send; a reconnect is when interrupted sends go again anyway), and when the storage event says the
   *   record changed, those that wait (offline, pausing, or refused for good) — not those another tab is sending
   *   at that moment, which it would only send twice. Adopted ones are sent as this tab's own, with the same
   *   client message id: when two tabs send one, the server stores it once, and each gets that message back.
   *   Never adopted: an id this tab holds or let go, nor one whose stored message this tab already holds (it would
   *   show twice).
   * - Sent by another tab: a tab that holds it too keeps it until it sees the stored message itself (the live
   *   frame, its sync, or the answer to its own resend), so a tab offline at that moment does not see it vanish,
   *   and it never shows twice (the stored message confirms it by client message id).
   * - Discarded ("Stop trying", Delete) is the user's word for every tab: discarding records the id in
   *   `warren.pending.<userId>.discarded` (kept a week, the newest `MAX_DISCARDED`), and a tab holding that send
   *   lets it go when it hears of it (the storage event, or its own next write of the record), so it is neither
   *   written back nor sent again.
   */
  private readonly heldPending = new Set<string>();
  /**
   * When each conversation was last removed here, counted in removals: an answer to a request sent before that
   * (a sync, a list page, a getConversation) was computed while the user was still a member, and must not bring
   * the conversation back.
   */
  private readonly removedAt = new Map<number, number>();
  /**
   * When a `conversation` frame last showed the user a member of each conversation, on the same count: a sync or
   * a refused page asked before that was computed before the user was added back, and must not remove it.
   */
  private readonly confirmedAt = new Map<number, number>();
  /** Membership changes seen here (removals and confirmations): the clock of `removedAt` and `confirmedAt`. */
  private removals = 0;
  /** Conversations this tab is leaving: their removal is the user's own doing, not news. */
  private readonly leaving = new Set<number>();
  /** Between a reconnect and the resend of the interrupted sends (after its sync): new sends queue behind them. */
  private resuming = false;
  private readonly resendAttempts = new Map<string, number>();
  /** The `createdAt` of this tab's last send (see `send`). */
  private lastCreatedAt = 0;
  private readonly now: () => number;
  private readonly newId: () => string;
  private readonly pageSize: number;

  /**
   * The whole conversation list is known: `sync` lists the most recent `MAX_CONVERSATIONS_PAGE` only (and, past
   * them, only conversations this tab sent a head for that have news).
   */
  private listed = false;
  private syncing: Promise<void> | null = null;
  private syncAgain = false;
  private syncTimer: ReturnType<typeof setInterval> | null = null;
  private readonly catchingUp = new Set<number>();
  private readonly catchUpAgain = new Set<number>();
  private readonly fetchingConversation = new Set<number>();
  private readonly resolving = new Set<number>();
  private readonly markReadSent = new Map<number, number>();
  private started = false;
  private unsubscribePersist: (() => void) | null = null;
  /** The token the socket authenticates with and REST calls carry: the one given, then each refreshed one. */
  private auth: StoredAuth;
  private refreshTimer: ReturnType<typeof setTimeout> | null = null;
  /**
   * When the next refresh is due, by the wall clock (`now`). The timer alone cannot be trusted: browser timers
   * stand still while the machine sleeps, so a laptop that slept through the moment would find its token expired.
   * Whenever time may have passed unseen (a reconnect, the page shown again, focus, the network back, each periodic
   * sync), `refreshIfDue` compares the clock with this.
   */
  private refreshAt: number | null = null;
  private refreshing = false;
  /** Refreshing cannot extend the session any more (it is at its maximum age): the token lives out its life. */
  private refreshEnded = false;

  constructor(options: SessionOptions) {
    this.opts = options;
    this.auth = options.auth;
    this.now = options.now ?? Date.now;
    this.newId = options.newId ?? newClientId;
    this.pageSize = Math.min(options.pageSize ?? 50, MAX_PAGE);
    this.store = createChatStore(options.auth.user, { pending: this.loadPersistedPending(options.auth.user.id) });
    this.socket = new WarrenSocket({
      url: options.socketUrl ?? defaultSocketUrl(),
      token: () => this.auth.token,
      ...(options.createSocket ? { createSocket: options.createSocket } : {}),
      ...(options.requestTimeoutMs ? { requestTimeoutMs: options.requestTimeoutMs } : {}),
      ...(options.maxInFlight ? { maxInFlight: options.maxInFlight } : {}),
      ...(options.keepAliveIntervalMs !== undefined ? { keepAliveIntervalMs: options.keepAliveIntervalMs } : {}),
      ...(options.keepAliveTimeoutMs !== undefined ? { keepAliveTimeoutMs: options.keepAliveTimeoutMs } : {}),
      ...(options.backoff ? { backoff: options.backoff } : {}),
      ...(options.random ? { random: options.random } : {}),
      now: this.now,
      onReady: (frame) => this.onReady(frame),
      onLive: (frame) => this.onLive(frame),
      onStatus: (status, info) =>
        this.store.setState((s) => ({
          connection: {
            status,
            attempt: info.attempt,
            ...(info.retryAt !== undefined ? { retryAt: info.retryAt } : {}),
            hasConnected: s.connection.hasConnected || status === 'open',
          },
        })),
      onDisconnect: () => this.onDisconnect(),
      onUnauthorized: (reason) => {
        this.stop();
        this.opts.onUnauthorized?.(reason);
      },
    });
  }

  get me(): User {
    return this.store.getState().me;
  }

  // ---- lifecycle -------------------------------------------------------------------------------------------

  start(): void {
    if (this.started) return;
    this.started = true;
    this.unsubscribePersist = this.store.subscribe((state, previous) => {
      if (state.pending !== previous.pending) this.persistPending(state.pending);
    });
    const win = this.opts.windowTarget ?? (typeof window !== 'undefined' ? window : undefined);
    win?.addEventListener('focus', this.onFocus);
    win?.addEventListener('online', this.onOnline);
    win?.addEventListener('storage', this.onStorage);
    const doc = this.opts.documentTarget ?? (typeof document !== 'undefined' ? document : undefined);
    doc?.addEventListener('visibilitychange', this.onVisibility);
    this.socket.start();
  }

  stop(): void {
    if (!this.started) return;
    this.started = false;
    this.unsubscribePersist?.();
    this.unsubscribePersist = null;
    const win = this.opts.windowTarget ?? (typeof window !== 'undefined' ? window : undefined);
    win?.removeEventListener('focus', this.onFocus);
    win?.removeEventListener('online', this.onOnline);
    win?.removeEventListener('storage', this.onStorage);
    const doc = this.opts.documentTarget ?? (typeof document !== 'undefined' ? document : undefined);
    doc?.removeEventListener('visibilitychange', this.onVisibility);
    this.stopSyncTimer();
    this.clearRefreshTimer();
    for (const timer of this.resendTimers.values()) clearTimeout(timer);
    this.resendTimers.clear();
    this.socket.stop();
  }

  /** Log out: stop and forget the unsent messages of this user on this device. */
  discardLocalData(): void {
    try {
      this.opts.storage?.removeItem(pendingKey(this.me.id));
      this.opts.storage?.removeItem(discardedKey(this.me.id));
    } catch {
      // ignore
    }
  }

  /** "Retry now" in the reconnecting banner. */
  reconnectNow(): void {
    this.socket.reconnectNow();
  }

  private readonly onFocus = () => {
    this.refreshIfDue();
    void this.syncNow();
  };

  private readonly onOnline = () => {
    this.refreshIfDue();
    if (!this.socket.isOpen) this.socket.reconnectNow();
  };

  /** Another tab changed the shared record of unsent messages (or storage was cleared). */
  private readonly onStorage = (event: StorageEvent) => {
    const id = this.me.id;
    if (event.key !== null && event.key !== pendingKey(id) && event.key !== discardedKey(id)) return;
    this.takeUpStoredPending(false);
  };

  private readonly onVisibility = () => {
    const doc = this.opts.documentTarget ?? document;
    if (doc.visibilityState !== 'visible') return;
    this.refreshIfDue();
    void this.syncNow();
  };

  private onReady(frame: ReadyFrame): void {
    this.store.setState((s) => ({ me: frame.user, users: mergeUsers(s.users, [frame.user]) }));
    this.startSyncTimer(frame.syncIntervalMs);
    // A refresh that came due while offline (or asleep) goes now. One waiting to be tried again after a failure
    // keeps its pause: a socket that drops on every refresh must not make a loop of reconnects and refreshes.
    if (this.refreshAt === null) this.scheduleRefresh();
    else this.refreshIfDue();
    void this.afterConnect();
  }

  private async afterConnect(): Promise<void> {
    this.resuming = true;
    // Unsent messages of other tabs (closed since, perhaps): sent with this tab's after the sync.
    this.takeUpStoredPending(true);
    try {
      await this.syncNow();
    } finally {
      this.resuming = false;
    }
    if (!this.socket.isOpen) return;
    // Even when the sync failed: a resend carries its client message id, so one already stored comes back as it
    // is, and the outbox does not wait on a slow service.
    this.resendInterrupted();
    const selected = this.store.getState().selected;
    if (selected?.kind === 'conversation') void this.ensureLoaded(selected.id);
    if (selected?.kind === 'draft') void this.resolveUsers([selected.userId]);
  }

  private onDisconnect(): void {
    this.stopSyncTimer();
    this.markReadSent.clear();
  }

  private startSyncTimer(intervalMs: number): void {
    this.stopSyncTimer();
    const every = Math.max(1_000, intervalMs || 30_000);
    this.syncTimer = setInterval(() => {
      // Also the periodic look at the clock: the first tick after a sleep finds a refresh that came due meanwhile.
      this.refreshIfDue();
      void this.syncNow();
    }, every);
  }

  private stopSyncTimer(): void {
    if (this.syncTimer) clearInterval(this.syncTimer);
    this.syncTimer = null;
  }

  // ---- token refresh -----------------------------------------------------------------------------------------

  /**
   * Refreshes the token over the socket once half of its life is gone (`refreshDueAt`), or after `delayMs`. Over
   * the socket, not REST: the gateway then keeps this very socket open for the new token's life, where it would
   * close it when the old one expires.
   */
  private scheduleRefresh(delayMs = refreshDueAt(this.auth) - this.now()): void {
    this.clearRefreshTimer();
    this.refreshAt = null;
    if (!this.started || this.refreshEnded) return;
    this.refreshAt = this.now() + Math.max(0, delayMs);
    this.armRefreshTimer();
  }

  /**
   * Sets the timer for `refreshAt` from the wall clock now. Capped at setTimeout's longest delay: a timer that
   * fires before the refresh is due just sets itself again.
   */
  private armRefreshTimer(): void {
    this.clearRefreshTimer();
    if (this.refreshAt === null) return;
    this.refreshTimer = setTimeout(
      () => {
        this.refreshTimer = null;
        this.refreshIfDue();
      },
      Math.min(Math.max(0, this.refreshAt - this.now()), MAX_TIMER_MS),
    );
  }

  /**
   * Time may have passed without the timers seeing it (the machine slept): refresh now if the wall clock says the
   * refresh is due, otherwise set the timer again from the wall clock.
   */
  private refreshIfDue(): void {
    if (!this.started || this.refreshEnded || this.refreshing || this.refreshAt === null) return;
    if (this.now() < this.refreshAt) {
      this.armRefreshTimer();
      return;
    }
    this.clearRefreshTimer();
    void this.refreshToken();
  }

  private clearRefreshTimer(): void {
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    this.refreshTimer = null;
  }

  private async refreshToken(): Promise<void> {
    // Offline: it stays due, and the next `ready` sends it. Expired: too late to refresh; the app logs out at expiry.
    if (!this.socket.isOpen || isExpired(this.auth, this.now())) return;
    let next: AuthResponse;
    this.refreshing = true;
    try {
      next = await this.request('refreshToken', {}, { priority: 'high' });
    } catch (error) {
      this.refreshing = false;
      // Only `unauthorized` is final: the session is past its maximum age (or the account is gone), and asking
      // again will not change that. Anything else is tried again after a pause: passing failures (the user-service
      // down or slow, the socket dropped), and refusals that a later try may not meet either (`bad_request` from a
      // gateway and a user-service of different releases, mid rolling upgrade). Giving up on those would sign the
      // user out when the token runs out.
      if (asApiRequestError(error).code === 'unauthorized') {
        this.refreshEnded = true;
        this.refreshAt = null;
      } else {
        this.scheduleRefresh(this.opts.refreshRetryMs ?? REFRESH_RETRY_MS);
      }
      return;
    }
    this.refreshing = false;
    // Stopped meanwhile (logged out): reporting it would sign the user in again.
    if (!this.started) return;
    // The server cuts tokens at the session's maximum age: a later token ending exactly when the last did ends
    // there, and refreshing again would only bring the same end, ever more often. (One issued in the same second
    // is the same token again, and says nothing.)
    const previous = this.auth;
    if (next.expiresAt === previous.expiresAt && next.issuedAt > (previous.issuedAt ?? 0)) this.refreshEnded = true;
    this.auth = next;
    this.opts.onAuthRefreshed?.(next);
    // Half the new token's life from now, by its own length (a device clock running ahead of the server's would
    // find every new token due at once), but before it expires by this device's clock (by which the app logs out):
    // halfway there at the latest. Never sooner than a short pause, so no skew makes a loop of refreshes.
    const life = next.expiresAt - next.issuedAt;
    const left = next.expiresAt - EXPIRY_MARGIN_MS - this.now();
    this.scheduleRefresh(Math.max(MIN_REFRESH_GAP_MS, Math.min(life / 2, left / 2)));
  }

  private request<O extends Op>(
    op: O,
    params: RequestParams<O>,
    options: { timeoutMs?: number; priority?: 'high' } = {},
  ): Promise<ReplyOf<O>> {
    return this.socket.request(op, params, options);
  }

  // ---- live frames -------------------------------------------------------------------------------------------

  private onLive(frame: LiveFrame): void {
    switch (frame.type) {
      case 'message':
        this.ingest([frame.message], { live: true });
        return;
      case 'conversation':
        this.onConversation(frame.conversation);
        return;
      case 'read':
        this.store.setState((s) => ({ conversations: applyRead(s.conversations, frame.position) }));
        return;
      case 'resync':
        void this.syncNow();
        return;
    }
  }

  private onConversation(conversation: Conversation): void {
    const before = this.store.getState();
    const known = conversation.id in before.conversations;
    const stillMember = conversation.members.includes(before.me.id);
    if (stillMember) {
      this.removedAt.delete(conversation.id);
      this.confirmedAt.set(conversation.id, ++this.removals);
    } else {
      this.removedAt.set(conversation.id, ++this.removals);
    }
    this.store.setState((s) => {
      const conversations = applyConversation(s.conversations, conversation, s.me.id);
      const timelines = { ...s.timelines };
      if (!stillMember) delete timelines[conversation.id];
      else timelines[conversation.id] ??= emptyTimeline(conversation.lastSeq);
      const selected =
        !stillMember && s.selected?.kind === 'conversation' && s.selected.id === conversation.id ? null : s.selected;
      if (stillMember) return { conversations, timelines, selected };
      const { to, rest } = splitBySendTarget(s.pending, [conversation.id]);
      const notice =
        known && !this.leaving.has(conversation.id) ? noLongerMember([this.titleOf(conversation, s)], to.length) : s.notice;
      return { conversations, timelines, selected, notice, pending: rest };
    });
    if (stillMember) {
      // A `conversation` frame has no read position or preview: fetch the entry for a conversation new to us.
      if (!known) void this.fetchConversation(conversation.id);
      this.resolveDirectPeers([conversation]);
      this.reconcileDraftSelection();
    }
  }

  /**
   * Adds messages from any source (live, a reply, a page, sync): keyed by seq, so duplicates vanish; confirms
   * the user's pending sends; updates the list; repairs gaps; fetches conversations not known yet.
   */
  private ingest(messages: readonly Message[], options: { live?: boolean } = {}): void {
    if (messages.length === 0) return;
    const groups = groupByConversation(messages);
    const gaps: number[] = [];
    const unknown: number[] = [];
    this.store.setState((s) => {
      const timelines = { ...s.timelines };
      for (const [cid, list] of groups) {
        const known = cid in s.conversations;
        const first = list[0];
        if (!first) continue;
        // For a conversation we know nothing about, follow it from here: its history loads when it is opened.
        const current = timelines[cid] ?? emptyTimeline(known ? 0 : first.seq - 1);
        const merged = fitHidden(mergeMessages(current, list), cid, s.selected);
        timelines[cid] = merged;
        if (newestSeq(merged) > merged.head) gaps.push(cid);
        if (!known) unknown.push(cid);
      }
      return {
        timelines,
        conversations: applyMessages(s.conversations, messages, s.me.id),
        pending: confirmPending(s.pending, messages, s.me.id),
      };
    });
    for (const cid of gaps) void this.catchUp(cid);
    for (const cid of unknown) void this.fetchConversation(cid);
    // Announce once the sender's name is known (a lookup failure still announces, with the fallback name).
    const resolved = this.resolveUsers(messages.map((m) => m.senderId));
    if (options.live) void resolved.then(() => this.announce(messages));
  }

  private announce(messages: readonly Message[]): void {
    const s = this.store.getState();
    const fromOthers = messages.filter((m) => m.senderId !== s.me.id);
    const last = fromOthers[fromOthers.length - 1];
    if (!last) return;
    const sender = displayName(s.users, last.senderId);
    const inView = s.selected?.kind === 'conversation' && s.selected.id === last.conversationId;
    const c = s.conversations[last.conversationId];
    const where = !inView && c?.conversation.kind === 'group' ? ` in ${this.titleOf(c.conversation, s)}` : '';
    const text = inView ? `${sender}: ${last.body}` : `New message from ${sender}${where}`;
    this.store.setState((st) => ({ announcement: { text, n: st.announcement.n + 1 } }));
  }

  // ---- sync and repair ---------------------------------------------------------------------------------------

  /**
   * Sends `sync` with the heads the client holds and applies what it lacks. Concurrent calls coalesce: a call
   * during a sync makes it run once more, and every caller's promise resolves when the last run finished.
   */
  syncNow(): Promise<void> {
    if (!this.socket.isOpen) return Promise.resolve();
    if (this.syncing) {
      this.syncAgain = true;
      return this.syncing;
    }
    this.syncing = (async () => {
      try {
        do {
          this.syncAgain = false;
          await this.syncOnce();
        } while (this.syncAgain && this.socket.isOpen);
      } finally {
        this.syncing = null;
      }
    })();
    return this.syncing;
  }

  /** The heads `sync` sends: the contiguous top of every conversation held, most recently active first. */
  heads(): Head[] {
    const s = this.store.getState();
    return sortConversations(s.conversations)
      .slice(0, MAX_SYNC_HEADS)
      .map(({ conversation }) => ({
        conversationId: conversation.id,
        seq: s.timelines[conversation.id]?.head ?? conversation.lastSeq,
      }));
  }

  private async syncOnce(): Promise<void> {
    try {
      const heads = this.heads();
      const inHeads = new Set(heads.map((h) => h.conversationId));
      const asked = this.now();
      const removalsAsked = this.removals;
      const response = await this.request('sync', { heads }, { timeoutMs: this.opts.syncTimeoutMs ?? SYNC_TIMEOUT_MS });
      // The connection carries answers: a later one presumed dead is replaced at once again.
      this.socket.markResponsive();
      const truncated = new Set(response.truncated);
      this.upsertEntries(response.conversations, removalsAsked);
      if (response.conversations.length < MAX_CONVERSATIONS_PAGE) {
        // The list is complete: a conversation we sent a head for and that is missing was left.
        const present = new Set(response.conversations.map((e) => e.conversation.id));
        const gone = [...inHeads].filter((id) => !present.has(id) && !this.confirmedSince(id, removalsAsked));
        if (gone.length) this.removeConversations(gone);
        this.dropOrphanedSends(present, asked);
      } else {
        // More conversations than one sync answers for: the ones we hold that the user is no longer in are named.
        // (Absent from a gateway older than the field, during a rolling upgrade: nothing is named then.)
        const named: readonly number[] = response.removed ?? [];
        const gone = named.filter((id) => inHeads.has(id) && !this.confirmedSince(id, removalsAsked));
        if (gone.length) this.removeConversations(gone);
        // List the rest once (they follow their tails from then on).
        if (!this.listed) void this.listAllConversations();
      }
      this.listed = true;
      // Every message returned confirms our own pending sends, whatever happens to it below.
      this.store.setState((s) => ({ pending: confirmPending(s.pending, response.messages, s.me.id) }));
      const byConversation = groupByConversation(response.messages);
      const known: Message[] = [];
      const timelines = this.store.getState().timelines;
      for (const [cid, list] of byConversation) {
        if (!inHeads.has(cid)) continue;
        // A conversation never opened follows its tail from the baseline its entry set above: what lies below it
        // would be held for nothing (the newest page is loaded on opening).
        const timeline = timelines[cid];
        known.push(...(timeline?.lo === null ? list.filter((m) => m.seq > timeline.head) : list));
      }
      this.ingest(known);
      // A conversation new to this client comes with its newest messages: they are its newest page, so it opens
      // without a request and scrolls back with `getMessages before`. If the answer was cut short (`truncated`:
      // not the tail), it follows its tail instead and loads its newest page when opened.
      for (const entry of response.conversations) {
        const cid = entry.conversation.id;
        if (inHeads.has(cid) || truncated.has(cid)) continue;
        const list = byConversation.get(cid) ?? [];
        const last = list[list.length - 1];
        if (!last || last.seq < entry.conversation.lastSeq) continue;
        const first = list[0]!;
        this.applyPageToStore(cid, { messages: list, hasMoreBefore: first.seq > 1, hasMoreAfter: false }, 'newest');
      }
      // A known conversation cut short is caught up, unless it was never opened: then it follows its tail (its
      // entry set the baseline above; one named without an entry, past the 50 the answer has entries for, gets
      // it from its entry), so a busy group never looked at is not fetched whole after a night away.
      const listed = new Set(response.conversations.map((e) => e.conversation.id));
      for (const cid of truncated) {
        if (!inHeads.has(cid)) continue;
        const st = this.store.getState();
        if (st.timelines[cid]?.lo !== null || st.loadingNewest[cid]) void this.catchUp(cid);
        else if (!listed.has(cid)) void this.fetchConversation(cid);
      }
      this.store.setState({ synced: true });
    } catch (error) {
      const e = asApiRequestError(error);
      // No answer at all in time on an open socket: the connection is presumed dead, so start over rather than
      // wait for the keep-alive to notice. (The gateway answering `timeout` proves the socket alive: a service was
      // slow; the next sync, on the timer or the next event, tries again.) Not at once every time: each connection
      // sends the same heads and would wait for the same large answer, so one after another they reconnect after
      // a growing pause (the `ready` of each does not reset it; an answered sync does). A connection the gateway
      // closes before the answer is in (4008: it could not write it in time) counts the same (`WarrenSocket`). The
      // sends waiting for the connection go once a sync is answered.
      if (e.code === 'timeout' && e.unanswered) this.socket.reconnectUnresponsive();
    }
  }

  /** Every page of `listConversations` (only for users with more conversations than `sync` answers for). */
  private async listAllConversations(): Promise<void> {
    let before: string | undefined;
    try {
      for (let page = 0; page < 100; page++) {
        const removalsAsked = this.removals;
        const result = await this.request('listConversations', {
          limit: MAX_CONVERSATIONS_PAGE,
          ...(before !== undefined ? { before } : {}),
        });
        this.upsertEntries(result.conversations, removalsAsked);
        before = result.next;
        if (before === undefined || result.conversations.length === 0) break;
      }
    } catch {
      // The rest of the list comes with the next session; the recent conversations are all there.
      this.listed = false;
    }
  }

  /** Applies entries from an answer to a request sent when `asked` removals had happened (see `removedAt`). */
  private upsertEntries(entries: readonly ConversationEntry[], asked = this.removals): void {
    entries = entries.filter((entry) => (this.removedAt.get(entry.conversation.id) ?? 0) <= asked);
    if (entries.length === 0) return;
    this.store.setState((s) => {
      let conversations = s.conversations;
      const timelines = { ...s.timelines };
      for (const entry of entries) {
        if (!entry.conversation.members.includes(s.me.id)) continue;
        conversations = upsertEntry(conversations, entry);
        const id = entry.conversation.id;
        const timeline = timelines[id] ?? emptyTimeline(entry.conversation.lastSeq);
        timelines[id] = s.loadingNewest[id] ? timeline : setBaseline(timeline, entry.conversation.lastSeq);
      }
      return { conversations, timelines };
    });
    this.resolveDirectPeers(entries.map((e) => e.conversation));
    void this.resolveUsers(entries.flatMap((e) => (e.lastMessage ? [e.lastMessage.senderId] : [])));
    this.reconcileDraftSelection();
  }

  /**
   * Drops conversations the user is no longer in, with their unsent messages (the server would refuse them). Unless
   * the user left them here (`quietly`), says so: a sync (or a refused `getMessages`) is how a removal made while
   * this tab was offline shows.
   */
  private removeConversations(ids: readonly number[], quietly = false): void {
    for (const id of ids) this.removedAt.set(id, ++this.removals);
    this.store.setState((s) => {
      let conversations = s.conversations;
      const timelines = { ...s.timelines };
      const titles = ids.flatMap((id) => {
        const known = s.conversations[id];
        return known ? [this.titleOf(known.conversation, s)] : [];
      });
      for (const id of ids) {
        conversations = removeConversation(conversations, id);
        delete timelines[id];
      }
      const selected = s.selected?.kind === 'conversation' && ids.includes(s.selected.id) ? null : s.selected;
      const { to, rest } = splitBySendTarget(s.pending, ids);
      const notice = quietly || titles.length === 0 ? s.notice : noLongerMember(titles, to.length);
      return { conversations, timelines, selected, pending: rest, notice };
    });
  }

  /**
   * Unsent messages (written before the sync was asked) to a conversation the complete list does not hold: the
   * user left it or was removed while this tab did not list it (a reload after the send was refused, say). They
   * can never be sent, and no screen would show them.
   */
  private dropOrphanedSends(present: ReadonlySet<number>, asked: number): void {
    const orphaned = Object.values(this.store.getState().pending).filter(
      (send) => 'conversationId' in send.target && !present.has(send.target.conversationId) && send.createdAt <= asked,
    );
    if (orphaned.length === 0) return;
    const ids = new Set(orphaned.map((send) => send.clientMessageId));
    this.store.setState((s) => ({
      pending: Object.fromEntries(Object.entries(s.pending).filter(([id]) => !ids.has(id))),
      notice:
        orphaned.length === 1
          ? 'Your unsent message to a conversation you are no longer in was discarded.'
          : `Your ${orphaned.length} unsent messages to conversations you are no longer in were discarded.`,
    }));
  }

  /**
   * A `getMessages` answered `forbidden`: the user is no longer a member, removed while this tab was not told
   * (offline, say). `sync` notices that only for the `MAX_CONVERSATIONS_PAGE` most recent conversations (for the
   * others its list is incomplete), so this is the removal, said and applied the same way. Returns whether the
   * answer was `forbidden`.
   */
  private removeIfForbidden(conversationId: number, error: unknown, asked: number): boolean {
    if (asApiRequestError(error).code !== 'forbidden') return false;
    // Added back since the page was asked for: the refusal is old news, and the page just failed.
    if (this.confirmedSince(conversationId, asked)) return false;
    // Said once: its other pages in flight are refused too, and find it gone.
    if (conversationId in this.store.getState().conversations) {
      this.removeConversations([conversationId], this.leaving.has(conversationId));
    }
    return true;
  }

  /** Whether a `conversation` frame showed the user a member after `asked` membership changes. */
  private confirmedSince(conversationId: number, asked: number): boolean {
    return (this.confirmedAt.get(conversationId) ?? 0) > asked;
  }

  /** Pages `getMessages` after the contiguous head until the conversation is whole again. */
  async catchUp(conversationId: number): Promise<void> {
    if (this.catchingUp.has(conversationId)) {
      this.catchUpAgain.add(conversationId);
      return;
    }
    if (!this.socket.isOpen) return;
    this.catchingUp.add(conversationId);
    let asked = this.removals;
    try {
      for (let round = 0; round < 10_000; round++) {
        this.catchUpAgain.delete(conversationId);
        const st = this.store.getState();
        const timeline = st.timelines[conversationId];
        // Gone, or never opened (its newest page failed to load, say): nothing shows what this would fetch, and
        // the next sync moves its baseline.
        if (!timeline || (timeline.lo === null && !st.loadingNewest[conversationId])) break;
        asked = this.removals;
        const page = await this.request('getMessages', { conversationId, after: timeline.head, limit: MAX_PAGE });
        this.applyPageToStore(conversationId, page, 'after');
        const now = this.store.getState().timelines[conversationId];
        const progressed = now !== undefined && now.head > timeline.head;
        if (!progressed) break;
        if (!page.hasMoreAfter && !this.catchUpAgain.has(conversationId) && newestSeq(now) <= now.head) break;
      }
    } catch (error) {
      // The next sync repairs what this could not, unless the user is no longer a member.
      this.removeIfForbidden(conversationId, error, asked);
    } finally {
      this.catchingUp.delete(conversationId);
      this.catchUpAgain.delete(conversationId);
    }
  }

  private applyPageToStore(conversationId: number, page: MessagesPage, kind: PageKind): void {
    this.store.setState((s) => {
      const current = s.timelines[conversationId] ?? emptyTimeline(0);
      return {
        timelines: { ...s.timelines, [conversationId]: fitHidden(applyPage(current, page, kind), conversationId, s.selected) },
        conversations: applyMessages(s.conversations, page.messages, s.me.id),
        pending: confirmPending(s.pending, page.messages, s.me.id),
      };
    });
    void this.resolveUsers(page.messages.map((m) => m.senderId));
  }

  private async fetchConversation(conversationId: number): Promise<void> {
    if (this.fetchingConversation.has(conversationId) || !this.socket.isOpen) return;
    this.fetchingConversation.add(conversationId);
    try {
      const removalsAsked = this.removals;
      const entry = await this.request('getConversation', { conversationId });
      this.upsertEntries([entry], removalsAsked);
    } catch {
      // Sync brings it later.
    } finally {
      this.fetchingConversation.delete(conversationId);
    }
  }

  // ---- history -----------------------------------------------------------------------------------------------

  /** Loads the newest page of a conversation that was never opened. */
  async ensureLoaded(conversationId: number): Promise<void> {
    const s = this.store.getState();
    const timeline = s.timelines[conversationId];
    if ((timeline && timeline.lo !== null) || s.loadingNewest[conversationId] || !this.socket.isOpen) return;
    this.setFlag('loadingNewest', conversationId, true);
    this.setFlag('loadFailed', conversationId, false);
    const asked = this.removals;
    try {
      const page = await this.request('getMessages', { conversationId, limit: this.pageSize }, { priority: 'high' });
      this.applyPageToStore(conversationId, page, 'newest');
      const now = this.store.getState().timelines[conversationId];
      if (now && newestSeq(now) > now.head) void this.catchUp(conversationId);
    } catch (error) {
      // Shown as "couldn't load" with a Retry; opening again, or a reconnect, retries too.
      if (!this.removeIfForbidden(conversationId, error, asked)) this.setFlag('loadFailed', conversationId, true);
    } finally {
      this.setFlag('loadingNewest', conversationId, false);
    }
  }

  /** Loads the page before the oldest message shown. */
  async loadOlder(conversationId: number): Promise<void> {
    const s = this.store.getState();
    const timeline = s.timelines[conversationId];
    if (!timeline || timeline.lo === null || !timeline.hasMoreBefore || s.loadingOlder[conversationId]) return;
    if (!this.socket.isOpen) return;
    this.setFlag('loadingOlder', conversationId, true);
    const asked = this.removals;
    let dropped = false;
    try {
      const page = await this.request(
        'getMessages',
        { conversationId, before: timeline.lo, limit: this.pageSize },
        { priority: 'high' },
      );
      this.applyPageToStore(conversationId, page, 'before');
      // The window was trimmed while the page was on its way (the user left and came back): the page no longer
      // reaches it and was dropped (`applyPage`).
      const last = page.messages[page.messages.length - 1];
      const lo = this.store.getState().timelines[conversationId]?.lo;
      dropped = last !== undefined && lo !== null && lo !== undefined && last.seq + 1 < lo;
    } catch (error) {
      // The message list sees the page missing and offers Retry (it does not ask again by itself).
      this.removeIfForbidden(conversationId, error, asked);
    } finally {
      this.setFlag('loadingOlder', conversationId, false);
    }
    // Nothing failed: ask again from the window's new start if it is shown, in the same moment, so the list never
    // sees the page come back with nothing (which it shows as a failure).
    if (dropped && isShown(this.store.getState().selected, conversationId)) void this.loadOlder(conversationId);
  }

  private setFlag(key: 'loadingOlder' | 'loadingNewest' | 'loadFailed', conversationId: number, value: boolean): void {
    this.store.setState((s) => {
      const next = { ...s[key] };
      if (value) next[conversationId] = true;
      else delete next[conversationId];
      return { [key]: next } as Pick<ChatState, typeof key>;
    });
  }

  // ---- sending -----------------------------------------------------------------------------------------------

  /** Sends to the selected conversation (or, for a draft, to the person). Returns the client message id. */
  send(typed: string, target?: SendTarget): string | null {
    // Sent exactly as typed (indentation, blank lines: the server keeps bodies as they are); only a blank one is
    // refused. (Half an emoji becomes the replacement character it shows as: see `toWellFormed`.)
    const body = toWellFormed(typed);
    if (isBlankText(body) || messageLength(body) > MAX_MESSAGE_CHARS) return null;
    const resolved = target ?? this.selectedTarget();
    if (!resolved) return null;
    // Strictly after this tab's previous send, even within one millisecond: sends are resent in this order.
    const createdAt = Math.max(this.now(), this.lastCreatedAt + 1);
    this.lastCreatedAt = createdAt;
    const send: PendingSend = {
      clientMessageId: this.newId(),
      target: resolved,
      body,
      createdAt,
      status: 'sending',
      autoResend: false,
    };
    if (this.resuming || this.waitsBehind(send)) {
      // The sends a drop interrupted go out after the reconnect's sync, and one that failed for a passing reason
      // after its pause; this one goes after them (once the one before it is stored), so the user's messages are
      // stored in the order typed.
      this.store.setState((s) => ({
        pending: addPending(s.pending, { ...send, status: 'failed', error: NOT_SENT_YET, autoResend: true }),
      }));
      if (this.socket.isOpen && !this.resuming) this.holdBehind(send.clientMessageId);
      return send.clientMessageId;
    }
    this.store.setState((s) => ({ pending: addPending(s.pending, send) }));
    void this.transmit(send.clientMessageId);
    return send.clientMessageId;
  }

  /**
   * Whether an earlier send to the same place waits to be resent by itself (failed for a passing reason, or cut
   * off by a drop): a later one must not overtake it, or the user's messages would be stored out of the order typed.
   * With `orOnItsWay`, an earlier one still waiting for its answer counts too (for a send whose own pause is over:
   * it goes once the one before it is stored, `sendNextWaiting`, however long that one's answer takes). Not for a
   * new send, which goes at once behind one on its way: sends in flight keep their order on the socket, since the
   * gateway refuses those behind one it refused. Except behind one on its way in the other form (to the person,
   * `toUserId`, and to their conversation): the gateway keeps order per target as named, so that one is waited for.
   */
  private waitsBehind(send: PendingSend, orOnItsWay = false): boolean {
    const place = this.placeOf(send.target);
    const toPerson = 'toUserId' in send.target;
    return Object.values(this.store.getState().pending).some(
      (p) =>
        p.createdAt < send.createdAt &&
        this.placeOf(p.target) === place &&
        ((p.status === 'failed' && p.autoResend) ||
          (p.status === 'sending' && (orOnItsWay || ('toUserId' in p.target) !== toPerson))),
    );
  }

  /**
   * Where a send goes, as one string. A direct conversation is its peer's: a send made to the person before the
   * conversation existed (`toUserId`) and one made to the conversation go to the same place.
   */
  private placeOf(target: SendTarget): string {
    if ('toUserId' in target) return `u${target.toUserId}`;
    const s = this.store.getState();
    const conversation = s.conversations[target.conversationId]?.conversation;
    const peer = conversation?.kind === 'direct' ? conversation.members.find((id) => id !== s.me.id) : undefined;
    return peer === undefined ? `c${target.conversationId}` : `u${peer}`;
  }

  /**
   * Keeps a send (connected) waiting behind an earlier one to the same place, shown as waiting its turn, with a
   * pause of its own to look again in case that one is settled some other way (confirmed, discarded in a tab).
   */
  private holdBehind(clientMessageId: string): void {
    this.store.setState((s) => ({ pending: markFailed(s.pending, clientMessageId, WAITING_BEHIND, true) }));
    this.scheduleResend(clientMessageId);
  }

  /**
   * A send to `target` made at `createdAt` is settled (stored, or discarded): the first send to the same place that
   * waits to be resent goes now, if it came after it (one before it waits out its own pause). One at a time, each
   * after the one before it is stored: sent together, a later one could be stored while the one before it is
   * refused again.
   */
  private sendNextWaiting(target: SendTarget, createdAt: number): void {
    if (!this.socket.isOpen || this.resuming) return;
    const place = this.placeOf(target);
    const next = toResend(this.store.getState().pending).find((p) => this.placeOf(p.target) === place);
    if (!next || next.createdAt < createdAt) return;
    clearTimeout(this.resendTimers.get(next.clientMessageId));
    this.resendTimers.delete(next.clientMessageId);
    void this.transmit(next.clientMessageId);
  }

  /** Sends a failed message again with the same client message id: the server stores it at most once. */
  retry(clientMessageId: string): void {
    void this.transmit(clientMessageId);
  }

  discard(clientMessageId: string): void {
    const discarded = this.store.getState().pending[clientMessageId];
    // For every tab of the user (see `heldPending`); written before the record, so no tab takes it up again meanwhile.
    if (discarded) this.recordDiscarded(clientMessageId);
    this.forget([clientMessageId]);
    // The sends that waited behind it (it waited to be resent itself) go now, one after another.
    if (discarded?.status === 'failed' && discarded.autoResend) this.sendNextWaiting(discarded.target, discarded.createdAt);
  }

  private forget(clientMessageIds: readonly string[]): void {
    for (const id of clientMessageIds) {
      clearTimeout(this.resendTimers.get(id));
      this.resendTimers.delete(id);
      this.resendAttempts.delete(id);
    }
    this.store.setState((s) => ({ pending: clientMessageIds.reduce(removePending, s.pending) }));
  }

  private recordDiscarded(clientMessageId: string): void {
    const storage = this.opts.storage;
    if (!storage) return;
    try {
      const key = discardedKey(this.me.id);
      const now = this.now();
      const discarded = [...readDiscarded(storage, key), [clientMessageId, now] as const]
        .filter(([, at]) => at > now - DISCARDED_TTL_MS)
        .sort((a, b) => a[1] - b[1])
        .slice(-MAX_DISCARDED);
      storage.setItem(key, JSON.stringify(discarded.map(([id, at]) => ({ clientMessageId: id, at }))));
    } catch {
      // Storage full or disabled: the other tabs keep it until they see it discarded here… or never.
    }
  }

  private selectedTarget(): SendTarget | null {
    const s = this.store.getState();
    if (s.selected?.kind === 'conversation') return { conversationId: s.selected.id };
    if (s.selected?.kind === 'draft') {
      const existing = findDirect(s.conversations, s.me.id, s.selected.userId);
      return existing ? { conversationId: existing.conversation.id } : { toUserId: s.selected.userId };
    }
    return null;
  }

  private async transmit(clientMessageId: string): Promise<void> {
    const send = this.store.getState().pending[clientMessageId];
    if (!send) return;
    if (!this.socket.isOpen) {
      this.store.setState((s) => ({
        pending: markFailed(s.pending, clientMessageId, { code: 'disconnected', message: 'Not connected' }, true),
      }));
      return;
    }
    this.store.setState((s) => ({ pending: markSending(s.pending, clientMessageId) }));
    const asked = this.removals;
    try {
      const message = await this.request(
        'sendMessage',
        { ...send.target, clientMessageId, body: send.body },
        { timeoutMs: this.opts.sendTimeoutMs ?? 15_000, priority: 'high' },
      );
      this.ingest([message]);
      if ('toUserId' in send.target) {
        const userId = send.target.toUserId;
        const selected = this.store.getState().selected;
        // Through select(), so a conversation not loaded here yet is loaded.
        if (selected?.kind === 'draft' && selected.userId === userId) {
          this.select({ kind: 'conversation', id: message.conversationId });
        }
      }
    } catch (error) {
      const e = asApiRequestError(error);
      if (!(clientMessageId in this.store.getState().pending)) {
        // Confirmed by a live frame or a sync meanwhile: stored, so the sends waiting behind it go now.
        this.resendAttempts.delete(clientMessageId);
        this.sendNextWaiting(send.target, send.createdAt);
        return;
      }
      // Refused `forbidden`: removed from the conversation without this tab being told, as a page refused so says;
      // the removal discards this send with the conversation's others and says so. (A conversation not listed
      // here has no removal to apply: its send fails like any refusal.)
      if ('conversationId' in send.target && this.removeIfForbidden(send.target.conversationId, error, asked)) {
        if (!(clientMessageId in this.store.getState().pending)) return;
      }
      const passing = PASSING_FAILURES.has(e.code);
      this.store.setState((s) => ({
        pending: markFailed(s.pending, clientMessageId, { code: e.code, message: e.message }, passing),
      }));
      // A drop is resent after the reconnect's sync; any other passing failure on a live socket after a pause.
      if (passing && e.code !== 'disconnected') this.scheduleResend(clientMessageId);
      return;
    }
    this.resendAttempts.delete(clientMessageId);
    this.sendNextWaiting(send.target, send.createdAt);
  }

  /** Sends a failed message again by itself after a pause that doubles with each attempt (to 30 s). */
  private scheduleResend(clientMessageId: string): void {
    if (!this.started || this.resendTimers.has(clientMessageId)) return;
    const attempt = this.resendAttempts.get(clientMessageId) ?? 0;
    this.resendAttempts.set(clientMessageId, attempt + 1);
    const delay = Math.min((this.opts.resendDelayMs ?? 1_000) * 2 ** attempt, MAX_RESEND_DELAY_MS);
    const timer = setTimeout(() => {
      this.resendTimers.delete(clientMessageId);
      const send = this.store.getState().pending[clientMessageId];
      if (!send) this.resendAttempts.delete(clientMessageId);
      // Resent meanwhile (a reconnect), confirmed, discarded, or offline or mid-reconnect (the reconnect's resend
      // takes it, in the order typed).
      if (send?.status !== 'failed' || !send.autoResend || !this.socket.isOpen || this.resuming) return;
      // An earlier send to the same place still waits: this one goes once that one is stored (`sendNextWaiting`).
      // Until then it keeps a pause of its own, in case that one is settled some other way (a live frame or a sync
      // confirms it, another tab discards it).
      if (this.waitsBehind(send, true)) {
        this.resendAttempts.set(clientMessageId, attempt); // waiting is not an attempt: the same pause again
        this.scheduleResend(clientMessageId);
        return;
      }
      void this.transmit(clientMessageId);
    }, delay);
    this.resendTimers.set(clientMessageId, timer);
  }

  /**
   * After a reconnect's sync (which confirmed whatever had been stored), resend what is still unconfirmed: the
   * first send to each place now, and each one after it once the one before it is stored (`sendNextWaiting`).
   * Sent together, a later one could be stored while the one before it is refused again (its batch failed, and the
   * next batch did not), and the user's messages would be stored out of the order typed.
   */
  private resendInterrupted(): void {
    const going = new Set<string>();
    for (const send of toResend(this.store.getState().pending)) {
      const place = this.placeOf(send.target);
      if (going.has(place)) {
        this.holdBehind(send.clientMessageId);
      } else {
        going.add(place);
        void this.transmit(send.clientMessageId);
      }
    }
  }

  private loadPersistedPending(userId: number): PendingSends {
    let pending: PendingSends = {};
    const discarded = readDiscarded(this.opts.storage, discardedKey(userId));
    for (const p of readPendingRecord(this.opts.storage, pendingKey(userId))) {
      if (discarded.has(p.clientMessageId)) continue;
      this.heldPending.add(p.clientMessageId);
      pending = addPending(pending, asTakenUp(p));
    }
    return pending;
  }

  /**
   * Writes this tab's unsent messages to storage, keeping those another tab of the same user wrote there: every
   * tab shares the key, and writing only this tab's own would erase a message queued in another tab while it
   * was offline, lost if that tab were then closed or reloaded. A record this tab ever held and no longer holds
   * was sent or discarded here, and is removed. One discarded in another tab is let go here too, not written back
   * (see `heldPending`).
   */
  private persistPending(pending: PendingSends): void {
    const storage = this.opts.storage;
    if (!storage) return;
    const discarded = readDiscarded(storage, discardedKey(this.me.id));
    const discardedElsewhere = Object.keys(pending).filter((id) => discarded.has(id));
    try {
      const mine = Object.values(pending).filter((send) => !discarded.has(send.clientMessageId));
      for (const send of mine) this.heldPending.add(send.clientMessageId);
      const key = pendingKey(this.me.id);
      const others = readPendingRecord(storage, key).filter(
        (send) => !this.heldPending.has(send.clientMessageId) && !discarded.has(send.clientMessageId),
      );
      const list = [...others, ...mine];
      if (list.length === 0) storage.removeItem(key);
      else storage.setItem(key, JSON.stringify(list));
    } catch {
      // Storage full or disabled.
    }
    if (discardedElsewhere.length > 0) this.forget(discardedElsewhere);
  }

  /**
   * Brings this tab in line with the record the user's tabs share (see `heldPending`): lets go of sends discarded
   * in another tab, and takes up the other tabs' entries — all of them (`all`, on a reconnect), or those that wait
   * (on the storage event). Those taken up that can go are sent now when the socket is open and not resuming;
   * otherwise they go with the reconnect's resend.
   */
  private takeUpStoredPending(all: boolean): void {
    if (!this.started || !this.opts.storage) return;
    const userId = this.me.id;
    const discarded = readDiscarded(this.opts.storage, discardedKey(userId));
    const s = this.store.getState();
    const discardedElsewhere = Object.keys(s.pending).filter((id) => discarded.has(id));
    const candidates = readPendingRecord(this.opts.storage, pendingKey(userId)).filter(
      (p) =>
        !(p.clientMessageId in s.pending) &&
        !this.heldPending.has(p.clientMessageId) &&
        !discarded.has(p.clientMessageId) &&
        (all || p.status === 'failed'),
    );
    const stored = candidates.length > 0 ? this.ownStoredIds() : new Set<string>();
    const takenUp = candidates.filter((p) => !stored.has(p.clientMessageId)).map(asTakenUp);
    if (discardedElsewhere.length > 0) this.forget(discardedElsewhere);
    if (takenUp.length === 0) return;
    this.store.setState((st) => ({ pending: takenUp.reduce(addPending, st.pending) }));
    if (!this.socket.isOpen || this.resuming) return;
    for (const send of takenUp.filter((p) => p.autoResend).sort((a, b) => a.createdAt - b.createdAt)) {
      // Behind one of this tab's that waits to be resent: it goes once that one is stored (see `send`).
      if (this.waitsBehind(send)) this.holdBehind(send.clientMessageId);
      else void this.transmit(send.clientMessageId);
    }
  }

  /** The client message ids of the user's own messages this tab holds as stored. */
  private ownStoredIds(): Set<string> {
    const s = this.store.getState();
    const ids = new Set<string>();
    for (const timeline of Object.values(s.timelines)) {
      for (const message of timeline.bySeq.values()) if (message.senderId === s.me.id) ids.add(message.clientMessageId);
    }
    return ids;
  }

  // ---- reading -----------------------------------------------------------------------------------------------

  /** The user is looking at the newest messages of this conversation: move the read position there. */
  markRead(conversationId: number): void {
    const s = this.store.getState();
    const state = s.conversations[conversationId];
    const timeline = s.timelines[conversationId];
    if (!state || !timeline || timeline.lo === null || !this.socket.isOpen) return;
    const seq = Math.min(timeline.head, state.conversation.lastSeq);
    if (seq <= state.readSeq || (this.markReadSent.get(conversationId) ?? 0) >= seq) return;
    this.markReadSent.set(conversationId, seq);
    this.request('markRead', { conversationId, seq }, { priority: 'high' })
      .then((position) => this.store.setState((st) => ({ conversations: applyRead(st.conversations, position) })))
      .catch(() => {
        if (this.markReadSent.get(conversationId) === seq) this.markReadSent.delete(conversationId);
      });
  }

  // ---- selection ---------------------------------------------------------------------------------------------

  select(selection: Selection | null): void {
    this.store.setState((s) => {
      const left = s.selected?.kind === 'conversation' ? s.selected.id : null;
      const timeline = left === null || isShown(selection, left) ? undefined : s.timelines[left];
      const trimmed = timeline && trimTimeline(timeline, HIDDEN_KEEP);
      if (left === null || !trimmed || trimmed === timeline) return { selected: selection };
      return { selected: selection, timelines: { ...s.timelines, [left]: trimmed } };
    });
    if (selection?.kind === 'conversation') void this.ensureLoaded(selection.id);
    if (selection?.kind === 'draft') {
      void this.resolveUsers([selection.userId]);
      this.reconcileDraftSelection();
    }
  }

  /** Opens the direct conversation with a person, or a draft that creates it with the first message. */
  openDirect(userId: number): void {
    const s = this.store.getState();
    const existing = findDirect(s.conversations, s.me.id, userId);
    this.select(existing ? { kind: 'conversation', id: existing.conversation.id } : { kind: 'draft', userId });
  }

  /** A draft whose direct conversation now exists becomes that conversation. */
  private reconcileDraftSelection(): void {
    const s = this.store.getState();
    if (s.selected?.kind !== 'draft') return;
    const existing = findDirect(s.conversations, s.me.id, s.selected.userId);
    if (existing) this.select({ kind: 'conversation', id: existing.conversation.id });
  }

  dismissNotice(): void {
    this.store.setState({ notice: null });
  }

  // ---- people and groups -------------------------------------------------------------------------------------

  /** People whose username starts with `prefix` (over REST while the socket is down). */
  async searchUsers(prefix: string, limit = 20): Promise<User[]> {
    const page =
      !this.socket.isOpen && this.opts.rest
        ? await this.opts.rest.getUsers(this.auth.token, { prefix, limit })
        : await this.request('getUsers', { prefix, limit }, { priority: 'high' });
    this.store.setState((s) => ({ users: mergeUsers(s.users, page.users) }));
    return page.users;
  }

  /** Looks up users by id (`getUsers { ids }`, at most 100 a request), skipping those cached or being looked up. */
  async resolveUsers(ids: readonly number[]): Promise<void> {
    if (!this.socket.isOpen) return;
    const missing = missingIds(this.store.getState().users, ids).filter((id) => !this.resolving.has(id));
    if (missing.length === 0) return;
    for (const id of missing) this.resolving.add(id);
    try {
      await Promise.all(
        idBatches(missing).map(async (batch) => {
          const page = await this.request('getUsers', { ids: batch });
          this.store.setState((s) => ({ users: mergeUsers(s.users, page.users) }));
        }),
      );
    } catch {
      // Names show as "user N" until the next attempt.
    } finally {
      for (const id of missing) this.resolving.delete(id);
    }
  }

  private resolveDirectPeers(conversations: readonly Conversation[]): void {
    const meId = this.store.getState().me.id;
    const ids = conversations
      .filter((c) => c.kind === 'direct')
      .map((c) => directPeer(c, meId))
      .filter((id): id is number => id !== undefined);
    void this.resolveUsers(ids);
  }

  /**
   * Creates a group. Asking again with the same `clientGroupId`, title and members (after a timeout or a lost
   * connection) returns the group the first call made, if it made one, instead of making a second.
   */
  async createGroup(title: string, memberIds: readonly number[], clientGroupId: string): Promise<Conversation> {
    const conversation = await this.request(
      'createGroup',
      { title: toWellFormed(title).trim(), memberIds: [...memberIds], clientGroupId },
      { priority: 'high' },
    );
    this.applyOwnConversation(conversation);
    this.select({ kind: 'conversation', id: conversation.id });
    return conversation;
  }

  async addMembers(conversationId: number, userIds: readonly number[]): Promise<Conversation> {
    const conversation = await this.request('addMembers', { conversationId, userIds: [...userIds] }, { priority: 'high' });
    this.applyOwnConversation(conversation);
    return conversation;
  }

  async removeMember(conversationId: number, userId: number): Promise<Conversation> {
    const conversation = await this.request('removeMember', { conversationId, userId }, { priority: 'high' });
    this.applyOwnConversation(conversation);
    return conversation;
  }

  async leave(conversationId: number): Promise<void> {
    // The service announces the change to the leaver's sockets before it answers: that frame is this very
    // leave, not news to tell the user about.
    this.leaving.add(conversationId);
    try {
      const conversation = await this.request('leaveConversation', { conversationId }, { priority: 'high' });
      this.applyOwnConversation(conversation);
      this.removeConversations([conversationId], true);
    } finally {
      this.leaving.delete(conversationId);
    }
  }

  /** A group operation's reply: the same as a `conversation` frame, without the "removed" notice. */
  private applyOwnConversation(conversation: Conversation): void {
    this.store.setState((s) => {
      const conversations = applyConversation(s.conversations, conversation, s.me.id);
      if (!(conversation.id in conversations) || conversation.id in s.timelines) return { conversations };
      return { conversations, timelines: { ...s.timelines, [conversation.id]: emptyTimeline(conversation.lastSeq) } };
    });
    void this.resolveUsers(conversation.members.slice(0, 200));
  }

  // ---- helpers -----------------------------------------------------------------------------------------------

  titleOf(conversation: Conversation, state: ChatState = this.store.getState()): string {
    return conversationTitle(conversation, state.me.id, state.users);
  }
}

export function conversationTitle(
  conversation: Conversation,
  meId: number,
  users: ChatState['users'],
): string {
  if (conversation.kind === 'group') {
    // A title of invisible characters only (stored before the server refused them) shows as no title.
    const title = conversation.title ?? '';
    return isBlankText(title) ? 'Untitled group' : title.trim();
  }
  const peer = directPeer(conversation, meId);
  if (peer === undefined) return 'Direct conversation';
  if (peer === meId) return `${displayName(users, meId)} (you)`;
  return displayName(users, peer);
}

export type { Timeline };
