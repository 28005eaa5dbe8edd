"""Shared fixtures: a synthetic COCO set and one tiny detector trained on it (once)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from workers.detection.config import ModelConfig, TrainConfig

REPO = Path(__file__).resolve().parents[3]
BACKGROUND = (90, 90, 90)
COLOURS = ((230, 40, 40), (40, 40, 230))  # class 0 red, class 1 blue


def datasets_root() -> Path:
    """``$LOUPE_DATASETS`` or ``<repo>/../shared/datasets``."""
    return Path(os.environ.get("LOUPE_DATASETS", REPO.parent / "shared" / "datasets"))


def tiny_model_config(**overrides: object) -> ModelConfig:
    """The real architecture at 1/8 width and one small encoder layer, for fast tests."""
    kw: dict[str, object] = {
        "num_classes": 2,
        "width_mult": 0.125,
        "depth_mult": 0.33,
        "dim_feedforward": 64,
        "num_layers": 1,
        "eval_size": 128,
    }
    kw.update(overrides)
    return ModelConfig(**kw)  # type: ignore[arg-type]


def make_synthetic_coco(root: Path, n: int = 8, size: int = 128, seed: int = 0) -> Path:
    """``n`` grey images with three red/blue squares (10-23 px) each, as COCO JSON."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n):
        im = np.full((size, size, 3), BACKGROUND, np.uint8)
        for j in range(3):
            s = int(rng.integers(10, 24))
            # Some squares are cut by the image border (boxes clipped), as in sliced exports;
            # the model must learn that a cut defect gets a cut box, or SAHI cannot merge it.
            lo = -s // 2 if j == 2 else 0
            x, y = int(rng.integers(lo, size - s)), int(rng.integers(lo, size - s))
            x0, y0 = max(x, 0), max(y, 0)
            x1, y1 = min(x + s, size), min(y + s, size)
            im[y0:y1, x0:x1] = COLOURS[j % 2]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": j % 2 + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
        Image.fromarray(im).save(root / "img" / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"img/{i}.png", "width": size, "height": size})
    ann = root / "ann.json"
    categories = [{"id": 1, "name": "red"}, {"id": 2, "name": "blue"}]
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return ann


@pytest.fixture(scope="session", autouse=True)
def _threads() -> None:
    # One intra-op thread: these models are tiny, and on a shared 2-core CI box a second
    # spinning OpenMP thread made an iteration ~30x slower (measured 1.15 s vs 0.035 s).
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def synthetic_coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_coco(tmp_path_factory.mktemp("synth"))


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, synthetic_coco: Path) -> dict[str, object]:
    """Overfit the tiny model on the synthetic set once; shared by the smoke and SAHI tests."""
    from workers.detection.trainer import train

    out = tmp_path_factory.mktemp("model") / "model.pt"
    calls: list[tuple[float, str, dict | None]] = []
    result = train(
        synthetic_coco,
        out,
        model_config=tiny_model_config(),
        train_config=TrainConfig(
            epochs=120,
            batch_size=4,
            base_lr=0.02,
            train_sizes=(128,),
            distort=False,
            warmup_epochs=2,
            ema_decay=0.98,
            cosine_epochs_factor=1.0,
            log_every=1000,
        ),
        progress=lambda f, m, d: calls.append((f, m, d)),
        val_json=synthetic_coco,
        eval_every=60,
        eval_slice_size=128,
    )
    return {"result": result, "calls": calls, "path": out, "coco": synthetic_coco}
