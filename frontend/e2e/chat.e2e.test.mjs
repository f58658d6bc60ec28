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
/** A fourth person, whose two tabs (one browser context) share one outbox of unsent messages. */
/** @type {Person} */ let dan;
/** Tabs opened besides the people's first pages (captured on a failure too). @type {Person[]} */
const tabs = [];
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
      for (const [i, person] of [ann, ben, cat, dan, ...tabs].entries()) {
        if (!person) continue;
        const name = person.isTab ? `${person.username}-tab-${i}` : person.username;
        await person.screenshot(`failure-${name}`).catch(() => {});
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
    for (const person of [ann, ben, cat, dan]) await person?.close();
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

  scenario("a message typed offline in a tab that is then closed is sent by the user's other tab", async () => {
    // Dan has two tabs of the app open in one browser (one context: the same storage, so one outbox of unsent
    // messages, `warren.pending.<userId>`). Each tab's connection can be cut on its own (`Link`). Ben watches.
    dan = await Person.open(browser, stack.url, `dan_${tag}`, { cuttable: true });
    await dan.register();
    await dan.openDirectWith(ben.username);
    const hello = `Hi Ben, Dan here, with two tabs open (${tag})`;
    await dan.send(hello);
    await dan.waitForMessages([hello]);
    await ben.listItem(dan.username).waitFor();
    await ben.openConversation(dan.username);
    await ben.waitForMessages([hello]);
    const bodies = [hello];
    const link = (/** @type {Person} */ p) => /** @type {import('./browser.mjs').Link} */ (p.link);

    /** Ben answers, and both screens settle: each message once, in the same order, nothing pending. */
    const settle = async (/** @type {string} */ answer) => {
      await ben.send(answer);
      bodies.push(answer);
      await Promise.all([dan, ben].map((p) => p.waitForMessages(bodies)));
      await waitFor(async () => (await dan.pending()).length === 0, { message: "Dan's other tab to have nothing pending" });
      await assertSameConversation([dan, ben], bodies);
    };

    // 1. Only the first tab loses its connection; the other tab stays connected all along.
    const first = await dan.openTab({ cuttable: true });
    tabs.push(first);
    await first.openConversation(ben.username);
    await first.waitForMessages([hello]);
    await link(first).cut();
    await first.page.getByText('Reconnecting…').waitFor();
    await dan.waitConnected();
    const typedInFirst = `typed in a tab that had lost its connection (${tag})`;
    await first.send(typedInFirst);
    await waitForQueued(first, typedInFirst);
    await first.screenshot('11-tab-offline');
    await first.close();
    bodies.push(typedInFirst);
    await ben.waitForMessages([typedInFirst]);
    await dan.waitForMessages([typedInFirst]);
    await settle(`Got the one from the tab you closed (${tag})`);

    // 2. The whole browser goes offline (both tabs); a message typed in a new tab, which is closed before the
    //    network comes back, is sent by the tab still open once it reconnects.
    const second = await dan.openTab({ cuttable: true });
    tabs.push(second);
    await second.openConversation(ben.username);
    await second.waitForMessages(bodies);
    await Promise.all([link(dan).cut(), link(second).cut(), dan.context.setOffline(true)]);
    for (const tab of [dan, second]) await tab.page.getByText('Reconnecting…').waitFor();
    const typedOffline = `typed offline in a tab closed before the network came back (${tag})`;
    await second.send(typedOffline);
    await waitForQueued(second, typedOffline);
    // The other tab has taken it up from the shared record and waits to send it too.
    await waitForQueued(dan, typedOffline);
    await second.close();
    link(dan).restore();
    await dan.context.setOffline(false);
    await dan.waitConnected(3 * TIMEOUT_MS);
    bodies.push(typedOffline);
    await ben.waitForMessages([typedOffline]);
    await dan.waitForMessages([typedOffline]);
    await settle(`And the one typed offline (${tag})`);
    await dan.screenshot('12-sent-by-the-other-tab');
    assert.deepEqual(
      [ben, dan].flatMap((p) => p.errors.filter((e) => !/WebSocket|ERR_INTERNET_DISCONNECTED|Failed to load resource/.test(e))),
      [],
      'no page logged an unexpected error',
    );
  });

  scenario('loading older messages keeps the message the reader looks at in place', async (t) => {
    // Ann's conversation with Ben holds some 270 messages. After a reload the app has the newest 200 (what the first
    // sync of a session returns); older ones load as she scrolls up.
    const { page } = ann;
    await page.reload();
    await ann.waitSignedIn();
    await ann.openConversation(ben.username);
    const region = page.getByRole('region', { name: 'Messages' });
    await page.getByRole('button', { name: 'Load earlier messages' }).waitFor();
    await waitFor(async () => (await region.getAttribute('aria-busy')) === 'false', { message: 'the newest messages to be loaded' });
    const oldest = (await ann.messages())[0]?.seq ?? 0;
    assert.ok(oldest > 1, `the view starts after the first message (at ${oldest}): older ones are still to load`);

    // Scroll up a screen at a time, as a reader does, until the older page starts loading — which happens within
    // 400 px of the top; stay short of the very top (at 0 a browser's own scroll anchoring would not act).
    // Each step is checked, done and measured at once in the page, so a step never lands after the page arrived.
    /** @type {{ seq: number, offset: number } | null} */
    let looking = null;
    let steps = 0;
    await waitFor(
      async () => {
        const step = await region.evaluate((el, oldest) => {
          const first = Number(el.querySelector('[data-testid="message"]')?.getAttribute('data-seq'));
          if (el.getAttribute('aria-busy') === 'true' || first < oldest) return { started: true, at: null };
          el.scrollTop = Math.max(200, el.scrollTop - 0.8 * el.clientHeight);
          // The message at the top of the view: the first whose bubble's top edge is on screen (the bubble, not the
          // item: the first message of the list loses its sender's name once older ones come before it).
          const view = el.getBoundingClientRect();
          for (const item of el.querySelectorAll('[data-testid="message"]')) {
            const top = item.querySelector('.msg__bubble')?.getBoundingClientRect().top ?? -Infinity;
            if (top >= view.top) return { started: false, at: { seq: Number(item.getAttribute('data-seq')), offset: top - view.top } };
          }
          return { started: false, at: null };
        }, oldest);
        if (step.started) return true;
        steps += 1;
        looking = step.at;
        return false;
      },
      { interval: 150, message: "the older messages to start loading as Ann scrolls up" },
    );
    const before = /** @type {{ seq: number, offset: number } | null} */ (looking);
    assert.ok(before && steps > 1, `Ann scrolled up (${steps} steps) and was looking at a message: ${JSON.stringify(before)}`);
    await waitFor(
      async () => ((await ann.messages())[0]?.seq ?? oldest) < oldest && (await region.getAttribute('aria-busy')) === 'false',
      { message: 'the older page to be shown' },
    );
    // Two frames, so that anything that still moves the view (scroll corrections, layout) has happened.
    await page.evaluate(() => new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve))));
    const after = await region.evaluate(
      (el, seq) => {
        const item = el.querySelector(`[data-testid="message"][data-seq="${seq}"] .msg__bubble`);
        return item ? item.getBoundingClientRect().top - el.getBoundingClientRect().top : null;
      },
      before.seq,
    );
    assert.ok(after !== null, `message ${before.seq} is still in the list`);
    const moved = after - before.offset;
    t.diagnostic(`message ${before.seq} moved by ${moved.toFixed(1)} px across the load (scrolled up in ${steps} steps)`);
    assert.ok(
      Math.abs(moved) <= 3,
      `message ${before.seq}, at the top of the view, moved by ${moved.toFixed(1)} px when the older page loaded ` +
        `(from ${before.offset.toFixed(1)} to ${after.toFixed(1)} px below the top)`,
    );
    await ann.screenshot('13-older-page-loaded');
  });
});

/** Waits until a person's view shows the message as typed but waiting for the connection (not failed, not sent). */
async function waitForQueued(/** @type {Person} */ person, /** @type {string} */ body) {
  await waitFor(
    async () => {
      const entry = (await person.pending()).find((p) => p.body === body);
      if (!entry) throw new Error(`${person.username} shows no pending ${JSON.stringify(body)}`);
      return entry.state === 'queued' && entry.text.includes('Waiting for connection') ? entry : null;
    },
    { message: `${person.username} to show ${JSON.stringify(body)} waiting for the connection` },
  );
}

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
