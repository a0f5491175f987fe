#!/usr/bin/env node
// Builds the demo into www/dist/, which the server serves at `/`: the page's own files,
// plus the npm package `distributed-events` copied to dist/vendor/ (the import map in
// index.html points the package name there). No bundler: this is how a plain web app
// uses an npm package. Build the package first (js/build.mjs).
import { cpSync, existsSync, readFileSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, 'dist');
// The package as installed from package.json (`file:../js`), like any dependency.
const packageDir = join(here, 'node_modules', 'distributed-events');

const manifest = JSON.parse(readFileSync(join(packageDir, 'package.json'), 'utf8'));
const missing = manifest.files.filter((file) => !existsSync(join(packageDir, file)));
if (missing.length > 0) {
  console.error(`www/build.mjs: the package is not built (missing ${missing.join(', ')}); run js/build.mjs first`);
  process.exit(1);
}

rmSync(dist, { recursive: true, force: true });
for (const file of ['index.html', 'app.js', 'style.css']) cpSync(join(here, file), join(dist, file));
// Exactly what `npm publish` would ship: the manifest and its `files`.
for (const file of ['package.json', ...manifest.files]) {
  cpSync(join(packageDir, file), join(dist, 'vendor', 'distributed-events', file));
}
console.log(`demo built in ${dist}`);
