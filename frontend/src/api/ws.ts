import type { ClientFrame } from '../protocol/generated/ClientFrame';
import type { ReplyData } from '../protocol/generated/ReplyData';
import type { ServerFrame } from '../protocol/generated/ServerFrame';
import { type BackoffOptions, DEFAULT_BACKOFF, backoffDelay } from './backoff';
import { ApiRequestError } from './errors';

/** Every client frame but `auth` is a request with an id and exactly one reply or error. */
export type RequestFrame = Exclude<ClientFrame, { type: 'auth' }>;
export type Op = RequestFrame['type'];
export type RequestParams<O extends Op> = Omit<Extract<RequestFrame, { type: O }>, 'type' | 'id'>;
export type ReplyOf<O extends Op> = Extract<ReplyData, { op: O }>['data'];
export type ReadyFrame = Extract<ServerFrame, { type: 'ready' }>;
export type LiveFrame = Extract<ServerFrame, { type: 'message' | 'conversation' | 'read' | 'resync' }>;

/**
 * Operations whose answers can run to megabytes, and how many of them the gateway works on at once per socket
 * (`HEAVY_IN_FLIGHT` in api/src/ws/connection.rs; docs/PROTOCOL.md, "Requests").
 */
export const LARGE_ANSWER_OPS: ReadonlySet<Op> = new Set<Op>(['getMessages', 'sync', 'listConversations']);
export const LARGE_ANSWERS_AT_ONCE = 4;

/** Close codes the gateway uses besides the standard ones (common/src/protocol/ws.rs `close`). */
export const CloseCode = {
  NORMAL: 1000,
  GOING_AWAY: 1001,
  UNAUTHORIZED: 4001,
  PROTOCOL: 4002,
  SLOW_CONSUMER: 4008,
} as const;

/** The part of the browser's WebSocket this client uses; tests pass a double. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: Event) => void) | null;
  onmessage: ((event: MessageEvent) => void) | null;
  onclose: ((event: CloseEvent) => void) | null;
  onerror: ((event: Event) => void) | null;
}

export type WebSocketFactory = (url: string) => WebSocketLike;

/**
 * - `connecting`: first connection attempt (or after `start`).
 * - `open`: authenticated (`ready` received); requests may be sent.
 * - `reconnecting`: the connection dropped; waiting for the next attempt or in one.
 * - `closed`: stopped for good (logged out, or the token was refused).
 */
export type SocketStatus = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed';

export interface StatusInfo {
  /** Failed attempts since the last successful `ready`. */
  attempt: number;
  /** When the next attempt starts (ms since epoch), while waiting. */
  retryAt?: number;
  /** The close code that ended the previous connection. */
  closeCode?: number;
}

export interface WarrenSocketOptions {
  url: string;
  /** Read on every connect, so a refreshed token is used on reconnect. */
  token: () => string | null;
  createSocket?: WebSocketFactory;
  /** Default per-request timeout (counted from the call, queueing included). */
  requestTimeoutMs?: number;
  /**
   * Requests on the wire at once; more wait in a queue. The gateway refuses requests past its own limit
   * (`WARREN_WS_MAX_IN_FLIGHT`, default 32) and closes a socket that keeps trying, so stay well below it.
   */
  maxInFlight?: number;
  /**
   * Of those, requests whose answers can be large (`getMessages`, `sync`, `listConversations`) on the wire at once.
   * The gateway works on 4 of them per socket at a time and makes the rest wait in arrival order (docs/PROTOCOL.md),
   * so more on the wire would only queue there, where a page the user asked for cannot go first. Keeping the rest
   * here lets the queue's priorities decide, while the socket's other requests go past them.
   */
  maxLargeInFlight?: number;
  /**
   * How long a connection attempt may take, from opening the socket to the gateway's `ready` (a gateway that
   * accepts TCP but never completes the handshake, e.g. frozen, must not hold the client forever).
   */
  authTimeoutMs?: number;
  /**
   * Keep-alive: every this many ms an open socket sends `ping` (answered by the gateway itself). Browsers cannot
   * see WebSocket-level pings, so this is how a page notices a connection that died without a close. 0 turns it off.
   */
  keepAliveIntervalMs?: number;
  /** A `ping` unanswered this long drops the socket and reconnects at once. */
  keepAliveTimeoutMs?: number;
  backoff?: BackoffOptions;
  random?: () => number;
  now?: () => number;
  onReady?: (frame: ReadyFrame) => void;
  onLive?: (frame: LiveFrame) => void;
  onStatus?: (status: SocketStatus, info: StatusInfo) => void;
  /** The gateway refused the token (close 4001): the session is over. */
  onUnauthorized?: (reason: string) => void;
  /** A connection ended (any reason); in-flight requests have already been rejected. */
  onDisconnect?: (closeCode: number) => void;
}

