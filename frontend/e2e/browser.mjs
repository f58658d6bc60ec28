/**
 * Headless Chromium (Debian's, driven by playwright-core) and the user's actions in the web app, written the way a
 * person sees the page: roles, labels and visible text. Every wait is a wait for a condition, bounded by
 * TIMEOUT_MS (generous: the stack runs debug builds on a small, busy machine).
 */
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { chromium } from 'playwright-core';

export const TIMEOUT_MS = Number(process.env.WARREN_E2E_TIMEOUT_MS ?? 20_000);
export const CHROMIUM = process.env.WARREN_E2E_CHROMIUM ?? '/usr/bin/chromium';
export const SCREENSHOTS = path.resolve(import.meta.dirname ?? path.dirname(new URL(import.meta.url).pathname), 'screenshots');

const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  // Background tabs keep their timers: three contexts share one headless browser.
  '--disable-background-timer-throttling',
  '--disable-renderer-backgrounding',
  '--disable-backgrounding-occluded-windows',
];

export async function launchBrowser() {
  return chromium.launch({ executablePath: CHROMIUM, args: ARGS, timeout: 60_000 });
}

/**
 * Polls `check` until it returns a truthy value (which is returned) or the time is up. `check` may throw while
 * the condition does not hold yet; the last error or value is reported.
 * @template T
 * @param {() => Promise<T> | T} check
 * @param {{ timeout?: number, interval?: number, message?: string }} [options]
 * @returns {Promise<NonNullable<T>>}
 */
