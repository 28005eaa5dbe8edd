"""Settings: how a model is trained (:class:`TrainConfig`), how an image is predicted
(:class:`PredictConfig`), the default for the hardware, and the progress-callback type.

Importing this module does not import torch (a job builds these before it loads a model, and the
CLI to parse its arguments): the model table and torch are imported by the functions that need
them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from workers.lite0 import VARIANTS

from .errors import ConfigError, IncompatibleModelError
from .regions import RegionConfig

if TYPE_CHECKING:  # pragma: no cover
    import torch

ProgressCallback = Callable[[float, str], None]

#: What can run a model's network (``load_model(..., backend=...)``; see :mod:`.runtimes`).
BACKENDS = ("auto", "torch", "onnx", "openvino", "openvino-int8")

#: ``TrainConfig.backbone`` values (ImageNet EfficientNet-Lite0/1/2 shipped on PyPI) and the
#: models that take one.
BACKBONES = VARIANTS
BACKBONE_MODELS = ("padim", "patchcore", "patchcore_fine")

#: ``TrainConfig.multiscale_fusion``: how a multi-scale model joins its scales' maps
MULTISCALE_FUSIONS = ("mean", "max")


#: A tiled model inspects an image as it is when its long side is within x1/2 - x2 of the
#: training images' long sides; farther off, the image is refused, or resized into the training
#: range with ``PredictConfig.fit_size`` (the app does that, and says so beforehand).
SIZE_TOLERANCE = 2.0


def accepted_long_sides(min_long_side: int, max_long_side: int) -> tuple[float, float]:
    """The long sides (px) a tiled model trained on images of ``min_long_side``-``max_long_side``
    inspects as they are."""
    return min_long_side / SIZE_TOLERANCE, max_long_side * SIZE_TOLERANCE


def no_progress(fraction: float, message: str) -> None:
    """Default progress callback: does nothing."""


class Phase:
    """Maps a sub-task's 0..1 progress into a slice of the overall 0..1 bar."""

    def __init__(self, progress: ProgressCallback, start: float, end: float) -> None:
        self.progress, self.start, self.end = progress, start, end

    def __call__(self, fraction: float, message: str) -> None:
        fraction = min(1.0, max(0.0, fraction))
        self.progress(self.start + (self.end - self.start) * fraction, message)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class TrainConfig:
    """Everything that decides how a model is trained; stored in the artifact.

    Defaults are for a GPU worker; on CPU lower ``steps`` (EfficientAD) or choose ``padim``.
    ``steps``, ``batch_size`` and ``learning_rate`` left at ``None`` take the model's own
    defaults (:meth:`resolved`, which :func:`~workers.anomaly.training.train` applies before
    fitting, so the artifact stores the values used).
    """

    model: str = "efficientad"
    input_size: int = 256
    scale: float | None = None
    efficientad_size: str = "small"
    teacher: str = "auto"
    # None: the model's default (ModelSpec.train_defaults; resolved() fills them in)
    steps: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    patience: int = 0
    max_seconds: float | None = None
    penalty_dir: str | None = None
    tile_overlap: float = 0.25
    calibration_fraction: float = 0.15
    # expected shares of normal images with a suggested region / judged anomalous: the pixel
    # and image thresholds (docs/anomaly.md, "Calibration", has the measurements behind them)
    suggest_rate: float = 0.25
    flag_rate: float = 0.05
    coreset_ratio: float = 0.1
    max_memory_bank: int = 20_000
    max_candidates: int = 200_000
    padim_features: int = 100
    # ImageNet EfficientNet-Lite size of PaDiM's and PatchCore's backbone: "lite0", "lite1" or
    # "lite2" (docs/anomaly.md, "Backbones"); other models have their own networks
    backbone: str = "lite0"
    coarse_pass: bool = False
    # a dark-line model beside this one (workers/anomaly/models/lines.py), trained on the same
    # images at the same geometry, its calibrated map added to this model's and the sum
    # calibrated again on the held-out normal images: cracks and dark scratches deeper than the
    # normal images show (docs/anomaly.md, "Line detector")
    lines: bool = False
    # input sizes of a multi-scale model: one network of this model per size, each seeing the
    # network input area-averaged to it, their maps put on one scale and fused by their mean
    # (or "max": measured below it, docs/anomaly.md "Multi-scale"); the largest is input_size,
    # each divides it; () = one scale, as before (workers/anomaly/multiscale.py)
    multiscale: tuple[int, ...] = ()
    multiscale_fusion: str = "mean"
    # shading correction: each image divided by its own blurred brightness before the model
    # sees it (training and prediction alike), the blur's sigma this fraction of the image's
    # shorter side; 0 = off. For parts whose normal photos vary in lighting (docs/anomaly.md,
    # "Shading correction")
    shading: float = 0.0
    seed: int = 0
    device: str = "auto"
    models_dir: str | None = None

    def _spec(self):  # noqa: ANN202 - a models.ModelSpec (models imports torch lazily)
        from . import models

        try:
            return models.get(self.model)
        except IncompatibleModelError:
            raise ConfigError(
                f"model must be one of {models.names()}, not {self.model!r}"
            ) from None

    def resolved(self) -> TrainConfig:
        """A copy with ``steps``, ``batch_size`` and ``learning_rate`` left at ``None`` set to
        the model's defaults (``ModelSpec.train_defaults``, else ``models.TRAIN_DEFAULTS``);
        values the user set are kept. :class:`ConfigError` for an unknown model."""
        from .models import TRAIN_DEFAULTS

        defaults = {**TRAIN_DEFAULTS, **self._spec().train_defaults}
        unset = {name: defaults[name] for name in TRAIN_DEFAULTS if getattr(self, name) is None}
        return replace(self, **unset)

    def validate(self) -> None:
        """Raise :class:`ConfigError` for values that cannot work (``None`` is the model's
        default, checked once :meth:`resolved` has filled it in)."""
        minimum = self._spec().min_input_size
        if self.input_size < minimum or self.input_size % 32:
            raise ConfigError(
                f"input_size must be a multiple of 32 and >= {minimum} for {self.model}, "
                f"not {self.input_size}"
            )
        if self.scale is not None and not 0 < self.scale <= 4:
            raise ConfigError(f"scale must be in (0, 4] or None, not {self.scale}")
        if not 0 <= self.tile_overlap < 0.9:
            raise ConfigError("tile_overlap must be a fraction in [0, 0.9)")
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1, not {value}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be > 0, not {self.learning_rate}")
        for name in ("suggest_rate", "flag_rate"):
            if not 0 < getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a share of normal images in (0, 1)")
        if self.flag_rate > self.suggest_rate:
            raise ConfigError(
                "flag_rate must not exceed suggest_rate (a flagged image has a region)"
            )
        if self.coarse_pass and self.scale is None:
            raise ConfigError("coarse_pass adds a whole-image pass to a tiled model: set scale")
        if self.lines and self.model == "lines":
            raise ConfigError("lines adds the line model beside another model, not to itself")
        if self.multiscale:
            self._validate_multiscale(minimum)
        if self.backbone not in BACKBONES:
            raise ConfigError(f"backbone must be one of {BACKBONES}, not {self.backbone!r}")
        if not 0 <= self.shading <= 1:
            raise ConfigError(
                "shading is the lighting blur as a fraction of the image's shorter side, in "
                f"[0, 1] (0: off; 0.2 suits most parts), not {self.shading}"
            )
        if self.backbone != "lite0" and self.model not in BACKBONE_MODELS:
            raise ConfigError(
                f"backbone {self.backbone!r} is a choice of {', '.join(BACKBONE_MODELS)}; "
                f"{self.model} has its own network (leave backbone at 'lite0')"
            )

    def _validate_multiscale(self, minimum: int) -> None:
        sizes = tuple(self.multiscale)
        if len(sizes) < 2 or len(set(sizes)) != len(sizes):
            raise ConfigError(f"multiscale needs two or more different input sizes, not {sizes}")
        if max(sizes) != self.input_size:
            raise ConfigError(
                f"the largest multiscale size is the network input: set input_size={max(sizes)} "
                f"(it is {self.input_size})"
            )
        for size in sizes:
            if self.input_size % size or size < minimum or size % 32:
                raise ConfigError(
                    f"multiscale size {size} must divide input_size {self.input_size} and be a "
                    f"multiple of 32, >= {minimum} for {self.model}"
                )
        if self.multiscale_fusion not in MULTISCALE_FUSIONS:
            raise ConfigError(
                f"multiscale_fusion must be one of {MULTISCALE_FUSIONS}, "
                f"not {self.multiscale_fusion!r}"
            )


