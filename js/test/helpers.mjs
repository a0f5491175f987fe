// Awaiting what a client reports, instead of sleeping: every wait resolves on the event
// it waits for and fails only after a generous timeout, with what did arrive.

// Beyond the client's longest backoff (30 s): after an outage the next try may be that far
// off, and a loaded machine adds seconds to everything.
const TIMEOUT = 60_000;

/** What a timed-out wait adds to its message; the tests set the server's log here. */
let context = () => '';
/** Sets what a timed-out wait reports besides what it saw (such as the server's log). */
export function explainWith(explain) {
  context = explain;
}
const more = () => {
  const text = context();
  return text ? `\n${text}` : '';
};

/**
 * Records what `client` hands to `on(eventType)` handlers.
 *
 * @param {import('distributed-events').EventBusClient} client
 * @param {string} [eventType] `*` for every event
 */
export function record(client, eventType = '*') {
  /** @type {import('distributed-events').ClientEvent[]} */
  const events = [];
  /** @type {Array<() => boolean>} */
  let waiters = [];
  const off = client.on(eventType, (event) => {
    events.push(event);
    waiters = waiters.filter((settled) => !settled());
  });
  return {
    events,
    off,
    /** Resolves with the events once `count` have arrived. */
    waitFor(count) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`timed out waiting for ${count} events; ${events.length} arrived: ${describe(events)}; ` +
            `the client's status: ${show(client.status)}${more()}`)),
          TIMEOUT,
        );
        const settled = () => {
          if (events.length < count) return false;
          clearTimeout(timer);
          resolve(events.slice());
          return true;
        };
        if (!settled()) waiters.push(settled);
      });
    },
  };
}

/**
 * Resolves with the first status in `state` that `client` reports (its current one
 * counts), for example `live`.
 *
 * @param {import('distributed-events').EventBusClient} client
 * @param {string} state
 */
export function statusReaches(client, state) {
  return new Promise((resolve, reject) => {
    const seen = [];
    const started = Date.now();
    const timer = setTimeout(
      () => reject(new Error(`timed out after ${Date.now() - started} ms waiting for status ${state}; saw ${seen.join(', ') || 'nothing'}${more()}`)),
      TIMEOUT,
    );
    const off = client.onStatus((status) => {
      seen.push(show(status));
      if (status.state !== state) return;
      clearTimeout(timer);
      off();
      resolve(status);
    });
  });
}

/** Resolves as `promise` does, or rejects after the generous timeout saying `what` it waited for. */
export function within(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}${more()}`)), TIMEOUT);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** A status as `live (stream)` or `backingOff (network_error: …, retry in 4000 ms)`. */
function show(status) {
  if (status.state === 'live') return `live (${status.transport})`;
  if (status.state === 'backingOff') return `backingOff (${status.error?.code}: ${status.error?.message}, retry in ${status.retryAt - Date.now()} ms)`;
  return status.state;
}

function describe(events) {
  return events.map((event) => `${event.eventType}@${event.position}`).join(', ') || 'none';
}
