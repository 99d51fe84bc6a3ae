"""Reference run of the whole MTCNN detector (tests/fixtures/mtcnn/detections.json).

facenet-pytorch 2.6.0's `detect_face` (facenet_pytorch/models/utils/detect_face.py), step by step,
in numpy, with the three networks run by onnxruntime (graphs built by mtcnn.py from the same
weights) instead of torch:

  1. pyramid: scales m·factor^k (m = 12 / min_face_size) while min(h, w)·scale ≥ 12; each level is
     the image resized to (int(h·s + 1), int(w·s + 1)) by area interpolation (torch's
     `interpolate(mode="area")` = adaptive average pooling), normalised (x − 127.5) × 0.0078125;
  2. P-Net on each level; windows with face probability ≥ t1 become boxes (stride 2, cell 12);
     NMS 0.5 per level, then NMS 0.7 over all levels (torchvision IoU, no +1);
     box regression, squared (`rerec`);
  3. R-Net on 24×24 area-resized crops (1-based inclusive `pad` clipping as in facenet-pytorch);
     keep p ≥ t2; NMS 0.7; regression (`bbreg`, +1 widths); squared;
  4. O-Net on 48×48 crops; keep p ≥ t3; landmarks from the box before regression; regression;
     NMS 0.7 with the "Min" overlap (+1 areas).

Defaults are facenet-pytorch's: min_face_size 20, thresholds (0.6, 0.7, 0.7), factor 0.709.
Writes `detections.json`: per image, each face's box [x1, y1, x2, y2] (pixels, float), its O-Net
probability and five landmarks [[x, y] × 5]. Run with `make reference-mtcnn`.
"""
import argparse
import json
import math
import pathlib

import numpy as np
import onnxruntime as ort
from PIL import Image

from mtcnn import build_onnx
from torch_legacy import load_state_dict

MIN_FACE = 20
THRESHOLDS = (0.6, 0.7, 0.7)
FACTOR = 0.709


