// distributed-events and socket.io side by side, in one run, driven by this one Node
// process: the same publisher and the same clients for every system (docs/PERFORMANCE.md,
// "Compared with socket.io"). Run it through scripts/bench-vs-socketio.sh, which builds the
// server and installs socket.io first.
//
//     node compare.mjs --server-bin ../../target/release/distributed-events-server
//     node compare.mjs --server-bin ... --smoke          # seconds, tiny counts
//     node compare.mjs --server-bin ... --workloads 100x50 --systems ours-stream,socketio-websocket
//
// For each workload (N clients x R events/s for T s) and each system, a fresh server:
// - ours: the server binary on a new SQLite file in a temporary directory; each client
//   follows `GET /events?after=<head>` as Server-Sent Events (`ours-stream`) or by
//   long-polling (`ours-long-poll`); the publisher POSTs `/events` (durable before the 201).
// - socket.io: relay.mjs in its own Node process; each client is a socket.io-client on the
//   websocket (`socketio-websocket`) or HTTP long-polling (`socketio-polling`) transport;
//   the publisher is one more socket.io client whose `publish` the relay broadcasts.
// Every payload carries its sequence number and the time it was sent (this process's
// clock). Measured: publish -> handler latency (p50, p99, max) over every delivery,
// deliveries per second (first publish to last delivery), and the server process's CPU
// (utime + stime from /proc/PID/stat) per delivery. Every client must receive every event
// exactly once, or the run fails. Figures print as `BENCH {json}` lines as they are taken
// (the format of the Rust bench, bench/src/report.rs), then a table.
import { spawn, execFileSync } from "node:child_process";
import { setMaxListeners } from "node:events";
import { randomUUID } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { performance } from "node:perf_hooks";
import { io } from "socket.io-client";

const SCENARIO = "vs-socketio";
const SYSTEMS = ["ours-stream", "ours-long-poll", "socketio-websocket", "socketio-polling"];
const here = dirname(fileURLToPath(import.meta.url));

const { values: options } = parseArgs({
  options: {
    "server-bin": { type: "string", default: join(here, "../../target/release/distributed-events-server") },
    workloads: { type: "string" },
    systems: { type: "string", default: SYSTEMS.join(",") },
    seconds: { type: "string", default: "10" },
    smoke: { type: "boolean", default: false },
    help: { type: "boolean", short: "h", default: false },
  },
});
if (options.help) {
  console.log(`usage: node compare.mjs [--server-bin PATH] [--workloads 100x50,200x500,1000x200]
       [--systems ${SYSTEMS.join(",")}] [--seconds 10] [--smoke]`);
  process.exit(0);
}
const smoke = options.smoke;
const seconds = smoke ? 1 : Number(options.seconds);
const workloads = (options.workloads ?? (smoke ? "5x20,20x100" : "100x50,200x500,1000x200"))
  .split(",")
  .map((spec) => {
    const [clients, rate] = spec.split("x").map(Number);
    if (!(clients >= 1 && rate > 0)) fail(`bad workload ${spec}: want CLIENTSxRATE, such as 100x50`);
    return { clients, rate };
  });
const systems = options.systems.split(",");
for (const system of systems) {
  if (!SYSTEMS.includes(system)) fail(`unknown system ${system}: one of ${SYSTEMS.join(", ")}`);
}
/** Bound on the wait for the last deliveries after the last publish. */
const DRAIN_MS = smoke ? 30_000 : 120_000;
const CLOCK_TICKS = Number(execFileSync("getconf", ["CLK_TCK"]).toString().trim()) || 100;

function fail(message) {
  console.error(`error: ${message}`);
  process.exit(1);
}

/** An error's message with its causes (fetch's "fetch failed" has the reason in `cause`). */
function describe(error) {
  let message = error.message;
  for (let cause = error.cause; cause; cause = cause.cause) message += `: ${cause.message ?? cause}`;
  return message;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---- figures -------------------------------------------------------------------------

const figures = [];

/** Prints one figure as a `BENCH` line at once, like the Rust bench's report. */
function record(figure, value, unit, target = null) {
  const met = target ? (target.op === "at_most" ? value <= target.value : value >= target.value) : null;
  const line = { scenario: SCENARIO, figure, value, unit, target, met, load1: loadavg()[0], smoke };
  console.log(`BENCH ${JSON.stringify(line)}`);
  figures.push(line);
}

/** Nearest-rank percentile of sorted values (the Rust bench's definition). */
function percentile(sorted, p) {
  if (sorted.length === 0) return NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(Math.max(rank, 1), sorted.length) - 1];
}

