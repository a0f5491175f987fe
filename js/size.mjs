#!/usr/bin/env node
// Prints what a browser downloads to use the package, raw and gzipped (level 9, as a
// static server or CDN would serve it): the wasm, wasm-bindgen's JS glue and our entry.
// Run after build.mjs; build.mjs calls it at the end.
import { readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { gzipSync } from 'node:zlib';

const files = ['pkg/distributed_events_client_bg.wasm', 'pkg/distributed_events_client.js', 'index.js'];

export function printSize() {
  let raw = 0;
  let gzipped = 0;
  for (const file of files) {
    const bytes = readFileSync(new URL(file, import.meta.url));
    const gz = gzipSync(bytes, { level: 9 }).length;
    raw += bytes.length;
    gzipped += gz;
    console.log(`${file.padEnd(40)} ${kb(bytes.length).padStart(9)} raw ${kb(gz).padStart(9)} gzipped`);
  }
  console.log(`${'wasm + JS glue'.padEnd(40)} ${kb(raw).padStart(9)} raw ${kb(gzipped).padStart(9)} gzipped`);
}

const kb = (bytes) => `${(bytes / 1024).toFixed(1)} KiB`;

if (import.meta.url === pathToFileURL(process.argv[1]).href) printSize();
