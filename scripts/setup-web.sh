#!/usr/bin/env bash
# Installs what building the web side (scripts/build-web.sh: the npm package and the demo
# page) needs, idempotently: the wasm target, wasm-bindgen-cli at the version Cargo.lock
# pins (js/build.mjs runs it after cargo). The npm packages, binaryen's wasm-opt and
# esbuild among them, come from `npm ci` in build-web.sh. The test suite's extras are in scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*" >&2; }

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  log "adding the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown
fi

# The CLI must match the wasm-bindgen crate exactly; read the version from Cargo.lock.
wasm_bindgen_version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock 2>/dev/null || true)
if [ -n "$wasm_bindgen_version" ] && [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$wasm_bindgen_version" ]; then
  log "installing wasm-bindgen-cli $wasm_bindgen_version"
  cargo install wasm-bindgen-cli --version "$wasm_bindgen_version" --force
fi
