"""DeepPCB benchmark for workers.detection: train on the official trainval split, evaluate on
test with sliced inference, time inference per 640 px slice. Prints figures; not a test.

    .venv/bin/python benchmarks/detection.py --backbone s lite0 --epochs 15 \
        --train-sizes 320,352,384,416,448,480,512 --threads 1
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--datasets", default=os.environ.get("LOUPE_DATASETS", ROOT.parent / "shared" / "datasets")
    )
    p.add_argument("--backbone", nargs="+", default=["s", "lite0"], choices=["s", "lite0"])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.01, help="for batch 8 (scaled linearly)")
    p.add_argument("--train-sizes", default="320,352,384,416,448,480,512")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "var" / "bench-detection"))
    p.add_argument("--infer-runs", type=int, default=10)
    p.add_argument("--max-iters", type=int, default=None, help="cap per epoch (smoke runs)")
    p.add_argument(
        "--eval-size",
        type=int,
        nargs="+",
        default=[640],
        help="network input sizes to evaluate at (each 640 slice is resized to it); keep one "
        "inside the training range, or objects appear at a scale the model never saw",
    )
    args = p.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from workers.detection import Detector, ModelConfig, TrainConfig, evaluate, train
    from workers.detection.data import load_image

    root = Path(args.datasets) / "deeppcb"
    ann = root / "annotations.json"
    if not ann.is_file():
        print(f"DeepPCB not found at {root}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = tuple(int(s) for s in args.train_sizes.split(","))
    rows = []
    for backbone in args.backbone:
        mcfg = (ModelConfig.sod_s if backbone == "s" else ModelConfig.lite0)(num_classes=6)
        tcfg = TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            base_lr=args.lr,
            train_sizes=sizes,
            log_every=5,
            device="cpu",
            max_iters_per_epoch=args.max_iters,
        )

        def progress(f: float, msg: str, metrics: dict | None, name: str = backbone) -> None:
            extra = ""
            if metrics:
                shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
                extra = " " + json.dumps(shown)
            print(f"[{name} {f * 100:5.1f}%] {msg}{extra}", flush=True)

        artifact = out / f"deeppcb-{backbone}.pt"
        t0 = time.time()
        result = train(
            ann,
            artifact,
            image_root=root,
            model_config=mcfg,
            train_config=tcfg,
            image_filter=lambda img: img.get("official_split") == "trainval",
            progress=progress,
        )
        train_s = time.time() - t0
        evals = {}
        for size in args.eval_size:
            det = Detector.load(artifact, device="cpu", eval_size=size)
            evals[size] = evaluate(
                det,
                ann,
                image_root=root,
                image_filter=lambda img: img.get("official_split") == "test",
                slice_size=640,
                overlap=0.25,
            )
        det = Detector.load(artifact, device="cpu")
        image = load_image(next(iter(sorted((root / "images").glob("*.jpg")))))
        det.predict_batch([image])  # warm-up
        times = []
        for _ in range(args.infer_runs):
            t = time.perf_counter()
            det.predict_batch([image], score_threshold=0.01)
            times.append(time.perf_counter() - t)
        epoch_s = [h["seconds"] for h in result.history]
        row = {
            "backbone": "CSPResNet-s (scratch)" if backbone == "s" else "lite0 (ImageNet)",
            "epochs": args.epochs,
            "train_sizes": f"{sizes[0]}..{sizes[-1]}",
            "eval": {
                size: {
                    "mAP50": round(100 * r.map50, 1),
                    "mAP": round(100 * r.map, 1),
                    "AP_small": round(100 * r.ap_small, 1),
                }
                for size, r in evals.items()
            },
            "s_per_epoch": round(float(np.mean(epoch_s)), 1),
            "train_min": round(train_s / 60, 1),
            "ms_per_640_slice": round(1000 * float(np.median(times)), 1),
            "final_loss": round(result.history[-1]["loss"], 3),
            "per_class_AP50": {
                size: {k: round(100 * v, 1) for k, v in r.per_class_ap50.items()}
                for size, r in evals.items()
            },
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(
        f"\nCPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch threads {args.threads}, torch {torch.__version__}"
    )
    print(
        "| backbone | epochs | train sizes | eval size | mAP50 | mAP | AP_small | s/epoch "
        "| ms/640 slice |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        for size, e in r["eval"].items():
            print(
                f"| {r['backbone']} | {r['epochs']} | {r['train_sizes']} | {size} | {e['mAP50']} "
                f"| {e['mAP']} | {e['AP_small']} | {r['s_per_epoch']} | {r['ms_per_640_slice']} |"
            )
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
