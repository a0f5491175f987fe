#!/usr/bin/env bash
# Runs Schemathesis (from PyPI) against the real server binary with the repository's
# OpenAPI document (docs/openapi.json), on a SQLite file: once without authentication,
# once with `--jwt-secret` and a valid token. Fails on any 5xx and on any answer that the
# document does not allow (status, headers, content type, body schema).
#
# Uses $DISTRIBUTED_EVENTS_SERVER when set, else the debug binary (build it first:
# `cargo build -p distributed-events-server`). SCHEMATHESIS_MAX_EXAMPLES (default 50)
# bounds the cases per operation and phase.
set -euo pipefail
cd "$(dirname "$0")/.."

binary="${DISTRIBUTED_EVENTS_SERVER:-${CARGO_TARGET_DIR:-$PWD/target}/debug/distributed-events-server}"
if [[ ! -x "$binary" ]]; then
    echo "no server binary at $binary: run \`cargo build -p distributed-events-server\` first" >&2
    exit 1
fi

# Schemathesis in its own virtualenv, installed once (pinned major version: the CLI's
# options changed at 4.0).
venv="${CARGO_TARGET_DIR:-$PWD/target}/schemathesis-venv"
# A venv that no longer runs (its folder was moved, or its Python changed) is made anew.
if ! "$venv/bin/st" --version >/dev/null 2>&1; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'schemathesis>=4,<5'
fi

work=$(mktemp -d)
# shellcheck source=scripts/server-process.sh
source scripts/server-process.sh
cleanup() {
    stop_binary
    rm -rf "$work"
}
trap cleanup EXIT

# Starts the binary on a fresh SQLite file with extra flags; sets $base.
start_server() {
    # A short --max-wait: generated `wait`s would otherwise hold each poll for up to 30 s.
    start_binary "$work/server.log" --database "sqlite://$work/events-$RANDOM.db" \
        --max-wait 200ms --static-dir "$work/no-static" "$@"
}

# Runs Schemathesis against $base with extra options; prints the server's log on failure.
run_schemathesis() {
    local label=$1
    shift
    echo "--- schemathesis: $label ($base)" >&2
    if ! "$venv/bin/st" run docs/openapi.json --url "$base" \
        --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
        --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-50}" \
        --seed "${SCHEMATHESIS_SEED:-1}" \
        --request-timeout 10 \
        --no-color \
        "$@"; then
        echo "schemathesis found problems ($label); the server's log:" >&2
        tail -n 50 "$work/server.log" >&2
        exit 1
    fi
}

start_server
run_schemathesis "no authentication"
stop_binary

# An HS256 token that the server accepts: tenant claim, subject, an hour to live.
secret="schemathesis-secret-of-at-least-32-bytes"
token=$(python3 - "$secret" <<'EOF'
import base64, hashlib, hmac, json, sys, time
def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
claims = b64(json.dumps({"sub": "user-1", "tenant_id": "tenant-1", "exp": int(time.time()) + 3600}).encode())
signature = hmac.new(sys.argv[1].encode(), f"{header}.{claims}".encode(), hashlib.sha256).digest()
print(f"{header}.{claims}.{b64(signature)}")
EOF
)
start_server --jwt-secret "$secret"
run_schemathesis "JWT authentication" --header "Authorization: Bearer $token"
stop_binary
echo "schemathesis: no findings" >&2
