"""Does fusing two scales' anomaly maps help? A cheap probe before any multi-scale model.

Trains single-scale models with the engine (``train``, cached under ``--out``), predicts each
test image once per model (calibrated ``score_map``: 0 = a typical normal pixel, 0.5 = the
model's pixel threshold, from its own held-out normal images, so two models' maps are on a
comparable scale), and then fuses the maps of every pair of models on the same set, by their
mean and by their maximum. Each map (single or fused) is scored like ``evaluate``: image AUROC
(the map's maximum), pixel AUROC, AU-PRO and region recall at <= 1 false region per good image
(regions extracted from the map with the default ``RegionConfig``).

A run is ``DATASET:MODEL:SIZE`` (whole image resized to SIZE) or ``DATASET:MODEL:tSCALE``
(tiled at pixel scale SCALE, 256 px tiles); an ``s`` after either (``256s``) trains with the
shading correction at 0.2 (``TrainConfig.shading``), e.g.::

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/python \
        benchmarks/anomaly_multiscale_probe.py --out var/bench/msprobe \
        --runs magnetic_tile:padim:256 magnetic_tile:padim:512 bottle:padim:256 bottle:padim:512
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _config(model: str, geometry: str):  # noqa: ANN202
    from workers.anomaly import TrainConfig

    shading = 0.2 if geometry.endswith("s") else 0.0
    geometry = geometry.removesuffix("s")
    if geometry.startswith("t"):
        return TrainConfig(model=model, input_size=256, scale=float(geometry[1:]), shading=shading)
    return TrainConfig(model=model, input_size=int(geometry), shading=shading)


def _predictions(datasets: Path, out: Path, run: str) -> dict:
    """Train (once) and predict the test set; the calibrated maps are cached in an .npz."""
    from workers.anomaly import PredictConfig, load_model, mvtec_test, mvtec_train, predict, train

    dataset, model, geometry = run.split(":")
    name = "mvtec_bottle" if dataset == "bottle" else dataset
    folder = out / f"{name}_{model}_{geometry}"
    cache = folder / "maps.npz"
    if cache.is_file():
        blob = np.load(cache, allow_pickle=False)
        meta = json.loads((folder / "probe.json").read_text())
        meta["maps"] = [blob[f"m{i}"] for i in range(len(meta["images"]))]
        return meta
    started = time.perf_counter()
    train(_config(model, geometry), mvtec_train(datasets / name), folder)
    train_s = time.perf_counter() - started
    loaded = load_model(folder, backend="torch")
    samples = mvtec_test(datasets / name)
    maps, seconds = [], 0.0
    for s in samples:
        t0 = time.perf_counter()
        pred = predict(loaded, s.image, PredictConfig(fit_size=True))
        seconds += time.perf_counter() - t0
        maps.append(pred.score_map)
    meta = {
        "run": run,
        "dataset": name,
        "images": [str(s.image) for s in samples],
        "masks": [str(s.mask) if s.mask else None for s in samples],
        "outline_only": [s.outline_only for s in samples],
        "train_seconds": train_s,
        "ms_per_image": 1000 * seconds / len(samples),
    }
    np.savez(cache, **{f"m{i}": m for i, m in enumerate(maps)})
    (folder / "probe.json").write_text(json.dumps(meta))
    meta["maps"] = maps
    return meta


def _score(meta: dict, maps: list[np.ndarray]) -> dict:
    import cv2

    from workers.anomaly import metrics
    from workers.anomaly.regions import extract_regions

    scores, labels, pix_maps, pix_masks, regions, full_masks = [], [], [], [], [], []
    for img, mask_path, outline, heat in zip(
        meta["images"], meta["masks"], meta["outline_only"], maps, strict=True
    ):
        shape = cv2.imread(img, cv2.IMREAD_UNCHANGED).shape[:2]
        if mask_path:
            mask = cv2.imread(mask_path, cv2.IMREAD_GRAYSCALE) >= 128
        else:
            mask = np.zeros(shape, bool)
        scores.append(float(heat.max()))
        labels.append(mask_path is not None)
        if not (mask_path and outline):
            pix_maps.append(heat)
            pix_masks.append(metrics.resize_mask(mask, heat.shape))
        regions.append(extract_regions(heat, shape))
        full_masks.append(mask if mask_path else None)
    per_image = [{"score": s, "anomalous": a} for s, a in zip(scores, labels, strict=True)]
    ci = metrics.bootstrap_interval(
        per_image,
        lambda rows: metrics.image_auroc(
            [r["score"] for r in rows], [r["anomalous"] for r in rows]
        ),
    )
    return {
        "image_auroc": metrics.image_auroc(scores, labels),
        "ci": [round(ci[0], 3), round(ci[1], 3)] if ci else None,
        "pixel_auroc": metrics.pixel_auroc(pix_maps, pix_masks),
        "au_pro": metrics.au_pro(pix_maps, pix_masks),
        "region_recall": metrics.region_recall(regions, full_masks).recall,
    }


def _print_costs(run: str, meta: dict) -> None:
    """Image AUROC is the share of (good, defective) pairs the map's maxima order right: each
    good image costs it the defect images it outscores, over goods x defects."""
    scores = [float(m.max()) for m in meta["maps"]]
    bad = [s for s, mask in zip(scores, meta["masks"], strict=True) if mask]
    goods = [
        (Path(img).name, s)
        for img, s, mask in zip(meta["images"], scores, meta["masks"], strict=True)
        if not mask
    ]
    pairs = len(goods) * len(bad)
    print(f"{run}: what each good image costs the image AUROC ({pairs} pairs)")
    for name, score in sorted(goods, key=lambda g: -g[1]):
        beaten = sum(b < score for b in bad) + 0.5 * sum(b == score for b in bad)
        if beaten:
            print(
                f"  {name}: outscores {beaten:g} of {len(bad)} defect images, -{beaten / pairs:.3f}"
            )


def _print_types(run: str, meta: dict, maps: list[np.ndarray]) -> None:
    """Each defect type's figures: its images against every good image (image AUROC), its
    pixels with the good images' (pixel AUROC), its regions (AU-PRO)."""
    types = [Path(img).parent.name for img in meta["images"]]
    for kind in sorted(set(types) - {"good"}):
        keep = [i for i, t in enumerate(types) if t in (kind, "good")]
        sub = {k: [meta[k][i] for i in keep] for k in ("images", "masks", "outline_only")}
        figures = _score(sub, [maps[i] for i in keep])
        print(
            f"  {run} {kind}: image AUROC {figures['image_auroc']:.3f}, pixel AUROC "
            f"{figures['pixel_auroc']:.3f}, AU-PRO {figures['au_pro']:.3f}, region recall "
            f"{figures['region_recall']:.3f}"
        )


