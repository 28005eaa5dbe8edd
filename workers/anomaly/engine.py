"""Train, load, predict: the engine's public entry points (re-exported by the package).

Two geometry modes, chosen at training time and stored in the artifact:

* ``scale=None`` ("whole image"): every image is resized to ``input_size`` x ``input_size``,
  like anomalib's MVTec setup. Right when defects are large relative to the image.
* ``scale=s`` ("tiled"): images are resized by the factor ``s`` (1.0 = native pixels) and covered
  by overlapping ``input_size`` tiles, in training (random crops / the tile grid) and prediction
  (the tile grid, batched, blended). Right for 8-24 MP images with small defects.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import torch

from . import nets
from .errors import (
    AnomalyError,
    Cancelled,
    ConfigError,
    IncompatibleModelError,
    MissingWeightsError,
)
from .image_io import read_image, read_pixels, resize, specular_mask, to_float, to_rgb
from .offline import configure_offline, distilled_teacher_path, official_teacher_path
from .regions import Region, RegionConfig, extract_regions
from .tiling import Stitcher, pad_to_tile, tile_grid

logger = logging.getLogger(__name__)

ARTIFACT_FORMAT = "loupe-anomaly"
ARTIFACT_VERSION = 1
ARTIFACT_NAME = "model.pt"
BACKENDS = ("auto", "torch", "onnx", "openvino", "openvino-int8")

ProgressCallback = Callable[[float, str], None]


def _no_progress(fraction: float, message: str) -> None:
    """Default progress callback: does nothing."""


@dataclass
class TrainConfig:
    """Everything that decides how a model is trained; stored in the artifact.

    Defaults are for a GPU worker; on CPU lower ``steps`` (EfficientAD) or choose ``padim``.
    """

    model: str = "efficientad"
    input_size: int = 256
    scale: float | None = None
    efficientad_size: str = "small"
    teacher: str = "auto"
    steps: int = 1000
    batch_size: int = 1
    learning_rate: float = 1e-4
    patience: int = 0
    max_seconds: float | None = None
    penalty_dir: str | None = None
    tile_overlap: float = 0.25
    calibration_fraction: float = 0.15
    pixel_quantile: float = 0.999
    coreset_ratio: float = 0.1
    max_memory_bank: int = 20_000
    max_candidates: int = 200_000
    padim_features: int = 100
    coarse_pass: bool = False
    seed: int = 0
    device: str = "auto"
    models_dir: str | None = None

    def validate(self) -> None:
        """Raise :class:`ConfigError` for values that cannot work."""
        if self.model not in nets.KINDS:
            raise ConfigError(f"model must be one of {nets.KINDS}, not {self.model!r}")
        # EfficientAD's autoencoder ends in an 8x8 convolution at 1/32 scale: 256 px minimum.
        minimum = 256 if self.model == "efficientad" else 64
        if self.input_size < minimum or self.input_size % 32:
            raise ConfigError(
                f"input_size must be a multiple of 32 and >= {minimum} for {self.model}, "
                f"not {self.input_size}"
            )
        if self.scale is not None and not 0 < self.scale <= 4:
            raise ConfigError(f"scale must be in (0, 4] or None, not {self.scale}")
        if not 0 <= self.tile_overlap < 0.9:
            raise ConfigError("tile_overlap must be a fraction in [0, 0.9)")
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError("steps and batch_size must be >= 1")
        if not 0 < self.pixel_quantile <= 1:
            raise ConfigError("pixel_quantile must be in (0, 1]")
        if self.coarse_pass and self.scale is None:
            raise ConfigError("coarse_pass adds a whole-image pass to a tiled model: set scale")


def recommended_config(device: str = "auto", **overrides: object) -> TrainConfig:
    """The default model for the hardware: EfficientAD-S (1000 steps) when training on a GPU,
    PaDiM on CPU (one pass over the images: seconds, where EfficientAD needs hours).

    ``overrides`` are any :class:`TrainConfig` fields.
    """
    if resolve_device(device).type == "cuda":
        config = TrainConfig(model="efficientad", steps=1000, batch_size=1, device=device)
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
    coarse_pass: bool = True
    half: bool = False  # fp16 autocast on CUDA only
    device: str = "auto"


@dataclass
class TrainResult:
    """What :func:`train` made: the artifact file and figures about the run."""

    artifact_path: Path
    model_id: str
    metrics: dict

    def to_dict(self) -> dict:
        """JSON-serialisable dict."""
        return {"artifact_path": str(self.artifact_path), "model_id": self.model_id, **self.metrics}


@dataclass
class Prediction:
    """Result for one image.

    ``heatmap`` is ``uint8`` ``(h, w)`` at reduced resolution (long side at most
    ``PredictConfig.heatmap_max_side``, never larger than the image), covering the whole image;
    value 128 is the calibrated pixel threshold, 255 at or above twice the threshold's distance
    from normal. ``image_score`` and region scores are calibrated the same way (0.5 = threshold)
    but not capped at 1, so strong anomalies stay ordered. Region coordinates are in original image pixels.
    """

    image_path: str
    image_size: tuple[int, int]
    image_score: float
    is_anomalous: bool
    heatmap: np.ndarray
    regions: list[Region]
    model_id: str
    model_kind: str
    params: dict
    timings: dict
    score_map: np.ndarray | None = None  # float32 calibrated map behind ``heatmap``, uncapped

    def to_dict(self) -> dict:
        """JSON-serialisable dict without the heatmap array (save it with ``save_heatmap``)."""
        return {
            "image_path": self.image_path,
            "image_size": list(self.image_size),
            "image_score": self.image_score,
            "is_anomalous": self.is_anomalous,
            "heatmap_size": list(self.heatmap.shape),
            "regions": [r.to_dict() for r in self.regions],
            "model_id": self.model_id,
            "model_kind": self.model_kind,
            "params": self.params,
            "timings": self.timings,
        }

    def save_heatmap(self, path: str | Path) -> Path:
        """Write the heatmap as an 8-bit grayscale PNG and return the path."""
        path = Path(path)
        if not cv2.imwrite(str(path), self.heatmap):
            raise OSError(f"cannot write heatmap to {path}")
        return path


# --------------------------------------------------------------------------- helpers


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class _Phase:
    """Maps a sub-task's 0..1 progress into a slice of the overall 0..1 bar."""

    def __init__(self, progress: ProgressCallback, start: float, end: float) -> None:
        self.progress, self.start, self.end = progress, start, end

    def __call__(self, fraction: float, message: str) -> None:
        fraction = min(1.0, max(0.0, fraction))
        self.progress(self.start + (self.end - self.start) * fraction, message)


