#!/usr/bin/env bash
# PyTorch + torchvision (pinned, tools/bench/requirements.txt) in tools/bench/.venv, for the
# benchmarks' PyTorch anchor only (`bench model --torch tools/bench/.venv/bin/python`).
# Not part of `make setup` or the tests: PyPI's torch wheel is the CUDA build (~5.4 GB installed).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=tools/bench/.venv
if cmp -s tools/bench/requirements.txt "$venv/installed.txt" 2>/dev/null; then
  echo "ok       PyTorch at $venv ($("$venv/bin/python" -c 'import torch; print(torch.__version__)'))"
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install -q -r tools/bench/requirements.txt
cp tools/bench/requirements.txt "$venv/installed.txt"
echo "ok       PyTorch at $venv ($("$venv/bin/python" -c 'import torch; print(torch.__version__)'))"
