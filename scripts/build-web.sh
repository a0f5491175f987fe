#!/usr/bin/env bash
# Builds the web side, idempotently: the npm package `distributed-events` (js/dist: the
# wasm client through cargo, wasm-bindgen and wasm-opt, the JS bundled by esbuild; it fails
# when what a browser loads passes the size budget, js/size.mjs) and the demo page
# (www/dist, which the server serves at /). Needs what scripts/setup-web.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "npm dependencies of js/ and www/ (exactly as locked)"
(cd js && npm ci --no-audit --no-fund)
(cd www && npm ci --no-audit --no-fund)

step "the npm package (js/dist)"
node js/build.mjs

step "the demo page (www/dist)"
node www/build.mjs
