// The package as a web developer gets it, checked for real: `npm pack` of js/ (as built,
// without building again), installed from the tarball into a fresh app, then used
// 1. by a Vite app (`vite build` of vite-check/, which imports `distributed-events` by name)
// 2. by a plain page with no bundler: a `<script type="module">` and an import map that
//    points the name at the installed package's browser entry.
// Both are served by the real server binary and opened in headless Chromium (Debian's,
// driven by playwright-core); each must fetch the .wasm as application/wasm, go live and
// list events posted to the server once each, in order.
// Build first: scripts/build-web.sh, and `cargo build --release -p distributed-events-server`.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { cpSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';
import { build } from 'vite';

import { startServer, tempDir } from '../js/test/server.mjs';
import { recordPage } from './page-log.mjs';

const here = fileURLToPath(new URL('.', import.meta.url));
const packageSource = join(here, '..', 'js');
const viteCheck = join(here, 'vite-check');
// Generous: a wait ends as soon as the page shows what it waits for.
const TIMEOUT = 20_000;

/** @type {string} the static folder the server serves: vite/ (the Vite build) and plain/ */
let site;
/** @type {import('vite').Rollup.RollupOutput} */
let output;
/** @type {Awaited<ReturnType<typeof startServer>>} */
let server;
/** @type {import('playwright-core').Browser} */
let browser;
/** Ids of the events posted so far: a page (initialPosition: 0) lists each once, in order. */
const posted = [];

before(async () => {
  const manifest = JSON.parse(readFileSync(join(packageSource, 'package.json'), 'utf8'));
  const missing = manifest.files.filter((file) => !existsSync(join(packageSource, file)));
  if (missing.length > 0) throw new Error(`the package is not built (missing ${missing.join(', ')}): run scripts/build-web.sh first`);

  const dir = tempDir();
  // --ignore-scripts: pack what is built now instead of building again (prepack).
  const npm = (args, cwd) => execFileSync('npm', [...args, '--no-audit', '--no-fund', '--ignore-scripts'], { cwd, encoding: 'utf8' });
  const [{ filename }] = JSON.parse(npm(['pack', '--json', '--pack-destination', dir], packageSource));
  const app = join(dir, 'app');
  mkdirSync(app);
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }));
  for (const file of ['index.html', 'main.js']) cpSync(join(viteCheck, file), join(app, file));
  npm(['install', join(dir, filename)], app);

  site = join(dir, 'site');
  // 1. What `vite build` does in the app (vite-check's sources, the package from the tarball).
  const result = await build({
    root: app,
    base: '/vite/',
    configFile: false,
    logLevel: 'warn',
    build: { outDir: join(site, 'vite'), emptyOutDir: true },
  });
  output = /** @type {import('vite').Rollup.RollupOutput} */ (Array.isArray(result) ? result[0] : result);

  // 2. The same page without a bundler: the installed package served as it is, and an
  // import map to the browser entry that its package.json names.
  const plain = join(site, 'plain');
  cpSync(join(app, 'node_modules', 'distributed-events'), join(plain, 'node_modules', 'distributed-events'), { recursive: true });
  cpSync(join(app, 'main.js'), join(plain, 'main.js'));
  const installed = JSON.parse(readFileSync(join(plain, 'node_modules', 'distributed-events', 'package.json'), 'utf8'));
  const entry = new URL(installed.exports['.'].import, 'http://x/plain/node_modules/distributed-events/').pathname;
  const importMap = `<script type="importmap">${JSON.stringify({ imports: { 'distributed-events': entry } })}</script>`;
  writeFileSync(join(plain, 'index.html'), readFileSync(join(app, 'index.html'), 'utf8').replace('<script type="module"', `${importMap}\n  $&`));

  server = await startServer({ args: ['--static-dir', site] });
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run'],
  });
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

test('vite build emits the .wasm as an asset of the build', () => {
  const files = output.output.map((file) => file.fileName);
  const wasm = files.filter((file) => file.endsWith('.wasm'));
  assert.equal(wasm.length, 1, `one .wasm among the emitted files, got ${files.join(', ')}`);
  assert.ok(existsSync(join(site, 'vite', wasm[0])), `${wasm[0]} is written to the build`);
  assert.ok(files.includes('index.html'), `index.html among the emitted files, got ${files.join(', ')}`);
});

