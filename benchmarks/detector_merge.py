"""How the merge of sliced predictions changes a detector's held-out mAP (DeepPCB).

    # train a small crop-trained lite0 on DeepPCB trainval images, then compare the merges
    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/detector_merge.py \\
        --train-images 24 --epochs 30

    # or compare them for an artifact trained elsewhere (benchmarks/detector_loop.py)
    .venv/bin/python benchmarks/detector_merge.py --artifact <media>/.../model.pt

The held-out images (DeepPCB's official test list, the first --test-images of it) are
predicted in --slice px slices (overlap 0.25, score down to 0.01 as evaluation does) and scored
with pycocotools for each merge: NMS and GREEDYNMM/NMM (SAHI's unions of matched boxes) on
intersection over union or over the smaller box. The training, when asked, is the
`detection_train` job's recipe on crops of the slice size (lite0, multi-scale around it, batch 4,
seed 0). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MERGES = [
    ("NMS", "IOS", 0.6, True),  # the default
    ("NMS", "IOU", 0.5, True),
    ("NMS", "IOS", 0.5, False),
    ("GREEDYNMM", "IOS", 0.5, True),  # the default until 2026-12-03
    ("GREEDYNMM", "IOU", 0.5, True),
    ("NMM", "IOS", 0.5, True),
]


def _subset(coco: dict, images: list[dict], path: Path) -> Path:
    ids = {im["id"] for im in images}
    sub = dict(
        coco, images=images, annotations=[a for a in coco["annotations"] if a["image_id"] in ids]
    )
    path.write_text(json.dumps(sub))
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default=str(ROOT.parent / "shared" / "datasets" / "deeppcb"))
    ap.add_argument("--artifact", help="a trained model.pt; without it one is trained")
    ap.add_argument("--train-images", type=int, default=24)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--test-images", type=int, default=24)
    ap.add_argument("--slice", type=int, default=416)
    args = ap.parse_args()

    import torch

    from workers import detection
    from workers.detection.inference import Detector

    torch.set_num_threads(1)
    root = Path(args.dataset)
    coco = json.loads((root / "annotations.json").read_text())
    tmp = Path(tempfile.mkdtemp(prefix="loupe-merge-"))
    test = [im for im in coco["images"] if im.get("official_split") == "test"]
    test_json = _subset(coco, test[: args.test_images], tmp / "test.json")
    artifact = args.artifact
    if artifact is None:
        train = [im for im in coco["images"] if im.get("official_split") == "trainval"]
        train_json = _subset(coco, train[: args.train_images], tmp / "train.json")
        t0 = time.perf_counter()
        result = detection.train(
            train_json,
            tmp / "model.pt",
            image_root=root,
            model_config=detection.model_config_for(
                "lite0", len(coco["categories"]), eval_size=args.slice
            ),
            train_config=detection.TrainConfig(
                epochs=args.epochs,
                batch_size=4,
                crop_size=args.slice,
                train_sizes=detection.train_sizes_around(args.slice),
                num_threads=1,
            ),
        )
        artifact = result.artifact
        print(
            f"trained {args.train_images} images x {args.epochs} epochs on {args.slice} px crops "
            f"in {time.perf_counter() - t0:.0f} s: {artifact}"
        )
    detector = Detector.load(artifact, "cpu", eval_size=args.slice)
    predict = Detector.predict_sliced
    print(f"\n{args.test_images} held-out images, {args.slice} px slices, score >= 0.01\n")
    print("| merge | match | threshold | classes | mAP50 | mAP |")
    print("| --- | --- | --- | --- | --- | --- |")
    for kind, metric, threshold, agnostic in MERGES:

        def merged(self, *a, _m=(kind, metric, threshold, agnostic), **k):
            k.update(
                postprocess_type=_m[0],
                match_metric=_m[1],
                match_threshold=_m[2],
                class_agnostic=_m[3],
            )
            return predict(self, *a, **k)

        Detector.predict_sliced = merged
        r = detection.evaluate(detector, test_json, image_root=root, slice_size=args.slice)
        print(
            f"| {kind} | {metric} | {threshold} | {'any' if agnostic else 'same'} | "
            f"{r.map50:.3f} | {r.map:.3f} |",
            flush=True,
        )
    Detector.predict_sliced = predict


if __name__ == "__main__":
    main()