@dataclass
class Geometry:
    """How an image maps onto network inputs; stored in the artifact."""

    input_size: int
    scale: float | None
    tile_overlap: float

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """RGB float image in network space: resized to the tile (whole mode) or scaled+padded.

        ``image`` is a :func:`read_pixels` array (resized in its own integer type, then made
        float: what training and prediction both do) or a :func:`read_image` float one.
        """
        return _float(self.prepare_pixels(image))

    def prepare_pixels(self, image: np.ndarray) -> np.ndarray:
        """:meth:`prepare` before the conversion to float (the image's own pixel type)."""
        rgb = to_rgb(image)
        t = self.input_size
        if self.scale is None:
            return resize(rgb, t, t)
        h, w = rgb.shape[:2]
        hs, ws = max(1, round(h * self.scale)), max(1, round(w * self.scale))
        if (hs, ws) != (h, w):
            rgb = resize(rgb, hs, ws)
        return pad_to_tile(rgb, t)

    def scaled_size(self, height: int, width: int) -> tuple[int, int]:
        if self.scale is None:
            return self.input_size, self.input_size
        return max(1, round(height * self.scale)), max(1, round(width * self.scale))

    def overlap_px(self, overlap: float | None = None) -> int:
        frac = self.tile_overlap if overlap is None else overlap
        return min(self.input_size - 1, int(round(frac * self.input_size)))


# pixel type of a tiled image -> divisor that makes it a [0, 1] float (None: already float32)
_TILE_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0, np.dtype(np.float32): None}


def _float(image: np.ndarray) -> np.ndarray:
    return image if image.dtype == np.float32 else to_float(image)


def _to_tensor(tiles: list[np.ndarray], device: torch.device) -> torch.Tensor:
    array = np.stack(tiles).transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(array)).to(device)


class _TrainImages:
    """Training images in network space, cached in memory up to a budget, else re-read."""

    def __init__(self, paths: Sequence[Path], geometry: Geometry, cache_bytes: int = 2 << 30):
        self.paths = list(paths)
        self.geometry = geometry
        self.cache: dict[int, np.ndarray] = {}
        self.cache_bytes = cache_bytes
        self.used = 0

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, i: int) -> np.ndarray:
        if i in self.cache:
            return self.cache[i]
        img = self.geometry.prepare(read_pixels(self.paths[i]))
        if self.used + img.nbytes <= self.cache_bytes:
            self.cache[i] = img
            self.used += img.nbytes
        return img

    def grid_batches(
        self, batch_size: int, device: torch.device, progress: ProgressCallback | None = None
    ) -> Iterator[torch.Tensor]:
        """Every grid tile of every image, batched (the tiles prediction will see)."""
        t = self.geometry.input_size
        overlap = self.geometry.overlap_px()
        pending: list[np.ndarray] = []
        for i in range(len(self)):
            img = self.get(i)
            for tile in tile_grid(img.shape[0], img.shape[1], t, overlap):
                pending.append(img[tile.y : tile.y + t, tile.x : tile.x + t])
                if len(pending) == batch_size:
                    yield _to_tensor(pending, device)
                    pending = []
            if progress is not None:
                progress((i + 1) / len(self), f"image {i + 1}/{len(self)}")
        if pending:
            yield _to_tensor(pending, device)

    def count_tiles(self) -> int:
        t, overlap = self.geometry.input_size, self.geometry.overlap_px()
        total = 0
        for i in range(len(self)):
            h, w = self.get(i).shape[:2]
            total += len(tile_grid(h, w, t, overlap))
        return total

    def random_crops(self, n: int, rng: np.random.Generator) -> torch.Tensor:
        t = self.geometry.input_size
        crops = []
        for _ in range(n):
            img = self.get(int(rng.integers(len(self))))
            y = int(rng.integers(img.shape[0] - t + 1))
            x = int(rng.integers(img.shape[1] - t + 1))
            crops.append(img[y : y + t, x : x + t])
        return _to_tensor(crops, torch.device("cpu"))


