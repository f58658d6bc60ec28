import type { Conversation } from '../protocol/generated/Conversation';
import type { ConversationEntry } from '../protocol/generated/ConversationEntry';
import type { Message } from '../protocol/generated/Message';
import type { ReadPosition } from '../protocol/generated/ReadPosition';

/** One conversation in the signed-in user's list. */
export interface ConversationState {
  readonly conversation: Conversation;
  /** The highest seq this user has read. */
  readonly readSeq: number;
  /**
   * `readSeq` is a guess: the conversation came in a `conversation` frame before any entry of it (see
   * `applyConversation`). The server's next word on it (an entry, a read position) replaces it, lower or not.
   */
  readonly readGuessed?: true;
  readonly lastMessage?: Message;
}

export type Conversations = Readonly<Record<number, ConversationState>>;

function newerMessage(a: Message | undefined, b: Message | undefined): Message | undefined {
  if (!a) return b;
  if (!b) return a;
  return b.seq > a.seq ? b : a;
}

function mergeConversation(existing: Conversation | undefined, incoming: Conversation): Conversation {
  if (!existing) return incoming;
  return {
    ...incoming,
    // Membership and title come from the newest snapshot; seq and activity never move backwards.
    lastSeq: Math.max(existing.lastSeq, incoming.lastSeq),
    lastActivityAt: Math.max(existing.lastActivityAt, incoming.lastActivityAt),
  };
}

/** An entry from `sync`, `listConversations` or `getConversation`. */
export function upsertEntry(conversations: Conversations, entry: ConversationEntry): Conversations {
  const id = entry.conversation.id;
  const existing = conversations[id];
  const lastMessage = newerMessage(existing?.lastMessage, entry.lastMessage);
  const next: ConversationState = {
    conversation: mergeConversation(existing?.conversation, entry.conversation),
    readSeq: existing?.readGuessed ? entry.readSeq : Math.max(existing?.readSeq ?? 0, entry.readSeq),
    ...(lastMessage ? { lastMessage } : {}),
  };
  return { ...conversations, [id]: next };
}

/**
 * A `conversation` frame (or a group operation's reply). A conversation the user is no longer a member of
 * leaves the list. An unknown conversation is most likely one the user was just added to (or created): new
 * members start with the history read, so it is added with `readSeq = lastSeq`, as a guess (`readGuessed`): it
 * may also be one the user has been in all along, not listed here yet (the page's first sync has not answered,
 * or the list is longer than one answer), and callers fetch the entry for the true read position.
 */
export function applyConversation(conversations: Conversations, conversation: Conversation, meId: number): Conversations {
  if (!conversation.members.includes(meId)) return removeConversation(conversations, conversation.id);
  const existing = conversations[conversation.id];
  const next: ConversationState = {
    conversation: mergeConversation(existing?.conversation, conversation),
    readSeq: existing?.readSeq ?? conversation.lastSeq,
    ...(!existing || existing.readGuessed ? { readGuessed: true as const } : {}),
    ...(existing?.lastMessage ? { lastMessage: existing.lastMessage } : {}),
  };
  return { ...conversations, [conversation.id]: next };
}

export function removeConversation(conversations: Conversations, id: number): Conversations {
  if (!(id in conversations)) return conversations;
  const next = { ...conversations };
  delete next[id];
  return next;
}

/**
 * A new message moves the conversation's last seq, activity time and preview. The read position moves by
 * `markRead`, a `read` frame, and by sending: the server moves the sender's read position to each message it
 * stores, so a message from `meId` (from any of the user's devices) counts as read. `lastSeq - readSeq` is the
 * unread count, as the server counts it. Unknown conversations are left alone (the caller fetches them).
 */
export function applyMessages(
  conversations: Conversations,
  messages: readonly Message[],
  meId?: number,
): Conversations {
  let next: Record<number, ConversationState> | null = null;
  for (const message of messages) {
    const current = (next ?? conversations)[message.conversationId];
    if (!current) continue;
    const c = current.conversation;
    const lastMessage = newerMessage(current.lastMessage, message);
    const updated: ConversationState = {
      conversation: {
        ...c,
        lastSeq: Math.max(c.lastSeq, message.seq),
        lastActivityAt: Math.max(c.lastActivityAt, message.sentAt),
      },
      readSeq: message.senderId === meId ? Math.max(current.readSeq, message.seq) : current.readSeq,
      // The user's own message at or past the guess is read by the server too: the guess becomes known.
      ...(current.readGuessed && !(message.senderId === meId && message.seq >= current.readSeq)
        ? { readGuessed: true as const }
        : {}),
      ...(lastMessage ? { lastMessage } : {}),
    };
    next ??= { ...conversations };
    next[message.conversationId] = updated;
  }
  return next ?? conversations;
}

/** A read position from `markRead`'s reply or a `read` frame; it never moves backwards, but replaces a guess. */
export function applyRead(conversations: Conversations, position: ReadPosition): Conversations {
  const current = conversations[position.conversationId];
  if (!current || (!current.readGuessed && position.readSeq <= current.readSeq)) return conversations;
  const { readGuessed: _guessed, ...known } = current;
  return { ...conversations, [position.conversationId]: { ...known, readSeq: position.readSeq } };
}

export function unreadCount(state: ConversationState): number {
  return Math.max(0, state.conversation.lastSeq - state.readSeq);
}

/** Most recently active first; ties broken by id (newest first) so the order is stable. */
export function sortConversations(conversations: Conversations): ConversationState[] {
  return Object.values(conversations).sort(
    (a, b) =>
      b.conversation.lastActivityAt - a.conversation.lastActivityAt || b.conversation.id - a.conversation.id,
  );
}

/** The direct conversation between the user and `userId`, if one exists. */
export function findDirect(conversations: Conversations, meId: number, userId: number): ConversationState | undefined {
  return Object.values(conversations).find(({ conversation: c }) => {
    if (c.kind !== 'direct') return false;
    if (userId === meId) return c.members.every((m) => m === meId);
    return c.members.includes(userId) && c.members.includes(meId);
  });
}

/** The other member of a direct conversation (the user themselves for a note-to-self). */
export function directPeer(conversation: Conversation, meId: number): number | undefined {
  return conversation.members.find((m) => m !== meId) ?? conversation.members[0];
}
