"""How a model and its dark-line detector are best joined (a probe, nothing saved): for models
trained with ``TrainConfig.lines`` (``benchmarks/anomaly.py --out DIR --runs
magnetic_tile:patchcore+lines ...``), each way of joining the two calibrated maps is
calibrated again on the model's own held-out normal images (its training split, the rules of
``workers.anomaly.calibration``) and scored by ``workers.anomaly.evaluation.evaluate`` on the
test images: image AUROC, pixel AUROC, AU-PRO, region recall at <= 1 false region per good
image, and as suggested (recall, false regions per good image) at the new calibration.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/anomaly_fusion_probe.py \\
        --dataset ../shared/datasets/magnetic_tile \\
        --models var/bench/sum/magnetic_tile_patchcore+lines-shading0.2 \\
                 var/bench/sum/magnetic_tile_padim+lines-shading0.2

The ways (``--ways``): ``max`` (the larger of the two maps, as calibrated on their own: the
rule of the first build), ``sum`` (their sum, what the engine does), ``sum-half`` (the line
map at half weight), ``excess`` (the model's map plus what the line map has above its own
threshold). Chosen on the same test images it scores: read the differences, not the best.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WAYS = {
    "max": lambda main, lines: np.maximum(main, lines),
    "sum": lambda main, lines: main + lines,
    "sum-half": lambda main, lines: main + 0.5 * lines,
    "excess": lambda main, lines: main + np.maximum(lines - 0.5, 0.0),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True, help="an MVTec-layout folder")
    ap.add_argument("--models", nargs="+", required=True, help="folders trained with lines")
    ap.add_argument("--ways", nargs="+", default=list(WAYS), choices=list(WAYS))
    args = ap.parse_args()

    from workers.anomaly.datasets import mvtec_test

    samples = mvtec_test(args.dataset)
    print(
        "| model | way | image AUROC | pixel AUROC | AU-PRO | region recall | "
        "crack image AUROC / regions | as suggested: recall · false per good image |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for folder in args.models:
        probe(Path(folder), Path(args.dataset), samples, args.ways)


def probe(folder: Path, dataset: Path, samples: list, ways: list[str]) -> None:
    """One model's rows: each way calibrated on its held-out normal images, then evaluated."""
    import hashlib
    from dataclasses import replace

    from workers.anomaly.artifact import load_model
    from workers.anomaly.calibration import calibrate
    from workers.anomaly.config import PredictConfig, no_progress
    from workers.anomaly.datasets import mvtec_train
    from workers.anomaly.evaluation import evaluate
    from workers.anomaly.inference import Prediction, line_parts, normalise
    from workers.anomaly.regions import extract_regions
    from workers.anomaly.training import _split

    model = load_model(folder, backend="torch")
    if model.lines is None:
        raise SystemExit(f"{folder}: no line detector beside this model")
    train_config = json.loads((folder / "model.json").read_text())["train_config"]
    _, held_out = _split(
        mvtec_train(dataset), train_config["calibration_fraction"], train_config["seed"]
    )
    own = {k: v for k, v in model.calibration.items() if k != "with_lines"}
    alone = replace(model, calibration=own, lines=None)  # calibrate() reads only its kind
    defaults = PredictConfig()
    parts: dict[str, tuple] = {}  # an image's two maps, computed once for every way

    def joined(image: np.ndarray, way: str) -> np.ndarray:
        key = hashlib.sha1(image.tobytes()).hexdigest()
        if key not in parts:
            parts[key] = line_parts(model, image, defaults)[:2]
        return WAYS[way](*parts[key])

    for way in ways:
        cal = calibrate(
            alone,
            held_out,
            train_config["suggest_rate"],
            train_config["flag_rate"],
            no_progress,
            raw_map=lambda image, way=way: joined(image, way),
        )

        def predictor(path: Path, image: np.ndarray, way: str = way, cal: dict = cal):
            total = joined(image, way)
            calibrated = normalise(total, cal["pixel_lo"], cal["pixel_threshold"])
            calibrated = calibrated.astype(np.float32)
            score = float(normalise(float(total.max()), cal["image_lo"], cal["image_threshold"]))
            return Prediction(
                image_path=str(path),
                image_size=image.shape[:2],
                image_score=score,
                is_anomalous=score >= 0.5,
                heatmap=np.zeros((1, 1), np.uint8),
                regions=extract_regions(calibrated, image.shape[:2], defaults.regions),
                model_id=model.model_id,
                model_kind=model.kind,
                score_map=calibrated,
                params={},
                timings={"megapixels": image.shape[0] * image.shape[1] / 1e6},
            )

        m = evaluate(model, samples, predictor=predictor).metrics
        crack = m["by_type"].get("crack", {})
        print(
            f"| {folder.name} | {way} | {m['image_auroc']:.3f} | {m['pixel_auroc']:.3f} "
            f"| {m['au_pro']:.3f} | {m['region_recall']:.3f} | "
            f"{crack.get('image_auroc', float('nan')):.3f} / "
            f"{crack.get('region_recall', float('nan')):.3f} | "
            f"{m['recall_at_threshold']:.3f} · {m['false_per_good_image_at_threshold']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
