import { describe, expect, it } from 'vitest';
import { alice, bob, msg } from '../test/fixtures';
import { type PendingSend, addPending, confirmPending, markFailed, markSending, pendingFor, toResend } from './pending';

const send = (id: string, extra: Partial<PendingSend> = {}): PendingSend => ({
  clientMessageId: id,
  target: { conversationId: 7 },
  body: 'hi',
  createdAt: 1,
  status: 'sending',
  autoResend: false,
  ...extra,
});

describe('pending sends', () => {
  it('a stored message from the user confirms the pending send with its client id, only once', () => {
    let pending = addPending({}, send('u-1'));
    const stored = msg(7, 12, alice.id, 'hi', { clientMessageId: 'u-1' });
    pending = confirmPending(pending, [stored], alice.id);
    expect(pending).toEqual({});
    // The live echo arriving after the reply changes nothing.
    expect(confirmPending(pending, [stored], alice.id)).toBe(pending);
  });

  it("someone else's message with the same client id does not confirm ours", () => {
    const pending = addPending({}, send('u-1'));
    expect(confirmPending(pending, [msg(7, 3, bob.id, 'x', { clientMessageId: 'u-1' })], alice.id)).toBe(pending);
  });

  it('failed → sending keeps the client message id and clears the error', () => {
    let pending = addPending({}, send('u-1'));
    pending = markFailed(pending, 'u-1', { code: 'timeout', message: 'slow' }, false);
    expect(pending['u-1']?.status).toBe('failed');
    pending = markSending(pending, 'u-1');
    expect(pending['u-1']).toMatchObject({ clientMessageId: 'u-1', status: 'sending' });
    expect(pending['u-1']?.error).toBeUndefined();
  });

  it('resends only the sends that lost their connection, oldest first', () => {
    let pending = addPending({}, send('b', { createdAt: 2 }));
    pending = addPending(pending, send('a', { createdAt: 1 }));
    pending = addPending(pending, send('c', { createdAt: 3 }));
    pending = markFailed(pending, 'b', { code: 'disconnected', message: '' }, true);
    pending = markFailed(pending, 'a', { code: 'disconnected', message: '' }, true);
    pending = markFailed(pending, 'c', { code: 'validation', message: 'too long' }, false);
    expect(toResend(pending).map((p) => p.clientMessageId)).toEqual(['a', 'b']);
  });

  it('shows a send addressed to a person in their direct conversation', () => {
    const pending = addPending(addPending({}, send('x', { target: { toUserId: bob.id } })), send('y'));
    expect(pendingFor(pending, { conversationId: 9, directPeerId: bob.id }).map((p) => p.clientMessageId)).toEqual(['x']);
    expect(pendingFor(pending, { conversationId: 7 }).map((p) => p.clientMessageId)).toEqual(['y']);
  });
});