function human(value) {
  if (!Number.isFinite(value)) return String(value);
  if (Math.abs(value) >= 1000) return Math.round(value).toLocaleString("en-US");
  if (Math.abs(value) >= 100) return value.toFixed(1);
  if (Math.abs(value) >= 1) return value.toFixed(2);
  return value.toFixed(3);
}

// ---- server processes ----------------------------------------------------------------

/** Starts `program args` and waits for its `listening on http://ADDR` line on stderr. */
function startProcess(name, program, args, env = {}) {
  const child = spawn(program, args, {
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn", ...env },
    stdio: ["ignore", "inherit", "pipe"],
  });
  return new Promise((resolve, reject) => {
    let pending = "";
    let url = null;
    const timer = setTimeout(() => reject(new Error(`${name} did not start listening within 30 s`)), 30_000);
    child.on("error", (error) => reject(new Error(`cannot start ${program}: ${error.message}`)));
    child.on("exit", (code) => {
      if (url === null) reject(new Error(`${name} exited (${code}) before listening; see its log above`));
    });
    child.stderr.on("data", (chunk) => {
      pending += chunk.toString();
      let newline;
      while ((newline = pending.indexOf("\n")) !== -1) {
        const line = pending.slice(0, newline);
        pending = pending.slice(newline + 1);
        const address = line.startsWith("listening on http://") ? line.slice("listening on ".length) : null;
        if (address && url === null) {
          url = address.trim();
          clearTimeout(timer);
          resolve({ child, url });
        } else {
          process.stderr.write(`[${name}] ${line}\n`);
        }
      }
    });
  });
}

async function stopProcess(child) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once("exit", resolve));
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), 5_000);
  await exited;
  clearTimeout(timer);
}

/** User plus system CPU seconds of process `pid` so far. */
function cpuSeconds(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  // The fields after the command name, which is in parentheses and may hold spaces;
  // utime and stime are fields 14 and 15 of proc(5), and the rest starts at field 3.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[14 - 3]) + Number(fields[15 - 3])) / CLOCK_TICKS;
}

// ---- what every system's clients share ------------------------------------------------

/**
 * The deliveries of one run: every client must see every sequence number exactly once.
 * `deliver` is the handler of every system's clients.
 */
class Deliveries {
  constructor(clients, events) {
    this.events = events;
    this.expected = clients * events;
    this.seen = Array.from({ length: clients }, () => new Uint8Array(events));
    this.latencies = new Float64Array(this.expected);
    this.count = 0;
    this.duplicate = null;
    this.last = 0;
    this.whenAll = new Promise((resolve) => (this.resolveAll = resolve));
  }

  deliver(client, payload) {
    const now = performance.now();
    const { seq, sent } = payload;
    if (!(seq >= 0 && seq < this.events)) return; // not one of this run's events
    if (this.seen[client][seq]) {
      this.duplicate ??= `client ${client} received event ${seq} twice`;
      return;
    }
    this.seen[client][seq] = 1;
    this.latencies[this.count++] = now - sent;
    this.last = now;
    if (this.count === this.expected) this.resolveAll();
  }

  /** Why the run is not complete, or null. */
  problem() {
    if (this.duplicate) return this.duplicate;
    if (this.count === this.expected) return null;
    const short = this.seen.findIndex((seen) => seen.includes(0));
    const got = this.seen[short].reduce((sum, flag) => sum + flag, 0);
    return `${this.count} of ${this.expected} deliveries; client ${short} received ${got} of ${this.events} events`;
  }
}

