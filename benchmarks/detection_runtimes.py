"""Inference time per 640 px slice of workers.detection on each CPU runtime: torch eager,
ONNX Runtime (what ``load_detector(runtime="auto")`` picks on a CPU) and, as a candidate,
OpenVINO on the same ONNX export. Random-initialised weights (timing does not depend on them;
the head is randomised so outputs vary with the input). Prints figures; not a test.

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/detection_runtimes.py \
        --model s --threads 1

Every runtime goes through the same ``predict_batch`` / ``predict_sliced`` code (resize, NMS,
SAHI merge); only the network's forward pass differs. Rounds alternate the runtimes so load
from other work on a shared machine falls on all of them alike.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", choices=["s", "l", "lite0"], default="s")
    p.add_argument("--classes", type=int, default=6)
    p.add_argument("--size", type=int, default=640, help="slice size = network input")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=5, help="timed calls per runtime per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4], help="slices per forward")
    p.add_argument("--no-openvino", action="store_true")
    p.add_argument("--out", default=str(ROOT / "var" / "bench-detection-runtimes"))
    args = p.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from workers.detection import Detector, ModelConfig, load_detector
    from workers.detection.artifact import save_artifact
    from workers.detection.data import Category
    from workers.detection.inference import RuntimeDetector
    from workers.detection.model import build_model
    from workers.detection.runtimes import ensure_onnx_export

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    presets = {"s": ModelConfig.sod_s, "l": ModelConfig.sod_l, "lite0": ModelConfig.lite0}
    cfg = presets[args.model](args.classes, eval_size=args.size)
    torch.manual_seed(0)
    model = build_model(cfg, pretrained_backbone=False)
    with torch.no_grad():  # the zero-initialised prediction convs would give constant outputs
        for conv in [*model.yolo_head.pred_cls, *model.yolo_head.pred_reg]:
            conv.weight.normal_(0, 0.01)
    cats = [Category(i + 1, f"class_{i}", i) for i in range(args.classes)]
    artifact = save_artifact(out / f"random-{args.model}.pt", model, cats)
    t = time.perf_counter()
    ensure_onnx_export(artifact)  # made again only if missing or from another artifact
    export_s = time.perf_counter() - t

    detectors = {
        "torch eager": Detector.load(artifact, device="cpu"),
        "ONNX Runtime": load_detector(artifact, "onnx", threads=args.threads),
    }
    assert detectors["ONNX Runtime"].runtime == "onnx"
    if not args.no_openvino:
        import openvino as ov

        core = ov.Core()
        onnx_path = ensure_onnx_export(artifact)
        compiled = core.compile_model(
            core.read_model(str(onnx_path)),
            "CPU",
            # fp32 as in workers/anomaly/runtimes.py (bf16 where the CPU has it otherwise)
            {"INFERENCE_NUM_THREADS": args.threads, "INFERENCE_PRECISION_HINT": "f32"},
        )

        def ov_net(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            r = compiled(x)
            return np.asarray(r[0]), np.asarray(r[1])

        ref = detectors["ONNX Runtime"]
        detectors["OpenVINO"] = RuntimeDetector(
            ov_net, ref.categories, ref.model_config, ref.eval_size, runtime="openvino"
        )

    rng = np.random.default_rng(0)
    slice_img = rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    big = rng.integers(0, 256, (2 * args.size, 3 * args.size, 3), dtype=np.uint8)

    # Agreement of the raw network outputs with torch on the same batch.
    from workers.detection.data import to_tensor

    batch = to_tensor([slice_img])
    with torch.no_grad():
        ref_scores, ref_boxes = detectors["torch eager"].forward(batch)
    agreement = {}
    for name, det in detectors.items():
        with torch.no_grad():
            s, b = det.forward(batch)
        agreement[name] = {
            "max_abs_score": float((s - ref_scores).abs().max()),
            "max_abs_box_px": float((b - ref_boxes).abs().max()),
        }

    times: dict[str, dict[int, list[float]]] = {n: {b: [] for b in args.batch} for n in detectors}
    sliced: dict[str, dict[int, list[float]]] = {n: {b: [] for b in args.batch} for n in detectors}
    from sahi.slicing import get_slice_bboxes

    n_slices = len(
        get_slice_bboxes(big.shape[0], big.shape[1], args.size, args.size, False, 0.25, 0.25)
    )
    load_before = os.getloadavg()[0]
    for det in detectors.values():  # warm-up: the first calls allocate and pick kernels
        for b in args.batch:
            det.predict_batch([slice_img] * b)
    # Interleaved call by call (torch, ORT, OpenVINO, torch, ...): on a shared machine, load
    # from other work then falls on every runtime alike instead of on whichever ran then.
    for _ in range(args.rounds):
        for b in args.batch:
            images = [slice_img] * b
            for _ in range(args.runs):
                for name, det in detectors.items():
                    t = time.perf_counter()
                    det.predict_batch(images, score_threshold=0.25)
                    times[name][b].append((time.perf_counter() - t) / b)
        for b in args.batch:
            for name, det in detectors.items():
                t = time.perf_counter()
                det.predict_sliced(big, slice_size=args.size, overlap=0.25, batch_size=b)
                sliced[name][b].append((time.perf_counter() - t) / n_slices)

    rows = []
    base = {b: float(np.median(times["torch eager"][b])) for b in args.batch}
    for name in detectors:
        row = {
            "runtime": name,
            **{
                f"ms_per_slice_batch{b}": round(1000 * float(np.median(v)), 1)
                for b, v in times[name].items()
            },
            **{
                f"min_ms_batch{b}": round(1000 * float(np.min(v)), 1)
                for b, v in times[name].items()
            },
            **{
                f"speedup_vs_torch_batch{b}": round(base[b] / float(np.median(v)), 2)
                for b, v in times[name].items()
            },
            **{
                f"ms_per_slice_predict_sliced_batch{b}": round(1000 * float(np.median(v)), 1)
                for b, v in sliced[name].items()
            },
            **agreement[name],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    import onnxruntime

    print(
        f"\nCPU: {cpu_name()}, {os.cpu_count()} cores, "
        f"{args.threads} thread(s), OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '-')}, "
        f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; torch {torch.__version__}, "
        f"onnxruntime {onnxruntime.__version__}"
        + ("" if args.no_openvino else f", openvino {ov.__version__}")
    )
    print(
        f"model {args.model} ({args.classes} classes), {args.size} px slices, "
        f"{args.rounds} rounds x {args.runs} runs; ONNX export took {export_s:.1f} s; "
        f"predict_sliced on a {big.shape[1]}x{big.shape[0]} image = {n_slices} slices"
    )
    print("median ms per slice (speed-up over torch); min in results.json")
    heads = " | ".join(f"ms/slice, batch {b}" for b in args.batch)
    heads += " | " + " | ".join(f"predict_sliced, batch {b}" for b in args.batch)
    print(f"| runtime | {heads} | max abs Δscore | max abs Δbox px |")
    print("|---" * (3 + 2 * len(args.batch)) + "|")
    for r in rows:
        cells = " | ".join(
            f"{r[f'ms_per_slice_batch{b}']} ({r[f'speedup_vs_torch_batch{b}']}×)"
            for b in args.batch
        )
        cells += " | " + " | ".join(
            str(r[f"ms_per_slice_predict_sliced_batch{b}"]) for b in args.batch
        )
        print(
            f"| {r['runtime']} | {cells} | {r['max_abs_score']:.1e} | {r['max_abs_box_px']:.1e} |"
        )
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
