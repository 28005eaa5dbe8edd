"""What scoring a model costs once its maps exist: the whole set's pixel AUROC and AU-PRO, and
:func:`~workers.anomaly.evaluation.figures_by_type` (every figure again per defect kind, each
kind's images against every good image), on made-up maps the size a comparison of large photos
produces (``PredictConfig.heatmap_max_side``: 1024 px on the long side).

The maps are noise with a brighter blob where each defect mask is; only the time matters here.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/evaluation_cost.py \\
        --good 40 --defects 40 --kinds 1 4 8 --size 1024x683
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _maps(good: int, defects: int, h: int, w: int, seed: int = 0):  # noqa: ANN202
    import cv2

    rng = np.random.default_rng(seed)
    maps, masks = [], []
    for i in range(good + defects):
        m = rng.normal(0.2, 0.1, (h, w)).astype(np.float32)
        k = np.zeros((h, w), bool)
        if i >= good:
            cy, cx = int(rng.integers(50, h - 50)), int(rng.integers(50, w - 50))
            r = int(rng.integers(4, 40))
            cv2.circle(k.view(np.uint8), (cx, cy), r, 1, -1)
            m[k] += rng.uniform(0.1, 0.8)
        maps.append(m)
        masks.append(k)
    return maps, masks


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--good", type=int, default=40)
    ap.add_argument("--defects", type=int, default=40)
    ap.add_argument("--kinds", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--size", default="1024x683", help="map size, WIDTHxHEIGHT")
    args = ap.parse_args()
    from annotations.formats import mvtec_layout as layout
    from workers.anomaly import metrics
    from workers.anomaly.evaluation import figures_by_type
    from workers.anomaly.regions import extract_regions

    w, h = (int(v) for v in args.size.split("x"))
    maps, masks = _maps(args.good, args.defects, h, w)
    regions = [extract_regions(m, (h, w)) for m in maps]
    full = [None] * args.good + masks[args.good :]
    rows = list(range(len(maps)))
    t0 = time.perf_counter()
    metrics.pixel_auroc(maps, masks)
    t1 = time.perf_counter()
    metrics.au_pro(maps, masks)
    t2 = time.perf_counter()
    print(
        f"{args.good} good + {args.defects} defect maps of {w} x {h}: whole set pixel AUROC "
        f"{t1 - t0:.1f} s, AU-PRO {t2 - t1:.1f} s"
    )
    print("| kinds | figures_by_type, s |")
    print("| --- | --- |")
    for kinds in args.kinds:
        types = [layout.GOOD] * args.good + [f"kind{i % kinds}" for i in range(args.defects)]
        scores = [float(m.max()) for m in maps]
        started = time.perf_counter()
        figures_by_type(types, scores, maps, masks, rows, regions, full)
        print(f"| {kinds} | {time.perf_counter() - started:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