/** A tiny Server-Sent Events parser: feed it text, it calls `onMessage({id, event, data})`. */
function sseParser(onMessage) {
  let buffer = "";
  let message = { id: null, event: null, data: null };
  return (text) => {
    buffer += text;
    let start = 0;
    let newline;
    while ((newline = buffer.indexOf("\n", start)) !== -1) {
      let line = buffer.slice(start, newline);
      start = newline + 1;
      if (line.endsWith("\r")) line = line.slice(0, -1);
      if (line === "") {
        if (message.id !== null || message.data !== null || message.event !== null) onMessage(message);
        message = { id: null, event: null, data: null };
        continue;
      }
      if (line.startsWith(":")) continue; // a comment: `: ok`, `: keep-alive`
      const colon = line.indexOf(":");
      const field = colon === -1 ? line : line.slice(0, colon);
      let value = colon === -1 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "data") message.data = message.data === null ? value : `${message.data}\n${value}`;
      else if (field === "id") message.id = value;
      else if (field === "event") message.event = value;
    }
    buffer = buffer.slice(start);
  };
}

// ---- ours ----------------------------------------------------------------------------

const ours = {
  async start() {
    const dir = mkdtempSync(join(tmpdir(), "distributed-events-vs-socketio-"));
    const args = ["--bind", "127.0.0.1:0", "--database", `sqlite://${join(dir, "events.db")}`, "--static-dir", "/nonexistent"];
    try {
      const { child, url } = await startProcess("server", options["server-bin"], args);
      return { child, url, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
    } catch (error) {
      rmSync(dir, { recursive: true, force: true });
      throw new Error(`${error.message}; build it with \`cargo build --release -p distributed-events-server\``);
    }
  },

  async head(url) {
    const response = await fetch(`${url}/healthz`);
    if (!response.ok) throw new Error(`GET /healthz answered ${response.status}`);
    return (await response.json()).head;
  },

  /** A publisher that POSTs each event; `publish` resolves on the 201. */
  publisher(url) {
    return async (payload) => {
      const record = {
        id: randomUUID(),
        createdAt: new Date().toISOString(),
        aggregateId: `bench-${payload.seq % 64}`,
        eventType: "BenchEvent",
        eventJson: JSON.stringify(payload),
      };
      const response = await fetch(`${url}/events`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(record),
      });
      if (response.status !== 201) throw new Error(`POST /events answered ${response.status}: ${await response.text()}`);
      await response.arrayBuffer();
    };
  },

  /**
   * A client following the stream from `after`; resolves once the stream's first bytes
   * arrived. It resumes with `Last-Event-ID` when the server ends the stream.
   */
  async streamClient(url, after, onPayload, signal, failures) {
    let lastId = String(after);
    let ready;
    const opened = new Promise((resolve) => (ready = resolve));
    const parse = sseParser((message) => {
      if (message.id !== null) lastId = message.id;
      if (message.event === "cursor_expired") failures.push(`cursor_expired mid-stream: ${message.data}`);
      else if (message.data !== null) onPayload(JSON.parse(JSON.parse(message.data).eventJson));
    });
    (async () => {
      while (!signal.aborted) {
        try {
          const response = await fetch(`${url}/events?after=${after}`, {
            headers: { accept: "text/event-stream", "last-event-id": lastId },
            signal,
          });
          if (response.status !== 200) throw new Error(`the stream answered ${response.status}: ${await response.text()}`);
          const decoder = new TextDecoder();
          for await (const chunk of response.body) {
            ready();
            parse(decoder.decode(chunk, { stream: true }));
          }
        } catch (error) {
          if (signal.aborted) return;
          failures.push(`stream: ${describe(error)}`);
          ready();
          return;
        }
      }
    })();
    await opened;
  },

  /** A client long-polling from `after`; resolves once its first poll was sent. */
  async longPollClient(url, after, onPayload, signal, failures) {
    let cursor = after;
    (async () => {
      while (!signal.aborted) {
        try {
          const response = await fetch(`${url}/events?after=${cursor}&wait=30`, { signal });
          if (response.status !== 200) throw new Error(`the poll answered ${response.status}: ${await response.text()}`);
          const page = await response.json();
          cursor = Number(response.headers.get("x-events-cursor") ?? cursor);
          for (const record of page) onPayload(JSON.parse(record.eventJson));
        } catch (error) {
          if (!signal.aborted) failures.push(`long-poll: ${describe(error)}`);
          return;
        }
      }
    })();
  },

  async run(system, workload, events) {
    const server = await this.start();
    const controller = new AbortController();
    // Every request of every client listens on it.
    setMaxListeners(0, controller.signal);
    try {
      const publish = this.publisher(server.url);
      for (let i = 0; i < 10; i++) await publish({ seq: -1, sent: performance.now() }); // warm up
      const after = await this.head(server.url);
      const deliveries = new Deliveries(workload.clients, events);
      const failures = [];
      const follow = system === "ours-stream" ? this.streamClient : this.longPollClient;
      const opening = [];
      for (let client = 0; client < workload.clients; client++) {
        const onPayload = (payload) => deliveries.deliver(client, payload);
        opening.push(follow.call(this, server.url, after, onPayload, controller.signal, failures));
        if (client % 100 === 99) await sleep(20); // the listen backlog
      }
      await Promise.all(opening);
      // Give the first long-polls time to park (a stream is open once it answered).
      await sleep(500);
      return await measure(server.child.pid, workload, events, publish, deliveries, failures);
    } finally {
      controller.abort();
      await stopProcess(server.child);
      server.cleanup();
    }
  },
};

