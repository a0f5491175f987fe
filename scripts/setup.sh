#!/usr/bin/env bash
# Installs what building and testing distributed-events needs, idempotently: what the web
# build needs (scripts/setup-web.sh: the wasm target, wasm-bindgen-cli), then
# the test suite's extras: cargo-fuzz, Debian's Chromium and ChromeDriver for the
# browser tests, and Debian's nginx for the CDN cache test (server/tests/cdn_cache.rs).
# Safe to run again and again.
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
# /usr/sbin is not on every user's PATH. The test runs an nginx of its own; the service
# Debian sets up is not needed.
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]} from Debian"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}"
fi
