import { describe, expect, it } from 'vitest';
import { msg } from '../test/fixtures';
import { applyPage, emptyTimeline, isGap, mergeMessages, newestSeq, setBaseline, trimTimeline, visibleMessages } from './timeline';

const seqs = (t: ReturnType<typeof emptyTimeline>) => visibleMessages(t).map((m) => m.seq);

describe('timeline', () => {
  it('orders messages by seq whatever order they arrive in', () => {
    const t = mergeMessages(emptyTimeline(0), [msg(1, 3, 1), msg(1, 1, 2), msg(1, 2, 1)]);
    expect(seqs(t)).toEqual([1, 2, 3]);
    expect(t.head).toBe(3);
    const later = mergeMessages(t, [msg(1, 5, 1), msg(1, 4, 2)]);
    expect(seqs(later)).toEqual([1, 2, 3, 4, 5]);
  });

  it('keeps one message per seq: a duplicate or late copy never shows twice', () => {
    const first = msg(1, 1, 1, 'hello');
    const t = mergeMessages(emptyTimeline(0), [first]);
    const again = mergeMessages(t, [{ ...first }, msg(1, 1, 1, 'hello')]);
    expect(again).toBe(t); // unchanged: no re-render
    expect(visibleMessages(again)).toHaveLength(1);
    const batch = mergeMessages(emptyTimeline(0), [msg(1, 1, 1), msg(1, 1, 1), msg(1, 2, 1), msg(1, 2, 1)]);
    expect(seqs(batch)).toEqual([1, 2]);
  });

  it('stops the contiguous head at a hole and reveals the gap', () => {
    const t = mergeMessages(emptyTimeline(0), [msg(1, 1, 1), msg(1, 2, 1), msg(1, 4, 1)]);
    expect(t.head).toBe(2);
    expect(newestSeq(t)).toBe(4);
    expect(isGap(t, 4)).toBe(true);
    expect(isGap(t, 3)).toBe(false);
    const filled = mergeMessages(t, [msg(1, 3, 1)]);
    expect(filled.head).toBe(4);
    expect(seqs(filled)).toEqual([1, 2, 3, 4]);
  });

  it('trims to the newest messages up to the head, keeps those past a gap, and pages the rest in again', () => {
    const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => msg(1, from + i, 1));
    const opened = applyPage(emptyTimeline(0), { messages: range(1, 10), hasMoreBefore: false, hasMoreAfter: false }, 'newest');
    const t = mergeMessages(opened, [msg(1, 12, 1)]);
    expect(t.head).toBe(10);

    const trimmed = trimTimeline(t, 3);
    expect(seqs(trimmed)).toEqual([8, 9, 10, 12]);
    expect(trimmed).toMatchObject({ head: 10, lo: 8, hasMoreBefore: true });
    expect(isGap(trimmed, 12)).toBe(true);
    // Already that short, or never opened: the same object, so nothing re-renders.
    expect(trimTimeline(trimmed, 3)).toBe(trimmed);
    expect(trimTimeline(t, 100)).toBe(t);
    const neverOpened = mergeMessages(emptyTimeline(40), [msg(1, 41, 1), msg(1, 42, 1)]);
    expect(trimTimeline(neverOpened, 1)).toBe(neverOpened);
    // Scrolling back pages in what was let go, from the new bottom of the window.
    const back = applyPage(trimmed, { messages: range(5, 7), hasMoreBefore: true, hasMoreAfter: false }, 'before');
    expect(seqs(back)).toEqual([5, 6, 7, 8, 9, 10, 12]);
    expect(back.lo).toBe(5);
  });

  it('drops an older page that no longer reaches the window (it was trimmed while the page was on its way)', () => {
    const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => msg(1, from + i, 1));
    const opened = applyPage(emptyTimeline(0), { messages: range(51, 100), hasMoreBefore: true, hasMoreAfter: false }, 'newest');
    // The page before 51 was asked for; meanwhile the window became 91..100.
    const trimmed = trimTimeline(opened, 10);
    const late = applyPage(trimmed, { messages: range(1, 50), hasMoreBefore: false, hasMoreAfter: false }, 'before');
    expect(late).toBe(trimmed);
    expect(seqs(late)).toEqual(range(91, 100).map((m) => m.seq));
    expect(late.hasMoreBefore).toBe(true);
  });

  it('follows only the tail of a conversation never opened', () => {
    const t = emptyTimeline(40);
    expect(t.lo).toBeNull();
    expect(visibleMessages(t)).toEqual([]);
    expect(setBaseline(t, 50).head).toBe(50);
    // Messages it holds (live ones) are let go up to the new head; later ones are kept.
    const live = mergeMessages(t, [msg(1, 41, 1), msg(1, 42, 1), msg(1, 52, 1)]);
    expect(live.head).toBe(42);
    const rebased = setBaseline(live, 50);
    expect([rebased.head, [...rebased.bySeq.keys()], rebased.lo]).toEqual([50, [52], null]);
    expect(setBaseline(rebased, 51)).toMatchObject({ head: 52 });
    expect(setBaseline(rebased, 49)).toBe(rebased);
    // Once history is shown, the baseline never skips what sync must deliver.
    const held = mergeMessages(emptyTimeline(0), [msg(1, 1, 1)]);
    expect(setBaseline(held, 9)).toBe(held);
  });

  it('loads the newest page, then older pages before the oldest seq shown', () => {
    let t = emptyTimeline(120);
    const newest = Array.from({ length: 50 }, (_, i) => msg(1, 71 + i, 1));
    t = applyPage(t, { messages: newest, hasMoreBefore: true, hasMoreAfter: false }, 'newest');
    expect(t.lo).toBe(71);
    expect(t.head).toBe(120);
    expect(t.hasMoreBefore).toBe(true);
    const older = Array.from({ length: 50 }, (_, i) => msg(1, 21 + i, 1));
    t = applyPage(t, { messages: older, hasMoreBefore: true, hasMoreAfter: true }, 'before');
    expect(t.lo).toBe(21);
    const oldest = Array.from({ length: 20 }, (_, i) => msg(1, 1 + i, 1));
    t = applyPage(t, { messages: oldest, hasMoreBefore: false, hasMoreAfter: true }, 'before');
    expect(t.lo).toBe(1);
    expect(t.hasMoreBefore).toBe(false);
    expect(seqs(t)).toEqual(Array.from({ length: 120 }, (_, i) => i + 1));
  });

  it('an after page extends the head', () => {
    let t = mergeMessages(emptyTimeline(0), [msg(1, 1, 1), msg(1, 2, 1)]);
    t = applyPage(t, { messages: [msg(1, 3, 1), msg(1, 4, 1)], hasMoreBefore: true, hasMoreAfter: false }, 'after');
    expect(t.head).toBe(4);
  });

  it('an empty conversation is fully loaded', () => {
    const t = emptyTimeline(0);
    expect(t.lo).toBe(1);
    expect(t.hasMoreBefore).toBe(false);
    expect(seqs(mergeMessages(t, [msg(1, 1, 2)]))).toEqual([1]);
  });
});
