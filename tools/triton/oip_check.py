"""Drives a running gpubackend with Triton's own Python clients (PyPI tritonclient, HTTP and gRPC):
the checks of tests/oip.rs. Each check prints `ok <what>`; the first failure raises (exit code 1).

    oip_check.py served     --http H:P --grpc H:P --root REPO   # the shipped defaults' models
    oip_check.py auth       --http H:P --grpc H:P --token T     # a server with auth.tokens = [T]
    oip_check.py repository --http H:P --grpc H:P --root REPO   # a user's model from the repository
"""

import argparse
import concurrent.futures
import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def ok(what):
    print(f"ok {what}", flush=True)


def text(v):
    """A BYTES element: bytes from binary data, str from JSON."""
    return v.decode() if isinstance(v, bytes) else str(v)


def f32(path):
    return np.fromfile(path, dtype="<f4")


def expect_error(call, status, *needles):
    """`call` fails with `status` (HTTP code or gRPC StatusCode) and a message holding `needles`."""
    try:
        call()
    except InferenceServerException as e:
        msg = e.message() or ""
        assert e.status() == status, f"status {e.status()} ({msg}), expected {status}"
        for n in needles:
            assert n in msg, f"{n!r} not in {msg!r}"
        return msg
    raise AssertionError(f"no error, expected {status}")


def clients(args, token=None):
    h = httpclient.InferenceServerClient(url=args.http, concurrency=16)
    g = grpcclient.InferenceServerClient(url=args.grpc)
    return h, g


def infer_both(h, g, model, name, x, out="output", dtype="FP32", class_count=0, headers=None):
    """One inference over HTTP (JSON both ways; not for BYTES, which JSON carries as UTF-8 only),
    HTTP (binary both ways) and gRPC: the answers."""
    answers = []
    for binary_in in (False, True) if dtype != "BYTES" else (True,):
        i = httpclient.InferInput(name, list(x.shape), dtype)
        i.set_data_from_numpy(x, binary_data=binary_in)
        o = httpclient.InferRequestedOutput(out, binary_data=binary_in, class_count=class_count)
        answers.append(h.infer(model, [i], outputs=[o], headers=headers).as_numpy(out))
    i = grpcclient.InferInput(name, list(x.shape), dtype)
    i.set_data_from_numpy(x)
    o = grpcclient.InferRequestedOutput(out, class_count=class_count)
    meta = [(k.lower(), v) for k, v in (headers or {}).items()]
    answers.append(g.infer(model, [i], outputs=[o], headers=dict(meta)).as_numpy(out))
    return answers


