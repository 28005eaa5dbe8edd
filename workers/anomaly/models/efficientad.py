"""EfficientAD-S/M (anomalib ``EfficientAdModel``): teacher choice, training loop, statistics.

The training loop is plain torch instead of Lightning so that it reports progress to a
callback, stops on cancellation and runs inside a Celery worker; its losses are anomalib's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import Phase, ProgressCallback, TrainConfig
from ..errors import ConfigError, MissingWeightsError
from ..image_io import read_image, resize, to_rgb
from ..offline import distilled_teacher_path, official_teacher_path
from ..steps import StepBudget
from ..tiling import to_tensor
from ..training_data import TrainData
from . import Fitted, ModelSpec, register

logger = logging.getLogger(__name__)

#: Channels of a teacher made by ``distill-teacher``: Lite0's blocks.1/2/4 (24 + 40 + 112).
DISTILL_CHANNELS = 24 + 40 + 112


class EfficientAdNet(nn.Module):
    """EfficientAD-S/M (anomalib ``EfficientAdModel``); forward returns the combined map."""

    def __init__(self, size: str = "small", teacher_channels: int = 384) -> None:
        super().__init__()
        from anomalib.models.image.efficient_ad.torch_model import (
            EfficientAdModel,
            EfficientAdModelSize,
        )

        if size not in ("small", "medium"):
            raise ConfigError(f"EfficientAD size must be 'small' or 'medium', not {size!r}")
        self.size = size
        self.model = EfficientAdModel(
            teacher_out_channels=teacher_channels,
            model_size=EfficientAdModelSize(size),
            padding=False,
            pad_maps=True,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        map_st, map_ae = self.model.get_maps(x, normalize=True)
        return 0.5 * map_st + 0.5 * map_ae


def build_pdn(size: str, channels: int) -> nn.Module:
    """A bare patch description network (the teacher architecture) of ``size``."""
    from anomalib.models.image.efficient_ad.torch_model import (
        MediumPatchDescriptionNetwork,
        SmallPatchDescriptionNetwork,
    )

    cls = SmallPatchDescriptionNetwork if size == "small" else MediumPatchDescriptionNetwork
    return cls(out_channels=channels, padding=False)


def load_teacher(net: EfficientAdNet, path: str | Path, expected_channels: int) -> None:
    """Load a teacher file (official or distilled) into ``net``; clear error if absent/wrong."""
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"EfficientAD teacher not found: {path}")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else blob
    try:
        net.model.teacher.load_state_dict(state)
    except RuntimeError as exc:
        raise MissingWeightsError(
            f"{path} is not a {net.size} EfficientAD teacher with {expected_channels} channels: {exc}"
        ) from exc


def resolve_teacher(config: TrainConfig) -> tuple[Path | None, str, int]:
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
        return distilled, "distilled", DISTILL_CHANNELS
    path = Path(choice)
    if not path.is_file():
        raise MissingWeightsError(f"Teacher file not found: {path}")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    channels = int(blob.get("channels", 384)) if isinstance(blob, dict) else 384
    return path, "file", channels


def penalty_source(
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
        return to_tensor(out, torch.device("cpu"))

    return sample


def train_efficientad(
    net: EfficientAdNet,
    sample_batch: Callable[[int], torch.Tensor],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    penalty_batch: Callable[[int], torch.Tensor] | None,
    progress: ProgressCallback,
    patience: int,
    max_seconds: float | None,
    device: torch.device,
) -> dict:
    """Train student and autoencoder; returns a small history dict.

    Same losses as anomalib's ``EfficientAdModel.compute_losses``, except that the ImageNet
    penalty term is used only when a penalty image source is given (offline we may have none).
    Early stopping: stops when the smoothed loss has not improved by 1 % for ``patience`` steps.
    """
    model = net.model
    model.teacher.eval()
    for p in model.teacher.parameters():
        p.requires_grad_(False)
    tc = model.teacher_out_channels
    params = list(model.student.parameters()) + list(model.ae.parameters())
    opt = torch.optim.Adam(params, lr=lr, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, int(0.95 * steps)), gamma=0.1)
    mean, std = model.mean_std["mean"], model.mean_std["std"]
    model.student.train()
    model.ae.train()
    budget = StepBudget(steps, progress, patience, max_seconds)
    for _ in range(steps):
        batch = sample_batch(batch_size).to(device)
        with torch.no_grad():
            t_out = (model.teacher(batch) - mean) / std
        s_out = model.student(batch)
        dist = (t_out - s_out[:, :tc]) ** 2
        flat = dist.flatten()
        if flat.numel() > 2**24:
            flat = flat[torch.randperm(flat.numel(), device=flat.device)[: 2**24]]
        d_hard = torch.quantile(flat, 0.999)
        loss_st = dist[dist >= d_hard].mean()
        if penalty_batch is not None:
            pen = model.student(penalty_batch(batch_size).to(device))[:, :tc]
            loss_st = loss_st + (pen**2).mean()
        aug = model.choose_random_aug_image(batch)
        ae_out = model.ae(aug, batch.shape[-2:])
        with torch.no_grad():
            t_aug = (model.teacher(aug) - mean) / std
        s_aug = model.student(aug)[:, tc:]
        loss_ae = ((t_aug - ae_out) ** 2).mean()
        loss_stae = ((ae_out - s_aug) ** 2).mean()
        loss = loss_st + loss_ae + loss_stae
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if budget.done_step(float(loss.detach())):
            break
    model.student.eval()
    model.ae.eval()
    return budget.summary()


@torch.no_grad()
def teacher_stats(net: EfficientAdNet, batches: Iterator[torch.Tensor]) -> None:
    """Per-channel mean/std of the teacher over the training tiles (anomalib does the same)."""
    model = net.model
    n, total, total_sq = 0, None, None
    for batch in batches:
        out = model.teacher(batch)
        c = out.shape[1]
        flat = out.transpose(0, 1).reshape(c, -1).double()
        total = flat.sum(1) if total is None else total + flat.sum(1)
        total_sq = (flat**2).sum(1) if total_sq is None else total_sq + (flat**2).sum(1)
        n += flat.shape[1]
    if not n:
        raise ConfigError("no training tiles for teacher statistics")
    mean = total / n
    std = torch.sqrt(torch.clamp(total_sq / n - mean**2, min=1e-12))
    model.mean_std["mean"].data = mean.float().view(1, -1, 1, 1)
    model.mean_std["std"].data = std.float().view(1, -1, 1, 1)


@torch.no_grad()
def map_quantiles(net: EfficientAdNet, batches: Iterator[torch.Tensor]) -> None:
    """Set anomalib's map-normalisation quantiles (90 %/99.5 %) from held-out normal tiles."""
    model = net.model
    st, ae = [], []
    for batch in batches:
        map_st, map_ae = model.get_maps(batch, normalize=False)
        st.append(_sample(map_st))
        ae.append(_sample(map_ae))
    st_all, ae_all = torch.cat(st), torch.cat(ae)
    model.quantiles.update(
        {
            "qa_st": torch.quantile(st_all, 0.9),
            "qb_st": torch.quantile(st_all, 0.995),
            "qa_ae": torch.quantile(ae_all, 0.9),
            "qb_ae": torch.quantile(ae_all, 0.995),
        }
    )


