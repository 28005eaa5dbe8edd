"""Where an exported anomaly model spends its time: OpenVINO's per-layer counters.

    .venv/bin/python benchmarks/anomaly_profile.py var/bench/s3/mvtec_bottle_padim/model.onnx \
        [--batch 8] [--threads 1] [--size 256]

Compiles ``model.onnx`` as the engine does (fp32, ``--threads`` threads), runs a random batch a
few times with ``PERF_COUNT`` on, and prints ms per image: in total, per layer type, and for the
15 slowest layers. (The blur at the end of PaDiM and PatchCore was found this way: 22 of 38 ms.)
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a model.onnx (or OpenVINO .xml)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--size", type=int, default=256, help="the model's input size")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import openvino as ov

    core = ov.Core()
    config = {
        "INFERENCE_NUM_THREADS": args.threads,
        "INFERENCE_PRECISION_HINT": "f32",
        "PERF_COUNT": True,
    }
    compiled = core.compile_model(core.read_model(args.model), "CPU", config)
    x = np.random.default_rng(0).random((args.batch, 3, args.size, args.size), np.float32)
    request = compiled.create_infer_request()
    for _ in range(2):  # warm-up
        request.infer({0: x})
    by_type: dict[str, float] = defaultdict(float)
    by_layer: dict[tuple[str, str, str], float] = defaultdict(float)
    per_image = 1000.0 / (args.repeats * args.batch)  # seconds summed over repeats -> ms/image
    started = time.perf_counter()
    for _ in range(args.repeats):
        request.infer({0: x})
        for info in request.profiling_info:
            seconds = info.real_time.total_seconds()
            by_type[info.node_type] += seconds * per_image
            by_layer[(info.node_name, info.node_type, info.exec_type)] += seconds * per_image
    total = (time.perf_counter() - started) * per_image
    print(f"total {total:.2f} ms per image (batch {args.batch}, {args.threads} thread(s))")
    print("\nby layer type, ms per image:")
    for name, ms in sorted(by_type.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {name:24s} {ms:7.2f}")
    print("\nslowest layers, ms per image:")
    for (name, kind, impl), ms in sorted(by_layer.items(), key=lambda kv: -kv[1])[:15]:
        print(f"  {ms:7.2f}  {kind:18s} {impl:28s} {name[:70]}")


if __name__ == "__main__":
    main()