interface InFlight {
  op: Op;
  resolve: (data: unknown) => void;
  reject: (error: ApiRequestError) => void;
  timer: ReturnType<typeof setTimeout>;
}

interface Queued extends InFlight {
  frame: RequestFrame;
}

export interface RequestOptions {
  timeoutMs?: number;
  /** User actions (sending, group changes, search) go ahead of background fetches in the queue. */
  priority?: 'high' | 'normal';
}

export function defaultSocketUrl(location: Pick<Location, 'protocol' | 'host'> = window.location): string {
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
}

/**
 * One logical connection to the gateway that heals itself: authenticates with the first frame, correlates
 * requests and replies by id (each with a timeout), and reconnects with exponential backoff and jitter after
 * any close except 4001 (unauthorized). `ready` resets the backoff of failed attempts, but connections that
 * authenticate and then close or go silent before carrying any answer make a streak whose pauses grow too (see
 * `unresponsive`). Requests made while not connected fail at once with `disconnected`; the session layer decides
 * what to resend after the next `sync`.
 */
export class WarrenSocket {
  private readonly options: Required<
    Pick<
      WarrenSocketOptions,
      | 'requestTimeoutMs'
      | 'authTimeoutMs'
      | 'keepAliveIntervalMs'
      | 'keepAliveTimeoutMs'
      | 'backoff'
      | 'random'
      | 'now'
      | 'createSocket'
      | 'maxInFlight'
      | 'maxLargeInFlight'
    >
  > &
    WarrenSocketOptions;
  private socket: WebSocketLike | null = null;
  private readonly inFlight = new Map<string, InFlight>();
  private readonly queue: Queued[] = [];
  private nextId = 1;
  private attempt = 0;
  /**
   * Connections in a row that authenticated but never carried an answer: presumed dead (`reconnectUnresponsive`),
   * or closed, whatever the code, before one came (the gateway's 4008 when it cannot write a large answer in time,
   * a dropped link). Unlike `attempt`, a `ready` does not reset it: a link that authenticates but cannot carry an
   * answer in time would otherwise reconnect in a loop with no pause. Only an answer does (`markResponsive`, or an
   * answered keep-alive ping).
   */
  private unresponsive = 0;
  /** The current connection reached `ready` but has carried no answer yet that proves it works. */
  private unproven = false;
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private authTimer: ReturnType<typeof setTimeout> | null = null;
  private keepAliveTimer: ReturnType<typeof setInterval> | null = null;
  /** The id of the keep-alive `ping` awaiting its answer, if any. */
  private pingInFlight: string | null = null;
  private currentStatus: SocketStatus = 'idle';
  private stopped = true;

  constructor(options: WarrenSocketOptions) {
    this.options = {
      requestTimeoutMs: 10_000,
      authTimeoutMs: 10_000,
      keepAliveIntervalMs: 15_000,
      keepAliveTimeoutMs: 10_000,
      maxInFlight: 16,
      maxLargeInFlight: LARGE_ANSWERS_AT_ONCE,
      backoff: DEFAULT_BACKOFF,
      random: Math.random,
      now: Date.now,
      createSocket: (url: string) => new WebSocket(url) as WebSocketLike,
      ...options,
    };
  }

  get status(): SocketStatus {
    return this.currentStatus;
  }

  get isOpen(): boolean {
    return this.currentStatus === 'open';
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.attempt = 0;
    this.unresponsive = 0;
    this.setStatus('connecting', { attempt: 0 });
    this.connect();
  }

