// Awaiting what a client reports, instead of sleeping: every wait resolves on the event
// it waits for and fails only after a generous timeout, with what did arrive.

const TIMEOUT = 15_000;

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
          () => reject(new Error(`timed out waiting for ${count} events; ${events.length} arrived: ${describe(events)}`)),
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
    const timer = setTimeout(
      () => reject(new Error(`timed out waiting for status ${state}; saw ${seen.join(', ') || 'nothing'}`)),
      TIMEOUT,
    );
    const off = client.onStatus((status) => {
      seen.push(status.state);
      if (status.state !== state) return;
      clearTimeout(timer);
      off();
      resolve(status);
    });
  });
}

function describe(events) {
  return events.map((event) => `${event.eventType}@${event.position}`).join(', ') || 'none';
}
