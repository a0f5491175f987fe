// The npm package in Node, against the real server binary (see server.mjs). It is
// imported by its name, so these tests go through package.json's `exports` as an app's
// import would.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { EventBusClient } from 'distributed-events';

import { explainWith, record, statusReaches, within } from './helpers.mjs';
import { startServer } from './server.mjs';

/** @type {Awaited<ReturnType<typeof startServer>>} */
let server;
/** @type {EventBusClient[]} */
const clients = [];

before(async () => {
  server = await startServer();
  explainWith(() => `the server's log:\n${server.log() || '(nothing)'}`);
});

after(async () => {
  await Promise.all(clients.map((client) => client.close()));
  await server?.stop();
});

/** A client of the test server, closed after the tests. */
function client(options = {}) {
  const created = new EventBusClient({ serverUrl: server.url, ...options });
  clients.push(created);
  return created;
}

test('events published by one client reach another once each, in order, as published', async () => {
  const publisher = client({ autoForward: true });
  const receiver = client();
  const received = record(receiver, 'PackageTested');
  // The receiver starts with the events stored from now on: let it learn where "now" is.
  await statusReaches(receiver, 'live');

  const published = [];
  for (let n = 0; n < 25; n++) {
    const payload = { n, text: `event ${n}`, nested: { list: [n, null, true] } };
    const id = publisher.publish('PackageTested', payload, { aggregateId: `test-${n % 3}`, context: { tenantId: 't1', roles: ['a'] } });
    published.push({ id, payload, aggregateId: `test-${n % 3}` });
  }
  // One more event after all of them: a repeat of any earlier one would arrive before it.
  const last = publisher.publish('PackageTested', { n: 'last' }, { aggregateId: 'test-last' });

  const events = await received.waitFor(published.length + 1);
  assert.deepEqual(events.map((event) => event.id), [...published.map((event) => event.id), last]);
  for (const [i, event] of events.slice(0, -1).entries()) {
    assert.equal(event.eventType, 'PackageTested');
    assert.equal(event.aggregateId, published[i].aggregateId);
    assert.deepEqual(event.payload, published[i].payload);
    assert.deepEqual(event.context, { tenantId: 't1', roles: ['a'] });
    assert.ok(!Number.isNaN(Date.parse(event.occurredAt)), `occurredAt ${event.occurredAt} is a time`);
  }
  const positions = events.map((event) => event.position);
  assert.ok(positions.every((position, i) => Number.isInteger(position) && (i === 0 || position > positions[i - 1])),
    `positions increase: ${positions}`);
});

test('a late client replays from a position and then follows, nothing twice', async () => {
  const publisher = client({ autoForward: true });
  const first = publisher.publish('Replayed', { n: 1 }, { aggregateId: 'replay' });
  const witness = record(client({ initialPosition: 0 }), 'Replayed');
  const [stored] = await witness.waitFor(1);
  assert.equal(stored.id, first);

  // From 0: everything kept, including the event above; from its position: what follows.
  const fromStart = record(client({ initialPosition: 0 }), 'Replayed');
  const fromFirst = record(client({ initialPosition: stored.position }), 'Replayed');
  const second = publisher.publish('Replayed', { n: 2 }, { aggregateId: 'replay' });
  const third = publisher.publish('Replayed', { n: 3 }, { aggregateId: 'replay' });

  assert.deepEqual((await fromStart.waitFor(3)).map((event) => event.id), [first, second, third]);
  assert.deepEqual((await fromFirst.waitFor(2)).map((event) => event.id), [second, third]);
  // Both are live now; one more event shows that nothing else was queued before it.
  const fourth = publisher.publish('Replayed', { n: 4 }, { aggregateId: 'replay' });
  assert.deepEqual((await fromStart.waitFor(4)).map((event) => event.id), [first, second, third, fourth]);
  assert.deepEqual((await fromFirst.waitFor(3)).map((event) => event.id), [second, third, fourth]);
});

