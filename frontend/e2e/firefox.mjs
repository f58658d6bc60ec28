/**
 * Headless Firefox for the end-to-end tests: Debian's firefox-esr driven over WebDriver by selenium-webdriver and a
 * geckodriver built from crates.io (scripts/ensure-firefox.sh installs both). Playwright's own Firefox is a
 * patched build that cannot be downloaded here, hence WebDriver.
 *
 * Nothing is ever downloaded and nothing waits on the network: the geckodriver and the Firefox binary are passed
 * explicitly, so Selenium Manager (which would look for, and fetch, a driver and a browser) is never run; Firefox's
 * own background traffic (remote settings, updates, telemetry, safe browsing…) is switched off, and whatever is left
 * and not for 127.0.0.1/localhost goes to a proxy that refuses at once. (Checked with strace: a session makes no
 * DNS lookup and connects to loopback only.)
 *
 * The user's actions mirror browser.mjs's `Person`, with CSS selectors in place of roles; every wait is a wait for
 * a condition, bounded by TIMEOUT_MS.
 */
import { closeSync, existsSync, mkdirSync, openSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Key } from 'selenium-webdriver';
import firefox from 'selenium-webdriver/firefox.js';
import { SCREENSHOTS, TIMEOUT_MS, waitFor } from './browser.mjs';

// Belt and braces: should anything reach Selenium Manager after all, it must not download.
process.env.SE_OFFLINE = 'true';
process.env.SE_AVOID_BROWSER_DOWNLOAD = 'true';

const HOME = process.env.HOME ?? '/root';
export const FIREFOX = process.env.WARREN_E2E_FIREFOX ?? '/usr/bin/firefox-esr';
export const GECKODRIVER = process.env.WARREN_E2E_GECKODRIVER ?? path.join(HOME, '.cache/warren/bin/geckodriver');

const VIEWPORT = { width: 1120, height: 760 };

/** A port nothing listens on (TCP discard): connections to it are refused at once. */
const DEAD_PROXY_PORT = 9;

const PREFS = {
  // Everything but loopback goes to a proxy that refuses at once.
  'network.proxy.type': 1,
  'network.proxy.http': '127.0.0.1',
  'network.proxy.http_port': DEAD_PROXY_PORT,
  'network.proxy.ssl': '127.0.0.1',
  'network.proxy.ssl_port': DEAD_PROXY_PORT,
  'network.proxy.share_proxy_settings': true,
  'network.proxy.no_proxies_on': 'localhost, 127.0.0.1',
  'network.proxy.allow_hijacking_localhost': false,
  'network.dns.disablePrefetch': true,
  'network.prefetch-next': false,
  'network.trr.mode': 5,
  // Remote settings would otherwise look up their server's name even with the proxy set (needs
  // MOZ_REMOTE_SETTINGS_DEVTOOLS, see `open`).
  'services.settings.server': `http://127.0.0.1:${DEAD_PROXY_PORT}/v1`,
  'network.connectivity-service.enabled': false,
  'network.captive-portal-service.enabled': false,
  'app.update.disabledForTesting': true,
  'browser.safebrowsing.malware.enabled': false,
  'browser.safebrowsing.phishing.enabled': false,
  'browser.safebrowsing.downloads.enabled': false,
  'datareporting.policy.dataSubmissionEnabled': false,
  'toolkit.telemetry.enabled': false,
  'extensions.update.enabled': false,
  'app.normandy.enabled': false,
  'messaging-system.rsexperimentloader.enabled': false,
  'browser.shell.checkDefaultBrowser': false,
  // Background timers keep running, as with Chromium's --disable-background-timer-throttling.
  'dom.min_background_timeout_value': 4,
  'ui.prefersReducedMotion': 1,
  'ui.systemUsesDarkTheme': 0,
};

/**
 * One person in headless Firefox (a fresh profile of their own).
 */
export class FirefoxPerson {
  /**
   * Starts geckodriver (logging to `logDir/geckodriver.log`) and a headless Firefox session.
   * @param {string} baseUrl
   * @param {string} username
   * @param {{ logDir: string }} options
   */
  static async open(baseUrl, username, { logDir }) {
    for (const [file, variable] of [[FIREFOX, 'WARREN_E2E_FIREFOX'], [GECKODRIVER, 'WARREN_E2E_GECKODRIVER']]) {
      if (!existsSync(file)) throw new Error(`${file} does not exist: run scripts/ensure-firefox.sh (or set ${variable})`);
    }
    mkdirSync(logDir, { recursive: true });
    const log = openSync(path.join(logDir, 'geckodriver.log'), 'a');
    const service = new firefox.ServiceBuilder(GECKODRIVER)
      .setStdio(['ignore', log, log])
      // Firefox honours services.settings.server (see PREFS) only with this set.
      .setEnvironment({ ...process.env, MOZ_REMOTE_SETTINGS_DEVTOOLS: '1' });
    const options = new firefox.Options()
      .setBinary(FIREFOX)
      .addArguments('-headless')
      .windowSize(VIEWPORT)
      // WebDriver BiDi, for the page's console errors and uncaught exceptions.
      .enableBidi();
    for (const [name, value] of Object.entries(PREFS)) options.setPreference(name, value);
    // Straight to the driver (no Builder, so no SELENIUM_REMOTE_URL/SELENIUM_BROWSER from the environment), with a
    // service that carries its executable, so Selenium Manager is never asked for one (see the top of this file).
    const driver = await firefox.Driver.createSession(options, service.build());
    const person = new FirefoxPerson(driver, baseUrl, username);
    try {
      await driver.getSession();
      closeSync(log); // geckodriver has its own copy
      await driver.manage().setTimeouts({ pageLoad: 3 * TIMEOUT_MS, script: TIMEOUT_MS, implicit: 0 });
      // The page gets the same 1120×760 as Chromium's (the window's size includes Firefox's toolbars).
      const [dx, dy] = /** @type {[number, number]} */ (
        await driver.executeScript('return [outerWidth - innerWidth, outerHeight - innerHeight];')
      );
      await driver.manage().window().setRect({ width: VIEWPORT.width + dx, height: VIEWPORT.height + dy });
      const { default: logInspector } = await import('selenium-webdriver/bidi/logInspector.js');
      const inspector = await logInspector(driver);
      await inspector.onConsoleEntry((/** @type {any} */ entry) => {
        if (entry.level === 'error') person.errors.push(`console: ${entry.text}`);
      });
      await inspector.onJavascriptException((/** @type {any} */ entry) => person.errors.push(`exception: ${entry.text}`));
    } catch (error) {
      await driver.quit().catch(() => {});
      throw error;
    }
    return person;
  }

