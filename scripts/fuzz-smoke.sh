#!/usr/bin/env bash
# Runs each fuzz target in fuzz/ for a few seconds (FUZZ_SECONDS, default 15): a smoke
# test that the targets build and find nothing quickly. For a real session, run one for
# hours: `cd fuzz && cargo fuzz run http_request -s none`.
# `-s none`: no sanitizer, so the stable toolchain builds it (safe Rust needs none).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${FUZZ_SECONDS:-15}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in $(cargo fuzz list); do
  printf '\n==> fuzz %s for %s s\n' "$target" "$seconds" >&2
  if ! cargo fuzz run "$target" -s none -- -max_total_time="$seconds" >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz target $target failed; the input is under fuzz/artifacts/$target/" >&2
    exit 1
  fi
  grep -E '^Done' "$log" || true
done