#: Why :func:`recommended_config` chooses its model, by device type (the CLI prints it).
RECOMMENDED_BECAUSE = {
    "cuda": "a GPU trains EfficientAD-S's 1000 steps in minutes",
    "cpu": "no GPU: PaDiM fits in one pass over the images (seconds), where EfficientAD needs "
    "hours of CPU and a teacher file",
}


def recommended_config(device: str = "auto", **overrides: object) -> TrainConfig:
    """The default model for the hardware: EfficientAD-S (1000 steps) when training on a GPU,
    PaDiM on CPU (one pass over the images: seconds, where EfficientAD needs hours).

    ``overrides`` are any :class:`TrainConfig` fields. :data:`RECOMMENDED_BECAUSE` says why.
    """
    if resolve_device(device).type == "cuda":
        # steps and batch size stay None: the model's defaults, also when overrides change
        # the model (the app passes its own choice of model through here)
        config = TrainConfig(model="efficientad", device=device)
    else:
        config = TrainConfig(model="padim", device=device)
    return replace(config, **overrides)


@dataclass
class PredictConfig:
    """How one image is turned into a heatmap and regions. Nothing here changes the model."""

    batch_size: int = 8
    tile_overlap: float | None = None
    heatmap_max_side: int = 1024
    stitch_downsample: int = 2
    regions: RegionConfig = field(default_factory=RegionConfig)
    specular_mask: bool = False
    specular_v_min: float = 240.0
    specular_s_max: float = 30.0
    allow_size_mismatch: bool = False
    # An image far off the training images' size (x0.5-x2 of their long sides) is resized into
    # their range before the model sees it, at the pixel scale it learnt normal at, instead of
    # being refused; its heatmap and regions are in the full image's coordinates, and
    # Prediction.params["resized"] says so ({"from": long side, "to": long side}). Whole-image
    # models resize every image to their input anyway: for them only the refusal goes.
    fit_size: bool = False
    coarse_pass: bool = True
    lines: bool = True  # the line model, where the model has one (TrainConfig.lines)
    half: bool = False  # fp16 autocast on CUDA only
    device: str = "auto"
