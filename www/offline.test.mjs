// Trouble a web app meets, in real headless Chromium against the real server binary: events
// published while the server is down survive a reload and are stored once when it comes
// back; the browser going offline and online again loses nothing and goes live at once;
// a hidden tab does not keep the connection when a visible one can take it.
// Build first: scripts/build-web.sh, and the server (see browser.mjs for which binary).
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { launchBrowser, openWindow, post, receivedOf, record, startServer, staticDir, storedEvents, unique, until } from './browser.mjs';

// After a restart a client retries on its backoff schedule (at most 30 s apart).
const RECOVERY_TIMEOUT = 60_000;
// Back online, a client should not wait out its backoff: live within this (printed).
const ONLINE_BOUND = 5_000;

let dir;
let server;
let browser;

before(async () => {
  dir = staticDir();
  server = await startServer(dir);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});


/** Publishes in the tab's client; returns the ids. */
function publishIn(page, eventType, count) {
  return page.evaluate(
    ({ type, count }) => Array.from({ length: count }, (_, n) => window.client.publish(type, { n }, { aggregateId: 'offline' })),
    { type: eventType, count },
  );
}

/** Asserts the tab received `ids` once each, in the order the server stored them. */
async function assertOnceInStoredOrder(win, page, ids) {
  const got = await receivedOf(page, ids);
  const byPosition = [...got].sort((a, b) => (a.position ?? Infinity) - (b.position ?? Infinity));
  assert.deepEqual(got.map((event) => event.id).sort(), [...ids].sort(), `${win.name(page)} received each event once`);
  assert.deepEqual(got.map((event) => event.id), byPosition.map((event) => event.id), `${win.name(page)} received them in the stored order`);
}

test('events published while the server is down survive a reload, and are stored and delivered once', { timeout: 120_000 }, async () => {
  const win = await openWindow(browser, server);
  const publisher = await win.openTab({ autoForward: true });
  const watchers = [await win.openTab({}), await win.openTab({})];
  await Promise.all(win.tabs.map((page) => win.waitForState(page, 'live')));

  // The app's shell comes from a cache (a service worker's, in a real app), so that a
  // page loads while the server is down.
  await win.cacheShell(dir);
  await server.stop();
  let newcomer;
  let ids;
  const eventType = unique('Outbox');
  try {
    await Promise.all(win.tabs.map((page) => win.waitForState(page, 'backingOff')));
    ids = await publishIn(publisher, eventType, 3);
    // An event is durable once IndexedDB has written it, a few milliseconds after publish
    // (js/README.md); a loaded machine stretches those, so the reload waits for the write.
    await win.waitInTab(publisher, 'the events written to IndexedDB', (count) =>
      new Promise((resolve) => {
        const request = indexedDB.open('distributed-events');
        request.onerror = () => resolve(false);
        request.onsuccess = () => {
          const db = request.result;
          try {
            const counting = db.transaction('outbox').objectStore('outbox').count();
            counting.onsuccess = () => resolve(counting.result >= count);
            counting.onerror = () => resolve(false);
          } catch {
            resolve(false);
          } finally {
            db.close();
          }
        };
      }), ids.length);
    // The page goes away before anything could be sent: reloaded, then closed for good.
    await publisher.reload();
    await win.waitInTab(publisher, 'the reloaded page', () => window.harnessReady === true);
    await publisher.close();
    newcomer = await win.openTab({ autoForward: true });
  } finally {
    // The same port and SQLite file: the server the pages knew, restarted.
    server = win.server = await startServer(dir, { bind: server.bind, database: server.database });
  }
  await Promise.all(win.tabs.map((page) => win.waitForState(page, 'live', RECOVERY_TIMEOUT)));
  let stored = [];
  await until(
    async () => {
      stored = (await storedEvents(server)).filter((event) => event.eventType === eventType);
      return stored.length >= ids.length;
    },
    () => `the server stores ${stored.length} of the 3 events published while it was down (the publishing page was reloaded and closed since); the server's log:\n${server.log()}`,
    RECOVERY_TIMEOUT,
  );
  assert.deepEqual(stored.map((event) => event.id), ids, 'each stored once, in the order published');
  for (const page of watchers) {
    await win.waitForEvents(page, ids, RECOVERY_TIMEOUT);
    await assertOnceInStoredOrder(win, page, ids);
  }
  // A last event: once it is in, a repeat of the three would be in too.
  const last = record(eventType, { last: true }, 'offline');
  await post(server, last);
  for (const page of [...watchers, newcomer]) await win.waitForEvents(page, [last.id]);
  for (const page of watchers) await assertOnceInStoredOrder(win, page, [...ids, last.id]);
  assert.equal((await storedEvents(server)).filter((event) => event.eventType === eventType).length, 4, 'nothing stored twice');
  assert.deepEqual(win.pageErrors, []);
  await win.close();
});

