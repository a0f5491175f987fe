#!/usr/bin/env bash
# Makes sure a MariaDB (or MySQL) server answers on 127.0.0.1:3306 with a `test` database
# that `root` can reach without a password, then prints the URL the MySQL tests read:
#
#     eval "$(scripts/ci-mysql.sh)"    # exports MYSQL_URL_TEST
#
# Idempotent: when the server already answers it changes nothing but creates the database
# if it is missing. Otherwise it starts `mariadbd` in the background, installing
# mariadb-server with apt-get first if it is absent. Progress goes to stderr; stdout
# carries only the `export` line. Any failure exits non-zero: in CI a missing database
# fails the build instead of skipping the tests.
set -euo pipefail

HOST=127.0.0.1
PORT=3306
DATABASE="${CI_MYSQL_DATABASE:-test}"   # the database the tests use
URL="mysql://root@${HOST}:${PORT}/${DATABASE}"

say() { echo "ci-mysql: $*" >&2; }
fail() { say "error: $*"; exit 1; }

# Runs a command as root (directly, or through sudo).
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if ! [ -x /usr/sbin/mariadbd ] || ! command -v mariadb >/dev/null 2>&1; then
    say "MariaDB is not installed: installing it with apt-get"
    as_root apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-server mariadb-client >&2
fi

# Over TCP, as the tests connect.
ready() { mariadb -uroot -h "$HOST" -P "$PORT" -e 'SELECT 1' >/dev/null 2>&1; }

if ! ready; then
    say "starting MariaDB"
    # mariadbd wants its socket directory; containers and CI runners often have no systemd.
    as_root install -d -o mysql -g mysql /run/mysqld
    as_root start-stop-daemon --start --oknodo --background --chuid mysql \
        --exec /usr/sbin/mariadbd >&2 \
        || say "start-stop-daemon failed (it may already be starting); waiting for it"
    # Up means: the local socket answers (root may not be let in over TCP yet).
    up() { ready || as_root mariadb -uroot -e 'SELECT 1' >/dev/null 2>&1; }
    for _ in $(seq 1 60); do
        up && break
        sleep 0.5
    done
    up || fail "MariaDB does not answer after 30 s; see /var/log/mysql/ or journalctl"
fi

# A fresh Debian install lets root in through the local socket only; the tests connect over
# TCP without a password (this is meant for throw-away CI machines).
if ! ready && as_root mariadb -uroot -e 'SELECT 1' >/dev/null 2>&1; then
    say "allowing root over TCP without a password"
    as_root mariadb -uroot -e "ALTER USER root@localhost IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD('')" >&2
fi
ready || fail "cannot connect as root to ${HOST}:${PORT} without a password"

mariadb -uroot -h "$HOST" -P "$PORT" -e "CREATE DATABASE IF NOT EXISTS \`${DATABASE}\`" >&2

say "MariaDB is up: ${URL}"
echo "export MYSQL_URL_TEST=${URL}"
