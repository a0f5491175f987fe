// Shortens the names under which the .wasm imports wasm-bindgen's JS functions. The glue
// names each import `__wbg_<name>_<16 hex digits>` (the hash makes names unique across
// crates), and both the .wasm and the glue carry every name: random hex that gzip cannot
// squeeze. Here each name becomes a short one (a, b, …, ba, …) in the .wasm's import
// section and in the glue's import object, consistently; nothing else changes.
//
// It reads the glue as wasm-bindgen writes it: an object literal whose keys are the
// import names, and the module name as a string literal used once, as the key of that
// object. Anything else (a new wasm-bindgen that writes the glue differently) makes it
// fail, saying so, rather than ship a module whose imports do not match.
import { readFileSync, writeFileSync } from 'node:fs';

/** Rewrites `wasmPath` and `gluePath` in place; returns how many names it shortened. */
export function shortenImports(wasmPath, gluePath) {
  const wasm = readFileSync(wasmPath);
  let glue = readFileSync(gluePath, 'utf8');
  const fail = (why) => {
    throw new Error(`shorten-imports: ${why}; the glue of this wasm-bindgen version is not what ${import.meta.url} expects`);
  };

  const names = new Map(); // old name -> new name, for the module names and the field names
  const short = (old) => {
    if (!names.has(old)) names.set(old, shortName(names.size));
    return names.get(old);
  };
  const out = [wasm.subarray(0, 8)];
  let at = 8;
  while (at < wasm.length) {
    const start = at;
    const id = wasm[at];
    const [size, bodyStart] = readLeb(wasm, at + 1);
    at = bodyStart + size;
    if (id !== 2) {
      out.push(wasm.subarray(start, at)); // any section but the imports: as it is
      continue;
    }
    const imports = rewriteImports(wasm.subarray(bodyStart, at), short);
    out.push(Buffer.from([2]), leb(imports.length), imports);
  }
  // A module name is the key of the object of its imports, as a string literal.
  const modules = new Set();
  for (const [old, renamed] of names) {
    const quoted = new RegExp(`(["'])${escape(old)}\\1`, 'g');
    const bare = new RegExp(`\\b${escape(old)}(?=\\s*:)`, 'g');
    const isModule = (glue.match(quoted) ?? []).length === 1 && !glue.match(bare);
    if (isModule) {
      glue = glue.replace(quoted, `"${renamed}"`);
      modules.add(old);
      continue;
    }
    const uses = glue.match(new RegExp(`\\b${escape(old)}\\b`, 'g')) ?? [];
    if (uses.length !== 1 || (glue.match(bare) ?? []).length !== 1) fail(`the import ${old} is not a key used once in the glue`);
    glue = glue.replace(bare, renamed);
  }
  if (modules.size === 0) fail('no module name of the imports found in the glue');
  writeFileSync(wasmPath, Buffer.concat(out));
  writeFileSync(gluePath, glue);
  return names.size - modules.size;
}

/** The import section's entries with their module and field names renamed. */
function rewriteImports(body, short) {
  let [count, at] = readLeb(body, 0);
  const parts = [leb(count)];
  const name = () => {
    const [length, start] = readLeb(body, at);
    at = start + length;
    return body.subarray(start, at).toString('utf8');
  };
  while (count-- > 0) {
    const module = name();
    const field = name();
    const descStart = at;
    const kind = body[at++];
    if (kind === 0) at = readLeb(body, at)[1]; // function: type index
    else if (kind === 1) at = limits(body, at + 1); // table: reference type, limits
    else if (kind === 2) at = limits(body, at); // memory: limits
    else if (kind === 3) at += 2; // global: value type, mutability
    else if (kind === 4) at = readLeb(body, at + 1)[1]; // tag: attribute, type index
    else throw new Error(`shorten-imports: unknown import kind ${kind}`);
    for (const text of [short(module), short(field)]) parts.push(leb(text.length), Buffer.from(text));
    parts.push(body.subarray(descStart, at));
  }
  return Buffer.concat(parts);
}

function limits(bytes, at) {
  const flags = bytes[at];
  at = readLeb(bytes, at + 1)[1];
  return flags & 1 ? readLeb(bytes, at)[1] : at;
}

function readLeb(bytes, at) {
  let value = 0;
  let shift = 0;
  for (;;) {
    const byte = bytes[at++];
    value += (byte & 0x7f) * 2 ** shift;
    shift += 7;
    if (byte < 0x80) return [value, at];
  }
}

function leb(value) {
  const bytes = [];
  do {
    let byte = value & 0x7f;
    value = Math.floor(value / 128);
    if (value > 0) byte |= 0x80;
    bytes.push(byte);
  } while (value > 0);
  return Buffer.from(bytes);
}

/** a, b, …, z, ba, bb, …: valid JS identifiers, shortest first. */
function shortName(index) {
  const letters = 'abcdefghijklmnopqrstuvwxyz';
  let text = '';
  do {
    text = letters[index % 26] + text;
    index = Math.floor(index / 26);
  } while (index > 0);
  return text;
}

const escape = (text) => text.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