  /**
   * @param {import('selenium-webdriver').WebDriver} driver
   * @param {string} baseUrl
   * @param {string} username
   */
  constructor(driver, baseUrl, username) {
    this.driver = driver;
    this.baseUrl = baseUrl;
    this.username = username;
    this.password = `pw-${username}-secret`;
    /** @type {string[]} */
    this.errors = [];
  }

  /** The browser's name and version, as the session reports them. */
  async version() {
    const caps = await this.driver.getCapabilities();
    return `${caps.getBrowserName()} ${caps.getBrowserVersion()}`;
  }

  /**
   * Waits for the first element matching `css` (whose trimmed text is `text`, when given) and returns it.
   * @param {string} css
   * @param {{ text?: string, timeout?: number }} [options]
   * @returns {Promise<import('selenium-webdriver').WebElement>}
   */
  async find(css, { text, timeout = TIMEOUT_MS } = {}) {
    return waitFor(
      () =>
        this.driver.executeScript(
          `const [css, text] = arguments;
           return [...document.querySelectorAll(css)].find((el) => text === null || el.textContent.trim() === text) ?? null;`,
          css,
          text ?? null,
        ),
      { timeout, message: `${this.username}'s page to show ${css}${text === undefined ? '' : ` with text ${JSON.stringify(text)}`}` },
    );
  }

  /** @param {string} css @param {string} [text] */
  async click(css, text) {
    const element = await this.find(css, text === undefined ? {} : { text });
    await element.click();
  }

  /** @param {string} css @param {string} value */
  async type(css, value) {
    const element = await this.find(css);
    await element.clear();
    await element.sendKeys(value);
  }

  async register() {
    await this.driver.get(this.baseUrl);
    await this.find('h1', { text: 'Welcome back' });
    await this.click('button.link-button', 'Create an account');
    await this.find('h1', { text: 'Create your account' });
    await this.type('input[name="username"]', this.username);
    await this.type('input[name="password"]', this.password);
    await this.click('form button[type="submit"]', 'Create account');
    await this.waitSignedIn();
  }

  async waitSignedIn() {
    await this.find('.me__name', { text: this.username });
    await this.waitConnected();
  }

  /** The socket is open and the first sync is done (as Person.waitConnected). */
  async waitConnected(timeout = TIMEOUT_MS) {
    await waitFor(
      () =>
        this.driver.executeScript(
          `return document.querySelector('.banner') === null &&
             !document.body.textContent.includes('Loading conversations…');`,
        ),
      { timeout, message: `${this.username}'s app to be connected and synced` },
    );
  }

  /** Finds someone with "Find people" and opens the conversation with them. */
  async openDirectWith(/** @type {string} */ username) {
    await this.type('aside input[type="search"][placeholder="Find people to message"]', username);
    await this.click('ul[aria-label="People"] button.person .person__name', username);
    await this.find('#conversation-title', { text: username });
  }

  async openConversation(/** @type {string} */ title) {
    await this.click('.conversation-item .conversation-item__title', title);
    await this.find('#conversation-title', { text: title });
  }

  /** Types a message and presses Enter. */
  async send(/** @type {string} */ text) {
    const box = await this.find('textarea.composer__input');
    await box.sendKeys(text, Key.ENTER);
  }

  /** The stored messages on screen, in display order. @returns {Promise<{ seq: number, body: string }[]>} */
  async messages() {
    return this.driver.executeScript(
      `return [...document.querySelectorAll('[data-testid="message"]')].map((item) => ({
         seq: Number(item.getAttribute('data-seq')),
         body: item.querySelector('.msg__body')?.textContent ?? '',
       }));`,
    );
  }

  /** The messages still waiting for the server. @returns {Promise<{ body: string, className: string }[]>} */
  async pending() {
    return this.driver.executeScript(
      `return [...document.querySelectorAll('[data-testid="pending-message"]')].map((item) => ({
         body: item.querySelector('.msg__body')?.textContent ?? '',
         className: item.className,
       }));`,
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

  async reload() {
    await this.driver.navigate().refresh();
  }

  /** Saves a screenshot of the window as e2e/screenshots/<name>.png. */
  async screenshot(/** @type {string} */ name) {
    mkdirSync(SCREENSHOTS, { recursive: true });
    writeFileSync(path.join(SCREENSHOTS, `${name}.png`), Buffer.from(await this.driver.takeScreenshot(), 'base64'));
  }

  async close() {
    await this.driver.quit().catch(() => {});
  }
}
