"""Where an image's time goes in predict_many, stage by stage, for a trained whole-image model.

Times, per test image of an MVTec-layout dataset and on one thread: decoding, resizing to the
network input, the network (one image at a time and in batches of 8), heatmap + calibration +
regions (at the default 1024 px heatmap and at the network's size), and predict_many end to end.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/anomaly_stages.py \\
        var/bench/s4/mvtec_bottle_padim ../shared/datasets/mvtec_bottle
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    import torch

    from workers.anomaly import PredictConfig, export_onnx, load_model, mvtec_test, predict_many
    from workers.anomaly.image_io import read_pixels
    from workers.anomaly.inference import predict_decoded, whole_maps

    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("dataset")
    parser.add_argument("--backend", default="openvino")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.backend != "torch" and not (Path(args.model_dir) / "model.onnx").exists():
        export_onnx(args.model_dir)
    model = load_model(args.model_dir, backend=args.backend)
    if model.geometry.scale is not None:
        raise SystemExit("a whole-image model is needed (tiled models have no batch stage)")
    paths = [str(s.image) for s in mvtec_test(Path(args.dataset))]
    n = len(paths)
    row: dict = {"images": n, "backend": model.backend}

    def ms(started: float) -> float:
        return round(1000 * (time.perf_counter() - started) / n, 1)

    started = time.perf_counter()
    images = [read_pixels(p) for p in paths]
    row["decode_ms"] = ms(started)
    started = time.perf_counter()
    inputs = [model.geometry.prepare(i) for i in images]
    row["resize_ms"] = ms(started)
    config = PredictConfig()
    whole_maps(model, inputs[:8], config)  # warm-up
    raws: list = []
    for batch in (1, 8):
        started, raws = time.perf_counter(), []
        for k in range(0, n, batch):
            raws.extend(whole_maps(model, inputs[k : k + batch], config))
        row[f"network_batch{batch}_ms"] = ms(started)
    for side in (1024, model.geometry.input_size):
        c = PredictConfig(heatmap_max_side=side)
        started = time.perf_counter()
        for i, p in enumerate(paths):
            predict_decoded(model, p, images[i], c, None, 0.0, raws[i])
        row[f"heatmap_regions_{side}px_ms"] = ms(started)
    for side in (1024, model.geometry.input_size):
        c = PredictConfig(heatmap_max_side=side)
        list(predict_many(model, paths[:8], c))  # warm-up
        started = time.perf_counter()
        list(predict_many(model, paths, c))
        row[f"predict_many_{side}px_ms"] = ms(started)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
