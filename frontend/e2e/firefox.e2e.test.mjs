/**
 * Warren in Firefox: a smoke run of the web app in headless Firefox (Debian's firefox-esr over WebDriver, see
 * firefox.mjs) against the real services, with the other person in headless Chromium. Run by scripts/e2e.sh
 * (`make test-e2e`) after the Chromium scenarios, on the same database and AMQP prefix, with a stack of its own
 * (stack.mjs).
 *
 * Someone registers in Firefox, finds a Chromium user with people search and writes to them; their messages turn
 * from pending to sent; the answer from Chromium appears live; after a reload the history is still there; neither
 * page logs an error. Screenshots land in e2e/screenshots/firefox-*.png.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Person, launchBrowser, waitFor } from './browser.mjs';
import { FirefoxPerson } from './firefox.mjs';
import { stackFromEnv } from './stack.mjs';

const stack = stackFromEnv();
// Its own log files (the Chromium scenarios' stack used the same names).
stack.logDir = path.join(stack.logDir, 'firefox');
const tag = randomBytes(3).toString('hex');

/** @type {import('playwright-core').Browser | undefined} */
let chromium;
/** @type {FirefoxPerson | undefined} */ let fox;
/** @type {Person | undefined} */ let ben;
let startup = '';

describe(`Warren in Firefox (${stack.url})`, { timeout: 180_000 }, () => {
  before(async () => {
    const started = Date.now();
    await stack.start();
    const [firefox, other] = await Promise.allSettled([
      FirefoxPerson.open(stack.url, `fox_${tag}`, { logDir: stack.logDir }),
      launchBrowser(),
    ]);
    if (firefox.status === 'fulfilled') fox = firefox.value;
    if (other.status === 'fulfilled') chromium = other.value;
    if (firefox.status === 'rejected') throw firefox.reason;
    if (other.status === 'rejected') throw other.reason;
    ben = await Person.open(other.value, stack.url, `ben_${tag}`);
    startup = `${await firefox.value.version()} and the services started in ${Date.now() - started} ms`;
  });

  after(async () => {
    await fox?.close();
    await ben?.close();
    await chromium?.close().catch(() => {});
    await stack.stop();
  });

  test('registers, finds someone, exchanges messages live and keeps them across a reload', { timeout: 120_000 }, async (t) => {
    const firefox = /** @type {FirefoxPerson} */ (fox);
    const other = /** @type {Person} */ (ben);
    t.diagnostic(startup);
    try {
      await Promise.all([firefox.register(), other.register()]);

      // Firefox finds the Chromium user by name and writes twice; both turn from pending into stored messages.
      await firefox.openDirectWith(other.username);
      const sent = [`Hello from Firefox (${tag})`, `A second one, to keep the order (${tag})`];
      for (const body of sent) await firefox.send(body);
      await firefox.waitForMessages(sent);
      await waitFor(async () => (await firefox.pending()).length === 0, { message: "Firefox's messages to be sent" });
      assert.equal(
        await firefox.driver.executeScript(
          `const box = document.querySelector('textarea.composer__input'); return box.scrollHeight <= box.clientHeight;`,
        ),
        true,
        'the empty one-line message box does not overflow (Firefox would show a scrollbar in it)',
      );

      // Chromium sees them arrive and answers; the answer shows in Firefox without a reload.
      await other.listItem(firefox.username).waitFor();
      await other.openConversation(firefox.username);
      await other.waitForMessages(sent);
      const reply = `Hi Firefox, Chromium here (${tag})`;
      await other.send(reply);
      const all = [...sent, reply];
      await firefox.waitForMessages(all);
      await firefox.screenshot('firefox-conversation');

      const shown = await firefox.messages();
      assert.deepEqual(shown.map((m) => m.body), all, 'Firefox shows the three messages in the order they were sent');
      assert.deepEqual(shown.map((m) => m.seq), [1, 2, 3], 'with their seqs');
      assert.deepEqual(await other.messages(), shown, 'Chromium shows the same messages');

      // A reload keeps the session and the history.
      await firefox.reload();
      await firefox.waitSignedIn();
      await firefox.openConversation(other.username);
      await firefox.waitForMessages(all);
      assert.deepEqual(await firefox.messages(), shown, 'after a reload Firefox shows the same history');
      await firefox.screenshot('firefox-after-reload');

      assert.deepEqual(firefox.errors, [], "Firefox's page logged no errors");
      assert.deepEqual(other.errors, [], "Chromium's page logged no errors");
    } catch (error) {
      await firefox.screenshot('failure-firefox').catch(() => {});
      await other.screenshot('failure-firefox-peer').catch(() => {});
      if (firefox.errors.length) t.diagnostic(`Firefox's page errors:\n${firefox.errors.join('\n')}`);
      if (other.errors.length) t.diagnostic(`Chromium's page errors:\n${other.errors.join('\n')}`);
      t.diagnostic(`service logs:\n${stack.logTails()}`);
      throw error;
    }
  });
});
