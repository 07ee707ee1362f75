#!/usr/bin/env bash
# Berry on the example config with two demo upstreams behind it.
#
# Ports: the demo upstreams use DEMO_A_PORT and DEMO_B_PORT if set, else 9001 and 9002 when
# free, else any free port; the config follows through those two variables. Berry listens on
# BIND_ADDRESS (host:port) or PORT if set, else on 3000 when free (the port of Berry API's
# usage guide), else on any free port. If anything fails to start, everything stops.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
BERRY=${BERRY:-.venv/bin/berry}
CONFIG=local/config.example.toml

say() { echo "demo: $*" >&2; }

# The port itself when it is free on loopback, else a free one the system picks.
port_or_free() {
    "$PYTHON" - "$1" <<'EOF'
import socket, sys
for port in (int(sys.argv[1]), 0):
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        print(sock.getsockname()[1])
        break
EOF
}

# Wait until url answers, or give up when pid exits or 30 s pass.
wait_ready() {
    "$PYTHON" - "$1" "$2" <<'EOF'
import os, sys, time, urllib.request
url, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    try:
        urllib.request.urlopen(url, timeout=2).close()
        sys.exit(0)
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            sys.exit(1)  # the process is gone
        time.sleep(0.1)
sys.exit(1)
EOF
}

PIDS=()
stop_all() {
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

DEMO_A_PORT=${DEMO_A_PORT:-$(port_or_free 9001)}
DEMO_B_PORT=${DEMO_B_PORT:-$(port_or_free 9002)}
export DEMO_A_PORT DEMO_B_PORT

start_upstream() {  # name port latency_ms
    "$PYTHON" local/demo_upstream.py --port "$2" --name "$1" --latency-ms "$3" \
        --chunk-delay-ms 30 &
    PIDS+=($!)
    if ! wait_ready "http://127.0.0.1:$2/_demo/stats" "$!"; then
        say "demo upstream $1 did not start on port $2 (see above). Stopping."
        say "Pick another port: DEMO_A_PORT=... DEMO_B_PORT=... make demo"
        exit 1
    fi
}
start_upstream demo-a "$DEMO_A_PORT" 40
start_upstream demo-b "$DEMO_B_PORT" 80

ADDRESS=()
if [[ -n ${BIND_ADDRESS:-} ]]; then
    HOST=${BIND_ADDRESS%:*}
    BERRY_PORT=${BIND_ADDRESS##*:}
elif [[ -n ${PORT:-} ]]; then
    HOST=127.0.0.1
    BERRY_PORT=$PORT
    ADDRESS=(--port "$PORT")
else
    HOST=127.0.0.1
    BERRY_PORT=$(port_or_free 3000)
    ADDRESS=(--port "$BERRY_PORT")
fi
case $HOST in 0.0.0.0 | "[::]" | "") HOST=127.0.0.1 ;; esac
URL="http://$HOST:$BERRY_PORT"

"$BERRY" serve --config "$CONFIG" --log-level info "${ADDRESS[@]}" &
BERRY_PID=$!
PIDS+=("$BERRY_PID")
if ! wait_ready "$URL/v1/health" "$BERRY_PID"; then
    say "Berry did not start on $URL (see above). Stopping."
    exit 1
fi

cat <<EOF

Berry demo is up:
  Berry        $URL   (status page: $URL/)
  demo-a       http://127.0.0.1:$DEMO_A_PORT/v1
  demo-b       http://127.0.0.1:$DEMO_B_PORT/v1
  config       $CONFIG   (model gpt-4; admin token berry-admin-token-12345, change me)
EOF
if [[ $BERRY_PORT != 3000 ]]; then
    echo "  note         port 3000 was not used: in the usage guide's examples, use $URL"
fi
cat <<EOF

Try:
  curl $URL/v1/chat/completions \\
    -H "Authorization: Bearer berry-admin-token-12345" -H "Content-Type: application/json" \\
    -d '{"model": "gpt-4", "messages": [{"role": "user", "content": "Hello"}]}'
Ctrl-C stops Berry and both demo upstreams.
EOF
set +e
wait "$BERRY_PID"
status=$?
set -e
exit "$status"
