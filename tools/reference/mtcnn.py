"""Reference outputs for the MTCNN networks (tests/fixtures/mtcnn/), from facenet-pytorch's weights.

Independent of the Rust code: reads facenet-pytorch 2.6.0's pnet/rnet/onet.pt with `torch_legacy`,
builds each network as an ONNX graph following facenet_pytorch/models/mtcnn.py (Conv, PReLU,
MaxPool with ceil_mode, the (N,C,H,W)→(N,W,H,C) permute before the dense layers, Softmax over the
two classes) and runs it with onnxruntime (CPU) on inputs cut from real photos:

  P-Net  obama.jpg and biden.jpg resized to 120×100 (W×H), batch of 2 (one pyramid level)
  R-Net  8 crops of obama.jpg and biden.jpg resized to 24×24 (faces, partial faces, background)
  O-Net  the same 8 crops resized to 48×48

Inputs are RGB, (x − 127.5) × 0.0078125, NCHW, as facenet-pytorch feeds them. Writes per network
`<net>.input.f32` and its outputs (`<net>.reg.f32`, `<net>.prob.f32`, O-Net also
`<net>.landmarks.f32`), raw little-endian f32, plus `manifest.json` with the shapes.
Run with `make reference-mtcnn`.
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

# (net, [(kind, name, args)]) — the layer order of facenet_pytorch/models/mtcnn.py.
ARCH = {
    "pnet": [("conv", "conv1"), ("prelu", "prelu1"), ("pool", (2, 2)), ("conv", "conv2"), ("prelu", "prelu2"),
             ("conv", "conv3"), ("prelu", "prelu3")],
    "rnet": [("conv", "conv1"), ("prelu", "prelu1"), ("pool", (3, 2)), ("conv", "conv2"), ("prelu", "prelu2"),
             ("pool", (3, 2)), ("conv", "conv3"), ("prelu", "prelu3"), ("flatten", None), ("dense", "dense4"),
             ("prelu", "prelu4")],
    "onet": [("conv", "conv1"), ("prelu", "prelu1"), ("pool", (3, 2)), ("conv", "conv2"), ("prelu", "prelu2"),
             ("pool", (3, 2)), ("conv", "conv3"), ("prelu", "prelu3"), ("pool", (2, 2)), ("conv", "conv4"),
             ("prelu", "prelu4"), ("flatten", None), ("dense", "dense5"), ("prelu", "prelu5")],
}
# Heads: (output name, layer, softmax?)
HEADS = {
    "pnet": [("reg", "conv4_2", False), ("prob", "conv4_1", True)],
    "rnet": [("reg", "dense5_2", False), ("prob", "dense5_1", True)],
    "onet": [("reg", "dense6_2", False), ("landmarks", "dense6_3", False), ("prob", "dense6_1", True)],
}
SIZES = {"pnet": None, "rnet": 24, "onet": 48}


def build_onnx(net, sd):
    nodes, inits = [], []
    counter = [0]

    def fresh(p):
        counter[0] += 1
        return f"{p}_{counter[0]}"

    def init(key, array=None):
        inits.append(numpy_helper.from_array((sd[key] if array is None else array).astype(np.float32), key))
        return key

    def layer(x, kind, arg, spatial):
        y = fresh(kind)
        if kind == "conv" or (kind == "head" and spatial):
            nodes.append(helper.make_node("Conv", [x, init(arg + ".weight"), init(arg + ".bias")], [y]))
        elif kind == "dense" or kind == "head":
            nodes.append(helper.make_node("Gemm", [x, init(arg + ".weight"), init(arg + ".bias")], [y], transB=1))
        elif kind == "prelu":
            slope = sd[arg + ".weight"]
            slope = slope.reshape(-1, 1, 1) if spatial else slope
            nodes.append(helper.make_node("PRelu", [x, init(arg + ".weight", slope)], [y]))
        elif kind == "pool":
            k, s = arg
            nodes.append(helper.make_node("MaxPool", [x], [y], kernel_shape=[k, k], strides=[s, s], ceil_mode=1))
        elif kind == "flatten":
            t = fresh("permute")
            nodes.append(helper.make_node("Transpose", [x], [t], perm=[0, 3, 2, 1]))
            nodes.append(helper.make_node("Flatten", [t], [y], axis=1))
        return y

    x, spatial = "input", True
    for kind, arg in ARCH[net]:
        x = layer(x, kind, arg, spatial)
        if kind == "flatten":
            spatial = False
    outputs = []
    for out, name, softmax in HEADS[net]:
        y = layer(x, "head", name, spatial)
        if softmax:
            nodes.append(helper.make_node("Softmax", [y], [out], axis=1))
        else:
            nodes.append(helper.make_node("Identity", [y], [out]))
        outputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", "C", "H", "W"] if spatial else ["N", "K"]))
    size = SIZES[net]
    shape = ["N", 3, "H", "W"] if size is None else ["N", 3, size, size]
    graph = helper.make_graph(nodes, net, [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)], outputs,
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return model


def normalise(rgb):
    x = (rgb.astype(np.float32) - 127.5) * 0.0078125
    return x.transpose(2, 0, 1)


# A square around the face in each test photo (pixels, x1 y1 x2 y2), looked up by eye; the
# reference's R-/O-Net probabilities confirm them.
FACE_BOXES = {"obama.jpg": (365, 85, 605, 325), "biden.jpg": (510, 190, 770, 450)}


def crops(name, img):
    """Four squares: the face, the face shifted by a third (a partial face), upper left, lower right."""
    w, h = img.size
    x1, y1, x2, y2 = FACE_BOXES[name]
    d = (x2 - x1) // 3
    s = min(w, h)
    return [(x1, y1, x2, y2), (x1 + d, y1 + d, x2 + d, y2 + d), (0, 0, s // 4, s // 4), (w - s // 5, h - s // 5, w, h)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", required=True, help="folder with pnet.pt, rnet.pt, onet.pt")
    ap.add_argument("--out", required=True)
    ap.add_argument("images", nargs="+")
    args = ap.parse_args()
    images = [Image.open(p).convert("RGB") for p in args.images]
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"weights": "facenet-pytorch 2.6.0", "onnxruntime": ort.__version__,
                "images": [pathlib.Path(p).name for p in args.images], "nets": {}}
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    for net in ("pnet", "rnet", "onet"):
        model = build_onnx(net, load_state_dict(f"{args.weights}/{net}.pt"))
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        if net == "pnet":
            batch = [normalise(np.asarray(im.resize((120, 100), Image.BILINEAR))) for im in images]
        else:
            size = SIZES[net]
            batch = [normalise(np.asarray(im.crop(box).resize((size, size), Image.BILINEAR)))
                     for path, im in zip(args.images, images) for box in crops(pathlib.Path(path).name, im)]
        x = np.ascontiguousarray(np.stack(batch), dtype=np.float32)
        names = [h[0] for h in HEADS[net]]
        results = sess.run(names, {"input": x})
        x.tofile(out / f"{net}.input.f32")
        shapes = {"input": list(x.shape)}
        for name, r in zip(names, results):
            r.astype(np.float32).tofile(out / f"{net}.{name}.f32")
            shapes[name] = list(r.shape)
        manifest["nets"][net] = shapes
        print(net, shapes, "face prob", np.round(results[-1][..., 1].reshape(len(batch), -1).max(axis=1), 3))
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
