"""Two ways to score a trained model's maps differently, a probe (nothing built): flipped inputs
averaged (test-time augmentation), and each map position standardised by what the good test
images score there (where normal tiles peak: their corners and edges).

Takes a model folder that ``benchmarks/anomaly_multiscale_probe.py`` trained and cached (its
``probe.json`` names the test images and masks), predicts each test image as it is and flipped
(``--tta``), and scores every variant as that probe does: image AUROC (the map's maximum) with
its 95 % interval, pixel AUROC, AU-PRO, region recall at <= 1 false region per good image, and
with ``--per-type`` each defect type's (the multiscale probe's ``--per-type`` lines)::

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 .venv/bin/python \\
        benchmarks/anomaly_multiscale_probe.py --out var/bench/hires \\
        --runs magnetic_tile:patchcore:256s --no-pairs
    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 .venv/bin/python \\
        benchmarks/anomaly_score_probe.py var/bench/hires/magnetic_tile_patchcore_256s --tta --per-type

``--position G``: each map is cut into a G x G grid of its own height and width (images differ
in size: the grid is relative), and each cell's score has the mean of the *other* good test
images' maps in that cell subtracted (leave one out, so a good image is never scored against
itself), divided by their spread there (``--position-sd``) or not. Its region recall is not
printed: regions are cut from a map at the calibrated scale's levels (0.5 = the threshold),
which a standardised map no longer has (divided by the spread, most of a map lies above them and
one region covering it "hits" every defect); nor is the region recall of its ``--per-type``
lines.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _positioned(meta: dict, maps: list[np.ndarray], grid: int, use_sd: bool) -> list:
    import cv2

    kinds = [Path(p).parent.name for p in meta["images"]]
    good = [i for i, k in enumerate(kinds) if k == "good"]
    if len(good) < 3:
        raise SystemExit("--position needs 3 or more good test images (each against the others)")
    small = [cv2.resize(m, (grid, grid), interpolation=cv2.INTER_AREA) for m in maps]
    out = []
    for i, m in enumerate(maps):
        stack = np.stack([small[j] for j in good if j != i])
        mean, sd = stack.mean(0), stack.std(0)
        sd = sd + np.median(sd)  # no cell divided by almost nothing
        size = (m.shape[1], m.shape[0])
        mean = cv2.resize(mean, size, interpolation=cv2.INTER_LINEAR)
        z = m - mean
        if use_sd:
            z = z / cv2.resize(sd, size, interpolation=cv2.INTER_LINEAR)
        out.append(z.astype(np.float32))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", help="a model folder of anomaly_multiscale_probe.py (maps cached)")
    ap.add_argument("--tta", action="store_true", help="also predict flipped inputs")
    ap.add_argument("--position", type=int, default=16, help="grid of the position variant")
    ap.add_argument("--position-sd", action="store_true", help="divide by the spread too")
    ap.add_argument("--per-type", action="store_true", help="each variant's figures per type")
    args = ap.parse_args()
    from benchmarks.anomaly_multiscale_probe import _print_types, _score

    folder = Path(args.folder)
    meta = json.loads((folder / "probe.json").read_text())
    blob = np.load(folder / "maps.npz", allow_pickle=False)
    variants = {"as predicted": [blob[f"m{i}"] for i in range(len(meta["images"]))]}
    if args.tta:
        from workers.anomaly import PredictConfig, load_model, predict
        from workers.anomaly.image_io import read_pixels

        loaded = load_model(folder, backend="torch")
        flips = {
            "h": lambda a: a[:, ::-1],
            "v": lambda a: a[::-1],
            "hv": lambda a: a[::-1, ::-1],
        }
        flipped: dict[str, list] = {k: [] for k in flips}
        for path in meta["images"]:
            image = read_pixels(path)
            for name, flip in flips.items():
                pred = predict(
                    loaded,
                    path,
                    PredictConfig(fit_size=True),
                    image=np.ascontiguousarray(flip(image)),
                )
                flipped[name].append(np.ascontiguousarray(flip(pred.score_map)))
        base = variants["as predicted"]
        variants["mean with left-right flip"] = [
            (a + b) / 2 for a, b in zip(base, flipped["h"], strict=True)
        ]
        variants["mean with up-down flip"] = [
            (a + b) / 2 for a, b in zip(base, flipped["v"], strict=True)
        ]
        variants["mean of all four"] = [
            (a + b + c + d) / 4
            for a, b, c, d in zip(base, flipped["h"], flipped["v"], flipped["hv"], strict=True)
        ]
    variants[f"position {args.position}x{args.position}"] = _positioned(
        meta, variants["as predicted"], args.position, args.position_sd
    )
    rows = []
    for name, maps in variants.items():
        if args.per_type:
            _print_types(name, meta, maps)
        r = _score(meta, maps)
        ci = r["ci"] or (float("nan"), float("nan"))
        recall = "-" if name.startswith("position") else f"{r['region_recall']:.3f}"
        rows.append(
            f"| {name} | {r['image_auroc']:.3f} ({ci[0]:.2f}–{ci[1]:.2f}) | "
            f"{r['pixel_auroc']:.3f} | {r['au_pro']:.3f} | {recall} |"
        )
    print("| maps | image AUROC (95 % CI) | pixel AUROC | AU-PRO | region recall |")
    print("| --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