def _penalty_source(
    folder: str | None, size: int, rng: np.random.Generator
) -> Callable[[int], torch.Tensor] | None:
    """Random penalty images (EfficientAD's ImageNet term) from any folder of images, or None."""
    if not folder:
        return None
    exts = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in exts)
    if not files:
        raise ConfigError(f"penalty_dir {folder} holds no images")

    def sample(n: int) -> torch.Tensor:
        out = []
        for _ in range(n):
            img = to_rgb(read_image(files[int(rng.integers(len(files)))]))
            img = resize(img, 2 * size, 2 * size)
            if rng.random() < 0.3:  # grayscale as in the paper's penalty transform
                img = np.repeat(img.mean(axis=2, keepdims=True), 3, axis=2)
            y, x = rng.integers(size + 1, size=2)
            out.append(img[y : y + size, x : x + size])
        return _to_tensor(out, torch.device("cpu"))

    return sample


def _resolve_teacher(config: TrainConfig) -> tuple[Path | None, str, int]:
    """Teacher file, its provenance and its channel count for ``config.teacher``."""
    size = config.efficientad_size
    models_dir = Path(config.models_dir) if config.models_dir else None
    official = official_teacher_path(size, models_dir)
    distilled = distilled_teacher_path(size, models_dir)
    choice = config.teacher
    if choice == "random":
        return None, "random", 384
    if choice == "auto":
        choice = "official" if official.is_file() else "distilled"
        if choice == "distilled" and not distilled.is_file():
            raise MissingWeightsError(
                f"No EfficientAD teacher found. Expected the official file {official} (copy "
                "pretrained_teacher_{size}.pth from anomalib's efficientad_pretrained_weights.zip "
                "there) or a distilled one at "
                f"{distilled} (make it with: python -m workers.anomaly distill-teacher "
                f"--images <normal images folder> --size {size})."
            )
    if choice == "official":
        if not official.is_file():
            raise MissingWeightsError(
                f"Official EfficientAD teacher not found: {official}. Copy "
                f"pretrained_teacher_{size}.pth from anomalib's efficientad_pretrained_weights.zip "
                "to that path, or use teacher='distilled'."
            )
        return official, "official", 384
    if choice == "distilled":
        if not distilled.is_file():
            raise MissingWeightsError(
                f"Distilled teacher not found: {distilled}. Make it with: python -m "
                f"workers.anomaly distill-teacher --images <normal images folder> --size {size}"
            )
        return distilled, "distilled", nets.DISTILL_CHANNELS
    path = Path(choice)
    if not path.is_file():
        raise MissingWeightsError(f"Teacher file not found: {path}")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    channels = int(blob.get("channels", 384)) if isinstance(blob, dict) else 384
    return path, "file", channels


def _build_net(kind: str, args: dict, pretrained: bool = False) -> torch.nn.Module:
    if kind == "efficientad":
        return nets.EfficientAdNet(args["size"], args["teacher_channels"])
    if kind == "padim":
        return nets.PadimNet(args["n_features"], pretrained=pretrained)
    if kind == "patchcore":
        return nets.PatchcoreNet(args["num_neighbors"], pretrained=pretrained)
    raise IncompatibleModelError(f"unknown model kind {kind!r}")


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


# --------------------------------------------------------------------------- train


def train(
    config: TrainConfig,
    normal_image_paths: Sequence[str | Path],
    out_dir: str | Path,
    progress: ProgressCallback | None = None,
) -> TrainResult:
    """Train a model on defect-free images and write ``<out_dir>/model.pt`` (+ ``model.json``).

    ``progress(fraction, message)`` is called often; raising :class:`Cancelled` from it stops
    training at once and nothing is written. Held-out normal images calibrate the scores.
    """
    progress = progress or _no_progress
    config.validate()
    if not config.coarse_pass:
        return _train_one(config, normal_image_paths, out_dir, progress, None)
    # The downscaled whole-image pass is a second, whole-image model of the same kind, stored
    # in <out_dir>/coarse and referenced by the main artifact; trained first so that the main
    # model.pt (written last, atomically) never points at a missing coarse model.
    coarse_config = replace(config, scale=None, coarse_pass=False)
    # its map joins the tiled one at full size, so it takes the tiled threshold rule too
    coarse = _train_one(
        coarse_config,
        normal_image_paths,
        Path(out_dir) / "coarse",
        _Phase(progress, 0, 0.3),
        None,
        peak_floor=True,
    )
    return _train_one(config, normal_image_paths, out_dir, _Phase(progress, 0.3, 1.0), coarse)


