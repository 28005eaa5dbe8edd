"""Training checkpoints: everything needed to continue a run exactly where it stopped.

:func:`workers.detection.train` writes one after every epoch when given ``checkpoint=``. It
holds the model and EMA weights, the optimizer (momentum buffers) and the LR schedule, the
epoch and iteration reached, the per-epoch history, the skipped images, the elapsed seconds,
the RNG states (the trainer's own ``random.Random`` that orders and augments the data, Python's
global ``random``, NumPy's global generator, torch's CPU and CUDA generators) and what the run
is: model config, train config, categories and a fingerprint of the training images and boxes.

A checkpoint is only ever continued by the run it belongs to: :func:`check_matches` refuses a
different one with the reason instead of restarting or mixing silently.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import ModelConfig, TrainConfig
from .data import Category, CocoDetectionDataset, reference_file_name
from .errors import CheckpointError

FORMAT = "loupe-ppyoloe-sod-checkpoint"
VERSION = 1

# TrainConfig fields that say where and how verbosely a run computes, not what it computes: a
# run lost on one worker may continue on another with other threads or another device. The
# ``pretrained`` path is read only before the first epoch (a resumed run takes its weights from
# the checkpoint), and a job's copy of it may live at another path on the next worker.
RUNTIME_FIELDS = frozenset({"device", "num_threads", "log_every", "pretrained"})


def dataset_fingerprint(dataset: CocoDetectionDataset) -> str:
    """sha256 over the training images (id, file name; for a Siamese run, the reference's file
    name too) and their boxes and labels, in order: the data order and augmentation only replay
    exactly on the same list."""
    h = hashlib.sha256()
    for i, img in enumerate(dataset.images):
        boxes, labels = dataset.targets(i)
        ident = [img["id"], img["file_name"]]
        if dataset.references:
            ident.append(reference_file_name(img))
        h.update(json.dumps(ident).encode())
        h.update(np.ascontiguousarray(boxes, dtype=np.float32).tobytes())
        h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()


def capture_rng(rng: random.Random) -> dict[str, Any]:
    """Every random state training draws from, in plain types and tensors (``weights_only``
    loading accepts them)."""
    version, internal, gauss = rng.getstate()
    g_version, g_internal, g_gauss = random.getstate()
    _, key, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "trainer": {"version": version, "internal": list(internal), "gauss": gauss},
        "python": {"version": g_version, "internal": list(g_internal), "gauss": g_gauss},
        "numpy": {
            "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng(state: dict[str, Any], rng: random.Random) -> None:
    """Inverse of :func:`capture_rng`."""
    t = state["trainer"]
    rng.setstate((t["version"], tuple(t["internal"]), t["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    n = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            n["key"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    # A run moved from a GPU worker to a CPU one (or to fewer GPUs) keeps what applies.
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def run_identity(
    model_config: ModelConfig,
    train_config: TrainConfig,
    categories: list[Category],
    fingerprint: str,
) -> dict[str, Any]:
    """What a checkpoint must match to be continued."""
    return {
        "model_config": model_config.to_dict(),
        "train_config": train_config.to_dict(),
        "categories": [{"id": c.id, "name": c.name} for c in categories],
        "dataset_sha256": fingerprint,
    }


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` atomically: a temp file in the same folder, flushed to disk, then
    ``os.replace``. A worker killed mid-write leaves the previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, "version": VERSION, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint (tensors and plain types only: ``weights_only=True``)."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same plain answer
        raise CheckpointError(
            f"cannot read training checkpoint {path} ({exc}); delete it to train from the start"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a Loupe detection training checkpoint; delete it or pass another path"
        )
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"training checkpoint {path} has version {payload.get('version')}, this code "
            f"reads version {VERSION}; delete it to train from the start"
        )
    return payload


def _differences(
    label: str, saved: dict[str, Any], now: dict[str, Any], defaults: dict[str, Any] | None = None
) -> list[str]:
    out = []
    for key in sorted(set(saved) | set(now)):
        if key in RUNTIME_FIELDS and label == "train config":
            continue
        if key not in saved and defaults and key in defaults and now.get(key) == defaults[key]:
            continue  # an option added since the checkpoint was written, left at its default
        if saved.get(key) != now.get(key):
            out.append(f"{label} {key}: checkpoint {saved.get(key)!r}, now {now.get(key)!r}")
    return out


def check_matches(payload: dict[str, Any], identity: dict[str, Any], path: str | Path) -> None:
    """Raise :class:`CheckpointError` naming every difference between the run that wrote the
    checkpoint and this one (model config, train config except :data:`RUNTIME_FIELDS`,
    categories, training images). A train config option that the checkpoint does not name (the
    code gained it since) matches when this run leaves it at its default: a worker upgraded in
    the middle of a long training goes on from its last epoch."""
    saved = payload.get("run", {})
    problems = _differences("model config", saved.get("model_config", {}), identity["model_config"])
    problems += _differences(
        "train config",
        saved.get("train_config", {}),
        identity["train_config"],
        TrainConfig().to_dict(),
    )
    if saved.get("categories") != identity["categories"]:
        names = [f"{c['id']}:{c['name']}" for c in saved.get("categories", [])]
        now = [f"{c['id']}:{c['name']}" for c in identity["categories"]]
        problems.append(f"categories: checkpoint {names}, now {now}")
    if saved.get("dataset_sha256") != identity["dataset_sha256"]:
        problems.append("training images or their boxes differ")
    if problems:
        raise CheckpointError(
            f"training checkpoint {path} belongs to a different run ("
            + "; ".join(problems)
            + "); delete it to train from the start, or pass the run's own settings"
        )
