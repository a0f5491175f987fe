// The JS driver of `EventBusClient`: it does the I/O (fetch, streams, timers, storage,
// the other tabs) and asks the wasm `Core` every question of delivery: which events
// reach handlers, where the cursor stands, the outbox's order and retries, backoff and
// the status.
import { Core } from '../pkg/distributed_events_client.js';
import { fail, failure, readHead, readMessage, readPage, readReceipt, sseParser } from './http.js';
import { parseOptions } from './options.js';
import { join, openOutbox } from './tabs.js';

const WAIT = 25_000; // the long-poll wait: below the server's cap and common proxy timeouts
const BEYOND = 15_000; // how long a request may take beyond its wait
const FIRST_BYTES = 10_000; // a stream silent this long sits behind a buffering proxy: long-poll
const STREAM_AGAIN = 300_000; // after falling back, try streaming again this much later
const IDLE = 30_000; // the server's keep-alive (15 s) plus BEYOND
const PAGE = 1000;
const PAUSE = 500; // the initial backoff
// Why a request was aborted.
const STOP = 'stop';
const WIDEN = 'widen';
const FALLBACK = 'fallback';
const TIMEOUT = 'timeout';
const OFFLINE = 'offline';

const offline = () => fail('network_error', 'cannot reach the server: the browser is offline; the client goes on when the network is back');
const plain = (error) => error && { message: error.message, ...error };
const revive = (error) => error && Object.assign(new Error(error.message), error);

/** A `ClientEvent` of a wire record. */
function toEvent(record, payload) {
  const context = { ...record.context };
  for (const key of ['userId', 'tenantId', 'sessionId']) if (record[key] != null) context[key] = record[key];
  const { id, eventType, aggregateId, createdAt: occurredAt, position = null } = record;
  return { id, eventType, aggregateId, occurredAt, position, context, payload };
}

