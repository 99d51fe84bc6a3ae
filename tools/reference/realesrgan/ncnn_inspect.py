"""Reads an ncnn .param/.bin pair the way ncnn's loader does and checks the .bin layout exactly.

    python ncnn_inspect.py models/realesrgan/REALESRGAN_X4PLUS_UP4X.param [--bin ...]

Pure Python + numpy (no ncnn needed). Prints the layer-type inventory (count and param keys per
type), the per-layer weight layout, and fails unless walking the .bin consumes it to the last byte.

.param text format (ncnn src/net.cpp, src/paramdict.cpp): line 1 magic 7767517; line 2
`layer_count blob_count`; then one line per layer `Type Name in_count out_count in... out... k=v...`.
Keys are ints; a value containing '.', 'e' or 'E' is a float, else an int. A key <= -23300 is an
array for key (-k - 23300): `-233NN=len,v0,v1,...`. The files here have CRLF line endings.

.bin (ncnn src/modelbin.cpp), read in layer order by each layer's load_model:
  * Convolution: weight_data = mb.load(weight_data_size, 0): a 4-byte tag, then
      0x01306B47 → fp16 (IEEE half) × weight_data_size, padded to a multiple of 4 bytes;
      0x000D4B38 → int8; 0x0002C056 → f32 "with extra scaling"; 0 → raw f32; other → 256-entry
      f32 codebook + u8 indices. Layout [num_output][num_input][kh][kw].
    then, if bias_term (5=1): bias = mb.load(num_output, 1): raw f32 × num_output, NO tag.
  * PReLU: slope = mb.load(num_slope, 1): raw f32 × num_slope, no tag.
  * Input, Split, Concat, Eltwise, BinaryOp, Interp, PixelShuffle: no weights.
"""
import argparse
import collections
import struct
import sys

import numpy as np

TAG_FP16 = 0x01306B47
TAG_INT8 = 0x000D4B38
TAG_F32_SCALED = 0x0002C056


def parse_value(s):
    if any(c in s for c in ".eE"):
        return float(s)
    return int(s)


def parse_param(path):
    with open(path, "r", newline=None) as f:  # universal newlines: CRLF ok
        toks = [ln.split() for ln in f if ln.strip()]
    assert toks[0] == ["7767517"], f"bad magic {toks[0]}"
    layer_count, blob_count = int(toks[1][0]), int(toks[1][1])
    layers = []
    for t in toks[2:]:
        typ, name, nin, nout = t[0], t[1], int(t[2]), int(t[3])
        ins = t[4:4 + nin]
        outs = t[4 + nin:4 + nin + nout]
        params = {}
        for kv in t[4 + nin + nout:]:
            k, v = kv.split("=", 1)
            k = int(k)
            if k <= -23300:
                vals = v.split(",")
                n = int(vals[0])
                assert len(vals) == n + 1, kv
                params[-k - 23300] = [parse_value(x) for x in vals[1:]]
            else:
                params[k] = parse_value(v)
        layers.append(dict(type=typ, name=name, inputs=ins, outputs=outs, params=params,
                           raw_keys=[kv.split("=", 1)[0] for kv in t[4 + nin + nout:]]))
    assert len(layers) == layer_count, (len(layers), layer_count)
    blobs = set()
    for l in layers:
        blobs.update(l["outputs"])
    assert len(blobs) == blob_count, (len(blobs), blob_count)
    return layers