test("a client gets its own events once, from publish, and not again from the server", async () => {
  const publisher = client({ autoForward: true, initialPosition: 0 });
  const other = client({ autoForward: true });
  const own = record(publisher, 'Echo');
  const witness = record(client({ initialPosition: 0 }), 'Echo');

  const mine = publisher.publish('Echo', { from: 'publisher' }, { aggregateId: 'echo' });
  // Handed to this client's handlers right away, before the server stored it.
  const [local] = await own.waitFor(1);
  assert.equal(local.id, mine);
  assert.equal(local.position, null);
  // Stored: the server sends it to everyone, the publisher included.
  await witness.waitFor(1);

  // An event stored after it: when it arrives, a repeat of `mine` would have too.
  const theirs = other.publish('Echo', { from: 'other' }, { aggregateId: 'echo' });
  const events = await own.waitFor(2);
  assert.deepEqual(events.map((event) => event.id), [mine, theirs]);
  assert.ok(Number.isInteger(events[1].position));
});

test("onStored tells where the server stored a client's own event: the position others receive it at", async () => {
  const publisher = client({ autoForward: true });
  const witness = record(client({ initialPosition: 0 }), 'Receipted');
  const stored = new Promise((resolve) => publisher.onStored(resolve));
  const id = publisher.publish('Receipted', { n: 1 }, { aggregateId: 'receipt' });
  const receipt = await within(stored, 'the receipt of the published event (onStored)');
  const [seen] = await witness.waitFor(1);
  assert.equal(receipt.id, id);
  assert.equal(receipt.position, seen.position);
  assert.equal(Date.parse(receipt.createdAt), Date.parse(seen.occurredAt));
});

test('an event published while the server is down is stored once it is back, and arrives once', async () => {
  const publisher = client({ autoForward: true });
  const receiver = client();
  const received = record(receiver, 'Outage');
  await Promise.all([statusReaches(publisher, 'live'), statusReaches(receiver, 'live')]);

  await server.stop();
  const backingOff = await statusReaches(receiver, 'backingOff');
  assert.equal(backingOff.error.code, 'network_error');
  assert.ok(backingOff.error instanceof Error);
  assert.ok(backingOff.retryAt > Date.now() - 60_000, `retryAt ${backingOff.retryAt} is a time in ms`);
  const during = publisher.publish('Outage', { when: 'down' }, { aggregateId: 'outage' });

  server = await startServer({ bind: server.bind, database: server.database });
  const restarted = Date.now();
  await statusReaches(receiver, 'live');
  // Up to the client's longest backoff (30 s), by design: printed, not asserted.
  console.log(`outage: the receiver was live again ${Date.now() - restarted} ms after the server was back`);
  const afterwards = publisher.publish('Outage', { when: 'up' }, { aggregateId: 'outage' });
  assert.deepEqual((await received.waitFor(2)).map((event) => event.id), [during, afterwards]);
});

test('a serverUrl with a path the server does not serve keeps the event, and the status says what to check', async () => {
  const misdirected = client({ serverUrl: `${server.url}/api`, autoForward: true });
  const errors = [];
  misdirected.onError((error) => errors.push(error));
  misdirected.publish('Misdirected', { n: 1 }, { aggregateId: 'misdirected' });

  const backingOff = await statusReaches(misdirected, 'backingOff');
  assert.equal(backingOff.error.code, 'wrong_server_url');
  assert.equal(backingOff.error.status, 404);
  assert.match(backingOff.error.message, /server URL/);
  // Not dropped as refused: no error names the event.
  assert.ok(
    errors.every((error) => error.code === 'wrong_server_url' && error.event === undefined),
    errors.map((error) => error.code).join(', '),
  );
});

