#!/usr/bin/env bash
# Builds the gpu_backend RPM from a release binary: `scripts/build-rpm.sh BINARY OUTDIR`.
# `make rpm` builds the binary first (cargo build --release). Needs rpmbuild (Debian: rpm) and the
# weights (scripts/fetch-weights.sh). Prints the path of the .rpm.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:?usage: build-rpm.sh BINARY OUTDIR}
out=${2:?usage: build-rpm.sh BINARY OUTDIR}
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
top=$(mktemp -d)
trap 'rm -rf "$top"' EXIT
mkdir -p "$top/SOURCES" "$out"
cp "$bin" "$top/SOURCES/gpubackend"
cp config/gpu.toml "$top/SOURCES/gpubackend.conf"
cp packaging/gpubackend.service "$top/SOURCES/"
cp models/mobilenet_v2/mobilenet_v2-b0353104.pth models/mobilenet_v2/labels.json "$top/SOURCES/"
cp models/mtcnn/pnet.pt models/mtcnn/rnet.pt models/mtcnn/onet.pt models/sface/face_recognition_sface_2021dec.onnx "$top/SOURCES/"
cp models/ppocr/PP-OCRv6_det_small.onnx models/ppocr/PP-OCRv6_rec_small.onnx models/ppocr/ch_ppocr_mobile_v2.0_cls_mobile.onnx \
  models/plates/clp_det.onnx models/centernet/centernet.json models/centernet/centernet.bin "$top/SOURCES/"
cp models/centernet/labels.json "$top/SOURCES/centernet-labels.json"
cp models/realesrgan/*.param models/realesrgan/*.bin "$top/SOURCES/"
cp models/nsfw/model.json "$top/SOURCES/nsfw-model.json"
cp models/nsfw/group1-shard1of1 models/nsfw/labels.txt "$top/SOURCES/"
# --nodeps: BuildRequires name RPM-world packages; on a Debian build host they are not in rpm's db.
rpmbuild -bb --nodeps --quiet \
  --define "_topdir $top" --define "_rpmdir $out" --define "_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm" \
  --define "gb_version $version" packaging/gpu_backend.spec >&2
ls "$out"/gpu_backend-"$version"-1*.rpm
