"""Renders known text lines into tests/data/rendered_lines.png, the ground truth of
tests/data/rendered_lines.txt (one line per line): black on white, Pillow's bundled FreeType font
(`ImageFont.load_default(size)`, Aileron Regular, SIL OFL), 32 px, left-aligned, 56 px apart.
Deterministic for a given Pillow version (requirements.txt pins it).

Run with `make reference-ppocr`.
"""
import argparse

from PIL import Image, ImageDraw, ImageFont

LINES = [
    "Invoice 2026-0417: 3 items, total 149.90 EUR",
    "The quick brown fox jumps over the lazy dog.",
    "Batch size 16, p99 latency 41 ms, GPU busy 93%",
    "Contact: ops@example.com or +44 20 7946 0958",
    "Model PP-OCRv6 small, weights sha256 6f327246",
    "Deliver to 221B Baker Street, London NW1 6XE",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--png", required=True)
    ap.add_argument("--txt", required=True)
    a = ap.parse_args()
    font = ImageFont.load_default(size=32)
    img = Image.new("RGB", (900, 40 + 56 * len(LINES)), "white")
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(LINES):
        draw.text((30, 24 + 56 * i), line, fill="black", font=font)
    img.save(a.png, optimize=True)
    with open(a.txt, "w", encoding="utf-8") as f:
        f.write("\n".join(LINES) + "\n")


if __name__ == "__main__":
    main()
