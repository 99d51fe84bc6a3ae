#!/usr/bin/env python3
"""Assembles scripts/gpu-check.sh's results (the JSON files `gpubackend devices/verify/bench` wrote)
into one gpu-check.json and a markdown table gpu-check.md, with the issue's targets marked.
Standard library only (runs on the GPU machine's python3)."""
import argparse
import glob
import json
import os


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def mark(ok):
    return "—" if ok is None else ("✅" if ok else "❌")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("work")
    ap.add_argument("out")
    ap.add_argument("--seconds", type=int, default=0)
    a = ap.parse_args()
    w = lambda name: load(os.path.join(a.work, name))
    r = {
        "seconds": a.seconds,
        "devices": w("devices.json"),
        "devices_before_env_fix": w("devices-before.json"),
        "verify": {b: w(f"verify-{b}.json") for b in ("wgpu", "cuda")},
        "compare": {b: w(f"compare-{b}.json") for b in ("wgpu", "cuda")},
        "faces": {b: w(f"faces-{b}.json") for b in ("wgpu", "cuda")},
        "placement": {b: w(f"placement-{b}.json") for b in ("wgpu", "cuda")},
        "model": {},
        "cpu": {
            "verify": w("cpu-verify.json"),
            "model": [m for m in (load(p) for p in sorted(glob.glob(os.path.join(a.work, "cpu-model-*.json")))) if m],
            "layers": {m: w(f"cpu-layers-{m}.json") for m in ("mobilenet_v2", "pnet")},
        },
    }
    try:
        r["env"] = open(os.path.join(a.work, "env.txt")).read().split("\n")
    except OSError:
        r["env"] = []
    for p in sorted(glob.glob(os.path.join(a.work, "model-*.json"))):
        m = load(p)
        if m:
            r["model"].setdefault(m["device"].split(":")[0], []).append(m)

    md = ["# gpubackend GPU check", ""]
    d = r["devices"] or {}
    cuda = d.get("cuda") or {}
    gpus = ", ".join(f"{x['name']} (sm_{x['compute_capability'][0]}{x['compute_capability'][1]})" for x in cuda.get("devices", []))
    md.append(f"Machine: {gpus or 'no CUDA device'}; driver {cuda.get('kernel_driver') or '?'}; "
              f"wgpu adapters: {', '.join(x['name'] + ' (' + x['backend'] + ')' for x in d.get('wgpu_adapters', [])) or 'none'}; "
              f"env: {' '.join(e for e in r['env'] if e) or '-'}; {a.seconds} s.")
    md += ["", "## Model vs reference (onnxruntime fixtures, tolerance 1e-4)", "",
           "| backend | adapter | result | worst max abs diff |", "|---|---|---|---|"]
    for b, v in r["verify"].items():
        if v:
            worst = max((c["max_abs_diff"] for c in v["checks"]), default=0)
            md.append(f"| {b} | {v['adapter']} | {mark(v['ok'])} | {worst:.2e} |")
        else:
            md.append(f"| {b} | — | did not run (see gpu-check.log) | |")
    md += ["", "## Objects (MobileNetV2), server on config/gpu.toml", "",
           "| backend | req/s | p50 / p99 ms | mean batch | worker busy (≥ 95 %) | e2e / model-only (≥ 0.9) | serving CPU ms/req |",
           "|---|---|---|---|---|---|---|"]
    for b, c in r["compare"].items():
        if c:
            e, ratio = c["e2e"], c["e2e_over_model"]
            md.append(f"| {b} | {e['requests_per_s']:.0f} | {e['p50_ms']:.1f} / {e['p99_ms']:.1f} | {e['mean_batch']:.1f} | "
                      f"{100 * e['worker_busy']:.1f} % {mark(e['worker_busy'] >= 0.95)} | {ratio:.2f} {mark(ratio >= 0.9)} | "
                      f"{e['serving_ms_per_req']:.2f} |")
        else:
            md.append(f"| {b} | did not run | | | | | |")
    md += ["", "## Faces (persons/recognize: MTCNN + SFace), same server", "",
           "| backend | photos/s | ms per photo (≤ 10) | faces/s | p50 / p99 ms | P-Net busy | R-Net busy | O-Net busy | SFace busy |",
           "|---|---|---|---|---|---|---|---|---|"]
    for b, f in r["faces"].items():
        if f and f["requests_per_s"] > 0:
            per = 1e3 / f["requests_per_s"]
            busy = " | ".join(f"{100 * s['worker_busy']:.0f} % (batch {s['mean_batch']:.1f})" for s in f["stages"])
            md.append(f"| {b} | {f['requests_per_s']:.1f} | {per:.1f} {mark(per <= 10)} | {f['faces_per_s']:.1f} | "
                      f"{f['p50_ms']:.0f} / {f['p99_ms']:.0f} | {busy} |")
        else:
            md.append(f"| {b} | did not run | | | | | | | |")
    md += ["", "## MobileNetV2 model-only vs PyTorch eager fp32 (same batch, with host↔device copies)", "",
           "| batch | ours cuda img/s | ours wgpu img/s | PyTorch img/s (no copies) | cuda / PyTorch (≥ 1.0) |", "|---|---|---|---|---|"]
    by_batch = {}
    for b, runs in r["model"].items():
        for m in runs:
            by_batch.setdefault(m["batch"], {})[b] = m
    for batch in sorted(by_batch):
        row = by_batch[batch]
        c, g = row.get("cuda"), row.get("wgpu")
        t = (c or {}).get("torch")
        ours = c["images_per_s"] if c else None
        theirs = t["images_per_s"] if t else None
        ratio = ours / theirs if ours and theirs else None
        md.append(f"| {batch} | {ours or 0:.0f} | {g['images_per_s'] if g else 0:.0f} | "
                  f"{theirs or 0:.0f} ({(t or {}).get('compute_only_images_per_s', 0):.0f}) | "
                  f"{'—' if ratio is None else f'{ratio:.2f}'} {mark(None if ratio is None else ratio >= 1.0)} |")
    c = r["cpu"]
    lay = c["layers"].get("mobilenet_v2") or c["layers"].get("pnet") or {}
    md += ["", "## The CPU engine on this machine's CPU (MobileNetV2 batch 4, PyTorch eager fp32 beside it)", "",
           f"CPU: {lay.get('cpu', '?')} [{' '.join(lay.get('simd', []))}], fused kernels at {lay.get('kernels', '?')}; "
           f"verify on cpu: {mark(c['verify']['ok']) if c['verify'] else 'did not run'}.", "",
           "| threads | ours img/s | PyTorch img/s | ours / PyTorch (≥ 1.0) |", "|---|---|---|---|"]
    for m in sorted(c["model"], key=lambda m: m["threads"]):
        t = m.get("torch") or {}
        ratio = m["images_per_s"] / t["images_per_s"] if t.get("images_per_s") else None
        md.append(f"| {m['threads']} | {m['images_per_s']:.1f} | {t.get('images_per_s', 0):.1f} | "
                  f"{'—' if ratio is None else f'{ratio:.2f}'} {mark(None if ratio is None else ratio >= 1.0)} |")
    for name, l in c["layers"].items():
        if l:
            md.append(f"\n`bench layers --model {name}` (2 threads): {l['served_ms_per_item']:.2f} ms per item as served")
    md.append("")
    with open(os.path.join(a.out, "gpu-check.json"), "w") as f:
        json.dump(r, f, indent=1)
    with open(os.path.join(a.out, "gpu-check.md"), "w") as f:
        f.write("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
