import { describe, expect, it } from 'vitest';
import { alice, bob, carol, conv, entry, msg } from '../test/fixtures';
import {
  applyConversation,
  applyMessages,
  applyRead,
  findDirect,
  sortConversations,
  unreadCount,
  upsertEntry,
} from './conversations';

describe('conversations', () => {
  it('counts unread as lastSeq - readSeq, live and through read frames', () => {
    let list = upsertEntry({}, entry(conv(7, [alice.id, bob.id], 3), 1));
    expect(unreadCount(list[7]!)).toBe(2);
    list = applyMessages(list, [msg(7, 4, bob.id), msg(7, 5, bob.id)]);
    expect(unreadCount(list[7]!)).toBe(4);
    list = applyRead(list, { conversationId: 7, readSeq: 5 });
    expect(unreadCount(list[7]!)).toBe(0);
    // A stale read position never moves it backwards.
    const same = applyRead(list, { conversationId: 7, readSeq: 2 });
    expect(same).toBe(list);
    expect(unreadCount(same[7]!)).toBe(0);
  });

  it('a duplicated message does not raise the unread count twice', () => {
    let list = upsertEntry({}, entry(conv(7, [alice.id, bob.id], 3), 3));
    list = applyMessages(list, [msg(7, 4, bob.id)]);
    list = applyMessages(list, [msg(7, 4, bob.id)]);
    expect(unreadCount(list[7]!)).toBe(1);
    expect(list[7]!.lastMessage?.seq).toBe(4);
  });

  it('orders by last activity, newest first, and keeps the newest preview', () => {
    let list = upsertEntry({}, entry(conv(1, [alice.id, bob.id], 5), 5, msg(1, 5, bob.id)));
    list = upsertEntry(list, entry(conv(2, [alice.id, carol.id], 9), 9, msg(2, 9, carol.id)));
    expect(sortConversations(list).map((c) => c.conversation.id)).toEqual([2, 1]);
    list = applyMessages(list, [msg(1, 20, bob.id, 'latest')]);
    expect(sortConversations(list).map((c) => c.conversation.id)).toEqual([1, 2]);
    // An older message arriving late does not replace the preview.
    list = applyMessages(list, [msg(1, 6, bob.id, 'old')]);
    expect(list[1]!.lastMessage?.body).toBe('latest');
  });

  it('drops a conversation the user is no longer a member of', () => {
    let list = upsertEntry({}, entry(conv(4, [alice.id, bob.id, carol.id], 0, { kind: 'group', title: 'g' }), 0));
    list = applyConversation(list, conv(4, [bob.id, carol.id], 0, { kind: 'group', title: 'g' }), alice.id);
    expect(list[4]).toBeUndefined();
  });

  it('keeps the read position when a conversation frame updates membership', () => {
    let list = upsertEntry({}, entry(conv(4, [alice.id, bob.id], 8, { kind: 'group' }), 6));
    list = applyConversation(list, conv(4, [alice.id, bob.id, carol.id], 8, { kind: 'group' }), alice.id);
    expect(list[4]!.readSeq).toBe(6);
    expect(list[4]!.conversation.members).toEqual([alice.id, bob.id, carol.id]);
  });

  it("the user's own messages count as read (the server moves the sender's read position)", () => {
    let list = upsertEntry({}, entry(conv(7, [alice.id, bob.id], 3), 1));
    list = applyMessages(list, [msg(7, 4, alice.id)], alice.id);
    expect(list[7]!.readSeq).toBe(4);
    expect(unreadCount(list[7]!)).toBe(0);
    list = applyMessages(list, [msg(7, 5, bob.id)], alice.id);
    expect(unreadCount(list[7]!)).toBe(1);
    // A late own message never moves the read position back.
    list = applyMessages(list, [msg(7, 2, alice.id)], alice.id);
    expect(list[7]!.readSeq).toBe(4);
  });

  it('a group the user was just added to starts with its history read', () => {
    const list = applyConversation({}, conv(4, [alice.id, bob.id, carol.id], 12, { kind: 'group', title: 'g' }), carol.id);
    expect(list[4]!.readSeq).toBe(12);
    expect(unreadCount(list[4]!)).toBe(0);
  });

  it("that guess gives way to the server's read position, lower or not; a known one never moves back", () => {
    const framed = conv(4, [alice.id, bob.id, carol.id], 12, { kind: 'group', title: 'g' });
    // A conversation the user was in all along, framed before any entry of it came.
    let list = applyConversation({}, framed, carol.id);
    list = applyConversation(list, { ...framed, title: 'renamed' }, carol.id);
    list = upsertEntry(list, entry(framed, 7));
    expect(unreadCount(list[4]!)).toBe(5);
    list = upsertEntry(list, entry(framed, 3));
    expect(list[4]!.readSeq).toBe(7);
    // A message before the entry ("welcome!" right after the add) keeps it a guess.
    list = applyMessages(applyConversation({}, framed, carol.id), [msg(4, 13, bob.id)], carol.id);
    list = upsertEntry(list, entry({ ...framed, lastSeq: 13 }, 7));
    expect(unreadCount(list[4]!)).toBe(6);
    // The user's own message past the guess is read on the server too: an entry asked before it cannot lower it.
    list = applyMessages(applyConversation({}, framed, carol.id), [msg(4, 13, carol.id)], carol.id);
    list = upsertEntry(list, entry(framed, 7));
    expect(unreadCount(list[4]!)).toBe(0);
    // An older one of the user's does not make the guess true.
    list = applyMessages(applyConversation({}, framed, carol.id), [msg(4, 3, carol.id)], carol.id);
    list = upsertEntry(list, entry(framed, 7));
    expect(unreadCount(list[4]!)).toBe(5);
    // A read position replaces the guess too.
    list = applyRead(applyConversation({}, framed, carol.id), { conversationId: 4, readSeq: 9 });
    expect(unreadCount(list[4]!)).toBe(3);
    list = applyRead(list, { conversationId: 4, readSeq: 8 });
    expect(list[4]!.readSeq).toBe(9);
  });

  it('finds the direct conversation with a person', () => {
    let list = upsertEntry({}, entry(conv(1, [alice.id, bob.id], 1), 1));
    list = upsertEntry(list, entry(conv(2, [alice.id, bob.id, carol.id], 1, { kind: 'group' }), 1));
    expect(findDirect(list, alice.id, bob.id)?.conversation.id).toBe(1);
    expect(findDirect(list, alice.id, carol.id)).toBeUndefined();
  });
});
