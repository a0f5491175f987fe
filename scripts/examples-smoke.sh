#!/usr/bin/env bash
# Runs each example briefly, as the README shows them, and fails if one fails or hangs:
# the server example with the client example following it (the client stops after the
# three events it expects), then the end-to-end example, which ends by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build -q -p distributed-events-server --example server_example --example end_to_end_example
cargo build -q -p distributed-events-client --features native --example client_example --example quick_start
examples="${CARGO_TARGET_DIR:-$PWD/target}/debug/examples"

work=$(mktemp -d)
server_pid=""
cleanup() {
  [ -z "$server_pid" ] || kill "$server_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# The server example keeps example-events.db in its folder; on a free port, which it prints.
(cd "$work" && DISTRIBUTED_EVENTS_BIND=127.0.0.1:0 exec "$examples/server_example") >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 300); do
  grep -q "Server listening" "$work/server.log" && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log"; echo "server_example exited" >&2; exit 1; }
  sleep 0.1
done
grep -q "Server listening" "$work/server.log" || { cat "$work/server.log"; echo "server_example did not listen within 30 s" >&2; exit 1; }

url=$(sed -n 's/^Server listening on \(http:[^ ]*\).*/\1/p' "$work/server.log" | head -n 1)

# Its own order, then the server example's user and order.
STOP_AFTER=3 DISTRIBUTED_EVENTS_URL="$url" timeout 60 "$examples/client_example" | tee "$work/client.log"
grep -q "Received user created: alice@example.com" "$work/client.log"
grep -q "Received order: \$24.50 of product-456 (position None)" "$work/client.log"
kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""

timeout 120 "$examples/end_to_end_example" | tee "$work/e2e.log"
grep -q "done: events flowed both ways" "$work/e2e.log"
