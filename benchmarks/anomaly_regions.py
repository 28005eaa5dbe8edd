"""Regions of interest on a real part: do registered per-region models beat one model?

On an MVTec-layout dataset (``train/good``, ``test/<type>``, ``ground_truth``), one run trains and
scores, side by side, with the same architecture and input size:

- ``whole``: one model on the whole images (what a project without regions runs);
- ``registered``: every image registered onto the first normal image (the reference, as the
  app does: ``workers.change.align``), one region covering the whole part, its model trained on
  the registered normal images (position-aware models then see every part at the same place);
- ``grid NxN``: the reference cut into NxN regions, each with its own model on its registered
  crops (each region seen at N times the resolution of the whole image).

Each is scored on the test images as the app would inspect them: the whole-image prediction
with ``apply_rois`` (workers/anomaly/roi.py) on the registered image; an image that cannot be
registered keeps the whole-image model's prediction and is counted. Figures: image AUROC,
pixel AUROC, AU-PRO, region recall at <= 1 false region per good image (with the test-set size
and bootstrap intervals), train seconds, ms per image.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/anomaly_regions.py \
        --dataset ../shared/datasets/mvtec_bottle --model padim --grid 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _save(pixels: np.ndarray, path: Path) -> Path:
    out = (
        cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
        if pixels.ndim == 3 and pixels.shape[2] == 3
        else pixels
    )
    cv2.imwrite(str(path), out)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset", type=Path, default=ROOT.parent / "shared/datasets/mvtec_bottle"
    )
    parser.add_argument("--model", default="padim")
    parser.add_argument("--input-size", type=int, default=256)
    parser.add_argument("--grid", type=int, default=2, help="NxN regions (0: none)")
    parser.add_argument("--steps", type=int, default=None, help="for models trained in steps")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()

    from workers.anomaly import PredictConfig, TrainConfig, load_model, mvtec_test, train
    from workers.anomaly.evaluation import evaluate
    from workers.anomaly.image_io import read_pixels
    from workers.anomaly.inference import predict
    from workers.anomaly.roi import RoiSpec, apply_rois, registered_crop, roi_box
    from workers.change.align import align

    normals = sorted((args.dataset / "train" / "good").glob("*.png"))
    samples = mvtec_test(args.dataset)
    reference_pixels = read_pixels(normals[0])
    ref_h, ref_w = reference_pixels.shape[:2]
    extra = {"steps": args.steps} if args.steps else {}
    config = TrainConfig(model=args.model, input_size=args.input_size, **extra)

    registrations: dict[str, np.ndarray | None] = {}
    refused: list[str] = []

    def matrix_of(path: Path, pixels: np.ndarray) -> np.ndarray | None:
        key = str(path)
        if key not in registrations:
            if path == normals[0]:
                registrations[key] = np.eye(3)
            else:
                result = align(pixels, reference_pixels)
                registrations[key] = result.homography if result.ok else None
                if not result.ok:
                    refused.append(f"{path.parent.name}/{path.name}: {result.reason}")
        return registrations[key]

    layouts: dict[str, list[list[list[float]]]] = {
        "registered": [[[0, 0], [ref_w, 0], [ref_w, ref_h], [0, ref_h]]]
    }
    if args.grid >= 2:
        n = args.grid
        cells = []
        for row in range(n):
            for col in range(n):
                x0, x1 = ref_w * col / n, ref_w * (col + 1) / n
                y0, y1 = ref_h * row / n, ref_h * (row + 1) / n
                cells.append([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
        layouts[f"grid {n}x{n}"] = cells

    rows = []
    with tempfile.TemporaryDirectory(prefix="loupe-bench-roi-") as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        whole = load_model(train(config, normals, tmp / "whole").artifact_path)
        whole_s = time.perf_counter() - started
        predict_config = PredictConfig()
        result = evaluate(whole, samples, predict_config)
        rows.append(("whole", whole_s, result.metrics))

        for name, polygons in layouts.items():
            started = time.perf_counter()
            specs = []
            for index, polygon in enumerate(polygons):
                box = roi_box(polygon, (ref_h, ref_w))
                folder = tmp / f"{name}-{index}"
                folder.mkdir()
                crops = []
                for path in normals:
                    pixels = read_pixels(path)
                    matrix = matrix_of(path, pixels)
                    if matrix is None:
                        continue
                    crop = registered_crop(pixels, matrix, box)
                    crops.append(_save(crop, folder / path.name))
                model = load_model(
                    train(config, crops, tmp / f"{name}-{index}-model").artifact_path
                )
                specs.append(
                    RoiSpec(key=index, name=f"{name} {index}", polygon=polygon, model=model)
                )
            train_s = time.perf_counter() - started + whole_s

            def predictor(path, pixels, specs=specs):
                base = predict(whole, path, predict_config, image=pixels)
                matrix = matrix_of(Path(path), pixels)
                if matrix is None:
                    return base
                return apply_rois(base, pixels, matrix, specs, (ref_h, ref_w), predict_config)

            result = evaluate(whole, samples, predict_config, predictor=predictor)
            rows.append((name, train_s, result.metrics))

    print(
        f"\n{args.dataset.name}: {args.model} at {args.input_size} px; {len(normals)} normal "
        f"images, {len(samples)} test images ({sum(s.is_anomalous for s in samples)} defective)"
    )
    print(
        f"registration refused for {len(refused)} image(s)" + "".join(f"\n  {r}" for r in refused)
    )
    print(
        "\n| layout | image AUROC [95 %] | pixel AUROC | AU-PRO | region recall | train s | ms/image |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, seconds, m in rows:
        lo_hi = m["intervals"]["image_auroc"]
        interval = f" [{lo_hi[0]:.3f}, {lo_hi[1]:.3f}]" if lo_hi else ""
        print(
            f"| {name} | {m['image_auroc']:.3f}{interval} | {m['pixel_auroc']:.3f} | "
            f"{m['au_pro']:.3f} | {m['region_recall']:.3f} | {seconds:.0f} | {m['ms_per_image']:.0f} |"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "rows": [{"layout": n, "train_s": s, **m} for n, s, m in rows],
                    "refused": refused,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