export class EventBusClient {
  constructor(options) {
    const o = parseOptions(options);
    // 4096 recent ids, as the Rust client keeps.
    const core = new Core(4096, PAUSE, 30_000, (Math.random() * 2 ** 32) >>> 0);
    core.setTypes(o.eventTypes, o.handledOnly);
    const me = crypto.randomUUID();
    const name = `distributed-events:${JSON.stringify([o.url, o.eventTypes, o.aggregateIds, o.handledOnly, o.mode, o.interval])}`;
    // The group's cursor: another filter's would skip or repeat events here.
    const filtered = o.eventTypes.length || o.aggregateIds.length || o.handledOnly;
    const cursorKey = `distributed-events:cursor:${o.url}${filtered ? ` ${JSON.stringify([o.eventTypes, o.aggregateIds, o.handledOnly])}` : ''}`;
    const outbox = openOutbox();

    // ---- handlers: called from a microtask, never inside the caller's stack
    const [events, statuses, errors, receipts] = [new Set(), new Set(), new Set(), new Set()];
    const queue = [];
    let closed = false;
    const flush = () => {
      for (const [set, targets, value] of queue.splice(0))
        for (const target of targets)
          // No call after unsubscribe or close, not even for what was queued; `closed` still reaches status handlers.
          if (set.has(target) && (!closed || set === statuses))
            try {
              target.fn(value);
            } catch (error) {
              console.error('EventBusClient: a handler threw', error);
            }
    };
    const emit = (set, value, only = () => true) => {
      const targets = [...set].filter(only);
      if (targets.length && queue.push([set, targets, value]) === 1) queueMicrotask(flush);
    };
    const subscribe = (set, fn, type) => {
      const entry = { fn, type };
      set.add(entry);
      return [entry, () => set.delete(entry)];
    };

    // ---- status: the leader's Core says it; followers show what the leader broadcasts
    let shown = { state: 'connecting' };
    let leading = false;
    let group = { post() {} };
    const post = (message) => group.post(message);
    const show = (status) => {
      const says = ({ state, transport, error, retryAt }) => [state, transport, error?.code, error?.message, retryAt].join();
      const same = says(status) === says(shown);
      if (same || shown.state === 'closed') return;
      shown = status;
      emit(statuses, status);
      if (leading && status.state !== 'closed') post({ t: 'status', s: { ...status, error: plain(status.error) } });
    };
    const sync = () => {
      if (!core.statusChanged()) return;
      const state = core.state;
      show(state === 'live' ? { state, transport: core.transport } : state === 'backingOff' ? { state, error: core.error, retryAt: core.retryAt } : { state });
    };
    /** An error for onError: this client's, or (with `tab`) the member's that published the event. */
    const report = (error, tab = me) => (tab === me ? emit(errors, error) : post({ t: 'error', tab, e: plain(error) }));

    // ---- the cursor
    /** Saves the cursor; the leader's is the group's (a follower catching up is behind it). */
    const save = () => {
      if (!o.persist || !leading) return;
      try {
        globalThis.localStorage.setItem(cursorKey, String(core.cursor));
      } catch (error) {
        report(fail('cursor_store_failed', `the cursor store failed: cannot write localStorage: ${error.message}`));
      }
    };
    const dispatch = (record) => {
      let payload;
      try {
        payload = JSON.parse(record.eventJson);
      } catch (error) {
        return report(fail('undecodable_payload', `event ${record.id} (${record.eventType}): eventJson is not JSON: ${error.message}`, { event: record }));
      }
      const event = toEvent(record, payload);
      emit(events, event, ({ type }) => type === '*' || type === event.eventType);
    };
    /** Hands the new ones of `records` to handlers, in order, and moves the cursor past them and to `to`. */
    const apply = (records, to) => {
      const before = core.cursor;
      for (const record of records) {
        if (core.admit(record.id, record.position)) dispatch(record);
        if (record.position !== undefined) core.advance(record.position);
      }
      if (to !== undefined) core.advance(to);
      if (core.cursor !== before) save();
    };
    // Raised when the type filter widens: a page asked for with an older filter may skip
    // events of the new type, so it is dropped and asked for again.
    let filter = 0;
    let receiving; // the AbortController of the receiving request in flight
    /** A page the leader (or a follower catching up) received; false when dropped. */
    const deliver = (page, version) => {
      if (closed || version !== filter) return false;
      page.bad.forEach((error) => report(error));
      const from = core.cursor;
      apply(page.events, page.cursor);
      if (leading && (page.events.length || page.bad.length || from !== core.cursor))
        post({ t: 'page', from, to: core.cursor, events: page.events, bad: page.bad.map(plain), types: core.eventTypes() });
      return true;
    };
    const reset = ({ code, resumeAfter }) => {
      const from = core.reset(resumeAfter) ?? 0;
      save();
      report(fail(code, `the server cannot continue from position ${from} (${code}); resumed after ${resumeAfter}, events in between were missed: reload state that depends on them`, { from, resumeAfter }));
    };

    // ---- I/O: requests, timers, aborts
    const controllers = new Set();
    const sleepers = new Set();
    const sleep = (ms) =>
      new Promise((resolve) => {
        const wake = () => {
          clearTimeout(timer);
          sleepers.delete(wake);
          resolve();
        };
        const timer = setTimeout(wake, Math.min(ms, 2 ** 31 - 1));
        sleepers.add(wake);
      });
    const wakeAll = () => sleepers.forEach((wake) => wake());
    // Rejects the waits that are no fetch (a getToken that may never settle) with the reason.
    const cancels = new Set();
    const abortAll = (reason) => {
      controllers.forEach((controller) => controller.abort(reason));
      cancels.forEach((cancel) => cancel(reason));
    };

    /**
     * Sends a request with the configured headers and token; `run(response, deadline)`
     * reads the answer, within `timeout` ms (`deadline(ms, reason)` sets a new one).
     * Throws an EventBusClientError, or the abort reason STOP, WIDEN or FALLBACK.
     */
    const request = async (url, init, timeout, run, onAbort = TIMEOUT) => {
      if (globalThis.navigator?.onLine === false) throw offline();
      const headers = { ...o.headers, ...init.headers };
      if (o.getToken) {
        let cancel;
        const token = await new Promise((resolve, reject) => {
          cancel = reject;
          cancels.add(cancel);
          Promise.resolve()
            .then(o.getToken)
            .then((token) => {
              if (token != null && typeof token !== 'string') throw new Error('it must return a string, null or undefined (or a Promise of one)');
              resolve(token);
            })
            .catch((error) => reject(fail('token_failed', `getting an access token failed: getToken: ${error?.message ?? error}`)));
        })
          .catch((reason) => {
            throw reason === OFFLINE ? offline() : reason;
          })
          .finally(() => cancels.delete(cancel));
        if (token) headers.authorization = `Bearer ${token}`;
      }
      const controller = new AbortController();
      controllers.add(controller);
      if (init.receiving) receiving = controller;
      let timer;
      const deadline = (ms, reason) => {
        clearTimeout(timer);
        timeout = ms;
        timer = setTimeout(() => controller.abort(reason), ms);
      };
      deadline(timeout, onAbort);
      try {
        if (closed) throw STOP;
        const response = await fetch(url, { ...init, headers, signal: controller.signal });
        return await run(response, deadline);
      } catch (error) {
        const reason = controller.signal.aborted ? controller.signal.reason : error;
        if (reason === TIMEOUT) throw fail('timeout', `the server did not answer within ${timeout} ms`);
        if (reason === OFFLINE) throw offline();
        if (typeof reason === 'string' || reason?.code || reason?.kind) throw reason;
        const cause = error?.cause?.message ? ` (${error.cause.message})` : '';
        throw fail('network_error', `cannot reach the server: ${error?.message}${cause}; is the server running, and does it allow this origin with --cors-origin?`);
      } finally {
        clearTimeout(timer);
        controllers.delete(controller);
        // Frees the connection of a body left unread (a stream that ended early); a no-op after a full read.
        controller.abort(STOP);
      }
    };
    /** A plain exchange: a 2xx answer (its body and the headers the protocol uses), else throws what it means. */
    const ask = (url, init, timeout) =>
      request(url, init, timeout, async (response) => {
        const answer = { status: response.status, text: await response.text(), cursor: response.headers.get('x-events-cursor'), retryAfter: response.headers.get('retry-after') };
        if (response.ok) return answer;
        throw failure(answer);
      });
    /** The URL of `GET /events` after the cursor (by `since` while there is none), with the filter. */
    const eventsUrl = (extra = []) => {
      const cursor = core.cursor;
      const query = [cursor === undefined ? `since=${o.since}` : `after=${cursor}`, ...extra];
      for (const type of core.eventTypes()) query.push(`eventType=${encodeURIComponent(type)}`);
      for (const id of o.aggregateIds) query.push(`aggregateId=${encodeURIComponent(id)}`);
      return `${o.url}/events?${query.join('&')}`;
    };
    const asFailure = (error) => (error?.kind ? error : { kind: 'retry', error });
    /** Backs off after a failed receive (or, with `send`, a failed post): reports what is not transient, shows it, waits. */
    const backOff = async ({ error, retryAfter }, send, tab) => {
      // Errors that go away by themselves only show in the status.
      if (!Core.transient(error.code ?? '', error.status)) {
        report(error, tab);
        // The other members hear of what stops receiving (a refused token, say) too.
        if (!send && leading) post({ t: 'error', e: plain(error) });
      }
      const wait = (send ? core.sendFailed : core.receiveFailed).call(core, error, retryAfter, Date.now());
      sync();
      await sleep(wait);
    };

    // ---- leading: the receiving and sending loops
    let term = 0;
    let kick = () => {}; // wakes the sending loop
    /** After a failed receive; true when the loop must end. */
    const recover = async (error, mine) => {
      if (mine !== term || closed || error === STOP) return true;
      if (error === WIDEN) return false;
      const failed = asFailure(error);
      if (failed.kind === 'reset') reset(failed);
      else await backOff(failed);
      return mine !== term || closed;
    };
    const live = (transport) => {
      core.receiving(transport);
      sync();
    };

    /** Polls (long-polls, or every `interval`) until `until`; true when stopped. */
    const poll = async (mine, mode, until = Infinity) => {
      let caughtUp = false;
      while (Date.now() < until) {
        if (mine !== term || closed) return true;
        const version = filter;
        const wait = mode !== 'poll' && caughtUp;
        const asked = Date.now();
        try {
          const page = readPage(await ask(eventsUrl([`limit=${PAGE}`, ...(wait ? [`wait=${WAIT / 1000}`] : [])]), { receiving: true }, o.mode === 'poll' ? BEYOND : WAIT + BEYOND));
          live(mode);
          const count = page.events.length + page.bad.length;
          if (!deliver(page, version)) continue;
          if (mode === 'poll' && count < PAGE) await sleep(o.interval);
          // Answered at once, long before the wait ended: the server is shutting down. Do not spin on it.
          else if (wait && !count && Date.now() - asked < WAIT / 2) await sleep(PAUSE);
          caughtUp = count < PAGE;
        } catch (error) {
          if (error?.kind === 'reset') caughtUp = false;
          if (await recover(error, mine)) return true;
        }
      }
    };

    /** Follows one event stream until it ends; resolves with whether it delivered anything. */
    const follow = () => {
      const version = filter;
      return request(eventsUrl(), { headers: { accept: 'text/event-stream' }, receiving: true }, FIRST_BYTES, async (response, deadline) => {
        if (!response.ok) {
          deadline(BEYOND, TIMEOUT);
          throw failure({ status: response.status, text: await response.text(), retryAfter: response.headers.get('retry-after') });
        }
        // A server (or proxy) that does not stream answered with a page.
        if (!/^text\/event-stream\s*(;|$)/i.test(response.headers.get('content-type') ?? '')) throw FALLBACK;
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let messages = [];
        const parse = sseParser((message) => messages.push(message));
        let delivered = false;
        for (let first = true; ; first = false) {
          const { done, value } = await reader.read();
          if (done) return delivered;
          deadline(IDLE, TIMEOUT);
          if (first) live('stream');
          messages = [];
          let stop;
          try {
            parse(decoder.decode(value, { stream: true }));
          } catch (error) {
            stop = error;
          }
          // The messages of one read are delivered together, up to one that stops them.
          const page = { events: [], bad: [], cursor: core.cursor };
          let any = false;
          for (const message of messages)
            try {
              any = readMessage(message, page) || any;
            } catch (error) {
              stop = error;
              break;
            }
          if (any) {
            delivered = true;
            if (!deliver(page, version)) throw WIDEN;
          }
          if (stop) throw stop;
        }
      }, FALLBACK);
    };

    /** Streams, reconnecting after each end, until a stream brings nothing in time; true when stopped. */
    const stream = async (mine) => {
      for (;;) {
        if (mine !== term || closed) return true;
        try {
          // A server that ends every stream at once (shutting down) must not make the client spin.
          if (!(await follow())) await sleep(PAUSE);
        } catch (error) {
          if (error === FALLBACK) return false;
          if (await recover(error, mine)) return true;
        }
      }
    };

    const receive = async (mine) => {
      await null; // after the saved cursor is read
      // Where to start: the saved cursor or initialPosition were set at start; else the server's head.
      while (core.cursor === undefined && !o.since) {
        try {
          core.startAt(readHead(await ask(`${o.url}/healthz`, {}, WAIT + BEYOND)));
          save();
          post({ t: 'cursor', c: core.cursor });
          live(o.mode);
        } catch (error) {
          if (await recover(error, mine)) return;
        }
      }
      if (o.mode !== 'stream') return poll(mine, o.mode);
      while (!(await stream(mine)) && !(await poll(mine, 'long-poll', Date.now() + STREAM_AGAIN)));
    };

    /** Posts the outbox's oldest event until the server has it, in order. */
    const send = async (mine) => {
      while (mine === term && !closed) {
        const item = core.next;
        if (item === undefined) {
          await new Promise((resolve) => (kick = resolve));
          continue;
        }
        let failed;
        try {
          // The same body each time: the event id makes a retry idempotent.
          const receipt = readReceipt(await ask(`${o.url}/events`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(item.r) }, BEYOND));
          // Deleted before it leaves the queue: a read of the store in between finds it still queued.
          await drop(item);
          core.settle(false);
          sync();
          unsent.delete(item.r.id);
          if (item.tab === me) emit(receipts, receipt);
          else post({ t: 'stored', tab: item.tab, r: receipt });
          continue;
        } catch (error) {
          if (mine !== term || closed || error === STOP) return;
          failed = asFailure(error);
        }
        if (failed.kind === 'retry') {
          await backOff(failed, true, item.tab);
          continue;
        }
        // Refused for good (or a 410, which a post cannot get): dropped.
        const { id } = item.r;
        const code = failed.code ?? 'http_error';
        const error = fail(code, `the server refused event ${id} (${code}): ${failed.message ?? 'unexpected answer to a post'}`, { status: failed.error?.status ?? 410, event: item.r });
        await drop(item);
        core.settle(true);
        sync();
        unsent.delete(id);
        if (item.tab === me) report(error);
        else post({ t: 'error', tab: item.tab, e: plain(error), id });
      }
    };