  /** Closes for good (log out). */
  stop(): void {
    this.stopped = true;
    this.clearReconnect();
    this.dropSocket(CloseCode.NORMAL, 'client stopped');
    this.setStatus('closed', { attempt: this.attempt });
  }

  /**
   * Drops the current connection (if any) and connects again now: the network came back, or a request timed
   * out and the socket is presumed dead.
   */
  reconnectNow(): void {
    if (this.stopped) return;
    this.clearReconnect();
    if (this.socket) {
      this.dropSocket(CloseCode.NORMAL, 'reconnecting');
      this.options.onDisconnect?.(CloseCode.NORMAL);
    }
    this.setStatus('reconnecting', { attempt: this.attempt });
    this.connect();
  }

  /**
   * Drops a connection presumed dead (a keep-alive ping, or a request the caller says proves it, got no answer at
   * all in time) and connects again: at once the first time, then after a pause that grows with each connection in
   * a row that goes the same way, whether or not it authenticated. A connection that closes after `ready` and before
   * any answer counts toward the same streak (see `handleClose`). Only an answer ends the streak: an answered ping,
   * or `markResponsive`.
   */
  reconnectUnresponsive(): void {
    if (this.stopped) return;
    this.unresponsive += 1;
    if (this.unresponsive === 1) {
      this.reconnectNow();
      return;
    }
    this.clearReconnect();
    if (this.socket) {
      this.dropSocket(CloseCode.NORMAL, 'no answer');
      this.options.onDisconnect?.(CloseCode.NORMAL);
    }
    this.scheduleReconnect(CloseCode.NORMAL, this.unresponsive - 2);
  }

  /**
   * The connection carried an answer that proves it works (the session's sync): a later drop or close reconnects
   * after the first pause only, and starts a new streak.
   */
  markResponsive(): void {
    this.unresponsive = 0;
    this.unproven = false;
  }

  request<O extends Op>(op: O, params: RequestParams<O>, options: RequestOptions = {}): Promise<ReplyOf<O>> {
    if (!this.isOpen) {
      return Promise.reject(new ApiRequestError('disconnected', 'not connected'));
    }
    const id = `r${this.nextId++}`;
    const frame = { ...params, type: op, id } as RequestFrame;
    return new Promise<ReplyOf<O>>((resolve, reject) => {
      const timer = setTimeout(() => {
        const queued = this.queue.findIndex((q) => q.frame.id === id);
        if (queued >= 0) this.queue.splice(queued, 1);
        this.highPriority.delete(id);
        if (queued >= 0 || this.inFlight.delete(id)) {
          reject(new ApiRequestError('timeout', `no answer to ${op} in time`, { unanswered: true }));
          this.pump();
        }
      }, options.timeoutMs ?? this.options.requestTimeoutMs);
      const entry: Queued = { op, frame, resolve: resolve as (data: unknown) => void, reject, timer };
      if (options.priority === 'high') {
        // After the other high-priority requests, before everything else.
        const firstNormal = this.queue.findIndex((q) => !this.highPriority.has(q.frame.id));
        this.queue.splice(firstNormal < 0 ? this.queue.length : firstNormal, 0, entry);
        this.highPriority.add(id);
      } else {
        this.queue.push(entry);
      }
      this.pump();
    });
  }

  /** Requests waiting for a free slot (for tests and diagnostics). */
  get queued(): number {
    return this.queue.length;
  }

  private readonly highPriority = new Set<string>();

