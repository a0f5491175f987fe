// The npm package's JS API in real headless Chromium against the real server binary: the
// browser transport (fetch, streams, timers, localStorage) and what an app calls. These
// are the JS-binding tests that lived in client-wasm/tests/web.rs (`js_client(...)`),
// ported with the same assertions, so that they outlive the Rust binding.
// Build first: scripts/build-web.sh, and the server (see browser.mjs for which binary).
import assert from 'node:assert/strict';
import { after, afterEach, before, test } from 'node:test';

import { launchBrowser, openWindow, post, record, startServer, staticDir, unique } from './browser.mjs';

let server;
let browser;
/** Each test in a window of its own (its own storage, locks and connections). */
let win;

before(async () => {
  server = await startServer(staticDir());
  browser = await launchBrowser();
});

afterEach(async () => {
  const errors = win?.pageErrors ?? [];
  // Closed even when the check fails: a window left open keeps its clients connected.
  await win?.close();
  win = undefined;
  assert.deepEqual(errors, [], 'no uncaught error in the page');
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

/** A tab of the test page with no client of its own: the test makes its clients there. */
async function page() {
  win = await openWindow(browser, server);
  return win.openTab();
}

/**
 * Runs `scenario` in the tab with `arg` (and the server's URL as `arg.server`); a failure
 * in the page comes back with what the tab logged and the server's log.
 */
async function inPage(tab, scenario, arg = {}) {
  const started = Date.now();
  try {
    return await tab.evaluate(scenario, { ...arg, server: server.url });
  } catch (error) {
    throw new Error(
      `${error.message}\n(after ${Date.now() - started} ms in the tab)\n` +
        `what the tab logged:\n${win?.log(tab) ?? '(nothing)'}\nthe server's log:\n${server.log() || '(nothing)'}`,
      { cause: error },
    );
  }
}

test('JS handlers get each event once, in the documented shape', async () => {
  const eventType = unique('Greeting');
  const seen = await inPage(await page(), async ({ server, eventType }) => {
    const writer = new EventBusClient({ serverUrl: server, autoForward: true });
    const reader = new EventBusClient({ serverUrl: server });
    await eventually('the reader to be live', () => reader.status.state === 'live');
    const [atWriter, atReader] = [[], []];
    writer.on(eventType, handler(atWriter));
    reader.on(eventType, handler(atReader));
    const id = writer.publish(eventType, { text: 'hi', n: 1 }, { aggregateId: 'g-1', context: { userId: 'u1', roles: ['admin'] } });
    const duringPublish = atWriter.length;
    await eventually("the reader's event", () => atReader.length === 1);
    const position = atReader[0].position;
    // At the writer: once, from the local publish; its echo was not dispatched again.
    // Handlers run on a microtask of the page that moved the cursor: a wrongly dispatched
    // echo would be in atWriter by the time this wait sees the cursor.
    await eventually("the writer's echo", () => writer.cursor >= position);
    const result = { id, duringPublish, atReader, atWriter: structuredClone(atWriter) };
    await writer.close();
    await reader.close();
    return result;
  }, { eventType });

  assert.equal(seen.duringPublish, 0, 'handlers never run inside publish');
  assert.equal(seen.atReader.length, 1);
  const [event] = seen.atReader;
  assert.equal(event.id, seen.id);
  assert.equal(event.eventType, eventType);
  assert.equal(event.aggregateId, 'g-1');
  assert.match(event.occurredAt, /Z$/);
  assert.equal(typeof event.position, 'number', 'a numeric position');
  assert.equal(event.context.userId, 'u1');
  assert.equal(JSON.stringify(event.context.roles), '["admin"]');
  assert.equal(event.payload.text, 'hi');
  assert.equal(seen.atWriter.length, 1);
  assert.equal(seen.atWriter[0].position, null, 'a local event has no position yet');
});

// docs/PROTOCOL.md, MAX_NESTING: the deepest event the server accepts.
test('the deepest event the server accepts reaches JS handlers whole', async () => {
  const limit = 64;
  const nested = (depth) => `${'['.repeat(depth)}1${']'.repeat(depth)}`;
  // A page holds context values 3 levels deep: the array, the record, the context.
  const [payload, contextValue] = [nested(limit), nested(limit - 3)];
  const seen = await inPage(await page(), async ({ server, eventType, payload, contextValue }) => {
    const writer = new EventBusClient({ serverUrl: server, autoForward: true });
    const reader = new EventBusClient({ serverUrl: server });
    await eventually('the reader to be live', () => reader.status.state === 'live');
    const [received, errors] = [[], []];
    reader.on(eventType, handler(received));
    writer.onError(handler(errors));
    writer.publish(eventType, JSON.parse(payload), { aggregateId: 'd-1', context: { deep: JSON.parse(contextValue) } });
    await eventually('the deep event at the reader', () => received.length === 1);
    const result = {
      payload: JSON.stringify(received[0].payload),
      context: JSON.stringify(received[0].context.deep),
      errors: errors.map((error) => `${error.code}: ${error.message}`),
    };
    await writer.close();
    await reader.close();
    return result;
  }, { eventType: unique('Deep'), payload, contextValue });

  assert.equal(seen.payload, payload);
  assert.equal(seen.context, contextValue);
  assert.deepEqual(seen.errors, [], 'the server refused the deepest event');
});

test('unsubscribing stops a handler', async () => {
  const seen = await inPage(await page(), async ({ server, eventType }) => {
    const client = new EventBusClient({ serverUrl: server, autoForward: true });
    const [kept, dropped] = [[], []];
    client.on(eventType, handler(kept));
    const unsubscribe = client.on('*', handler(dropped));
    client.publish(eventType, 1, { aggregateId: 'p' });
    await eventually('both handlers', () => kept.length === 1 && dropped.length === 1);
    unsubscribe();
    client.publish(eventType, 2, { aggregateId: 'p' });
    await eventually('the kept handler', () => kept.length === 2);
    await client.close();
    return { kept: kept.length, dropped: dropped.length };
  }, { eventType: unique('Ping') });
  assert.equal(seen.dropped, 1, 'no call after unsubscribe');
});

test('close aborts the waiting request and ends everything', async () => {
  const seen = await inPage(await page(), async ({ server }) => {
    trackFetches();
    const client = new EventBusClient({ serverUrl: server, getToken: null, transport: 'long-poll' });
    const statuses = [];
    client.onStatus(handler(statuses));
    await eventually('the client to be live', () => client.status.state === 'live');
    // The long-poll starts and waits at the server.
    await eventually('a long-poll waiting', () => fetchesStillRunning() >= 1);
    const running = fetchesStillRunning();
    await client.close();
    const result = {
      running,
      stillRunning: fetchesStillRunning(),
      abortedPending: fetchesAbortedWhilePending(),
      state: client.status.state,
    };
    await eventually('the closed status', () => statuses.at(-1)?.state === 'closed');
    try {
      client.publish('X', 1, { aggregateId: 'a' });
      result.publishAfterClose = 'no error';
    } catch (error) {
      result.publishAfterClose = { isError: error instanceof Error, code: error.code };
    }
    return result;
  });
  assert.ok(seen.running >= 1, 'a long-poll is waiting');
  assert.equal(seen.stillRunning, 0, 'no request left running');
  assert.ok(seen.abortedPending >= 1, 'the waiting long-poll was aborted');
  assert.equal(seen.state, 'closed');
  assert.deepEqual(seen.publishAfterClose, { isError: true, code: 'closed' }, 'publishing after close fails');
});

// By default the browser client streams (fetch and its body's ReadableStream); the status
// says so, and close() aborts the open stream.
test('by default events arrive by a stream that close aborts', async () => {
  const seen = await inPage(await page(), async ({ server, eventType }) => {
    trackFetches();
    const writer = new EventBusClient({ serverUrl: server, autoForward: true });
    const reader = new EventBusClient({ serverUrl: server });
    await eventually('the reader to be live by a stream', () => reader.status.transport === 'stream');
    const received = [];
    reader.on(eventType, handler(received));
    for (let n = 0; n < 3; n++) writer.publish(eventType, n, { aggregateId: 's-1' });
    await eventually('three events by the stream', () => received.length === 3);
    const result = { payloads: received.map((event) => event.payload), transport: reader.status.transport, open: openStreams() };
    await reader.close();
    await writer.close();
    result.openAfterClose = openStreams();
    return result;
  }, { eventType: unique('Streamed') });
  assert.deepEqual(seen.payloads, [0, 1, 2], 'once each, in order');
  assert.equal(seen.transport, 'stream');
  // web.rs asked for 2 (the writer's and the reader's); clients of one page now share one.
  assert.ok(seen.open >= 1, `an open stream (${seen.open})`);
  assert.equal(seen.openAfterClose, 0, 'close aborted the streams');
});

test('options and arguments fail with JS errors that say what to do', async () => {
  const tab = await page();
  const base = { serverUrl: server.url };
  const cases = [
    [{ serverUrl: 'ftp://example.com' }, 'http://'],
    [{ ...base, pollInterval: 100 }, 'pollInterval'],
    [{ ...base, live: false, pollingInterval: -5 }, 'pollingInterval'],
    [{ ...base, live: true, pollingInterval: 1000 }, 'set one of them'],
    [{ ...base, transport: 'websocket' }, 'transport must be'],
    [{ ...base, transport: 'stream', pollingInterval: 1000 }, 'leave them out'],
    [{ ...base, initialTimestamp: 'yesterday' }, 'RFC 3339'],
    [{ ...base, initialPosition: 1, initialTimestamp: '2024-01-01T00:00:00Z' }, 'not both'],
  ];
  for (const [options, mentions] of cases) {
    const error = await tab.evaluate((options) => {
      try {
        new EventBusClient(options);
        return null;
      } catch (error) {
        return { isError: error instanceof Error, code: error.code, name: error.name, message: error.message };
      }
    }, options);
    const what = JSON.stringify(options);
    assert.ok(error, `${what} is refused`);
    assert.ok(error.isError, what);
    assert.equal(error.code, 'invalid_options', what);
    assert.equal(error.name, 'EventBusClientError', what);
    assert.ok(error.message.includes(mentions), `${what}: ${error.message}`);
  }
  const refused = await inPage(tab, async ({ server }) => {
    const client = new EventBusClient({ serverUrl: server });
    const attempt = (...args) => {
      try {
        client.publish(...args);
        return null;
      } catch (error) {
        return { code: error.code, message: error.message };
      }
    };
    const result = { noAggregate: attempt('X', 1, {}), notJson: attempt('X', undefined, { aggregateId: 'a' }) };
    await client.close();
    return result;
  });
  assert.equal(refused.noAggregate?.code, 'invalid_event', 'aggregateId is required');
  assert.match(refused.noAggregate.message, /aggregateId/);
  assert.equal(refused.notJson?.code, 'invalid_event', 'undefined is no JSON');
});

test('a polling interval alone polls instead of long-polling', async () => {
  // A token of its own tells this client's requests from those of other clients.
  const token = unique('poll');
  const polls = await inPage(await page(), async ({ server, token }) => {
    trackFetches();
    const client = new EventBusClient({ serverUrl: server, pollingInterval: 50, getToken: () => token });
    const polls = () => urlsWithAuthorization(`Bearer ${token}`).filter((url) => url.includes('/events?'));
    // A long-polling client would be waiting at the server after its first poll.
    await eventually('three polls', () => polls().length >= 3);
    const result = polls();
    await client.close();
    return result;
  }, { token });
  assert.ok(polls.every((url) => !url.includes('wait=')), `no poll waits at the server: ${polls}`);
});

test('the token from getToken goes with every request', async () => {
  const authorization = await inPage(await page(), async ({ server }) => {
    trackFetches();
    await new EventBusClient({ serverUrl: server }).close();
    const client = new EventBusClient({ serverUrl: server, getToken: () => Promise.resolve('t-123') });
    await eventually('the client to be live', () => client.status.state === 'live');
    const result = lastAuthorization();
    await client.close();
    return result;
  });
  assert.equal(authorization, 'Bearer t-123');
});

test('a persisted cursor resumes after a reload with nothing lost or repeated', async () => {
  win = await openWindow(browser, server);
  const options = { persistCursor: true };
  const tab = await win.openTab(options);
  await win.waitForState(tab, 'live');
  const eventType = unique('Visit');
  const [first, missed, last] = [0, 1, 2].map((n) => record(eventType, n, 'v'));
  await post(server, first);
  await win.waitForEvents(tab, [first.id]);
  const key = `distributed-events:cursor:${server.url}`;
  // The page may go any time: the cursor is saved as it moves, not only at close().
  const { stored, cursor, position } = await win.waitInTab(
    tab,
    'the cursor saved past the event',
    ({ key, id }) => {
      const position = window.received.find((event) => event.id === id).position;
      const stored = Number(localStorage.getItem(key));
      return stored >= position && stored === window.client.cursor && { stored, cursor: window.client.cursor, position };
    },
    { key, id: first.id },
    { describe: ({ key }) => `localStorage ${key}: ${localStorage.getItem(key)}, cursor ${window.client.cursor}` },
  );
  assert.ok(stored >= position, 'saved past the event');
  assert.equal(stored, cursor);

  // The page is gone while an event is stored, then it comes back.
  await tab.goto('about:blank');
  await post(server, missed);
  await tab.goto(`${server.url}/?client=${encodeURIComponent(JSON.stringify(options))}`);
  await post(server, last);
  await win.waitForEvents(tab, [missed.id, last.id]);
  const payloads = await tab.evaluate((type) => window.received.filter((event) => event.eventType === type).map((event) => event.payload), eventType);
  assert.deepEqual(payloads, [1, 2], 'the missed event, and nothing again');
});

test('the status reports backingOff with the error and the retry time', async () => {
  const seen = await inPage(await page(), async () => {
    // Nothing listens on port 9 (discard): every request fails.
    const client = new EventBusClient({ serverUrl: 'http://127.0.0.1:9' });
    const statuses = [];
    client.onStatus(handler(statuses));
    await eventually('a backing-off status', () => statuses.some((status) => status.state === 'backingOff'));
    const backingOff = statuses.find((status) => status.state === 'backingOff');
    const result = {
      first: statuses[0].state,
      isError: backingOff.error instanceof Error,
      code: backingOff.error?.code,
      retryAt: backingOff.retryAt,
      now: Date.now(),
    };
    await client.close();
    // Ending in `closed`, after the backoff timer was cancelled.
    await eventually('the closed status', () => statuses.at(-1).state === 'closed');
    return result;
  });
  assert.equal(seen.first, 'connecting');
  assert.ok(seen.isError, 'the error is an Error');
  assert.equal(seen.code, 'network_error');
  assert.equal(typeof seen.retryAt, 'number', 'retryAt');
  assert.ok(seen.retryAt >= seen.now - 60_000, 'a time near now, in ms since the epoch');
});
