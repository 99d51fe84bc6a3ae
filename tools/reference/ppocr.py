"""Reference outputs of the PP-OCRv6 text detector and recogniser (tests/fixtures/ppocr/), with the
original ONNX models (rapidocr==3.10.0, fetched by scripts/fetch-weights.sh) in onnxruntime.

Input: tests/data/plate_ad799kb.png as RapidOCR 3.10 feeds its detector — BGR, each side a
multiple of 32 (here resized to 256×96, bilinear, Pillow), (x/255 − 0.5)/0.5, N×3×H×W. The network
test feeds the same input, so resizing differences between libraries do not enter.

Writes `det.input.f32` (1×3×96×256) and `det.prob.f32` (1×1×96×256, the probability map).

Recogniser, on two real crops as RapidOCR 3.10 prepares them (BGR, height 48, width
ceil(48·w/h) bilinear (Pillow), (x/255 − 0.5)/0.5, right-padded with 0.0 to
W = int(48·max(320/48, w/h))): the whole plate photo (W 320), and the why-rust.png line
"thread-safety — enabling you to eliminate" (box (823, 457)–(1523, 505) of RapidOCR's detection, W 700).
Per crop `rec.<name>.input.f32` (1×3×48×W), `rec.<name>.top.f32` (T×5×2: the five most probable
classes of each time step and their probabilities) and `rec.<name>.rest.f32` (T: the probability
mass of all other classes) — the full T×18710 output is 3 MB per crop.

Orientation classifier (ch_ppocr_mobile_v2.0_cls_mobile), on the same why-rust.png line upright
and turned 180° as RapidOCR 3.10 prepares them (BGR, 48 high, min(ceil(48·w/h), 192) wide bilinear
(Pillow), normalised, right-padded with 0.0 to 192): `cls.input.f32` (2×3×48×192) and
`cls.prob.f32` (2×2: p(0°), p(180°)).

Run with `make reference-ppocr`.
"""
import argparse
import pathlib

import numpy as np
import onnxruntime as ort
from PIL import Image


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", required=True, help="models/ppocr")
    ap.add_argument("--out", required=True)
    ap.add_argument("image")
    ap.add_argument("--line-image", required=True, help="tests/data/why-rust.png")
    a = ap.parse_args()
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rgb = np.asarray(Image.open(a.image).convert("RGB").resize((256, 96), Image.BILINEAR), dtype=np.float32)
    bgr = rgb[:, :, ::-1]
    x = ((bgr / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[None].astype(np.float32)
    sess = ort.InferenceSession(str(pathlib.Path(a.models) / "PP-OCRv6_det_small.onnx"), providers=["CPUExecutionProvider"])
    (prob,) = sess.run(None, {"x": x})
    x.tofile(out / "det.input.f32")
    prob.astype(np.float32).tofile(out / "det.prob.f32")
    print(f"det: input {x.shape}, prob {prob.shape}, mean {prob.mean():.5f}, max {prob.max():.5f}")

    rec = ort.InferenceSession(str(pathlib.Path(a.models) / "PP-OCRv6_rec_small.onnx"), providers=["CPUExecutionProvider"])
    crops = {
        "plate": Image.open(a.image).convert("RGB"),
        "line": Image.open(a.line_image).convert("RGB").crop((823, 457, 1523, 505)),
    }
    for name, crop in crops.items():
        w, h = crop.size
        width = int(48 * max(320 / 48, w / h))
        resized = min(width, int(np.ceil(48 * w / h)))
        rgb = np.asarray(crop.resize((resized, 48), Image.BILINEAR), dtype=np.float32)
        x = np.zeros((1, 3, 48, width), np.float32)
        x[0, :, :, :resized] = ((rgb[:, :, ::-1] / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)
        (probs,) = rec.run(None, {"x": x})
        probs = probs[0]
        top = np.argsort(-probs, axis=1)[:, :5]
        top_p = np.take_along_axis(probs, top, axis=1)
        rest = probs.sum(axis=1) - top_p.sum(axis=1)
        x.tofile(out / f"rec.{name}.input.f32")
        np.stack([top.astype(np.float32), top_p], axis=2).astype(np.float32).tofile(out / f"rec.{name}.top.f32")
        rest.astype(np.float32).tofile(out / f"rec.{name}.rest.f32")
        print(f"rec {name}: input {x.shape}, steps {probs.shape[0]}, classes {probs.shape[1]}")

    cls = ort.InferenceSession(str(pathlib.Path(a.models) / "ch_ppocr_mobile_v2.0_cls_mobile.onnx"), providers=["CPUExecutionProvider"])
    line = crops["line"]
    batch = np.zeros((2, 3, 48, 192), np.float32)
    for i, crop in enumerate([line, line.rotate(180)]):
        w, h = crop.size
        resized = min(192, int(np.ceil(48 * w / h)))
        rgb = np.asarray(crop.resize((resized, 48), Image.BILINEAR), dtype=np.float32)
        batch[i, :, :, :resized] = ((rgb[:, :, ::-1] / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)
    (probs,) = cls.run(None, {"x": batch})
    batch.tofile(out / "cls.input.f32")
    probs.astype(np.float32).tofile(out / "cls.prob.f32")
    print(f"cls: upright {probs[0]}, turned {probs[1]}")


if __name__ == "__main__":
    main()