def _train_one(
    config: TrainConfig,
    normal_image_paths: Sequence[str | Path],
    out_dir: str | Path,
    progress: ProgressCallback,
    coarse: TrainResult | None,
    peak_floor: bool | None = None,
) -> TrainResult:
    """One model; ``peak_floor`` (default: tiled models) raises the pixel threshold to the
    typical normal image's peak (see :func:`_calibrate`)."""
    if peak_floor is None:
        peak_floor = config.scale is not None
    configure_offline(Path(config.models_dir) if config.models_dir else None)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = resolve_device(config.device)
    paths = [Path(p) for p in normal_image_paths]
    if not paths:
        raise ConfigError("no training images")
    started = time.monotonic()
    progress(0.0, f"reading {len(paths)} images")
    info = _image_info(paths)
    geometry = Geometry(config.input_size, config.scale, config.tile_overlap)
    train_paths, cal_paths = _split(paths, config.calibration_fraction, config.seed)
    images = _TrainImages(train_paths, geometry)
    metrics: dict = {"train_images": len(train_paths), "calibration_images": len(cal_paths)}

    kind = config.model
    if kind == "efficientad":
        teacher_path, teacher_source, channels = _resolve_teacher(config)
        net_args = {"size": config.efficientad_size, "teacher_channels": channels}
        net = _build_net(kind, net_args).to(device)
        if teacher_path is not None:
            nets.load_teacher(net, teacher_path, channels)
        metrics["teacher"] = teacher_source
        stats_phase = _Phase(progress, 0.02, 0.07)
        nets.efficientad_teacher_stats(net, _limit(images.grid_batches(8, device), 64, stats_phase))
        penalty = _penalty_source(config.penalty_dir, config.input_size, rng)
        history = nets.train_efficientad(
            net,
            lambda n: images.random_crops(n, rng),
            steps=config.steps,
            batch_size=config.batch_size,
            lr=config.learning_rate,
            penalty_batch=penalty,
            progress=_Phase(progress, 0.07, 0.85),
            patience=config.patience,
            max_seconds=config.max_seconds,
            device=device,
        )
        metrics.update(history)
        quant_images = _TrainImages(cal_paths or train_paths, geometry)
        net.eval()
        nets.efficientad_map_quantiles(
            net, _limit(quant_images.grid_batches(8, device), 32, _Phase(progress, 0.85, 0.88))
        )
    elif kind == "padim":
        net_args = {"n_features": config.padim_features}
        net = _build_net(kind, net_args, pretrained=True).to(device)
        metrics.update(
            nets.fit_padim(net, images.grid_batches(8, device, _Phase(progress, 0.02, 0.85)))
        )
    else:
        net_args = {"num_neighbors": 9}
        net = _build_net(kind, net_args, pretrained=True).to(device)
        expected = images.count_tiles() * _patches_per_tile(net, config.input_size, device)
        metrics.update(
            nets.fit_patchcore(
                net,
                images.grid_batches(8, device, _Phase(progress, 0.02, 0.6)),
                expected_patches=expected,
                coreset_ratio=config.coreset_ratio,
                max_bank=config.max_memory_bank,
                max_candidates=config.max_candidates,
                seed=config.seed,
                progress=_Phase(progress, 0.6, 0.85),
            )
        )
    net.eval()
    metrics["train_seconds"] = round(time.monotonic() - started, 2)

    model_id = uuid.uuid4().hex
    loaded = LoadedModel(
        net=net,
        kind=kind,
        model_id=model_id,
        geometry=geometry,
        channels=info["channels"],
        calibration={},
        info=info,
        device=device,
        meta={},
    )
    progress(0.88, "calibrating")
    calibration = _calibrate(
        loaded,
        cal_paths or train_paths,
        config.pixel_quantile,
        _Phase(progress, 0.88, 0.99),
        peak_floor,
    )
    calibration["on_training_images"] = not cal_paths
    loaded.calibration = calibration

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    artifact = {
        "format": ARTIFACT_FORMAT,
        "format_version": ARTIFACT_VERSION,
        "model_id": model_id,
        "kind": kind,
        "net_args": net_args,
        "train_config": asdict(config),
        "geometry": asdict(geometry),
        "channels": info["channels"],
        "image_info": info,
        "calibration": calibration,
        "metrics": metrics,
        "created_at": datetime.now(UTC).isoformat(),
        "versions": _versions(),
        "coarse": (
            {"path": "coarse/" + ARTIFACT_NAME, "model_id": coarse.model_id} if coarse else None
        ),
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
    }
    path = out / ARTIFACT_NAME
    tmp = path.with_suffix(".tmp")
    torch.save(artifact, tmp)
    tmp.replace(path)  # atomic: a cancelled or crashed run never leaves half a model
    meta = {k: v for k, v in artifact.items() if k != "state_dict"}
    (out / "model.json").write_text(json.dumps(meta, indent=2, default=str))
    progress(1.0, "done")
    return TrainResult(artifact_path=path, model_id=model_id, metrics=metrics)


def _limit(batches: Iterator[torch.Tensor], n: int, progress: ProgressCallback) -> Iterator:
    for i, batch in enumerate(batches):
        if i >= n:
            return
        progress((i + 1) / n, "statistics")
        yield batch


def _patches_per_tile(net: nets.PatchcoreNet, size: int, device: torch.device) -> int:
    with torch.no_grad():
        return int(net.embed(torch.zeros(1, 3, size, size, device=device)).shape[0])


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


def _versions() -> dict:
    import anomalib
    import timm

    return {
        "torch": str(torch.__version__),
        "anomalib": str(anomalib.__version__),
        "timm": str(timm.__version__),
    }


# --------------------------------------------------------------------------- load


