#!/usr/bin/env bash
# Runs every benchmark scenario of distributed-events-bench in smoke mode (a second or
# two each, tiny counts) so that the harness keeps working; about 30 s once built. Exits
# non-zero when the harness fails (the server does not start, a request fails, an event
# goes missing), never because a target was missed: smoke figures mean nothing.
#
#     scripts/bench-smoke.sh            # debug build, like the test suite
#     PROFILE=release scripts/bench-smoke.sh
#
# With DATABASE_URL_TEST set (eval "$(scripts/ci-postgres.sh)"), the append scenario runs
# on PostgreSQL too, in a fresh schema that it drops afterwards. The client-size scenario
# reads js/pkg and is skipped when the npm package has not been built.
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE="${PROFILE:-debug}"
if [ "$PROFILE" = release ]; then profile_flag=(--release); else profile_flag=(); fi
cargo build "${profile_flag[@]}" -p distributed-events-server -p distributed-events-bench
bench="${CARGO_TARGET_DIR:-$PWD/target}/$PROFILE/distributed-events-bench"

databases=sqlite
if [ -n "${DATABASE_URL_TEST:-}" ]; then databases=sqlite,postgres; fi

for scenario in append batch latency fanout idle ceiling size; do
    extra=()
    case "$scenario" in
        append) extra=(--database "$databases") ;;
        # Both ways of following the server: long-polling and Server-Sent Events.
        latency | fanout | idle) extra=(--transport long-poll,stream) ;;
    esac
    echo "==> bench smoke: $scenario ${extra[*]}" >&2
    # The harness bounds every wait itself; the timeout only guards against a hang.
    timeout 120 "$bench" "$scenario" --smoke "${extra[@]}"
done
