"""Reference embeddings for SFace (tests/fixtures/sface/), with the original ONNX model in onnxruntime.

Faces: the most probable face of each photo in tests/fixtures/mtcnn/detections.json (the MTCNN
reference), aligned to the ArcFace 112×112 five-point template:

  1. similarity transform (rotation, uniform scale, translation; Umeyama's least squares, no
     reflection) from the five MTCNN landmarks (eyes, nose, mouth corners) to the template;
  2. the 112×112 output sampled through the inverse transform, bilinear, outside the image = 0,
     rounded to u8 (the aligned face is an 8-bit image, as OpenCV's alignCrop makes it).

Writes `sface.input.f32` (N×3×112×112, RGB 0–255 floats, planar), `sface.embedding.f32` (N×128)
and `manifest.json` (names, transforms, cosine similarities). Run with `make reference-sface`.
"""
import argparse
import json
import pathlib

import numpy as np
import onnxruntime as ort
from PIL import Image

ort.set_default_logger_severity(3)  # the MXNet export lists its weights as graph inputs: one warning each

# ArcFace / InsightFace 112×112 template (x, y): left eye, right eye, nose, left and right mouth corner.
TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                     [70.7299, 92.2041]], dtype=np.float64)
SIZE = 112


def similarity(src, dst):
    """2×3 matrix of the similarity transform taking src points to dst points (Umeyama, 1991)."""
    n = len(src)
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / n
    u, sig, vt = np.linalg.svd(cov)
    e = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        e[1, 1] = -1
    r = u @ e @ vt
    var_s = (s ** 2).sum() / n
    scale = (sig * np.diag(e)).sum() / var_s
    t = mu_d - scale * r @ mu_s
    return np.hstack([scale * r, t[:, None]])


def warp(rgb, m):
    """Output pixel (x, y) samples the image at m⁻¹·(x, y), bilinear, zero outside; rounded to u8."""
    a = np.vstack([m, [0, 0, 1]])
    inv = np.linalg.inv(a)
    ys, xs = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    sx = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    sy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    x0, y0 = np.floor(sx).astype(np.int64), np.floor(sy).astype(np.int64)
    fx, fy = sx - x0, sy - y0
    h, w, _ = rgb.shape
    img = rgb.astype(np.float64)

    def at(yy, xx):
        inside = (xx >= 0) & (xx < w) & (yy >= 0) & (yy < h)
        v = img[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)]
        return v * inside[..., None]

    out = (at(y0, x0) * ((1 - fx) * (1 - fy))[..., None] + at(y0, x0 + 1) * (fx * (1 - fy))[..., None]
           + at(y0 + 1, x0) * ((1 - fx) * fy)[..., None] + at(y0 + 1, x0 + 1) * (fx * fy)[..., None])
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="face_recognition_sface_2021dec.onnx")
    ap.add_argument("--detections", required=True, help="tests/fixtures/mtcnn/detections.json")
    ap.add_argument("--data", required=True, help="folder of the photos")
    ap.add_argument("--out", required=True)
    ap.add_argument("images", nargs="+", help="photo names in detections.json")
    args = ap.parse_args()
    detections = json.loads(pathlib.Path(args.detections).read_text())["images"]
    sess = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    inputs, embeddings, faces = [], [], []
    for name in args.images:
        face = max(detections[name], key=lambda f: f["prob"])
        m = similarity(np.array(face["landmarks"], dtype=np.float64), TEMPLATE)
        aligned = warp(np.asarray(Image.open(pathlib.Path(args.data) / name).convert("RGB")), m)
        x = aligned.transpose(2, 0, 1)[None].astype(np.float32)
        emb = sess.run(None, {"data": x})[0][0]
        inputs.append(x[0])
        embeddings.append(emb.astype(np.float32))
        faces.append({"name": name, "box": face["box"], "transform": m.tolist()})
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.stack(inputs).astype(np.float32).tofile(out / "sface.input.f32")
    np.stack(embeddings).tofile(out / "sface.embedding.f32")
    e = np.stack(embeddings)
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    cos = e @ e.T
    (out / "manifest.json").write_text(json.dumps({"model": "face_recognition_sface_2021dec.onnx",
                                                   "onnxruntime": ort.__version__, "faces": faces,
                                                   "cosine": np.round(cos, 6).tolist()}, indent=1) + "\n")
    print(np.round(cos, 3))


if __name__ == "__main__":
    main()
