"""Calibration rules side by side: what the default threshold finds, on MVTec-layout datasets.

For each ``dataset:model`` a model is trained on ``train/good`` (15 % held out for calibration,
as the app does) and the test set is inspected three times with the same network: at the
thresholds the engine stores now (a Gumbel fit of the held-out images' maxima; the pixel
threshold at the point that a share ``suggest_rate`` of unseen normal images is expected to
reach, the fit's uncertainty included, the image threshold at the fit's ``flag_rate`` point
and at least the ordinary held-out maxima), at the fit's own quantiles (the rule of
2026-12-04), and at the rules before it (the pixel threshold at the 0.999 quantile of all
held-out pixels pooled, the image threshold at the largest held-out maximum), which the
calibration records beside its own. Regions are counted as suggested (no score cut): recall
of ground-truth regions and false regions per good image, each with the engine evaluation's
95 % bootstrap interval over the test images, the share of good images with a suggestion (what
the pixel threshold promises: ``suggest_rate``), and the shares of images flagged anomalous.

``--simulate`` trains nothing: it draws held-out sets of 3 to 50 normal images' maxima from one
Gumbel law, 2000 sets per size, and prints the share of unseen normal images that reaches each
rule's thresholds, on average (the promise is ``suggest_rate`` 25 % and ``flag_rate`` 5 %), and
the verdict's as calibrated.

``--vary`` first writes a copy of the dataset in which every fifth normal image (train and test)
is lit differently (x1.5 or x0.6 brightness, alternately): normals that differ in brightness.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/calibration.py \
        --runs magnetic_tile:padim magnetic_tile:patchcore mvtec_bottle:padim \
               mvtec_bottle:patchcore --vary magnetic_tile
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def lit_differently(src: Path, dst: Path) -> Path:
    """A copy of an MVTec-layout dataset where every fifth normal image is brighter or darker."""
    import cv2
    import numpy as np

    if dst.exists():
        return dst
    shutil.copytree(src, dst)
    for folder in ("train/good", "test/good"):
        for i, p in enumerate(sorted((dst / folder).glob("*.png"))):
            if i % 5 == 0:
                img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED).astype(np.float32)
                factor = 1.5 if (i // 5) % 2 == 0 else 0.6
                cv2.imwrite(str(p), np.clip(img * factor, 0, 255).astype(np.uint8))
    return dst


def judge(model, samples) -> dict:
    """The engine's evaluation at the model's thresholds: regions as suggested, with the
    evaluation's bootstrap intervals."""
    from workers.anomaly import evaluate

    result = evaluate(model, samples)
    m = result.metrics
    goods = sum(1 for s in samples if not s.is_anomalous)
    # what the pixel threshold promises: a share suggest_rate of normal images get a suggestion
    suggested = sum(1 for r in result.per_image if not r["anomalous"] and r["regions"])
    defects = len(samples) - goods
    return {
        "defect_images": defects,
        "good_images": goods,
        "gt_regions": m["region_gt"],
        "recall": round(m["recall_at_threshold"], 3),
        "recall_ci": m["intervals"]["recall_at_threshold"],
        "false_per_good": round(m["false_per_good_image_at_threshold"], 3),
        "false_per_good_ci": m["intervals"]["false_per_good_image_at_threshold"],
        "defects_flagged": round(m["defect_images_flagged"] / max(defects, 1), 3),
        "goods_flagged": round(m["good_images_flagged"] / max(goods, 1), 3),
        "goods_suggested": round(suggested / max(goods, 1), 3),
    }


