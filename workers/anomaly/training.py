"""Training: hold out calibration images, fit the model its module defines, calibrate, write.

What is model-specific (the network, how it is fitted) is the model's entry in
:data:`~workers.anomaly.models.MODELS`; this module does the same steps around it for every
model, and its companions (the coarse whole-image pass of a tiled model, the line model).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from . import models
from .artifact import LoadedModel, save_artifact
from .calibration import calibrate
from .config import (
    Phase,
    PredictConfig,
    ProgressCallback,
    TrainConfig,
    accepted_long_sides,
    no_progress,
    resolve_device,
)
from .errors import ConfigError
from .image_io import read_pixels
from .inference import line_parts
from .offline import configure_offline
from .tiling import Geometry
from .training_data import TrainData, TrainImages


@dataclass
class TrainResult:
    """What :func:`train` made: the artifact file and figures about the run."""

    artifact_path: Path
    model_id: str
    metrics: dict
    calibration: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-serialisable dict (the calibration under ``"calibration"``)."""
        return {
            "artifact_path": str(self.artifact_path),
            "model_id": self.model_id,
            **self.metrics,
            "calibration": self.calibration,
        }


def train(
    config: TrainConfig,
    normal_image_paths: Sequence[str | Path],
    out_dir: str | Path,
    progress: ProgressCallback | None = None,
) -> TrainResult:
    """Train a model on defect-free images and write ``<out_dir>/model.pt`` (+ ``model.json``).

    ``progress(fraction, message)`` is called often; raising :class:`Cancelled` from it stops
    training at once and nothing is written. Held-out normal images calibrate the scores.
    ``steps``, ``batch_size`` and ``learning_rate`` left at ``None`` take the model's defaults
    (:meth:`TrainConfig.resolved`); the artifact's ``train_config`` holds the values used.
    """
    progress = progress or no_progress
    # the model's defaults for what the user left unset, here once: fit and the artifact
    # (train_config) see the values used
    config = config.resolved()
    config.validate()
    # The companions: the downscaled whole-image pass is a second, whole-image model of the
    # same kind (<out_dir>/coarse), the line model a model of its own at the same geometry
    # (<out_dir>/lines); each is referenced by the main artifact and trained first, so that the
    # main model.pt (written last, atomically) never points at a missing one.
    companions: dict[str, TrainResult] = {}
    plain = replace(config, coarse_pass=False, lines=False)
    wanted = {
        "coarse": replace(plain, scale=None) if config.coarse_pass else None,
        "lines": replace(
            plain, model="lines", multiscale=(), backbone="lite0", steps=None, batch_size=None
        )
        if config.lines
        else None,
    }
    wanted = {name: c for name, c in wanted.items() if c is not None}
    if "lines" in wanted:  # its own defaults for what it does not use, checked as any model's
        wanted["lines"] = replace(
            wanted["lines"], learning_rate=None, suggest_rate=config.flag_rate
        ).resolved()
        wanted["lines"].validate()
    share = 0.3 * len(wanted)
    # the companions as fitted, kept (in memory, on the device) only for the sum's calibration
    loaded: dict[str, LoadedModel] = {}
    for i, (name, companion) in enumerate(wanted.items()):
        companions[name], fitted = _train_one(
            companion,
            normal_image_paths,
            Path(out_dir) / name,
            Phase(progress, 0.3 * i, 0.3 * (i + 1)),
            {},
            predictive=not config.lines,
        )
        if "lines" in wanted:
            loaded[name] = fitted
    main = Phase(progress, share, 1.0) if wanted else progress
    return _train_one(
        config, normal_image_paths, out_dir, main, companions, loaded, predictive=not config.lines
    )[0]


