"""Where the two-stage change detector puts its boxes (issue #14): the labelled frames around the
changed pixels, the network's box error, and the box settings (``PairConfig.box_sd``,
``snap_inset``) scored from one pass of the network.

    # choose: train on four fifths of DeepPCB's official trainval, score the other fifth
    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/two_stage_boxes.py \
        --holdout 5 [--seed 0] [--out var/bench-boxes]
    # check: a model trained on all of trainval, on the official test pairs
    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/two_stage_boxes.py \
        --model <artifact> --split test
    # as the app pairs them: every template aligned onto its image first (train and score)
    ... benchmarks/two_stage_boxes.py --aligned [--holdout 5]

``--aligned`` registers each template onto its image as the app's reference job does
(``workers.change.align``: ECC or features + RANSAC) and warps it, as the detector training job
and detection runs read them; without it the templates are compared as DeepPCB ships them (some
are off by 2-4 px).

1. The frames: for every labelled defect of the training pairs, the changed pixels inside its
   frame (``two_stage.changed_pixels``): how far the frame's centre lies from theirs, and how
   much wider and taller it is, per category. Then a bound: with each defect's changed pixels
   known exactly, the frame drawn around them by the medians per side (of all frames, or of the
   category's) scores this share of the IoU thresholds 0.50:0.95 on average (class-agnostic mAP
   with perfect ranking).
2. The network's box error per side on the scored pairs (its boxes alone, the best-placed of
   each labelled defect found at IoU >= 0.5): what ``box_sd`` is set from.
3. The grid: each ``box_sd`` (0: the network's box alone; large: the frame around the changed
   pixels alone) and ``snap_inset`` scored with pycocotools (mAP50 / mAP, and with the
   categories made one), the network run once per pair.

A model trained before category margins existed gets them fitted here from its training pairs.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import itertools
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", type=Path, default=ROOT.parent / "shared/datasets/deeppcb")
    ap.add_argument("--holdout", type=int, default=0, help="hold out trainval ids divisible by K")
    ap.add_argument("--split", choices=["holdout", "test"], default=None)
    ap.add_argument("--model", type=Path, help="a trained artifact (else one is trained)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--networks", type=int, default=1, help="PairConfig.networks (averaged)")
    ap.add_argument("--box-sds", default="0,2,3.2,4.5,1000", help="PairConfig.box_sd values")
    ap.add_argument("--insets", default="0.3,0.6,0.9", help="PairConfig.snap_inset values")
    ap.add_argument("--aligned", action="store_true", help="align the templates first")
    ap.add_argument("--out", type=Path, help="keep the trained model here (default: temporary)")
    args = ap.parse_args()
    split = args.split or ("holdout" if args.holdout else "test")
    if split == "holdout" and not args.holdout:
        ap.error("--split holdout needs --holdout K")

    import torch

    from workers.detection import two_stage

    torch.set_num_threads(1)
    ann = args.dataset / "annotations.json"
    coco = json.loads(ann.read_text())

    def held(im: dict) -> bool:
        return bool(args.holdout) and im["id"] % args.holdout == 0

    def train_filter(im: dict) -> bool:
        return im.get("official_split") == "trainval" and not held(im)

    def score_filter(im: dict) -> bool:
        if split == "holdout":
            return im.get("official_split") == "trainval" and held(im)
        return im.get("official_split") == "test"

    config = two_stage.PairConfig(epochs=args.epochs, seed=args.seed, networks=args.networks)
    work = Path(tempfile.mkdtemp(prefix="loupe-boxes-"))
    try:
        model, coco, rows = run(args, config, coco, work, train_filter, score_filter)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    n = sum(1 for im in coco["images"] if score_filter(im))
    print(
        f"\n{split}: {n} pairs, templates {'aligned' if args.aligned else 'as shipped'}; model "
        f"{model if args.model else 'trained above'}"
    )
    print("| networks | box_sd | snap_inset | mAP50 | mAP | class-agnostic mAP50 / mAP |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['networks']} | {r['box_sd']:g} | {r['inset']:g} | {r['map50']:.3f} | "
            f"{r['map']:.3f} | "
            f"{r['agnostic_map50']:.3f} / {r['agnostic_map']:.3f} |"
        )


def run(args, config, coco: dict, work: Path, train_filter, score_filter):
    """Align (maybe), measure the frames, train (unless ``--model``), score the grid."""
    from workers.detection import two_stage

    ann = args.dataset / "annotations.json"
    if args.aligned:
        ann = aligned_copy(args.dataset, coco, work)
        coco = json.loads(ann.read_text())
    train_ds = two_stage.CocoDetectionDataset(
        ann, args.dataset, image_filter=train_filter, references=True
    )
    frames = frame_figures(train_ds, config)
    print(json.dumps(frames["summary"]), flush=True)
    if args.model is None:
        began = time.time()
        result = two_stage.train(
            ann, (args.out or work) / "model.pt", image_root=args.dataset, config=config,
            image_filter=train_filter,
        )  # fmt: skip
        print(
            f"trained {len(train_ds)} pairs, {args.networks} network(s) x {args.epochs} epochs in "
            f"{time.time() - began:.0f} s"
        )
        model = result.artifact
    else:
        model = args.model
    detector = two_stage.load(model)
    if detector.category_spreads is None:
        detector.category_margins = frames["category_margins"]
        detector.category_spreads = frames["category_spreads"]
        print("(category margins fitted here: the artifact predates them)")
    print(f"category margins L/T/R/B: {detector.category_margins}")
    print(f"category spreads L/T/R/B: {_rounded(detector.category_spreads)}")
    rows = [
        {**r, "networks": f"all {len(detector.nets)}"}
        for r in grid(detector, ann, args.dataset, score_filter, coco, args)
    ]
    if len(detector.nets) > 1:  # each network alone beside the ensemble
        nets = detector.nets
        for i, net in enumerate(nets):
            detector.nets, detector.net = [net], net
            rows += [
                {**r, "networks": f"network {i + 1} (seed {args.seed + i})"}
                for r in grid(detector, ann, args.dataset, score_filter, coco, args)
            ]
        detector.nets, detector.net = nets, nets[0]
    return model, coco, rows


def aligned_copy(root: Path, coco: dict, folder: Path) -> Path:
    """A COCO file whose images name their templates aligned onto them (absolute paths under
    ``folder``), as the app's reference job aligns and the detector jobs warp them; a pair the
    alignment refuses keeps its template as shipped (counted)."""
    import cv2

    from workers.change import align, read_rgb
    from workers.change.align import warp_reference

    (folder / "aligned").mkdir(parents=True, exist_ok=True)
    images, refused, began = [], 0, time.time()
    for im in coco["images"]:
        image = read_rgb(root / im["file_name"])
        template = read_rgb(root / im["template_file_name"])
        alignment = align(image, template)
        refused += not alignment.ok
        warped = (
            warp_reference(template, alignment, image.shape[:2])[0] if alignment.ok else template
        )
        path = folder / "aligned" / f"{im['id']}.png"
        cv2.imwrite(str(path), cv2.cvtColor(warped, cv2.COLOR_RGB2BGR))
        kept = {k: v for k, v in im.items() if k != "template_file_name"}
        images.append({**kept, "reference_file_name": str(path)})
    print(
        f"aligned {len(images)} templates in {time.time() - began:.0f} s, {refused} refused "
        "(compared as shipped)"
    )
    out = folder / "annotations.json"
    out.write_text(json.dumps({**coco, "images": images}))
    return out


def _rounded(values):
    if values is None:
        return None
    if isinstance(values, list):
        return [_rounded(v) for v in values]
    return round(float(values), 1)


def frame_figures(dataset, config) -> dict:
    """The labelled frames around the changed pixels inside them, and the bound of section 1."""
    from workers.detection import two_stage

    rows = []  # category index, frame (x1 y1 x2 y2), changed pixels' box inside it
    for i in range(len(dataset)):
        sample = dataset[i]
        changed = two_stage.changed_pixels(sample.image, sample.reference, config)
        for box, label in zip(sample.boxes.tolist(), sample.labels.tolist(), strict=True):
            sides = two_stage.frame_sides(changed, box)
            if sides is not None:
                inner = [box[0] + sides[0], box[1] + sides[1], box[2] - sides[2], box[3] - sides[3]]
                rows.append((int(label), box, inner, sides))
    names = [c.name for c in dataset.categories]
    frames = [(c, s) for c, _, _, s in rows]
    overall = [float(v) for v in np.median([s for _, s in frames], axis=0)]
    per_category, spreads = two_stage.fit_category_margins(frames, len(names), overall)

    def bound(margins_of) -> float:
        thresholds = np.arange(0.5, 0.951, 0.05)
        ious = np.array(
            [
                two_stage.box_iou(two_stage.grow(inner, margins_of(c)), box)
                for c, box, inner, _ in rows
            ]
        )
        return float(np.mean([(ious >= t).mean() for t in thresholds]))

    centre = np.array(
        [
            ((b[0] + b[2]) / 2 - (n[0] + n[2]) / 2, (b[1] + b[3]) / 2 - (n[1] + n[3]) / 2)
            for _, b, n, _ in rows
        ]
    )
    extra = {
        names[c]: {
            "frames": sum(1 for k, *_ in rows if k == c),
            "extra_width_median": float(np.median([s[0] + s[2] for k, _, _, s in rows if k == c])),
            "extra_width_sd": round(
                float(np.std([s[0] + s[2] for k, _, _, s in rows if k == c])), 1
            ),
        }
        for c in range(len(names))
        if any(k == c for k, *_ in rows)
    }
    return {
        "category_margins": per_category,
        "category_spreads": spreads,
        "summary": {
            "frames": len(rows),
            "centre_offset_sd_px": np.round(centre.std(axis=0), 2).tolist(),
            "margins_ltrb": overall,
            "per_category": extra,
            "bound_margins_of_all": round(bound(lambda c: overall), 3),
            "bound_margins_per_category": round(bound(lambda c: per_category[c]), 3),
        },
    }


def grid(detector, ann: Path, root: Path, score_filter, coco: dict, args) -> list[dict]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from workers.detection import CocoDetectionDataset, two_stage

    ds = CocoDetectionDataset(ann, root, image_filter=score_filter, references=True)
    outputs = []
    for i in range(len(ds)):
        sample = ds[i]
        outputs.append((sample.image_id, detector.outputs(sample.image, sample.reference)))
    ids = [image_id for image_id, _ in outputs]
    agnostic = copy.deepcopy(coco)
    for a in agnostic["annotations"]:
        a["category_id"] = 1
    agnostic["categories"] = [{"id": 1, "name": "defect"}]
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(ann))
        truth_one = COCO()
        truth_one.dataset = agnostic
        truth_one.createIndex()

    def cocoeval(gt, results) -> tuple[float, float]:
        if not results:
            return 0.0, 0.0
        with contextlib.redirect_stdout(io.StringIO()):
            e = COCOeval(gt, gt.loadRes(results), "bbox")
            e.params.imgIds = ids
            e.evaluate()
            e.accumulate()
            e.summarize()
        return float(e.stats[1]), float(e.stats[0])

    # the network's boxes alone against the labelled frames: its error per side
    cfg = detector.config
    cfg.box_sd = 0.0
    errors = []
    for image_id, out in outputs:
        found = detector.detections(out, 0.05) if out is not None else []
        for a in (a for a in coco["annotations"] if a["image_id"] == image_id):
            x, y, w, h = a["bbox"]
            frame = (x, y, x + w, y + h)
            near = [(two_stage.box_iou((d.x1, d.y1, d.x2, d.y2), frame), d) for d in found]
            iou, d = max(near, key=lambda t: t[0], default=(0.0, None))
            if iou >= 0.5:
                errors.append([d.x1 - frame[0], d.y1 - frame[1], d.x2 - frame[2], d.y2 - frame[3]])
    errors = np.array(errors).reshape(-1, 4)
    print(
        f"network's box error per side L/T/R/B over {len(errors)} defects found: sd "
        f"{_rounded(errors.std(axis=0).tolist())}, mean {_rounded(errors.mean(axis=0).tolist())}"
    )
    rows = []
    for box_sd, inset in itertools.product(
        (float(v) for v in args.box_sds.split(",")), (float(v) for v in args.insets.split(","))
    ):
        if box_sd == 0 and inset != float(args.insets.split(",")[0]):
            continue  # the network's box alone: the inset plays no part
        cfg.box_sd, cfg.snap_inset = box_sd, inset
        results = [
            {"image_id": image_id, "category_id": d.category_id, "bbox": d.bbox_xywh,
             "score": d.score}
            for image_id, out in outputs if out is not None
            for d in detector.detections(out, 0.01)
        ]  # fmt: skip
        map50, map_ = cocoeval(truth, results)
        one50, one = cocoeval(truth_one, [{**r, "category_id": 1} for r in results])
        rows.append(
            {"box_sd": box_sd, "inset": inset, "map50": map50, "map": map_,
             "agnostic_map50": one50, "agnostic_map": one}
        )  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    main()
