#!/usr/bin/env bash
# LLVM 23.1 for the `cuda` build, without GitHub: burn 0.22.1's CUDA backend (cubecl-cuda 0.11.3)
# always links cubecl-llvm (LLVM 23.1 C API, NVPTX back-end → PTX), whose build script
# (tracel-llvm-bundler 23.1.0-4) downloads a prebuilt LLVM from GitHub unless its install marker
# exists. PyPI's mlc-llvm-static + mlc-llvm-static-extra-targets 23.1.1.post0 are a static,
# relocatable LLVM 23.1 with NVPTX: this script fetches both wheels (pinned, sha256-checked), unpacks
# them where the bundler looks (`$XDG_DATA_HOME/tracel/tracel-llvm-23.1.0-4`, XDG_DATA_HOME defaulting
# to ~/.local/share) and writes the marker, so `cargo build --features cuda` links it offline.
# Needs python3 with pip (llvm-config is a Python script) and g++ (cubecl-llvm's C++ shims).
# Re-check the directory name on every burn/cubecl bump: `cargo tree --features cuda -i tracel-llvm-bundler`.
# Idempotent: `make setup-llvm` (part of `make setup`).
set -euo pipefail

SDK=23.1.1.post0
BUNDLE=23.1.0-4 # tracel-llvm-bundler's TRACEL_LLVM_FULL_VERSION, names the directory it reads
# wheel sha256
WHEELS=(
  "mlc_llvm_static-$SDK-py3-none-manylinux_2_28_x86_64.whl dcfec888abfaa418be77d41af585805f31463584cf9c90582992c00f392c1ac5"
  "mlc_llvm_static_extra_targets-$SDK-py3-none-manylinux_2_28_x86_64.whl c36e834d9a4e9cf9759f27fece65711ece7a2fc2b5a96dbb15d66f5e9e787929"
)
DEST="${XDG_DATA_HOME:-${HOME:-/root}/.local/share}/tracel/tracel-llvm-$BUNDLE"
MARKER="$DEST/.tracel-llvm-installed"
STAMP="$DEST/.gpubackend-sdk" # which SDK we installed: a pin change reinstalls

if [ -e "$MARKER" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$SDK" ]; then
  echo "ok       LLVM $SDK at $DEST"
  exit 0
fi
if [ "$(uname -m)" != x86_64 ]; then
  echo "setup-llvm: only x86_64 wheels are pinned (this is $(uname -m))" >&2
  exit 1
fi
command -v g++ >/dev/null || { echo "setup-llvm: g++ is needed to build cubecl-llvm's C++ shims" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetching mlc-llvm-static(-extra-targets)==$SDK → $DEST"
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --platform manylinux_2_28_x86_64 -d "$tmp" \
  "mlc-llvm-static==$SDK" "mlc-llvm-static-extra-targets==$SDK"
for w in "${WHEELS[@]}"; do
  read -r file sha <<<"$w"
  if ! echo "$sha  $tmp/$file" | sha256sum --check --status; then
    echo "setup-llvm: sha256 mismatch (or missing) for $file (expected $sha)" >&2
    exit 1
  fi
  # Both wheels own disjoint files of mlc_llvm_static/static/.
  python3 -m zipfile -e "$tmp/$file" "$tmp/x"
done
mkdir -p "$(dirname "$DEST")"
rm -rf "$DEST"
mv "$tmp/x/mlc_llvm_static/static" "$DEST"
chmod +x "$DEST/bin/llvm-config" "$DEST/bin/llvm-config.py" # zipfile drops the exec bit
version=$("$DEST/bin/llvm-config" --version)
"$DEST/bin/llvm-config" --targets-built | grep -qw NVPTX || { echo "setup-llvm: LLVM without NVPTX" >&2; exit 1; }
echo "$SDK" >"$STAMP"
touch "$MARKER" # tracel-llvm-bundler's build script now skips its download
echo "ok       LLVM $version (NVPTX) at $DEST"
