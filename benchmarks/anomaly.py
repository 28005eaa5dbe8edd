"""Anomaly engine benchmark: quality and speed on MVTec-layout datasets.

Each (dataset, model) pair trains in its own process on ``train/good`` and is evaluated in a
second fresh process on ``test/`` (so peak RSS is measured for training and inference apart).
Prints a Markdown table and writes every figure as JSON under ``--out``: image AUROC, pixel
AUROC, AU-PRO and region recall at <= 1 false region per good image each with its 95 %
percentile bootstrap interval over the test images (``intervals``; how each is resampled:
``workers.anomaly.evaluation.intervals``), and the test-set size (``images``; the pixel figures
are over the good images and the ``pixel_defect_images`` defect images with pixel masks).
A second table gives each defect type's figures (``by_type``: that type's images against every
good test image), so a whole set's figures cannot hide a kind of defect a model never finds.

    .venv/bin/python benchmarks/anomaly.py --datasets ../shared/datasets --out var/bench \
        --runs bottle:padim bottle:patchcore bottle:efficientad-random \
               bottle:efficientad-distilled magnetic_tile:padim magnetic_tile:patchcore \
               magnetic_tile:efficientad-distilled --steps 100 --large --engine

``--backbone lite1`` (or ``lite2``) trains PaDiM and PatchCore on that ImageNet
EfficientNet-Lite instead of Lite0; their rows are named ``padim-lite1`` and so on.

A model written ``padim@256+128`` is a multi-scale model (``TrainConfig.multiscale``): PaDiM
at 256 and at 128 px, maps fused by their mean (``padim@256+128-max``: by their maximum); the
largest size is the input size.

``--train-images N`` trains on a seeded random N of the normal images (rows ``padim-n30``, ...):
how the figures grow with the normal images a project has.

A model written ``patchcore+lines`` has the dark-line detector beside it
(``TrainConfig.lines``, workers/anomaly/models/lines.py).

``--shading S`` trains every model with the shading correction (``TrainConfig.shading``: each
image divided by its own blurred brightness, the blur S of its shorter side); rows
``patchcore-shading0.2`` and so on.

Without ``--out`` the models and the results file go to a temporary folder, removed at the
end (only the printed table stays); library caches go to ``$LOUPE_MODELS_DIR`` (default
``~/.cache/loupe/models``), never into the checkout.

``efficientad-distilled`` needs the teacher made by
``python -m workers.anomaly distill-teacher`` first (see docs/benchmarks-anomaly.md).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workers.anomaly.config import BACKBONE_MODELS  # noqa: E402  (no torch: the children import it)
from workers.memory import peak_rss_mb  # noqa: E402  (a child's own peak, not this driver's)


def _tag(model: str, backbone: str, train_images: int = 0, shading: float = 0.0) -> str:
    """A run's name: the model, with the backbone when it is not the default Lite0, the
    shading correction when it is on, and the number of normal images when ``--train-images``
    keeps a share of them."""
    if shading:
        return f"{_tag(model, backbone, train_images)}-shading{shading:g}"
    if train_images:
        return f"{_tag(model, backbone)}-n{train_images}"
    return (
        model
        if backbone == "lite0" or model.split("@")[0].removesuffix("+lines") not in BACKBONE_MODELS
        else f"{model}-{backbone}"
    )


def _config(  # noqa: ANN202
    model: str,
    steps: int,
    input_size: int,
    scale: float | None = None,
    backbone: str = "lite0",
    shading: float = 0.0,
):
    from workers.anomaly import TrainConfig

    if model.startswith("efficientad"):
        teacher = model.split("-", 1)[1]
        return TrainConfig(
            model="efficientad",
            input_size=input_size,
            steps=steps,
            teacher=teacher,
            scale=scale,
            shading=shading,
        )
    # --steps reaches every model that trains in steps (the autoencoder, STFPM); PaDiM and
    # PatchCore fit in one pass and ignore it
    extra: dict = {}
    if model.endswith("+lines"):  # patchcore+lines: the dark-line detector beside it
        model, extra["lines"] = model.removesuffix("+lines"), True
    if model.split("@")[0] in BACKBONE_MODELS:
        extra["backbone"] = backbone
    if "@" in model:  # multi-scale: padim@256+128 (maps fused by their mean), padim@256+128-max
        model, sizes = model.split("@")
        sizes, _, fusion = sizes.partition("-")
        multiscale = tuple(int(s) for s in sizes.split("+"))
        extra.update(multiscale=multiscale, **({"multiscale_fusion": fusion} if fusion else {}))
        input_size = max(multiscale)
    return TrainConfig(
        model=model, input_size=input_size, scale=scale, steps=steps, shading=shading, **extra
    )


def run_train(
    dataset: Path,
    model: str,
    out: Path,
    steps: int,
    input_size: int,
    scale: float | None = None,
    backbone: str = "lite0",
    train_images: int = 0,
    shading: float = 0.0,
) -> dict:
    from workers.anomaly import mvtec_train, train

    config = _config(model, steps, input_size, scale, backbone, shading)
    started = time.perf_counter()
    images = mvtec_train(dataset)
    if train_images:  # a seeded subset: how the figures grow with the normal images
        images = random.Random(0).sample(sorted(images), min(train_images, len(images)))
    result = train(config, images, out)
    return {
        "train_seconds": time.perf_counter() - started,
        "train_peak_rss_mb": peak_rss_mb(),
        **{f"train_{k}": v for k, v in result.metrics.items() if not isinstance(v, dict)},
    }


def run_eval(dataset: Path, model_dir: Path) -> dict:
    from workers.anomaly import evaluate, load_model, mvtec_test

    model = load_model(model_dir, backend="torch")  # the quality table is fp32 torch
    result = evaluate(model, mvtec_test(dataset))
    return result.metrics


def run_engine(dataset: Path, model_dir: Path, kind: str) -> dict:
    """anomalib's ``Engine.predict`` vs our ``predict`` on the same trained network and images.

    The network object is shared: anomalib's Lightning module gets our trained ``torch_model``.
    anomalib's visualiser is switched off (it would write images and look slower than it is).
    """
    import shutil
    import warnings

    warnings.filterwarnings("ignore")
    from anomalib.engine import Engine
    from anomalib.models import EfficientAd, Padim, Patchcore

    from workers.anomaly import (
        PredictConfig,
        evaluate,
        load_model,
        mvtec_test,
        mvtec_train,
        predict,
        predict_many,
    )
    from workers.anomaly.backbone import timm_backbone
    from workers.anomaly.models.padim import LAYERS as PADIM_LAYERS
    from workers.anomaly.models.patchcore import LAYERS as PATCHCORE_LAYERS

    loaded = load_model(model_dir, backend="torch")
    if kind == "padim":
        lm = Padim(
            backbone=timm_backbone(loaded.net.backbone), layers=list(PADIM_LAYERS), pre_trained=False,
            n_features=loaded.net.model.n_features, visualizer=False,
        )  # fmt: skip
    elif kind == "patchcore":
        lm = Patchcore(
            backbone=timm_backbone(loaded.net.backbone), layers=list(PATCHCORE_LAYERS),
            pre_trained=False, visualizer=False,
        )  # fmt: skip
    else:
        lm = EfficientAd(
            teacher_out_channels=loaded.net.model.teacher_out_channels,
            model_size=loaded.net.size, visualizer=False,
        )  # fmt: skip
    lm.model = loaded.net.model
    paths = [s.image for s in mvtec_test(dataset)]
    # Engine.predict reads one folder: a flat copy of the test set, removed even if it fails
    with tempfile.TemporaryDirectory(prefix="loupe-engine-") as tmp:
        folder = Path(tmp)
        for p in paths:
            shutil.copy(p, folder / f"{p.parent.name}_{p.name}")
        engine = Engine(
            accelerator="cpu", devices=1, logger=False, default_root_dir=str(folder / "r")
        )
        engine.predict(model=lm, data_path=str(folder), return_predictions=True)  # warm-up
        started = time.perf_counter()
        batches = engine.predict(model=lm, data_path=str(folder), return_predictions=True)
        engine_s = (time.perf_counter() - started) / sum(len(b.pred_score) for b in batches)
    row: dict = {"engine_ms_per_image": 1000 * engine_s, "images": len(paths)}

    def timed(name: str, model, many: bool, config=None) -> None:  # noqa: ANN001
        if many:
            list(predict_many(model, paths[:8], config))  # warm-up, batch shapes included
        else:
            predict(model, paths[0])
        cpu, started = time.process_time(), time.perf_counter()
        if many:
            list(predict_many(model, paths, config))
        else:
            for p in paths:
                predict(model, p)
        wall = (time.perf_counter() - started) / len(paths)
        row[f"{name}_ms_per_image"] = 1000 * wall
        row[f"{name}_cpu_ms_per_image"] = 1000 * (time.process_time() - cpu) / len(paths)
        row[f"speedup_{name}"] = engine_s / wall

    # "ours": predict() image by image on eager torch, then predict_many (read-ahead, batches)
    # on each runtime: the path the app's inspection job takes is predict_many on "auto"
    timed("ours", loaded, many=False)
    timed("many_torch", loaded, many=True)
    try:
        from workers.anomaly import export_onnx, export_openvino_int8

        export_onnx(model_dir)
        timed("many_onnx", load_model(model_dir, backend="onnx"), many=True)
        timed("many_openvino", load_model(model_dir, backend="openvino"), many=True)
        # the same at anomalib's output resolution: Engine's maps stay at the network's input
        # size, ours are interpolated to the image (up to 1024 px) before regions are extracted
        same_size = PredictConfig(heatmap_max_side=loaded.geometry.input_size)
        openvino = load_model(model_dir, backend="openvino")
        timed("many_openvino_input_size", openvino, many=True, config=same_size)
    except Exception as exc:  # noqa: BLE001 - report, do not lose the other figures
        row["onnx_error"] = str(exc)[:300]
    try:
        row["int8"] = export_openvino_int8(model_dir, mvtec_train(dataset))
        int8 = load_model(model_dir, backend="openvino-int8")
        timed("many_int8", int8, many=True)
        quality = evaluate(int8, mvtec_test(dataset)).metrics
        keys = ("image_auroc", "pixel_auroc", "au_pro", "region_recall")
        row["int8_quality"] = {k: quality[k] for k in keys}
    except Exception as exc:  # noqa: BLE001 - the export refuses models INT8 would damage
        row["int8_error"] = str(exc)[:300]
    return row


def run_large(
    dataset: Path,
    out: Path,
    model: str,
    overlap: float,
    backend: str = "torch",
    shading: float = 0.0,
) -> dict:
    """A ~20 MP mosaic of test images, heat-mapped at native scale (tiled, 256 px tiles);
    with ``shading``, the model corrects each image's shading first, and the correction of the
    mosaic alone is timed too (``shading_seconds``)."""
    import numpy as np

    from workers.anomaly import PredictConfig, TrainConfig, load_model, mvtec_train, predict
    from workers.anomaly.image_io import correct_shading, read_pixels

    model_dir = out / f"large_{_tag(model, 'lite0', 0, shading)}"
    if not (model_dir / "model.pt").is_file():
        config = TrainConfig(
            model=model, input_size=256, scale=1.0, max_memory_bank=5000, shading=shading
        )
        from workers.anomaly import train

        train(config, mvtec_train(dataset)[:8], model_dir)
    tiles = sorted((dataset / "test").glob("*/*.png"))
    rows = []
    for r in range(5):  # 5 x 5 mosaic; the test set may hold fewer than 25 images
        row = [read_pixels(tiles[(r * 5 + c) % len(tiles)]) for c in range(5)]
        rows.append(np.concatenate(row, axis=1))
    mosaic = np.concatenate(rows, axis=0)
    if backend != "torch":  # always re-export: an older export would be refused
        from workers.anomaly import export_onnx

        export_onnx(model_dir)
    loaded = load_model(model_dir, backend=backend)
    config = PredictConfig(batch_size=8, tile_overlap=overlap, allow_size_mismatch=True)
    predict(loaded, "warmup", config, image=mosaic[:900, :900])
    base = peak_rss_mb()
    started = time.perf_counter()
    pred = predict(loaded, "mosaic-20MP", config, image=mosaic)
    seconds = time.perf_counter() - started
    from workers.anomaly.tiling import tile_grid

    row = {
        "shading": shading,
        "megapixels": mosaic.shape[0] * mosaic.shape[1] / 1e6,
        "tiles": len(tile_grid(mosaic.shape[0], mosaic.shape[1], 256, round(overlap * 256))),
        "seconds": seconds,
        "overlap": overlap,
        "backend": loaded.backend,
        "regions": len(pred.regions),
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": base,
    }
    if shading:  # after the peak was read: the correction again, alone
        started = time.perf_counter()
        correct_shading(mosaic, shading)
        row["shading_seconds"] = time.perf_counter() - started
    return row


def _child(args: list[str]) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    out = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, env=env, check=False
    )
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _mean_mask_area(folder: Path) -> float | None:
    """The mean share of its image a defect type's masks cover (pixel AUROC pools pixels: a
    type of large defects weighs more in it than its image count says)."""
    import cv2

    shares = [float((cv2.imread(str(m), cv2.IMREAD_GRAYSCALE) >= 128).mean())
              for m in sorted(folder.glob("*.png"))]  # fmt: skip
    return sum(shares) / len(shares) if shares else None


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.0f}"
    return str(v)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=str(ROOT / ".." / "shared" / "datasets"))
    parser.add_argument(
        "--out",
        default=None,
        help="folder for the trained models and anomaly_results.json, kept (and merged into) "
        "for later runs; default: a temporary folder, removed at the end",
    )
    parser.add_argument("--runs", nargs="*", default=["bottle:padim", "bottle:patchcore"])
    parser.add_argument(
        "--steps",
        type=int,
        default=100,
        help="training steps (EfficientAD, the autoencoder, STFPM)",
    )
    parser.add_argument("--input-size", type=int, default=256)
    parser.add_argument(
        "--scale", type=float, default=None, help="tiled mode at this scale (default: whole image)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--backbone",
        default="lite0",
        choices=("lite0", "lite1", "lite2"),
        help="ImageNet EfficientNet-Lite of PaDiM and PatchCore (rows: padim-lite1, ...)",
    )
    parser.add_argument(
        "--train-images",
        type=int,
        default=0,
        help="train on this many of the normal images (a seeded subset; rows: padim-n30, ...); "
        "0: all of them",
    )
    parser.add_argument(
        "--shading",
        type=float,
        default=0.0,
        help="train with the shading correction, its blur this fraction of each image's "
        "shorter side (rows: patchcore-shading0.2, ...); 0: off",
    )
    parser.add_argument("--large", action="store_true", help="also time a 20 MP image")
    parser.add_argument("--engine", action="store_true", help="compare with Engine.predict")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    datasets = Path(args.datasets)
    if not args.child:
        if args.out:
            return run_all(args, datasets, Path(args.out))
        with tempfile.TemporaryDirectory(prefix="loupe-anomaly-bench-") as tmp:
            return run_all(args, datasets, Path(tmp))
    out = Path(args.out)  # the parent always passes its folder
    phase, *rest = args.child
    if phase == "train":
        dataset, model = rest
        res = run_train(
            datasets / dataset,
            model,
            out / f"{dataset}_{_tag(model, args.backbone, args.train_images, args.shading)}",
            args.steps,
            args.input_size,
            args.scale,
            args.backbone,
            args.train_images,
            args.shading,
        )
    elif phase == "eval":
        dataset, model = rest
        tag = _tag(model, args.backbone, args.train_images, args.shading)
        res = run_eval(datasets / dataset, out / f"{dataset}_{tag}")
    elif phase == "engine":
        dataset, model = rest
        kind = "efficientad" if model.startswith("efficientad") else model
        model_dir = out / f"{dataset}_{_tag(model, args.backbone, args.train_images, args.shading)}"
        res = run_engine(datasets / dataset, model_dir, kind)
    else:
        model, overlap, *backend = rest
        res = run_large(
            datasets / "mvtec_bottle",
            out,
            model,
            float(overlap),
            *(backend or ["torch"]),
            shading=args.shading,
        )
    print(json.dumps(res, default=str))
    return 0


def run_all(args: argparse.Namespace, datasets: Path, out: Path) -> int:
    """Every run in child processes (training and evaluation apart), then the table."""
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "anomaly_results.json"
    # merge with earlier runs into the same folder instead of overwriting them
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    common = [
        "--datasets", str(datasets), "--out", str(out), "--steps", str(args.steps),
        "--input-size", str(args.input_size), "--threads", str(args.threads),
        "--backbone", args.backbone, "--train-images", str(args.train_images),
        "--shading", str(args.shading),
        *(["--scale", str(args.scale)] if args.scale else []),
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
        results[f"{name}:{_tag(model, args.backbone, args.train_images, args.shading)}"] = row
        results_file.write_text(json.dumps(results, indent=2, default=str))
        print(json.dumps(row, default=str), file=sys.stderr, flush=True)
    if args.large:
        for model in ("padim", "patchcore"):
            for overlap, backend in ((0.0, "torch"), (0.25, "torch"), (0.0, "openvino")):
                print(f"== 20MP {model} overlap {overlap} {backend}", file=sys.stderr, flush=True)
                row = _child([*common, "--child", "large", model, str(overlap), backend])
                shaded = f":shading{args.shading:g}" if args.shading else ""
                results[f"20MP:{model}:overlap{overlap}:{backend}{shaded}"] = row
                results_file.write_text(json.dumps(results, indent=2))
                print(json.dumps(row, default=str), file=sys.stderr, flush=True)

    cols = [
        ("images", "test images"), ("pixel_defect_images", "defect images with pixel masks"),
        ("image_auroc", "image AUROC"), ("ci_image_auroc", "95 % CI"),
        ("pixel_auroc", "pixel AUROC"), ("ci_pixel_auroc", "95 % CI"),
        ("au_pro", "AU-PRO"), ("ci_au_pro", "95 % CI"),
        ("region_recall", "region recall @<=1 FP/good img"), ("ci_region_recall", "95 % CI"),
        ("recall_at_threshold", "recall as suggested"), ("ci_recall_at_threshold", "95 % CI"),
        ("false_per_good_image_at_threshold", "false/good img as suggested"),
        ("train_seconds", "train s"),
        ("ms_per_image", "ms/image"), ("ms_per_megapixel", "ms/MP"),
        ("train_peak_rss_mb", "train RSS MB"), ("peak_rss_mb", "infer RSS MB"),
        ("engine_ms_per_image", "Engine.predict ms/img"), ("ours_ms_per_image", "ours torch"),
        ("many_openvino_ms_per_image", "many OpenVINO"), ("many_int8_ms_per_image", "many INT8"),
        ("speedup_many_openvino", "x OpenVINO"), ("speedup_many_int8", "x INT8"),
    ]  # fmt: skip
    print("| run | " + " | ".join(c[1] for c in cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for key, row in results.items():
        if key.startswith("20MP"):
            continue
        for name, ci in (row.get("intervals") or {}).items():  # bootstrap over the test images
            row[f"ci_{name}"] = f"{ci[0]:.3f}–{ci[1]:.3f}" if ci else None
        cells = (
            [row.get("error", "")[:60]] if "error" in row else [_fmt(row.get(c)) for c, _ in cols]
        )
        print(f"| {key} | " + " | ".join(cells) + " |")
    print()
    print("Per defect type (its images against every good test image; region recall at the whole")
    print("set's cut of <= 1 false region per good image):")
    print(
        "| run | type | images | mean defect area, share of the image | image AUROC | "
        "pixel AUROC | AU-PRO | regions | region recall |"
    )
    print("|---" * 9 + "|")
    for key, row in results.items():
        for kind, f in (row.get("by_type") or {}).items():
            area = _mean_mask_area(datasets / key.split(":")[0] / "ground_truth" / kind)
            cells = [_fmt(area)] + [
                _fmt(f.get(c)) for c in ("image_auroc", "pixel_auroc", "au_pro")
            ]
            cells += [_fmt(f.get("regions")), _fmt(f.get("region_recall"))]
            print(f"| {key} | {kind} | {f['images']} | " + " | ".join(cells) + " |")
    for key, row in results.items():
        if key.startswith("20MP"):
            print(f"{key}: " + json.dumps(row, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
