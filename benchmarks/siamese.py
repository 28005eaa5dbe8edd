"""The Siamese detector against the single-image one on DeepPCB: the same recipe and budget for
both (lite0 ImageNet backbone, input size, epochs, batch, seed), trained on the official
trainval split (the Siamese one with each image's defect-free template as its reference),
evaluated on the official test split (mAP50, mAP, AP_small, per-category AP50, and where the
errors are: class-agnostic mAP50 / mAP, the share of defects found at IoU 0.5 and the share of
those given the right category). Prints a table; ``--json`` writes the figures. Not a test.
Figures: docs/benchmarks-detection.md, section 4.

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE nice -n 10 .venv/bin/python benchmarks/siamese.py \\
        --epochs 8 --minutes 25 --json var/bench-siamese/results.json

``--minutes`` caps each model's training (validation excluded): a run past it stops at the end
of that epoch and is evaluated from the epoch's EMA weights (the table says so), so a slow
model is never given more time than the budget. ``--eval-every k`` adds test-split figures every
k epochs (a learning curve; it costs time and is not used to pick anything).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class BudgetSpent(Exception):
    """Raised from the progress callback at the end of the epoch that used up the budget."""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--datasets", default=os.environ.get("LOUPE_DATASETS", ROOT.parent / "shared" / "datasets")
    )
    p.add_argument(
        "--models",
        nargs="+",
        default=["single", "siamese"],
        choices=["single", "siamese", "stacked"],
    )
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--input-size", type=int, default=416, help="network input (eval_size)")
    p.add_argument(
        "--train-sizes",
        default=None,
        help="comma-separated multi-scale sizes (default: half to 1.2x the input size)",
    )
    p.add_argument(
        "--slice",
        action="store_true",
        help="train on input-size crops at full resolution and evaluate on input-size slices "
        "(default: whole 640 px images resized to the input size)",
    )
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.01, help="for batch 8 (scaled linearly)")
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--minutes", type=float, default=None, help="training budget per model")
    p.add_argument("--eval-every", type=int, default=0, help="test figures every k epochs")
    p.add_argument("--max-iters", type=int, default=None, help="cap per epoch (smoke runs)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--rotate",
        action="store_true",
        help="train with quarter turns and vertical flips too (TrainConfig.rotate)",
    )
    p.add_argument(
        "--reference-swap",
        type=float,
        default=0.0,
        help="probability that a training image gets half its defects replaced by its "
        "template's pixels (TrainConfig.reference_swap)",
    )
    p.add_argument(
        "--reference-transplant",
        type=float,
        default=0.0,
        help="probability that a training image gets up to three of its defects copied to "
        "places where its template shows the same pattern (TrainConfig.reference_transplant)",
    )
    p.add_argument(
        "--aligned",
        action="store_true",
        help="register every template onto its image first, as the app's reference job does "
        "(benchmarks/two_stage_boxes.py aligned_copy), and train and judge with those",
    )
    p.add_argument("--out", default=str(ROOT / "var" / "bench-siamese"))
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from workers.detection import train_sizes_around

    root = Path(args.datasets) / "deeppcb"
    ann = root / "annotations.json"
    if not ann.is_file():
        print(f"DeepPCB not found at {root}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = (
        tuple(int(s) for s in args.train_sizes.split(","))
        if args.train_sizes
        else train_sizes_around(args.input_size)
    )

    ann_file = None
    if args.aligned:
        from benchmarks.two_stage_boxes import aligned_copy

        ann_file = aligned_copy(root, json.loads(ann.read_text()), out / "aligned-templates")

    rows = []
    for name in args.models:
        row = train_detector(
            name,
            root=root,
            ann=ann_file,
            out=out,
            epochs=args.epochs,
            input_size=args.input_size,
            train_sizes=sizes,
            slice=args.slice,
            batch_size=args.batch_size,
            lr=args.lr,
            warmup_epochs=args.warmup_epochs,
            minutes=args.minutes,
            eval_every=args.eval_every,
            max_iters=args.max_iters,
            device=args.device,
            seed=args.seed,
            rotate=args.rotate,
            reference_swap=args.reference_swap,
            reference_transplant=args.reference_transplant,
        )
        row.pop("artifact")
        rows.append(row)
        print(json.dumps(row), flush=True)

    print(
        f"\nDeepPCB official split (trainval 150 -> test 57), lite0, input {args.input_size}, "
        f"train sizes {sizes[0]}..{sizes[-1]}, {'416 px crops/slices' if args.slice else 'whole images'}"
        f"{', quarter turns and vertical flips' if args.rotate else ''}"
        f"{', templates aligned' if args.aligned else ''}"
        f"{f', defects swapped for the template p={args.reference_swap}' if args.reference_swap else ''}"
        f"{f', defects transplanted p={args.reference_transplant}' if args.reference_transplant else ''}"
        f", batch {args.batch_size}, lr {args.lr} for batch 8; CPU: "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
        f"{args.threads}, torch {torch.__version__}, device {args.device}"
    )
    print(
        "| model | epochs | train min | s/epoch | mAP50 | mAP | AP_small | class-agnostic "
        "mAP50 / mAP | found | right class | ms/image | "
        + " | ".join(rows[0]["per_class_ap50"])
        + " |"
    )
    print("|---" * (11 + len(rows[0]["per_class_ap50"])) + "|")
    for r in rows:
        ep = f"{r['epochs']}" + (" (budget)" if r["stopped_by_budget"] else "")
        print(
            f"| {r['model']} | {ep} | {r['train_min']} | {r['s_per_epoch']} | {r['map50']:.3f} "
            f"| {r['map']:.3f} | {r['ap_small']:.3f} | {r['agnostic_map50']:.3f} / "
            f"{r['agnostic_map']:.3f} | {r['recall']:.3f} | {r['class_right']:.3f} | "
            f"{r['ms_per_image']:.0f} | "
            + " | ".join(f"{v:.3f}" for v in r["per_class_ap50"].values())
            + " |"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps({"args": vars(args), "rows": rows}, indent=2, default=str)
        )
    return 0


def trainval(img: dict) -> bool:
    return img.get("official_split") == "trainval"


def test(img: dict) -> bool:
    return img.get("official_split") == "test"


def train_detector(
    name: str,
    *,
    root: Path,
    out: Path,
    epochs: int,
    ann: Path | None = None,
    input_size: int = 416,
    train_sizes: tuple[int, ...] | None = None,
    slice: bool = False,
    batch_size: int = 4,
    lr: float = 0.01,
    warmup_epochs: float = 1.0,
    minutes: float | None = None,
    eval_every: int = 0,
    max_iters: int | None = None,
    device: str = "cpu",
    seed: int = 0,
    rotate: bool = False,
    reference_swap: float = 0.0,
    reference_transplant: float = 0.0,
    train_filter: Any = trainval,
    test_filter: Any = test,
    log: Any = None,
    networks: int = 1,
) -> dict:
    """Train one model of the comparison ("single", "siamese" or "stacked") on DeepPCB's ``root`` (images
    kept by ``train_filter``, default the official trainval split) and evaluate it on
    ``test_filter``'s images (default the official test split); ``ann`` replaces the dataset's
    COCO file (aligned templates, ``--aligned``). ``minutes`` caps the training
    (validation excluded): a run past it stops at the end of that epoch and is evaluated from
    the epoch's EMA weights. Returns the figures as a row (``artifact``: the weights' path)."""
    from workers.detection import ModelConfig, TrainConfig, train, train_sizes_around

    log = log or (lambda message: print(message, flush=True))
    if name == "two-stage":
        return _train_two_stage(
            root=root,
            out=out,
            epochs=epochs,
            minutes=minutes,
            seed=seed,
            eval_every=eval_every,
            train_filter=train_filter,
            test_filter=test_filter,
            log=log,
            networks=networks,
        )
    ann = ann or root / "annotations.json"
    out.mkdir(parents=True, exist_ok=True)
    sizes = tuple(train_sizes) if train_sizes else train_sizes_around(input_size)
    eval_slice = input_size if slice else 640
    mcfg = ModelConfig.lite0(
        num_classes=6,
        eval_size=input_size,
        reference=name if name in ("siamese", "stacked") else "none",
    )
    tcfg = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        base_lr=lr,
        warmup_epochs=warmup_epochs,
        train_sizes=sizes,
        crop_size=input_size if slice else None,
        seed=seed,
        rotate=rotate,
        reference_swap=reference_swap,
        reference_transplant=reference_transplant,
        device=device,
        max_iters_per_epoch=max_iters,
        log_every=10,
    )
    artifact = out / f"deeppcb-{name}.pt"
    ckpt = out / f"deeppcb-{name}.ckpt"
    ckpt.unlink(missing_ok=True)
    trained_s = [0.0]
    curve: list[dict[str, Any]] = []

    def progress(fraction: float, message: str, metrics: dict | None) -> None:
        extra = ""
        if metrics:
            trained_s[0] += metrics["seconds"]
            keep = ("epoch", "loss", "loss_cls", "loss_iou", "lr", "seconds", "map50", "map")
            shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
            extra = " " + json.dumps({k: shown[k] for k in keep if k in shown})
            if "map50" in metrics:
                curve.append(
                    {
                        "epoch": metrics["epoch"],
                        "map50": round(metrics["map50"], 4),
                        "map": round(metrics["map"], 4),
                    }
                )
        log(f"[{name} {fraction * 100:5.1f}%] {message}{extra}")
        if metrics and minutes and trained_s[0] > 60 * minutes:
            if metrics["epoch"] < epochs:
                raise BudgetSpent(metrics["epoch"])

    t0 = time.time()
    stopped_at = None
    try:
        result = train(
            ann,
            artifact,
            image_root=root,
            model_config=mcfg,
            train_config=tcfg,
            image_filter=train_filter,
            progress=progress,
            val_json=ann if eval_every else None,
            val_filter=test_filter,
            eval_every=eval_every or 1,
            eval_slice_size=eval_slice,
            checkpoint=ckpt,
        )
        history = result.history
    except BudgetSpent as spent:
        stopped_at = int(spent.args[0])
        history = _artifact_from_checkpoint(ckpt, artifact, mcfg, ann)
    wall_s = time.time() - t0
    row = _evaluate(artifact, ann, root, test_filter, eval_slice, device)
    return _with_training(
        row, name, history, epochs, stopped_at, trained_s[0], wall_s, curve, artifact
    )


def _with_training(row, name, history, epochs, stopped_at, trained_s, wall_s, curve, artifact):
    """A test row with how its model was trained (epochs, budget, minutes, loss curve)."""
    row.update(
        {
            "model": name,
            "epochs": len(history),
            "epochs_planned": epochs,
            "stopped_by_budget": stopped_at is not None,
            "train_min": round(trained_s / 60, 1),
            "wall_min": round(wall_s / 60, 1),
            "s_per_epoch": round(trained_s / max(1, len(history)), 1),
            "final_loss": round(history[-1]["loss"], 3),
            "curve": curve,
            "artifact": str(artifact),
        }
    )
    return row


def _train_two_stage(
    *, root, out, epochs, minutes, seed, eval_every, train_filter, test_filter, log, networks=1
) -> dict:
    """``workers.detection.two_stage`` (the changed pixels propose, a pair classifier names and
    places) trained on the same pairs with the same budget; figures as ``train_detector``'s."""
    from workers.detection import two_stage

    ann = root / "annotations.json"
    out.mkdir(parents=True, exist_ok=True)
    artifact, ckpt = out / "deeppcb-two-stage.pt", out / "deeppcb-two-stage.ckpt"
    ckpt.unlink(missing_ok=True)
    config = two_stage.PairConfig(epochs=epochs, seed=seed, networks=networks)
    trained_s, curve = [0.0], []

    def progress(fraction: float, message: str, metrics: dict | None) -> None:
        if not metrics:
            return
        trained_s[0] += metrics["seconds"]
        keep = ("epoch", "loss", "seconds", "map50", "map")
        log(
            f"[two-stage {fraction * 100:5.1f}%] "
            + json.dumps({k: metrics[k] for k in keep if k in metrics})
        )
        if "map50" in metrics:
            curve.append(
                {
                    k: round(metrics[k], 4) if k != "epoch" else metrics[k]
                    for k in ("epoch", "map50", "map")
                }
            )
        if minutes and trained_s[0] > 60 * minutes and metrics["epoch"] < epochs * networks:
            raise BudgetSpent(metrics["epoch"])

    t0, stopped_at = time.time(), None
    try:
        history = two_stage.train(
            ann, artifact, image_root=root, config=config, image_filter=train_filter,
            progress=progress, val_json=ann if eval_every else None, val_filter=test_filter,
            eval_every=eval_every or 1, checkpoint=ckpt,
        ).history  # fmt: skip
    except BudgetSpent as spent:  # the networks trained so far, as the job would keep them
        stopped_at = int(spent.args[0])
        cats = two_stage.CocoDetectionDataset(ann, image_filter=train_filter).categories
        _, history = two_stage.save_from_checkpoint(ckpt, artifact, cats, config)
    wall_s = time.time() - t0
    row = _evaluate(artifact, ann, root, test_filter, 640, "cpu")
    return _with_training(
        row,
        "two-stage",
        history,
        epochs * networks,
        stopped_at,
        trained_s[0],
        wall_s,
        curve,
        artifact,
    )


