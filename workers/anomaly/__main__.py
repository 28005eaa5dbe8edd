"""Command line: ``python -m workers.anomaly train|predict|evaluate|export|distill-teacher``.

Examples::

    python -m workers.anomaly distill-teacher --images data/train/good --steps 500
    python -m workers.anomaly train --images data/train/good --out models/bottle
    python -m workers.anomaly predict --model models/bottle --out pred data/test/*
    python -m workers.anomaly evaluate --model models/bottle --dataset data
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from . import models
from .config import BACKBONES, BACKENDS
from .errors import AnomalyError


def _images(items: list[str]) -> list[Path]:
    from .datasets import IMAGE_EXTS

    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_EXTS)
        else:
            out.append(p)
    return out


def _output_names(items: list[str], images: list[Path]) -> list[Path]:
    """Where each image's results go under ``--out``, without its suffix: its path relative to
    the common parent of the inputs (a folder given counts as itself, a file as its folder), so
    ``test/good/000.png`` and ``test/hole/000.png`` become ``good/000`` and ``hole/000`` instead
    of overwriting each other."""
    if not images:
        return []
    roots = [os.path.abspath(p if Path(p).is_dir() else Path(p).parent) for p in items]
    common = Path(os.path.commonpath(roots))
    return [Path(os.path.abspath(p)).relative_to(common).with_suffix("") for p in images]


def _printer(quiet: bool):  # noqa: ANN202
    last = [0.0]

    def progress(fraction: float, message: str) -> None:
        now = time.monotonic()
        if not quiet and (now - last[0] > 2 or fraction >= 1):
            last[0] = now
            print(f"[{fraction * 100:5.1f}%] {message}", file=sys.stderr, flush=True)

    return progress


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (2 for engine errors)."""
    parser = argparse.ArgumentParser(
        prog="python -m workers.anomaly",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quiet", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model on defect-free images")
    t.add_argument("--images", nargs="+", required=True, help="image files or folders")
    t.add_argument("--out", required=True, help="output folder for model.pt")
    # Unset options keep recommended_config's values (the default for the hardware).
    t.add_argument(
        "--model",
        default=None,
        choices=models.names(),
        help="default: what the device can train (EfficientAD on a GPU, PaDiM on CPU)",
    )
    t.add_argument("--input-size", type=int, default=None, help="default 256")
    t.add_argument("--scale", type=float, default=None, help="tiled mode scale (omit: whole)")
    # steps, batch size and learning rate: unset, each model's own (ModelSpec.train_defaults)
    t.add_argument(
        "--steps", type=int, default=None, help="models trained in steps (default: the model's)"
    )
    t.add_argument("--batch-size", type=int, default=None, help="default: the model's")
    t.add_argument("--learning-rate", type=float, default=None, help="default: the model's")
    t.add_argument("--teacher", default=None, help="auto|official|distilled|random|<file>")
    t.add_argument("--size", default=None, choices=["small", "medium"])
    t.add_argument("--patience", type=int, default=None)
    t.add_argument("--max-seconds", type=float, default=None)
    t.add_argument("--penalty-dir", default=None)
    t.add_argument("--overlap", type=float, default=None, help="tile overlap (default 0.25)")
    t.add_argument("--coarse-pass", action="store_true", help="add a whole-image pass (tiled)")
    t.add_argument(
        "--lines", action="store_true", help="add the dark-line detector beside the model"
    )
    t.add_argument(
        "--backbone",
        default=None,
        choices=BACKBONES,
        help="PaDiM/PatchCore (fine) only; default lite0",
    )
    t.add_argument(
        "--multiscale",
        default=None,
        type=lambda text: tuple(int(n) for n in text.split(",")),
        help="input sizes fused into one model, e.g. 256,128 (the first is --input-size)",
    )
    t.add_argument("--multiscale-fusion", default=None, choices=["mean", "max"])
    t.add_argument(
        "--shading",
        type=float,
        default=None,
        help="correct each image's lighting first: the blur as a fraction of its shorter side "
        "(e.g. 0.2; default 0, off)",
    )

    p = sub.add_parser("predict", help="heatmaps and regions for images")
    p.add_argument("--model", required=True, help="model.pt or its folder")
    p.add_argument(
        "--out",
        required=True,
        help="folder for <name>.json and <name>_heatmap.png, <name> being the image's path "
        "relative to the common parent of the inputs (sub-folders are made)",
    )
    p.add_argument(
        "--float-maps",
        action="store_true",
        help="also write <name>_heatmap.npy: the float32 calibrated map, uncapped, for scoring "
        "(the PNG is for display: 8-bit, capped at twice the threshold)",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--peak-memory",
        action="store_true",
        help='last, print {"peak_rss_mb": ...}: this process\'s peak resident memory, loading '
        "the model and predicting included (what a worker or station needs to run it)",
    )
    p.add_argument("--specular-mask", action="store_true")
    p.add_argument("--allow-size-mismatch", action="store_true")
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("images", nargs="+")

    e = sub.add_parser("evaluate", help="metrics on an MVTec-layout test set")
    e.add_argument("--model", required=True)
    e.add_argument("--dataset", required=True, help="folder with test/ and ground_truth/")
    e.add_argument("--batch-size", type=int, default=8)

    x = sub.add_parser("export", help="write model.onnx (and model_int8.xml) next to the model")
    x.add_argument("--model", required=True)
    x.add_argument("--int8", action="store_true", help="also NNCF INT8 for OpenVINO")
    x.add_argument("--images", nargs="*", help="normal images or folders calibrating INT8")

    d = sub.add_parser("distill-teacher", help="make the EfficientAD teacher offline")
    d.add_argument("--images", nargs="+", required=True)
    d.add_argument("--out", default=None, help="default: where training looks for it")
    d.add_argument("--size", default="small", choices=["small", "medium"])
    d.add_argument("--steps", type=int, default=2000)
    d.add_argument("--batch-size", type=int, default=8)
    d.add_argument("--crop-size", type=int, default=128)

    args = parser.parse_args(argv)
    from .offline import configure_offline

    configure_offline()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    progress = _printer(args.quiet)
    try:
        if args.command == "train":
            from dataclasses import replace

            from .config import RECOMMENDED_BECAUSE, TrainConfig, recommended_config, resolve_device
            from .training import train

            given = {
                "input_size": args.input_size,
                "scale": args.scale,
                "efficientad_size": args.size,
                "teacher": args.teacher,
                "steps": args.steps,
                "batch_size": args.batch_size,
                "learning_rate": args.learning_rate,
                "patience": args.patience,
                "max_seconds": args.max_seconds,
                "penalty_dir": args.penalty_dir,
                "tile_overlap": args.overlap,
                "coarse_pass": args.coarse_pass or None,
                "lines": args.lines or None,
                "backbone": args.backbone,
                "multiscale": args.multiscale,
                "multiscale_fusion": args.multiscale_fusion,
                "shading": args.shading,
            }
            given = {k: v for k, v in given.items() if v is not None}
            if args.model is None:
                config = recommended_config(args.device, **given)
                kind = resolve_device(args.device).type
                because = RECOMMENDED_BECAUSE.get(kind, RECOMMENDED_BECAUSE["cpu"])
                print(
                    f"model: {config.model} (no --model given; training on {kind}: {because})",
                    file=sys.stderr,
                )
            else:
                config = replace(TrainConfig(model=args.model, device=args.device), **given)
            result = train(config, _images(args.images), args.out, progress)
            print(json.dumps(result.to_dict(), indent=2, default=str))
        elif args.command == "predict":
            from .artifact import load_model
            from .config import PredictConfig
            from .pipeline import predict_many

            model = load_model(args.model, args.device, args.backend)
            config = PredictConfig(
                batch_size=args.batch_size,
                specular_mask=args.specular_mask,
                allow_size_mismatch=args.allow_size_mismatch,
                device=args.device,
            )
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            images = _images(args.images)
            names = dict(zip(map(str, images), _output_names(args.images, images), strict=True))
            failed = 0
            for name, pred in predict_many(model, images, config, progress):
                if isinstance(pred, AnomalyError):  # one bad image fails alone
                    failed += 1
                    print(f"error: {pred}", file=sys.stderr)
                    continue
                base = out / names[str(name)]
                base.parent.mkdir(parents=True, exist_ok=True)
                pred.save_heatmap(base.with_name(f"{base.name}_heatmap.png"))
                if args.float_maps:
                    pred.save_score_map(base.with_name(f"{base.name}_heatmap.npy"))
                result = base.with_name(f"{base.name}.json")
                result.write_text(json.dumps(pred.to_dict(), indent=2))
                print(
                    json.dumps(
                        {
                            "image": str(name),
                            "result": str(result),
                            "score": pred.image_score,
                            "regions": len(pred.regions),
                        }
                    )
                )
            if args.peak_memory:
                from ..memory import peak_rss_mb

                print(json.dumps({"peak_rss_mb": round(peak_rss_mb(), 1)}))
            return 1 if failed else 0
        elif args.command == "evaluate":
            from .config import PredictConfig
            from .datasets import mvtec_test
            from .evaluation import evaluate

            config = PredictConfig(batch_size=args.batch_size, device=args.device)
            result = evaluate(args.model, mvtec_test(args.dataset), config, progress)
            print(json.dumps(result.metrics, indent=2))
        elif args.command == "export":
            from .export import export_onnx, export_openvino_int8

            result = {"onnx": str(export_onnx(args.model))}
            if args.int8:
                if not args.images:
                    parser.error("--int8 needs --images (normal images to calibrate with)")
                result["int8"] = export_openvino_int8(args.model, _images(args.images))
            print(json.dumps(result, indent=2))
        elif args.command == "distill-teacher":
            from .teacher import distill_teacher

            info = distill_teacher(
                _images(args.images),
                args.out,
                size=args.size,
                steps=args.steps,
                batch_size=args.batch_size,
                crop_size=args.crop_size,
                device=args.device,
                progress=progress,
            )
            print(json.dumps(info, indent=2))
    except AnomalyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
