// Shortens the names that the .wasm and wasm-bindgen's glue share. Imports: the glue
// names each JS function that the wasm imports `__wbg_<name>_<16 hex digits>` (the hash
// makes names unique across crates), random hex that gzip cannot squeeze. Exports: the
// glue calls `wasm.core_admit`, `wasm.__wbindgen_malloc`, … Each name becomes a short one
// (a, b, …, ba, …) in the .wasm and in the glue, consistently; nothing else changes.
//
// It reads the glue as wasm-bindgen writes it: an object literal whose keys are the import
// names, the module name as a string literal used once (the key of that object), and
// exports read as `wasm.<name>` (an export the glue uses otherwise keeps its name). An
// import it cannot find so makes it fail, saying so, rather than ship a module whose
// imports do not match the glue; wasm-opt validates the module afterwards.
import { readFileSync, writeFileSync } from 'node:fs';

/** Rewrites `wasmPath` and `gluePath` in place; returns how many names it shortened. */
export function shortenNames(wasmPath, gluePath) {
  const wasm = readFileSync(wasmPath);
  let glue = readFileSync(gluePath, 'utf8');
  const fail = (why) => {
    throw new Error(`shorten-names: ${why}; the glue of this wasm-bindgen version is not what ${import.meta.url} expects`);
  };

  const names = new Map(); // old name -> new name, for the module names and the field names
  const short = (old) => {
    if (!names.has(old)) names.set(old, shortName(names.size));
    return names.get(old);
  };
  // An export keeps its name unless the glue only reads it as `wasm.<name>`.
  let exportsRenamed = 0;
  const exported = (old) => {
    const uses = (glue.match(new RegExp(`\\b${escape(old)}\\b`, 'g')) ?? []).length;
    const reads = new RegExp(`\\bwasm\\.${escape(old)}\\b`, 'g');
    if (uses === 0 || (glue.match(reads) ?? []).length !== uses) return old;
    const renamed = shortName(exportsRenamed++);
    glue = glue.replace(reads, `wasm.${renamed}`);
    return renamed;
  };
  const out = [wasm.subarray(0, 8)];
  let at = 8;
  while (at < wasm.length) {
    const start = at;
    const id = wasm[at];
    const [size, bodyStart] = readLeb(wasm, at + 1);
    at = bodyStart + size;
    if (id === 2) {
      const imports = rewriteImports(wasm.subarray(bodyStart, at), short);
      out.push(Buffer.from([2]), leb(imports.length), imports);
    } else if (id === 7) {
      const exports = rewriteExports(wasm.subarray(bodyStart, at), (old) => exported(old));
      out.push(Buffer.from([7]), leb(exports.length), exports);
    } else {
      out.push(wasm.subarray(start, at)); // any other section: as it is
    }
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
  return { imports: names.size - modules.size, exports: exportsRenamed };
}

/** The export section's entries, renamed. */
function rewriteExports(body, rename) {
  let [count, at] = readLeb(body, 0);
  const parts = [leb(count)];
  while (count-- > 0) {
    const [length, start] = readLeb(body, at);
    const name = Buffer.from(rename(body.subarray(start, start + length).toString('utf8')));
    const descStart = start + length;
    at = readLeb(body, descStart + 1)[1]; // kind, index
    parts.push(leb(name.length), name, body.subarray(descStart, at));
  }
  return Buffer.concat(parts);
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
    else throw new Error(`shorten-names: unknown import kind ${kind}`);
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