export async function waitFor(check, { timeout = TIMEOUT_MS, interval = 100, message = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  /** @type {unknown} */
  let last;
  for (;;) {
    try {
      const value = await check();
      if (value) return /** @type {NonNullable<T>} */ (value);
      last = value;
    } catch (error) {
      last = error;
    }
    if (Date.now() >= deadline) {
      const detail = last instanceof Error ? last.message : JSON.stringify(last);
      throw new Error(`timed out after ${timeout} ms waiting for ${message} (last: ${detail?.slice(0, 2_000)})`);
    }
    await sleep(interval);
  }
}

/** One person in their own browser context (own storage, own socket). */
export class Person {
  /**
   * @param {import('playwright-core').Browser} browser
   * @param {string} baseUrl
   * @param {string} username
   * @param {{ colorScheme?: 'light' | 'dark', cuttable?: boolean }} [options] `cuttable`: the page's connection to
   *   the gateway goes through a `Link` the test can cut (`person.link`)
   */
  static async open(browser, baseUrl, username, options = {}) {
    const context = await browser.newContext({
      viewport: { width: 1120, height: 760 },
      colorScheme: options.colorScheme ?? 'light',
      reducedMotion: 'reduce',
    });
    context.setDefaultTimeout(TIMEOUT_MS);
    const page = await context.newPage();
    const person = new Person(context, page, baseUrl, username);
    person.watchErrors();
    if (options.cuttable) person.link = await Link.install(page);
    return person;
  }

  /**
   * @param {import('playwright-core').BrowserContext} context
   * @param {import('playwright-core').Page} page
   * @param {string} baseUrl
   * @param {string} username
   */
  constructor(context, page, baseUrl, username) {
    this.context = context;
    this.page = page;
    this.baseUrl = baseUrl;
    this.username = username;
    this.password = `pw-${username}-secret`;
    /** @type {string[]} */
    this.errors = [];
    /** @type {Link | null} Set when the page was opened `cuttable`. */
    this.link = null;
    /** Another tab of a person's browser (`openTab`): closing it closes only its page. */
    this.isTab = false;
  }

  watchErrors() {
    this.page.on('pageerror', (error) => this.errors.push(`pageerror: ${error.message}`));
    this.page.on('console', (msg) => {
      if (msg.type() === 'error') this.errors.push(`console: ${msg.text()}`);
    });
  }

  /**
   * Opens the app in another tab of this person's browser: a new page in the same context, so the same storage
   * (signed in as the same user, sharing the record of unsent messages), with a socket of its own. With
   * `cuttable`, its connection goes through a `Link` (`tab.link`).
   */
  async openTab({ cuttable = false } = {}) {
    const page = await this.context.newPage();
    const tab = new Person(this.context, page, this.baseUrl, this.username);
    tab.isTab = true;
    tab.watchErrors();
    if (cuttable) tab.link = await Link.install(page);
    await page.goto(this.baseUrl);
    await tab.waitSignedIn();
    return tab;
  }

  async register() {
    const { page } = this;
    await page.goto(this.baseUrl);
    await page.getByRole('heading', { name: 'Welcome back' }).waitFor();
    await page.getByRole('button', { name: 'Create an account' }).click();
    await page.getByRole('heading', { name: 'Create your account' }).waitFor();
    await page.getByLabel('Username').fill(this.username);
    await page.getByLabel('Password', { exact: true }).fill(this.password);
    await page.getByRole('button', { name: 'Create account' }).click();
    await this.waitSignedIn();
  }

  async waitSignedIn() {
    await this.page.locator('.me__name', { hasText: this.username }).waitFor();
    await this.waitConnected();
  }

  /** The socket is open and the first sync is done (the list shows conversations or says there are none). */
  async waitConnected(timeout = TIMEOUT_MS) {
    await waitFor(
      async () =>
        (await this.page.locator('.banner').count()) === 0 &&
        (await this.page.getByText('Loading conversations…').count()) === 0,
      { timeout, message: `${this.username}'s app to be connected and synced` },
    );
  }

  /** Finds someone with "Find people" and opens the conversation with them (a draft if there is none yet). */
  async openDirectWith(/** @type {string} */ username) {
    const { page } = this;
    const search = page.getByRole('searchbox', { name: 'Find people' });
    await search.fill(username);
    const result = page.getByRole('list', { name: 'People' }).getByRole('button', { name: new RegExp(`^${escape(username)}\\b`) });
    await result.click();
    await this.conversationTitle(username).waitFor();
  }

  /** The heading of the open conversation. */
  conversationTitle(/** @type {string} */ title) {
    return this.page.getByRole('heading', { name: title, exact: true, level: 2 });
  }

  /** The item for a conversation in the list. */
  listItem(/** @type {string} */ title) {
    return this.page
      .getByRole('navigation', { name: 'Conversations' })
      .locator('.conversation-item', { has: this.page.locator('.conversation-item__title', { hasText: new RegExp(`^${escape(title)}$`) }) });
  }

  async openConversation(/** @type {string} */ title) {
    await this.listItem(title).click();
    await this.conversationTitle(title).waitFor();
  }

  /** Types a message and presses Enter. */
  async send(/** @type {string} */ text) {
    const box = this.page.getByRole('textbox', { name: 'Message' });
    await box.fill(text);
    await box.press('Enter');
  }

  /** The stored messages on screen, in display order. */
  async messages() {
    return this.page.locator('[data-testid="message"]').evaluateAll((items) =>
      items.map((item) => ({
        seq: Number(item.getAttribute('data-seq')),
        body: item.querySelector('.msg__body')?.textContent ?? '',
      })),
    );
  }

  /** The messages still waiting for the server (sending, queued or failed), in display order. */
  async pending() {
    return this.page.locator('[data-testid="pending-message"]').evaluateAll((items) =>
      items.map((item) => ({
        body: item.querySelector('.msg__body')?.textContent ?? '',
        state: item.classList.contains('msg--failed') ? 'failed' : item.classList.contains('msg--queued') ? 'queued' : 'sending',
        text: item.textContent ?? '',
      })),
    );
  }

  /** Waits until every body is on screen as a stored message (not pending). */
  async waitForMessages(/** @type {string[]} */ bodies, timeout = TIMEOUT_MS) {
    await waitFor(
      async () => {
        const shown = new Set((await this.messages()).map((m) => m.body));
        const missing = bodies.filter((b) => !shown.has(b));
        if (missing.length) throw new Error(`${this.username} does not show ${JSON.stringify(missing.slice(0, 5))}`);
        return true;
      },
      { timeout, message: `${this.username} to show ${bodies.length} message(s)` },
    );
  }

  /** The unread count on a conversation's list item (0 without a badge). */
  async unread(/** @type {string} */ title) {
    const badge = this.listItem(title).locator('[data-testid="unread-badge"] [aria-hidden="true"]');
    if ((await badge.count()) === 0) return 0;
    return Number(await badge.textContent());
  }

  /** Scrolls the open conversation to its very beginning, a page at a time, as a reader scrolling up would. */
  async scrollToBeginning(timeout = 3 * TIMEOUT_MS) {
    const { page } = this;
    const region = page.getByRole('region', { name: 'Messages' });
    await waitFor(
      async () => {
        if (await page.getByText('This is the beginning of the conversation.').isVisible()) return true;
        const before = (await this.messages())[0]?.seq;
        await region.evaluate((el) => {
          el.scrollTop = 0;
        });
        // Wait for the page before to arrive (or the beginning to show) before scrolling again.
        await waitFor(
          async () =>
            (await page.getByText('This is the beginning of the conversation.').isVisible()) ||
            ((await this.messages())[0]?.seq ?? 0) < (before ?? Infinity),
          { timeout: TIMEOUT_MS, message: `${this.username}'s older messages to load` },
        );
        return false;
      },
      { timeout, interval: 0, message: `${this.username} to reach the beginning of the conversation` },
    );
    await region.evaluate((el) => {
      el.scrollTop = 0;
    });
  }

  /** Saves a screenshot as e2e/screenshots/<name>.png (in the given color scheme, then back to light). */
  async screenshot(/** @type {string} */ name, /** @type {'light' | 'dark'} */ scheme = 'light') {
    mkdirSync(SCREENSHOTS, { recursive: true });
    if (scheme === 'dark') await this.page.emulateMedia({ colorScheme: 'dark' });
    try {
      await this.page.screenshot({ path: path.join(SCREENSHOTS, `${name}.png`), animations: 'disabled', caret: 'hide' });
    } finally {
      if (scheme === 'dark') await this.page.emulateMedia({ colorScheme: 'light' });
    }
  }

  /** Closes the page (a tab), or the whole browser context (the person's browser). */
  async close() {
    if (this.isTab) await this.page.close().catch(() => {});
    else await this.context.close().catch(() => {});
  }
}

/**
 * One page's connection to the gateway, which the test can cut and restore, as when that tab's network goes away:
 * every WebSocket the page opens goes through Playwright's routing (`page.routeWebSocket`, installed before the
 * page loads the app) to the real gateway while the link is up. `cut()` closes the page's open sockets with 1006
 * (what a lost connection shows; the gateway's end is closed too) and, until `restore()`, every new one the page
 * opens is closed the same way before it opens. Only this page is affected: the other pages of its context (the
 * user's other tabs, sharing its storage) keep their connections. (`context.setOffline` would not do: Chromium
 * does not apply it to WebSockets that are already open, and it applies to every page of the context.)
 */
export class Link {
  /** @param {import('playwright-core').Page} page */
  static async install(page) {
    const link = new Link();
    await page.routeWebSocket(/\/ws$/, (ws) => link.route(ws));
    return link;
  }

  constructor() {
    this.up = true;
    /** @type {Set<{ page: import('playwright-core').WebSocketRoute, server: import('playwright-core').WebSocketRoute }>} */
    this.sockets = new Set();
  }

  /** @param {import('playwright-core').WebSocketRoute} ws */
  async route(ws) {
    if (!this.up) {
      ws.onClose(() => {});
      await ws.close({ code: 1006, reason: '' });
      return;
    }
    const server = ws.connectToServer();
    const entry = { page: ws, server };
    this.sockets.add(entry);
    // Closed by the gateway: the page hears it (unless the link was cut meanwhile: then it has heard 1006).
    server.onClose((code, reason) => {
      this.sockets.delete(entry);
      if (this.up) void ws.close({ code: code ?? 1005, reason: reason ?? '' });
    });
    // Closed by the page (or by `cut`): the gateway's end is closed too (a browser may only send 1000 or 3000-4999).
    ws.onClose((code, reason) => {
      this.sockets.delete(entry);
      const sendable = code === 1000 || (code !== undefined && code >= 3000 && code <= 4999);
      void server.close(sendable ? { code, reason: reason ?? '' } : { code: 1000, reason: 'the link was cut' });
    });
  }

  /** The page's sockets close as on a lost connection, and new ones fail, until `restore()`. */
  async cut() {
    this.up = false;
    await Promise.all([...this.sockets].map(({ page }) => page.close({ code: 1006, reason: '' })));
  }

  /** New sockets reach the gateway again (the app reconnects by itself, after its backoff or on `online`). */
  restore() {
    this.up = true;
  }
}

/** @param {string} text */
function escape(text) {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