def served(args):
    h, g = clients(args)
    root = args.root
    assert h.is_server_live() and g.is_server_live()
    assert h.is_server_ready() and g.is_server_ready()
    assert h.is_model_ready("mobilenet_v2") and g.is_model_ready("mobilenet_v2")
    for meta in (h.get_server_metadata(), g.get_server_metadata(as_json=True)):
        assert meta["name"] == "gpubackend", meta
        for ext in ("binary_tensor_data", "classification", "model_configuration"):
            assert ext in meta["extensions"], meta
    ok("live, ready, server metadata (HTTP, gRPC)")

    m = h.get_model_metadata("mobilenet_v2")
    assert m["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 224, 224]}], m
    assert m["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 1000]}], m
    gm = g.get_model_metadata("mobilenet_v2", as_json=True)
    assert [int(d) for d in gm["inputs"][0]["shape"]] == [-1, 3, 224, 224], gm
    c = h.get_model_config("mobilenet_v2")
    assert c["max_batch_size"] == 4 and c["input"][0]["dims"] == [3, 224, 224], c
    assert c["input"][0]["format"] == "FORMAT_NCHW" and "dynamic_batching" in c, c
    assert c["output"][0]["dims"] == [1000] and c["output"][0]["label_filename"] == "labels.json", c
    gc = g.get_model_config("mobilenet_v2", as_json=True)["config"]
    assert gc["max_batch_size"] == 4 and [int(d) for d in gc["input"][0]["dims"]] == [3, 224, 224], gc
    assert gc["input"][0]["data_type"] == "TYPE_FP32", gc
    index = h.get_model_repository_index()
    names = {e["name"]: e["state"] for e in index}
    for model in ("mobilenet_v2", "mobilenet_v2_image", "centernet", "centernet_image", "text_det", "text_rec", "face_embed"):
        assert names.get(model) == "READY", (model, index)
    ok(f"metadata, config, repository index ({len(index)} models)")

    # The reference: onnxruntime's logits on the same preprocessed inputs (tests/fixtures/mobilenet_v2).
    x = np.stack([f32(f"{root}/tests/fixtures/mobilenet_v2/{n}.input.f32").reshape(3, 224, 224) for n in ("chelsea", "coffee")])
    ref = np.stack([f32(f"{root}/tests/fixtures/mobilenet_v2/{n}.logits.f32") for n in ("chelsea", "coffee")])
    for got in infer_both(h, g, "mobilenet_v2", "input", x):
        assert got.shape == (2, 1000), got.shape
        d = float(np.abs(got - ref).max())
        assert d <= 1e-4, f"logits differ from onnxruntime by {d}"
    ok("mobilenet_v2: JSON, binary and gRPC logits within 1e-4 of onnxruntime")

    for got in infer_both(h, g, "mobilenet_v2", "input", x, class_count=3):
        assert got.shape == (2, 3), got.shape
        top = [text(row[0]) for row in got]
        for t, r in zip(top, ref):
            value, index, label = t.split(":", 2)
            assert int(index) == int(r.argmax()) and abs(float(value) - r.max()) < 1e-3 and label, (t, r.argmax())
    ok(f"classification: {top}")

    jpeg = open(f"{root}/tests/data/chelsea.jpg", "rb").read()
    images = np.array([[jpeg], [open(f"{root}/tests/data/dog.jpg", "rb").read()]], dtype=np.object_)
    for got in infer_both(h, g, "mobilenet_v2_image", "image", images, dtype="BYTES"):
        assert got.shape == (2, 1000), got.shape
        assert 281 <= got[0].argmax() <= 285, f"chelsea is a cat, not class {got[0].argmax()}"
        assert 151 <= got[1].argmax() <= 268, f"dog.jpg is a dog, not class {got[1].argmax()}"
    # person.jpg: a person, a dog and a horse (tests/model_centernet.rs has the Vision API's answer).
    i = httpclient.InferInput("image", [1], "BYTES")
    i.set_data_from_numpy(np.array([open(f"{root}/tests/data/person.jpg", "rb").read()], dtype=np.object_))
    r = h.infer("centernet_image", [i])
    boxes, scores, classes = r.as_numpy("boxes"), r.as_numpy("scores"), r.as_numpy("classes")
    assert boxes.shape[1] == 4 and len(scores) == len(classes) == len(boxes) > 0, (boxes.shape, scores, classes)
    found = [text(c) for c in classes]
    assert {"Person", "Dog", "Horse"} <= set(found) and found[0] == "Person", (found, scores)
    # The person's box, as the reference's scaled to the 640×424 photo: about [187, 109, 276, 375].
    assert np.abs(boxes[0] - np.array([187, 109, 276, 375])).max() < 12, boxes[0]
    assert list(scores) == sorted(scores, reverse=True), scores
    ok(f"image models: mobilenet_v2_image (JPEG in), centernet_image: {text(classes[0])} {scores[0]:.3f} {boxes[0]}")

    # Stream: each request answered in order.
    answers = []
    g.start_stream(callback=lambda result, error: answers.append((result, error)))
    for _ in range(3):
        i = grpcclient.InferInput("input", [1, 3, 224, 224], "FP32")
        i.set_data_from_numpy(x[:1])
        g.async_stream_infer("mobilenet_v2", [i])
    g.stop_stream()
    assert len(answers) == 3 and all(e is None for _, e in answers), answers
    assert all(np.abs(r.as_numpy("output") - ref[:1]).max() <= 1e-4 for r, _ in answers)
    ok("gRPC ModelStreamInfer")

    # Concurrent requests batch together (the Rust test reads the mean batch off /metrics).
    def one(k):
        i = httpclient.InferInput("input", [1, 3, 224, 224], "FP32")
        i.set_data_from_numpy(x[k % 2 : k % 2 + 1])
        return h.async_infer("mobilenet_v2", [i])

    pending = [one(k) for k in range(32)]
    for k, p in enumerate(pending):
        assert np.abs(p.get_result().as_numpy("output") - ref[k % 2 : k % 2 + 1]).max() <= 1e-4
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        def grpc_one(k):
            i = grpcclient.InferInput("input", [1, 3, 224, 224], "FP32")
            i.set_data_from_numpy(x[k % 2 : k % 2 + 1])
            return np.abs(g.infer("mobilenet_v2", [i]).as_numpy("output") - ref[k % 2 : k % 2 + 1]).max()
        assert max(pool.map(grpc_one, range(32))) <= 1e-4
    ok("64 concurrent requests (HTTP async, gRPC threads) answered")

    # Errors, as each protocol has them.
    bad = httpclient.InferInput("input", [1, 3, 224, 225], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3, 224, 225), np.float32))
    expect_error(lambda: h.infer("nope", [bad]), "404", "unknown model `nope`")
    expect_error(lambda: g.get_model_metadata("nope"), "StatusCode.NOT_FOUND", "unknown model")
    expect_error(lambda: h.infer("mobilenet_v2", [bad]), "400", "input `input`", "[1, 3, 224, 225]")
    gbad = grpcclient.InferInput("input", [1, 3, 224, 225], "FP32")
    gbad.set_data_from_numpy(np.zeros((1, 3, 224, 225), np.float32))
    expect_error(lambda: g.infer("mobilenet_v2", [gbad]), "StatusCode.INVALID_ARGUMENT", "input `input`")
    wrong = httpclient.InferInput("input", [1, 3, 224, 224], "FP64")
    wrong.set_data_from_numpy(np.zeros((1, 3, 224, 224), np.float64))
    expect_error(lambda: h.infer("mobilenet_v2", [wrong]), "400", "input `input`", "FP64", "takes FP32")
    gwrong = grpcclient.InferInput("input", [1, 3, 224, 224], "INT32")
    gwrong.set_data_from_numpy(np.zeros((1, 3, 224, 224), np.int32))
    expect_error(lambda: g.infer("mobilenet_v2", [gwrong]), "StatusCode.INVALID_ARGUMENT", "INT32", "takes FP32")
    big = httpclient.InferInput("input", [5, 3, 224, 224], "FP32")
    big.set_data_from_numpy(np.zeros((5, 3, 224, 224), np.float32))
    expect_error(lambda: h.infer("mobilenet_v2", [big]), "400", "batch of 5", "max_batch_size")
    broken = httpclient.InferInput("image", [1, 1], "BYTES")
    broken.set_data_from_numpy(np.array([[b"not an image"]], dtype=np.object_))
    expect_error(lambda: h.infer("mobilenet_v2_image", [broken]), "400", "input `image` element 0")
    ok("errors: unknown model 404 / NOT_FOUND, bad shape, dtype, batch and image 400 / INVALID_ARGUMENT")


