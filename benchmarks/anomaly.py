"""Anomaly engine benchmark: quality and speed on MVTec-layout datasets.

Each (dataset, model) pair trains in its own process on ``train/good`` and is evaluated in a
second fresh process on ``test/`` (so peak RSS is measured for training and inference apart).
Prints a Markdown table and writes every figure as JSON under ``--out``.

    .venv/bin/python benchmarks/anomaly.py --datasets ../shared/datasets --out var/bench \
        --runs bottle:padim bottle:patchcore bottle:efficientad-random \
               bottle:efficientad-distilled magnetic_tile:padim magnetic_tile:patchcore \
               magnetic_tile:efficientad-distilled --steps 100 --large --engine

``efficientad-distilled`` needs the teacher made by
``python -m workers.anomaly distill-teacher`` first (see docs/benchmarks-anomaly.md).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _config(model: str, steps: int, input_size: int):  # noqa: ANN202
    from workers.anomaly import TrainConfig

    if model.startswith("efficientad"):
        teacher = model.split("-", 1)[1]
        return TrainConfig(model="efficientad", input_size=input_size, steps=steps, teacher=teacher)
    return TrainConfig(model=model, input_size=input_size)


def run_train(dataset: Path, model: str, out: Path, steps: int, input_size: int) -> dict:
    from workers.anomaly import mvtec_train, train

    config = _config(model, steps, input_size)
    started = time.perf_counter()
    result = train(config, mvtec_train(dataset), out)
    return {
        "train_seconds": time.perf_counter() - started,
        "train_peak_rss_mb": _rss_mb(),
        **{f"train_{k}": v for k, v in result.metrics.items() if not isinstance(v, dict)},
    }


def run_eval(dataset: Path, model_dir: Path) -> dict:
    from workers.anomaly import evaluate, load_model, mvtec_test

    model = load_model(model_dir)
    result = evaluate(model, mvtec_test(dataset))
    return result.metrics


def run_engine(dataset: Path, model_dir: Path, kind: str) -> dict:
    """anomalib's ``Engine.predict`` vs our ``predict`` on the same trained network and images.

    The network object is shared: anomalib's Lightning module gets our trained ``torch_model``.
    anomalib's visualiser is switched off (it would write images and look slower than it is).
    """
    import shutil
    import tempfile
    import warnings

    warnings.filterwarnings("ignore")
    from anomalib.engine import Engine
    from anomalib.models import EfficientAd, Padim, Patchcore

    from workers.anomaly import load_model, mvtec_test, predict
    from workers.anomaly.nets import LITE0, PADIM_LAYERS, PATCHCORE_LAYERS

    loaded = load_model(model_dir)
    if kind == "padim":
        lm = Padim(
            backbone=LITE0, layers=list(PADIM_LAYERS), pre_trained=False,
            n_features=loaded.net.model.n_features, visualizer=False,
        )  # fmt: skip
    elif kind == "patchcore":
        lm = Patchcore(
            backbone=LITE0, layers=list(PATCHCORE_LAYERS), pre_trained=False, visualizer=False
        )
    else:
        lm = EfficientAd(
            teacher_out_channels=loaded.net.model.teacher_out_channels,
            model_size=loaded.net.size, visualizer=False,
        )  # fmt: skip
    lm.model = loaded.net.model
    paths = [s.image for s in mvtec_test(dataset)]
    folder = Path(tempfile.mkdtemp())
    for p in paths:
        shutil.copy(p, folder / f"{p.parent.name}_{p.name}")
    engine = Engine(accelerator="cpu", devices=1, logger=False, default_root_dir=str(folder / "r"))
    engine.predict(model=lm, data_path=str(folder), return_predictions=True)  # warm-up
    started = time.perf_counter()
    batches = engine.predict(model=lm, data_path=str(folder), return_predictions=True)
    engine_s = time.perf_counter() - started
    n = sum(len(b.pred_score) for b in batches)
    predict(loaded, paths[0])  # warm-up
    started = time.perf_counter()
    for p in paths:
        predict(loaded, p)
    ours_s = time.perf_counter() - started
    shutil.rmtree(folder, ignore_errors=True)
    row = {
        "engine_ms_per_image": 1000 * engine_s / n,
        "ours_ms_per_image": 1000 * ours_s / len(paths),
        "speedup": (engine_s / n) / (ours_s / len(paths)),
        "images": len(paths),
    }
    try:  # the same path through the ONNX export (ONNX Runtime, CPU)
        from workers.anomaly import export_onnx

        export_onnx(model_dir)
        onnx_model = load_model(model_dir, backend="onnx")
        predict(onnx_model, paths[0])
        started = time.perf_counter()
        for p in paths:
            predict(onnx_model, p)
        onnx_s = time.perf_counter() - started
        row["onnx_ms_per_image"] = 1000 * onnx_s / len(paths)
        row["speedup_onnx"] = (engine_s / n) / (onnx_s / len(paths))
        ov_model = load_model(model_dir, backend="openvino")
        predict(ov_model, paths[0])
        started = time.perf_counter()
        for p in paths:
            predict(ov_model, p)
        ov_s = time.perf_counter() - started
        row["openvino_ms_per_image"] = 1000 * ov_s / len(paths)
        row["speedup_openvino"] = (engine_s / n) / (ov_s / len(paths))
    except Exception as exc:  # noqa: BLE001 - report, do not lose the other figures
        row["onnx_error"] = str(exc)[:200]
    return row


def run_large(dataset: Path, out: Path, model: str, overlap: float, backend: str = "torch") -> dict:
    """A ~20 MP mosaic of test images, heat-mapped at native scale (tiled, 256 px tiles)."""
    import numpy as np

    from workers.anomaly import PredictConfig, TrainConfig, load_model, mvtec_train, predict
    from workers.anomaly.image_io import read_image

    model_dir = out / f"large_{model}"
    if not (model_dir / "model.pt").is_file():
        config = TrainConfig(model=model, input_size=256, scale=1.0, max_memory_bank=5000)
        from workers.anomaly import train

        train(config, mvtec_train(dataset)[:8], model_dir)
    tiles = sorted((dataset / "test").glob("*/*.png"))
    rows = []
    for r in range(5):  # 5 x 5 mosaic; the test set may hold fewer than 25 images
        row = [read_image(tiles[(r * 5 + c) % len(tiles)]) for c in range(5)]
        rows.append(np.concatenate(row, axis=1))
    mosaic = np.concatenate(rows, axis=0)
    if backend != "torch":  # always re-export: an older export would be refused
        from workers.anomaly import export_onnx

        export_onnx(model_dir)
    loaded = load_model(model_dir, backend=backend)
    config = PredictConfig(batch_size=8, tile_overlap=overlap, allow_size_mismatch=True)
    predict(loaded, "warmup", config, image=mosaic[:900, :900])
    base = _rss_mb()
    started = time.perf_counter()
    pred = predict(loaded, "mosaic-20MP", config, image=mosaic)
    seconds = time.perf_counter() - started
    from workers.anomaly.tiling import tile_grid

    return {
        "megapixels": mosaic.shape[0] * mosaic.shape[1] / 1e6,
        "tiles": len(tile_grid(mosaic.shape[0], mosaic.shape[1], 256, round(overlap * 256))),
        "seconds": seconds,
        "overlap": overlap,
        "backend": loaded.backend,
        "regions": len(pred.regions),
        "peak_rss_mb": _rss_mb(),
        "rss_before_mb": base,
    }


def _child(args: list[str]) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    out = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, env=env, check=False
    )
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.0f}"
    return str(v)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=str(ROOT / ".." / "shared" / "datasets"))
    parser.add_argument("--out", default=str(ROOT / "var" / "bench"))
    parser.add_argument("--runs", nargs="*", default=["bottle:padim", "bottle:patchcore"])
    parser.add_argument("--steps", type=int, default=100, help="EfficientAD training steps")
    parser.add_argument("--input-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--large", action="store_true", help="also time a 20 MP image")
    parser.add_argument("--engine", action="store_true", help="compare with Engine.predict")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    datasets, out = Path(args.datasets), Path(args.out)
    if args.child:
        phase, *rest = args.child
        if phase == "train":
            dataset, model = rest
            res = run_train(
                datasets / dataset, model, out / f"{dataset}_{model}", args.steps, args.input_size
            )
        elif phase == "eval":
            dataset, model = rest
            res = run_eval(datasets / dataset, out / f"{dataset}_{model}")
        elif phase == "engine":
            dataset, model = rest
            kind = "efficientad" if model.startswith("efficientad") else model
            res = run_engine(datasets / dataset, out / f"{dataset}_{model}", kind)
        else:
            model, overlap, *backend = rest
            res = run_large(
                datasets / "mvtec_bottle", out, model, float(overlap), *(backend or ["torch"])
            )
        print(json.dumps(res, default=str))
        return 0

    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "anomaly_results.json"
    # merge with earlier runs into the same folder instead of overwriting them
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    common = [
        "--datasets", str(datasets), "--out", str(out), "--steps", str(args.steps),
        "--input-size", str(args.input_size), "--threads", str(args.threads),
    ]  # fmt: skip
    for run in args.runs:
        dataset, model = run.split(":")
        name = "mvtec_bottle" if dataset == "bottle" else dataset
        print(f"== {name} {model}", file=sys.stderr, flush=True)
        row = _child([*common, "--child", "train", name, model])
        if "error" not in row:
            row.update(_child([*common, "--child", "eval", name, model]))
        if "error" not in row and args.engine:
            row.update(_child([*common, "--child", "engine", name, model]))
        results[f"{name}:{model}"] = row
        results_file.write_text(json.dumps(results, indent=2, default=str))
        print(json.dumps(row, default=str), file=sys.stderr, flush=True)
    if args.large:
        for model in ("padim", "patchcore"):
            for overlap, backend in ((0.0, "torch"), (0.25, "torch"), (0.0, "openvino")):
                print(f"== 20MP {model} overlap {overlap} {backend}", file=sys.stderr, flush=True)
                row = _child([*common, "--child", "large", model, str(overlap), backend])
                results[f"20MP:{model}:overlap{overlap}:{backend}"] = row
                results_file.write_text(json.dumps(results, indent=2))
                print(json.dumps(row, default=str), file=sys.stderr, flush=True)

    cols = [
        ("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("au_pro", "AU-PRO"),
        ("region_recall", "region recall @<=1 FP/good img"), ("train_seconds", "train s"),
        ("ms_per_image", "ms/image"), ("ms_per_megapixel", "ms/MP"),
        ("train_peak_rss_mb", "train RSS MB"), ("peak_rss_mb", "infer RSS MB"),
        ("engine_ms_per_image", "Engine.predict ms/img"), ("speedup", "speed-up vs Engine"),
        ("onnx_ms_per_image", "ours ONNX ms/img"), ("speedup_onnx", "ONNX speed-up vs Engine"),
        ("openvino_ms_per_image", "ours OpenVINO ms/img"),
    ]  # fmt: skip
    print("| run | " + " | ".join(c[1] for c in cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for key, row in results.items():
        if key.startswith("20MP"):
            continue
        cells = (
            [row.get("error", "")[:60]] if "error" in row else [_fmt(row.get(c)) for c, _ in cols]
        )
        print(f"| {key} | " + " | ".join(cells) + " |")
    for key, row in results.items():
        if key.startswith("20MP"):
            print(f"{key}: " + json.dumps(row, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
