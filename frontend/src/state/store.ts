import { type StoreApi, createStore } from 'zustand/vanilla';
import type { SocketStatus } from '../api/ws';
import type { User } from '../protocol/generated/User';
import type { Conversations } from './conversations';
import type { PendingSends } from './pending';
import type { Timeline } from './timeline';
import type { UsersCache } from './users';

export type Selection = { kind: 'conversation'; id: number } | { kind: 'draft'; userId: number };

export interface ConnectionState {
  status: SocketStatus;
  /** Failed attempts since the last successful connection. */
  attempt: number;
  /** When the next reconnect attempt starts (ms since epoch). */
  retryAt?: number;
  /** The socket was open at least once in this session. */
  hasConnected: boolean;
}

export interface ChatState {
  me: User;
  connection: ConnectionState;
  /** The conversation list is known (first sync done). */
  synced: boolean;
  conversations: Conversations;
  /** Messages per conversation, keyed by seq. */
  timelines: Readonly<Record<number, Timeline>>;
  pending: PendingSends;
  users: UsersCache;
  selected: Selection | null;
  loadingOlder: Readonly<Record<number, boolean>>;
  loadingNewest: Readonly<Record<number, boolean>>;
  /** Conversations whose newest page could not be loaded (shown with a Retry). */
  loadFailed: Readonly<Record<number, boolean>>;
  /** The latest text for the screen reader live region; `n` changes so a repeated text is announced again. */
  announcement: { text: string; n: number };
  /** A short, dismissable notice (e.g. "You were removed from …"). */
  notice: string | null;
}

export type ChatStore = StoreApi<ChatState>;

export function createChatStore(me: User, initial: Partial<ChatState> = {}): ChatStore {
  return createStore<ChatState>()(() => ({
    me,
    connection: { status: 'idle', attempt: 0, hasConnected: false },
    synced: false,
    conversations: {},
    timelines: {},
    pending: {},
    users: { [me.id]: me },
    selected: null,
    loadingOlder: {},
    loadingNewest: {},
    loadFailed: {},
    announcement: { text: '', n: 0 },
    notice: null,
    ...initial,
  }));
}
