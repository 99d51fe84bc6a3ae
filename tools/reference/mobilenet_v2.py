"""Reference outputs for the MobileNetV2 classifier (tests/fixtures/mobilenet_v2/).

Independent of the Rust code: reads the torchvision weights with `torch_legacy`, builds the
MobileNetV2 graph as an ONNX model from those weights and runs it with onnxruntime (CPU) on real
images preprocessed by the numpy code below, which defines the preprocessing the server must match:

  1. RGB u8 → f32, resize so the shorter side is 256 with an antialiased triangle (bilinear) filter
     (PIL's convolution resampling: support scaled by the downscale factor, weights normalised),
  2. centre crop 224×224 (offset = (size − 224) // 2),
  3. (x / 255 − mean) / std with the ImageNet mean and std, NCHW.

Writes, per image, `<name>.input.f32` (1×3×224×224) and `<name>.logits.f32` (1000), raw little-endian
f32, plus `manifest.json`. Run with `make reference` (needs numpy, onnx, onnxruntime, pillow).
"""
import argparse
import json
import pathlib

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from torch_legacy import load_state_dict

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
SHORT_SIDE = 256
CROP = 224
# (expand ratio t, output channels c, repeats n, first stride s) — torchvision's table.
SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def triangle_weights(in_size, out_size):
    """Rows of the (out_size × in_size) antialiased bilinear resampling matrix."""
    scale = in_size / out_size
    support = max(scale, 1.0)
    m = np.zeros((out_size, in_size), dtype=np.float64)
    for o in range(out_size):
        center = (o + 0.5) * scale
        lo = max(0, int(center - support + 0.5))
        hi = min(in_size, int(center + support + 0.5))
        idx = np.arange(lo, hi)
        w = np.maximum(0.0, 1.0 - np.abs((idx - center + 0.5) / support))
        m[o, lo:hi] = w / w.sum()
    return m


def resized_size(w, h):
    if w <= h:
        return SHORT_SIDE, int(h * SHORT_SIDE / w + 0.5)
    return int(w * SHORT_SIDE / h + 0.5), SHORT_SIDE


def preprocess(rgb):
    h, w, _ = rgb.shape
    nw, nh = resized_size(w, h)
    x = rgb.astype(np.float64)
    x = np.einsum("oh,hwc->owc", triangle_weights(h, nh), x)
    x = np.einsum("ow,hwc->hoc", triangle_weights(w, nw), x)
    top, left = (nh - CROP) // 2, (nw - CROP) // 2
    x = x[top : top + CROP, left : left + CROP].astype(np.float32)
    x = (x / 255.0 - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


class GraphBuilder:
    def __init__(self, sd):
        self.sd, self.nodes, self.inits, self.n = sd, [], [], 0

    def name(self, p):
        self.n += 1
        return f"{p}_{self.n}"

    def init(self, key):
        self.inits.append(numpy_helper.from_array(self.sd[key].astype(np.float32), key))
        return key

    def conv_bn(self, x, prefix_conv, prefix_bn, stride, relu6):
        w = self.sd[prefix_conv + ".weight"]
        k = w.shape[2]
        groups = w.shape[0] if w.shape[1] == 1 and w.shape[0] > 1 else 1
        y = self.name("conv")
        self.nodes.append(helper.make_node("Conv", [x, self.init(prefix_conv + ".weight")], [y],
                                           strides=[stride, stride], pads=[k // 2] * 4, group=groups))
        z = self.name("bn")
        self.nodes.append(helper.make_node("BatchNormalization",
                                           [y] + [self.init(f"{prefix_bn}.{p}") for p in ("weight", "bias", "running_mean", "running_var")],
                                           [z], epsilon=1e-5))
        if not relu6:
            return z
        r = self.name("relu6")
        self.nodes.append(helper.make_node("Clip", [z, "zero", "six"], [r]))
        return r


def build_onnx(sd):
    g = GraphBuilder(sd)
    g.inits += [numpy_helper.from_array(np.array(0.0, np.float32), "zero"), numpy_helper.from_array(np.array(6.0, np.float32), "six")]
    x = g.conv_bn("input", "features.0.0", "features.0.1", 2, True)
    idx, inp = 1, 32
    for t, c, n, s in SETTINGS:
        for i in range(n):
            stride = s if i == 0 else 1
            p = f"features.{idx}.conv"
            h = x
            if t != 1:
                h = g.conv_bn(h, f"{p}.0.0", f"{p}.0.1", 1, True)
                h = g.conv_bn(h, f"{p}.1.0", f"{p}.1.1", stride, True)
                h = g.conv_bn(h, f"{p}.2", f"{p}.3", 1, False)
            else:
                h = g.conv_bn(h, f"{p}.0.0", f"{p}.0.1", stride, True)
                h = g.conv_bn(h, f"{p}.1", f"{p}.2", 1, False)
            if stride == 1 and inp == c:
                a = g.name("add")
                g.nodes.append(helper.make_node("Add", [x, h], [a]))
                h = a
            x, inp, idx = h, c, idx + 1
    x = g.conv_bn(x, "features.18.0", "features.18.1", 1, True)
    g.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"]))
    g.nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"], axis=1))
    g.nodes.append(helper.make_node("Gemm", ["flat", g.init("classifier.1.weight"), g.init("classifier.1.bias")], ["logits"], transB=1))
    graph = helper.make_graph(g.nodes, "mobilenet_v2",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, CROP, CROP])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("images", nargs="+")
    args = ap.parse_args()
    model = build_onnx(load_state_dict(args.weights))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"model": "mobilenet_v2", "onnxruntime": ort.__version__, "images": []}
    for path in args.images:
        name = pathlib.Path(path).stem
        rgb = np.asarray(Image.open(path).convert("RGB"))
        x = preprocess(rgb)
        logits = sess.run(["logits"], {"input": x})[0][0]
        x.tofile(out / f"{name}.input.f32")
        logits.astype(np.float32).tofile(out / f"{name}.logits.f32")
        top = np.argsort(-logits)[:5]
        e = np.exp(logits - logits.max())
        prob = e / e.sum()
        manifest["images"].append({"name": name, "source": pathlib.Path(path).name,
                                   "top5": [[int(i), float(prob[i])] for i in top]})
        print(name, [(int(i), round(float(prob[i]), 4)) for i in top])
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
