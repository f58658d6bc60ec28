const HUES = [12, 35, 150, 190, 215, 245, 275, 310, 340];

const graphemes: (text: string) => string[] =
  typeof Intl !== 'undefined' && 'Segmenter' in Intl
    ? ((segmenter) => (text: string) => Array.from(segmenter.segment(text), (s) => s.segment))(
        new Intl.Segmenter(undefined, { granularity: 'grapheme' }),
      )
    : (text: string) => Array.from(text);

/**
 * The first letters of the first two words (or the first two of one word), as whole characters as the reader
 * sees them: never half of an emoji, a flag or a letter with its accent.
 */
export function initials(name: string): string {
  const parts = name.split(/[\s._-]+/).filter(Boolean).map(graphemes);
  const letters = parts.length > 1 ? `${parts[0]![0]}${parts[1]![0]}` : (parts[0] ?? []).slice(0, 2).join('');
  return letters.toUpperCase();
}

/** A colored circle with initials; decorative (the name is always next to it). */
export function Avatar({ name, seed, size = 40, group = false }: { name: string; seed: number; size?: number; group?: boolean }) {
  const hue = HUES[Math.abs(seed) % HUES.length];
  return (
    <span
      className={`avatar${group ? ' avatar--group' : ''}`}
      aria-hidden="true"
      style={{ width: size, height: size, fontSize: size * 0.38, ['--avatar-hue' as string]: hue }}
    >
      {initials(name) || '?'}
    </span>
  );
}
