#!/usr/bin/env bash
# distributed-events against socket.io, side by side in one run (issue 11; results in
# docs/PERFORMANCE.md): builds the release server, installs socket.io from the npm
# registry (bench/socketio/package-lock.json), and runs bench/socketio/compare.mjs, which
# starts each server in turn on loopback and drives it with the same Node clients.
# Prints `BENCH {json}` lines as figures are taken, then the table of issue 11. Exits
# non-zero when the harness fails (a server does not start, an event is lost or repeated),
# never because a target was missed.
#
#     scripts/bench-vs-socketio.sh                  # 100x50, 200x500, 1000x200; 10 s each; some minutes
#     scripts/bench-vs-socketio.sh --smoke          # seconds, tiny counts: the harness works
#     scripts/bench-vs-socketio.sh --workloads 100x50 --systems ours-stream,socketio-websocket
#
# Not run in CI: it needs the release build and minutes. Extra arguments go to compare.mjs
# (`node bench/socketio/compare.mjs --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

# With the bench, as docs/PERFORMANCE.md builds it: the same features, so one build serves both.
cargo build --release -p distributed-events-server -p distributed-events-bench
(cd bench/socketio && npm ci --no-audit --no-fund --loglevel=error)
# 1,000 clients hold 1,000 sockets on each side of loopback.
ulimit -n "$(ulimit -Hn)"
exec node bench/socketio/compare.mjs \
    --server-bin "${CARGO_TARGET_DIR:-$PWD/target}/release/distributed-events-server" "$@"
