#!/usr/bin/env bash
# Starts a server on the embedded defaults (or $CONFIG), runs `bench compare`, stops the server.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-18080}
cargo build --bin gpubackend --bin bench
bin=${CARGO_TARGET_DIR:-target}/debug
args=(--port "$PORT")
[ -n "${CONFIG:-}" ] && args+=(-c "$CONFIG")
RUST_LOG=warn "$bin/gpubackend" "${args[@]}" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT
for _ in $(seq 1 600); do
  curl -fs "http://127.0.0.1:$PORT/health/ready" >/dev/null 2>&1 && break
  sleep 0.5
done
"$bin/bench" compare --addr "127.0.0.1:$PORT" --concurrency "${CONCURRENCY:-32}" --duration "${DURATION:-20}" --device "${DEVICE:-cpu}"
