// What the review of the JS driver (js/src/client.js, js/src/tabs.js) found, each as a test
// in real headless Chromium against the real server binary: a follower's publish then close
// throws nothing; a getToken that never settles holds up neither close() nor the handover;
// without IndexedDB a leader that steps down leaves its event to the next one; a leader that
// stepped down while a send backed off is not stuck on backingOff when it leads again.
// Build first: scripts/build-web.sh, and the server (see browser.mjs for which binary).
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { TIMEOUT, launchBrowser, openWindow, post, record, startServer, staticDir, storedEvents, unique, until } from './browser.mjs';

// After a restart a client retries on its backoff schedule (at most 30 s apart).
const RECOVERY_TIMEOUT = 60_000;
// close() with a getToken that never settles must still end.
const CLOSE_BOUND = 10_000;

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


/** The events of `eventType` the server stores. */
async function storedOf(eventType) {
  return (await storedEvents(server)).filter((event) => event.eventType === eventType);
}

/** Waits until the server stores an event of `eventType`, then asserts it is `id`, stored once. */
async function assertStoredOnce(eventType, id, what) {
  let stored = [];
  await until(
    async () => (stored = await storedOf(eventType)).length >= 1,
    () => `the server never stored the event ${what}; the server's log:\n${server.log()}`,
    RECOVERY_TIMEOUT,
  );
  assert.deepEqual(stored.map((event) => event.id), [id], `the event ${what} is stored once (the server holds ${stored.length} of its type)`);
}

/** Stops the server; returns the function that restarts it (same port, same SQLite file). */
async function serverDown(win) {
  await server.stop();
  return async () => {
    server = win.server = await startServer(dir, { bind: server.bind, database: server.database });
  };
}

/** How many fetches the tab made so far (track-fetches.js): a mark for `waitForFetch`. */
const fetchMark = (page) => page.evaluate(() => window.__fetches.length);

/** Waits until a `method /events` fetch the tab made after `mark` has ended (failed, with the server down). */
function waitForFetch(win, page, what, method, mark, timeout = TIMEOUT) {
  return win.waitInTab(
    page,
    what,
    ({ method, mark }) =>
      window.__fetches.slice(mark).some((f) => f.request.method === method && new URL(f.request.url).pathname === '/events' && f.settled),
    { method, mark },
    {
      timeout,
      describe: () =>
        JSON.stringify({
          fetches: window.__fetches.slice(-5).map((f) => `${f.request.method} ${f.request.url} settled: ${f.settled}`),
          statuses: window.statuses.slice(-5),
          errors: window.errors,
        }),
    },
  );
}

/** What the page sees when its tab is hidden (headless Chromium shows every tab), or shown again. */
function setHidden(page, hidden) {
  return page.evaluate((hidden) => {
    if (hidden) {
      Object.defineProperty(document, 'hidden', { configurable: true, get: () => true });
      Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => 'hidden' });
    } else {
      // The document's own getters (on Document.prototype) again.
      delete document.hidden;
      delete document.visibilityState;
    }
    document.dispatchEvent(new Event('visibilitychange'));
  }, hidden);
}

/**
 * Starts a client in a tab opened without one, recording as the test page's harness does;
 * `getToken` is 'never' (a Promise that never settles) or 'works'.
 */
function startClient(page, options, getToken) {
  return page.evaluate(
    ({ options, getToken }) => {
      const token = getToken === 'never' ? () => new Promise(() => {}) : () => 'test-token';
      const client = new window.EventBusClient({ serverUrl: location.origin, ...options, getToken: token });
      client.on('*', (event) => window.received.push({ ...event, receivedAt: Date.now() }));
      client.onStatus((status) =>
        window.statuses.push({ state: status.state, transport: status.transport, code: status.error?.code, message: status.error?.message, retryAt: status.retryAt, at: Date.now() }),
      );
      client.onStored((receipt) => window.stored.push(receipt));
      client.onError((error) => window.errors.push({ code: error.code, message: error.message }));
      window.client = client;
    },
    { options, getToken },
  );
}

/** Opens two tabs with `options` and waits until both are live and the first holds the connection. */
async function leaderAndFollower(win, options) {
  const leader = await win.openTab(options);
  await win.waitForState(leader, 'live');
  const follower = await win.openTab(options);
  await win.waitForState(follower, 'live');
  await until(
    () => win.readers().length === 1 && win.readers()[0] === leader,
    () => `tab 1 (opened first) should hold the connection alone; open GET /events: ${win.openReads().map((read) => read.tab).join(', ') || 'none'}`,
  );
  return { leader, follower };
}

test('a follower that publishes and closes at once throws nothing, and its event is stored once', { timeout: 60_000 }, async () => {
  const win = await openWindow(browser, server);
  const { leader, follower } = await leaderAndFollower(win, { autoForward: true });
  const eventType = unique('PublishClose');
  // The IndexedDB write ends after close(): the driver must not post to its closed channel then.
  const { id, closed } = await follower.evaluate(async (type) => {
    const id = window.client.publish(type, { n: 1 }, { aggregateId: 'resilience' });
    await window.client.close();
    return { id, closed: window.lastState() };
  }, eventType);
  assert.equal(closed, 'closed');
  // close() waits for the write and tells the leader, which sends it with nothing else to prompt it.
  await assertStoredOnce(eventType, id, 'the closed follower published');
  assert.deepEqual(win.pageErrors.map((error) => error.message), [], 'no page threw (a post to a closed BroadcastChannel shows here)');
  await win.close();
});