test('invalid input throws an Error with a code', () => {
  assert.throws(() => new EventBusClient({ serverUrl: 'localhost:8080' }), (error) => {
    assert.ok(error instanceof Error);
    assert.equal(error.code, 'invalid_options');
    assert.match(error.message, /serverUrl/);
    return true;
  });
  // A misspelled option is reported, not ignored.
  assert.throws(() => new EventBusClient({ serverUrl: server.url, autoFoward: true }), { code: 'invalid_options' });
  const publisher = client({ autoForward: true });
  // aggregateId is required.
  assert.throws(() => publisher.publish('Bad', {}, {}), { code: 'invalid_event' });
});

test('events arrive by a stream by default, by long-polls when asked; the status says which', async () => {
  const publisher = client({ autoForward: true });
  const streaming = client({ initialPosition: 0 });
  const longPolling = client({ initialPosition: 0, transport: 'long-poll' });
  const streamed = record(streaming, 'TransportTested');
  const polled = record(longPolling, 'TransportTested');
  assert.equal((await statusReaches(streaming, 'live')).transport, 'stream');
  assert.equal((await statusReaches(longPolling, 'live')).transport, 'long-poll');
  for (const n of [1, 2, 3]) publisher.publish('TransportTested', n, { aggregateId: 't' });
  for (const received of [streamed, polled]) {
    const events = await received.waitFor(3);
    assert.deepEqual(events.map((event) => event.payload), [1, 2, 3]);
  }
  assert.equal(streaming.status.transport, 'stream');
  assert.throws(() => client({ transport: 'websocket' }), { code: 'invalid_options' });
  assert.throws(() => client({ transport: 'stream', pollingInterval: 100 }), { code: 'invalid_options' });
});

test('close() ends the client: status closed, publish refused, handlers silent', async () => {
  const closing = client({ autoForward: true, initialPosition: 0 });
  const statuses = [];
  closing.onStatus((status) => statuses.push(status.state));
  const received = record(closing, 'AfterClose');
  await statusReaches(closing, 'live');
  await closing.close();

  assert.equal(closing.status.state, 'closed');
  assert.equal(statuses.at(-1), 'closed', 'status handlers hear of the close');
  assert.throws(() => closing.publish('AfterClose', {}, { aggregateId: 'x' }), { code: 'closed' });
  // Events stored after close() reach other clients but not this one's handlers.
  const witness = record(client({ initialPosition: 0 }), 'AfterClose');
  client({ autoForward: true }).publish('AfterClose', {}, { aggregateId: 'x' });
  await witness.waitFor(1);
  assert.equal(received.events.length, 0);
});

test('after close() nothing keeps Node running: the process exits by itself', async () => {
  // A client in a process of its own, with its stream (or long-poll) open when it closes:
  // the server keeps a stream open and holds a long-poll for 25 s, so an exit within 10 s
  // of close() shows that close() ended them. The 10 s count from close(), not from the
  // start: Node's start and going live take seconds of their own on a loaded machine.
  const script = fileURLToPath(new URL('./fixtures/close-and-exit.mjs', import.meta.url));
  const child = spawn(process.execPath, [script, server.url], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.on('data', (chunk) => (output += chunk));
  child.stderr.on('data', (chunk) => (output += chunk));
  const started = Date.now();
  let closedAt;
  const exit = await new Promise((resolve, reject) => {
    const fail = (message) => {
      child.kill('SIGKILL');
      reject(new Error(`${message}; it printed: ${output || '(nothing)'}\nthe server's log:\n${server.log() || '(nothing)'}`));
    };
    let timer = setTimeout(() => fail('the process did not go live and close within 60 s'), 60_000);
    const onOutput = () => {
      if (!/closed after live/.test(output)) return;
      child.stdout.off('data', onOutput);
      closedAt = Date.now();
      clearTimeout(timer);
      timer = setTimeout(() => fail('the process did not exit within 10 s after close()'), 10_000);
    };
    child.stdout.on('data', onOutput);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve(code);
    });
  });
  console.log(`close-and-exit: live and closed ${closedAt - started} ms after the start, exited ${Date.now() - closedAt} ms after close()`);
  assert.equal(exit, 0, `the process exited with ${exit}; it printed: ${output}`);
  assert.match(output, /closed after live/);
});
