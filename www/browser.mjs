// What the package's browser tests share (tabs.test.mjs, offline.test.mjs, client.test.mjs):
// the test page and the built package served by the real server binary (same origin,
// HTTP/1.1), real headless Chromium, tabs of one browser, and waits that say what the
// tabs and the server said when they give up.
import { randomUUID } from 'node:crypto';
import { cpSync, existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

import { recordPage } from './page-log.mjs';

const repo = fileURLToPath(new URL('..', import.meta.url));
const testPage = fileURLToPath(new URL('test-page', import.meta.url));
// The package's folder: js/ (built), or $DISTRIBUTED_EVENTS_PACKAGE (an unpacked tarball, say).
const packageDir = process.env.DISTRIBUTED_EVENTS_PACKAGE ?? join(repo, 'js');

// The server binary: $DISTRIBUTED_EVENTS_SERVER, else the release build, else the debug
// build of this worktree (js/test/server.mjs reads the variable when it is imported).
if (!process.env.DISTRIBUTED_EVENTS_SERVER) {
  const target = process.env.CARGO_TARGET_DIR ?? join(repo, 'target');
  const debug = join(target, 'debug', 'distributed-events-server');
  if (!existsSync(join(target, 'release', 'distributed-events-server')) && existsSync(debug)) {
    process.env.DISTRIBUTED_EVENTS_SERVER = debug;
  }
}
const { startServer: startBinary, tempDir } = await import('../js/test/server.mjs');

/** Generous: a wait ends as soon as what it waits for holds. */
export const TIMEOUT = 20_000;

/** Checks `condition()` every 50 ms until it is truthy; throws `explain()` after `timeout` ms. */
export async function until(condition, explain, timeout = TIMEOUT) {
  const end = Date.now() + timeout;
  while (!(await condition())) {
    if (Date.now() > end) throw new Error(`${await explain()} (waited ${timeout} ms)`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/**
 * A folder the server serves at `/`: the test page, and the package at
 * vendor/distributed-events/ exactly as `npm publish` would ship it (its manifest and
 * `files`), with the page's import map pointing at the package's `import` entry.
 */
export function staticDir() {
  const manifest = JSON.parse(readFileSync(join(packageDir, 'package.json'), 'utf8'));
  const missing = manifest.files.filter((file) => !existsSync(join(packageDir, file)));
  if (missing.length > 0) {
    throw new Error(`the package is not built (missing ${missing.join(', ')} in ${packageDir}): run scripts/build-web.sh first`);
  }
  const dir = tempDir();
  for (const file of ['package.json', ...manifest.files]) {
    cpSync(join(packageDir, file), join(dir, 'vendor', 'distributed-events', file), { recursive: true });
  }
  // Stopgap: the JS driver's modules (js/src/*.js), which the unbundled entry imports but
  // `files` does not list yet (the bundled build ships them inside dist/ instead).
  const driver = join(packageDir, 'src');
  const listed = (name) => manifest.files.some((file) => file === `src/${name}` || file === 'src' || file === 'src/');
  if (existsSync(driver) && !manifest.files.some((file) => file.startsWith('dist'))) {
    for (const name of readdirSync(driver).filter((name) => name.endsWith('.js') && !listed(name))) {
      cpSync(join(driver, name), join(dir, 'vendor', 'distributed-events', 'src', name));
    }
  }
  for (const file of ['harness.js', 'track-fetches.js']) cpSync(join(testPage, file), join(dir, file));
  const html = readFileSync(join(testPage, 'index.html'), 'utf8');
  writeFileSync(join(dir, 'index.html'), html.replace('./vendor/distributed-events/PACKAGE_ENTRY', `./vendor/distributed-events/${browserEntry(manifest)}`));
  return dir;
}

/** The file a browser imports: the `import` (or `browser`, `default`) condition of `.`. */
function browserEntry(manifest) {
  let entry = manifest.exports?.['.'] ?? manifest.module ?? manifest.main;
  while (entry && typeof entry === 'object') entry = entry.browser ?? entry.import ?? entry.default;
  if (typeof entry !== 'string') throw new Error('the package names no entry for browsers in its exports');
  return entry.replace(/^\.\//, '');
}

/**
 * The real server binary, serving `dir`; on a free port and a new SQLite file unless
 * `bind` and `database` say which (a restart).
 */
export function startServer(dir, { bind, database } = {}) {
  return startBinary({ bind, database, args: ['--static-dir', dir] });
}

/** Debian's Chromium, headless, as www/e2e.test.mjs launches it. */
export function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run'],
  });
}

/**
 * A browser window: a context whose pages are tabs of one browser (one connection pool,
 * one origin's storage, Web Locks and BroadcastChannel). It counts the `GET /events`
 * requests its tabs have open and records what each tab says.
 */
export async function openWindow(browser, server) {
  const context = await browser.newContext();
  await context.addInitScript({ path: join(testPage, 'track-fetches.js') });
  /** @type {Map<import('playwright-core').Request, import('playwright-core').Page | null>} */
  const open = new Map();
  const isRead = (request) => request.method() === 'GET' && new URL(request.url()).pathname === '/events';
  context.on('request', (request) => {
    if (!isRead(request)) return;
    let page = null;
    try {
      page = request.frame().page();
    } catch {
      // A worker's request has no frame.
    }
    open.set(request, page);
  });
  const done = (request) => open.delete(request);
  context.on('requestfinished', done);
  context.on('requestfailed', done);

  const tabs = [];
  const logs = new Map();
  const pageErrors = [];
  const win = {
    context,
    tabs,
    pageErrors,
    server,
    /**
     * Opens a tab of the test page; with `options`, the page starts a client with them at
     * load. With `load: false` it does not wait for the page: a tab may wait for a
     * connection forever (the browser's six per host, all held).
     */
    async openTab(options, { load = true } = {}) {
      const page = await context.newPage();
      page.setDefaultTimeout(TIMEOUT);
      logs.set(page, recordPage(page, pageErrors));
      tabs.push(page);
      // A closed or crashed tab's requests end with it, whether or not an event says so.
      const gone = () => {
        for (const [request, owner] of open) if (owner === page) open.delete(request);
      };
      page.on('close', () => {
        tabs.splice(tabs.indexOf(page), 1);
        gone();
      });
      page.on('crash', gone);
      const query = options ? `?client=${encodeURIComponent(JSON.stringify(options))}` : '';
      const loaded = page.goto(`${win.server.url}/${query}`, { timeout: load ? TIMEOUT : 0 });
      if (!load) {
        loaded.catch(() => {}); // the tab closes before it loads, or the test ends first
        return page;
      }
      await loaded;
      await win.waitInTab(page, 'loading the page', () => window.harnessReady === true);
      return page;
    },
    /** The last status the tab's client heard, as "live (stream)"; "not loaded" when the page is not (yet). */
    async state(page) {
      const read = page.evaluate(() => {
        if (window.harnessReady !== true) return 'not loaded';
        const status = window.statuses.at(-1);
        if (!status) return 'no status';
        return `${status.state}${status.transport ? ` (${status.transport})` : ''}${status.code ? ` ${status.code}` : ''}`;
      });
      // A tab waiting for its document has no context to evaluate in yet.
      const timeout = new Promise((resolve) => setTimeout(resolve, 1000, 'not loaded'));
      return Promise.race([read.catch(() => 'not loaded'), timeout]);
    },
    /** What the tab has logged (console, uncaught errors, failed requests), for messages. */
    log(page) {
      return logs.get(page)?.join('\n') || '(nothing)';
    },
    /** The tab's number (1-based, in the order opened) for messages. */
    name(page) {
      return `tab ${[...logs.keys()].indexOf(page) + 1}`;
    },
    /** The `GET /events` requests open now (waiting, streaming, or queued for a connection). */
    openReads() {
      return [...open.entries()].map(([request, page]) => ({
        tab: page ? win.name(page) : 'a worker',
        page,
        stream: request.headers().accept === 'text/event-stream',
        url: request.url(),
      }));
    },
    /** The tabs that hold an open stream or long-poll now. */
    readers() {
      return [...new Set(win.openReads().map((read) => read.page))].filter(Boolean);
    },
    /**
     * Waits until `predicate(arg)`, run in the tab, is truthy, and returns its value. On
     * timeout the error says `what`, what `describe(arg)` finds in the tab, what the tab
     * logged and the server's log.
     */
    async waitInTab(page, what, predicate, arg, { timeout = TIMEOUT, describe } = {}) {
      try {
        return await (await page.waitForFunction(predicate, arg, { timeout, polling: 50 })).jsonValue();
      } catch (error) {
        const read = page
          .evaluate(describe ?? (() => JSON.stringify({ statuses: window.statuses.slice(-5), received: window.received.length, errors: window.errors })), arg)
          .catch((unreadable) => `nothing readable (${unreadable.message})`);
        // A tab still waiting for its document cannot answer.
        const shown = await Promise.race([read, new Promise((resolve) => setTimeout(resolve, 2000, 'nothing (the page is not loaded)'))]);
        throw new Error(
          `${win.name(page)}: ${what} did not happen within ${timeout} ms; the tab shows ${shown}\n` +
            `what the tab logged:\n${win.log(page)}\n` +
            `open GET /events: ${JSON.stringify(win.openReads().map(({ tab, stream }) => ({ tab, stream })))}\n` +
            `the server's log:\n${win.server.log() || '(nothing)'}`,
          { cause: error },
        );
      }
    },
    /** Waits until the tab's client reports `state` (the last status it heard). */
    waitForState(page, state, timeout = TIMEOUT) {
      return win.waitInTab(page, `status ${state}`, (wanted) => window.lastState() === wanted, state, { timeout });
    },
    /** Waits until the tab received the events `ids` (of one test), and returns the ids it received of them. */
    async waitForEvents(page, ids, timeout = TIMEOUT) {
      await win.waitInTab(page, `${ids.length} events`, (wanted) => {
        const set = new Set(wanted);
        return window.received.filter((event) => set.has(event.id)).length >= wanted.length;
      }, ids, {
        timeout,
        describe: (wanted) => {
          const got = new Set(window.received.map((event) => event.id));
          return JSON.stringify({ missing: wanted.filter((id) => !got.has(id)), statuses: window.statuses.slice(-5), errors: window.errors });
        },
      });
      return receivedOf(page, ids);
    },
    /**
     * From now on the tabs load the page's own files (not the API) from `dir` instead of
     * the server, as an app whose shell a service worker caches: a tab loads while the
     * server is down.
     */
    async cacheShell(dir) {
      await context.route(
        (url) => url.origin === new URL(win.server.url).origin && existsSync(shellFile(dir, url)),
        (route) => route.fulfill({ path: shellFile(dir, new URL(route.request().url())) }),
      );
    },
    async close() {
      await context.close();
    },
  };
  return win;
}

/** The file of `dir` that `url` names ('/' is index.html); only files, never the API. */
function shellFile(dir, url) {
  const path = url.pathname === '/' ? '/index.html' : decodeURIComponent(url.pathname);
  return path.includes('..') || !/\.(html|js|wasm|json)$/.test(path) ? join(dir, 'no such file') : join(dir, path);
}

/** The events among `ids` that the tab received, in the order it received them (repeats too). */
export function receivedOf(page, ids) {
  return page.evaluate((wanted) => {
    const set = new Set(wanted);
    return window.received.filter((event) => set.has(event.id)).map(({ id, position, receivedAt }) => ({ id, position, receivedAt }));
  }, ids);
}

/** A wire record as docs/PROTOCOL.md describes it. */
export function record(eventType, payload, aggregateId = 'test') {
  return {
    id: randomUUID(),
    createdAt: new Date().toISOString(),
    aggregateId,
    eventType,
    eventJson: JSON.stringify(payload),
    userId: null,
    tenantId: null,
    sessionId: null,
  };
}

/** Publishes from Node with a plain `POST /events`; resolves with the stored position. */
export async function post(server, event) {
  const answer = await fetch(`${server.url}/events`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(event),
  });
  const body = await answer.text();
  if (answer.status !== 201 && answer.status !== 200) throw new Error(`POST /events answered ${answer.status}: ${body}`);
  return JSON.parse(body).position;
}

/** Every event the server stores, from position 0 (`GET /events?after=0`, page by page). */
export async function storedEvents(server) {
  const events = [];
  for (let after = 0; ; ) {
    const answer = await fetch(`${server.url}/events?after=${after}`);
    if (answer.status !== 200) throw new Error(`GET /events?after=${after} answered ${answer.status}: ${await answer.text()}`);
    const page = await answer.json();
    if (page.length === 0) return events;
    events.push(...page);
    after = Number(answer.headers.get('x-events-cursor'));
  }
}

/** A fresh event type per test, so that tests sharing the server do not see each other. */
export function unique(prefix) {
  return `${prefix}-${randomUUID().slice(0, 8)}`;
}

/** Max and median of `values`, for the printed figures. */
export function spread(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return { max: sorted.at(-1), median: sorted[Math.floor(sorted.length / 2)] };
}
