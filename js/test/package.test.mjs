// The package as a user gets it: what `npm pack` ships, an install of that tarball in a
// fresh project, and the TypeScript declarations.
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

import * as entry from 'distributed-events';

import { startServer, tempDir } from './server.mjs';

const root = fileURLToPath(new URL('..', import.meta.url));
const read = (file) => readFileSync(join(root, file), 'utf8');
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';

test('the tarball installs in a fresh project, and events flow through it', async () => {
  const dir = tempDir();
  // --ignore-scripts: pack what is built now instead of building again (prepack).
  const [{ filename, files }] = JSON.parse(
    execFileSync(npm, ['pack', '--json', '--ignore-scripts', '--pack-destination', dir], { cwd: root, encoding: 'utf8' }),
  );
  const manifest = JSON.parse(read('package.json'));
  assert.deepEqual(files.map((file) => file.path).sort(), [...manifest.files, 'README.md', 'package.json'].sort());

  const app = join(dir, 'app');
  mkdirSync(app);
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }));
  execFileSync(npm, ['install', '--no-audit', '--no-fund', join(dir, filename)], { cwd: app, stdio: 'ignore' });
  // Two clients of a real server in the fresh project: one publishes, the other receives.
  writeFileSync(
    join(app, 'main.js'),
    `import { EventBusClient } from 'distributed-events';
const url = process.argv[2];
// What each client reports goes to stderr, which a failed test prints.
const started = Date.now();
const tell = (name, client) => {
  client.onStatus((s) => console.error(\`\${Date.now() - started} ms: \${name}: \${s.state} \${s.transport ?? ''} \${s.error?.code ?? ''} \${s.error?.message ?? ''}\`));
  client.onError((e) => console.error(\`\${Date.now() - started} ms: \${name}: error \${e.code}: \${e.message}\`));
};
const receiver = new EventBusClient({ serverUrl: url, initialPosition: 0 });
tell('receiver', receiver);
const received = new Promise((resolve) => receiver.on('Installed', resolve));
const publisher = new EventBusClient({ serverUrl: url, autoForward: true });
tell('publisher', publisher);
publisher.onStored((r) => console.error(\`\${Date.now() - started} ms: publisher: stored at \${r.position}\`));
const id = publisher.publish('Installed', { ok: true }, { aggregateId: 'app' });
const event = await received;
console.error(\`\${Date.now() - started} ms: receiver: received\`);
console.log(JSON.stringify({ sent: id, got: event.id, payload: event.payload }));
await Promise.all([receiver.close(), publisher.close()]);
`,
  );
  const server = await startServer();
  try {
    let output;
    const started = Date.now();
    try {
      // Generous: Node's start and loading the wasm take seconds of their own on a loaded machine.
      // Not execFileSync: this process must go on reading the server's log meanwhile (a full pipe blocks the server).
      ({ stdout: output } = await promisify(execFile)(process.execPath, ['main.js', server.url], { cwd: app, encoding: 'utf8', timeout: 60_000 }));
    } catch (error) {
      assert.fail(`the app failed or did not end within 60 s (${error.message}); it printed:\n${error.stdout ?? ''}${error.stderr ?? ''}\n` +
        `the server's log:\n${server.log() || '(nothing)'}`);
    }
    console.log(`tarball: the app received its event and ended ${Date.now() - started} ms after its start`);
    const { sent, got, payload } = JSON.parse(output);
    assert.equal(got, sent);
    assert.deepEqual(payload, { ok: true });
  } finally {
    await server.stop();
  }
});

test('index.d.ts declares the API, and nothing is `any`', () => {
  const types = read('index.d.ts');
  for (const name of ['EventBusClient', 'EventBusClientOptions', 'ClientEvent', 'EventBusClientStatus', 'EventBusClientError',
    'EventBusClientErrorCode', 'EventReceipt', 'PublishOptions', 'StoredEventRecord', 'JsonValue', 'JsonObject', 'EventBusClientTransport'])
    assert.match(types, new RegExp(`^export (?:declare )?(?:class|interface|type) ${name}\\b`, 'm'), `index.d.ts exports ${name}`);
  assert.doesNotMatch(types.replace(/\/\*[\s\S]*?\*\//g, '').replace(/\/\/.*$/gm, ''), /\bany\b/);
});

test('a TypeScript app type-checks against the declarations', () => {
  // Also holds the @ts-expect-error lines of consumer.ts to account: misuse must not compile.
  execFileSync(join(root, 'node_modules/.bin/tsc'), ['-p', join(root, 'test/fixtures/tsconfig.json')], { encoding: 'utf8' });
});

test('the browser entry exports what the Node entry exports', () => {
  // index.js cannot be imported in Node (it fetches the wasm), so compare its source.
  const names = (source) =>
    [...source.matchAll(/^export \{([^}]*)\}/gm)].flatMap(([, list]) => list.split(',').map((name) => name.trim())).sort();
  assert.deepEqual(names(read('index.js')), Object.keys(entry).sort());
  assert.deepEqual(names(read('node.js')), Object.keys(entry).sort());
});
