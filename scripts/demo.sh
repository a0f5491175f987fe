#!/usr/bin/env bash
# The main job: builds the wasm client, the npm package and the demo page, then runs the
# server on its embedded default storage (SQLite file ./distributed-events.db) with the
# demo at http://127.0.0.1:8080/. Extra arguments go to the server (see --help).
# Installs only what the demo needs (scripts/setup-web.sh); the test suite's browsers and
# fuzzing tools come with scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-web.sh
./scripts/build-web.sh
exec cargo run --release -p distributed-events-server -- "$@"
