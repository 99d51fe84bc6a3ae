#!/usr/bin/env python3
"""The anchors `gpubackend bench networks --anchor PYTHON` times our networks against: the same
model files on PyPI onnxruntime (the `.onnx` networks), PyPI ncnn (the Real-ESRGAN `.param`
networks) and TensorFlow.js's wasm backend in Node (the CenterNet graph model:
tools/bench/tfjs-wasm/anchor.mjs), CPU, fp32, the same input shape and thread count as ours.

Reads a JSON list of cases on stdin: {"name", "engine": "onnxruntime" | "ncnn" | "tfjs-wasm", "file",
"shape": [n, c, h, w], "threads", "duration"}. Each case: a session / net built once, two warm-up
passes, then passes until `duration` seconds have gone (at least 3). Writes one JSON line per case
to stdout: {"name", "ms"} (mean milliseconds per pass; TF.js adds the threads it ran on) or
{"name", "error"}. Packages: tools/bench/requirements-anchors.txt and tools/bench/tfjs-wasm
(installed by scripts/setup-anchors.sh).
"""
import json
import os
import subprocess
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


def tfjs_wasm_case(c, x):
    # Node times its own passes (the input is made there, N×H×W×C as the graph takes it).
    del x
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tfjs-wasm", "anchor.mjs")
    case = {"file": os.path.abspath(c["file"]), "shape": c["shape"], "threads": c["threads"], "duration": c["duration"]}
    done = subprocess.run(["node", script], input=json.dumps(case), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    cases = json.load(sys.stdin)
    rng = np.random.default_rng(0)
    for c in cases:
        x = rng.random(c["shape"], dtype=np.float32)
        try:
            run = {"onnxruntime": onnxruntime_case, "ncnn": ncnn_case, "tfjs-wasm": tfjs_wasm_case}[c["engine"]]
            got = run(c, x)
            line = {"name": c["name"], **(got if isinstance(got, dict) else {"ms": got})}
            print(json.dumps(line), flush=True)
        except Exception as e:  # noqa: BLE001 — reported per case, the others still run
            print(json.dumps({"name": c["name"], "error": f"{type(e).__name__}: {e}"}), flush=True)


if __name__ == "__main__":
    main()
