// Runs the real server binary for tests: the package's tests and the demo's browser test.
//
// The binary is $DISTRIBUTED_EVENTS_SERVER, or target/release/distributed-events-server
// (build it with `cargo build --release -p distributed-events-server`).
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = fileURLToPath(new URL('../../', import.meta.url));
const binary =
  process.env.DISTRIBUTED_EVENTS_SERVER ??
  join(process.env.CARGO_TARGET_DIR ?? join(repo, 'target'), 'release', 'distributed-events-server');

/** A temporary directory for a test's SQLite file; removed when the process exits. */
export function tempDir() {
  const dir = mkdtempSync(join(tmpdir(), 'distributed-events-'));
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/**
 * Starts the server and resolves once it listens.
 *
 * @param {object} options
 * @param {string} [options.bind] where to listen; the default picks a free port
 * @param {string} [options.database] the SQLite file; the default is a new temporary one
 * @param {string[]} [options.args] more flags, such as `--static-dir`
 * @returns {Promise<{ url: string, bind: string, database: string, log: () => string, stop: () => Promise<void> }>}
 */
export async function startServer({ bind = '127.0.0.1:0', database = join(tempDir(), 'events.db'), args = [] } = {}) {
  // A restart on the port of a stopped server: while it was down, another process on the
  // machine may have taken the port for a moment (an outgoing connection's local port, a
  // server of another test binding port 0). Try again for a while rather than fail.
  const until = Date.now() + 30_000;
  for (;;) {
    try {
      return await startOnce({ bind, database, args });
    } catch (error) {
      if (bind.endsWith(':0') || !/Address already in use/.test(error.message) || Date.now() > until) throw error;
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  }
}

async function startOnce({ bind, database, args }) {
  if (!existsSync(binary)) {
    throw new Error(
      `no server binary at ${binary}: build it with \`cargo build --release -p distributed-events-server\` ` +
        'or point DISTRIBUTED_EVENTS_SERVER at one',
    );
  }
  // Only the flags configure it: none of the server's DISTRIBUTED_EVENTS_* variables that
  // a developer may have exported (a JWT secret, say) leak in.
  const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('DISTRIBUTED_EVENTS_')));
  // Warnings, errors, and each request with its status and latency (tower_http at debug):
  // what a failed test needs to tell a slow server from a request never sent.
  env.RUST_LOG ??= 'warn,tower_http=debug';
  const child = spawn(binary, ['--bind', bind, '--database', `sqlite://${database}`, ...args], {
    env,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  // Never leave a server behind, even when a test fails before stopping it.
  const kill = () => child.kill('SIGKILL');
  process.once('exit', kill);
  exited.then(() => process.off('exit', kill));

  // Keep reading stderr for the whole run (a full pipe would block the server's logging);
  // what it said goes into the error when it does not start.
  let log = '';
  child.stderr.setEncoding('utf8');
  const address = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the server did not listen within 60 s:\n${log}`)), 60_000);
    let listening = false;
    child.stderr.on('data', (chunk) => {
      log += chunk;
      if (listening) return;
      // The whole line: a chunk may end inside it, as "listening on http://127" (which
      // reads as 0.0.0.127); the server writes it at once now, but a pipe may still split it.
      const match = /^listening on (http:\/\/\S+)\r?\n/m.exec(log);
      listening = Boolean(match);
      if (match) {
        clearTimeout(timer);
        resolve(match[1]);
      }
    });
    child.once('error', reject);
    exited.then(({ code, signal }) =>
      reject(new Error(`the server exited before listening (code ${code}, signal ${signal}):\n${log}`)),
    );
  });

  return {
    url: address,
    bind: new URL(address).host,
    database,
    /** What the server has written to stderr so far: its last 300 lines. */
    log: () => {
      const lines = log.trimEnd().split('\n');
      return lines.length <= 300 ? log : `(${lines.length - 300} earlier lines left out)\n${lines.slice(-300).join('\n')}`;
    },
    /** Stops the server the way an operator would (SIGTERM) and waits until it is gone. */
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      // Graceful shutdown answers waiting long-polls at once; don't let a hang stall the test.
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
}