def run(dataset: Path, model_name: str, out: Path) -> list[dict]:
    from workers.anomaly import TrainConfig, load_model, mvtec_test, mvtec_train, train

    started = time.perf_counter()
    result = train(TrainConfig(model=model_name, input_size=256), mvtec_train(dataset), out)
    seconds = round(time.perf_counter() - started, 1)
    model = load_model(result.artifact_path)
    cal = dict(model.calibration)
    samples = mvtec_test(dataset)
    old = {
        **cal,
        "pixel_threshold": cal["pixel_quantile_threshold"],
        "image_threshold": cal["max_normal_maximum"],
    }
    pixel, image = cal["fit_quantile_thresholds"]
    plain = {**cal, "pixel_threshold": pixel, "image_threshold": image}
    rules = (
        ("maxima fit, predictive (now)", cal),
        ("maxima fit, its own quantiles (12-04)", plain),
        ("quantile + max (before)", old),
    )
    rows = []
    for rule, calibration in rules:
        model.calibration = calibration
        rows.append(
            {
                "dataset": dataset.name,
                "model": model_name,
                "rule": rule,
                "held_out": cal["images"],
                "train_seconds": seconds,
                **judge(model, samples),
            }
        )
    return rows


def simulate(sizes=(3, 5, 10, 18, 50), sets: int = 2000) -> None:
    """The promise of each rule for held-out sets of each size (module docstring)."""
    import numpy as np

    from workers.anomaly.calibration import (
        fit_maxima,
        gumbel_quantile,
        predictive_threshold,
        share_above,
        thresholds_from_maxima,
    )

    rng = np.random.default_rng(0)
    print(
        "| held-out images | suggestions, fit's own quantile | suggestions, predictive | "
        "flag rate's point, fit's own quantile | flag rate's point, predictive | "
        "the verdict as calibrated (fit's own point, floored at the held-out maxima) |"
    )
    print("|---|---|---|---|---|---|")
    for n in sizes:
        shares = np.zeros(5)
        for _ in range(sets):
            maxima = rng.gumbel(10.0, 2.0, n)
            mu, beta = fit_maxima(maxima)
            points = (
                gumbel_quantile(mu, beta, 0.75),
                predictive_threshold(maxima, beta, 0.25),
                gumbel_quantile(mu, beta, 0.95),
                predictive_threshold(maxima, beta, 0.05),
                thresholds_from_maxima(maxima, 0.25, 0.05)[3],
            )
            shares += [share_above(10.0, 2.0, t) for t in points]
        cells = " | ".join(f"{v / sets:.3f}" for v in shares)
        print(f"| {n} | {cells} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=str(ROOT / ".." / "shared" / "datasets"))
    parser.add_argument("--runs", nargs="+", default=["magnetic_tile:padim"])
    parser.add_argument("--vary", nargs="*", default=[], help="datasets also run lit differently")
    parser.add_argument("--simulate", action="store_true", help="the rules' promises, no model")
    args = parser.parse_args()
    if args.simulate:
        simulate()
        return
    import torch

    torch.set_num_threads(1)
    root = Path(args.datasets)
    rows = []
    with tempfile.TemporaryDirectory(prefix="loupe-calibration-") as tmp:
        for spec in args.runs:
            name, model_name = spec.split(":")
            dataset = root / name if (root / name).is_dir() else root / f"mvtec_{name}"
            variants = [dataset]
            if name in args.vary:
                variants.append(lit_differently(dataset, Path(tmp) / f"{dataset.name}_lit"))
            for i, ds in enumerate(variants):
                for row in run(ds, model_name, Path(tmp) / f"{ds.name}_{model_name}_{i}"):
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    print()
    print(
        "| dataset | model | rule | recall (95 % CI) | false regions / good image | "
        "good images with a suggestion | good images flagged | defect images flagged |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['dataset']} | {r['model']} | {r['rule']} | {r['recall']:.3f} "
            f"({r['recall_ci'][0]:.2f}–{r['recall_ci'][1]:.2f}) of {r['gt_regions']} | "
            f"{r['false_per_good']:.2f} ({r['false_per_good_ci'][0]:.2f}–"
            f"{r['false_per_good_ci'][1]:.2f}) over {r['good_images']} | "
            f"{r['goods_suggested']:.2f} | {r['goods_flagged']:.2f} | "
            f"{r['defects_flagged']:.2f} of {r['defect_images']} |"
        )


if __name__ == "__main__":
    main()
