// `new EventBusClient(options)`: the options checked as the Rust binding checked them
// (same rules, same `invalid_options` messages), turned into the settings the driver reads.
import { fail } from './http.js';

/** Every option and the type of its value (`undefined` and `null` mean "not set"). */
const TYPES = {
  serverUrl: 'string',
  live: 'boolean',
  pollingInterval: 'number',
  transport: 'string',
  autoForward: 'boolean',
  initialPosition: 'number',
  initialTimestamp: 'object', // or a string: see below
  headers: 'object',
  getToken: 'function',
  persistCursor: 'boolean',
  eventTypes: 'object',
  aggregateIds: 'object',
  subscribeToHandledTypes: 'boolean',
};
const RFC3339 = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/i;

const invalid = (message) => fail('invalid_options', `EventBusClient options: ${message} (see EventBusClientOptions)`);

/** The settings, or throws an `invalid_options` error that says what to change. */
export function parseOptions(options) {
  const o = {};
  for (const [key, value] of Object.entries(options ?? {})) {
    if (!TYPES[key]) throw invalid(`unknown option \`${key}\`; the options are ${Object.keys(TYPES).join(', ')}`);
    if (value != null && typeof value !== TYPES[key] && !(key === 'initialTimestamp' && typeof value === 'string'))
      throw invalid(`${key} must be ${key === 'initialTimestamp' ? 'an RFC 3339 string or a Date' : `a ${TYPES[key]}`}`);
    o[key] = value ?? undefined;
  }
  const { live, transport, pollingInterval: every, initialPosition: position } = o;
  const url = (o.serverUrl ?? '').trim().replace(/\/+$/, '');
  // A relative URL ("/api") reaches the page's own origin, which only a browser has.
  if (!/^https?:\/\//.test(url) && !(globalThis.document && url[0] === '/'))
    throw invalid(`serverUrl must start with http:// or https://, got ${JSON.stringify(o.serverUrl)}`);

  if (transport !== undefined && !['stream', 'long-poll', 'poll'].includes(transport))
    throw invalid('transport must be "stream", "long-poll" or "poll"');
  // Polling when asked for by transport "poll", live: false or a pollingInterval alone.
  if ((transport === 'poll' && live) || (!transport && live && every !== undefined))
    throw invalid('live: true streams and pollingInterval (or transport: "poll") polls at a fixed interval; set one of them, not both');
  const polls = transport === 'poll' || (!transport && (live === false || (live === undefined && every !== undefined)));
  if (!polls && transport && (live === false || every !== undefined))
    throw invalid('pollingInterval and live: false poll at a fixed interval; with transport "stream" or "long-poll" leave them out');
  if (every !== undefined && !(every > 0 && every < 2 ** 31)) throw invalid('pollingInterval must be a number of milliseconds above 0');

  if (position !== undefined && !(Number.isSafeInteger(position) && position >= 0))
    throw invalid('initialPosition must be a whole number of 0 or more');
  let since = o.initialTimestamp;
  if (since !== undefined) {
    if (typeof since === 'string' ? !RFC3339.test(since) : !(since instanceof Date))
      throw invalid(`initialTimestamp ${JSON.stringify(since)} is not RFC 3339 (such as "2024-12-04T10:00:00Z") nor a Date`);
    since = new Date(since);
    if (Number.isNaN(since.getTime())) throw invalid('initialTimestamp is not a valid time');
    if (position !== undefined) throw invalid('set initialPosition or initialTimestamp, not both');
    since = since.toISOString();
  }

  for (const [name, value] of Object.entries(o.headers ?? {}))
    if (!/^[!#$%&'*+.^_`|~\w-]+$/.test(name) || typeof value !== 'string' || /[\r\n]/.test(value))
      throw invalid(`header ${JSON.stringify(name)}: a header needs a valid HTTP name and a string value without line breaks`);
  const list = (key) => {
    const values = o[key] ?? [];
    const bad = Array.isArray(values) && values.find((value) => typeof value !== 'string' || !value || new TextEncoder().encode(value).length > 200);
    if (bad !== undefined || values.length > 100)
      throw invalid(`${key} takes an array of at most 100 strings of 1 to 200 bytes${bad ? `, not ${JSON.stringify(bad)}` : ''}`);
    return values;
  };

  return {
    url,
    mode: polls ? 'poll' : transport ?? 'stream',
    interval: every ?? 5000,
    autoForward: o.autoForward ?? false,
    position,
    since,
    headers: o.headers ?? {},
    getToken: o.getToken,
    persist: o.persistCursor ?? false,
    eventTypes: list('eventTypes'),
    aggregateIds: list('aggregateIds'),
    handledOnly: o.subscribeToHandledTypes ?? false,
  };
}
