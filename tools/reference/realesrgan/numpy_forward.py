"""Independent float64 numpy forward of an ncnn graph, for the layer types the Real-ESRGAN .param files use.

It re-implements each layer from ncnn's own source semantics (see ncnn_inspect.py for the file
format) so that the ncnn fixture can be cross-checked against a second implementation:

  Convolution   y[o] = b[o] + Σ_c Σ_ky Σ_kx W[o,c,ky,kx] · xpad[c, y·s+ky·d, x·s+kx·d]; zero pad 4=pad
                (all sides); then the fused activation 9=activation_type with -23310=params:
                9=2 is leaky ReLU, y = y if y >= 0 else y·params[0] (0.2 here)
  PReLU         per channel: y = x if x >= 0 else slope[c]·x  (0=num_slope = channels)
  Split         every output is the input
  Concat        0=axis, default 0 = channels (CHW without batch)
  Eltwise       0=op_type (1 = SUM), -23301=coeffs: y = Σ_i coeffs[i]·x_i (no coeffs: plain sum)
  BinaryOp      0=op_type (0 = ADD), 1=with_scalar (0), 2=b: y = a + b, same shapes here
  Interp        0=resize_type (1 = nearest), 1=height_scale, 2=width_scale: outh = int(h·hs);
                in_y = min(int(y · (1/hs)), h-1) (and x alike) — plain pixel replication for 2, 4
  PixelShuffle  0=upscale_factor r, 1=mode (0 = PyTorch pixel_shuffle / ONNX DepthToSpace CRD):
                out[c, y·r+i, x·r+j] = in[c·r² + i·r + j, y, x]
"""
import numpy as np

from ncnn_inspect import parse_param, walk_bin


def conv3(x, w, b, pad, stride=1, dil=1):
    c, h, wd = x.shape
    o, ci, kh, kw = w.shape
    assert ci == c and stride == 1 and dil == 1
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    oh, ow = h + 2 * pad - kh + 1, wd + 2 * pad - kw + 1
    cols = np.empty((c, kh, kw, oh, ow), dtype=x.dtype)
    for ky in range(kh):
        for kx in range(kw):
            cols[:, ky, kx] = xp[:, ky:ky + oh, kx:kx + ow]
    y = w.reshape(o, -1).astype(x.dtype) @ cols.reshape(c * kh * kw, oh * ow)
    if b is not None:
        y += b.astype(x.dtype)[:, None]
    return y.reshape(o, oh, ow)


def forward(param_path, bin_path, x, dtype=np.float64):
    """x: C×H×W array. Returns the blob named 'output'."""
    layers = parse_param(param_path)
    weights, end, size, _ = walk_bin(layers, bin_path)
    assert end == size
    last_use = {}
    for i, l in enumerate(layers):
        for n in l["inputs"]:
            last_use[n] = i
    blobs = {}
    for i, l in enumerate(layers):
        t, p = l["type"], l["params"]
        ins = [blobs[n] for n in l["inputs"]]
        if t == "Input":
            out = [np.asarray(x, dtype=dtype)]
        elif t == "Split":
            out = [ins[0]] * len(l["outputs"])
        elif t == "Convolution":
            wt = weights[l["name"]]
            assert p.get(2, 1) == 1 and p.get(3, 1) == 1 and 11 not in p and 14 not in p
            y = conv3(ins[0], wt["weight"], wt.get("bias"), p.get(4, 0))
            act = p.get(9, 0)
            if act == 2:
                y = np.where(y >= 0, y, y * p[10][0])
            else:
                assert act == 0, act
            out = [y]
        elif t == "PReLU":
            s = weights[l["name"]]["slope"].astype(dtype)[:, None, None]
            out = [np.where(ins[0] >= 0, ins[0], ins[0] * s)]
        elif t == "Concat":
            out = [np.concatenate(ins, axis=p.get(0, 0))]
        elif t == "Eltwise":
            assert p.get(0, 0) == 1
            co = p.get(1, [1.0] * len(ins))
            out = [sum(c * a for c, a in zip(co, ins))]
        elif t == "BinaryOp":
            assert p.get(0, 0) == 0 and p.get(1, 0) == 0 and ins[0].shape == ins[1].shape
            out = [ins[0] + ins[1]]
        elif t == "Interp":
            assert p.get(0, 0) == 1
            hs, ws = p.get(1, 1.0), p.get(2, 1.0)
            c, h, w = ins[0].shape
            oh, ow = int(h * hs), int(w * ws)
            iy = np.minimum((np.arange(oh) * np.float32(1.0 / hs)).astype(int), h - 1)
            ix = np.minimum((np.arange(ow) * np.float32(1.0 / ws)).astype(int), w - 1)
            out = [ins[0][:, iy][:, :, ix]]
        elif t == "PixelShuffle":
            r = p[0]
            assert p.get(1, 0) == 0
            c, h, w = ins[0].shape
            y = ins[0].reshape(c // (r * r), r, r, h, w).transpose(0, 3, 1, 4, 2)
            out = [y.reshape(c // (r * r), h * r, w * r)]
        else:
            raise NotImplementedError(t)
        for n, v in zip(l["outputs"], out):
            blobs[n] = v
        for n in l["inputs"]:  # free blobs nobody reads any more
            if last_use[n] == i:
                del blobs[n]
    return blobs["output"]
