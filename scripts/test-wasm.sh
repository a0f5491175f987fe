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
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

RUST_LOG="${RUST_LOG:-warn}" target/debug/distributed-events-server \
  --bind 127.0.0.1:0 --database "sqlite://$work/events.db" --static-dir /nonexistent \
  --cors-origin '*' 2>"$work/server.log" &
server_pid=$!
url=""
for _ in $(seq 1 300); do
  url=$(sed -n 's/^listening on \(http:[^ ]*\).*/\1/p' "$work/server.log" | head -n 1)
  [ -n "$url" ] && break
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$url" ]; then
  echo "the server did not start; its log:" >&2
  cat "$work/server.log" >&2
  exit 1
fi
echo "test server at $url" >&2

export DISTRIBUTED_EVENTS_TEST_SERVER="$url"
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner
export CHROMEDRIVER="${CHROMEDRIVER:-/usr/bin/chromedriver}"
export WASM_BINDGEN_TEST_TIMEOUT="${WASM_BINDGEN_TEST_TIMEOUT:-120}"
# From the crate's folder, so that the runner finds webdriver.json.
status=0
(cd client-wasm && cargo test --target wasm32-unknown-unknown --features js "$@") || status=$?
if [ "$status" -ne 0 ]; then
  echo "wasm tests failed; the server's log:" >&2
  cat "$work/server.log" >&2
fi
exit "$status"
