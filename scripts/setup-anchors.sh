#!/usr/bin/env bash
# onnxruntime + ncnn from PyPI (pinned, tools/bench/requirements-anchors.txt) in
# tools/bench/.venv-anchors: the anchors of `gpubackend bench networks` (`make bench-networks`).
# Not part of `make setup` or the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=tools/bench/.venv-anchors
req=tools/bench/requirements-anchors.txt
if ! cmp -s "$req" "$venv/installed.txt" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q -r "$req"
  cp "$req" "$venv/installed.txt"
fi
echo "ok       anchors at $venv (onnxruntime $("$venv/bin/python" -c 'import onnxruntime; print(onnxruntime.__version__)'), ncnn $("$venv/bin/python" -c 'import ncnn; print(ncnn.__version__)'))"