def walk_bin(layers, path):
    data = open(path, "rb").read()
    off = 0
    weights = {}
    tags = collections.Counter()
    for l in layers:
        p = l["params"]
        if l["type"] == "Convolution":
            n = p[6]
            (tag,) = struct.unpack_from("<I", data, off)
            off += 4
            tags[hex(tag)] += 1
            if tag != TAG_FP16:
                raise SystemExit(f"{l['name']}: unexpected weight tag {tag:#010x} at {off - 4}")
            nbytes = (n * 2 + 3) // 4 * 4
            w = np.frombuffer(data, "<f2", n, off).astype(np.float32)
            off += nbytes
            num_output, k = p[0], p[1]
            cin = n // (num_output * k * k)
            assert cin * num_output * k * k == n, l["name"]
            entry = dict(weight_offset=off - nbytes, weight=w.reshape(num_output, cin, k, k))
            if p.get(5, 0):
                entry["bias_offset"] = off
                entry["bias"] = np.frombuffer(data, "<f4", num_output, off).copy()
                off += 4 * num_output
            weights[l["name"]] = entry
        elif l["type"] == "PReLU":
            n = p[0]
            weights[l["name"]] = dict(slope_offset=off, slope=np.frombuffer(data, "<f4", n, off).copy())
            off += 4 * n
        elif l["type"] in ("Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp", "PixelShuffle"):
            pass
        else:
            raise SystemExit(f"unhandled layer type {l['type']}")
    return weights, off, len(data), tags


def conv_macs_per_lr_pixel(layers):
    """MACs per low-resolution input pixel: each conv weighted by (its resolution / input's)²."""
    scale = {}
    total = 0.0
    for l in layers:
        s = 1.0
        if l["inputs"]:
            s = scale[l["inputs"][0]]
        if l["type"] == "Interp":
            s *= l["params"].get(1, 1.0)
        if l["type"] == "PixelShuffle":
            s *= l["params"][0]
        if l["type"] == "Convolution":
            total += l["params"][6] * s * s
        if l["type"] == "BinaryOp" and len(l["inputs"]) == 2:
            s = max(scale[b] for b in l["inputs"])
        for o in l["outputs"]:
            scale[o] = s
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("param")
    ap.add_argument("--bin")
    a = ap.parse_args()
    binp = a.bin or a.param[:-len(".param")] + ".bin"
    layers = parse_param(a.param)
    inv = collections.OrderedDict()
    for l in layers:
        e = inv.setdefault(l["type"], dict(count=0, keys=collections.Counter(), values=collections.Counter()))
        e["count"] += 1
        for k in l["raw_keys"]:
            e["keys"][k] += 1
        for k, v in l["params"].items():
            if l["type"] != "Convolution" or k not in (0, 6):
                e["values"][f"{k}={v}"] += 1
    print(f"{a.param}: {len(layers)} layers")
    for t, e in inv.items():
        print(f"  {t:13s} ×{e['count']:4d}  keys {dict(e['keys'])}")
        print(f"  {'':13s}        values {dict(e['values'])}")
    weights, end, size, tags = walk_bin(layers, binp)
    print(f"{binp}: consumed {end} of {size} bytes; conv weight tags {dict(tags)}")
    if end != size:
        raise SystemExit("size mismatch")
    nparams = sum(v["weight"].size + v.get("bias", np.zeros(0)).size for v in weights.values() if "weight" in v)
    nslopes = sum(v["slope"].size for v in weights.values() if "slope" in v)
    allw = np.concatenate([v["weight"].ravel() for v in weights.values() if "weight" in v])
    allb = np.concatenate([v["bias"].ravel() for v in weights.values() if "bias" in v])
    print(f"  conv params {nparams} (fp16 weights {allw.size}, f32 biases {allb.size}), prelu slopes {nslopes}")
    print(f"  |w| max {np.abs(allw).max():.4g}, finite {np.isfinite(allw).all()}; bias range "
          f"[{allb.min():.4g}, {allb.max():.4g}], finite {np.isfinite(allb).all()}")
    if nslopes:
        alls = np.concatenate([v["slope"] for v in weights.values() if "slope" in v])
        print(f"  slope range [{alls.min():.4g}, {alls.max():.4g}]")
    print(f"  conv MACs per input pixel: {conv_macs_per_lr_pixel(layers) / 1e6:.3f} M")


if __name__ == "__main__":
    sys.exit(main())