test("a leader's close() ends though its getToken never settles, and another tab takes over", { timeout: 60_000 }, async () => {
  const win = await openWindow(browser, server);
  const stuck = await win.openTab();
  await startClient(stuck, {}, 'never');
  // The first client of the group leads: it holds the lock (and waits for a token forever).
  await win.waitInTab(stuck, 'the client taking the lead', async () => (await navigator.locks.query()).held.some((lock) => lock.name.startsWith('distributed-events:')));
  const other = await win.openTab();
  await startClient(other, {}, 'works');
  assert.deepEqual(win.readers(), [], 'no tab reads yet: the leader waits for its token');

  const startedAt = Date.now();
  const closing = await stuck.evaluate(
    (bound) => Promise.race([window.client.close().then(() => 'resolved'), new Promise((resolve) => setTimeout(resolve, bound, 'still pending'))]),
    CLOSE_BOUND,
  );
  assert.equal(closing, 'resolved', `close() of the leader whose getToken never settles is ${closing} after ${CLOSE_BOUND} ms`);
  console.log(`getToken never settles: close() resolved in ${Date.now() - startedAt} ms`);
  await win.waitForState(other, 'live');
  await until(
    () => win.readers().includes(other),
    () => `tab 2 should hold the connection once tab 1 closed; open GET /events: ${win.openReads().map((read) => read.tab).join(', ') || 'none'}`,
  );
  const event = record(unique('Token'), {}, 'resilience');
  await post(server, event);
  await win.waitForEvents(other, [event.id]);
  assert.deepEqual(win.pageErrors.map((error) => error.message), []);
  await win.close();
});

test("without IndexedDB, a leader's event published while the server is down is stored once by the next leader", { timeout: 120_000 }, async () => {
  const win = await openWindow(browser, server);
  // A browser whose IndexedDB cannot be opened (a private window, say): opening fails.
  await win.context.addInitScript(() => {
    IDBFactory.prototype.open = function () {
      const request = { result: undefined, error: new DOMException('IndexedDB is off in this test', 'UnknownError'), readyState: 'pending' };
      window.indexedDbRefused = (window.indexedDbRefused ?? 0) + 1;
      setTimeout(() => {
        request.readyState = 'done';
        request.onerror?.({ type: 'error', target: request });
      });
      return request;
    };
  });
  const { leader, follower } = await leaderAndFollower(win, { autoForward: true });
  assert.ok(await leader.evaluate(() => window.indexedDbRefused > 0), 'the client tried IndexedDB, and was refused');

  const restart = await serverDown(win);
  const eventType = unique('NoIndexedDb');
  let id;
  try {
    await Promise.all(win.tabs.map((page) => win.waitForState(page, 'backingOff')));
    const mark = await fetchMark(leader);
    id = await leader.evaluate((type) => window.client.publish(type, { n: 1 }, { aggregateId: 'resilience' }), eventType);
    await waitForFetch(win, leader, 'a failed POST of its event (the server is down)', 'POST', mark);
    // Hidden: the leader hands over to the visible tab, which must get the event from it.
    const followerMark = await fetchMark(follower);
    await setHidden(leader, true);
    await waitForFetch(win, follower, `a POST of the event tab 1 published before it was hidden (tab 2 leads now)`, 'POST', followerMark);
  } finally {
    await restart();
  }
  await assertStoredOnce(eventType, id, 'the hidden leader published without IndexedDB');
  await win.waitInTab(leader, 'onStored for its event (sent by tab 2)', (own) => window.stored.some((receipt) => receipt.id === own), id, { timeout: RECOVERY_TIMEOUT });
  await win.waitForState(follower, 'live', RECOVERY_TIMEOUT);
  assert.equal((await storedOf(eventType)).length, 1, 'still stored once');
  assert.deepEqual(win.pageErrors.map((error) => error.message), []);
  await win.close();
});

test('a leader that stepped down while its send backed off goes live when it leads again', { timeout: 120_000 }, async () => {
  const win = await openWindow(browser, server);
  const { leader, follower } = await leaderAndFollower(win, { autoForward: true });
  const restart = await serverDown(win);
  const eventType = unique('SteppedDown');
  let id;
  try {
    await Promise.all(win.tabs.map((page) => win.waitForState(page, 'backingOff')));
    const mark = await fetchMark(leader);
    id = await leader.evaluate((type) => window.client.publish(type, { n: 1 }, { aggregateId: 'resilience' }), eventType);
    await waitForFetch(win, leader, 'a failed POST of its event (the server is down)', 'POST', mark);
    const followerMark = await fetchMark(follower);
    await setHidden(leader, true);
    await waitForFetch(win, follower, 'a POST of the persisted event (tab 2 leads now)', 'POST', followerMark);
  } finally {
    await restart();
  }
  await win.waitForState(follower, 'live', RECOVERY_TIMEOUT);
  await assertStoredOnce(eventType, id, 'published before the leader stepped down');

  // Tab 1 shown again, tab 2 gone: tab 1 leads again, the server up, its outbox empty.
  await setHidden(leader, false);
  await follower.close();
  await until(
    () => win.readers().includes(leader),
    () => `tab 1 should lead again once tab 2 closed; open GET /events: ${win.openReads().map((read) => read.tab).join(', ') || 'none'}`,
  );
  await win.waitForState(leader, 'live');
  // Live for good: a status of the old send's backoff would come on top of it.
  const event = record(unique('After'), {}, 'resilience');
  await post(server, event);
  await win.waitForEvents(leader, [event.id]);
  assert.equal(await leader.evaluate(() => window.lastState()), 'live', 'tab 1 stays live');
  assert.equal((await storedOf(eventType)).length, 1, 'still stored once');
  assert.deepEqual(win.pageErrors.map((error) => error.message), []);
  await win.close();
});
