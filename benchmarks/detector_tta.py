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
the fusions reuse those predictions. docs/benchmarks-detection.md ("Test-time augmentation")
has the figures.
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", required=True)
    ap.add_argument("--dataset", default=str(ROOT.parent / "shared" / "datasets" / "deeppcb"))
    ap.add_argument("--slice-size", type=int, default=416)
    ap.add_argument("--views", nargs="+", type=int, default=[1, 4, 8], choices=(1, 2, 4, 8))
    ap.add_argument("--fuse", nargs="+", default=["wbf", "nms"], choices=("wbf", "nms"))
    ap.add_argument("--runtime", default="torch")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from workers.detection import evaluate, load_detector

    root = Path(args.dataset)
    det = load_detector(args.artifact, runtime=args.runtime)
    print(f"{args.artifact}: DeepPCB official test split, {args.slice_size} px slices")
    print("| views | fusion | mAP50 | mAP | AP_small | s per image (predicting) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for views in args.views:
        remembered = Remembered(det)
        for fusion in args.fuse if views > 1 else ["-"]:
            started = time.perf_counter()
            res = evaluate(
                remembered,
                root / "annotations.json",
                image_root=root,
                image_filter=lambda img: img.get("official_split") == "test",
                slice_size=args.slice_size,
                overlap=0.25,
                views=views,
                fusion="wbf" if fusion == "-" else fusion,
            )
            seconds = (time.perf_counter() - started) / max(1, res.num_images)
            print(
                f"| {views} | {fusion} | {res.map50:.3f} | {res.map:.3f} | {res.ap_small:.3f} "
                f"| {seconds:.2f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
