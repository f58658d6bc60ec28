import { type FormEvent, type KeyboardEvent, useEffect, useId, useLayoutEffect, useReducer, useRef } from 'react';
import { MAX_MESSAGE_CHARS, isBlankText, messageLength } from '../state/session';

const WARN_AT = MAX_MESSAGE_CHARS - 300;

/** The message box: Enter sends, Shift+Enter starts a new line. */
export function Composer({
  placeholder,
  onSend,
  offline,
  focusKey,
  drafts,
}: {
  placeholder: string;
  onSend: (text: string) => void;
  offline: boolean;
  /** Focus moves here whenever this changes (another conversation was opened); the draft shown is this one's. */
  focusKey: string;
  /**
   * One draft per conversation (by `focusKey`): what was typed to one is never sent to the next one opened, and is
   * still there on coming back. Kept by the chat, not by this box, so a draft outlives the box: the view of a
   * conversation not listed yet (the moment a first message creates it) or a narrow screen's way back to the list
   * unmount it.
   */
  drafts: Map<string, string>;
}) {
  const [, redraw] = useReducer((n: number) => n + 1, 0);
  const text = drafts.get(focusKey) ?? '';
  const setText = (value: string) => {
    if (value) drafts.set(focusKey, value);
    else drafts.delete(focusKey);
    redraw();
  };
  const ref = useRef<HTMLTextAreaElement>(null);
  const hintId = useId();
  const countId = useId();
  // Counted as the server counts, and what is sent: the text as typed (a blank one is not sent).
  const blank = isBlankText(text);
  const length = blank ? 0 : messageLength(text);
  const tooLong = length > MAX_MESSAGE_CHARS;

  useEffect(() => {
    // On a phone, focusing would pop the keyboard over the conversation the user just opened.
    const narrow = typeof window.matchMedia === 'function' && window.matchMedia('(max-width: 759px)').matches;
    if (!narrow) ref.current?.focus();
  }, [focusKey]);

  // Grow with the text up to the CSS max-height. The box is border-box, so its height is the content's
  // (scrollHeight) plus the borders: without them the text overflows by a pixel or two, and Firefox (whose
  // scrollbars take room) shows a scrollbar in the one-line box.
  useLayoutEffect(() => {
    const el = ref.current;
    if (!el) return;
    el.style.height = 'auto';
    if (el.scrollHeight) el.style.height = `${el.scrollHeight + el.offsetHeight - el.clientHeight}px`;
  }, [text]);

  function submit() {
    if (length === 0 || tooLong) return;
    onSend(text);
    setText('');
    ref.current?.focus();
  }

  function onKeyDown(event: KeyboardEvent<HTMLTextAreaElement>) {
    // The Enter that confirms an input method's composition (Japanese, Chinese, Korean…) is not a send. Safari ends
    // the composition before that keydown, so `isComposing` is false there; its keyCode is still 229 ("an input
    // method is processing the key"), as in every browser.
    const composing = event.nativeEvent.isComposing || event.keyCode === 229;
    if (event.key === 'Enter' && !event.shiftKey && !event.altKey && !composing) {
      event.preventDefault();
      submit();
    }
  }

  function onSubmit(event: FormEvent) {
    event.preventDefault();
    submit();
  }

  return (
    <form className="composer" onSubmit={onSubmit} aria-label="Send a message">
      {offline && (
        <p className="composer__offline" id={hintId}>
          You're offline. Messages you send now go out when the connection is back.
        </p>
      )}
      <div className="composer__row">
        <label className="visually-hidden" htmlFor={`${hintId}-input`}>
          Message
        </label>
        <textarea
          ref={ref}
          id={`${hintId}-input`}
          className="composer__input"
          rows={1}
          placeholder={placeholder}
          value={text}
          onChange={(e) => setText(e.target.value)}
          onKeyDown={onKeyDown}
          aria-describedby={[offline ? hintId : '', length > WARN_AT ? countId : ''].filter(Boolean).join(' ') || undefined}
          aria-invalid={tooLong || undefined}
          enterKeyHint="send"
        />
        <button type="submit" className="send-button" disabled={length === 0 || tooLong} aria-label="Send">
          <svg viewBox="0 0 24 24" width="20" height="20" aria-hidden="true">
            <path d="M4 12l16-8-6 16-2.5-6.5z" fill="currentColor" />
          </svg>
        </button>
      </div>
      {length > WARN_AT && (
        <p id={countId} className={`composer__count${tooLong ? ' is-over' : ''}`} aria-live="polite">
          {tooLong
            ? `${length - MAX_MESSAGE_CHARS} characters over the limit`
            : `${MAX_MESSAGE_CHARS - length} characters left`}
        </p>
      )}
      <p className="composer__hint visually-hidden">Enter sends, Shift+Enter adds a new line.</p>
    </form>
  );
}
