#!/usr/bin/env python3
"""PyTorch eager torchvision MobileNetV2 on the project's weights: the anchor `gpubackend bench model
--torch PYTHON` and the GPU check compare our forward pass with.

fp32, TF32 off, eval + inference_mode, the same batch size, device and CPU threads as ours. Timed
like ours: each pass takes a CPU batch, copies it to the device, runs the network and copies the
logits back (on CUDA also timed without the copies: input already on the GPU, logits left there).
Prints a line per figure and, last, one JSON line with the results. Needs torch and torchvision.
"""
import argparse
import json
import time

import torch
import torchvision


def timed(fn, duration, sync):
    for _ in range(3):
        fn()
    sync()
    passes, start = 0, time.perf_counter()
    while time.perf_counter() - start < duration or passes < 3:
        fn()
        passes += 1
    sync()
    return passes, time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", required=True, help="torchvision's mobilenet_v2-b0353104.pth")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--device", default="cpu", help="cpu or cuda:N")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--image", help="unused content-wise: speed does not depend on pixels; kept for the record")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    device = torch.device(a.device)
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(a.weights, map_location="cpu", weights_only=True))
    model = model.eval().to(device)
    gen = torch.Generator().manual_seed(0)
    host = torch.randn(a.batch, 3, 224, 224, generator=gen)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    with torch.inference_mode():
        def with_copies():
            return model(host.to(device)).cpu()

        passes, wall = timed(with_copies, a.duration, sync)
        result = {
            "label": f"torch {torch.__version__} eager fp32 (torchvision {torchvision.__version__}), "
            f"{a.device}, batch {a.batch}, {a.threads} thread(s), with copies",
            "torch": torch.__version__,
            "device": a.device,
            "batch": a.batch,
            "threads": a.threads,
            "images_per_s": passes * a.batch / wall,
            "ms_per_batch": wall * 1e3 / passes,
        }
        print(f"torch eager {a.device} batch {a.batch}: {result['images_per_s']:.1f} images/s "
              f"({result['ms_per_batch']:.2f} ms per batch, with copies)")
        if device.type == "cuda":
            resident = host.to(device)
            passes, wall = timed(lambda: model(resident), a.duration / 2, sync)
            result["compute_only_images_per_s"] = passes * a.batch / wall
            print(f"torch eager {a.device} batch {a.batch}: {result['compute_only_images_per_s']:.1f} images/s (no copies)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
