import type { WebSocketLike } from '../api/ws';
import type { ApiError } from '../protocol/generated/ApiError';
import type { ClientFrame } from '../protocol/generated/ClientFrame';
import type { ReplyData } from '../protocol/generated/ReplyData';
import type { ServerFrame } from '../protocol/generated/ServerFrame';
import type { User } from '../protocol/generated/User';

type RequestFrame = Exclude<ClientFrame, { type: 'auth' }>;
type Op = RequestFrame['type'];
type Handlers = {
  [K in Op]?: (
    frame: Extract<RequestFrame, { type: K }>,
  ) => Extract<ReplyData, { op: K }>['data'] | { error: ApiError } | undefined;
};

/** A test double of the browser's WebSocket: the test plays the server. */
export class FakeWebSocket implements WebSocketLike {
  readyState = 0;
  readonly sent: ClientFrame[] = [];
  closedByClient: { code?: number; reason?: string } | null = null;
  onopen: ((event: Event) => void) | null = null;
  onmessage: ((event: MessageEvent) => void) | null = null;
  onclose: ((event: CloseEvent) => void) | null = null;
  onerror: ((event: Event) => void) | null = null;

  constructor(
    readonly url: string,
    private readonly server?: FakeServer,
  ) {}

  send(data: string): void {
    if (this.readyState !== 1) throw new Error('InvalidStateError: socket not open');
    const frame = JSON.parse(data) as ClientFrame;
    this.sent.push(frame);
    this.server?.onClientFrame(this, frame);
  }

  close(code?: number, reason?: string): void {
    this.readyState = 3;
    this.closedByClient = { ...(code !== undefined ? { code } : {}), ...(reason !== undefined ? { reason } : {}) };
  }

  // ---- the server's side ----

  open(): void {
    this.readyState = 1;
    this.onopen?.(new Event('open'));
  }

  receive(frame: ServerFrame): void {
    this.onmessage?.({ data: JSON.stringify(frame) } as MessageEvent);
  }

  serverClose(code: number, reason = ''): void {
    this.readyState = 3;
    this.onclose?.({ code, reason, wasClean: true } as CloseEvent);
  }

  requests<T extends RequestFrame['type']>(type: T): Extract<RequestFrame, { type: T }>[] {
    return this.sent.filter((f): f is Extract<RequestFrame, { type: T }> => f.type === type);
  }

  lastRequest<T extends RequestFrame['type']>(type: T): Extract<RequestFrame, { type: T }> {
    const all = this.requests(type);
    const last = all[all.length - 1];
    if (!last) throw new Error(`no ${type} request was sent (sent: ${this.sent.map((f) => f.type).join(', ')})`);
    return last;
  }

  reply<T extends ReplyData['op']>(request: { id: string }, op: T, data: Extract<ReplyData, { op: T }>['data']): void {
    this.receive({ type: 'reply', id: request.id, result: { op, data } as ReplyData });
  }

  fail(request: { id: string }, error: ApiError): void {
    this.receive({ type: 'error', id: request.id, error });
  }
}

/**
 * Creates sockets for the client and answers requests through handlers (a handler returning undefined leaves
 * the request unanswered so the test can answer it by hand).
 */
export class FakeServer {
  readonly sockets: FakeWebSocket[] = [];
  handlers: Handlers = {};

  readonly factory = (url: string): FakeWebSocket => {
    const socket = new FakeWebSocket(url, this);
    this.sockets.push(socket);
    return socket;
  };

  get current(): FakeWebSocket {
    const socket = this.sockets[this.sockets.length - 1];
    if (!socket) throw new Error('no socket was opened');
    return socket;
  }

  /** Opens the newest socket and answers its `auth` with `ready`. */
  accept(user: User, syncIntervalMs = 60_000): FakeWebSocket {
    const socket = this.current;
    socket.open();
    const auth = socket.sent[0];
    if (auth?.type !== 'auth') throw new Error('the first frame was not auth');
    socket.receive({ type: 'ready', user, pingIntervalMs: 25_000, syncIntervalMs });
    return socket;
  }

  onClientFrame(socket: FakeWebSocket, frame: ClientFrame): void {
    if (frame.type === 'auth') return;
    const handler = this.handlers[frame.type] as ((f: RequestFrame) => ReplyData['data'] | { error: ApiError } | undefined) | undefined;
    if (!handler) return;
    const result = handler(frame);
    if (result === undefined) return;
    queueMicrotask(() => {
      if (socket.readyState !== 1) return;
      if (typeof result === 'object' && result !== null && 'error' in result) socket.fail(frame, result.error);
      else socket.receive({ type: 'reply', id: frame.id, result: { op: frame.type, data: result } as ReplyData });
    });
  }
}

/** Lets queued microtasks and promise chains run. */
export async function flush(rounds = 5): Promise<void> {
  for (let i = 0; i < rounds; i++) await new Promise<void>((resolve) => setTimeout(resolve, 0));
}