test('offline then online: backingOff, then live again at once; nothing lost', { timeout: 90_000 }, async () => {
  const win = await openWindow(browser, server);
  const [writer, reader] = [await win.openTab({ autoForward: true }), await win.openTab({})];
  await Promise.all(win.tabs.map((page) => win.waitForState(page, 'live')));

  const eventType = unique('Offline');
  const offlineAt = Date.now();
  await win.context.setOffline(true);
  await Promise.all(win.tabs.map((page) => win.waitForState(page, 'backingOff')));
  const fromNode = [];
  for (let n = 0; n < 3; n++) {
    const event = record(eventType, { n }, 'offline');
    await post(server, event);
    fromNode.push(event.id);
  }
  const fromTab = await publishIn(writer, eventType, 2);
  // Offline long enough for the backoff to grow past the bound, so that waiting it out
  // would show (or until it is clear that the client does not back off while offline).
  const { retryAt } = await win.waitInTab(
    writer,
    'a long backoff, or 20 s offline',
    ({ bound, since }) => {
      const status = window.statuses.at(-1);
      const long = status?.retryAt - Date.now() > bound || Date.now() - since > 20_000;
      return status?.state === 'backingOff' && long && { retryAt: status.retryAt ?? Date.now() };
    },
    { bound: ONLINE_BOUND, since: offlineAt },
    { timeout: 30_000 },
  );

  const onlineAt = Date.now();
  await win.context.setOffline(false);
  await Promise.all(win.tabs.map((page) => win.waitForState(page, 'live', RECOVERY_TIMEOUT)));
  const back = Date.now() - onlineAt;
  console.log(`offline: live again ${back} ms after online (the backoff said retry in ${retryAt - onlineAt} ms)`);
  assert.ok(back < ONLINE_BOUND, `live again ${back} ms after online: the client waited out its backoff (retry was due in ${retryAt - onlineAt} ms)`);

  const all = [...fromNode, ...fromTab];
  for (const page of win.tabs) await win.waitForEvents(page, all);
  await assertOnceInStoredOrder(win, reader, all);
  const writerGot = await receivedOf(writer, all);
  assert.deepEqual(writerGot.map((event) => event.id).sort(), [...all].sort(), 'the writer has each event once (its own from publish)');
  await until(
    async () => (await storedEvents(server)).filter((event) => event.eventType === eventType).length >= all.length,
    () => 'the events published offline were not stored',
  );
  const stored = (await storedEvents(server)).filter((event) => event.eventType === eventType).map((event) => event.id);
  assert.deepEqual([...stored].sort(), [...all].sort(), 'each stored once');
  assert.deepEqual(win.pageErrors, []);
  await win.close();
});

test('a hidden leader hands the connection to a visible tab', { timeout: 60_000 }, async () => {
  const win = await openWindow(browser, server);
  for (let n = 0; n < 3; n++) await win.openTab({});
  await Promise.all(win.tabs.map((page) => win.waitForState(page, 'live')));
  const describeReads = () => `open GET /events: ${win.openReads().map((read) => read.tab).join(', ') || 'none'}`;
  await until(() => win.readers().length === 1, () => `one tab should hold the connection; ${describeReads()}`);
  const [leader] = win.readers();

  // Headless Chromium shows every tab; this is what the page sees when its tab is hidden.
  await leader.evaluate(() => {
    Object.defineProperty(document, 'hidden', { configurable: true, get: () => true });
    Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => 'hidden' });
    document.dispatchEvent(new Event('visibilitychange'));
  });
  await until(
    () => win.readers().length === 1 && win.readers()[0] !== leader,
    () => `${win.name(leader)} was hidden and should hand the connection to a visible tab; ${describeReads()}`,
  );
  console.log(`hidden: ${win.name(leader)} hidden; ${describeReads()}`);

  const event = record(unique('Hidden'), {}, 'hidden');
  await post(server, event);
  for (const page of win.tabs) await win.waitForEvents(page, [event.id]);
  assert.deepEqual(win.pageErrors, []);
  await win.close();
});
