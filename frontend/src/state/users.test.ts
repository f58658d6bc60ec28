import { describe, expect, it } from 'vitest';
import { alice } from '../test/fixtures';
import { lookupWindows, missingIds } from './users';

describe('user lookup windows', () => {
  it('covers every id with getUsers after/limit windows no wider than the page', () => {
    expect(lookupWindows([5, 3, 4])).toEqual([{ after: 2, limit: 3 }]);
    expect(lookupWindows([1, 150, 151, 400], 100)).toEqual([
      { after: 0, limit: 1 },
      { after: 149, limit: 2 },
      { after: 399, limit: 1 },
    ]);
    expect(lookupWindows([])).toEqual([]);
  });

  it('asks only for users not cached', () => {
    expect(missingIds({ [alice.id]: alice }, [alice.id, 9, 9, 4])).toEqual([4, 9]);
  });
});
