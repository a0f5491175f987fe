// docs/PROTOCOL.md from the client's side: errors, what an answer means, pages, receipts,
// and the Server-Sent Events format. Pure functions; the driver does the I/O.
import { Core } from '../pkg/distributed_events_client.js';

/** An `Error` named `EventBusClientError` with a `code` (and `extra` fields). */
export const fail = (code, message, extra) => Object.assign(new Error(message), { name: 'EventBusClientError', code }, extra);

export const invalid = (message) => fail('invalid_response', `the server's answer could not be read: ${message}`);

/** A JSON value, or undefined when `text` is not JSON. */
const json = (text) => {
  try {
    return JSON.parse(text);
  } catch {}
};

/**
 * What a non-2xx answer means: `{ kind: "reset", code, resumeAfter }` (410: continue
 * after resumeAfter), or `{ kind: "refused" | "retry", error, retryAfter, code, message }`.
 */
export function failure({ status, text, retryAfter }) {
  const body = json(text);
  const code = typeof body?.code === 'string' ? body.code : undefined;
  const resumeAfter = body?.resumeAfter;
  const kind = Core.classify(status, code, Number.isSafeInteger(resumeAfter));
  if (kind === 'reset') return { kind, code, resumeAfter };
  const message = typeof body?.error === 'string' ? body.error : `no error body (HTTP ${status})`;
  const error =
    status === 404 || status === 405
      ? fail('wrong_server_url', `the server answered ${status} (${message}): the server URL does not lead to the events API; check that it is the server's root, such as http://localhost:8080 with no path after it, and that a proxy in between passes /events and /healthz on. Events to send wait in the outbox meanwhile`, { status })
      : fail(code ?? 'http_error', `the server answered ${status}: ${message}`, { status });
  return { kind, error, code: error.code, message, retryAfter: /^\s*\d+\s*$/.test(retryAfter ?? '') ? retryAfter * 1000 : undefined };
}

const text = (value) => typeof value === 'string';
const position = (value) => (Number.isSafeInteger(value) && value >= 0 ? value : undefined);

const REQUIRED = ['id', 'createdAt', 'aggregateId', 'eventType', 'eventJson'];

/** Adds one record of a page to it: the event, or (when it is no event record) the error that reports it. */
export function addRecord(page, record) {
  const r = record ?? {};
  if (REQUIRED.every((key) => text(r[key])) && (r.position === undefined || position(r.position) !== undefined) && typeof (r.context ?? {}) === 'object')
    return page.events.push(r);
  const at = position(r.position);
  if (at > (page.cursor ?? -1)) page.cursor = at;
  page.bad.push(
    fail('undecodable_record',
      `the server sent a record that cannot be decoded${at === undefined ? '' : ` at position ${at}`}${text(r.id) ? ` (event ${r.id})` : ''}; it was skipped: it lacks one of ${REQUIRED.join(', ')}`,
      { position: at, eventId: text(r.id) ? r.id : undefined }),
  );
}

/** A page of `GET /events`: `{ events, bad, cursor }`, checked record by record (one bad record must not stop the others). */
export function readPage({ text: body, cursor: header }) {
  const cursor = /^\s*\d+\s*$/.test(header ?? '') ? Number(header) : undefined;
  if (cursor === undefined)
    throw invalid(header == null
      ? 'the answer has no x-events-cursor header; a cross-origin server must expose it (Access-Control-Expose-Headers), and a proxy must pass it on'
      : `the x-events-cursor header is ${JSON.stringify(header)}, not a position`);
  const records = json(body);
  if (!Array.isArray(records)) throw invalid('the events are not a JSON array of event records');
  const page = { events: [], bad: [], cursor };
  for (const record of records) addRecord(page, record);
  return page;
}

/** `GET /healthz`: the head, where a client that starts "now" begins. */
export function readHead({ text: body }) {
  const health = json(body);
  if (position(health?.head) !== undefined) return health.head;
  // The server shows its head only to callers with a valid token: the same as a 401.
  if (text(health?.status))
    throw fail('unauthorized', 'the server answered 401: /healthz shows the head only to callers with a valid token: give the client one', { status: 401 });
  throw invalid('/healthz did not answer {"head": <position>}');
}

/** The receipt of `POST /events`: `{ id, position, createdAt }`. */
export function readReceipt({ text: body }) {
  const r = json(body);
  if (!text(r?.id) || position(r.position) === undefined || !text(r.createdAt)) throw invalid('the receipt does not decode');
  return { id: r.id, position: r.position, createdAt: r.createdAt };
}

/**
 * Adds one stream message to `page`: a record with its position as `id`, or an `id` alone
 * that moves the cursor past events this reader does not see. `event: cursor_expired` is
 * the stream's 410 (thrown). Returns whether the message was for this client.
 */
export function readMessage({ id, event, data }, page) {
  if (event !== undefined && event !== 'message') {
    if (event !== 'cursor_expired') return false; // a kind this client does not know yet
    const body = json(data);
    if (position(body?.resumeAfter) === undefined) throw invalid(`the cursor_expired event does not say where to resume: ${data}`);
    throw { kind: 'reset', code: body.code, resumeAfter: body.resumeAfter };
  }
  if (id !== undefined) {
    if (!/^\s*\d+\s*$/.test(id)) throw invalid(`the event stream's id is ${JSON.stringify(id)}, not a position`);
    page.cursor = Math.max(page.cursor ?? 0, Number(id));
  }
  if (data !== undefined) addRecord(page, json(data));
  return id !== undefined || data !== undefined;
}

/** A Server-Sent Events parser: feed it text; it hands each message `{ id, event, data }` to `onMessage`. */
export function sseParser(onMessage) {
  let buffer = '';
  let message = {};
  return (chunk) => {
    buffer += chunk;
    for (let end; (end = /\r\n?|\n/.exec(buffer)); ) {
      // A CR at the end of the text may be the first half of a CRLF: wait for more.
      if (end[0] === '\r' && end.index === buffer.length - 1) break;
      const line = buffer.slice(0, end.index);
      buffer = buffer.slice(end.index + end[0].length);
      if (!line) {
        if (Object.keys(message).length) onMessage(message);
        message = {};
        continue;
      }
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? '' : line.slice(colon + (line[colon + 1] === ' ' ? 2 : 1));
      if (field === 'data') message.data = message.data === undefined ? value : `${message.data}\n${value}`;
      else if (field === 'event') message.event = value;
      else if (field === 'id' && !value.includes('\0')) message.id = value;
    }
    // Above the largest record a server sends, below what hurts a browser tab.
    if (buffer.length + (message.data?.length ?? 0) > 2 ** 24) throw invalid('a stream message is over 16 MiB');
  };
}
