#!/usr/bin/env node
// Builds the npm package: wasm-pack builds the crate in js/ (a cdylib that links the JS
// binding of client-wasm; see Cargo.toml) into js/pkg/, then wasm-opt -Oz shrinks the
// .wasm, then we print the gzipped size.
//
// Why `--target web`: its glue is a plain ES module that fetches the .wasm next to it
// (`new URL('…_bg.wasm', import.meta.url)`), which a browser loads from a plain
// <script type="module"> and which Vite understands and copies as an asset. The
// `bundler` target imports the .wasm as a module, which browsers cannot do without a
// plugin. Node cannot fetch file: URLs, so node.js reads the file and passes the bytes.
//
// wasm-pack's own wasm-opt is off (`--no-opt`): it would download binaryen, and this
// build must run offline. `--mode no-install` makes wasm-pack use the wasm-bindgen CLI
// that scripts/setup-web.sh installed instead of downloading one.
//
// wasm-opt comes from the npm package `binaryen`, pinned in package-lock.json (`npm ci`
// first), not from Debian: Debian 12's binaryen 108 writes the export of wasm-bindgen's
// externref table with the wrong table index, and the module then fails to load
// ("WebAssembly.Table.set(): Argument 1 is invalid for table"). A pinned version also
// keeps the measured size the same on every machine.
import { spawnSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { printSize } from './size.mjs';

const path = (relative) => fileURLToPath(new URL(relative, import.meta.url));
const out = path('pkg');
const wasm = `${out}/distributed_events_client_bg.wasm`;

rmSync(out, { recursive: true, force: true });
run('wasm-pack', [
  'build', path('.'),
  // The workspace's `wasm-release` profile: opt-level "z", fat LTO, one codegen unit.
  '--profile', 'wasm-release',
  '--target', 'web',
  '--out-dir', out,
  '--out-name', 'distributed_events_client',
  '--no-pack', '--no-gitignore', '--no-opt', '--mode', 'no-install',
]);
// Types of the raw wasm exports: only for importing the .wasm directly, which we don't.
rmSync(`${out}/distributed_events_client_bg.wasm.d.ts`, { force: true });
// Binaryen reads the wasm features to allow from the module's target_features section.
run(path('node_modules/.bin/wasm-opt'), ['-Oz', wasm, '-o', wasm]);
printSize();

function run(command, args) {
  console.error(`$ ${command} ${args.join(' ')}`);
  const { status, error } = spawnSync(command, args, { stdio: 'inherit' });
  if (error) {
    console.error(`build.mjs: cannot run ${command} (${error.message}); run scripts/setup-web.sh and \`npm ci\` in js/ first`);
    process.exit(1);
  }
  if (status !== 0) process.exit(status ?? 1);
}
