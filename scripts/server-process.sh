# Sourced by the scripts that run the server binary ($binary) against a test tool.
# `start_binary LOG ARGS...` starts it with ARGS on a free loopback port, its log in LOG,
# and sets $server_pid and $base (its URL) once it listens; if it does not, it prints the
# log and exits. `stop_binary` stops it. The caller's EXIT trap should call `stop_binary`.

server_pid=
base=

start_binary() {
    local log=$1
    shift
    : >"$log"
    "$binary" --bind 127.0.0.1:0 "$@" 2>"$log" &
    server_pid=$!
    base=
    for _ in $(seq 1 300); do
        base=$(sed -n 's/^listening on \(http:[^ ]*\).*/\1/p' "$log" | head -n 1)
        [[ -n "$base" ]] && return 0
        if ! kill -0 "$server_pid" 2>/dev/null; then break; fi
        sleep 0.1
    done
    echo "the server did not start; its log:" >&2
    cat "$log" >&2
    exit 1
}

stop_binary() {
    if [[ -n "$server_pid" ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    server_pid=
}
