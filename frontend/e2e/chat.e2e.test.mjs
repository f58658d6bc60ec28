/**
 * Warren end to end: real headless Chromium, three people in three browser contexts, against the real gateway,
 * user-service, message-service, RabbitMQ and PostgreSQL. Run by scripts/e2e.sh (`make test-e2e`), which builds
 * everything, provides a fresh database and AMQP prefix, and cleans up.
 *
 * The scenarios run in order and build on each other (the same people, the same conversations); once one fails,
 * the rest are skipped. Screenshots of the main screens land in e2e/screenshots/ (light and dark).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { Person, SCREENSHOTS, TIMEOUT_MS, launchBrowser, waitFor } from './browser.mjs';
import { stackFromEnv } from './stack.mjs';

const stack = stackFromEnv();
/** Usernames and message bodies carry a tag of this run, so a shared stack's earlier runs never match. */
const tag = randomBytes(3).toString('hex');
/** Messages seeded into the direct conversation, more than `sync` returns (200) and than a page (50). */
const SEEDED = 260;

/** @type {import('playwright-core').Browser} */
let browser;
/** @type {Person} */ let ann;
/** @type {Person} */ let ben;
/** @type {Person} */ let cat;
const group = `Weekend ${tag}`;
let failed = false;

/**
 * A scenario; after a failure the later ones are skipped (they need its state), and every page is captured.
 * @param {string} name
 * @param {(t: import('node:test').TestContext) => Promise<void>} body
 */
function scenario(name, body) {
  test(name, { timeout: 150_000 }, async (t) => {
    if (failed) {
      t.skip('an earlier scenario failed');
      return;
    }
    try {
      await body(t);
    } catch (error) {
      failed = true;
      for (const person of [ann, ben, cat]) {
        if (!person) continue;
        await person.screenshot(`failure-${person.username}`).catch(() => {});
        if (person.errors.length) t.diagnostic(`${person.username}'s page errors:\n${person.errors.join('\n')}`);
      }
      t.diagnostic(`service logs:\n${stack.logTails()}`);
      throw error;
    }
  });
}

/** Both screens show exactly these bodies among their messages, each once, and both in the same order. */
async function assertSameConversation(/** @type {Person[]} */ people, /** @type {string[]} */ bodies) {
  const views = await Promise.all(people.map((p) => p.messages()));
  for (const [i, view] of views.entries()) {
    const who = people[i]?.username;
    for (const body of bodies) {
      const count = view.filter((m) => m.body === body).length;
      assert.equal(count, 1, `${who} shows ${JSON.stringify(body)} ${count} times`);
    }
    const seqs = view.map((m) => m.seq);
    for (let k = 1; k < seqs.length; k++) {
      assert.equal(seqs[k], (seqs[k - 1] ?? 0) + 1, `${who}'s messages are in seq order without gaps: ${seqs.join(',')}`);
    }
    assert.equal((await people[i]?.pending())?.length, 0, `${who} has no message still pending`);
  }
  const [first, ...others] = views;
  for (const [i, view] of others.entries()) {
    // Compare the part both hold (one may have loaded more history than the other).
    const lo = Math.max(first?.[0]?.seq ?? 0, view[0]?.seq ?? 0);
    const a = first?.filter((m) => m.seq >= lo);
    const b = view.filter((m) => m.seq >= lo);
    assert.deepEqual(b, a, `${people[i + 1]?.username} and ${people[0]?.username} show the same messages in the same order`);
  }
}