def _same_grid(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    import cv2

    if a.shape == b.shape:
        return b
    return cv2.resize(b, a.shape[::-1], interpolation=cv2.INTER_LINEAR)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=str(ROOT / ".." / "shared" / "datasets"))
    parser.add_argument("--out", required=True, help="models and cached maps (reused)")
    parser.add_argument("--runs", nargs="+", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--per-type", action="store_true", help="each single run's figures per defect type"
    )
    parser.add_argument("--no-pairs", action="store_true", help="score single runs only")
    parser.add_argument(
        "--costs",
        action="store_true",
        help="per single run, what each good test image costs the image AUROC (the defect "
        "images it outscores), the costliest first",
    )
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = {r: _predictions(Path(args.datasets), out, r) for r in args.runs}
    rows = []
    for run, meta in runs.items():
        rows.append({"run": run, **_score(meta, meta["maps"]), "train_s": meta["train_seconds"],
                     "ms": meta["ms_per_image"]})  # fmt: skip
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        if args.costs:
            _print_costs(run, meta)
        if args.per_type:
            _print_types(run, meta, meta["maps"])
    if not args.no_pairs:
        for a, b in itertools.combinations(args.runs, 2):
            if runs[a]["dataset"] != runs[b]["dataset"]:
                continue
            ma, mb = runs[a]["maps"], runs[b]["maps"]
            mb = [_same_grid(x, y) for x, y in zip(ma, mb, strict=True)]
            for how, op in (("mean", lambda x, y: (x + y) / 2), ("max", np.maximum)):
                fused = [op(x, y) for x, y in zip(ma, mb, strict=True)]
                rows.append({"run": f"{a} + {b} ({how})", **_score(runs[a], fused)})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(
        "| run | image AUROC (95 % CI) | pixel AUROC | AU-PRO | region recall | train s | ms/img |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        ci = f" ({r['ci'][0]:.2f}–{r['ci'][1]:.2f})" if r.get("ci") else ""
        train_s = f"{r['train_s']:.0f}" if "train_s" in r else ""
        ms = f"{r['ms']:.0f}" if "ms" in r else ""
        print(
            f"| {r['run']} | {r['image_auroc']:.3f}{ci} | {r['pixel_auroc']:.3f} | "
            f"{r['au_pro']:.3f} | {r['region_recall']:.3f} | {train_s} | {ms} |"
        )
    (out / "probe_results.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