def _artifact_from_checkpoint(ckpt: Path, artifact: Path, mcfg: Any, ann: Path) -> list[dict]:
    """The artifact a run stopped by the budget would have written: the last epoch's EMA."""
    from workers.detection.artifact import save_artifact
    from workers.detection.checkpoint import read_checkpoint
    from workers.detection.data import CocoDetectionDataset
    from workers.detection.model import build_model

    payload = read_checkpoint(ckpt)
    model = build_model(mcfg, pretrained_backbone=False)
    state = payload["ema"]["state"] if payload.get("ema") else payload["model"]
    cats = CocoDetectionDataset(ann).categories
    save_artifact(artifact, model, cats, {"history": payload["history"]}, state_dict=state)
    return list(payload["history"])


def _evaluate(
    artifact: Path, ann: Path, root: Path, test: Any, slice_size: int, device: str
) -> dict:
    from workers.detection import evaluate, load_detector

    # torch, as the runs of this comparison always were (a two-stage artifact is recognised)
    det = load_detector(artifact, runtime="torch", device=device)
    res = evaluate(
        det, ann, image_root=root, image_filter=test, slice_size=slice_size, overlap=0.25
    )
    return {
        "map50": round(res.map50, 4),
        "map": round(res.map, 4),
        "ap_small": round(res.ap_small, 4),
        "ms_per_image": round(res.ms_per_image, 1),
        "per_class_ap50": {k: round(v, 4) for k, v in res.per_class_ap50.items()},
        "per_class_ap": {k: round(v, 4) for k, v in res.per_class_ap.items()},
        **_class_agnostic(det, ann, root, test, slice_size),
    }


