"""A cheap probe before an engine change: would normalising each image first help on parts whose
normal images vary (magnetic tiles: mean grey 62-93, long sides 190-600 px in either
orientation)?

Each variant rewrites a copy of the MVTec-layout dataset (train, test and masks alike), trains
the chosen models on it and scores them as ``benchmarks/anomaly.py`` does (image AUROC with
its 95 % interval, pixel AUROC, AU-PRO, region recall at <= 1 false region per good image).
Variants: ``none``; ``standardize`` (each image's grey levels to mean 64, standard deviation 16);
``landscape`` (portrait images turned a quarter, so every tile's long side is horizontal);
both; ``flatfield`` (the engine's shading correction, ``correct_shading``, its blur
``--shading`` of the shorter side; the engine applies it itself with ``TrainConfig.shading``)
and ``flatfield+landscape``. ``--pool topk`` adds the image score as the mean of the top 1 % of the calibrated map
instead of its maximum.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/anomaly_preprocess_probe.py \
        --dataset ../shared/datasets/magnetic_tile --models padim patchcore
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = (
    "none",
    "standardize",
    "landscape",
    "standardize+landscape",
    "flatfield",
    "flatfield+landscape",
)


def transform(image: np.ndarray, variant: str, is_mask: bool, shading: float = 0.2) -> np.ndarray:
    if "landscape" in variant and image.shape[0] > image.shape[1]:
        image = cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)
    if "standardize" in variant and not is_mask:
        values = image.astype(np.float32)
        values = (values - values.mean()) / max(float(values.std()), 1.0) * 16.0 + 64.0
        image = np.clip(values + 0.5, 0, 255).astype(np.uint8)
    if "flatfield" in variant and not is_mask:
        from workers.anomaly.image_io import correct_shading, normalise_layout

        image = correct_shading(normalise_layout(image), shading)
        image = image[:, :, 0] if image.shape[2] == 1 else image
    return image


def copy_dataset(source: Path, target: Path, variant: str, shading: float = 0.2) -> Path:
    for path in source.rglob("*.png"):
        relative = path.relative_to(source)
        if relative.parts[0] not in ("train", "test", "ground_truth"):
            continue
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        out = target / relative
        out.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(
            str(out), transform(image, variant, relative.parts[0] == "ground_truth", shading)
        )
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset", type=Path, default=ROOT.parent / "shared/datasets/magnetic_tile"
    )
    parser.add_argument("--models", nargs="+", default=["padim", "patchcore"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--input-size", type=int, default=256)
    parser.add_argument("--pool", choices=["max", "topk"], default="max")
    parser.add_argument(
        "--shading",
        type=float,
        default=0.2,
        help="the flatfield variants' blur, a fraction of each image's shorter side",
    )
    args = parser.parse_args()

    from workers.anomaly import PredictConfig, TrainConfig, load_model, mvtec_test, train
    from workers.anomaly.evaluation import evaluate
    from workers.anomaly.inference import predict

    rows = []
    with tempfile.TemporaryDirectory(prefix="loupe-probe-") as tmp:
        for variant in args.variants:
            data = copy_dataset(args.dataset, Path(tmp) / variant, variant, args.shading)
            normals = sorted((data / "train" / "good").glob("*.png"))
            samples = mvtec_test(data)
            for model_name in args.models:
                config = TrainConfig(model=model_name, input_size=args.input_size)
                model = load_model(
                    train(config, normals, Path(tmp) / f"{variant}-{model_name}").artifact_path
                )
                predict_config = PredictConfig()
                predictor = None
                if args.pool == "topk":

                    def predictor(path, pixels, model=model, predict_config=predict_config):
                        from dataclasses import replace

                        p = predict(model, path, predict_config, image=pixels)
                        values = np.sort(p.score_map.ravel())
                        top = values[-max(1, values.size // 100) :]
                        return replace(p, image_score=float(top.mean()))

                m = evaluate(model, samples, predict_config, predictor=predictor).metrics
                rows.append((variant, model_name, m))
                print(variant, model_name, round(m["image_auroc"], 3), flush=True)
    print(
        f"\n{args.dataset.name}, {len(samples)} test images, input {args.input_size}, "
        f"image score: {args.pool}"
    )
    print("| variant | model | image AUROC [95 %] | pixel AUROC | AU-PRO | region recall |")
    print("| --- | --- | --- | --- | --- | --- |")
    for variant, model_name, m in rows:
        lo_hi = m["intervals"]["image_auroc"]
        print(
            f"| {variant} | {model_name} | {m['image_auroc']:.3f} [{lo_hi[0]:.3f}, "
            f"{lo_hi[1]:.3f}] | {m['pixel_auroc']:.3f} | {m['au_pro']:.3f} | "
            f"{m['region_recall']:.3f} |"
        )


if __name__ == "__main__":
    main()
