#!/usr/bin/env bash
# Starts a server on the embedded defaults (or $CONFIG), runs `bench compare` (or, with the
# argument `faces`, `text`, `plates`, `improve` or `overload`, that bench; `eval-plates`: tools/eval/plates.py eval), stops
# the server. The person store goes to a temporary directory.
# GPUBACKEND=path runs another build of the binary (e.g. a release build, or an older one to compare).
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-18080}
if [ -z "${GPUBACKEND:-}" ]; then
  cargo build ${FEATURES:+--features "$FEATURES"} --bin gpubackend
fi
exe=${GPUBACKEND:-${CARGO_TARGET_DIR:-target}/debug/gpubackend}
store=$(mktemp -d)
sed "s|^dir = \"data\"|dir = \"$store\"|" "${CONFIG:-config/default.toml}" > "$store/bench.toml"
args=(--port "$PORT" -c "$store/bench.toml")
# `bench compare` measures the classifier: `object` alone (no detector boxes added to it).
[ -z "${1:-}" ] && args+=(--models "${MODELS:-mobilenet_v2}")
[ "${1:-}" = overload ] && args+=(--models "${MODELS:-mobilenet_v2}")
[ "${1:-}" = improve ] && args+=(--models "${MODELS:-realesrgan}")
RUST_LOG=warn "$exe" "${args[@]}" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$store"' EXIT
for _ in $(seq 1 600); do
  curl -fs "http://127.0.0.1:$PORT/health/ready" >/dev/null 2>&1 && break
  sleep 0.5
done
if [ "${1:-}" = eval-plates ]; then
  .venv-plates-eval/bin/python tools/eval/plates.py eval --dir "${PLATE_SET:?}" --addr "127.0.0.1:$PORT"
elif [ "${1:-}" = improve ]; then
  "$exe" bench improve --addr "127.0.0.1:$PORT" --concurrency "${CONCURRENCY:-2}" --duration "${DURATION:-60}" \
    --sizes "${SIZES:-64,128,256}" --ftype "${FTYPE:-art}" --rfactor "${RFACTOR:-4}"
elif [ "${1:-}" = overload ]; then
  # The classifier's capacity (CONCURRENCY, default 32 clients), then 10x the clients, in one run.
  "$exe" bench overload --addr "127.0.0.1:$PORT" --concurrency "${CONCURRENCY:-32}" \
    --overload-clients "${OVERLOAD:-512}" --duration "${DURATION:-20}" \
    --images tests/data/chelsea.jpg,tests/data/dog.jpg,tests/data/person.jpg,tests/data/horses.jpg
elif [ -n "${1:-}" ]; then
  "$exe" bench "$1" --addr "127.0.0.1:$PORT" --concurrency "${CONCURRENCY:-8}" --duration "${DURATION:-20}"
else
  "$exe" bench compare --addr "127.0.0.1:$PORT" --concurrency "${CONCURRENCY:-32}" --duration "${DURATION:-20}" --device "${DEVICE:-cpu}"
fi
