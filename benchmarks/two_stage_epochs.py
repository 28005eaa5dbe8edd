"""Seconds per epoch of the app's two-stage change detector against the number of pairs: what
the training form's estimate rests on (``annotations/services/detectors.py``,
``TWO_STAGE_SECONDS`` and ``TWO_STAGE_MIN_PAIRS``).

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/two_stage_epochs.py \
        --pairs 10 50 [--epochs 3] [--dataset ../shared/datasets/deeppcb]

Trains ``workers.detection.two_stage.train`` (the training job's library call, no validation)
on the first N official trainval pairs of DeepPCB, one thread, and prints each epoch's training
seconds and their median. An epoch is at least 20 batches of 64 crops: a few pairs cost as much
as about 34 DeepPCB pairs (about 38 changed places each); more pairs cost 0.32 s each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=ROOT.parent / "shared/datasets/deeppcb")
    parser.add_argument("--pairs", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    import torch

    from workers.detection.two_stage import PairConfig, train

    torch.set_num_threads(1)
    coco = json.loads((args.dataset / "annotations.json").read_text())
    trainval = [im for im in coco["images"] if im.get("official_split") == "trainval"]
    for n in args.pairs:
        images = trainval[:n]
        ids = {im["id"] for im in images}
        subset = {
            **coco,
            "images": images,
            "annotations": [a for a in coco["annotations"] if a["image_id"] in ids],
        }
        with tempfile.TemporaryDirectory(prefix="loupe-two-stage-") as tmp:
            path = Path(tmp) / "train.json"
            path.write_text(json.dumps(subset))
            seconds: list[float] = []

            def report(_fraction, _message, metrics, seconds=seconds) -> None:
                if metrics is not None:
                    seconds.append(metrics["seconds"])

            began = time.time()
            train(
                path,
                Path(tmp) / "model.pt",
                image_root=args.dataset,
                reference_root=args.dataset,
                config=PairConfig(epochs=args.epochs, num_threads=1),
                progress=report,
            )
        median = statistics.median(seconds)
        print(
            f"{len(images)} pairs: seconds per epoch {', '.join(f'{s:.1f}' for s in seconds)} "
            f"(median {median:.1f}, {median / len(images):.2f} per pair); "
            f"{time.time() - began:.0f} s in all"
        )


if __name__ == "__main__":
    main()