def _train_one(
    config: TrainConfig,
    normal_image_paths: Sequence[str | Path],
    out_dir: str | Path,
    progress: ProgressCallback,
    companions: dict[str, TrainResult],
    companion_models: dict[str, LoadedModel] | None = None,
    predictive: bool = True,
) -> tuple[TrainResult, LoadedModel]:
    """One model (the main one, or one of its companions: a tiled model's whole-image pass, the
    line model), and the model as fitted (``companion_models``: the companions', which the sum
    with the line model is calibrated with). ``predictive``: ``calibrate``'s. With a line
    model, each map's own calibration only scales it before the sum, which is calibrated again
    and suggests: those keep the fit's own quantile, and the sum's is predictive."""
    configure_offline(Path(config.models_dir) if config.models_dir else None)
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    paths = [Path(p) for p in normal_image_paths]
    if not paths:
        raise ConfigError("no training images")
    started = time.monotonic()
    progress(0.0, f"reading {len(paths)} images")
    info = _image_info(paths)
    geometry = Geometry(config.input_size, config.scale, config.tile_overlap, config.shading)
    train_paths, cal_paths = _split(paths, config.calibration_fraction, config.seed)
    data = TrainData(
        images=TrainImages(train_paths, geometry),
        held_out=TrainImages(cal_paths or train_paths, geometry),
    )
    metrics: dict = {"train_images": len(train_paths), "calibration_images": len(cal_paths)}
    if config.scale is not None:  # tiles at a pixel scale: other sizes are resized (fit_size)
        # the training images' long sides, and those inspected as they are; an image outside
        # is resized to the nearest end of the first (inference.fitted)
        metrics["trained_long_sides"] = [info["min_long_side"], info["max_long_side"]]
        lo, hi = accepted_long_sides(info["min_long_side"], info["max_long_side"])
        metrics["accepted_long_sides"] = [round(lo), round(hi)]
    fitted = models.get(config.model).fit(config, data, device, progress)
    metrics.update(fitted.metrics)
    net = fitted.net
    net.eval()
    metrics["train_seconds"] = round(time.monotonic() - started, 2)

    loaded = LoadedModel(
        net=net,
        kind=config.model,
        model_id=uuid.uuid4().hex,
        geometry=geometry,
        channels=info["channels"],
        calibration={},
        info=info,
        device=device,
        meta={},
    )
    progress(0.88, "calibrating")
    with_lines = "lines" in companions
    calibration = calibrate(
        loaded,
        cal_paths or train_paths,
        config.suggest_rate,
        config.flag_rate,
        Phase(progress, 0.88, 0.94 if with_lines else 0.99),
        predictive=predictive,
    )
    calibration["on_training_images"] = not cal_paths
    loaded.calibration = calibration
    if with_lines:  # the model with its line detector, on the same held-out images
        attached = replace(loaded, **(companion_models or {}))
        defaults = PredictConfig()
        step = Phase(progress, 0.94, 0.99)

        def summed(image: np.ndarray) -> np.ndarray:
            main, lines_map, _, _ = line_parts(attached, image, defaults)
            return main + lines_map

        fused = calibrate(
            attached,
            cal_paths or train_paths,
            config.suggest_rate,
            config.flag_rate,
            lambda fraction, message: step(fraction, f"{message}, with the line detector"),
            raw_map=summed,
        )
        calibration["with_lines"] = {**fused, "on_training_images": not cal_paths}
    path = save_artifact(
        out_dir,
        loaded,
        net_args=fitted.net_args,
        config=config,
        metrics=metrics,
        companions={name: c.model_id for name, c in companions.items()},
    )
    progress(1.0, "done")
    result = TrainResult(
        artifact_path=path, model_id=loaded.model_id, metrics=metrics, calibration=calibration
    )
    return result, loaded


def _split(paths: list[Path], fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Hold out ``fraction`` of the normal images for calibration (none when fewer than 4)."""
    if len(paths) < 4 or fraction <= 0:
        return paths, []
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(paths))
    n_cal = max(1, int(round(fraction * len(paths))))
    cal = [paths[i] for i in sorted(order[:n_cal])]
    train = [paths[i] for i in sorted(order[n_cal:])]
    return train, cal


def _image_info(paths: list[Path]) -> dict:
    """Channels (must agree) and size range of the training images."""
    channels, sizes = set(), []
    for p in paths:
        img = read_pixels(p)
        channels.add(img.shape[2])
        sizes.append(img.shape[:2])
    if len(channels) > 1:
        raise ConfigError("training images mix grayscale and colour; convert them to one kind")
    longs = [max(s) for s in sizes]
    return {
        "channels": channels.pop(),
        "min_long_side": int(min(longs)),
        "max_long_side": int(max(longs)),
        "count": len(paths),
    }
