#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine (idempotent), then fetches the weights.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for pkg in mesa-vulkan-drivers libvulkan1 python3-pip; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
# python3 -m pip is what fetch-weights uses; a python without pip needs Debian's.
if python3 -m pip --version >/dev/null 2>&1; then
  need=("${need[@]/python3-pip}")
fi
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