def _sample(t: torch.Tensor, limit: int = 2_000_000) -> torch.Tensor:
    flat = t.flatten()
    if flat.numel() > limit:
        flat = flat[torch.randperm(flat.numel())[:limit]]
    return flat


def _limit(batches: Iterator[torch.Tensor], n: int, progress: ProgressCallback) -> Iterator:
    for i, batch in enumerate(batches):
        if i >= n:
            return
        progress((i + 1) / n, "statistics")
        yield batch


def build(net_args: dict, pretrained: bool = False) -> EfficientAdNet:
    del pretrained  # the teacher is loaded by fit; an artifact holds every tensor
    return EfficientAdNet(net_args["size"], net_args["teacher_channels"])


def fit(
    config: TrainConfig, data: TrainData, device: torch.device, progress: ProgressCallback
) -> Fitted:
    rng = np.random.default_rng(config.seed)
    teacher_path, teacher_source, channels = resolve_teacher(config)
    net_args = {"size": config.efficientad_size, "teacher_channels": channels}
    net = build(net_args).to(device)
    if teacher_path is not None:
        load_teacher(net, teacher_path, channels)
    metrics: dict = {"teacher": teacher_source}
    images = data.images
    teacher_stats(net, _limit(images.grid_batches(8, device), 64, Phase(progress, 0.02, 0.07)))
    penalty = penalty_source(config.penalty_dir, config.input_size, rng)
    history = train_efficientad(
        net,
        lambda n: images.random_crops(n, rng),
        steps=config.steps,
        batch_size=config.batch_size,
        lr=config.learning_rate,
        penalty_batch=penalty,
        progress=Phase(progress, 0.07, 0.85),
        patience=config.patience,
        max_seconds=config.max_seconds,
        device=device,
    )
    metrics.update(history)
    net.eval()
    held_out = data.held_out.grid_batches(8, device)
    map_quantiles(net, _limit(held_out, 32, Phase(progress, 0.85, 0.88)))
    return Fitted(net, net_args, metrics)


# the autoencoder ends in an 8x8 convolution at 1/32 scale: 256 px tiles at least
register(
    ModelSpec(
        "efficientad",
        build,
        fit,
        min_input_size=256,
        quantized_modules=("teacher", "student", "ae"),
        int8_by_default=True,
        # anomalib's Adam rate and batch; about 1000 steps before the maps settle
        train_defaults={"steps": 1000, "batch_size": 1, "learning_rate": 1e-4},
    )
)
