#!/usr/bin/env bash
# Runs the Durable Streams conformance suite (npm `@durable-streams/server-conformance-tests`,
# pinned in tests/durable-streams/package.json) against the real server binary: on a fresh
# SQLite file, when DATABASE_URL_TEST is set on a fresh PostgreSQL schema, and when
# MYSQL_URL_TEST is set on a fresh MySQL/MariaDB database (both dropped afterwards). Prints
# passed/failed/skipped for each and exits non-zero on any failure.
#
# Uses $DISTRIBUTED_EVENTS_SERVER when set, else builds and uses the debug binary.
# DURABLE_STREAMS_BACKENDS (default "sqlite postgres mysql") chooses the runs.
set -euo pipefail
cd "$(dirname "$0")/.."

binary="${DISTRIBUTED_EVENTS_SERVER:-}"
if [[ -z "$binary" ]]; then
    cargo build --quiet -p distributed-events-server --bin distributed-events-server
    binary="${CARGO_TARGET_DIR:-$PWD/target}/debug/distributed-events-server"
fi

suite=tests/durable-streams
if [[ ! -x "$suite/node_modules/.bin/vitest" ]]; then
    (cd "$suite" && npm ci --no-audit --no-fund --loglevel=error)
fi

work=$(mktemp -d)
# shellcheck source=scripts/server-process.sh
source scripts/server-process.sh
schema=
mysql_database=
cleanup() {
    stop_binary
    if [[ -n "$schema" ]]; then psql "$DATABASE_URL_TEST" -qc "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1 || true; fi
    if [[ -n "$mysql_database" ]]; then mysql_run "DROP DATABASE IF EXISTS \`$mysql_database\`" >/dev/null 2>&1 || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# MYSQL_URL_TEST (mysql://USER[:PASSWORD]@HOST[:PORT]/DB[?PARAMS]) with database $1, and
# a statement run by the mariadb (or mysql) client on that server.
mysql_url_of() {
    local url=${MYSQL_URL_TEST%%\?*} params=
    [[ "$MYSQL_URL_TEST" == *\?* ]] && params="?${MYSQL_URL_TEST#*\?}"
    echo "${url%/*}/$1$params"
}
mysql_run() {
    local authority=${MYSQL_URL_TEST#mysql://}
    authority=${authority%%/*}
    local credentials=root host_port=$authority
    if [[ "$authority" == *@* ]]; then credentials=${authority%@*}; host_port=${authority##*@}; fi
    local user=${credentials%%:*} password=
    [[ "$credentials" == *:* ]] && password=${credentials#*:}
    local host=${host_port%%:*} port=3306
    [[ "$host_port" == *:* ]] && port=${host_port##*:}
    local client=mariadb
    command -v mariadb >/dev/null 2>&1 || client=mysql
    MYSQL_PWD="$password" "$client" -u"$user" -h"$host" -P"$port" -e "$1"
}

# Starts the binary on database $1; sets $base.
start_server() {
    start_binary "$work/server.log" --database "$1" --static-dir "$work/no-static"
}

# Runs the suite against $base; prints the counts; returns non-zero on a failure.
run_suite() {
    local name=$1 report="$work/$1.json" status=0
    (cd "$suite" && DURABLE_STREAMS_URL="$base" npx vitest run --reporter=dot \
        --reporter=json --outputFile.json="$report") >"$work/$name.log" 2>&1 || status=$?
    if [[ ! -s "$report" ]]; then
        cat "$work/$name.log" >&2
        echo "$name: the suite did not run" >&2
        return 1
    fi
    node -e '
        const r = require(process.argv[1]);
        const failed = [];
        for (const file of r.testResults)
            for (const t of file.assertionResults)
                if (t.status === "failed") failed.push(t.fullName);
        console.log(`${process.argv[2]}: ${r.numPassedTests} passed, ${r.numFailedTests} failed, ${r.numPendingTests + r.numTodoTests} skipped`);
        for (const name of failed) console.log(`  failed: ${name}`);
    ' "$report" "$name"
    return "$status"
}

failures=0
for backend in ${DURABLE_STREAMS_BACKENDS:-sqlite postgres mysql}; do
    case "$backend" in
        sqlite)
            start_server "sqlite://$work/streams.db"
            ;;
        postgres)
            if [[ -z "${DATABASE_URL_TEST:-}" ]]; then
                echo "postgres: skipped (DATABASE_URL_TEST is not set)"
                continue
            fi
            schema="ds_conformance_$(date +%s)_$RANDOM"
            psql "$DATABASE_URL_TEST" -qc "CREATE SCHEMA $schema" >/dev/null
            separator='?'
            [[ "$DATABASE_URL_TEST" == *\?* ]] && separator='&'
            start_server "${DATABASE_URL_TEST}${separator}options[search_path]=$schema"
            ;;
        mysql)
            if [[ -z "${MYSQL_URL_TEST:-}" ]]; then
                echo "mysql: skipped (MYSQL_URL_TEST is not set)"
                continue
            fi
            mysql_database="ds_conformance_$(date +%s)_$RANDOM"
            mysql_run "CREATE DATABASE \`$mysql_database\`"
            start_server "$(mysql_url_of "$mysql_database")"
            ;;
        *)
            echo "unknown backend $backend (use sqlite, postgres or mysql)" >&2
            exit 2
            ;;
    esac
    run_suite "$backend" || failures=$((failures + 1))
    stop_binary
done
exit $((failures > 0))
