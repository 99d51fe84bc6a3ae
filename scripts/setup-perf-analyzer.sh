#!/usr/bin/env bash
# Triton's load tool, perf_analyzer, for `make bench-oip` (not part of `make test`): the last
# build that runs on Debian 12's glibc is the one inside PyPI tritonclient 2.51.0's manylinux1
# wheel (newer ones need glibc 2.38). It needs libb64 (Debian's libb64-0d) and libcudart.so.12
# (PyPI nvidia-cuda-runtime-cu12; loaded, no GPU used). Everything pinned by version and sha256,
# unpacked into tools/perf_analyzer/ (idempotent); prints the version.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=tools/perf_analyzer
TRITONCLIENT=tritonclient-2.51.0-py3-none-manylinux1_x86_64.whl
TRITONCLIENT_SHA=c485bb0123bdf310f90bc8b03d3489b28df2ffed55b30c7eee0b795b48113d52
CUDART=nvidia_cuda_runtime_cu12-12.9.79-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl
CUDART_SHA=25bba2dfb01d48a9b59ca474a1ac43c6ebf7011f1b0b8cc44f54eb6ac48a96c3
LIBB64=libb64-0d_1.2-5+b1_amd64.deb
LIBB64_SHA=b0e1d6fde8bdccc18c3884144aede064dc82464dd4777275fa80e74c05583e82

if [ -x "$dest/bin/perf_analyzer" ] && [ -f "$dest/.installed" ] \
  && [ "$(cat "$dest/.installed")" = "$TRITONCLIENT_SHA $CUDART_SHA $LIBB64_SHA" ]; then
  echo "ok       perf_analyzer at $dest/bin/perf_analyzer"
  exit 0
fi
mkdir -p "$dest/download" "$dest/bin" "$dest/lib"
cd "$dest/download"
check() { echo "$2  $1" | sha256sum -c --quiet || { echo "sha256 mismatch: $1" >&2; rm -f "$1"; exit 1; }; }
[ -f "$TRITONCLIENT" ] || python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --platform manylinux1_x86_64 --python-version 3.11 tritonclient==2.51.0 -d .
check "$TRITONCLIENT" "$TRITONCLIENT_SHA"
[ -f "$CUDART" ] || python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --platform manylinux2014_x86_64 --python-version 3.11 nvidia-cuda-runtime-cu12==12.9.79 -d .
check "$CUDART" "$CUDART_SHA"
[ -f "$LIBB64" ] || apt-get download libb64-0d=1.2-5+b1 2>/dev/null
check "$LIBB64" "$LIBB64_SHA"
python3 - "$TRITONCLIENT" "$CUDART" <<'PY'
import sys, zipfile
for wheel, member, out in [(sys.argv[1], "tritonclient-2.51.0.data/data/bin/perf_analyzer", "../bin/perf_analyzer"),
                           (sys.argv[2], "nvidia/cuda_runtime/lib/libcudart.so.12", "../lib/libcudart.so.12")]:
    with zipfile.ZipFile(wheel) as z, open(out, "wb") as f:
        f.write(z.read(member))
PY
chmod +x ../bin/perf_analyzer
rm -rf deb && mkdir deb && dpkg-deb -x "$LIBB64" deb && cp deb/usr/lib/x86_64-linux-gnu/libb64.so.0d* ../lib/
cd ../../..
# The binary runs through a wrapper that puts its libraries on the path.
cat > "$dest/perf_analyzer" <<'SH'
#!/usr/bin/env bash
here="$(cd "$(dirname "$0")" && pwd)"
LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/bin/perf_analyzer" "$@"
SH
chmod +x "$dest/perf_analyzer"
echo "$TRITONCLIENT_SHA $CUDART_SHA $LIBB64_SHA" > "$dest/.installed"
"$dest/perf_analyzer" --version
echo "ok       perf_analyzer at $dest/perf_analyzer"
