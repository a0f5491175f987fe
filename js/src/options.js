// `new EventBusClient(options)`: the options checked as the Rust binding checked them
// (same rules, same `invalid_options` messages), turned into the settings the driver reads.
import { fail } from './http.js';

const KEYS = 'serverUrl live pollingInterval transport autoForward initialPosition initialTimestamp headers getToken persistCursor eventTypes aggregateIds subscribeToHandledTypes'.split(' ');
const RFC3339 = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/i;

const invalid = (message) => fail('invalid_options', `EventBusClient options: ${message} (see EventBusClientOptions)`);

/** The settings, or throws an `invalid_options` error that says what to change. */
export function parseOptions(options) {
  if (typeof options !== 'object' || !options) throw invalid('pass an object such as { serverUrl: "http://localhost:8080" }');
  const unknown = Object.keys(options).find((key) => !KEYS.includes(key));
  if (unknown) throw invalid(`unknown option \`${unknown}\`; the options are ${KEYS.join(', ')}`);
  // undefined and null mean "not set", as they did for serde.
  const get = (key, type) => {
    const value = options[key] ?? undefined;
    if (value !== undefined && typeof value !== type) throw invalid(`${key} must be a ${type}`);
    return value;
  };
  const raw = get('serverUrl', 'string') ?? '';
  const url = raw.trim().replace(/\/+$/, '');
  // A relative URL ("/api") reaches the page's own origin, which only a browser has.
  if (!/^https?:\/\//.test(url) && !(globalThis.document && url.startsWith('/')))
    throw invalid(`serverUrl must start with http:// or https://, got ${JSON.stringify(raw)}`);

  const transport = get('transport', 'string');
  if (transport !== undefined && !['stream', 'long-poll', 'poll'].includes(transport))
    throw invalid('transport must be "stream", "long-poll" or "poll"');
  const live = get('live', 'boolean');
  const every = get('pollingInterval', 'number');
  // Polling when asked for by transport "poll", live: false or a pollingInterval alone.
  if ((transport === 'poll' && live) || (!transport && live && every !== undefined))
    throw invalid('live: true streams and pollingInterval (or transport: "poll") polls at a fixed interval; set one of them, not both');
  const polls = transport === 'poll' || (!transport && (live === false || (live === undefined && every !== undefined)));
  if (!polls && transport && (live === false || every !== undefined))
    throw invalid('pollingInterval and live: false poll at a fixed interval; with transport "stream" or "long-poll" leave them out');
  if (every !== undefined && !(every > 0 && every < 2 ** 31))
    throw invalid('pollingInterval must be a number of milliseconds above 0');

  const position = get('initialPosition', 'number');
  if (position !== undefined && !(Number.isSafeInteger(position) && position >= 0))
    throw invalid('initialPosition must be a whole number of 0 or more');
  let since = options.initialTimestamp ?? undefined;
  if (since !== undefined) {
    if (since instanceof Date) {
      if (Number.isNaN(since.getTime())) throw invalid('initialTimestamp is an invalid Date');
    } else if (typeof since !== 'string') throw invalid('initialTimestamp must be an RFC 3339 string or a Date');
    else if (!RFC3339.test(since) || Number.isNaN(Date.parse(since)))
      throw invalid(`initialTimestamp ${JSON.stringify(since)} is not RFC 3339, such as "2024-12-04T10:00:00Z"`);
    if (position !== undefined) throw invalid('set initialPosition or initialTimestamp, not both');
    since = new Date(since).toISOString();
  }

  const headers = get('headers', 'object') ?? {};
  for (const [name, value] of Object.entries(headers)) {
    if (!/^[!#$%&'*+.^_`|~\w-]+$/.test(name)) throw invalid(`${JSON.stringify(name)} is not a valid HTTP header name`);
    if (typeof value !== 'string') throw invalid(`the value of header ${JSON.stringify(name)} must be a string`);
    if (/[\r\n]/.test(value)) throw invalid(`the value of header ${JSON.stringify(name)} contains a line break`);
  }
  const getToken = options.getToken ?? undefined;
  if (getToken !== undefined && typeof getToken !== 'function')
    throw invalid('getToken must be a function returning a token (or a Promise of one)');

  const list = (key) => {
    const values = options[key] ?? [];
    if (!Array.isArray(values)) throw invalid(`${key} must be an array of strings`);
    if (values.length > 100) throw invalid(`${key} takes at most 100 values, got ${values.length}`);
    const bad = values.find((value) => typeof value !== 'string' || !value || new TextEncoder().encode(value).length > 200);
    if (bad !== undefined) throw invalid(`each of ${key} must be 1 to 200 bytes long, got ${JSON.stringify(bad)}`);
    return values;
  };

  return {
    url,
    mode: polls ? 'poll' : transport ?? 'stream',
    interval: every ?? 5000,
    autoForward: get('autoForward', 'boolean') ?? false,
    position,
    since,
    headers,
    getToken,
    persist: get('persistCursor', 'boolean') ?? false,
    eventTypes: list('eventTypes'),
    aggregateIds: list('aggregateIds'),
    handledOnly: get('subscribeToHandledTypes', 'boolean') ?? false,
  };
}
