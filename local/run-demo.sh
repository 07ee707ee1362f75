#!/usr/bin/env bash
# Berry on the example config with two demo upstreams (ports 9001 and 9002) behind it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
BERRY=${BERRY:-.venv/bin/berry}
PORT=${PORT:-8080}

"$PYTHON" local/demo_upstream.py --port 9001 --name demo-a --latency-ms 40 --chunk-delay-ms 30 &
A=$!
"$PYTHON" local/demo_upstream.py --port 9002 --name demo-b --latency-ms 80 --chunk-delay-ms 30 &
B=$!
trap 'kill $A $B 2>/dev/null || true' EXIT INT TERM

echo "Berry: http://127.0.0.1:$PORT  (status page at /, try the curl in README.md)"
"$BERRY" serve --config local/config.example.toml --port "$PORT" --log-level info
