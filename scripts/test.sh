#!/usr/bin/env bash
# Runs the whole test suite, from a fresh machine: installs what it needs (idempotently),
# makes sure PostgreSQL and MariaDB are up, then lints, builds and tests every crate, the wasm client
# in headless Chromium, the npm package and the demo page.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

./scripts/setup.sh

step "PostgreSQL"
# Prints `export DATABASE_URL_TEST=...` once PostgreSQL answers. Not `eval "$(…)"` alone:
# that ignores the script's failure, and the PostgreSQL tests would then all skip.
postgres_env=$(./scripts/ci-postgres.sh)
eval "$postgres_env"

step "MariaDB"
# Prints `export MYSQL_URL_TEST=...` once MariaDB answers (the same way, for the same reason).
mysql_env=$(./scripts/ci-mysql.sh)
eval "$mysql_env"

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

step "the shared crate builds for wasm32"
cargo check -p distributed-events-shared --target wasm32-unknown-unknown

step "Rust tests (unit, store conformance, HTTP, binary, cross-crate; a 3-minute soak)"
# The soak runs for 20 s in a plain `cargo test`; here for minutes, as issue 6 asks.
SOAK_SECONDS="${SOAK_SECONDS:-180}" cargo test --workspace

step "the delivery core as the npm package builds it (no_std, without the Rust client)"
cargo test -p distributed-events-client --no-default-features --lib
cargo clippy -p distributed-events-client --no-default-features --lib --tests -- -D warnings

step "Durable Streams: the protocol's conformance suite against the server binary (SQLite, PostgreSQL, MySQL)"
./scripts/durable-streams-conformance.sh

step "examples: the server, client and end-to-end examples, each briefly"
./scripts/examples-smoke.sh

# --- client-wasm: the Rust client on wasm32, in headless Chromium ----------------------
# (Its native unit tests and tests/tests/client.rs ran with `cargo test --workspace`.)
step "client-wasm: lints for wasm32: the Rust client, and the npm package's no_std core"
cargo clippy -p distributed-events-client --target wasm32-unknown-unknown --all-targets -- -D warnings
cargo clippy -p distributed-events-js --target wasm32-unknown-unknown -- -D warnings

step "client-wasm: browser tests in headless Chromium, against the server binary"
./scripts/test-wasm.sh
# --- end client-wasm --------------------------------------------------------------------

# --- web: the npm package (js/) and the demo page (www/) ------------------------------
step "web: build the npm package and the demo page"
./scripts/build-web.sh
# The package's tests and the browser test run the real server binary; the debug build
# serves them as well as the release one and `cargo test` above has built most of it.
cargo build -p distributed-events-server
export DISTRIBUTED_EVENTS_SERVER="${CARGO_TARGET_DIR:-$PWD/target}/debug/distributed-events-server"

step "web: Schemathesis against the server binary with docs/openapi.json"
./scripts/schemathesis.sh

step "web: the npm package in Node, against the server binary"
(cd js && npm test)

step "web: the demo page in headless Chromium, against the server binary"
(cd www && npm test)
# --- end web ---------------------------------------------------------------------------

step "benchmarks: every scenario in smoke mode (figures are not checked here)"
./scripts/bench-smoke.sh

step "fuzz targets: a short run of each"
./scripts/fuzz-smoke.sh
