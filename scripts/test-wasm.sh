#!/usr/bin/env bash
# Runs the wasm client's tests (client-wasm/tests/web.rs) in headless Chromium against a
# real server: builds and starts `distributed-events-server` on a free port with a
# throw-away SQLite file and `--cors-origin '*'`, hands its URL to the test build in
# DISTRIBUTED_EVENTS_TEST_SERVER, and stops the server afterwards, pass or fail.
# Chromium's flags are in client-wasm/webdriver.json.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build -p distributed-events-server
work=$(mktemp -d)
# shellcheck source=scripts/server-process.sh
source scripts/server-process.sh
cleanup() {
  stop_binary
  rm -rf "$work"
}
trap cleanup EXIT

binary=target/debug/distributed-events-server
RUST_LOG="${RUST_LOG:-warn}" start_binary "$work/server.log" \
  --database "sqlite://$work/events.db" --static-dir /nonexistent --cors-origin '*'
url=$base
echo "test server at $url" >&2

export DISTRIBUTED_EVENTS_TEST_SERVER="$url"
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner
export CHROMEDRIVER="${CHROMEDRIVER:-/usr/bin/chromedriver}"
export WASM_BINDGEN_TEST_TIMEOUT="${WASM_BINDGEN_TEST_TIMEOUT:-120}"
# From the crate's folder, so that the runner finds webdriver.json.
status=0
(cd client-wasm && cargo test --target wasm32-unknown-unknown "$@") || status=$?
if [ "$status" -ne 0 ]; then
  echo "wasm tests failed; the server's log:" >&2
  cat "$work/server.log" >&2
fi
exit "$status"
