// Tabs of one app in real headless Chromium (Debian's, driven by playwright-core), served
// with the package by the real server binary over HTTP/1.1: eight tabs share one live
// connection and each receives every event once, in order; when the tab that holds the
// connection closes or crashes, another takes over with nothing lost or repeated; tabs
// that join while events come miss nothing and repeat nothing.
// Build first: scripts/build-web.sh, and the server (see browser.mjs for which binary).
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { launchBrowser, openWindow, post, receivedOf, record, spread, startServer, staticDir, storedEvents, unique, until } from './browser.mjs';

/** A generous bound on an event's way from the server to every tab; the figures are printed. */
const LATENCY_BOUND = 10_000;

let server;
let browser;

before(async () => {
  server = await startServer(staticDir());
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});


/** The last status each tab heard, as "tab 1: live (stream)". */
async function states(win) {
  const all = await Promise.all(win.tabs.map(async (page) => `${win.name(page)}: ${await win.state(page)}`));
  return all.join(', ');
}

function describeReads(win) {
  const reads = win.openReads();
  return `${reads.length} open GET /events: ${reads.map((read) => `${read.tab} ${read.stream ? 'stream' : 'poll'}`).join(', ') || 'none'}`;
}

/** Asserts the tab received `ids` exactly once each and in this order; returns its events of them. */
async function assertOnceInOrder(win, page, ids) {
  const got = await receivedOf(page, ids);
  assert.deepEqual(
    got.map((event) => event.id),
    ids,
    `${win.name(page)} received ${got.length} of the ${ids.length} events, in this order (a repeat or a gap shows here)`,
  );
  return got;
}

/** Posts `count` events of `eventType` from Node; returns their ids and when each was posted. */
async function publishFromNode(count, eventType, { between } = {}) {
  const ids = [];
  const postedAt = new Map();
  for (let n = 0; n < count; n++) {
    const event = record(eventType, { n }, 'tabs');
    postedAt.set(event.id, Date.now());
    await post(server, event);
    ids.push(event.id);
    await between?.(n);
  }
  return { ids, postedAt };
}

/** Prints each tab's latency (max and median, ms) for `ids`, and asserts the bound. */
async function latencies(win, what, ids, sentAt, pages = win.tabs) {
  for (const page of pages) {
    const got = await receivedOf(page, ids);
    const { max, median } = spread(got.map((event) => event.receivedAt - sentAt.get(event.id)));
    console.log(`${what}: ${win.name(page)}: max ${max} ms, median ${median} ms over ${got.length} events`);
    assert.ok(max < LATENCY_BOUND, `${win.name(page)} received an event ${max} ms after it was published (${what})`);
  }
}

/** @type {Awaited<ReturnType<typeof openWindow>>} */
let eight;

test('eight tabs of one app hold ONE live connection between them', { timeout: 60_000 }, async () => {
  eight = await openWindow(browser, server);
  // Default options (streaming, from now on); autoForward so that a tab can publish too.
  // Chromium opens at most 6 HTTP/1.1 connections per host: with a stream per tab the 7th
  // and 8th tabs wait for a connection that never frees, for their page or their stream.
  for (let n = 0; n < 8; n++) await eight.openTab({ autoForward: true }, { load: false });
  await until(
    async () => eight.openReads().length === 1 && (await states(eight)).split(', ').every((state) => state.includes(': live')),
    async () => `the eight tabs should share one live connection; ${describeReads(eight)}; statuses: ${await states(eight)}`,
  );
  console.log(`eight tabs: ${describeReads(eight)}`);
});

test('every tab receives every event from elsewhere once and in order; one published in the eighth reaches all eight', { timeout: 60_000 }, async () => {
  const notLive = (await states(eight)).split(', ').filter((state) => !state.includes(': live'));
  assert.deepEqual(notLive, [], 'every tab is live (see the test before)');
  const eventType = unique('Tabs');
  const { ids, postedAt } = await publishFromNode(20, eventType);
  for (const page of eight.tabs) {
    await eight.waitForEvents(page, ids);
    await assertOnceInOrder(eight, page, ids);
  }
  await latencies(eight, 'from Node', ids, postedAt);

  const eighth = eight.tabs[7];
  const { id, at } = await eighth.evaluate((type) => {
    const at = Date.now();
    return { id: window.client.publish(type, { from: 'tab 8' }, { aggregateId: 'tabs' }), at };
  }, eventType);
  // Stored before the next one is posted, so every tab has the same order.
  await eight.waitInTab(eighth, 'the receipt of its own event', (own) => window.stored.some((receipt) => receipt.id === own), id);
  // A last event from Node: once it is in, a repeat of the ones before would be too.
  const { ids: [last], postedAt: lastAt } = await publishFromNode(1, eventType);
  for (const page of eight.tabs) {
    await eight.waitForEvents(page, [id, last]);
    // The eighth tab included: its own event once, from its publish.
    await assertOnceInOrder(eight, page, [...ids, id, last]);
  }
  await latencies(eight, 'from tab 8', [id], new Map([[id, at]]));
  await latencies(eight, 'from Node, after', [last], lastAt);
  assert.deepEqual(eight.pageErrors, []);
  await eight.close();
});

/**
 * Four tabs; the leader (the tab whose client holds the stream) goes by `end(page)` while
 * events are being published: the others receive every event once, in order.
 */