def auth(args):
    h, g = clients(args)
    x = np.zeros((1, 3, 224, 224), np.float32)
    bearer = {"Authorization": f"Bearer {args.token}"}
    i = httpclient.InferInput("input", [1, 3, 224, 224], "FP32")
    i.set_data_from_numpy(x)
    expect_error(lambda: h.infer("mobilenet_v2", [i]), "401", "Bearer")
    expect_error(lambda: h.get_model_metadata("mobilenet_v2", headers={"Authorization": "Bearer wrong"}), "401")
    gi = grpcclient.InferInput("input", [1, 3, 224, 224], "FP32")
    gi.set_data_from_numpy(x)
    expect_error(lambda: g.infer("mobilenet_v2", [gi]), "StatusCode.UNAUTHENTICATED")
    assert h.infer("mobilenet_v2", [i], headers=bearer).as_numpy("output").shape == (1, 1000)
    assert g.infer("mobilenet_v2", [gi], headers={"authorization": f"Bearer {args.token}"}).as_numpy("output").shape == (1, 1000)
    # Probes need no token.
    assert h.is_server_live() and h.is_server_ready()
    ok("no token or a wrong one: 401 / UNAUTHENTICATED; Bearer token accepted (HTTP, gRPC)")
    # The rate limit (1 request/s, burst 2 in tests/oip.rs): the third at once is refused.
    codes = []
    for _ in range(3):
        try:
            h.infer("mobilenet_v2", [i], headers=bearer)
            codes.append("200")
        except InferenceServerException as e:
            codes.append(e.status())
    assert "429" in codes, codes
    expect_error(lambda: g.infer("mobilenet_v2", [gi], headers={"authorization": f"Bearer {args.token}"}), "StatusCode.RESOURCE_EXHAUSTED", "rate limit")
    ok(f"rate limit: {codes}, gRPC RESOURCE_EXHAUSTED")


def repository(args):
    h, g = clients(args)
    root = args.root
    index = {e["name"]: e for e in h.get_model_repository_index()}
    assert index["orientation"]["state"] == "READY", index.get("orientation")
    m = h.get_model_metadata("orientation")
    assert m["platform"] == "repository", m
    assert m["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3, 48, 192]}], m
    assert m["outputs"] == [{"name": "softmax", "datatype": "FP32", "shape": [-1, 2]}], m
    c = g.get_model_config("orientation", as_json=True)["config"]
    assert c["max_batch_size"] == 8, c
    x = f32(f"{root}/tests/fixtures/ppocr/cls.input.f32").reshape(-1, 3, 48, 192)
    ref = f32(f"{root}/tests/fixtures/ppocr/cls.prob.f32").reshape(len(x), 2)
    builtin = infer_both(h, g, "text_cls", "input", x)
    user = infer_both(h, g, "orientation", "x", x, out="softmax")
    for got in builtin + user:
        assert got.shape == ref.shape and np.abs(got - ref).max() <= 1e-4, (got, ref)
    assert np.abs(user[-1] - builtin[-1]).max() <= 1e-4
    for labels in infer_both(h, g, "orientation", "x", x, out="softmax", class_count=1):
        assert [text(r[0]).split(":")[2] for r in labels] == ["upright", "turned"], labels
    ok(f"repository model `orientation` = built-in text_cls = onnxruntime within 1e-4; labels {labels.ravel()}")
    big = httpclient.InferInput("x", [1, 3, 48, 100], "FP32")
    big.set_data_from_numpy(np.zeros((1, 3, 48, 100), np.float32))
    expect_error(lambda: h.infer("orientation", [big]), "400", "input `x`", "[-1, 3, 48, 192]")
    ok("repository model: wrong shape 400 naming the tensor")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("check", choices=["served", "auth", "repository"])
    p.add_argument("--http", required=True)
    p.add_argument("--grpc", required=True)
    p.add_argument("--root", default=".")
    p.add_argument("--token")
    args = p.parse_args()
    {"served": served, "auth": auth, "repository": repository}[args.check](args)


if __name__ == "__main__":
    sys.exit(main())
