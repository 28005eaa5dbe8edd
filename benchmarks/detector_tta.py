"""Test-time augmentation for a trained detector: each image predicted in several orientations
(flips, quarter turns), the boxes turned back and fused (``workers.detection.predict_views``),
scored with the same COCO evaluation as every detector figure (``workers.detection.evaluate``).

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 .venv/bin/python \\
        benchmarks/detector_tta.py --artifact var/bench-siamese/deeppcb-single.pt \\
        --slice-size 416 --views 1 4 8 --fuse wbf nms

DeepPCB's official test split (``--dataset``, default ``../shared/datasets/deeppcb``).
``--views``: 1 (as deployed), 2 (plus the mirror image), 4 (the four flips), 8 (the flips, each
also turned a quarter). ``--fuse``: ``wbf`` averages the boxes of one category that overlap by
IoU >= 0.55, weighted by score, and scores the fused box by the summed score over the views;
``nms`` keeps the best of them as it was scored. Each view count predicts every image once;
the fusions reuse those predictions. Several ``--artifact`` (models trained from other seeds or
recipes): each model alone, then the ensemble (each view's boxes of every model fused the same
way, then the views), from the same predictions. A detector that reads a reference (stacked,
Siamese) gets each test image's template, turned with it; ``--annotations`` names a COCO file
whose images name their aligned templates.
docs/benchmarks-detection.md ("Test-time augmentation") has the figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class Remembered:
    """A detector's ``predict_sliced`` that predicts each (view of an) image once: the second
    fusion of a view count reuses the first one's predictions."""

    def __init__(self, detector) -> None:
        self.detector, self.model_config, self.seen = detector, detector.model_config, {}

    def predict_sliced(self, image, **kwargs):
        key = hash(image.tobytes())
        if key not in self.seen:
            self.seen[key] = self.detector.predict_sliced(image, **kwargs)
        return self.seen[key]


class Ensemble:
    """Several detectors' ``predict_sliced`` as one: their boxes fused by ``fusion``."""

    def __init__(self, detectors, fusion: str) -> None:
        self.detectors, self.fusion = detectors, fusion
        self.model_config = detectors[0].model_config

    def predict_sliced(self, image, **kwargs):
        from workers.detection.tta import fuse

        return fuse([d.predict_sliced(image, **kwargs) for d in self.detectors], self.fusion)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", required=True, nargs="+", help="several: an ensemble")
    ap.add_argument("--dataset", default=str(ROOT.parent / "shared" / "datasets" / "deeppcb"))
    ap.add_argument(
        "--annotations",
        help="COCO file to judge on (default: the dataset's); a stacked or Siamese detector "
        "trained with benchmarks/siamese.py --aligned reads its aligned templates from "
        "<its --out>/aligned-templates/annotations.json",
    )
    ap.add_argument("--slice-size", type=int, default=416)
    ap.add_argument("--views", nargs="+", type=int, default=[1, 4, 8], choices=(1, 2, 4, 8))
    ap.add_argument("--fuse", nargs="+", default=["wbf", "nms"], choices=("wbf", "nms"))
    ap.add_argument("--runtime", default="torch")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from workers.detection import evaluate, load_detector

    root = Path(args.dataset)
    dets = [load_detector(a, runtime=args.runtime) for a in args.artifact]
    print(f"{' + '.join(args.artifact)}: DeepPCB official test split, {args.slice_size} px slices")
    names = [Path(a).parent.name or a for a in args.artifact]
    if len(dets) > 1:
        print(f"model: each alone ({', '.join(names)}), then all of them ('ensemble')")
        print("| model | views | fusion | mAP50 | mAP | AP_small | s per image (predicting) |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
    else:
        print("| views | fusion | mAP50 | mAP | AP_small | s per image (predicting) |")
        print("| --- | --- | --- | --- | --- | --- |")
    for views in args.views:
        # each model predicts each view of each image once; the ensemble reuses those
        remembered = [Remembered(d) for d in dets]
        rows = list(zip(names, remembered, strict=True)) if len(dets) > 1 else []
        rows += [("ensemble" if len(dets) > 1 else "", None)]
        for name, alone in rows:
            fusions = args.fuse if views > 1 or (alone is None and len(dets) > 1) else ["-"]
            for fusion in fusions:
                predictor = alone or (
                    remembered[0] if len(dets) == 1 else Ensemble(remembered, fusion)
                )
                started = time.perf_counter()
                res = evaluate(
                    predictor,
                    args.annotations or root / "annotations.json",
                    image_root=root,
                    image_filter=lambda img: img.get("official_split") == "test",
                    slice_size=args.slice_size,
                    overlap=0.25,
                    views=views,
                    fusion="wbf" if fusion == "-" else fusion,
                )
                seconds = (time.perf_counter() - started) / max(1, res.num_images)
                print(
                    ("" if len(dets) == 1 else f"| {name} ")
                    + f"| {views} | {fusion} | {res.map50:.3f} | {res.map:.3f} "
                    f"| {res.ap_small:.3f} | {seconds:.2f} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
