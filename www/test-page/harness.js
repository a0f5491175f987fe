// The test page's side of the browser tests: it imports the package by name and, when the
// URL says `?client=<options as JSON>`, starts a client at load (so a reload starts it
// again, as an app would) and records what it hears for the tests to read.
import { EventBusClient } from 'distributed-events';

let made = 0;
/**
 * The package's client, which also tells the console each status and error it reports,
 * with the time since the page loaded: a failed test prints the tab's console.
 */
window.EventBusClient = class extends EventBusClient {
  constructor(options) {
    super(options);
    const name = `client ${++made} (${JSON.stringify(options)})`;
    const at = () => `${Math.round(performance.now())} ms`;
    this.onStatus((status) =>
      console.log(`${at()}: ${name}: ${status.state}${status.transport ? ` (${status.transport})` : ''}` +
        `${status.error ? ` ${status.error.code}: ${status.error.message}` : ''}`),
    );
    this.onError((error) => console.log(`${at()}: ${name}: error ${error.code}: ${error.message}`));
  }
};
/** Every event the page's client handed to its `*` handler, with the time it came. */
window.received = [];
/** Every status, as onStatus reported it (the error as code and message). */
window.statuses = [];
window.stored = [];
window.errors = [];

const options = new URLSearchParams(location.search).get('client');
if (options !== null) {
  const client = new window.EventBusClient({ serverUrl: location.origin, ...JSON.parse(options) });
  client.on('*', (event) => window.received.push({ ...event, receivedAt: Date.now() }));
  client.onStatus((status) =>
    window.statuses.push({
      state: status.state,
      transport: status.transport,
      code: status.error?.code,
      message: status.error?.message,
      retryAt: status.retryAt,
      at: Date.now(),
    }),
  );
  client.onStored((receipt) => window.stored.push(receipt));
  client.onError((error) => window.errors.push({ code: error.code, message: error.message }));
  window.client = client;
}

/** The state of the last status heard ('' before the first). */
window.lastState = () => window.statuses.at(-1)?.state ?? '';

/** Resolves once `done()` holds, checking every 20 ms; rejects after `timeout` ms with `what`. */
window.eventually = async (what, done, timeout = 20_000) => {
  const end = Date.now() + timeout;
  while (!done()) {
    if (Date.now() > end) throw new Error(`gave up waiting for ${what} after ${timeout} ms`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
};

/** A handler as an app writes it: appends what it is called with to `log`. */
window.handler = (log) => (value) => {
  log.push(value);
};

window.harnessReady = true;
