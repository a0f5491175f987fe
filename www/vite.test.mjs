// The package in a Vite app, checked for real: `vite build` of vite-check/ (which imports
// `distributed-events` by name, as a web developer would), served by the real server
// binary and opened in headless Chromium (Debian's, driven by playwright-core). It proves
// what js/README.md promises: the build carries the .wasm, and the page receives events.
// Build first: scripts/build-web.sh, and `cargo build --release -p distributed-events-server`.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';
import { build } from 'vite';

import { startServer, tempDir } from '../js/test/server.mjs';
import { recordPage } from './page-log.mjs';

const app = fileURLToPath(new URL('vite-check', import.meta.url));
const packageDir = fileURLToPath(new URL('node_modules/distributed-events', import.meta.url));
// Generous: a wait ends as soon as the page shows what it waits for.
const TIMEOUT = 20_000;

/** @type {string} */
let outDir;
/** @type {import('vite').Rollup.RollupOutput} */
let output;
/** @type {Awaited<ReturnType<typeof startServer>>} */
let server;
/** @type {import('playwright-core').Browser} */
let browser;

before(async () => {
  const manifest = JSON.parse(readFileSync(join(packageDir, 'package.json'), 'utf8'));
  const missing = manifest.files.filter((file) => !existsSync(join(packageDir, file)));
  if (missing.length > 0) throw new Error(`the package is not built (missing ${missing.join(', ')}): run scripts/build-web.sh first`);

  outDir = tempDir();
  // What `vite build` does in vite-check/, with its config file if it has one.
  const result = await build({ root: app, logLevel: 'warn', build: { outDir, emptyOutDir: true } });
  output = /** @type {import('vite').Rollup.RollupOutput} */ (Array.isArray(result) ? result[0] : result);

  server = await startServer({ args: ['--static-dir', outDir] });
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
  assert.ok(existsSync(join(outDir, wasm[0])), `${wasm[0]} is written to ${outDir}`);
  assert.ok(files.includes('index.html'), `index.html among the emitted files, got ${files.join(', ')}`);
});

test('the built page goes live and lists an event posted to the server, once', async () => {
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
    return `the page shows ${shown}\nwhat the page logged:\n${said.join('\n') || '(nothing)'}\nthe server's log:\n${server.log() || '(nothing)'}`;
  };
  const waitFor = async (selector, what) => {
    try {
      await page.locator(selector).waitFor();
    } catch (error) {
      throw new Error(`${what} within ${TIMEOUT} ms\n${await report()}`, { cause: error });
    }
  };

  await page.goto(server.url);
  await waitFor('#status[data-state="live"]', 'the page did not go live');

  // The .wasm came from the build, as application/wasm so that the browser compiles it
  // while it downloads.
  const built = output.output.find((file) => file.fileName.endsWith('.wasm'))?.fileName;
  const fetched = wasmResponses.map((response) => new URL(response.url()).pathname);
  assert.deepEqual(fetched, [`/${built}`], `the page fetched the built .wasm\n${await report()}`);
  assert.equal(wasmResponses[0].status(), 200);
  assert.equal(wasmResponses[0].headers()['content-type'], 'application/wasm');

  // A page runs for hours: the client must outlive the garbage collections in between.
  await (await page.context().newCDPSession(page)).send('HeapProfiler.collectGarbage');

  const posted = await postEvent();
  await waitFor(`#events li[data-id="${posted}"]`, `the page did not list the event ${posted}`);
  // One more: once it shows, the client has handled everything stored before it, so a
  // repeat of the first event would be listed by now.
  const second = await postEvent();
  await waitFor(`#events li[data-id="${second}"]`, `the page did not list the event ${second}`);
  const ids = await page.$$eval('#events li', (entries) => entries.map((entry) => entry.getAttribute('data-id')));
  assert.deepEqual(ids, [posted, second], `each posted event listed once, in order\n${await report()}`);
  assert.deepEqual(pageErrors, [], await report());
  await page.close();
});

/** Posts an event of a type no app knows, as any producer would; resolves to its id. */
async function postEvent() {
  const id = randomUUID();
  const response = await fetch(`${server.url}/events`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      id,
      createdAt: new Date().toISOString(),
      aggregateId: 'vite-check',
      eventType: 'ViteCheckPinged',
      eventJson: JSON.stringify({ from: 'vite.test.mjs' }),
    }),
  });
  assert.equal(response.status, 201, `POST /events answered ${response.status}: ${await response.text()}`);
  return id;
}
