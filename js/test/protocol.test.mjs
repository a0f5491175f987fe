// The protocol as the JS driver reads it (src/http.js), and one property end to end
// against a fake server: a record that cannot be decoded is reported and skipped, and
// never stops the client.
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { test } from 'node:test';

import init from '../pkg/distributed_events_client.js';
import { failure, readMessage, readPage, sseParser } from '../src/http.js';
import { EventBusClient } from '../src/client.js';

await init({ module_or_path: await readFile(new URL('../pkg/distributed_events_client_bg.wasm', import.meta.url)) });

const record = (position, extra = {}) => ({
  id: `00000000-0000-4000-8000-${String(position).padStart(12, '0')}`,
  createdAt: '2024-12-04T10:00:00Z',
  aggregateId: 'a',
  eventType: 'T',
  eventJson: JSON.stringify({ n: position }),
  userId: null,
  tenantId: null,
  sessionId: null,
  position,
  ...extra,
});

test('the SSE parser splits messages however the bytes are cut, CRLF included', () => {
  const text = ': ok\r\n\r\nid: 4\r\ndata: {"a":\r\ndata: 1}\r\n\r\nevent: later\ndata: x\n\nid: 9\n\n';
  for (let cut = 0; cut <= text.length; cut++) {
    const messages = [];
    const parse = sseParser((message) => messages.push(message));
    parse(text.slice(0, cut));
    parse(text.slice(cut));
    assert.deepEqual(messages, [{ id: '4', data: '{"a":\n1}' }, { event: 'later', data: 'x' }, { id: '9' }], `cut at ${cut}`);
  }
});

test('stream messages: records, cursor moves, a reset; unknown kinds are not ours', () => {
  const page = { events: [], bad: [], cursor: 3 };
  assert.equal(readMessage({ id: '4', data: JSON.stringify(record(4)) }, page), true);
  assert.equal(readMessage({ id: '9' }, page), true);
  assert.equal(readMessage({ event: 'later', data: '{}' }, page), false);
  assert.equal(readMessage({ id: '10', data: '{"position":10}' }, page), true);
  assert.deepEqual([page.events.length, page.bad.length, page.cursor], [1, 1, 10]);
  assert.equal(page.bad[0].code, 'undecodable_record');
  assert.equal(page.bad[0].position, 10);
  assert.throws(() => readMessage({ id: 'x' }, page), { code: 'invalid_response' });
  assert.throws(() => readMessage({ event: 'cursor_expired', data: '{"code":"cursor_expired","resumeAfter":17}' }, page), (thrown) =>
    thrown.kind === 'reset' && thrown.resumeAfter === 17);
});

test('a page skips the records it cannot decode, and its cursor lies past them', () => {
  const body = JSON.stringify([record(1), { position: 2, id: 'not an event' }, 42, record(3)]);
  const page = readPage({ text: body, cursor: '2' });
  assert.deepEqual(page.events.map((event) => event.position), [1, 3]);
  assert.deepEqual(page.bad.map((error) => [error.code, error.position, error.eventId]), [
    ['undecodable_record', 2, 'not an event'],
    ['undecodable_record', undefined, undefined],
  ]);
  assert.equal(page.cursor, 2);
  assert.throws(() => readPage({ text: '[]' }), { code: 'invalid_response', message: /x-events-cursor/ });
  assert.throws(() => readPage({ text: '{}', cursor: '1' }), { code: 'invalid_response' });
});

test('answers: 410 resets, 400/409/413 refuse, anything else retries (404/405: wrong_server_url), Retry-After in ms', () => {
  const answer = (status, body, retryAfter) => failure({ status, text: JSON.stringify(body), retryAfter });
  assert.deepEqual(answer(410, { code: 'cursor_expired', resumeAfter: 17, error: 'gone' }), { kind: 'reset', code: 'cursor_expired', resumeAfter: 17 });
  assert.equal(answer(409, { code: 'id_conflict', error: 'used' }).kind, 'refused');
  const overloaded = answer(503, { code: 'overloaded', error: 'busy' }, '3');
  assert.deepEqual([overloaded.kind, overloaded.error.code, overloaded.retryAfter], ['retry', 'overloaded', 3000]);
  const wrong = answer(404, { code: 'not_found', error: 'no such path' });
  assert.deepEqual([wrong.kind, wrong.error.code, wrong.error.status], ['retry', 'wrong_server_url', 404]);
  assert.match(wrong.error.message, /server URL/);
  const proxy = failure({ status: 502, text: '<html>bad gateway</html>' });
  assert.deepEqual([proxy.kind, proxy.error.code, proxy.error.name], ['retry', 'http_error', 'EventBusClientError']);
});

test('one malformed record in a page is reported and skipped; the events around it arrive, and the client goes on', async () => {
  // A fake server whose log holds a record that cannot be decoded between two good ones.
  const log = [record(1), { position: 2, id: 'broken' }, record(3, { eventJson: 'not json' }), record(4)];
  const server = createServer((request, response) => {
    const after = Number(new URL(request.url, 'http://x').searchParams.get('after'));
    const page = log.filter((entry) => entry.position > after);
    response.writeHead(200, { 'content-type': 'application/json', 'x-events-cursor': String(Math.max(after, ...page.map((entry) => entry.position))) });
    response.end(JSON.stringify(page));
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const client = new EventBusClient({ serverUrl: `http://127.0.0.1:${server.address().port}`, initialPosition: 0, pollingInterval: 50 });
  const received = [];
  const errors = [];
  client.on('*', (event) => received.push(event.position));
  client.onError((error) => errors.push([error.code, error.position ?? error.event?.position]));
  try {
    const until = Date.now() + 60_000; // generous: the wait ends as soon as all arrived
    while ((received.length < 2 || client.cursor !== 4) && Date.now() < until) await new Promise((resolve) => setTimeout(resolve, 20));
    assert.deepEqual(received, [1, 4]);
    assert.deepEqual(errors, [['undecodable_record', 2], ['undecodable_payload', 3]]);
    assert.equal(client.cursor, 4);
    assert.equal(client.status.state, 'live');
  } finally {
    await client.close();
    server.close();
  }
});