def area_matrix(n_in, n_out):
    """Rows of adaptive average pooling from n_in to n_out (torch's start/end index rule)."""
    m = np.zeros((n_out, n_in), dtype=np.float64)
    for i in range(n_out):
        start = (i * n_in) // n_out
        end = -((-(i + 1) * n_in) // n_out)
        m[i, start:end] = 1.0 / (end - start)
    return m


def area_resize(img, out_h, out_w):
    """img: (3, H, W) float64 → (3, out_h, out_w)."""
    rows = area_matrix(img.shape[1], out_h)
    cols = area_matrix(img.shape[2], out_w)
    return np.stack([rows @ channel @ cols.T for channel in img])


def normalise(x):
    return ((x - 127.5) * 0.0078125).astype(np.float32)


def iou_nms(boxes, scores, threshold, method="Union", plus_one=False):
    """Greedy NMS by descending score; returns kept indices."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    add = 1.0 if plus_one else 0.0
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = (x2 - x1 + add) * (y2 - y1 + add)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + add)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + add)
        inter = w * h
        if method == "Min":
            overlap = inter / np.minimum(area[i], area[rest])
        else:
            overlap = inter / (area[i] + area[rest] - inter)
        order = rest[overlap <= threshold]
    return np.array(keep, dtype=np.int64)


def rerec(b):
    b = b.copy()
    h = b[:, 3] - b[:, 1]
    w = b[:, 2] - b[:, 0]
    side = np.maximum(w, h)
    b[:, 0] = b[:, 0] + w * 0.5 - side * 0.5
    b[:, 1] = b[:, 1] + h * 0.5 - side * 0.5
    b[:, 2] = b[:, 0] + side
    b[:, 3] = b[:, 1] + side
    return b


def bbreg(b, reg):
    b = b.copy()
    w = b[:, 2] - b[:, 0] + 1
    h = b[:, 3] - b[:, 1] + 1
    b[:, 0] += reg[:, 0] * w
    b[:, 1] += reg[:, 1] * h
    b[:, 2] += reg[:, 2] * w
    b[:, 3] += reg[:, 3] * h
    return b


def crops(img, boxes, size):
    """facenet-pytorch's `pad` + slice [y−1, ey) × [x−1, ex) + area resize, for each box."""
    _, h, w = img.shape
    out, kept = [], []
    for k, b in enumerate(np.trunc(boxes[:, :4]).astype(np.int64)):
        x, y = max(b[0], 1), max(b[1], 1)
        ex, ey = min(b[2], w), min(b[3], h)
        if ey > y - 1 and ex > x - 1:
            out.append(normalise(area_resize(img[:, y - 1:ey, x - 1:ex], size, size)))
            kept.append(k)
    return np.stack(out) if out else np.zeros((0, 3, size, size), np.float32), np.array(kept, dtype=np.int64)


def detect(rgb, sessions):
    pnet, rnet, onet = sessions
    img = rgb.transpose(2, 0, 1).astype(np.float64)
    _, h, w = img.shape
    m = 12.0 / MIN_FACE
    minl = min(h, w) * m
    scales, s = [], m
    while minl >= 12:
        scales.append(s)
        s *= FACTOR
        minl *= FACTOR
    # Stage 1
    all_boxes = []
    for scale in scales:
        level = normalise(area_resize(img, int(h * scale + 1), int(w * scale + 1)))[None]
        reg, prob = pnet.run(["reg", "prob"], {"input": level})
        p = prob[0, 1]
        ys, xs = np.nonzero(p >= THRESHOLDS[0])
        if len(ys) == 0:
            continue
        q1x = np.floor((2 * xs + 1) / scale)
        q1y = np.floor((2 * ys + 1) / scale)
        q2x = np.floor((2 * xs + 12) / scale)
        q2y = np.floor((2 * ys + 12) / scale)
        r = reg[0][:, ys, xs].T
        boxes = np.column_stack([q1x, q1y, q2x, q2y, p[ys, xs], r])
        all_boxes.append(boxes[iou_nms(boxes[:, :4], boxes[:, 4], 0.5)])
    if not all_boxes:
        return []
    boxes = np.concatenate(all_boxes)
    boxes = boxes[iou_nms(boxes[:, :4], boxes[:, 4], 0.7)]
    rw = boxes[:, 2] - boxes[:, 0]
    rh = boxes[:, 3] - boxes[:, 1]
    boxes = np.column_stack([boxes[:, 0] + boxes[:, 5] * rw, boxes[:, 1] + boxes[:, 6] * rh,
                             boxes[:, 2] + boxes[:, 7] * rw, boxes[:, 3] + boxes[:, 8] * rh, boxes[:, 4]])
    boxes = rerec(boxes)
    # Stage 2
    x, kept = crops(img, boxes, 24)
    if len(kept) == 0:
        return []
    boxes = boxes[kept]
    reg, prob = rnet.run(["reg", "prob"], {"input": x})
    ok = prob[:, 1] > THRESHOLDS[1]
    boxes = np.column_stack([boxes[ok, :4], prob[ok, 1]])
    reg = reg[ok]
    keep = iou_nms(boxes[:, :4], boxes[:, 4], 0.7)
    boxes = rerec(bbreg(boxes[keep], reg[keep]))
    if len(boxes) == 0:
        return []
    # Stage 3
    x, kept = crops(img, boxes, 48)
    boxes = boxes[kept]
    reg, landmarks, prob = onet.run(["reg", "landmarks", "prob"], {"input": x})
    ok = prob[:, 1] > THRESHOLDS[2]
    boxes = np.column_stack([boxes[ok, :4], prob[ok, 1]])
    reg, landmarks = reg[ok], landmarks[ok]
    bw = boxes[:, 2] - boxes[:, 0] + 1
    bh = boxes[:, 3] - boxes[:, 1] + 1
    px = bw[:, None] * landmarks[:, :5] + boxes[:, 0:1] - 1
    py = bh[:, None] * landmarks[:, 5:] + boxes[:, 1:2] - 1
    boxes = bbreg(boxes, reg)
    keep = iou_nms(boxes[:, :4], boxes[:, 4], 0.7, method="Min", plus_one=True)
    return [{"box": [float(v) for v in boxes[k, :4]], "prob": float(boxes[k, 4]),
             "landmarks": [[float(px[k, i]), float(py[k, i])] for i in range(5)]} for k in keep]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", required=True, help="folder with pnet.pt, rnet.pt, onet.pt")
    ap.add_argument("--out", required=True)
    ap.add_argument("images", nargs="+")
    args = ap.parse_args()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sessions = [ort.InferenceSession(build_onnx(n, load_state_dict(f"{args.weights}/{n}.pt")).SerializeToString(), opts,
                                     providers=["CPUExecutionProvider"]) for n in ("pnet", "rnet", "onet")]
    result = {"algorithm": "facenet-pytorch 2.6.0 detect_face", "onnxruntime": ort.__version__,
              "min_face_size": MIN_FACE, "thresholds": list(THRESHOLDS), "factor": FACTOR, "images": {}}
    for path in args.images:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        faces = detect(rgb, sessions)
        result["images"][pathlib.Path(path).name] = faces
        print(pathlib.Path(path).name, [([round(v) for v in f["box"]], round(f["prob"], 4)) for f in faces])
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "detections.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