    /** Removes a sent (or refused) event from the persisted outbox. */
    const drop = (item) => item.k !== undefined && outbox.remove(item.k).catch(() => {}); // read again, sent again: idempotent
    /** Reads the persisted outbox into the Core's queue (it ignores what it holds already). */
    const readOutbox = async () => {
      for (const [k, { r, tab }] of (await outbox?.read(o.url).catch(() => [])) ?? []) if (leading) core.enqueue(r.id, { k, r, tab });
      kick();
    };

    const lead = () => {
      leading = true;
      const mine = ++term;
      buffered.length = 0;
      if (core.cursor !== undefined) post({ t: 'cursor', c: core.cursor });
      // What the last leader said stays shown until this Core has news.
      post({ t: 'status', s: { ...shown, error: plain(shown.error) } });
      unsent.forEach((r) => core.enqueue(r.id, { r, tab: me }));
      readOutbox();
      const loops = Promise.all([receive(mine), send(mine)]);
      return async () => {
        leading = false;
        term++;
        abortAll(STOP);
        wakeAll();
        kick();
        await loops;
        // The next leader reads the persisted outbox, and the members hand it their
        // memory-only events again (`unsent`).
        core.clear();
      };
    };

    // ---- following: apply the leader's pages; catch up alone when behind
    const buffered = [];
    let target = -1;
    let catching = false;
    const applyPage = (page) => {
      page.bad.forEach((error) => report(revive(error)));
      apply(page.events, page.to);
    };
    const catchUp = async () => {
      if (catching) return;
      catching = true;
      for (let stuck = false; ; ) {
        while (!closed && !leading && (core.cursor === undefined ? o.since : core.cursor < target)) {
          const version = filter;
          try {
            const page = readPage(await ask(eventsUrl([`limit=${PAGE}`]), {}, BEYOND));
            if (version !== filter) continue;
            core.resetBackoff();
            page.bad.forEach((error) => report(error));
            const before = core.cursor;
            apply(page.events, page.cursor);
            // A page may be short of PAGE events (a cap in bytes) and more follow; one that moves nothing ends it.
            if ((stuck = core.cursor === before)) break;
          } catch (error) {
            const failed = asFailure(error);
            if (closed || leading || error === STOP) break;
            if (failed.kind === 'reset') reset(failed);
            else {
              if (!Core.transient(failed.error.code ?? '', failed.error.status)) report(failed.error);
              await sleep(core.receiveFailed(failed.error, failed.retryAfter, Date.now()));
            }
          }
        }
        if (closed || leading) break;
        // The leader's pages that came meanwhile, in order (Core drops what the catch-up
        // delivered already); one that starts past the cursor means catching up again.
        let gap = false;
        while (buffered.length && !gap) {
          const need = core.follow(buffered[0].from, buffered[0].to, buffered[0].types);
          if (stuck || core.cursor >= need) applyPage(buffered.shift());
          else {
            target = Math.max(target, need);
            gap = true;
          }
        }
        if (!gap) break;
      }
      catching = false;
    };
    const handled = [];
    // Events handed to the leader without IndexedDB, until it says they were stored or
    // refused: a leader that goes first leaves them to the next one.
    const unsent = new Map();
    const onMessage = (message) => {
      if (closed) return;
      const { t } = message;
      if (t === 'stored' && message.tab === me) {
        unsent.delete(message.r.id);
        emit(receipts, message.r);
      }
      if (t === 'error' && (message.tab === me || !message.tab)) {
        if (message.id) {
          unsent.delete(message.id);
          core.forgetEcho(message.id);
        }
        emit(errors, revive(message.e));
      }
      if (leading) {
        if (t === 'hello') {
          if (core.cursor !== undefined) post({ t: 'cursor', c: core.cursor });
          post({ t: 'status', s: { ...shown, error: plain(shown.error) } });
        }
        if ((t === 'hello' || t === 'types') && message.types.map((type) => core.handleType(type)).includes(true)) widen();
        if (t === 'outbox') readOutbox();
        if (t === 'send') {
          core.enqueue(message.r.id, { r: message.r, tab: message.sender });
          kick();
        }
        return;
      }
      if (t === 'lead') {
        if (handled.length) post({ t: 'types', types: handled });
        // The leader's queue ignores what it holds already, and the ids make a resend idempotent.
        unsent.forEach((r) => post({ t: 'send', r }));
      }
      if (t === 'status') show({ ...message.s, error: revive(message.s.error) });
      if (t === 'cursor') {
        if (core.cursor === undefined && !o.since) core.startAt(message.c);
        target = Math.max(target, message.c);
        catchUp();
      }
      if (t === 'page') {
        const need = core.follow(message.from, message.to, message.types);
        if (core.cursor === undefined && !o.since) core.startAt(message.from ?? message.to);
        if (!catching && core.cursor >= need) return applyPage(message);
        buffered.push(message);
        target = Math.max(target, need);
        catchUp();
      }
    };
    const widen = () => {
      filter++;
      receiving?.abort(WIDEN);
    };