@dataclass
class LoadedModel:
    """A model ready for :func:`predict` (returned by :func:`load_model`)."""

    net: torch.nn.Module  # or export.OnnxNet: same call contract
    kind: str
    model_id: str
    geometry: Geometry
    channels: int
    calibration: dict
    info: dict
    device: torch.device
    meta: dict
    coarse: LoadedModel | None = None

    @property
    def backend(self) -> str:
        """``"torch"``, ``"onnx"``, ``"openvino"`` or ``"openvino-int8"``."""
        if isinstance(self.net, torch.nn.Module):
            return "torch"
        from .export import OpenVinoIrNet, OpenVinoNet

        if isinstance(self.net, OpenVinoIrNet):
            return "openvino-int8"
        return "openvino" if isinstance(self.net, OpenVinoNet) else "onnx"


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, mtime_ns: int, device: str, backend: str) -> LoadedModel:
    configure_offline()
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not our artifact"
        raise IncompatibleModelError(
            f"{path} is not a readable Loupe anomaly model: {exc}"
        ) from exc
    if not isinstance(blob, dict) or blob.get("format") != ARTIFACT_FORMAT:
        raise IncompatibleModelError(f"{path} is not a Loupe anomaly model artifact")
    if blob.get("format_version") != ARTIFACT_VERSION:
        raise IncompatibleModelError(
            f"{path} has artifact version {blob.get('format_version')}, this code reads "
            f"{ARTIFACT_VERSION}; retrain the model"
        )
    dev = resolve_device(device)
    net = None
    if backend != "torch" and dev.type == "cpu":
        from .export import load_onnx_net

        # auto: the INT8 IR when one was made (and verified) for this model, else OpenVINO on
        # model.onnx (faster than ONNX Runtime in docs/benchmarks-anomaly.md), else torch
        for runtime in (backend,) if backend != "auto" else ("openvino-int8", "openvino"):
            try:
                net = load_onnx_net(Path(path), blob["model_id"], backend != "auto", runtime)
            except Exception:
                if backend != "auto":
                    raise
                # auto: an export this OpenVINO cannot read or compile is skipped, not fatal
                logger.exception("%s export of %s unusable; trying the next", runtime, path)
                net = None
            if net is not None:
                break
    if net is None:
        net = _build_net(blob["kind"], blob["net_args"])
        net.load_state_dict(blob["state_dict"])
        net.to(dev).eval()
    coarse = None
    if blob.get("coarse"):
        coarse = load_model(Path(path).parent / blob["coarse"]["path"], device, backend)
        if coarse.model_id != blob["coarse"]["model_id"]:
            raise IncompatibleModelError(f"{path}: its coarse model was replaced; retrain")
    return LoadedModel(
        net=net,
        kind=blob["kind"],
        model_id=blob["model_id"],
        geometry=Geometry(**blob["geometry"]),
        channels=int(blob["channels"]),
        calibration=blob["calibration"],
        info=blob["image_info"],
        device=dev,
        meta={k: v for k, v in blob.items() if k != "state_dict"},
        coarse=coarse,
    )


