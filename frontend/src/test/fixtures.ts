import type { Conversation } from '../protocol/generated/Conversation';
import type { ConversationEntry } from '../protocol/generated/ConversationEntry';
import type { Message } from '../protocol/generated/Message';
import type { User } from '../protocol/generated/User';

export const alice: User = { id: 1, username: 'alice', createdAt: 1_700_000_000_000 };
export const bob: User = { id: 2, username: 'bob', createdAt: 1_700_000_000_000 };
export const carol: User = { id: 3, username: 'carol', createdAt: 1_700_000_000_000 };

const BASE = Date.UTC(2026, 0, 15, 9, 0, 0);

export function msg(conversationId: number, seq: number, senderId: number, body = `m${seq}`, extra: Partial<Message> = {}): Message {
  return {
    conversationId,
    seq,
    senderId,
    clientMessageId: `c-${conversationId}-${seq}`,
    body,
    sentAt: BASE + seq * 60_000,
    ...extra,
  };
}

export function conv(id: number, members: number[], lastSeq: number, extra: Partial<Conversation> = {}): Conversation {
  return {
    id,
    kind: 'direct',
    members,
    lastSeq,
    lastActivityAt: BASE + lastSeq * 60_000,
    createdAt: BASE,
    ...extra,
  };
}

export function entry(conversation: Conversation, readSeq: number, lastMessage?: Message): ConversationEntry {
  return { conversation, readSeq, ...(lastMessage ? { lastMessage } : {}) };
}
