// The demo in real headless Chromium (Debian's, driven by playwright-core), served by the
// real server binary from www/dist: what a person would check with two tabs open.
// Build first: scripts/build-web.sh, and `cargo build --release -p distributed-events-server`.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { EventBusClient } from 'distributed-events';
import { chromium } from 'playwright-core';

import { startServer } from '../js/test/server.mjs';
import { recordPage } from './page-log.mjs';

const dist = fileURLToPath(new URL('dist', import.meta.url));
const screenshot = join(tmpdir(), 'distributed-events-demo.png');
// Generous: a wait ends as soon as the page shows what it waits for.
const TIMEOUT = 20_000;
// After a restart the client retries on its backoff schedule (at most 30 s apart).
const RECOVERY_TIMEOUT = 60_000;

/** @type {Awaited<ReturnType<typeof startServer>>} */
let server;
/** @type {import('playwright-core').Browser} */
let browser;
/** @type {import('playwright-core').BrowserContext} */
let context;
/** Uncaught errors of every page: there must be none. */
const pageErrors = [];

before(async () => {
  if (!existsSync(join(dist, 'index.html'))) throw new Error(`no demo in ${dist}: run scripts/build-web.sh first`);
  server = await startServer({ args: ['--static-dir', dist] });
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run'],
  });
  // One context: the pages are tabs of one browser window.
  context = await browser.newContext({ viewport: { width: 1100, height: 900 } });
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

/** What each tab said (console, errors, failed requests), for the message of a failed wait. */
const tabLogs = new WeakMap();

/** A new tab with the board, once it is live. */
async function openBoard() {
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  tabLogs.set(page, recordPage(page, pageErrors));
  await page.goto(server.url);
  await waitForStatus(page, 'live');
  return page;
}

/** Waits until the tab's status indicator shows `state`; says what the tab showed if not. */
async function waitForStatus(page, state, timeout = TIMEOUT) {
  try {
    await page.locator(`#status[data-state="${state}"]`).waitFor({ timeout });
  } catch (error) {
    const shown = await page
      .locator('#status')
      .evaluate((status) => `${status.dataset.state} ("${status.textContent.trim()}", title "${status.title}")`, null, { timeout: 1000 })
      .catch((unreadable) => `nothing readable (${unreadable.message})`);
    const said = tabLogs.get(page)?.join('\n') || '(nothing)';
    throw new Error(
      `the tab did not show status ${state} within ${timeout} ms; it shows ${shown}\n` +
        `what the tab logged:\n${said}\nthe server's log:\n${server.log() || '(nothing)'}`,
      { cause: error },
    );
  }
}

async function placeOrder(page, customer) {
  // As a person would: switch to the tab first. The other tab is in the background then,
  // where Chromium throttles timers; events must reach it all the same.
  await page.bringToFront();
  await page.fill('input[name="customer"]', customer);
  await page.selectOption('select[name="item"]', 'Latte');
  await page.fill('input[name="quantity"]', '2');
  await page.click('button[type="submit"]');
}

/** The order's card in `stage`'s column; waits until it is there. */
async function card(page, stage, customer) {
  const found = page.locator(`.column[data-stage="${stage}"] .order`, { hasText: customer });
  await found.waitFor();
  return found;
}

/** The ids of the events in the page's log, oldest first. */
function loggedIds(page) {
  return page.$$eval('#log li[data-id]', (entries) => entries.map((entry) => entry.dataset.id).reverse());
}

/** The customers in each column, as the board shows them. */
function board(page) {
  return page.$$eval('.column', (columns) =>
    columns.map((column) => [column.dataset.stage, [...column.querySelectorAll('.order strong')].map((name) => name.textContent)]),
  );
}

function assertNoRepeats(ids) {
  assert.equal(new Set(ids).size, ids.length, `an event appears twice in ${ids}`);
}

/** The log line of the event `id`; waits until it is there. */
async function logLine(page, id) {
  const found = page.locator(`#log li[data-id="${id}"]`);
  await found.waitFor();
  return found;
}

/** Publishes from Node with the package, exactly as js/README.md's quick start does. */
async function publishFromElsewhere(eventType, payload, aggregateId) {
  const client = new EventBusClient({ serverUrl: server.url, autoForward: true });
  try {
    const stored = new Promise((resolve, reject) => {
      client.onStored(resolve);
      client.onError(reject);
    });
    const id = client.publish(eventType, payload, { aggregateId });
    assert.equal((await stored).id, id, 'the server stored it');
    return id;
  } finally {
    await client.close();
  }
}

let tabA;
let tabB;

test('an order placed in one tab appears in the other, and moving it there shows in the first', async () => {
  [tabA, tabB] = [await openBoard(), await openBoard()];

  await placeOrder(tabA, 'Ada');
  await card(tabA, 'placed', 'Ada');
  await card(tabB, 'placed', 'Ada');

  await tabB.bringToFront();
  await (await card(tabB, 'placed', 'Ada')).getByRole('button', { name: 'Start' }).click();
  await card(tabA, 'preparing', 'Ada');
  await card(tabB, 'preparing', 'Ada');
  assert.deepEqual(pageErrors, []);
});

test("an order as the README's quick start places it (no quantity) shows its item, not 'undefined'", async () => {
  const id = await publishFromElsewhere('OrderPlaced', { customer: 'Hopper', item: 'Latte' }, 'order-Hopper');
  for (const tab of [tabA, tabB]) {
    const what = (await card(tab, 'placed', 'Hopper')).locator('.what');
    assert.equal(await what.textContent(), 'Latte');
    assert.doesNotMatch(await (await logLine(tab, id)).textContent(), /undefined/);
  }
  assert.deepEqual(pageErrors, []);
});

