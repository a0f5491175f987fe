#!/usr/bin/env bash
# Installs what building and testing distributed-events needs, idempotently: what the web
# build needs (scripts/setup-web.sh: the wasm target, wasm-bindgen-cli, wasm-pack), then
# the test suite's extras: cargo-fuzz, and Debian's Chromium and ChromeDriver for the
# browser tests. Safe to run again and again.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*" >&2; }

./scripts/setup-web.sh

if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  cargo install cargo-fuzz
fi

missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]} from Debian"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}"
fi
