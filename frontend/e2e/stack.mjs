/**
 * The Warren processes an end-to-end run talks to: one user-service, one message-service and one gateway (which
 * serves the built web app), started from the binaries in WARREN_E2E_BIN_DIR. The gateway can be killed with
 * SIGKILL and started again on the same port mid-test.
 *
 * It can also be frozen (SIGSTOP: sockets stay open, nothing answers) and thawed (SIGCONT); its AMQP heartbeat is
 * 60 s so that a freeze of half a minute does not also cost it its broker connection.
 *
 * Everything else comes from the environment scripts/e2e.sh prepares: WARREN_DATABASE_URL (a fresh database),
 * WARREN_AMQP_PREFIX (a fresh prefix), WARREN_AMQP_URL. Each process logs to WARREN_E2E_LOG_DIR/<name>.log.
 *
 * Without WARREN_E2E_BIN_DIR the tests use an already running stack at WARREN_E2E_URL and cannot restart it:
 * `canRestartGateway` is false.
 */
import { spawn } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/** How long a process may take to become ready (debug builds on a loaded 2-core machine run migrations first). */
const READY_TIMEOUT_MS = Number(process.env.WARREN_E2E_READY_TIMEOUT_MS ?? 90_000);
/** How long a process may take to stop after SIGTERM before it gets SIGKILL. */
const STOP_TIMEOUT_MS = 10_000;

/**
 * @typedef {{ name: string, child: import('node:child_process').ChildProcess, exited: Promise<number | null>, log: string }} Proc
 */

export class Stack {
  /**
   * @param {{ url: string, binDir?: string, logDir: string, webDir?: string }} options
   */
  constructor(options) {
    this.url = options.url.replace(/\/+$/, '');
    const parsed = new URL(this.url);
    this.origin = parsed.origin;
    this.port = Number(parsed.port || (parsed.protocol === 'https:' ? 443 : 80));
    this.host = parsed.hostname;
    this.binDir = options.binDir;
    this.logDir = options.logDir;
    this.webDir = options.webDir;
    /** @type {Proc[]} */
    this.services = [];
    /** @type {Proc | null} */
    this.gateway = null;
    this.gatewayStarts = 0;
    this.gatewayFrozen = false;
  }

  get canRestartGateway() {
    return Boolean(this.binDir);
  }

  /** Starts the services and the gateway (when binaries were given) and waits until the gateway is ready. */
  async start() {
    if (!this.binDir) {
      await this.waitReady(null);
      return;
    }
    mkdirSync(this.logDir, { recursive: true });
    this.services.push(this.spawn('user-service', 'user-service-1', {}));
    this.services.push(this.spawn('message-service', 'message-service-1', {}));
    await this.startGateway();
  }

