#!/usr/bin/env bash
# Proves and measures the GPU path on a machine with an NVIDIA GPU and no network, from the prebuilt
# artefacts `make gpu-pack` puts under .gpu/ (the release binary with cuda + wgpu, the weights, the
# Vulkan/EGL loader packages). Run from the repository root: `bash scripts/gpu-check.sh`.
#   1. diagnosis: driver, device nodes, Vulkan loader/ICDs/EGL vendor files, libcuda (`gpubackend devices`)
#   2. `gpubackend verify` on wgpu:0 and cuda:0: every network (MobileNetV2, P/R/O-Net, SFace, PP-OCR
#      det + cls, the plate detector, CenterNet, both Real-ESRGANs, the nsfw classifier) against the
#      reference fixtures
#   3. per backend: the server on config/gpu.toml, `bench compare` (objects) and `bench faces`
#   4. model-only sweep over batch sizes, beside PyTorch eager (when python3 has torch + torchvision)
#   5. the host CPU (the CPU engine where the machine has AVX-512): verify on cpu, bench model beside
#      PyTorch eager on 1, 2 and every core, bench layers (MobileNetV2, P-Net)
#   6. one JSON + one markdown table (tools/bench/gpu_report.py)
# Results go to $OUT (the device tool's folder) or ./gpu-check-out. Every step runs even when an
# earlier one failed; the report says what failed. Time: DURATION seconds per load run (default 12);
# a step that would start after BUDGET seconds (default 420) is skipped, so the report is always written
# inside the 8 minutes (kernel compilation and autotuning happen on first use of each shape).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
work=$(mktemp -d /tmp/gpu-check.XXXX)
DURATION=${DURATION:-12}
BATCHES=${BATCHES:-"1 16 64"}
BUDGET=${BUDGET:-420}
READY_TIMEOUT=${READY_TIMEOUT:-120} # seconds for a server to load, compile and warm up
log="$OUT/gpu-check.log"
exec > >(tee "$log") 2>&1
t0=$(date +%s)
step() { echo; echo "=== [$(( $(date +%s) - t0 )) s] $*"; }
# True while there is time for a step of about $1 seconds.
time_for() { [ $(( $(date +%s) - t0 + $1 )) -le "$BUDGET" ] || { echo "SKIPPED (time budget): $2"; false; }; }

step "0. artefacts"
bin="$work/gpubackend"
packed=$(ls .gpu/*/bin/gpubackend.xz 2>/dev/null | head -1)
if [ -x "${GPUBACKEND:-}" ]; then
  cp "$GPUBACKEND" "$bin"
elif [ -n "$packed" ]; then
  xz -dc "$packed" > "$bin" 2>/dev/null || python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$packed" "$bin"
else
  echo "no binary: run \`make gpu-pack\` and carry .gpu (or set GPUBACKEND)"; exit 2
fi
chmod +x "$bin"
# Weights: the packed parts' models/ trees, linked where the configs and fixtures expect them.
for f in .gpu/*/models/*/*; do
  [ -f "$f" ] || continue
  rel=${f#.gpu/*/}
  mkdir -p "$(dirname "$rel")"
  [ -e "$rel" ] || ln -s "$PWD/$f" "$rel"
done
for w in models/mobilenet_v2/mobilenet_v2-b0353104.pth models/mtcnn/pnet.pt models/mtcnn/rnet.pt \
         models/mtcnn/onet.pt models/sface/face_recognition_sface_2021dec.onnx \
         models/realesrgan/REALESRGAN_X4PLUS_UP4X.bin models/centernet/centernet.bin; do
  [ -e "$w" ] || echo "MISSING weights $w (carry every part of .gpu; see README, GPU check)"