async function takeover(how, end) {
  await eight?.close(); // whatever the tests before left open
  const win = await openWindow(browser, server);
  for (let n = 0; n < 4; n++) await win.openTab({});
  await Promise.all(win.tabs.map((page) => win.waitForState(page, 'live')));
  await until(
    () => win.readers().length >= 1,
    () => `no tab holds a GET /events; ${describeReads(win)}`,
  );
  const readers = win.readers();
  if (readers.length > 1) console.log(`takeover: ${readers.length} tabs hold a read (no single leader); the first ${how}`);
  const leader = readers[0];
  const leaderName = win.name(leader);
  const others = win.tabs.filter((page) => page !== leader);

  const eventType = unique('Takeover');
  let endedAt = 0;
  const { ids, postedAt } = await publishFromNode(40, eventType, {
    between: async (n) => {
      if (n === 9) {
        endedAt = Date.now();
        await end(leader);
      }
      // Paced, so that the handover falls among the events.
      await new Promise((resolve) => setTimeout(resolve, 25));
    },
  });
  for (const page of others) {
    await win.waitForEvents(page, ids);
    await assertOnceInOrder(win, page, ids);
  }
  await until(
    () => win.readers().some((page) => others.includes(page)),
    () => `no other tab took the connection over after ${leaderName} ${how}; ${describeReads(win)}`,
  );
  console.log(`takeover: ${leaderName} ${how}; now ${describeReads(win)}`);
  const afterEnd = ids.filter((id) => postedAt.get(id) >= endedAt);
  await latencies(win, `posted after the leader ${how}`, afterEnd, postedAt, others);
  assert.deepEqual(win.pageErrors, []);
  await win.close();
}

test('when the tab that holds the connection closes, another takes over: nothing lost, nothing twice', { timeout: 60_000 }, () =>
  takeover('closed', (page) => page.close()),
);

test('when the tab that holds the connection crashes, another takes over: nothing lost, nothing twice', { timeout: 60_000 }, () =>
  takeover('crashed', async (page) => {
    // No pagehide, no goodbye: the renderer is gone, and with it the lock it held.
    const crashed = new Promise((resolve) => page.once('crash', resolve));
    const cdp = await page.context().newCDPSession(page);
    cdp.send('Page.crash').catch(() => {}); // never answers: the page is gone
    await crashed;
  }),
);

/**
 * Nine tabs with `options`: one, then two rounds of four at once while events are published as fast as
 * the server takes them (the leader's pages keep coming while a tab joins). Returns the
 * server's whole log (ending with a last event) and each tab's received ids.
 */
async function joinWhileEventsCome(options) {
  const win = await openWindow(browser, server);
  const eventType = unique('Join');
  let publishing = true;
  let posted = 0;
  const publisher = (async () => {
    while (publishing) await post(server, record(eventType, { n: posted++ }, 'join'));
  })();
  await win.waitForState(await win.openTab(options), 'live');
  // Two rounds of four, each round at once: every join is a chance for a race.
  for (let round = 0; round < 2; round++) {
    const joining = await Promise.all([1, 2, 3, 4].map(() => win.openTab(options)));
    await Promise.all(joining.map((page) => win.waitForState(page, 'live')));
  }
  publishing = false;
  await publisher;
  const last = record(eventType, { last: true }, 'join');
  await post(server, last);

  const log = (await storedEvents(server)).map((event) => event.id);
  assert.equal(log.at(-1), last.id);
  const received = new Map();
  for (const page of win.tabs) {
    await win.waitForEvents(page, [last.id]);
    received.set(win.name(page), await page.evaluate(() => window.received.map((event) => event.id)));
  }
  assert.deepEqual(win.pageErrors, []);
  await win.close();
  return { log, received, posted };
}

test('tabs that replay the log from position 0, joining while events come, each get the whole log once, in order', { timeout: 60_000 }, async () => {
  // As the demo does: each tab replays everything stored, then follows live. A tab that
  // joins behind the leader catches up by itself.
  const { log, received, posted } = await joinWhileEventsCome({ initialPosition: 0 });
  for (const [tab, got] of received) {
    const missing = log.filter((id) => !got.includes(id)).length;
    assert.equal(got.length, log.length, `${tab} received ${got.length} events of the ${log.length} stored (${missing} missing)`);
    assert.deepEqual(got, log, `${tab} received the whole log in the stored order`);
  }
  console.log(`replay: ${received.size} tabs each received the ${log.length} stored events once (${posted} posted while they joined)`);
});

test('tabs that follow from now on, joining while events come, get nothing from before and no gap after', { timeout: 60_000 }, async () => {
  const before = record(unique('Before'), {}, 'join');
  await post(server, before);
  const { log, received, posted } = await joinWhileEventsCome({});
  for (const [tab, got] of received) {
    assert.ok(!got.includes(before.id), `${tab} (from now on, the default) received an event stored before it started: ${got.length} events in all, the log holds ${log.length}`);
    // From where it started to the end, every event once, in order: a tail of the log.
    assert.deepEqual(got, log.slice(log.length - got.length), `${tab} received a gapless tail of the log, in order`);
  }
  console.log(`now: ${[...received].map(([tab, got]) => `${tab} ${got.length}`).join(', ')} of ${log.length} stored (${posted} posted while they joined)`);
});