    // ---- offline: pause; online: resume at once
    const onOffline = () => abortAll(OFFLINE);
    const onOnline = () => {
      core.resetBackoff();
      wakeAll();
    };
    globalThis.addEventListener?.('offline', onOffline);
    globalThis.addEventListener?.('online', onOnline);

    // From a microtask, so that handlers registered right after the constructor hear of a
    // saved cursor that cannot be read; the loops start after it.
    queueMicrotask(() => {
      if (o.persist)
        try {
          const saved = globalThis.localStorage.getItem(cursorKey);
          if (saved !== null) {
            if (!/^\d+$/.test(saved)) throw new Error(`localStorage \`${cursorKey}\` holds ${JSON.stringify(saved)}, not a cursor; remove it to start afresh`);
            core.startAt(Number(saved));
          }
        } catch (error) {
          report(fail('cursor_store_failed', `the cursor store failed: ${error.message}`));
        }
      if (o.position !== undefined) core.startAt(o.position);
    });
    sync();
    group = join(name, me, lead, onMessage);
    post({ t: 'hello', types: handled });

    // ---- the API
    this.on = (eventType, handler) => {
      if (o.handledOnly) {
        handled.push(eventType);
        if (core.handleType(eventType)) {
          if (leading) widen();
          else {
            filter++;
            post({ t: 'types', types: [eventType] });
          }
        }
      }
      return subscribe(events, handler, eventType)[1];
    };

