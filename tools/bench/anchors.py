#!/usr/bin/env python3
"""The anchors `gpubackend bench networks --anchor PYTHON` times our networks against: the same
model files on PyPI onnxruntime (the `.onnx` networks) and PyPI ncnn (the Real-ESRGAN `.param`
networks), CPU, fp32, the same input shape and thread count as ours.

Reads a JSON list of cases on stdin: {"name", "engine": "onnxruntime" | "ncnn", "file",
"shape": [n, c, h, w], "threads", "duration"}. Each case: a session / net built once, two warm-up
passes, then passes until `duration` seconds have gone (at least 3). Writes one JSON line per case
to stdout: {"name", "ms"} (mean milliseconds per pass) or {"name", "error"}. Packages: tools/bench/
requirements-anchors.txt (installed by scripts/setup-anchors.sh).
"""
import json
import sys
import time

import numpy as np


def timed(fn, duration):
    for _ in range(2):
        fn()
    passes, start = 0, time.perf_counter()
    while time.perf_counter() - start < duration or passes < 3:
        fn()
        passes += 1
    return (time.perf_counter() - start) * 1e3 / passes


def onnxruntime_case(c, x):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = c["threads"]
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(c["file"], so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    if sess.get_inputs()[0].shape[0] == 1 and x.shape[0] > 1:
        # A graph exported for one image (SFace): the batch as that many runs.
        items = [x[i : i + 1] for i in range(x.shape[0])]
        return timed(lambda: [sess.run(None, {name: item}) for item in items], c["duration"])
    return timed(lambda: sess.run(None, {name: x}), c["duration"])


def ncnn_case(c, x):
    import ncnn

    net = ncnn.Net()
    o = net.opt
    o.use_vulkan_compute = False
    o.use_fp16_packed = False
    o.use_fp16_storage = False
    o.use_fp16_arithmetic = False
    o.use_bf16_storage = False
    o.use_bf16_packed = False
    o.num_threads = c["threads"]
    param = c["file"]
    assert net.load_param(param) == 0, param
    assert net.load_model(param[: -len(".param")] + ".bin") == 0, param

    def once():
        for item in x:  # ncnn takes one image per extractor
            with net.create_extractor() as ex:
                ex.input("data", ncnn.Mat(np.ascontiguousarray(item)).clone())
                ret, out = ex.extract("output")
                assert ret == 0
                np.array(out)

    return timed(once, c["duration"])


def main():
    cases = json.load(sys.stdin)
    rng = np.random.default_rng(0)
    for c in cases:
        x = rng.random(c["shape"], dtype=np.float32)
        try:
            run = {"onnxruntime": onnxruntime_case, "ncnn": ncnn_case}[c["engine"]]
            print(json.dumps({"name": c["name"], "ms": run(c, x)}), flush=True)
        except Exception as e:  # noqa: BLE001 — reported per case, the others still run
            print(json.dumps({"name": c["name"], "error": f"{type(e).__name__}: {e}"}), flush=True)


if __name__ == "__main__":
    main()
