"""Reference outputs of the PP-OCRv6 text detector (tests/fixtures/ppocr/), with the original ONNX
model (rapidocr==3.10.0, fetched by scripts/fetch-weights.sh) in onnxruntime.

Input: tests/data/plate_ad799kb.png as RapidOCR 3.10 feeds its detector — BGR, each side a
multiple of 32 (here resized to 256×96, bilinear, Pillow), (x/255 − 0.5)/0.5, N×3×H×W. The network
test feeds the same input, so resizing differences between libraries do not enter.

Writes `det.input.f32` (1×3×96×256) and `det.prob.f32` (1×1×96×256, the probability map).
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


if __name__ == "__main__":
    main()