test('a name of spaces is refused in the form; a blank name from elsewhere shows as unnamed', async () => {
  await tabA.bringToFront();
  const logged = (await loggedIds(tabA)).length;
  await tabA.fill('input[name="customer"]', '   ');
  await tabA.click('button[type="submit"]');
  const refused = await tabA.locator('input[name="customer"]').evaluate((input) => input.validity.patternMismatch);
  assert.ok(refused, 'the browser refuses the name as not matching the pattern');
  // The next order is the only new line: the refused one was never published.
  await placeOrder(tabA, 'Kay');
  await card(tabA, 'placed', 'Kay');
  assert.equal((await loggedIds(tabA)).length, logged + 1, 'one new event, the valid order');

  const id = await publishFromElsewhere('OrderPlaced', { customer: '  ', item: 'Chai' }, 'order-blank');
  for (const tab of [tabA, tabB]) {
    await card(tab, 'placed', 'Unnamed customer');
    assert.match(await (await logLine(tab, id)).textContent(), /Unnamed customer: Chai/);
  }
  assert.deepEqual(pageErrors, []);
});

test("a tab's own event shows the position the server stored it at", async () => {
  await placeOrder(tabA, 'Lovelace');
  await card(tabB, 'placed', 'Lovelace');
  // The other tab received it from the server, with its position.
  const id = await tabB.locator('#log li', { hasText: 'Lovelace' }).getAttribute('data-id');
  const stored = await (await logLine(tabB, id)).locator('.position').textContent();
  assert.match(stored, /^#\d+$/);
  // The publishing tab learns it from the server's receipt.
  await (await logLine(tabA, id)).locator('.position', { hasText: stored }).waitFor();
  assert.deepEqual(pageErrors, []);
});

test('the log shows the date of an event not from today, and only the time for today', async () => {
  const record = {
    id: randomUUID(),
    createdAt: '2024-03-05T10:00:00Z',
    aggregateId: 'order-old',
    eventType: 'OrderPlaced',
    eventJson: JSON.stringify({ customer: 'Dijkstra', item: 'Espresso', quantity: 1 }),
    userId: null,
    tenantId: null,
    sessionId: null,
  };
  const answer = await fetch(`${server.url}/events`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(record) });
  assert.equal(answer.status, 201, await answer.text());
  const old = (await logLine(tabA, record.id)).locator('time');
  assert.match(await old.textContent(), /2024/, 'the year is shown');
  assert.equal(await old.getAttribute('datetime'), record.createdAt);
  const [todayId] = (await loggedIds(tabA)).slice(-2, -1);
  const today = await (await logLine(tabA, todayId)).locator('time').textContent();
  assert.doesNotMatch(today, new RegExp(String(new Date().getFullYear())), `only the time of day: ${today}`);
  assert.deepEqual(pageErrors, []);
});

test('a reloaded tab shows every event once, and the same board', async () => {
  for (const name of ['Grace', 'Linus', 'Barbara']) await placeOrder(tabA, name);
  await card(tabB, 'placed', 'Barbara');
  await tabA.bringToFront();
  await (await card(tabA, 'placed', 'Grace')).getByRole('button', { name: 'Start' }).click();
  await card(tabB, 'preparing', 'Grace');
  const before = await loggedIds(tabB);
  const boardBefore = await board(tabB);

  await tabB.reload();
  await waitForStatus(tabB, 'live');
  // One more event: once it shows, everything stored before it has been replayed.
  await placeOrder(tabA, 'Edsger');
  await card(tabB, 'placed', 'Edsger');
  const afterReload = await loggedIds(tabB);
  assertNoRepeats(afterReload);
  assert.deepEqual(afterReload.slice(0, -1), before, 'the reloaded tab lists the same events in the same order');
  assert.deepEqual(afterReload.at(-1), (await loggedIds(tabA)).at(-1));
  const boardAfter = await board(tabB);
  assert.deepEqual(boardAfter.map(([stage, names]) => [stage, names.filter((name) => name !== 'Edsger')]), boardBefore);
  assert.deepEqual(pageErrors, []);
});

test('when the server stops and comes back, the tabs recover by themselves; nothing lost, nothing twice', async () => {
  await server.stop();
  await Promise.all([waitForStatus(tabA, 'backingOff'), waitForStatus(tabB, 'backingOff')]);
  // Placed while the server is down: tab A keeps it and sends it once the server is back.
  await placeOrder(tabA, 'Margaret');
  await card(tabA, 'placed', 'Margaret');

  // Same port and the same SQLite file: the server the pages knew, restarted.
  server = await startServer({ bind: server.bind, database: server.database, args: ['--static-dir', dist] });
  await Promise.all([waitForStatus(tabA, 'live', RECOVERY_TIMEOUT), waitForStatus(tabB, 'live', RECOVERY_TIMEOUT)]);
  await card(tabB, 'placed', 'Margaret');
  await placeOrder(tabB, 'Alan');
  await card(tabA, 'placed', 'Alan');

  const [idsA, idsB] = [await loggedIds(tabA), await loggedIds(tabB)];
  assertNoRepeats(idsA);
  assertNoRepeats(idsB);
  assert.deepEqual([...idsB].sort(), [...idsA].sort(), 'both tabs saw the same events');
  assert.deepEqual(pageErrors, []);

  await tabB.screenshot({ path: screenshot, fullPage: true });
  console.log(`screenshot: ${screenshot}`);
});
