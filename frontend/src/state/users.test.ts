import { describe, expect, it } from 'vitest';
import { alice } from '../test/fixtures';
import { idBatches, missingIds } from './users';

describe('user lookups by id', () => {
  it('batches ids for getUsers { ids }, at most 100 a request', () => {
    expect(idBatches([5, 3, 4, 3])).toEqual([[3, 4, 5]]);
    const many = Array.from({ length: 250 }, (_, i) => 250 - i);
    const batches = idBatches(many);
    expect(batches.map((b) => b.length)).toEqual([100, 100, 50]);
    expect(batches[0]![0]).toBe(1);
    expect(batches[2]![49]).toBe(250);
    expect(idBatches([])).toEqual([]);
  });

  it('asks only for users not cached', () => {
    expect(missingIds({ [alice.id]: alice }, [alice.id, 9, 9, 4])).toEqual([4, 9]);
  });
});
