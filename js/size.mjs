#!/usr/bin/env node
// Prints what a browser downloads to use the package, raw and gzipped (level 9, as a
// static server or CDN would serve it): the bundled entry dist/index.js (our JS and
// wasm-bindgen's glue, minified) and the .wasm it fetches. Run after build.mjs, which
// calls it and fails when the total passes the budget.
import { readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { gzipSync } from 'node:zlib';

/** Issue 12: what a browser loads, gzip -9, at most 25 KB (read as 25,000 bytes). */
export const BUDGET_BYTES = 25_000;
export const FILES = ['dist/index.js', 'dist/distributed_events_client_bg.wasm'];

/** Sizes of each file and the total, in bytes. */
export function measure() {
  const files = FILES.map((file) => {
    const bytes = readFileSync(new URL(file, import.meta.url));
    return { file, raw: bytes.length, gzipped: gzipSync(bytes, { level: 9 }).length };
  });
  const sum = (key) => files.reduce((total, file) => total + file[key], 0);
  return { files, raw: sum('raw'), gzipped: sum('gzipped') };
}

/** Prints the sizes; returns the total gzipped bytes. */
export function printSize() {
  const { files, raw, gzipped } = measure();
  const line = (name, r, gz) => console.log(`${name.padEnd(42)} ${bytes(r).padStart(14)} raw ${bytes(gz).padStart(13)} gzip -9`);
  for (const file of files) line(file.file, file.raw, file.gzipped);
  line('what a browser loads', raw, gzipped);
  return gzipped;
}

const bytes = (n) => `${n.toLocaleString('en-US')} B`;

if (import.meta.url === pathToFileURL(process.argv[1]).href) printSize();
