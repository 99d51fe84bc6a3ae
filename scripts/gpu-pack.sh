#!/usr/bin/env bash
# Packs what scripts/gpu-check.sh needs on a GPU machine without network into .gpu/ (git-ignored),
# in parts that each fit one device call (the device tool carries at most 64 MiB per call, the
# tracked tree included):
#   .gpu/1  SFace's weights (37 MB), the text detector and orientation classifier and the plate
#           detector that `verify` checks (12 MB)
#   .gpu/2  the release binary (cuda + wgpu, stripped, xz), MobileNetV2's and MTCNN's weights, the
#           Vulkan/EGL loader packages (Debian bookworm debs, unpacked there only if the image has no
#           loader) and this machine's libstdc++/libgcc_s (used only if the binary cannot start there)
#   .gpu/3  both Real-ESRGAN networks (34 MB) and the COCO detector (CenterNet, 4 MB)
# Carry parts 1 and 3 in one call each, then part 2 in the last while the machine is still warm
# (README, GPU check); files carried earlier stay on a warm machine.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/gpubackend-target}
bin=$target/release/gpubackend
[ -x "$bin" ] || { echo "no $bin: run \`make release\` (the cuda build) first" >&2; exit 1; }
report=$("$bin" devices --json 2>/dev/null || true) # exits non-zero on a machine without a GPU
grep -q '"cuda_built": true' <<<"$report" || { echo "$bin was built without the cuda feature" >&2; exit 1; }

rm -rf .gpu
mkdir -p .gpu/1/models/sface .gpu/1/models/ppocr .gpu/1/models/plates .gpu/2/bin .gpu/2/models/mobilenet_v2 .gpu/2/models/mtcnn .gpu/2/gl .gpu/2/lib \
  .gpu/3/models/realesrgan .gpu/3/models/centernet .gpu/3/models/nsfw
cp models/sface/face_recognition_sface_2021dec.onnx .gpu/1/models/sface/
cp models/ppocr/PP-OCRv6_det_small.onnx models/ppocr/ch_ppocr_mobile_v2.0_cls_mobile.onnx .gpu/1/models/ppocr/
cp models/plates/clp_det.onnx .gpu/1/models/plates/
cp models/mobilenet_v2/mobilenet_v2-b0353104.pth .gpu/2/models/mobilenet_v2/
cp models/mtcnn/pnet.pt models/mtcnn/rnet.pt models/mtcnn/onet.pt .gpu/2/models/mtcnn/
cp models/realesrgan/* .gpu/3/models/realesrgan/
cp models/centernet/* .gpu/3/models/centernet/
cp models/nsfw/* .gpu/3/models/nsfw/
strip -o .gpu/2/bin/gpubackend "$bin"
xz -T0 -6 .gpu/2/bin/gpubackend
for lib in libstdc++.so.6 libgcc_s.so.1; do
  cp -L "$(gcc -print-file-name="$lib")" .gpu/2/lib/ 2>/dev/null || true
done
# The loader packages of the device tool's notes, plus X11 client libraries the GLX ICD links to.
o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/gpubackend-apt-lists)
mkdir -p /tmp/gpubackend-apt-lists/partial
apt-get "${o[@]}" update -qq
(cd .gpu/2/gl && apt-get "${o[@]}" download -qq libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2 \
  libx11-6 libxext6 libxcb1 libxau6 libxdmcp6 libbsd0 libmd0 libx11-data)

tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
limit=$((64 * 1024 * 1024))
echo "tracked tree: $((tree / 1024 / 1024)) MiB (travels with every call)"
for part in .gpu/1 .gpu/2 .gpu/3; do
  size=$(du -sb "$part" | cut -f1)
  echo "$part: $((size / 1024 / 1024)) MiB → with the tree $(((size + tree) / 1024 / 1024)) MiB of 64"
  [ $((size + tree)) -le $limit ] || { echo "$part is over the 64 MiB carry limit" >&2; exit 1; }
done
cat <<'EOF'
On the GPU machine (device tool), three calls back to back:
  run(carry=[".gpu/1"], command="nvidia-smi -L", timeout_s=120)
  run(carry=[".gpu/3"], command="nvidia-smi -L", timeout_s=120)
  run(carry=[".gpu/2"], command="bash scripts/gpu-check.sh", timeout_s=540)
EOF
