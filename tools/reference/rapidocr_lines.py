"""The reference pipeline's lines (tests/fixtures/ppocr/rapidocr.json): RapidOCR 3.10 with its
defaults (PP-OCRv6 small det + rec, the PP-OCR mobile orientation classifier; onnxruntime on the
CPU) on the text test images. Offline: the wheel bundles the models and the rec dictionary is read
from the model's metadata; the network is blocked here so that any download attempt fails loudly.

Per image: the lines in RapidOCR's order, each {text, score, box (4 corners, original pixels)}.
tests/text.rs reads our server's lines for the same images and reports line agreement and the
character error rate against these. Run with `make reference-rapidocr`.
"""
import argparse
import json
import pathlib

import requests


def _no_network(*args, **kwargs):
    raise RuntimeError(f"network access attempted: {args}")


requests.get = _no_network
requests.Session.request = _no_network

from rapidocr import RapidOCR  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("images", nargs="+")
    a = ap.parse_args()
    engine = RapidOCR()
    result = {}
    for path in a.images:
        r = engine(path)
        lines = []
        if r.txts:
            for box, text, score in zip(r.boxes.tolist(), r.txts, r.scores):
                lines.append({"text": text, "score": round(float(score), 5), "box": [[round(v, 1) for v in p] for p in box]})
        result[pathlib.Path(path).name] = lines
        print(f"{path}: {len(lines)} lines")
    pathlib.Path(a.out).write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
