"""PatchCore (anomalib ``PatchcoreModel``) on the offline Lite0 (or Lite1/Lite2) backbone, with
a memory bank built in bounded memory (a sampled candidate pool, then our own O(N)
k-center-greedy coreset).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn

from ..backbone import lite0_extractor_hook, lite_normalise, separable_blur, timm_backbone
from ..config import Phase, ProgressCallback, TrainConfig
from ..offline import configure_offline
from ..training_data import TrainData
from . import Fitted, ModelSpec, register

# Feature layers of tf_efficientnet_lite0 (channels 40/112 at strides 8/16), like the paper's
# layer2+3; the same stages of lite1 (40/112, deeper) and lite2 (48/120).
LAYERS = ("blocks.2", "blocks.4")
# The finer pair of ``patchcore_fine`` (channels 24/40 at strides 4/8): a patch per 4 px, maps
# that follow a defect's outline (docs/anomaly.md, "Models").
FINE_LAYERS = ("blocks.1", "blocks.2")


class PatchcoreNet(nn.Module):
    """PatchCore (anomalib ``PatchcoreModel``) on the offline Lite0 (or Lite1/Lite2) backbone."""

    def __init__(
        self,
        num_neighbors: int = 9,
        pretrained: bool = False,
        backbone: str = "lite0",
        layers: tuple[str, ...] = LAYERS,
    ) -> None:
        super().__init__()
        from anomalib.models.image.patchcore.torch_model import PatchcoreModel

        configure_offline()
        self.backbone = backbone
        self.layers = tuple(layers)
        self.model = PatchcoreModel(
            layers=list(self.layers),
            backbone=timm_backbone(backbone),
            pre_trained=False,
            num_neighbors=num_neighbors,
        )
        lite0_extractor_hook(self.model, pretrained, backbone)
        self.model.eval()

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embeddings ``(N*h*w, C)`` exactly as anomalib computes them."""
        m = self.model
        features = m.feature_extractor(lite_normalise(x))
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
        features = m.feature_extractor(lite_normalise(x))
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
    progress: ProgressCallback | None = None,
) -> torch.Tensor:
    """Indices of a k-center-greedy coreset of ``size`` rows of ``features`` (N, C).

    Memory is O(N): one random projection (N x d) and one running min-distance vector, updated
    in place; no iteration allocates anything proportional to N beyond one reused (N,) buffer.
    (anomalib's KCenterGreedy grows far larger from repeated large temporaries: docs/anomaly.md,
    "Memory bounds".)
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
    progress: ProgressCallback,
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


def _patches_per_tile(net: PatchcoreNet, size: int, device: torch.device) -> int:
    with torch.no_grad():
        return int(net.embed(torch.zeros(1, 3, size, size, device=device)).shape[0])


def build(net_args: dict, pretrained: bool = False) -> PatchcoreNet:
    # artifacts made before the backbone or the layer choice have neither: lite0, LAYERS
    return PatchcoreNet(
        net_args["num_neighbors"],
        pretrained=pretrained,
        backbone=net_args.get("backbone", "lite0"),
        layers=tuple(net_args.get("layers", LAYERS)),
    )


def fit(
    config: TrainConfig,
    data: TrainData,
    device: torch.device,
    progress: ProgressCallback,
    layers: tuple[str, ...] = LAYERS,
    bank_share: float = 1.0,
) -> Fitted:
    """Fit the memory bank on the backbone's ``layers`` (``patchcore_fine`` passes its own);
    the coreset keeps ``config.coreset_ratio * bank_share`` of the patches."""
    net_args = {"num_neighbors": 9, "backbone": config.backbone, "layers": list(layers)}
    net = build(net_args, pretrained=True).to(device)
    images = data.images
    expected = images.count_tiles() * _patches_per_tile(net, config.input_size, device)
    metrics = fit_patchcore(
        net,
        images.grid_batches(8, device, Phase(progress, 0.02, 0.6)),
        expected_patches=expected,
        coreset_ratio=config.coreset_ratio * bank_share,
        max_bank=config.max_memory_bank,
        max_candidates=config.max_candidates,
        seed=config.seed,
        progress=Phase(progress, 0.6, 0.85),
    )
    return Fitted(net, net_args, metrics)


register(ModelSpec("patchcore", build, fit, quantized_modules=("feature_extractor",)))
