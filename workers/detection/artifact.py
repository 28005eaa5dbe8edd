"""One-file model artifacts: weights + model config + category names (+ training metadata)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from .config import ModelConfig
from .data import Category
from .errors import WeightsNotFound
from .model import PPYOLOE, build_model

FORMAT = "loupe-ppyoloe-sod"
VERSION = 1


def save_artifact(
    path: str | Path,
    model: PPYOLOE,
    categories: list[Category],
    metadata: dict[str, Any] | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the artifact atomically (temp file + rename) so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model_config": model.cfg.to_dict(),
        "categories": [{"id": c.id, "name": c.name} for c in categories],
        "state_dict": {k: v.detach().cpu() for k, v in (state_dict or model.state_dict()).items()},
        "metadata": metadata or {},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def artifact_sha256(path: str | Path) -> str:
    """sha256 of the artifact file: what an export made from it is tagged with."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFound(
            f"model artifact {path} not found; create one with "
            f"`python -m workers.detection train ... --output {path}`"
        )
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_artifact(path: str | Path) -> dict[str, Any]:
    """Load the raw artifact dict (tensors only, no pickled code: ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFound(
            f"model artifact {path} not found; create one with "
            f"`python -m workers.detection train ... --output {path}`"
        )
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a Loupe detection artifact")
    return payload


def trained_slicing(metadata: dict[str, Any], eval_size: int) -> dict[str, Any] | None:
    """How a detector trained on slices saw its objects: ``crop`` (the slice size, full
    resolution), ``sizes`` (the smallest and largest network input the crops were resized to)
    and ``eval_size`` (its input when trained); None for one trained on whole images."""
    tcfg = metadata.get("train_config") or {}
    crop = tcfg.get("crop_size")
    if not crop:
        return None
    sizes = [int(v) for v in tcfg.get("train_sizes") or [eval_size]]
    return {"crop": int(crop), "sizes": [min(sizes), max(sizes)], "eval_size": int(eval_size)}


def load_artifact(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[PPYOLOE, list[Category], dict[str, Any]]:
    """Model (eval mode, on ``device``), categories and metadata from an artifact."""
    payload = read_artifact(path)
    cfg = ModelConfig.from_dict(payload["model_config"])
    # The artifact holds the trained backbone weights, so no ImageNet weights are read.
    model = build_model(cfg, pretrained_backbone=False)
    model.load_state_dict(payload["state_dict"], strict=True)
    model.to(device).eval()
    cats = [
        Category(id=int(c["id"]), name=str(c["name"]), index=i)
        for i, c in enumerate(payload["categories"])
    ]
    return model, cats, payload.get("metadata", {})
