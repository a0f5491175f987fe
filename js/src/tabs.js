// One connection per browser: the clients of one origin with the same server and filter
// form a group. Web Locks elect the leader, which holds the live connection; a
// BroadcastChannel of the same name carries what it receives to the others. Outside a
// browser (Node, whose newer versions have Web Locks too) every client leads a group of its own.

/**
 * Joins the group `name` as `me`. `lead()` is called whenever this client becomes the
 * leader and returns the function that stops leading (resolving once stopped);
 * `onMessage` gets the other members' messages, each with its `sender`. Returns `{ post, close }`.
 */
/** A page or a worker, not Node. */
const inBrowser = () => globalThis.document !== undefined || globalThis.WorkerGlobalScope !== undefined;

export function join(name, me, lead, onMessage) {
  const locks = inBrowser() && globalThis.navigator.locks;
  if (!locks || !globalThis.BroadcastChannel) {
    const stop = lead();
    return { post() {}, close: stop };
  }
  const channel = new BroadcastChannel(name);
  const doc = globalThis.document;
  const hidden = () => doc?.hidden === true;
  /** The other members' visibility, as they announce it. */
  const visible = new Map();
  let stop; // set while leading
  let release;
  let queued; // aborts the queued lock request
  let leftAlone = false; // stepped down, and nobody else has led since
  let closed = false;

  // Nothing after close: a publish's IndexedDB write may end after it.
  const post = (message) => closed || channel.postMessage({ ...message, sender: me });
  const announce = () => post({ t: 'vis', v: !hidden() });

  function queue() {
    queued = new AbortController();
    locks
      .request(name, { signal: queued.signal }, () =>
        // Granted after close() (the abort came too late): passed on at once.
        closed ||
        new Promise((resolve) => {
          // Stepped down for a visible tab that never took the lock: it is gone.
          if (leftAlone) visible.clear();
          release = resolve;
          stop = lead();
          post({ t: 'lead' });
          check();
        }),
      )
      .catch(() => {}); // aborted by close()
  }

  /** A leader in a hidden tab, whose timers the browser throttles, hands over to a visible one. */
  async function check() {
    if (!stop || !hidden() || ![...visible.values()].includes(true)) return;
    const stopping = stop;
    stop = undefined;
    await stopping();
    leftAlone = true;
    release();
    if (!closed) queue();
  }

  channel.onmessage = ({ data }) => {
    if (data.t === 'vis') visible.set(data.sender, data.v);
    if (data.t === 'bye') visible.delete(data.sender);
    if (data.t === 'hello') announce();
    if (data.t === 'lead') leftAlone = false;
    check();
    onMessage(data);
  };
  const onVisibility = () => {
    announce();
    check();
  };
  const bye = () => channel.postMessage({ t: 'bye', sender: me });
  doc?.addEventListener('visibilitychange', onVisibility);
  globalThis.addEventListener?.('pagehide', bye);
  queue();
  announce();

  return {
    post,
    async close() {
      closed = true;
      doc?.removeEventListener('visibilitychange', onVisibility);
      globalThis.removeEventListener?.('pagehide', bye);
      queued.abort();
      const stopping = stop;
      stop = undefined;
      await stopping?.();
      release?.();
      bye();
      channel.close();
    },
  };
}

/**
 * The persisted outbox: one IndexedDB database per origin, one store whose keys
 * (auto-increment) keep the order of every tab's events. Undefined without IndexedDB.
 */
export function openOutbox() {
  const idb = globalThis.indexedDB;
  if (!idb || !inBrowser() || !globalThis.navigator?.locks) return;
  const db = new Promise((resolve, reject) => {
    const request = idb.open('distributed-events', 1);
    request.onupgradeneeded = () => request.result.createObjectStore('outbox', { autoIncrement: true });
    request.onsuccess = () => {
      // A newer version of the app upgrading the database must not wait for this page.
      request.result.onversionchange = () => request.result.close();
      resolve(request.result);
    };
    request.onerror = () => reject(request.error);
  });
  db.catch(() => {}); // no IndexedDB (a private window, say): publish keeps events in memory instead
  /** Runs `work(store)` in a transaction; resolves with its result once committed. */
  const run = async (mode, work) => {
    const transaction = (await db).transaction('outbox', mode);
    const result = work(transaction.objectStore('outbox'));
    return new Promise((resolve, reject) => {
      transaction.oncomplete = () => resolve(result);
      transaction.onerror = transaction.onabort = () => reject(transaction.error);
    });
  };
  return {
    /** Adds `{ g: serverUrl, tab, r: record }`. */
    add: (entry) => run('readwrite', (store) => store.add(entry)),
    remove: (key) => run('readwrite', (store) => store.delete(key)),
    /** The server's entries in key order, as `[key, entry]`. */
    read: (server) =>
      run('readonly', (store) => {
        const found = [];
        store.openCursor().onsuccess = ({ target: { result: cursor } }) => {
          if (!cursor) return;
          if (cursor.value.g === server) found.push([cursor.key, cursor.value]);
          cursor.continue();
        };
        return found;
      }),
    close: () => db.then((db) => db.close(), () => {}),
  };
}
