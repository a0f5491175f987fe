#!/usr/bin/env node
// Builds the npm package into dist/ and fails when what a browser loads passes the size
// budget (size.mjs; SIZE_BUDGET_BYTES overrides it):
//
// 1. cargo builds the crate in this folder (a cdylib that links the JS binding of
//    client-wasm; see Cargo.toml) with the workspace's `wasm-release` profile.
// 2. wasm-bindgen (the CLI that scripts/setup-web.sh installs, at the version Cargo.lock
//    pins) writes the glue and the .wasm to pkg/. `--target web`: its glue is a plain ES
//    module that fetches the .wasm through `new URL('…_bg.wasm', import.meta.url)`, which
//    browsers load as is and bundlers such as Vite copy as an asset.
// 3. The names of the wasm's imports and exports become short (shorten-names.mjs), and wasm-opt
//    shrinks the .wasm (WASM_OPT below).
// 4. esbuild bundles index.js (browsers, bundlers) with the glue and src/ into one
//    minified ES module, dist/index.js, and node.js (Node) likewise into dist/node.js, not
//    minified; the .wasm is copied next to them, so the glue's
//    `new URL(…, import.meta.url)` still finds it.
//
// wasm-opt comes from the npm package `binaryen`, pinned in package-lock.json (`npm ci`
// first), not from Debian: Debian 12's binaryen 108 writes the export of wasm-bindgen's
// externref table with the wrong table index, and the module then fails to load
// ("WebAssembly.Table.set(): Argument 1 is invalid for table"). Pinned versions of
// binaryen and esbuild also keep the measured size the same on every machine.
import { spawnSync } from 'node:child_process';
import { copyFileSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

import * as esbuild from 'esbuild';

import { shortenNames } from './shorten-names.mjs';
import { BUDGET_BYTES, printSize } from './size.mjs';

const path = (relative) => fileURLToPath(new URL(relative, import.meta.url));
const NAME = 'distributed_events_client';
const WASM = `${NAME}_bg.wasm`;
// Measured in js/README.md's table (gzip -9 of the .wasm); binaryen reads the wasm features to
// allow from the module's target_features section.
const WASM_OPT = ['-Oz', '--converge', '--strip-debug', '--strip-producers', '--strip-target-features'];

const manifest = path('Cargo.toml');
const { target_directory: targetDir } = JSON.parse(
  capture('cargo', ['metadata', '--format-version', '1', '--no-deps', '--manifest-path', manifest]),
);
run('cargo', ['build', '--manifest-path', manifest, '--lib', '--target', 'wasm32-unknown-unknown', '--profile', 'wasm-release']);

rmSync(path('pkg'), { recursive: true, force: true });
rmSync(path('dist'), { recursive: true, force: true });
run('wasm-bindgen', [
  `${targetDir}/wasm32-unknown-unknown/wasm-release/distributed_events_js.wasm`,
  '--target', 'web', '--out-dir', path('pkg'), '--out-name', NAME,
]);
// Types of the raw wasm exports: only for importing the .wasm directly, which we don't.
rmSync(path(`pkg/${WASM}.d.ts`), { force: true });
// Before wasm-opt, which then validates the renamed module.
const shortened = shortenNames(path(`pkg/${WASM}`), path(`pkg/${NAME}.js`));
console.error(`shortened the names of ${shortened.imports} imports and ${shortened.exports} exports of the wasm`);
// With its function names, for twiggy when the budget is passed.
copyFileSync(path(`pkg/${WASM}`), path('pkg/unstripped.wasm'));
run(path('node_modules/.bin/wasm-opt'), [...WASM_OPT, path(`pkg/${WASM}`), '-o', path(`pkg/${WASM}`)]);

// The entries name the .wasm as './pkg/…' (e.g. node.js reads it from disk); in dist/ it
// sits next to the bundle.
const pkgUrls = {
  name: 'pkg-urls',
  setup(build) {
    build.onLoad({ filter: /\.js$/ }, (args) => ({
      contents: readFileSync(args.path, 'utf8').replace(/new URL\((['"`])\.\/pkg\//g, 'new URL($1./'),
      loader: 'js',
    }));
  },
};
const common = { bundle: true, format: 'esm', minify: true, legalComments: 'none', outdir: path('dist'), plugins: [pkgUrls], logLevel: 'warning' };
const browser = await esbuild.build({ ...common, entryPoints: [path('index.js')], platform: 'browser', target: 'es2022', metafile: true });
// Node downloads nothing at run time: readable code and stack traces there.
await esbuild.build({ ...common, entryPoints: [path('node.js')], platform: 'node', target: 'node20', minify: false });
copyFileSync(path(`pkg/${WASM}`), path(`dist/${WASM}`));
checkUrls();

const budget = Number(process.env.SIZE_BUDGET_BYTES ?? BUDGET_BYTES);
if (!Number.isSafeInteger(budget)) fail(`SIZE_BUDGET_BYTES must be a number of bytes, got ${process.env.SIZE_BUDGET_BYTES}`);
const total = printSize();
if (budget !== BUDGET_BYTES) console.log(`(SIZE_BUDGET_BYTES=${budget} overrides the budget of ${BUDGET_BYTES.toLocaleString('en-US')} bytes)`);
if (total > budget) {
  console.error(await esbuild.analyzeMetafile(browser.metafile));
  run(path('node_modules/.bin/wasm-opt'), ['-Oz', '-g', path('pkg/unstripped.wasm'), '-o', path('pkg/named.wasm')]);
  console.error(
    `build.mjs: what a browser loads is ${total.toLocaleString('en-US')} bytes gzipped, ` +
      `${(total - budget).toLocaleString('en-US')} bytes over the budget of ${budget.toLocaleString('en-US')}.\n` +
      'Look at what grew: the JS per module above, and the wasm: `twiggy top -n 30 js/pkg/named.wasm` (cargo install twiggy) ' +
      '(the same wasm with its function names; `twiggy dominators` says who pulls a function in). ' +
      'A Rust dependency, `core::fmt` or a panic message reached from the `js` feature? A new JS dependency?',
  );
  process.exit(1);
}

/** Every `new URL('…', import.meta.url)` of a bundle must name a file in dist/. */
function checkUrls() {
  const shipped = new Set(readdirSync(path('dist')));
  for (const file of ['index.js', 'node.js']) {
    const source = readFileSync(path(`dist/${file}`), 'utf8');
    for (const [, url] of source.matchAll(/new URL\(["'`]([^"'`]+)["'`],\s*import\.meta\.url\)/g)) {
      if (!shipped.has(url.replace(/^\.\//, ''))) fail(`dist/${file} loads ${url}, which is not in dist/`);
    }
  }
}

function run(command, args) {
  console.error(`$ ${command} ${args.join(' ')}`);
  const { status, error } = spawnSync(command, args, { stdio: 'inherit' });
  if (error) fail(`cannot run ${command} (${error.message}); run scripts/setup-web.sh and \`npm ci\` in js/ first`);
  if (status !== 0) process.exit(status ?? 1);
}

function capture(command, args) {
  const { status, stdout, error } = spawnSync(command, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  if (error || status !== 0) fail(`${command} ${args.join(' ')} failed${error ? `: ${error.message}` : ''}`);
  return stdout;
}

function fail(message) {
  console.error(`build.mjs: ${message}`);
  process.exit(1);
}
