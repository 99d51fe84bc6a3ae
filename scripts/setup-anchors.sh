#!/usr/bin/env bash
# onnxruntime + ncnn from PyPI (pinned, tools/bench/requirements-anchors.txt) in
# tools/bench/.venv-anchors, and TensorFlow.js's wasm backend from npm (pinned by
# tools/bench/tfjs-wasm/package-lock.json, with its integrity hashes) in tools/bench/tfjs-wasm:
# the anchors of `gpubackend bench networks` (`make bench-networks`). Not part of `make setup` or
# the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=tools/bench/.venv-anchors
req=tools/bench/requirements-anchors.txt
if ! cmp -s "$req" "$venv/installed.txt" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q -r "$req"
  cp "$req" "$venv/installed.txt"
fi
tfjs=tools/bench/tfjs-wasm
if ! cmp -s "$tfjs/package-lock.json" "$tfjs/node_modules/installed-lock.json" 2>/dev/null; then
  (cd "$tfjs" && npm ci --no-audit --no-fund --silent)
  cp "$tfjs/package-lock.json" "$tfjs/node_modules/installed-lock.json"
fi
echo "ok       TensorFlow.js wasm backend at $tfjs ($(node -p "require('./$tfjs/node_modules/@tensorflow/tfjs-backend-wasm/package.json').version"))"
echo "ok       anchors at $venv (onnxruntime $("$venv/bin/python" -c 'import onnxruntime; print(onnxruntime.__version__)'), ncnn $("$venv/bin/python" -c 'import ncnn; print(ncnn.__version__)'))"