def load_model(
    artifact_path: str | Path, device: str = "auto", backend: str = "auto"
) -> LoadedModel:
    """Load ``model.pt`` (or a folder holding it) once per process; later calls hit a cache.

    ``backend``: ``"torch"``; ``"onnx"`` (ONNX Runtime on the ``model.onnx`` made by
    :func:`export_onnx`, CPU; error if absent); ``"openvino"`` (OpenVINO on that same file);
    ``"openvino-int8"`` (the IR made by :func:`export_openvino_int8`); ``"auto"`` (on CPU the
    INT8 IR if one exists for this very model, else OpenVINO on its ONNX export, else torch).
    The cache key includes the files' modification times, so a retrained or re-exported model
    is reloaded.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    path = Path(artifact_path)
    if path.is_dir():
        path = path / ARTIFACT_NAME
    if not path.is_file():
        raise MissingWeightsError(
            f"anomaly model not found: {path} (train one with: python -m workers.anomaly train)"
        )
    stamp = path.stat().st_mtime_ns
    for name in ("model.onnx", "model_int8.xml", "model_int8.bin"):
        other = path.parent / name
        stamp += other.stat().st_mtime_ns if other.is_file() else 0
    return _load_cached(str(path.resolve()), stamp, device, backend)


# --------------------------------------------------------------------------- predict


def _check_compatible(model: LoadedModel, image: np.ndarray, path: str, allow: bool) -> None:
    channels = image.shape[2]
    if channels != model.channels:
        kind = {1: "grayscale", 3: "colour"}
        raise IncompatibleModelError(
            f"{path}: image is {kind.get(channels, channels)} ({channels} channel(s)) but the "
            f"model was trained on {kind.get(model.channels, model.channels)} images"
        )
    if allow:
        return
    long_side = max(image.shape[:2])
    lo, hi = model.info["min_long_side"], model.info["max_long_side"]
    if long_side < lo / 2 or long_side > hi * 2:
        raise IncompatibleModelError(
            f"{path}: image long side {long_side}px is outside the range the model was trained "
            f"for ({lo}-{hi}px, x0.5-x2 tolerated); train a model for this image size or pass "
            "allow_size_mismatch=True"
        )


@torch.no_grad()
def raw_heatmap(
    model: LoadedModel,
    image: np.ndarray,
    config: PredictConfig | None = None,
    progress: ProgressCallback | None = None,
) -> np.ndarray:
    """Uncalibrated anomaly map of ``image`` at the reduced output resolution (float32)."""
    config = config or PredictConfig()
    progress = progress or _no_progress
    geo = model.geometry
    h, w = image.shape[:2]
    out_h, out_w = _output_size(model, h, w, config)
    t = geo.input_size
    device = model.device
    autocast = torch.autocast(
        "cuda", dtype=torch.float16, enabled=config.half and device.type == "cuda"
    )
    if geo.scale is None:
        raw = _whole_maps(model, [geo.prepare(image)], config)[0]
        progress(1.0, "1/1 tiles")
        return cv2.resize(raw, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    hs, ws = geo.scaled_size(h, w)
    # Tiles are cut from the image in its own pixel type and made float a batch at a time: a
    # 20 MP RGB image stays 61 MB (8 bits) instead of 243 MB as float, twice over for the
    # channel-first copy, and a GPU receives a quarter of the bytes.
    net_image = geo.prepare_pixels(image)
    if net_image.dtype not in _TILE_SCALE:
        net_image = _float(net_image)
    scale_to_float = _TILE_SCALE[net_image.dtype]
    grid = tile_grid(net_image.shape[0], net_image.shape[1], t, geo.overlap_px(config.tile_overlap))
    stitch_device = device if isinstance(model.net, torch.nn.Module) else torch.device("cpu")
    stitcher = Stitcher(
        net_image.shape[0], net_image.shape[1], t, config.stitch_downsample, stitch_device
    )
    # One upload of the whole image; tiles are views cut on the device (no per-tile copies).
    whole = torch.from_numpy(np.ascontiguousarray(net_image.transpose(2, 0, 1))).to(stitch_device)
    for start in range(0, len(grid), config.batch_size):
        chunk = grid[start : start + config.batch_size]
        batch = torch.stack([whole[:, c.y : c.y + t, c.x : c.x + t] for c in chunk])
        if scale_to_float is not None:  # what to_float does, in the same float32 arithmetic
            batch = batch.float() / scale_to_float
        with autocast:
            maps = model.net(batch)[:, 0]
        stitcher.add_batch(chunk, maps)
        done = start + len(chunk)
        progress(done / len(grid), f"{done}/{len(grid)} tiles")
    stitched = stitcher.result()
    ds = stitcher.downsample
    stitched = stitched[: max(1, math.ceil(hs / ds)), : max(1, math.ceil(ws / ds))]
    return cv2.resize(stitched, (out_w, out_h), interpolation=cv2.INTER_LINEAR)


def _whole_maps(
    model: LoadedModel, net_images: list[np.ndarray], config: PredictConfig
) -> np.ndarray:
    """Raw maps ``(N, T, T)`` of whole-image-mode network inputs, pushed through in one batch."""
    device = model.device
    autocast = torch.autocast(
        "cuda", dtype=torch.float16, enabled=config.half and device.type == "cuda"
    )
    with torch.no_grad(), autocast:
        return model.net(_to_tensor(net_images, device))[:, 0].float().cpu().numpy()


def _output_size(model: LoadedModel, height: int, width: int, config: PredictConfig) -> tuple:
    """Heatmap size for an image: long side at most ``heatmap_max_side``, never larger than the
    image. A whole-image model's map is interpolated up to it too: capping it at the 256 px the
    network saw cost magnetic_tile PaDiM 0.022 pixel AUROC and 0.020 AU-PRO (thin cracks are
    thresholded on a coarser grid), for a few ms of region extraction saved."""
    del model  # the same rule for every model
    return heatmap_size(height, width, config.heatmap_max_side)


def heatmap_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """Output heatmap size: the image shrunk so its long side is at most ``max_side``."""
    factor = min(1.0, max_side / max(height, width))
    return max(1, round(height * factor)), max(1, round(width * factor))


def normalise(raw: np.ndarray | float, lo: float, threshold: float) -> np.ndarray | float:
    """Calibrated score: ``lo`` (typical normal) -> 0, ``threshold`` -> 0.5, ``2*thr-lo`` -> 1.

    Clipped below at 0 but NOT above: strong anomalies keep their order (a cap at 1 would tie
    them and make ranking suggestions by score meaningless). Only the 8-bit PNG is capped.
    """
    span = max(threshold - lo, 1e-6 * abs(threshold) + 1e-12)
    return np.maximum(0.5 + 0.5 * (np.asarray(raw) - threshold) / span, 0.0)


def _calibrate(
    model: LoadedModel,
    paths: list[Path],
    quantile: float,
    progress: ProgressCallback,
    peak_floor: bool = False,
) -> dict:
    """Pixel and image thresholds from normal images (held out from training when possible).

    ``peak_floor``: the pixel threshold is at least the median of the images' maxima (tiled
    models, and the whole-image pass that joins a tiled model's map)."""
    pixels, image_scores = [], []
    config = PredictConfig()
    rng = np.random.default_rng(0)
    for i, p in enumerate(paths):
        raw = raw_heatmap(model, read_pixels(p), config)
        flat = raw.ravel()
        if flat.size > 200_000:
            flat = rng.choice(flat, 200_000, replace=False)
        pixels.append(flat)
        image_scores.append(float(raw.max()))
        progress((i + 1) / len(paths), f"calibration {i + 1}/{len(paths)}")
    allpix = np.concatenate(pixels)
    scores = np.asarray(image_scores)
    pixel_lo = float(np.median(allpix))
    pixel_thr = float(np.quantile(allpix, quantile))
    image_lo = float(np.median(scores))
    image_thr = float(scores.max())
    rule, quantile_thr = "quantile", pixel_thr
    if peak_floor and image_lo > pixel_thr:
        # A pixel quantile is not a rate of false regions on large images: 0.1 % of a 20 MP
        # map is 20 000 pixels above the threshold on every normal photo, which made 20
        # suggestions on a normal 19 MP mosaic. Tiled models also need the threshold to reach
        # the peak of a typical normal image (the median of their maxima), so that a typical
        # normal image shows no region.
        pixel_thr, rule = image_lo, "median of normal images' maxima"
    if image_thr - image_lo < 0.05 * abs(image_thr):
        # one image (or identical scores): the max alone says nothing about the spread
        image_lo = image_thr - 0.05 * abs(image_thr) - 1e-9
    return {
        "pixel_lo": pixel_lo,
        "pixel_threshold": pixel_thr,
        "image_lo": image_lo,
        "image_threshold": image_thr,
        "pixel_quantile": quantile,
        "pixel_threshold_rule": rule,
        "pixel_quantile_threshold": quantile_thr,
        "images": len(paths),
    }


