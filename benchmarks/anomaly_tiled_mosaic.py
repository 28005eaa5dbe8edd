"""Tiled training and inspection on large photos: ~19 MP mosaics of MVTec bottle images.

Four 3600 x 5400 mosaics of `train/good` images train a model tiled at full resolution (256 px
tiles, 25 % overlap, the models page's proposal for large photos); a fifth normal mosaic and
mosaics with one test image pasted in are then inspected. Prints one JSON line per step:
training time, calibration, suggestions on the normal mosaic (with the stored threshold and
with the 0.999 quantile alone) and whether a pasted defect is hit. Peak RSS is the process's.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/anomaly_tiled_mosaic.py --model padim
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

from workers.memory import peak_rss_mb  # noqa: E402


def mosaic(tiles: list[Path], offset: int, paste=None):
    import cv2
    import numpy as np

    rows = []
    for r in range(4):
        row = [cv2.imread(str(tiles[(offset + r * 6 + c) % len(tiles)])) for c in range(6)]
        if paste is not None and r == 1:
            row[2] = paste
        rows.append(np.concatenate(row, axis=1))
    return np.concatenate(rows, axis=0)  # 4 x 900 by 6 x 900 px: 19.4 MP


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", default=str(ROOT / ".." / "shared" / "datasets"))
    parser.add_argument("--model", default="padim", choices=["padim", "patchcore"])
    parser.add_argument(
        "--out",
        default=None,
        help="folder for the mosaics and the model, kept; default: a temporary folder, removed "
        "at the end (five 19 MP JPEGs and a model)",
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.out:
        run(args, Path(args.out))
    else:
        with tempfile.TemporaryDirectory(prefix="loupe-mosaic-") as tmp:
            run(args, Path(tmp))


def run(args: argparse.Namespace, out: Path) -> None:
    import cv2
    import numpy as np

    from workers.anomaly import TrainConfig, export_onnx, load_model, predict_many, train

    bottle = Path(args.datasets) / "mvtec_bottle"
    out.mkdir(parents=True, exist_ok=True)
    good = sorted((bottle / "train" / "good").glob("*.png"))
    paths = []
    for k in range(5):
        path = out / f"normal_{k}.jpg"
        cv2.imwrite(str(path), mosaic(good, k * 7), [cv2.IMWRITE_JPEG_QUALITY, 92])
        paths.append(path)

    started = time.perf_counter()
    result = train(TrainConfig(model=args.model, scale=1.0), paths[:4], out / "model")
    cal = result.metrics.get("calibration_images")
    print(json.dumps({"train_seconds": round(time.perf_counter() - started, 1), "tiles":
                      result.metrics.get("tiles"), "calibration_images": cal}))  # fmt: skip
    export_onnx(out / "model")
    model = load_model(out / "model", backend="auto")
    calibration = dict(model.calibration)
    print(json.dumps({"calibration": calibration}))

    def inspect(path: Path, quantile_only: bool = False):
        model.calibration = (
            {**calibration, "pixel_threshold": calibration["pixel_quantile_threshold"]}
            if quantile_only
            else calibration
        )
        started = time.perf_counter()
        prediction = list(predict_many(model, [path]))[0][1]
        model.calibration = calibration
        return prediction, time.perf_counter() - started

    for quantile_only in (False, True):
        pred, seconds = inspect(paths[4], quantile_only)
        print(json.dumps({"normal_mosaic": True, "quantile_only": quantile_only,
                          "suggestions": len(pred.regions), "seconds": round(seconds, 1),
                          "backend": model.backend}))  # fmt: skip
    for mask in sorted((bottle / "ground_truth").glob("*/*_mask.png")):
        image = bottle / "test" / mask.parent.name / mask.name.replace("_mask", "")
        pasted = out / "defect.jpg"
        cv2.imwrite(str(pasted), mosaic(good, 100, cv2.imread(str(image))))
        ys, xs = np.nonzero(cv2.imread(str(mask), 0))
        gx0, gy0, gx1, gy1 = 1800 + xs.min(), 900 + ys.min(), 1800 + xs.max(), 900 + ys.max()
        row = {"defect": f"{mask.parent.name}/{image.name}"}
        for quantile_only in (False, True):
            pred, _ = inspect(pasted, quantile_only)
            hits = [
                r
                for r in pred.regions
                if r.box[0] <= gx1 and r.box[0] + r.box[2] >= gx0
                and r.box[1] <= gy1 and r.box[1] + r.box[3] >= gy0
            ]  # fmt: skip
            key = "quantile_only" if quantile_only else "stored"
            row[key] = {"suggestions": len(pred.regions), "on_the_defect": len(hits)}
        print(json.dumps(row))
    peak = peak_rss_mb()
    print(json.dumps({"peak_rss_mb": round(peak)}))


if __name__ == "__main__":
    main()