  /**
   * Moves queued requests onto the wire while there is room, in queue order, except that a request with a large
   * answer waits (keeping its place) while `maxLargeInFlight` of them are out, and the requests behind it go.
   */
  private pump(): void {
    const socket = this.socket;
    if (!socket || !this.isOpen) return;
    let large = 0;
    for (const request of this.inFlight.values()) if (LARGE_ANSWER_OPS.has(request.op)) large += 1;
    let i = 0;
    while (this.isOpen && this.inFlight.size < this.options.maxInFlight && i < this.queue.length) {
      const next = this.queue[i]!;
      const isLarge = LARGE_ANSWER_OPS.has(next.op);
      if (isLarge && large >= this.options.maxLargeInFlight) {
        i += 1;
        continue;
      }
      this.queue.splice(i, 1);
      if (isLarge) large += 1;
      this.highPriority.delete(next.frame.id);
      this.inFlight.set(next.frame.id, next);
      try {
        socket.send(JSON.stringify(next.frame));
      } catch {
        clearTimeout(next.timer);
        this.inFlight.delete(next.frame.id);
        if (isLarge) large -= 1;
        next.reject(new ApiRequestError('disconnected', 'the connection closed'));
      }
    }
  }

  private connect(): void {
    const token = this.options.token();
    if (!token) {
      this.stop();
      this.options.onUnauthorized?.('no token');
      return;
    }
    let socket: WebSocketLike;
    try {
      socket = this.options.createSocket(this.options.url);
    } catch {
      this.scheduleReconnect(1006);
      return;
    }
    this.socket = socket;
    this.authTimer = setTimeout(() => {
      if (this.socket !== socket) return;
      // Not open and authenticated in time: treat the connection as failed.
      this.handleClose(socket, 4000);
    }, this.options.authTimeoutMs);
    socket.onopen = () => {
      if (this.socket !== socket) return;
      socket.send(JSON.stringify({ type: 'auth', token } satisfies ClientFrame));
    };
    socket.onmessage = (event: MessageEvent) => {
      if (this.socket !== socket) return;
      this.handleMessage(event.data);
    };
    socket.onclose = (event: CloseEvent) => this.handleClose(socket, event.code, event.reason);
    socket.onerror = () => {
      // A close event always follows an error; reconnecting is handled there.
    };
  }

  private handleMessage(data: unknown): void {
    if (typeof data !== 'string') return;
    let frame: ServerFrame;
    try {
      frame = JSON.parse(data) as ServerFrame;
    } catch {
      return;
    }
    switch (frame.type) {
      case 'ready': {
        if (this.authTimer) clearTimeout(this.authTimer);
        this.authTimer = null;
        // The attempt succeeded, but that alone does not show the link can carry answers (see `unresponsive`).
        this.attempt = 0;
        this.unproven = true;
        this.setStatus('open', { attempt: 0 });
        this.startKeepAlive();
        this.options.onReady?.(frame);
        return;
      }
      case 'reply': {
        const pending = frame.id ? this.inFlight.get(frame.id) : undefined;
        if (!pending) return; // timed out already, or not ours
        this.inFlight.delete(frame.id);
        clearTimeout(pending.timer);
        if (frame.result.op !== pending.op) {
          pending.reject(new ApiRequestError('internal', `expected a ${pending.op} reply, got ${frame.result.op}`));
        } else {
          pending.resolve(frame.result.data);
        }
        this.pump();
        return;
      }
      case 'error': {
        const pending = frame.id ? this.inFlight.get(frame.id) : undefined;
        if (!pending || frame.id === undefined) return;
        this.inFlight.delete(frame.id);
        clearTimeout(pending.timer);
        pending.reject(ApiRequestError.fromApiError(frame.error));
        this.pump();
        return;
      }
      case 'message':
      case 'conversation':
      case 'read':
      case 'resync':
        this.options.onLive?.(frame);
        return;
    }
  }

  /**
   * The socket closed (or never authenticated in time: `4000`). After any code but 4001 it reconnects after the
   * backoff of the failed attempts; a connection that authenticated but closed before carrying any answer (whatever
   * the code: the gateway's 4008 when it could not write the sync's answer in time, its 1001, a dropped link) is one
   * more in the streak of `unresponsive` ones, and waits at least that streak's pause.
   */
  private handleClose(socket: WebSocketLike, code: number, reason = ''): void {
    if (this.socket !== socket) return;
    const unproven = this.unproven;
    this.dropSocket(code === 4000 ? CloseCode.NORMAL : undefined, 'no ready in time');
    this.options.onDisconnect?.(code);
    if (this.stopped) return;
    if (code === CloseCode.UNAUTHORIZED) {
      this.stopped = true;
      this.setStatus('closed', { attempt: this.attempt, closeCode: code });
      this.options.onUnauthorized?.(reason || 'unauthorized');
      return;
    }
    if (unproven) {
      this.unresponsive += 1;
      this.scheduleReconnect(code, this.unresponsive - 2);
    } else {
      this.scheduleReconnect(code);
    }
  }

