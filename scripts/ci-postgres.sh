#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers on 127.0.0.1:5432 with a `test` database that
# user `postgres` can reach without a password, then prints the URL the PostgreSQL tests
# read:
#
#     eval "$(scripts/ci-postgres.sh)"    # exports DATABASE_URL_TEST
#
# Idempotent: when PostgreSQL already answers it changes nothing but creates the database
# if it is missing. Otherwise it starts the Debian cluster (`pg_ctlcluster`), installing
# PostgreSQL with apt-get first if it is absent. A freshly installed cluster is set to
# `trust` for 127.0.0.1 (this is meant for throw-away CI machines). Progress goes to
# stderr; stdout carries only the `export` line. Any failure exits non-zero: in CI a
# missing database fails the build instead of skipping the tests.
set -euo pipefail

HOST=127.0.0.1
PORT=5432
DATABASE="${CI_POSTGRES_DATABASE:-test}"   # the database the tests use
URL="postgres://postgres@${HOST}:${PORT}/${DATABASE}"

say() { echo "ci-postgres: $*" >&2; }
fail() { say "error: $*"; exit 1; }

# Runs a command as root (directly, or through sudo).
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Runs a command as the `postgres` system user (peer authentication on the local socket).
as_postgres() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi
}

installed_now=no
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    say "PostgreSQL is not installed: installing it with apt-get"
    as_root apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
    installed_now=yes
fi

ready() { pg_isready -q -h "$HOST" -p "$PORT"; }

if ! ready; then
    version="$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)"
    [ -n "$version" ] || fail "no cluster under /etc/postgresql; create one with pg_createcluster"
    say "starting PostgreSQL $version (cluster main)"
    # --skip-systemctl-redirect: containers and CI runners often have no systemd.
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 \
        || say "pg_ctlcluster start failed (it may already be starting); waiting for it"
    for _ in $(seq 1 60); do
        ready && break
        sleep 0.5
    done
    ready || fail "PostgreSQL does not answer on ${HOST}:${PORT} after 30 s; see /var/log/postgresql/"
fi

if [ "$installed_now" = yes ]; then
    # Debian's default asks TCP clients for a password; the tests connect without one.
    hba="$(as_postgres psql -tAc 'SHOW hba_file')"
    say "allowing password-less connections from ${HOST} in $hba"
    as_root sed -i "1i host all all ${HOST}/32 trust" "$hba"
    as_postgres psql -qc 'SELECT pg_reload_conf()' >/dev/null
fi

can_connect() { psql "postgres://postgres@${HOST}:${PORT}/postgres" -tAc 'SELECT 1' >/dev/null 2>&1; }
can_connect || fail "cannot connect as postgres to ${HOST}:${PORT} without a password (check pg_hba.conf)"

exists="$(psql "postgres://postgres@${HOST}:${PORT}/postgres" -tAc "SELECT 1 FROM pg_database WHERE datname = '${DATABASE}'")"
if [ "$exists" != 1 ]; then
    say "creating database ${DATABASE}"
    psql "postgres://postgres@${HOST}:${PORT}/postgres" -qc "CREATE DATABASE ${DATABASE}" >&2
fi

say "PostgreSQL is up: ${URL}"
echo "export DATABASE_URL_TEST=${URL}"