test('the Vite app goes live and lists events posted to the server, once each', async () => {
  const built = output.output.find((file) => file.fileName.endsWith('.wasm'))?.fileName;
  await checkPage('/vite/', `/vite/${built}`);
});

test('a plain <script type="module"> page with an import map goes live and lists events, once each', async () => {
  await checkPage('/plain/', '/plain/node_modules/distributed-events/dist/distributed_events_client_bg.wasm');
});

/**
 * Opens the page at `path`: it must fetch the .wasm from `wasmPath` as application/wasm,
 * go live, survive a garbage collection, and list the posted events once each, in order.
 */
async function checkPage(path, wasmPath) {
  const started = performance.now();
  const page = await browser.newPage();
  page.setDefaultTimeout(TIMEOUT);
  const pageErrors = [];
  const said = recordPage(page, pageErrors);
  const wasmResponses = [];
  page.on('response', (response) => {
    if (new URL(response.url()).pathname.endsWith('.wasm')) wasmResponses.push(response);
  });
  /** What the page showed and logged, for the message of a failed wait. */
  const report = async () => {
    const shown = await page
      .evaluate(() => ({
        status: document.getElementById('status')?.textContent,
        ids: [...document.querySelectorAll('#events li')].map((entry) => entry.getAttribute('data-id')),
      }))
      .then(({ status, ids }) => `status "${status}", events [${ids.join(', ')}]`)
      .catch((unreadable) => `nothing readable (${unreadable.message})`);
    return `${path} shows ${shown}\nwhat the page logged:\n${said.join('\n') || '(nothing)'}\nthe server's log:\n${server.log() || '(nothing)'}`;
  };
  const waitFor = async (selector, what) => {
    try {
      await page.locator(selector).waitFor();
    } catch (error) {
      throw new Error(`${what} within ${TIMEOUT} ms\n${await report()}`, { cause: error });
    }
  };

  await page.goto(`${server.url}${path}`);
  await waitFor('#status[data-state="live"]', `${path} did not go live`);
  console.log(`${path}: live ${Math.round(performance.now() - started)} ms after opening`);

  // The .wasm came from next to the entry, as application/wasm so that the browser
  // compiles it while it downloads.
  const fetched = wasmResponses.map((response) => new URL(response.url()).pathname);
  assert.deepEqual(fetched, [wasmPath], `the page fetched the .wasm\n${await report()}`);
  assert.equal(wasmResponses[0].status(), 200);
  assert.equal(wasmResponses[0].headers()['content-type'], 'application/wasm');

  // A page runs for hours: the client must outlive the garbage collections in between.
  await (await page.context().newCDPSession(page)).send('HeapProfiler.collectGarbage');

  const first = await postEvent();
  await waitFor(`#events li[data-id="${first}"]`, `${path} did not list the event ${first}`);
  // One more: once it shows, the client has handled everything stored before it, so a
  // repeat of the first event would be listed by now.
  const second = await postEvent();
  await waitFor(`#events li[data-id="${second}"]`, `${path} did not list the event ${second}`);
  const ids = await page.$$eval('#events li', (entries) => entries.map((entry) => entry.getAttribute('data-id')));
  // Every event the server holds (earlier tests' too), once each, in order.
  assert.deepEqual(ids, posted, `each posted event listed once, in order\n${await report()}`);
  assert.deepEqual(pageErrors, [], await report());
  await page.close();
}

/** Posts an event of a type no app knows, as any producer would; resolves to its id. */
async function postEvent() {
  const id = randomUUID();
  const response = await fetch(`${server.url}/events`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      id,
      createdAt: new Date().toISOString(),
      aggregateId: 'pack-check',
      eventType: 'PackCheckPinged',
      eventJson: JSON.stringify({ from: 'pack.test.mjs' }),
    }),
  });
  assert.equal(response.status, 201, `POST /events answered ${response.status}: ${await response.text()}`);
  posted.push(id);
  return id;
}