done
if ! "$bin" --version; then
  echo "the binary does not start here; trying the C++ runtime carried from the build machine"
  export LD_LIBRARY_PATH="$PWD/$(dirname "$(ls .gpu/*/lib/libstdc++.so.6 | head -1)"):${LD_LIBRARY_PATH:-}"
  "$bin" --version || ldd "$bin"
fi

step "1. diagnosis"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1 || echo "nvidia-smi failed"
ls -l /dev/nvidia* 2>&1 | head
if ! ldconfig -p | grep -q 'libvulkan.so.1'; then
  echo "no Vulkan loader in this image: unpacking the carried packages (.gpu/*/gl/*.deb)"
  for f in .gpu/*/gl/*.deb; do [ -f "$f" ] && dpkg -x "$f" /; done
  ldconfig
fi
"$bin" devices --json > "$work/devices-before.json"
"$bin" devices
# A driver mounted under /usr/local/nvidia (GKE-style) keeps its ICD and EGL vendor files where the
# loaders do not look. When wgpu sees no NVIDIA adapter, try what the probe advises, then the EGL-only
# ICD manifest Dockerfile.gpu ships (no glvnd libEGL, no X11 on that path); keep the first that works.
nvidia_seen() { "$bin" devices --json 2>/dev/null | grep -q '"name": "NVIDIA'; }
if ! nvidia_seen; then
  printf '{"file_format_version":"1.0.0","ICD":{"library_path":"libEGL_nvidia.so.0","api_version":"1.3"}}\n' \
    > "$work/nvidia_egl_icd.json"
  icd=""
  for j in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /usr/local/nvidia/etc/vulkan/icd.d/nvidia_icd.json; do
    [ -f "$j" ] && icd=$j && break
  done
  egl=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
  [ -f "$egl" ] || egl=""
  found=no
  for try in "$icd|$egl" "$work/nvidia_egl_icd.json|$egl" "$work/nvidia_egl_icd.json|"; do
    export VK_DRIVER_FILES=${try%%|*} __EGL_VENDOR_LIBRARY_FILENAMES=${try#*|}
    [ -n "$VK_DRIVER_FILES" ] || continue
    echo "retrying with VK_DRIVER_FILES=$VK_DRIVER_FILES __EGL_VENDOR_LIBRARY_FILENAMES=$__EGL_VENDOR_LIBRARY_FILENAMES"
    if nvidia_seen; then found=yes; break; fi
  done
  if [ $found = yes ]; then
    echo "wgpu sees the NVIDIA GPU with these settings"
    [ -n "$__EGL_VENDOR_LIBRARY_FILENAMES" ] || unset __EGL_VENDOR_LIBRARY_FILENAMES
  else
    echo "no setting made wgpu see an NVIDIA GPU; the probe's reason stands"
    unset VK_DRIVER_FILES __EGL_VENDOR_LIBRARY_FILENAMES
  fi
  "$bin" devices
fi
"$bin" devices --json > "$work/devices.json"
env | grep -E '^(VK_|__EGL|NVIDIA_)' > "$work/env.txt" || true

step "2. verify every network against the reference fixtures"
for dev in wgpu:0 cuda:0; do
  time_for 90 "verify $dev" || continue
  timeout 150 "$bin" verify --device "$dev" --batch 64 --json "$work/verify-${dev%%:*}.json" \
    || echo "verify on $dev FAILED (exit $?)"
done

step "3. the server on config/gpu.toml, per backend"
store=$(mktemp -d /tmp/gpu-store.XXXX)
python3 - "$work/gpu.toml" "$store" <<'PY'
import re, sys
text = open("config/gpu.toml").read()
text = re.sub(r'(?m)^tokens_file = .*$', 'tokens = ["test"]', text)      # the bench's token
text = re.sub(r'(?m)^dir = .*$', f'dir = "{sys.argv[2]}"', text)         # a throwaway person store
open(sys.argv[1], "w").write(text)
PY
port=18080
for b in cuda wgpu; do
  echo "--- $b"
  time_for $(( 2 * DURATION + 60 )) "server on $b" || continue
  RUST_LOG=warn "$bin" -c "$work/gpu.toml" --gpu 0 --gpu-backend "$b" --host 127.0.0.1 --port $port \
    > "$work/server-$b.log" 2>&1 &
  server=$!
  ready=no
  for _ in $(seq 1 $(( READY_TIMEOUT * 2 ))); do
    if curl -fs "http://127.0.0.1:$port/health/ready" >/dev/null 2>&1; then ready=yes; break; fi
    kill -0 $server 2>/dev/null || break
    # A device that cannot be opened does not come back by waiting (the reason is printed below).
    curl -s "http://127.0.0.1:$port/health/ready" 2>/dev/null | grep -q "cannot be opened" && break
    sleep 0.5
  done
  echo "ready: $ready"
  if [ $ready = yes ]; then
    "$bin" bench compare --addr 127.0.0.1:$port --device "$b:0" --concurrency "${CONCURRENCY:-256}" \
      --duration "$DURATION" --json "$work/compare-$b.json" || echo "bench compare on $b FAILED"
    "$bin" bench faces --addr 127.0.0.1:$port --concurrency "${FACE_CONCURRENCY:-32}" \
      --duration "$DURATION" --json "$work/faces-$b.json" || echo "bench faces on $b FAILED"
    curl -fs "http://127.0.0.1:$port/admin/placement" > "$work/placement-$b.json" || true
  else
    curl -s "http://127.0.0.1:$port/health/ready"; echo
  fi
  kill -TERM $server 2>/dev/null; wait $server 2>/dev/null
  tail -n 20 "$work/server-$b.log"
  port=$((port + 1))
done

step "4. model-only sweep beside PyTorch eager"
torch=""
python3 -c 'import torch, torchvision; assert torch.cuda.is_available()' 2>/dev/null && torch=python3
for batch in $BATCHES; do
  for dev in cuda:0 wgpu:0; do
    time_for 30 "bench model $dev batch $batch" || continue
    args=(bench model --device "$dev" --batch "$batch" --duration "$(( DURATION / 3 + 1 ))" --json "$work/model-${dev%%:*}-$batch.json")
    # PyTorch once per batch size (it runs on CUDA either way).
    [ "$dev" = cuda:0 ] && [ -n "$torch" ] && args+=(--torch "$torch")
    timeout 90 "$bin" "${args[@]}" || echo "bench model $dev batch $batch FAILED"
  done
done

step "5. the host CPU: the CPU engine at this CPU's SIMD level"
grep -m1 "model name" /proc/cpuinfo
grep -m1 -o -w -E "avx512f|avx2" /proc/cpuinfo | sort -u | tr '\n' ' '; echo
if time_for 20 "verify cpu"; then
  timeout 60 "$bin" verify --device cpu --json "$work/cpu-verify.json" || echo "verify on cpu FAILED (exit $?)"
fi
ctorch=""
python3 -c 'import torch, torchvision' 2>/dev/null && ctorch=python3
for threads in 1 2 "$(nproc)"; do
  time_for 30 "bench model cpu, $threads threads" || continue
  args=(bench model --device cpu --batch 4 --threads "$threads" --duration 4 --json "$work/cpu-model-$threads.json")
  [ -n "$ctorch" ] && args+=(--torch "$ctorch")
  timeout 90 "$bin" "${args[@]}" || echo "bench model cpu $threads threads FAILED"
done
for m in mobilenet_v2 pnet; do
  time_for 20 "bench layers $m" || continue
  timeout 60 "$bin" bench layers --model "$m" --batch "$([ $m = pnet ] && echo 8 || echo 4)" --threads 2 \
    --json "$work/cpu-layers-$m.json" || echo "bench layers $m FAILED"
done

step "6. report"
python3 tools/bench/gpu_report.py "$work" "$OUT" --seconds $(( $(date +%s) - t0 ))
echo "done in $(( $(date +%s) - t0 )) s"
