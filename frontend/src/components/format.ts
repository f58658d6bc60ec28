import type { ApiRequestError } from '../api/errors';

const DAY_MS = 24 * 60 * 60 * 1000;

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: 'numeric', minute: '2-digit' });
const weekdayFormat = new Intl.DateTimeFormat(undefined, { weekday: 'long' });
const shortWeekdayFormat = new Intl.DateTimeFormat(undefined, { weekday: 'short' });
const dateFormat = new Intl.DateTimeFormat(undefined, { day: 'numeric', month: 'long', year: 'numeric' });
const shortDateFormat = new Intl.DateTimeFormat(undefined, { day: 'numeric', month: 'short' });
const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'short' });

function startOfDay(ms: number): number {
  const d = new Date(ms);
  d.setHours(0, 0, 0, 0);
  return d.getTime();
}

export function sameDay(a: number, b: number): boolean {
  return startOfDay(a) === startOfDay(b);
}

export function formatTime(ms: number): string {
  return timeFormat.format(ms);
}

export function formatFull(ms: number): string {
  return fullFormat.format(ms);
}

/** "Today", "Yesterday", a weekday within the last week, else the date. */
export function dayLabel(ms: number, now: number = Date.now()): string {
  const days = Math.round((startOfDay(now) - startOfDay(ms)) / DAY_MS);
  if (days === 0) return 'Today';
  if (days === 1) return 'Yesterday';
  if (days > 1 && days < 7) return weekdayFormat.format(ms);
  return dateFormat.format(ms);
}

/** The compact time in the conversation list. */
export function listTime(ms: number, now: number = Date.now()): string {
  const days = Math.round((startOfDay(now) - startOfDay(ms)) / DAY_MS);
  if (days === 0) return formatTime(ms);
  if (days === 1) return 'Yesterday';
  if (days > 1 && days < 7) return shortWeekdayFormat.format(ms);
  return shortDateFormat.format(ms);
}

/** Server messages are lower-case sentences ("username is taken"): show them as sentences. */
export function sentence(text: string): string {
  const t = text.trim();
  if (!t) return t;
  const capital = t[0]!.toUpperCase() + t.slice(1);
  return /[.!?]$/.test(capital) ? capital : `${capital}.`;
}

/**
 * The text for a failed request, by error code: the client's own errors ("no answer to removeMember in time")
 * and the passing ones are not for people; the server's other messages (validation, …) already are.
 */
export function requestErrorText(error: ApiRequestError): string {
  switch (error.code) {
    case 'timeout':
      return 'The server did not answer in time. Try again.';
    case 'disconnected':
      return 'Not connected. Try again when the connection is back.';
    case 'network':
      return "Can't reach Warren. Check your connection and try again.";
    case 'unavailable':
    case 'internal':
      return "Warren can't do that right now. Try again in a moment.";
    case 'rate_limited':
      return 'Too many requests. Wait a moment and try again.';
    default:
      return sentence(error.message);
  }
}

export function plural(n: number, one: string, many: string = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}
