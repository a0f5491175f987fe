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
  if (!existsSync(binary)) {
    throw new Error(
      `no server binary at ${binary}: build it with \`cargo build --release -p distributed-events-server\` ` +
        'or point DISTRIBUTED_EVENTS_SERVER at one',
    );
  }
  // Only the flags configure it: none of the server's DISTRIBUTED_EVENTS_* variables that
  // a developer may have exported (a JWT secret, say) leak in. Warnings and errors only.
  const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('DISTRIBUTED_EVENTS_')));
  env.RUST_LOG ??= 'warn';
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
    child.stderr.on('data', (chunk) => {
      log += chunk;
      const match = /listening on (http:\/\/\S+)/.exec(log);
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
    /** What the server has written to stderr so far. */
    log: () => log,
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