def _calibrated_map(
    model: LoadedModel,
    image: np.ndarray,
    config: PredictConfig,
    progress: ProgressCallback | None,
    spec: np.ndarray | None,
    whole_raw: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """Calibrated heatmap (float, 0.5 = pixel threshold) and calibrated image score.

    ``whole_raw``: the network's map of a whole-image model, already computed (batched).
    """
    if whole_raw is None:
        raw = raw_heatmap(model, image, config, progress)
    else:
        out_h, out_w = _output_size(model, *image.shape[:2], config)
        raw = cv2.resize(whole_raw, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    cal = model.calibration
    if spec is not None:
        small = cv2.resize(spec.astype(np.uint8), raw.shape[::-1], interpolation=cv2.INTER_NEAREST)
        small = cv2.dilate(small, np.ones((3, 3), np.uint8)) > 0
        raw = np.where(small, cal["pixel_lo"], raw)
    calibrated = normalise(raw, cal["pixel_lo"], cal["pixel_threshold"]).astype(np.float32)
    image_score = float(normalise(float(raw.max()), cal["image_lo"], cal["image_threshold"]))
    return calibrated, image_score


def predict(
    model: LoadedModel | str | Path,
    image_path: str | Path,
    config: PredictConfig | None = None,
    progress: ProgressCallback | None = None,
    image: np.ndarray | None = None,
) -> Prediction:
    """Heatmap, score and candidate regions for one image at full resolution.

    ``model`` is a :class:`LoadedModel` or an artifact path (loaded through the cache).
    ``image`` may be passed already decoded (:func:`read_pixels`, as the file is read here,
    or :func:`read_image`) to skip reading the file.
    """
    config = config or PredictConfig()
    if not isinstance(model, LoadedModel):
        model = load_model(model, config.device)
    t0 = time.perf_counter()
    if image is None:
        image = read_pixels(image_path)
    read_s = time.perf_counter() - t0
    _check_compatible(model, image, str(image_path), config.allow_size_mismatch)
    return _predict_decoded(model, image_path, image, config, progress, read_s)


def _predict_decoded(
    model: LoadedModel,
    image_path: str | Path,
    image: np.ndarray,
    config: PredictConfig,
    progress: ProgressCallback | None,
    read_s: float,
    whole_raw: np.ndarray | None = None,
    shared_s: float = 0.0,
) -> Prediction:
    """The part of :func:`predict` after decoding; ``whole_raw`` and ``shared_s`` come from
    :func:`predict_many` (the image's map from a batch, and its share of the batch's time)."""
    progress = progress or _no_progress
    t_read = time.perf_counter()
    use_coarse = model.coarse is not None and config.coarse_pass
    spec = None
    if config.specular_mask:
        spec = specular_mask(image, config.specular_v_min, config.specular_s_max)
    fine_progress = _Phase(progress, 0, 0.9) if use_coarse else progress
    calibrated, image_score = _calibrated_map(model, image, config, fine_progress, spec, whole_raw)
    if use_coarse:
        coarse_map, coarse_score = _calibrated_map(model.coarse, image, config, None, spec)
        if coarse_map.shape != calibrated.shape:  # both follow the image; be safe anyway
            size = calibrated.shape[::-1]
            coarse_map = cv2.resize(coarse_map, size, interpolation=cv2.INTER_LINEAR)
        # a defect counts if either scale sees it; both maps share one calibrated scale
        calibrated = np.maximum(calibrated, coarse_map)
        image_score = max(image_score, coarse_score)
        progress(1.0, "coarse pass")
    t_map = time.perf_counter()
    cal = model.calibration
    regions = extract_regions(calibrated, image.shape[:2], config.regions)
    heatmap = np.round(np.clip(calibrated, 0.0, 1.0) * 255).astype(np.uint8)
    t_end = time.perf_counter()
    megapixels = image.shape[0] * image.shape[1] / 1e6
    params = {
        "geometry": asdict(model.geometry),
        "tile_overlap": config.tile_overlap,
        "batch_size": config.batch_size,
        "heatmap_max_side": config.heatmap_max_side,
        "regions": asdict(config.regions),
        "specular_mask": config.specular_mask,
        "coarse_pass": use_coarse,
        "calibration": cal,
    }
    return Prediction(
        image_path=str(image_path),
        image_size=(int(image.shape[0]), int(image.shape[1])),
        image_score=image_score,
        is_anomalous=image_score >= 0.5,
        heatmap=heatmap,
        regions=regions,
        model_id=model.model_id,
        model_kind=model.kind,
        score_map=calibrated,
        params=params,
        timings={
            "read_s": round(read_s, 4),
            "heatmap_s": round(t_map - t_read + shared_s, 4),
            "total_s": round(t_end - t_read + shared_s + read_s, 4),
            "megapixels": round(megapixels, 3),
        },
    )


def predict_many(
    model: LoadedModel | str | Path,
    image_paths: Sequence[str | Path],
    config: PredictConfig | None = None,
    progress: ProgressCallback | None = None,
) -> Iterator[tuple[str, Prediction | AnomalyError]]:
    """:func:`predict` over many images, faster: yields ``(path, Prediction)`` in order, or
    ``(path, error)`` for an image that cannot be read or does not fit the model (it fails
    alone; the others go on).

    Decoding runs ahead in one background thread (OpenCV releases the GIL, so reading the next
    files overlaps the network), and a whole-image model takes up to ``config.batch_size``
    images per network call (PaDiM's per-position covariances, for one, are then read once per
    batch instead of once per image): as many as are decoded when the network is free, so the
    network never waits for a batch to fill while the reader is the slower of the two. Their
    heatmaps, calibration and regions are made in a third thread while the network runs the next
    batch. Tiled models already batch their tiles; they get the read-ahead.
    Memory: for whole-image models, one batch being decoded ahead, one in the network and one
    in the post thread; each image is held as its network input only (the full-size pixels are
    dropped after resizing), except with ``config.specular_mask``, which needs them: then up to
    about three batches of full-size decoded images wait (a 24 MP image is 72 MB in 8 bits).
    Tiled models keep one image ahead (~290 MB of float tiles are made a batch at a time, not
    all at once). Batches hold what is decoded, so their make-up varies from run to run, and a
    batched matrix product may round differently: maps can differ in the last float bits
    between runs (a pixel exactly at a threshold could then flip).
    ``progress`` is called after each image with the share done; raising from it stops early.
    """
    from collections import deque
    from concurrent.futures import Future, ThreadPoolExecutor

    config = config or PredictConfig()
    progress = progress or _no_progress
    if not isinstance(model, LoadedModel):
        model = load_model(model, config.device)
    paths = [str(p) for p in image_paths]
    whole = model.geometry.scale is None
    batch_size = max(1, config.batch_size) if whole else 1

    def load(path: str) -> tuple[np.ndarray, np.ndarray | None, float]:
        started = time.perf_counter()
        image = read_pixels(path)
        _check_compatible(model, image, path, config.allow_size_mismatch)
        if not whole:
            return image, None, time.perf_counter() - started
        prepared = model.geometry.prepare(image)
        if not config.specular_mask:
            # only the shape is used from here on: drop the full-size pixels (a 24 MP image is
            # 72 MB in 8 bits) for a zero-byte stand-in of the same shape
            image = np.broadcast_to(np.zeros((), np.float32), image.shape)
        return image, prepared, time.perf_counter() - started

    def failure(path: str, exc: BaseException) -> AnomalyError:
        if isinstance(exc, AnomalyError):
            return exc
        logger.exception("anomaly prediction failed for %s", path)
        return AnomalyError(f"{path}: {type(exc).__name__}: {exc}")

    def maps_of(items: list[tuple[str, tuple]]) -> list:
        """Whole-image maps of a batch; if the batch fails, one by one so a bad input fails alone."""
        try:
            return list(_whole_maps(model, [item[1] for _, item in items], config))
        except Exception:  # noqa: BLE001 - retried per image below, each failure reported
            out = []
            for path, item in items:
                try:
                    out.append(_whole_maps(model, [item[1]], config)[0])
                except Exception as exc:  # noqa: BLE001
                    out.append(failure(path, exc))
            return out

    def finish(
        path: str, item: tuple, raw: np.ndarray | None, shared: float, phase: _Phase | None
    ) -> Prediction | AnomalyError:
        """The Prediction of one decoded image, or its error (Cancelled passes through)."""
        image, _, read_s = item
        try:
            return _predict_decoded(model, path, image, config, phase, read_s, raw, shared)
        except Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - this image fails alone
            return failure(path, exc)

    done = 0
    # Whole-image models: heatmap, calibration and regions of one batch run in a second thread
    # while the network takes the next batch (at most one batch waits there).
    pending: deque[tuple[str, object]] = deque()
    with (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="loupe-read") as pool,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="loupe-post") as post,
    ):
        ahead = batch_size
        futures: list = [pool.submit(load, p) for p in paths[:ahead]]
        try:
            index = 0
            while index < len(paths) or pending:
                batch: list[tuple[str, tuple | AnomalyError]] = []
                while index < len(paths) and len(batch) < batch_size:
                    if batch and not futures[index].done():
                        break  # run what is decoded instead of waiting to fill the batch
                    if index + ahead < len(paths):
                        futures.append(pool.submit(load, paths[index + ahead]))
                    future, futures[index] = futures[index], None  # frees the image later
                    try:
                        batch.append((paths[index], future.result()))
                    except Exception as exc:  # noqa: BLE001 - fails alone, reported in place
                        batch.append((paths[index], failure(paths[index], exc)))
                    index += 1
                ok = [(p, item) for p, item in batch if not isinstance(item, AnomalyError)]
                raws: list = [None] * len(ok)
                shared = 0.0
                if whole and ok:
                    started = time.perf_counter()
                    raws = maps_of(ok)
                    shared = (time.perf_counter() - started) / len(ok)
                maps = iter(raws)
                for path, item in batch:
                    if isinstance(item, AnomalyError):
                        pending.append((path, item))
                        continue
                    raw = next(maps)
                    if isinstance(raw, AnomalyError):
                        pending.append((path, raw))
                    elif whole:
                        pending.append((path, post.submit(finish, path, item, raw, shared, None)))
                    else:
                        # tiled models run their network here, reporting per tile batch: a large
                        # image moves the bar and can be cancelled mid-way
                        phase = _Phase(progress, done / len(paths), (done + 1) / len(paths))
                        pending.append((path, finish(path, item, None, 0.0, phase)))
                # hand out, in order, what is finished; wait only to keep one batch in flight
                while pending and (
                    index >= len(paths)
                    or len(pending) > batch_size
                    or not isinstance(pending[0][1], Future)
                    or pending[0][1].done()
                ):
                    path, result = pending.popleft()
                    if isinstance(result, Future):
                        result = result.result()
                    yield path, result
                    done += 1
                    progress(done / len(paths), f"{done}/{len(paths)} images")
        finally:
            for future in futures:
                if future is not None:
                    future.cancel()
            for _, result in pending:
                if isinstance(result, Future):
                    result.cancel()