  /** Reconnects after the backoff of `attempt` failed attempts, or of `minAttempt` if more. */
  private scheduleReconnect(closeCode: number, minAttempt = 0): void {
    this.clearReconnect();
    const delay = backoffDelay(Math.max(this.attempt, minAttempt), this.options.backoff, this.options.random);
    this.attempt += 1;
    this.setStatus('reconnecting', { attempt: this.attempt, retryAt: this.options.now() + delay, closeCode });
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      if (!this.stopped) this.connect();
    }, delay);
  }

  /** Detaches and closes the current socket and fails every request still waiting on it. */
  private dropSocket(code: number | undefined, reason: string): void {
    const socket = this.socket;
    this.socket = null;
    this.unproven = false;
    if (this.authTimer) clearTimeout(this.authTimer);
    this.authTimer = null;
    this.stopKeepAlive();
    if (socket) {
      socket.onopen = null;
      socket.onmessage = null;
      socket.onclose = null;
      socket.onerror = null;
      if (code !== undefined) {
        try {
          socket.close(code, reason);
        } catch {
          // already closed
        }
      }
    }
    const waiting: InFlight[] = [...this.inFlight.values(), ...this.queue];
    this.inFlight.clear();
    this.queue.length = 0;
    this.highPriority.clear();
    for (const request of waiting) {
      clearTimeout(request.timer);
      request.reject(new ApiRequestError('disconnected', 'the connection closed before an answer came'));
    }
  }

  private startKeepAlive(): void {
    this.stopKeepAlive();
    if (this.options.keepAliveIntervalMs <= 0) return;
    this.keepAliveTimer = setInterval(() => this.sendKeepAlive(), this.options.keepAliveIntervalMs);
  }

  private stopKeepAlive(): void {
    if (this.keepAliveTimer) clearInterval(this.keepAliveTimer);
    this.keepAliveTimer = null;
    this.pingInFlight = null;
  }

  /**
   * Sends `ping` straight onto the wire (not through the request queue: a full queue must not look like a dead
   * connection, and the gateway allows more requests in flight than `maxInFlight`). No answer in time: the
   * connection is presumed dead, so drop it and reconnect now rather than wait for TCP to notice (after a pause if
   * the connections before it went the same way: `reconnectUnresponsive`). The answer queues behind whatever the
   * gateway is writing on the socket, a large `sync` answer too, and still counts as missing when late for that
   * reason: the gateway gives up on a write after 10 s itself (closing with 4008), so that is rare and near a close
   * anyway, while waiting on the sync's longer timeout would slow the detection of a frozen connection.
   */
  private sendKeepAlive(): void {
    const socket = this.socket;
    if (!socket || !this.isOpen || this.pingInFlight !== null) return;
    const id = `p${this.nextId++}`;
    const timer = setTimeout(() => {
      if (this.pingInFlight !== id) return;
      this.pingInFlight = null;
      this.inFlight.delete(id);
      if (this.socket === socket) this.reconnectUnresponsive();
    }, this.options.keepAliveTimeoutMs);
    this.pingInFlight = id;
    this.inFlight.set(id, {
      op: 'ping',
      resolve: () => {
        if (this.pingInFlight === id) this.pingInFlight = null;
        this.markResponsive();
      },
      reject: () => {
        if (this.pingInFlight === id) this.pingInFlight = null;
      },
      timer,
    });
    try {
      socket.send(JSON.stringify({ type: 'ping', id } satisfies ClientFrame));
    } catch {
      // The close event follows; it reconnects.
    }
  }

  private clearReconnect(): void {
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
  }

  private setStatus(status: SocketStatus, info: StatusInfo): void {
    this.currentStatus = status;
    this.options.onStatus?.(status, info);
  }
}
