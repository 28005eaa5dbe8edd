"""PaDiM (anomalib ``PadimModel``) on the offline Lite0 (or Lite1/Lite2) backbone, fitted in
bounded memory.

The Gaussians come from running sums of x and x x^T per position, so memory does not grow with
the number of tiles (anomalib keeps every embedding, then fits).
"""

from __future__ import annotations

import torch
from torch import nn

from ..backbone import lite0_extractor_hook, lite_normalise, separable_blur, timm_backbone
from ..config import Phase, ProgressCallback, TrainConfig
from ..errors import ConfigError
from ..offline import configure_offline
from ..training_data import TrainData
from . import Fitted, ModelSpec, register

# Feature layers of tf_efficientnet_lite0 (channels 24/40/112 at strides 4/8/16), like
# resnet's layer1-3; the same stages of lite1 (24/40/112, deeper) and lite2 (24/48/120).
LAYERS = ("blocks.1", "blocks.2", "blocks.4")


class PadimNet(nn.Module):
    """PaDiM (anomalib ``PadimModel``) on the offline Lite0 (or Lite1/Lite2) backbone."""

    def __init__(
        self, n_features: int = 100, pretrained: bool = False, backbone: str = "lite0"
    ) -> None:
        super().__init__()
        from anomalib.models.image.padim.torch_model import PadimModel

        configure_offline()
        self.backbone = backbone
        self.model = PadimModel(
            backbone=timm_backbone(backbone),
            layers=list(LAYERS),
            pre_trained=False,
            n_features=n_features,
        )
        lite0_extractor_hook(self.model, pretrained, backbone)
        self.model.eval()

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        features = self.model.feature_extractor(lite_normalise(x))
        return self.model.generate_embedding(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """anomalib's eval forward (Mahalanobis distance per position, bilinear upsampling,
        Gaussian blur), with the blur done in two 1-D passes (:func:`separable_blur`)."""
        m = self.model
        embedding = m.generate_embedding(m.feature_extractor(lite_normalise(x)))
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


def fit_padim(net: PadimNet, batches) -> dict:  # noqa: ANN001 - an iterator of tile batches
    """Fit the per-position Gaussians from every training tile."""
    acc = GaussianAccumulator()
    for batch in batches:
        acc.add(net.embed(batch))
    mean, inv = acc.finish()
    net.model.gaussian.mean = mean
    net.model.gaussian.inv_covariance = inv
    return {"tiles": acc.n}


def build(net_args: dict, pretrained: bool = False) -> PadimNet:
    # artifacts made before the backbone choice have no "backbone": they are lite0
    backbone = net_args.get("backbone", "lite0")
    return PadimNet(net_args["n_features"], pretrained=pretrained, backbone=backbone)


def fit(
    config: TrainConfig, data: TrainData, device: torch.device, progress: ProgressCallback
) -> Fitted:
    net_args = {"n_features": config.padim_features, "backbone": config.backbone}
    net = build(net_args, pretrained=True).to(device)
    metrics = fit_padim(net, data.images.grid_batches(8, device, Phase(progress, 0.02, 0.85)))
    return Fitted(net, net_args, metrics)


register(ModelSpec("padim", build, fit, quantized_modules=("feature_extractor",)))