  /** Starts a gateway on the stack's port and waits for `/readyz`. */
  async startGateway() {
    if (!this.binDir) throw new Error('the gateway can only be restarted when WARREN_E2E_BIN_DIR is set');
    if (this.gateway) throw new Error('a gateway is already running');
    this.gatewayStarts += 1;
    // A fresh instance id each time: the killed gateway's exclusive queues may outlive it for a moment.
    const name = `api-${this.gatewayStarts}`;
    this.gateway = this.spawn('api', name, {
      WARREN_AMQP_URL: withHeartbeat(process.env.WARREN_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672/%2f', 60),
      WARREN_HTTP_ADDR: `${this.host}:${this.port}`,
      WARREN_ALLOWED_ORIGINS: this.origin,
      ...(this.webDir ? { WARREN_WEB_DIR: this.webDir } : {}),
      WARREN_INSTANCE_ID: `e2e-${name}-${process.pid}`,
    });
    await this.waitReady(this.gateway);
  }

  /** SIGKILL to the gateway: no goodbye to its sockets or the broker. Resolves once it is gone. */
  async killGateway() {
    const gateway = this.gateway;
    if (!gateway) throw new Error('no gateway is running');
    this.gateway = null;
    gateway.child.kill('SIGKILL');
    await gateway.exited;
  }

  /** SIGSTOP to the gateway: its sockets stay open but nothing answers, as with a hung process or a dead link. */
  freezeGateway() {
    if (!this.gateway) throw new Error('no gateway is running');
    this.gateway.child.kill('SIGSTOP');
    this.gatewayFrozen = true;
  }

  /** SIGCONT: the frozen gateway carries on; resolves once it answers `/readyz` again. */
  async thawGateway() {
    if (!this.gateway) throw new Error('no gateway is running');
    this.gateway.child.kill('SIGCONT');
    this.gatewayFrozen = false;
    await this.waitReady(this.gateway);
  }

  /** Stops everything: the gateway first (it closes its sockets), then the services. */
  async stop() {
    if (this.gateway && this.gatewayFrozen) this.gateway.child.kill('SIGCONT');
    const all = [...(this.gateway ? [this.gateway] : []), ...this.services.reverse()];
    this.gateway = null;
    this.services = [];
    for (const proc of all) await stopProc(proc);
  }

  /**
   * @param {string} binary
   * @param {string} name
   * @param {Record<string, string>} extraEnv
   * @returns {Proc}
   */
  spawn(binary, name, extraEnv) {
    const file = path.join(/** @type {string} */ (this.binDir), binary);
    if (!existsSync(file)) throw new Error(`${file} does not exist: build it first (scripts/e2e.sh does)`);
    const log = path.join(this.logDir, `${name}.log`);
    const out = createWriteStream(log, { flags: 'a' });
    const child = spawn(file, [], {
      env: { WARREN_INSTANCE_ID: `e2e-${name}-${process.pid}`, RUST_LOG: 'info', ...process.env, ...extraEnv },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    // Two streams share one log, so neither may end it (a pipe's default): it is ended once the process has
    // exited *and* both streams are drained, which is what 'close' means. Before, stdout's end ended the log and
    // the exit line written at 'exit' could come after it ("write after end", which failed a run whose tests had
    // all passed).
    child.stdout?.pipe(out, { end: false });
    child.stderr?.pipe(out, { end: false });
    /** @type {Promise<number | null>} */
    const exited = new Promise((resolve) => {
      child.once('close', (code, signal) => {
        if (!out.writableEnded) out.end(`\n[e2e] ${name} exited (${signal ?? `status ${code}`})\n`);
        resolve(code);
      });
      child.once('error', (error) => {
        if (!out.writableEnded) out.end(`\n[e2e] ${name} could not start: ${error.message}\n`);
        resolve(-1);
      });
    });
    return { name, child, exited, log };
  }

  /**
   * Polls `/readyz` until it answers 200; fails early when a process we started has exited.
   * @param {Proc | null} gateway
   */
  async waitReady(gateway) {
    const deadline = Date.now() + READY_TIMEOUT_MS;
    let last = 'no answer yet';
    while (Date.now() < deadline) {
      for (const proc of [...this.services, ...(gateway ? [gateway] : [])]) {
        if (proc.child.exitCode !== null || proc.child.signalCode !== null) {
          throw new Error(`${proc.name} exited during start-up; the end of its log:\n${tail(proc.log)}`);
        }
      }
      try {
        const response = await fetch(`${this.url}/readyz`, { signal: AbortSignal.timeout(2_000) });
        if (response.status === 200) return;
        last = `HTTP ${response.status}: ${(await response.text()).slice(0, 300)}`;
      } catch (error) {
        last = error instanceof Error ? error.message : String(error);
      }
      await sleep(250);
    }
    throw new Error(`${this.url}/readyz not ready after ${READY_TIMEOUT_MS} ms (${last})`);
  }

  /** The last lines of every log, for a failure report. */
  logTails(lines = 25) {
    return [...this.services, ...(this.gateway ? [this.gateway] : [])]
      .map((proc) => `--- ${proc.name} (${proc.log})\n${tail(proc.log, lines)}`)
      .join('\n');
  }
}

/** @param {Proc} proc */
async function stopProc(proc) {
  if (proc.child.exitCode !== null || proc.child.signalCode !== null) return;
  proc.child.kill('SIGTERM');
  const timer = setTimeout(() => proc.child.kill('SIGKILL'), STOP_TIMEOUT_MS);
  await proc.exited;
  clearTimeout(timer);
}

/**
 * @param {string} url
 * @param {number} seconds
 */
function withHeartbeat(url, seconds) {
  if (url.includes('heartbeat=')) return url;
  return `${url}${url.includes('?') ? '&' : '?'}heartbeat=${seconds}`;
}

/** @param {string} file */
function tail(file, lines = 25) {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

/** The stack described by the environment (see the top of this file). */
export function stackFromEnv() {
  const url = process.env.WARREN_E2E_URL;
  if (!url) throw new Error('WARREN_E2E_URL is not set: run the end-to-end tests with scripts/e2e.sh (make test-e2e)');
  const binDir = process.env.WARREN_E2E_BIN_DIR || undefined;
  const logDir = process.env.WARREN_E2E_LOG_DIR || path.resolve('e2e', '.logs');
  const webDir = process.env.WARREN_WEB_DIR || undefined;
  return new Stack({ url, logDir, ...(binDir ? { binDir } : {}), ...(webDir ? { webDir } : {}) });
}
