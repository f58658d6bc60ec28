import { describe, expect, it } from 'vitest';
import { initials } from './Avatar';

describe('initials', () => {
  it('takes whole characters, never half of an emoji', () => {
    expect(initials('🎉 Party')).toBe('🎉P');
    expect(initials('🎉🎈')).toBe('🎉🎈');
    expect(initials('🇫🇷 France')).toBe('🇫🇷F');
    expect(initials('👨‍👩‍👧 family')).toBe('👨‍👩‍👧F');
    expect(initials('e\u0301te')).toBe('E\u0301T');
    expect(initials('book club')).toBe('BC');
    expect(initials('alice')).toBe('AL');
    expect(initials('_x')).toBe('X');
    expect(initials('')).toBe('');
  });
});
