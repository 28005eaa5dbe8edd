"""Command line: ``python -m workers.detection train|evaluate|predict|convert|export-onnx``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):  # per_class_ap50
        return {k: _rounded(v) for k, v in value.items()}
    return value


def _progress(fraction: float, message: str, metrics: dict[str, Any] | None) -> None:
    line = f"[{fraction * 100:5.1f}%] {message}"
    if metrics:
        line += f" {json.dumps(_rounded(metrics))}"
    print(line, flush=True)


def _model_config(args: argparse.Namespace, num_classes: int | None) -> Any:
    """The preset or ``--config`` model; ``num_classes`` None keeps the config's own class
    count (a preset without a count gets COCO's 80, what official weights have)."""
    from .config import ModelConfig

    overrides: dict[str, Any] = {}
    if getattr(args, "eval_size", None):
        overrides["eval_size"] = args.eval_size
    if getattr(args, "siamese", False):
        overrides["reference"] = "siamese"
    if getattr(args, "stacked", False):
        overrides["reference"] = "stacked"
    if args.config:
        if num_classes is not None:
            overrides["num_classes"] = num_classes
        return ModelConfig.from_ppdet_yaml(args.config, **overrides)
    presets = {"s": ModelConfig.sod_s, "l": ModelConfig.sod_l, "lite0": ModelConfig.lite0}
    return presets[args.model](80 if num_classes is None else num_classes, **overrides)


def cmd_train(args: argparse.Namespace) -> int:
    from .config import TrainConfig
    from .data import CocoDetectionDataset
    from .trainer import train

    split = args.split
    image_filter = (lambda img: img.get("official_split") == split) if split else None
    ds = CocoDetectionDataset(args.coco, args.images, image_filter=image_filter)
    mcfg = _model_config(args, len(ds.categories))
    tcfg = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        base_lr=args.lr,
        device=args.device,
        max_iters_per_epoch=args.max_iters,
        crop_size=args.crop_size,
        num_threads=args.threads,
        pretrained=args.pretrained,
        seed=args.seed,
    )
    result = train(
        args.coco,
        args.output,
        image_root=args.images,
        model_config=mcfg,
        train_config=tcfg,
        image_filter=image_filter,
        progress=_progress,
        val_json=args.val_coco,
        val_image_root=args.images,
        val_filter=(lambda img: img.get("official_split") == args.val_split)
        if args.val_split
        else None,
        eval_every=args.eval_every,
        checkpoint=args.checkpoint,
        reference_root=args.references,
        val_reference_root=args.references,
    )
    print(json.dumps({"artifact": str(result.artifact), "seconds": round(result.seconds, 1)}))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate
    from .runtimes import load_detector

    split = args.split
    image_filter = (lambda img: img.get("official_split") == split) if split else None
    det = load_detector(args.model, args.runtime, device=args.device)
    res = evaluate(
        det,
        args.coco,
        image_root=args.images,
        image_filter=image_filter,
        slice_size=args.slice_size,
        overlap=args.overlap,
        batch_size=args.batch_size,
        reference_root=args.references,
    )
    print(
        json.dumps(
            {
                "mAP": round(res.map, 4),
                "mAP50": round(res.map50, 4),
                "AP_small": round(res.ap_small, 4),
                "images": res.num_images,
                "ms_per_image": round(res.ms_per_image, 1),
                "per_class_AP50": {k: round(v, 4) for k, v in res.per_class_ap50.items()},
            }
        )
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .errors import DetectionError
    from .runtimes import load_detector

    references = args.reference or [None] * len(args.images)
    if len(references) != len(args.images):
        raise DetectionError(
            f"{len(args.images)} images but {len(references)} --reference files: one per image"
        )
    det = load_detector(args.model, args.runtime, device=args.device)
    for image, reference in zip(args.images, references, strict=True):
        dets = det.predict_sliced(
            image,
            slice_size=args.slice_size,
            overlap=args.overlap,
            score_threshold=args.score,
            batch_size=args.batch_size,
            reference=reference,
        )
        print(
            json.dumps(
                {
                    "image": image,
                    "detections": [
                        {
                            "bbox_xyxy": [round(v, 1) for v in (d.x1, d.y1, d.x2, d.y2)],
                            "score": round(d.score, 4),
                            "category_id": d.category_id,
                            "category": d.category_name,
                        }
                        for d in dets
                    ],
                }
            )
        )
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .convert import convert_pdparams

    names = args.categories.split(",") if args.categories else None
    num_classes = len(names) if names else args.num_classes
    mcfg = _model_config(args, num_classes)
    rep = convert_pdparams(args.pdparams, args.output, mcfg, names, strict=not args.lenient)
    print(
        json.dumps(
            {
                "output": args.output,
                "loaded": rep.loaded,
                "transposed": len(rep.transposed),
                "missing": rep.missing,
                "unexpected": rep.unexpected,
                "mismatched": rep.mismatched,
            }
        )
    )
    return 0


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from .onnx_export import export_onnx

    print(export_onnx(args.model, args.output, size=args.size))
    return 0


def cmd_check_int8(args: argparse.Namespace) -> int:
    from .quantize import check_int8

    result = check_int8(
        args.model,
        args.coco,
        image_root=args.images,
        calibration_json=args.calibration_coco,
        calibration_root=args.calibration_images,
        slice_size=args.slice_size,
        overlap=args.overlap,
        tolerance=args.tolerance,
        threads=args.threads,
        progress=lambda message: print(message, file=sys.stderr),
        reference_root=args.references,
        calibration_reference_root=args.calibration_references,
    )
    print(json.dumps(result))
    return 0 if result["passed"] else 1


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    p = argparse.ArgumentParser(prog="python -m workers.detection", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def model_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--model", choices=["s", "l", "lite0"], default="s", help="preset")
        sp.add_argument("--config", help="PaddleDetection PP-YOLOE yml (overrides --model)")
        sp.add_argument("--eval-size", type=int, default=None, help="inference input size")

    def runtime_opt(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--runtime",
            choices=["torch", "onnx", "auto"],
            default="torch",
            help="onnx/auto (CPU): ONNX Runtime, exporting <model>.<size>.onnx next to the "
            "model on first use",
        )

    t = sub.add_parser("train", help="train on a COCO JSON file")
    t.add_argument("coco")
    t.add_argument("--images", help="image root (default: the JSON's folder)")
    t.add_argument("--output", required=True)
    t.add_argument("--split", help="keep images whose 'official_split' equals this")
    t.add_argument("--epochs", type=int, default=80)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--lr", type=float, default=0.01, help="base lr for batch 8")
    t.add_argument("--max-iters", type=int, default=None, help="cap iterations per epoch")
    t.add_argument("--crop-size", type=int, default=None, help="random crops of large images")
    t.add_argument("--val-coco", help="COCO JSON to evaluate on during training")
    t.add_argument("--val-split", help="keep validation images whose 'official_split' is this")
    t.add_argument("--eval-every", type=int, default=5, help="epochs between evaluations")
    t.add_argument("--pretrained", help="artifact or converted weights to start from")
    t.add_argument("--device", default=None)
    t.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument(
        "--checkpoint",
        help="write a checkpoint here after every epoch; if it exists, continue from it",
    )
    pair = t.add_mutually_exclusive_group()
    pair.add_argument(
        "--siamese",
        action="store_true",
        help="Siamese detector: each image with its reference (COCO image field "
        "'reference_file_name' or 'template_file_name')",
    )
    pair.add_argument(
        "--stacked",
        action="store_true",
        help="stacked detector: the image's grey, its reference's grey and their difference "
        "as the input channels (references as for --siamese)",
    )
    t.add_argument("--references", help="root of the reference files (default: --images)")
    model_opts(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="COCO mAP with sliced inference")
    e.add_argument("model")
    e.add_argument("coco")
    e.add_argument("--images")
    e.add_argument("--split")
    e.add_argument(
        "--slice-size", type=int, default=None, help="default: the slices it was trained on"
    )
    e.add_argument("--overlap", type=float, default=0.25)
    e.add_argument("--batch-size", type=int, default=4)
    e.add_argument("--device", default=None)
    e.add_argument("--references", help="root of a Siamese model's references (default: --images)")
    runtime_opt(e)
    e.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser("predict", help="sliced prediction, JSON lines on stdout")
    pr.add_argument("model")
    pr.add_argument("images", nargs="+")
    pr.add_argument(
        "--slice-size", type=int, default=None, help="default: the slices it was trained on"
    )
    pr.add_argument("--overlap", type=float, default=0.25)
    pr.add_argument("--score", type=float, default=0.25)
    pr.add_argument("--batch-size", type=int, default=4)
    pr.add_argument("--device", default=None)
    pr.add_argument(
        "--reference",
        nargs="+",
        help="a Siamese model's reference images, one per image, aligned to it, in order",
    )
    runtime_opt(pr)
    pr.set_defaults(func=cmd_predict)

    c = sub.add_parser("convert", help="PaddleDetection .pdparams -> Loupe artifact")
    c.add_argument("pdparams")
    c.add_argument("output")
    c.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="class count of the weights (default: the --config's num_classes, else 80)",
    )
    c.add_argument("--categories", help="comma-separated class names (sets the class count)")
    c.add_argument("--lenient", action="store_true", help="skip unmatched tensors")
    model_opts(c)
    c.set_defaults(func=cmd_convert)

    x = sub.add_parser("export-onnx", help="artifact -> ONNX (no NMS inside)")
    x.add_argument("model")
    x.add_argument("output")
    x.add_argument("--size", type=int, default=None)
    x.set_defaults(func=cmd_export_onnx)

    q = sub.add_parser(
        "check-int8",
        help="quantize the ONNX export to INT8 and keep it beside the model only if its mAP50 "
        "on held-out images is within --tolerance of fp32 and it is faster (exit 1 if not)",
    )
    q.add_argument("model")
    q.add_argument("coco", help="held-out COCO JSON to judge on (the val split)")
    q.add_argument("--images", help="image root of COCO (default: the JSON's folder)")
    q.add_argument("--calibration-coco", help="COCO JSON of calibration images (training split)")
    q.add_argument("--calibration-images", help="image root of --calibration-coco")
    q.add_argument(
        "--slice-size", type=int, default=None, help="slices as predicted (default: whole)"
    )
    q.add_argument("--overlap", type=float, default=0.25)
    q.add_argument("--tolerance", type=float, default=0.01, help="mAP50 INT8 may lose")
    q.add_argument("--threads", type=int, default=None)
    q.add_argument("--references", help="a Siamese model's reference root for COCO")
    q.add_argument("--calibration-references", help="reference root of --calibration-coco")
    q.set_defaults(func=cmd_check_int8)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; errors meant for people are printed without a traceback."""
    from .errors import DetectionError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (DetectionError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