// ---- socket.io -----------------------------------------------------------------------

const socketio = {
  connect(url, transport) {
    const socket = io(url, {
      transports: [transport],
      upgrade: false,
      forceNew: true,
      reconnection: false,
      timeout: 60_000,
    });
    return new Promise((resolve, reject) => {
      socket.once("connect", () => resolve(socket));
      socket.once("connect_error", (error) => reject(new Error(`socket.io connect: ${error.message}`)));
    });
  },

  async run(system, workload, events) {
    const relay = await startProcess("relay", process.execPath, [join(here, "relay.mjs"), "0"]);
    const sockets = [];
    try {
      const transport = system === "socketio-websocket" ? "websocket" : "polling";
      const publisherSocket = await this.connect(relay.url, "websocket");
      sockets.push(publisherSocket);
      const publish = (payload) => publisherSocket.emitWithAck("publish", payload);
      for (let i = 0; i < 10; i++) await publish({ seq: -1, sent: performance.now() }); // warm up
      const deliveries = new Deliveries(workload.clients, events);
      const failures = [];
      const connecting = [];
      for (let client = 0; client < workload.clients; client++) {
        connecting.push(
          this.connect(relay.url, transport).then((socket) => {
            sockets.push(socket);
            socket.on("event", (payload) => deliveries.deliver(client, payload));
            socket.on("disconnect", (reason) => {
              if (deliveries.count < deliveries.expected) failures.push(`client ${client} disconnected: ${reason}`);
            });
          }),
        );
        if (client % 100 === 99) await sleep(20);
      }
      await Promise.all(connecting);
      await sleep(500);
      return await measure(relay.child.pid, workload, events, publish, deliveries, failures);
    } finally {
      for (const socket of sockets) socket.close();
      await stopProcess(relay.child);
    }
  },
};

// ---- one measurement -----------------------------------------------------------------

/**
 * Publishes `events` events at `workload.rate` per second, each stamped with its send
 * time and not waiting for the one before (a slow acknowledgement does not shift the
 * schedule), then waits for every delivery.
 */
async function measure(pid, workload, events, publish, deliveries, failures) {
  const cpuBefore = cpuSeconds(pid);
  const ownBefore = process.cpuUsage();
  const started = performance.now();
  const acks = [];
  let seq = 0;
  while (seq < events) {
    const due = Math.min(events, Math.floor(((performance.now() - started) * workload.rate) / 1000) + 1);
    while (seq < due) {
      const payload = { seq, sent: performance.now() };
      acks.push(publish(payload).then(() => performance.now() - payload.sent));
      seq++;
    }
    await sleep(1);
  }
  const published = performance.now();
  const ackTimes = await Promise.all(acks);
  const drained = await Promise.race([deliveries.whenAll.then(() => true), sleep(DRAIN_MS).then(() => false)]);
  const cpu = cpuSeconds(pid) - cpuBefore;
  const own = process.cpuUsage(ownBefore);
  if (failures.length > 0) throw new Error(`a client failed: ${failures[0]}`);
  const problem = deliveries.problem();
  if (problem !== null || !drained) {
    throw new Error(`not every event was delivered exactly once within ${DRAIN_MS / 1000} s of the last publish: ${problem}`);
  }
  const elapsed = (deliveries.last - started) / 1000;
  const latencies = deliveries.latencies.sort();
  ackTimes.sort((a, b) => a - b);
  return {
    p50: percentile(latencies, 50),
    p99: percentile(latencies, 99),
    max: latencies[latencies.length - 1],
    deliveriesPerSecond: deliveries.expected / elapsed,
    publishedPerSecond: events / ((published - started) / 1000),
    cpuPerDeliveryUs: (cpu * 1e6) / deliveries.expected,
    serverCores: cpu / elapsed,
    generatorCores: (own.user + own.system) / 1e6 / elapsed,
    ackP50: percentile(ackTimes, 50),
  };
}