def _class_agnostic(det: Any, ann: Path, root: Path, test: Any, slice_size: int) -> dict:
    """Where the errors are: mAP50 and mAP with every category made one ("is there a defect
    here"), and, of the defects found (IoU >= 0.5 with a box scored >= 0.25), the share whose
    best box has the right category."""
    import contextlib
    import io

    import numpy as np
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from workers.detection import CocoDetectionDataset

    ds = CocoDetectionDataset(ann, root, image_filter=test, references=det.siamese)
    results, found, right, total = [], 0, 0, 0
    for i in range(len(ds)):
        s = ds[i]
        dets = det.predict_sliced(
            s.image,
            slice_size=slice_size,
            overlap=0.25,
            score_threshold=0.01,
            reference=s.reference,
        )
        results += [
            {"image_id": s.image_id, "category_id": 1, "bbox": d.bbox_xywh, "score": d.score}
            for d in dets
        ]
        kept = [d for d in dets if d.score >= 0.25]
        boxes = np.array([[d.x1, d.y1, d.x2, d.y2] for d in kept]).reshape(-1, 4)
        for b, label in zip(s.boxes, s.labels, strict=True):
            total += 1
            ix = np.clip(np.minimum(b[2], boxes[:, 2]) - np.maximum(b[0], boxes[:, 0]), 0, None)
            iy = np.clip(np.minimum(b[3], boxes[:, 3]) - np.maximum(b[1], boxes[:, 1]), 0, None)
            inter = ix * iy
            union = (b[2] - b[0]) * (b[3] - b[1]) + np.prod(boxes[:, 2:] - boxes[:, :2], 1) - inter
            hits = np.flatnonzero(inter / np.maximum(union, 1e-9) >= 0.5).tolist()
            if hits:
                found += 1
                best = max(hits, key=lambda k: kept[k].score)
                right += int(kept[best].category_id == ds.categories[label].id)
    if not results:
        return {"agnostic_map50": 0.0, "agnostic_map": 0.0, "recall": 0.0, "class_right": 0.0}
    ids = {im["id"] for im in ds.images}
    gt = {
        "images": ds.images,
        "categories": [{"id": 1, "name": "defect"}],
        "annotations": [
            {**a, "category_id": 1, "area": a["bbox"][2] * a["bbox"][3], "iscrowd": 0}
            for a in ds.coco["annotations"]
            if a["image_id"] in ids
        ],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {
        "agnostic_map50": round(float(ev.stats[1]), 4),
        "agnostic_map": round(float(ev.stats[0]), 4),
        "recall": round(found / max(1, total), 4),  # IoU >= 0.5, score >= 0.25, any category
        "class_right": round(right / max(1, found), 4),
    }


if __name__ == "__main__":
    raise SystemExit(main())
