import type { Message } from '../protocol/generated/Message';
import type { MessagesPage } from '../protocol/generated/MessagesPage';

/**
 * What the client holds of one conversation's history. Messages are keyed by `seq`, so a late or duplicated
 * event can never show twice or out of order.
 *
 * - `head`: the contiguous top: the client holds (or, for a conversation never opened, deliberately skipped)
 *   every message up to `head`. It is what `sync` sends, and a message with `seq > head + 1` reveals a gap.
 * - `lo`: the bottom of the window that is shown: every message from `lo` upwards is displayed, in seq order.
 *   `null` until the newest page has been loaded (the conversation was never opened).
 */
export interface Timeline {
  readonly bySeq: ReadonlyMap<number, Message>;
  readonly head: number;
  readonly lo: number | null;
  readonly hasMoreBefore: boolean;
}

/**
 * A timeline that starts after `head`. A conversation with no messages (`head` 0) is fully known, so its window
 * is open from the start; otherwise the newest page is loaded when the conversation is opened.
 */
export function emptyTimeline(head = 0): Timeline {
  return { bySeq: new Map(), head, lo: head === 0 ? 1 : null, hasMoreBefore: head > 0 };
}

function advance(bySeq: ReadonlyMap<number, Message>, head: number): number {
  let next = head;
  while (bySeq.has(next + 1)) next += 1;
  return next;
}

/**
 * Adds messages, ignoring any seq already held (seqs are immutable: the same seq is the same message). Returns
 * the same object when nothing changed, so subscribers do not re-render.
 */
export function mergeMessages(timeline: Timeline, messages: readonly Message[]): Timeline {
  let bySeq: Map<number, Message> | null = null;
  for (const message of messages) {
    if (timeline.bySeq.has(message.seq) || bySeq?.has(message.seq)) continue;
    if (!Number.isInteger(message.seq) || message.seq < 1) continue;
    bySeq ??= new Map(timeline.bySeq);
    bySeq.set(message.seq, message);
  }
  if (!bySeq) return timeline;
  return { ...timeline, bySeq, head: advance(bySeq, timeline.head) };
}

/**
 * A conversation whose history was never loaded only needs to follow its tail: take the server's `lastSeq` as
 * the head, so neither `sync` nor a catch-up fetches a backlog nobody looked at (the newest page is loaded on
 * opening). What it holds up to `lastSeq` (live messages, a sync's) is let go, since nothing shows it; later
 * messages are kept. An opened conversation is left as it is. Not to be applied while the conversation's newest
 * page is loading: that page, asked earlier, may end before `lastSeq`, and the messages between would be lost
 * from view.
 */
export function setBaseline(timeline: Timeline, lastSeq: number): Timeline {
  if (timeline.lo !== null || lastSeq <= timeline.head) return timeline;
  const bySeq =
    timeline.bySeq.size > 0 ? new Map([...timeline.bySeq].filter(([seq]) => seq > lastSeq)) : timeline.bySeq;
  return { ...timeline, bySeq, head: advance(bySeq, lastSeq), hasMoreBefore: true };
}

/**
 * Lets go of all but the newest `keep` messages up to the head (messages past a gap stay): the window then starts
 * `keep` below the head, and what was let go is paged in again if the user scrolls back to it. For conversations
 * that are not shown, so that a tab left open for hours in busy conversations neither holds everything they said
 * nor copies it all with every new message. A timeline never opened, or no longer than that, is returned as it is.
 */
export function trimTimeline(timeline: Timeline, keep: number): Timeline {
  if (timeline.lo === null) return timeline;
  const lo = Math.max(timeline.lo, timeline.head - Math.max(keep, 1) + 1);
  if (lo === timeline.lo) return timeline;
  const bySeq = new Map([...timeline.bySeq].filter(([seq]) => seq >= lo));
  return { ...timeline, bySeq, lo, hasMoreBefore: true };
}

export type PageKind = 'newest' | 'before' | 'after';

/** Applies a `getMessages` page; `kind` says which cursor asked for it. */
export function applyPage(timeline: Timeline, page: MessagesPage, kind: PageKind): Timeline {
  const merged = mergeMessages(timeline, page.messages);
  const first = page.messages[0];
  const last = page.messages[page.messages.length - 1];
  switch (kind) {
    case 'newest': {
      // The newest page is contiguous up to the conversation's newest message: the window starts at its first
      // message and everything up to its last is held.
      const head = advance(merged.bySeq, Math.max(merged.head, last?.seq ?? 0));
      const lo = first ? Math.min(first.seq, merged.lo ?? first.seq) : (merged.lo ?? head + 1);
      return { ...merged, head, lo, hasMoreBefore: first ? page.hasMoreBefore && first.seq > 1 : false };
    }
    case 'before': {
      // A page that no longer ends where the window starts (the window was trimmed while the page was on its
      // way) would leave a hole in what is shown: it is dropped, and scrolling back asks again from the window.
      if (last && timeline.lo !== null && last.seq + 1 < timeline.lo) return timeline;
      if (!first) return { ...merged, hasMoreBefore: false };
      const lo = Math.min(first.seq, merged.lo ?? first.seq);
      return { ...merged, lo, hasMoreBefore: page.hasMoreBefore && lo > 1 };
    }
    case 'after':
      return merged;
  }
}

/** A message with this seq would leave a hole after the contiguous head. */
export function isGap(timeline: Timeline, seq: number): boolean {
  return seq > timeline.head + 1;
}

/** The messages to show, ascending by seq (messages past a gap show in their place while the gap is filled). */
export function visibleMessages(timeline: Timeline): Message[] {
  const lo = timeline.lo;
  if (lo === null) return [];
  const out: Message[] = [];
  for (const message of timeline.bySeq.values()) if (message.seq >= lo) out.push(message);
  return out.sort((a, b) => a.seq - b.seq);
}

export function newestSeq(timeline: Timeline): number {
  let max = timeline.head;
  for (const seq of timeline.bySeq.keys()) if (seq > max) max = seq;
  return max;
}