// ---- the run -------------------------------------------------------------------------

const results = new Map();
console.error(
  `vs-socketio${smoke ? " (smoke)" : ""}: ${workloads.map((w) => `${w.clients}x${w.rate}`).join(", ")} for ${seconds} s; ` +
    `${systems.join(", ")}; load average ${loadavg()[0].toFixed(2)}`,
);
for (const workload of workloads) {
  const events = Math.max(1, Math.ceil(workload.rate * seconds));
  const what = `${workload.clients} clients x ${workload.rate} events/s`;
  for (const system of systems) {
    console.error(`==> ${what}: ${system} at ${new Date().toISOString().slice(11, 19)}, load average ${loadavg()[0].toFixed(2)}`);
    const runner = system.startsWith("ours") ? ours : socketio;
    let result;
    try {
      result = await runner.run(system, workload, events);
    } catch (error) {
      fail(`${what}, ${system}: ${error.message}`);
    }
    results.set(`${what}|${system}`, result);
    record(`${what}, ${system}: publish to handler p50`, result.p50, "ms");
    record(`${what}, ${system}: publish to handler p99`, result.p99, "ms");
    record(`${what}, ${system}: publish to handler max`, result.max, "ms");
    record(`${what}, ${system}: deliveries`, result.deliveriesPerSecond, "deliveries/s");
    record(`${what}, ${system}: server CPU per delivery`, result.cpuPerDeliveryUs, "us");
    record(`${what}, ${system}: server CPU`, result.serverCores, "cores");
    record(`${what}, ${system}: load generator CPU`, result.generatorCores, "cores");
    record(`${what}, ${system}: publish acknowledged p50`, result.ackP50, "ms");
    if (result.publishedPerSecond < workload.rate * 0.9) {
      console.error(`warning: published ${human(result.publishedPerSecond)} events/s of the ${workload.rate} asked (the generator is saturated)`);
    }
  }
  // Issue 11's targets, held against socket.io's websocket in the same run.
  const stream = results.get(`${what}|ours-stream`);
  const websocket = results.get(`${what}|socketio-websocket`);
  if (stream && websocket && workload.clients === 100 && workload.rate === 50) {
    record(`${what}: ours-stream p50 / socketio-websocket p50`, stream.p50 / websocket.p50, "ratio", { op: "at_most", value: 1 });
    record(`${what}: ours-stream p99 / socketio-websocket p99`, stream.p99 / websocket.p99, "ratio", { op: "at_most", value: 1 });
    record(
      `${what}: ours-stream CPU per delivery / socketio-websocket's`,
      stream.cpuPerDeliveryUs / websocket.cpuPerDeliveryUs,
      "ratio",
      { op: "at_most", value: 0.5 },
    );
  }
}

// The table of issue 11: one row per workload, one column per system.
console.log();
if (smoke) console.log("(smoke mode: tiny counts, the figures mean nothing)");
console.log(`| workload | ${systems.join(" | ")} |`);
console.log(`|---|${systems.map(() => "---|").join("")}`);
for (const workload of workloads) {
  const what = `${workload.clients} clients x ${workload.rate} events/s`;
  const cells = systems.map((system) => {
    const r = results.get(`${what}|${system}`);
    return `p50 ${human(r.p50)} ms, p99 ${human(r.p99)} ms, max ${human(r.max)} ms; ` +
      `${human(r.deliveriesPerSecond)} deliveries/s; ${human(r.cpuPerDeliveryUs)} µs server CPU per delivery`;
  });
  console.log(`| ${workload.clients} clients × ${workload.rate} events/s | ${cells.join(" | ")} |`);
}
const ratios = figures.filter((f) => f.target);
for (const f of ratios) console.log(`${f.figure}: ${human(f.value)} (target ${f.target.op === "at_most" ? "<=" : ">="} ${f.target.value}) ${f.met ? "met" : "MISSED"}`);
// Sockets of aborted fetches may linger in the pool; the run is over.
process.exit(0);
