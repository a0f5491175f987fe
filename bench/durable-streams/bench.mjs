// Durable Streams on one machine, in one run: distributed-events-server (/v1/stream, on a
// SQLite file) against @durable-streams/server (file-backed). Each server runs in its own
// process; this process is the client. Prints a Markdown table.
//
//   node bench.mjs            (uses ../../target/release/distributed-events-server,
//                              or $DISTRIBUTED_EVENTS_SERVER)
// BENCH_APPENDS (default 4000), BENCH_WRITERS (16), BENCH_READS (20), BENCH_SAMPLES (200).
import { spawn } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join, dirname } from "node:path"
import { fileURLToPath } from "node:url"

const here = dirname(fileURLToPath(import.meta.url))
const binary =
  process.env.DISTRIBUTED_EVENTS_SERVER ?? join(here, "../../target/release/distributed-events-server")
const APPENDS = Number(process.env.BENCH_APPENDS ?? 4000)
const WRITERS = Number(process.env.BENCH_WRITERS ?? 16)
const READS = Number(process.env.BENCH_READS ?? 20)
const SAMPLES = Number(process.env.BENCH_SAMPLES ?? 200)
const PAYLOAD = "x".repeat(100)

/** Starts `command` and resolves with its base URL once it prints "listening on URL". */
function start(command, args) {
  const child = spawn(command, args, { stdio: ["ignore", "ignore", "pipe"] })
  return new Promise((resolve, reject) => {
    let log = ""
    child.stderr.on("data", (chunk) => {
      log += chunk
      const match = /listening on (http:\/\/\S+)/.exec(log)
      if (match) resolve({ child, base: match[1] })
    })
    child.on("exit", (code) => reject(new Error(`${command} exited (${code}): ${log}`)))
  })
}

async function check(response, expected, what) {
  if (!expected.includes(response.status)) {
    throw new Error(`${what}: ${response.status} ${await response.text()}`)
  }
  return response
}

async function create(url, contentType) {
  await check(await fetch(url, { method: "PUT", headers: { "content-type": contentType } }), [201], `PUT ${url}`)
}

/** Appends/s with WRITERS concurrent writers, APPENDS appends of 100 bytes in all. */
async function appendThroughput(base) {
  const url = `${base}/v1/stream/bench-append`
  await create(url, "text/plain")
  let next = 0
  const started = performance.now()
  await Promise.all(
    Array.from({ length: WRITERS }, async () => {
      while (next < APPENDS) {
        next++
        const response = await fetch(url, { method: "POST", headers: { "content-type": "text/plain" }, body: PAYLOAD })
        await check(response, [200, 204], "POST")
        await response.arrayBuffer()
      }
    }),
  )
  return { url, perSecond: APPENDS / ((performance.now() - started) / 1000) }
}

/** MB/s reading the whole stream from the start, READS times, page after page. */
async function catchUpThroughput(url) {
  let bytes = 0
  const started = performance.now()
  for (let i = 0; i < READS; i++) {
    let offset = "-1"
    for (;;) {
      const response = await check(await fetch(`${url}?offset=${offset}`), [200], "GET")
      bytes += (await response.arrayBuffer()).byteLength
      offset = response.headers.get("stream-next-offset")
      if (response.headers.get("stream-up-to-date") === "true") break
    }
  }
  return bytes / 1e6 / ((performance.now() - started) / 1000)
}

/** Milliseconds from an append's start to its arrival at a long-polling reader. */
async function liveLatency(base) {
  const url = `${base}/v1/stream/bench-live`
  await create(url, "application/json")
  let offset = (await fetch(`${url}?offset=now`)).headers.get("stream-next-offset")
  const latencies = []
  const reader = (async () => {
    while (latencies.length < SAMPLES) {
      const response = await fetch(`${url}?offset=${offset}&live=long-poll`)
      offset = response.headers.get("stream-next-offset")
      if (response.status !== 200) continue
      const received = performance.now()
      for (const message of await response.json()) latencies.push(received - message.sent)
    }
  })()
  for (let i = 0; i < SAMPLES; i++) {
    await new Promise((resolve) => setTimeout(resolve, 10))
    const response = await fetch(url, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ sent: performance.now() }),
    })
    await check(response, [204], "POST live")
  }
  await reader
  latencies.sort((a, b) => a - b)
  const at = (q) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))]
  return { p50: at(0.5), p99: at(0.99) }
}

async function measure(name, server) {
  try {
    const append = await appendThroughput(server.base)
    const read = await catchUpThroughput(append.url)
    const live = await liveLatency(server.base)
    return { name, append: append.perSecond, read, ...live }
  } finally {
    server.child.kill("SIGTERM")
  }
}

const work = mkdtempSync(join(tmpdir(), "ds-bench-"))
try {
  const ours = await measure(
    "distributed-events-server (SQLite)",
    await start(binary, ["--bind", "127.0.0.1:0", "--database", `sqlite://${join(work, "ours.db")}`, "--static-dir", join(work, "none")]),
  )
  const reference = await measure(
    "@durable-streams/server 0.3.7 (files)",
    await start(process.execPath, [join(here, "reference-server.mjs"), join(work, "reference")]),
  )
  console.log(`\n${APPENDS} appends of 100 bytes by ${WRITERS} concurrent writers; the stream read ${READS} times from the start; ${SAMPLES} live samples.\n`)
  console.log("| server | appends/s | catch-up read MB/s | live p50 ms | live p99 ms |")
  console.log("|---|---|---|---|---|")
  for (const r of [ours, reference]) {
    console.log(`| ${r.name} | ${r.append.toFixed(0)} | ${r.read.toFixed(1)} | ${r.p50.toFixed(2)} | ${r.p99.toFixed(2)} |`)
  }
} finally {
  rmSync(work, { recursive: true, force: true })
}