    this.publish = (eventType, payload, options) => {
      const invalid = (message) => fail('invalid_event', `cannot publish this event: ${message}`);
      const unknown = Object.keys(options ?? {}).find((key) => key !== 'aggregateId' && key !== 'context');
      if (unknown) throw invalid(`unknown publish option \`${unknown}\``);
      const { aggregateId, context } = options ?? {};
      if (typeof aggregateId !== 'string' || typeof eventType !== 'string' || (context != null && (typeof context !== 'object' || Array.isArray(context))))
        throw invalid('pass the event type as a string and options like { aggregateId: "order-1", context: { userId: "u1" } }');
      let eventJson;
      let rest;
      try {
        eventJson = JSON.stringify(payload);
        rest = JSON.parse(JSON.stringify(context ?? {}));
      } catch {}
      if (eventJson === undefined || !rest) throw invalid('the payload and the context must be JSON: objects, arrays, strings, numbers, booleans or null');
      if (!eventType.trim() || !aggregateId) throw invalid('eventType and aggregateId must not be empty');
      if (closed) throw fail('closed', 'the client is closed; create a new client to publish or receive');
      const record = { id: crypto.randomUUID(), createdAt: new Date().toISOString(), aggregateId, eventType, eventJson, userId: null, tenantId: null, sessionId: null };
      for (const key of ['userId', 'tenantId', 'sessionId'])
        if (typeof rest[key] === 'string') {
          record[key] = rest[key];
          delete rest[key];
        }
      if (Object.keys(rest).length) record.context = rest;
      const { id } = record;
      if (o.autoForward) {
        // Before the event can reach the server, so that its echo is recognised.
        core.expectEcho(id);
        const inMemory = () => {
          unsent.set(id, record);
          if (!leading) return post({ t: 'send', r: record });
          core.enqueue(id, { r: record, tab: me });
          kick();
        };
        if (outbox) {
          // close() waits for the write, so that the leader hears of the event before this client goes.
          const write = outbox
            .add({ g: o.url, tab: me, r: record })
            .then(() => (leading ? readOutbox() : post({ t: 'outbox' })), inMemory)
            .finally(() => writes.delete(write));
          writes.add(write);
        } else inMemory();
      } else core.recordDispatched(id);
      dispatch(record);
      return id;
    };

    this.onStatus = (handler) => {
      const [entry, off] = subscribe(statuses, handler);
      emit(statuses, shown, (target) => target === entry);
      return off;
    };
    this.onError = (handler) => subscribe(errors, handler)[1];
    this.onStored = (handler) => subscribe(receipts, handler)[1];

    const writes = new Set(); // publishes still writing to IndexedDB
    let closing;
    this.close = () =>
      (closing ??= (async () => {
        closed = true;
        core.close();
        show({ state: 'closed' });
        globalThis.removeEventListener?.('offline', onOffline);
        globalThis.removeEventListener?.('online', onOnline);
        abortAll(STOP);
        wakeAll();
        await Promise.allSettled(writes);
        await group.close();
        outbox?.close();
        // Without a persisted outbox, events not sent yet are dropped.
        core.clear();
      })());

    Object.defineProperties(this, {
      status: { get: () => shown },
      cursor: { get: () => core.cursor },
    });
  }
}
