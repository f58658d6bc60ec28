import type { ClientErrorCode } from '../api/errors';
import type { Message } from '../protocol/generated/Message';

export type SendTarget = { conversationId: number } | { toUserId: number };

/** A message the user sent that the server has not confirmed yet. */
export interface PendingSend {
  /** Chosen once; every retry sends the same id, so the server stores the message at most once. */
  readonly clientMessageId: string;
  readonly target: SendTarget;
  readonly body: string;
  readonly createdAt: number;
  readonly status: 'sending' | 'failed';
  readonly error?: { readonly code: ClientErrorCode; readonly message: string };
  /** The connection dropped before an answer: resend by itself after the next sync. */
  readonly autoResend: boolean;
}

export type PendingSends = Readonly<Record<string, PendingSend>>;

export function addPending(pending: PendingSends, send: PendingSend): PendingSends {
  return { ...pending, [send.clientMessageId]: send };
}

export function markSending(pending: PendingSends, clientMessageId: string): PendingSends {
  const current = pending[clientMessageId];
  if (!current) return pending;
  const { error: _error, ...rest } = current;
  return { ...pending, [clientMessageId]: { ...rest, status: 'sending', autoResend: false } };
}

export function markFailed(
  pending: PendingSends,
  clientMessageId: string,
  error: { code: ClientErrorCode; message: string },
  autoResend: boolean,
): PendingSends {
  const current = pending[clientMessageId];
  if (!current) return pending;
  return { ...pending, [clientMessageId]: { ...current, status: 'failed', error, autoResend } };
}

export function removePending(pending: PendingSends, clientMessageId: string): PendingSends {
  if (!(clientMessageId in pending)) return pending;
  const next = { ...pending };
  delete next[clientMessageId];
  return next;
}

/**
 * Stored messages confirm the user's own pending sends, whichever arrives first: the `sendMessage` reply, the
 * live `message` frame, or a `sync` after a reconnect.
 */
export function confirmPending(pending: PendingSends, messages: readonly Message[], meId: number | null): PendingSends {
  let next: Record<string, PendingSend> | null = null;
  for (const message of messages) {
    if (message.senderId !== meId) continue;
    if (!((next ?? pending)[message.clientMessageId])) continue;
    next ??= { ...pending };
    delete next[message.clientMessageId];
  }
  return next ?? pending;
}

/** The pending sends shown in a conversation: addressed to it, or to its direct peer before it existed. */
export function pendingFor(
  pending: PendingSends,
  where: { conversationId?: number; directPeerId?: number },
): PendingSend[] {
  return Object.values(pending)
    .filter((p) =>
      'conversationId' in p.target
        ? p.target.conversationId === where.conversationId
        : p.target.toUserId === where.directPeerId,
    )
    .sort((a, b) => a.createdAt - b.createdAt);
}

/** Sends that lost their connection, oldest first, to resend after a sync. */
export function toResend(pending: PendingSends): PendingSend[] {
  return Object.values(pending)
    .filter((p) => p.status === 'failed' && p.autoResend)
    .sort((a, b) => a.createdAt - b.createdAt);
}

/** The sends to any of these conversations, and the rest: for a conversation the user is no longer in. */
export function splitBySendTarget(
  pending: PendingSends,
  conversationIds: readonly number[],
): { to: PendingSend[]; rest: PendingSends } {
  const to: PendingSend[] = [];
  const rest: Record<string, PendingSend> = {};
  for (const send of Object.values(pending)) {
    if ('conversationId' in send.target && conversationIds.includes(send.target.conversationId)) to.push(send);
    else rest[send.clientMessageId] = send;
  }
  return { to, rest };
}