describe(`Warren in the browser (${stack.url})`, { timeout: 600_000 }, () => {
  before(async () => {
    rmSync(SCREENSHOTS, { recursive: true, force: true });
    await stack.start();
    browser = await launchBrowser();
    ann = await Person.open(browser, stack.url, `ann_${tag}`);
    ben = await Person.open(browser, stack.url, `ben_${tag}`);
    cat = await Person.open(browser, stack.url, `cat_${tag}`);
  });

  after(async () => {
    for (const person of [ann, ben, cat]) await person?.close();
    await browser?.close().catch(() => {});
    await stack.stop();
  });

  scenario('two people register, find each other and exchange messages live', async () => {
    await ann.page.goto(stack.url);
    await ann.page.getByRole('heading', { name: 'Welcome back' }).waitFor();
    await ann.screenshot('01-login');
    await ann.screenshot('01-login-dark', 'dark');

    await Promise.all([ann.register(), ben.register()]);
    await ann.screenshot('02-empty-list');

    // Ann finds Ben by name and writes first: the conversation is created by that message.
    await ann.openDirectWith(ben.username);
    const hello = `Hi Ben, it's Ann (${tag})`;
    await ann.send(hello);
    await ann.waitForMessages([hello]);
    await ann.listItem(ben.username).waitFor();
    assert.equal(await ann.unread(ben.username), 0, 'what Ann sends, Ann has read');

    // Ben sees the new conversation arrive, unread, without reloading; opening it reads it.
    await ben.listItem(ann.username).waitFor();
    await waitFor(async () => (await ben.unread(ann.username)) === 1, { message: "Ben's unread badge to show 1" });
    await ben.screenshot('03-conversation-list');
    await ben.openConversation(ann.username);
    await ben.waitForMessages([hello]);
    await waitFor(async () => (await ben.unread(ann.username)) === 0, { message: "Ben's unread badge to clear" });

    const reply = `Hello Ann! Ben here (${tag})`;
    await ben.send(reply);
    await ann.waitForMessages([hello, reply]);
    await ben.waitForMessages([hello, reply]);
    await assertSameConversation([ann, ben], [hello, reply]);
    await ann.screenshot('04-conversation');
    await ann.screenshot('04-conversation-dark', 'dark');
  });

  scenario('a third person joins a group and messages reach all three', async () => {
    await cat.register();

    // Ann creates the group with Ben (picked by search in the dialog).
    await ann.page.getByRole('button', { name: 'New group' }).click();
    const dialog = ann.page.getByRole('dialog', { name: 'New group' });
    await dialog.getByLabel('Group name').fill(group);
    await dialog.getByRole('searchbox', { name: 'Add members' }).fill(ben.username);
    await dialog.getByRole('list', { name: 'People' }).getByRole('button', { name: new RegExp(`^${ben.username}\\b`) }).click();
    await dialog.getByRole('list', { name: 'Selected members' }).getByText(ben.username).waitFor();
    await dialog.getByRole('button', { name: 'Create group' }).click();
    await dialog.waitFor({ state: 'detached' });
    await ann.conversationTitle(group).waitFor();

    const beforeCat = `Who's in for Saturday? (${tag})`;
    await ann.send(beforeCat);
    await ann.waitForMessages([beforeCat]);

    // Then adds Cat through the members dialog.
    await ann.page.getByRole('button', { name: 'Members' }).click();
    const members = ann.page.getByRole('dialog', { name: `Members of ${group}` });
    await members.getByRole('searchbox', { name: 'Add people' }).fill(cat.username);
    await members.getByRole('list', { name: 'People' }).getByRole('button', { name: new RegExp(`^${cat.username}\\b`) }).click();
    await members.getByRole('list', { name: 'Members' }).locator('.member__name', { hasText: cat.username }).waitFor();
    await ann.screenshot('05-group-members');
    await members.getByRole('button', { name: 'Close' }).click();
    await members.waitFor({ state: 'detached' });
    await ann.page.getByText('3 members').waitFor();

    // Ben and Cat see the group appear live; Cat joined after the first message and starts with it read.
    await ben.listItem(group).waitFor();
    await cat.listItem(group).waitFor();
    assert.equal(await cat.unread(group), 0, 'a new member starts with the history read');
    await ben.openConversation(group);
    await cat.openConversation(group);
    await ben.waitForMessages([beforeCat]);
    await cat.waitForMessages([beforeCat]);

    const fromBen = `Count me in (${tag})`;
    const fromCat = `Me too, thanks for adding me (${tag})`;
    const fromAnn = `Great, see you all there (${tag})`;
    await ben.send(fromBen);
    await cat.waitForMessages([fromBen]);
    await cat.send(fromCat);
    await ann.waitForMessages([fromBen, fromCat]);
    await ann.send(fromAnn);
    const all = [beforeCat, fromBen, fromCat, fromAnn];
    await Promise.all([ann, ben, cat].map((p) => p.waitForMessages(all)));
    await assertSameConversation([ann, ben, cat], all);
    await cat.screenshot('06-group');
    await cat.screenshot('06-group-dark', 'dark');
  });

  scenario('a reload keeps the whole history, and scrolling back pages through it', async () => {
    // A long history in the direct conversation, sent by Ben through the protocol itself (typing 260 messages
    // would take minutes): more than sync returns for a conversation new to the client, and several pages.
    await ben.openConversation(ann.username);
    const seeded = await ben.page.evaluate(seedMessages, { peer: ann.username, count: SEEDED, tag });
    assert.equal(seeded.length, SEEDED);
    const lastSeeded = /** @type {string} */ (seeded[seeded.length - 1]);
    await ben.waitForMessages([lastSeeded], 2 * TIMEOUT_MS);
    await ann.openConversation(ben.username);
    await ann.waitForMessages([lastSeeded], 2 * TIMEOUT_MS);

    await ann.page.reload();
    await ann.waitSignedIn();
    // Both conversations are still listed after the reload.
    await ann.listItem(group).waitFor();
    await ann.openConversation(ben.username);
    await ann.waitForMessages([lastSeeded]);
    await ann.scrollToBeginning();
    const history = await ann.messages();
    const total = SEEDED + 2;
    assert.deepEqual(
      history.map((m) => m.seq),
      Array.from({ length: total }, (_, i) => i + 1),
      'after scrolling back, every message of the conversation is shown once, in seq order',
    );
    assert.deepEqual(history.slice(2).map((m) => m.body), seeded, 'the seeded messages, in the order they were sent');
    assert.match(history[0]?.body ?? '', /Hi Ben, it's Ann/);
    await ann.screenshot('07-history-start');

    // Ben's screen (open all along) agrees message for message.
    await ben.scrollToBeginning();
    await assertSameConversation([ann, ben], seeded);
  });

  scenario('killing the gateway mid-conversation loses and doubles nothing', async (t) => {
    if (!stack.canRestartGateway) {
      t.skip('the stack was not started by the tests (WARREN_E2E_BIN_DIR unset): cannot kill the gateway');
      return;
    }
    // Back at the bottom of the conversation on both screens.
    for (const person of [ann, ben]) {
      await person.openConversation(group);
      await person.openConversation(person === ann ? ben.username : ann.username);
    }
    const sent = [];
    const say = async (/** @type {Person} */ who, /** @type {string} */ what) => {
      const body = `${what} (${who.username})`;
      sent.push(body);
      await who.send(body);
    };

    await say(ann, 'before the crash 1');
    await say(ben, 'before the crash 2');
    await Promise.all([ann, ben].map((p) => p.waitForMessages(sent)));

    // Two sends that may still be on their way when the gateway dies.
    await say(ann, 'racing the crash 1');
    await say(ben, 'racing the crash 2');
    await stack.killGateway();

    for (const person of [ann, ben]) {
      await person.page.getByText('Reconnecting…').waitFor();
    }
    await ann.screenshot('08-reconnecting');
    await ben.screenshot('08-reconnecting-dark', 'dark');

    // Written while the gateway is down: shown at once as waiting to be sent.
    await say(ann, 'while down 1');
    await say(ben, 'while down 2');
    await say(ann, 'while down 3');
    for (const [person, bodies] of /** @type {const} */ ([
      [ann, ['while down 1', 'while down 3']],
      [ben, ['while down 2']],
    ])) {
      const pending = await person.pending();
      for (const what of bodies) {
        const entry = pending.find((p) => p.body.startsWith(what));
        assert.ok(entry, `${person.username} shows "${what}" as pending: ${JSON.stringify(pending)}`);
        assert.notEqual(entry.state, 'failed', `"${what}" waits for the connection rather than failing`);
      }
    }
    await ann.screenshot('09-pending-while-down');

    await stack.startGateway();
    // Reconnected (the banner goes), synced, and the waiting messages sent: nothing pending on either screen.
    for (const person of [ann, ben]) {
      await person.waitConnected(3 * TIMEOUT_MS);
      await waitFor(async () => (await person.pending()).length === 0, {
        timeout: 2 * TIMEOUT_MS,
        message: `${person.username}'s pending messages to be sent`,
      });
      await person.waitForMessages(sent);
    }
    await say(ann, 'after the restart 1');
    await say(ben, 'after the restart 2');
    await Promise.all([ann, ben].map((p) => p.waitForMessages(sent)));
    await assertSameConversation([ann, ben], sent);
    await ann.screenshot('10-after-restart');
    for (const person of [ann, ben, cat]) {
      assert.deepEqual(
        person.errors.filter((e) => !/WebSocket|ERR_CONNECTION_REFUSED|Failed to load resource/.test(e)),
        [],
        `${person.username}'s page logged no unexpected errors`,
      );
    }
  });

  scenario('a gateway that stops answering is noticed by the keep-alive ping, and nothing is lost', async (t) => {
    if (!stack.canRestartGateway) {
      t.skip('the stack was not started by the tests (WARREN_E2E_BIN_DIR unset): cannot freeze the gateway');
      return;
    }
    // SIGSTOP: no close reaches the browsers; only the app's own ping (every 15 s, answered within 10 s) can tell.
    const frozenAt = Date.now();
    stack.freezeGateway();
    await Promise.all(
      [ann, ben].map((p) => p.page.getByText('Reconnecting…').waitFor({ timeout: 25_000 + TIMEOUT_MS })),
    );
    t.diagnostic(`both apps noticed the frozen gateway after ${Date.now() - frozenAt} ms`);
    const whileFrozen = `written to a frozen gateway (${ann.username})`;
    const afterwards = `after the freeze (${ben.username})`;
    await ann.send(whileFrozen);
    await stack.thawGateway();
    for (const person of [ann, ben]) await person.waitConnected(3 * TIMEOUT_MS);
    await ben.send(afterwards);
    const bodies = [whileFrozen, afterwards];
    await Promise.all([ann, ben].map((p) => p.waitForMessages(bodies)));
    await Promise.all(
      [ann, ben].map((p) =>
        waitFor(async () => (await p.pending()).length === 0, { message: `${p.username}'s pending messages to go` }),
      ),
    );
    await assertSameConversation([ann, ben], bodies);
  });
});

/**
 * Runs in Ben's page: opens a second WebSocket with Ben's stored token (a second device, as far as the gateway can
 * tell) and sends `count` messages to the direct conversation with `peer`, one after the other so that their
 * numbers follow their seqs, each with its own client message id. Returns the bodies in seq order.
 * @param {{ peer: string, count: number, tag: string }} args
 */
async function seedMessages({ peer, count, tag }) {
  const auth = JSON.parse(localStorage.getItem('warren.auth') ?? 'null');
  if (!auth?.token) throw new Error('not signed in');
  const ws = new WebSocket(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`);
  /** @type {Map<string, (frame: any) => void>} */
  const waiting = new Map();
  /** @type {(frame: any) => void} */
  let onReady = () => {};
  const ready = new Promise((resolve) => (onReady = resolve));
  ws.onmessage = (event) => {
    const frame = JSON.parse(event.data);
    if (frame.type === 'ready') onReady(frame);
    else if ((frame.type === 'reply' || frame.type === 'error') && waiting.has(frame.id)) {
      waiting.get(frame.id)?.(frame);
      waiting.delete(frame.id);
    }
  };
  await new Promise((resolve, reject) => {
    ws.onopen = resolve;
    ws.onerror = reject;
  });
  ws.send(JSON.stringify({ type: 'auth', token: auth.token }));
  await ready;
  let n = 0;
  /** @param {Record<string, unknown>} frame */
  const call = (frame) =>
    new Promise((resolve) => {
      const id = `seed-${++n}`;
      waiting.set(id, resolve);
      ws.send(JSON.stringify({ ...frame, id }));
    });
  const users = /** @type {any} */ (await call({ type: 'getUsers', prefix: peer, limit: 5 }));
  const peerId = users.result.data.users.find((/** @type {any} */ u) => u.username === peer)?.id;
  if (!peerId) throw new Error(`no user ${peer}`);
  /** @type {{ seq: number, body: string }[]} */
  const stored = [];
  let next = 0;
  const worker = async () => {
    while (next < count) {
      const i = ++next;
      const body = `history ${String(i).padStart(3, '0')} (${tag})`;
      for (let attempt = 0; ; attempt++) {
        const frame = /** @type {any} */ (
          await call({ type: 'sendMessage', toUserId: peerId, clientMessageId: `seed-${tag}-${i}`, body })
        );
        if (frame.type === 'reply') {
          stored.push({ seq: frame.result.data.seq, body });
          break;
        }
        if (attempt >= 5) throw new Error(`seeding message ${i} failed: ${JSON.stringify(frame.error)}`);
        await new Promise((r) => setTimeout(r, 200 * (attempt + 1)));
      }
    }
  };
  await worker();
  ws.close(1000, 'seeded');
  return stored.sort((a, b) => a.seq - b.seq).map((m) => m.body);
}
