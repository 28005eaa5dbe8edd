"""A classical texture baseline for CPUs: LBP, gradient and grey statistics per patch, scored
by a one-class SVM. No network is trained and no weights are needed: fitting is a pass over
the normal images and a few seconds of scikit-learn.

Features, per patch of ``patch`` px at a stride of ``stride`` px, all computed in the forward
with fixed torch filters (so the whole model exports to ONNX like the others):

* Rotation-invariant uniform LBP (Ojala et al., TPAMI 2002), P = 24 points on a circle of
  R = 3 px, on the grey image: scikit-image's ``local_binary_pattern(..., method="uniform")``.
  The 24 circle samples are bilinear interpolations, so they are one convolution with 24
  fixed 7 x 7 kernels; a sample at least as bright as the centre is a 1; the code is the
  number of ones when the circular pattern has at most two 0/1 transitions, else P + 1. Its
  26-bin histogram per patch is the codes one-hot, average-pooled. (Ties are ties to within
  float rounding: :func:`lbp_codes`; tests compare the codes with scikit-image's on real
  images.)
* The mean and standard deviation of the Sobel gradient magnitude, and of the grey level.

That is 30 numbers per patch. Fitting samples at most ``MAX_PATCHES`` patches of the training
images (uniformly, seeded by ``TrainConfig.seed``), standardises them and reduces them with a
whitened PCA (scikit-learn; both are folded into one 1 x 1 convolution), and fits
scikit-learn's ``OneClassSVM`` (RBF kernel, ``gamma="scale"``, ``nu`` = :data:`NU`). A patch's
score is the negative of the SVM's decision function,
``rho - sum_i alpha_i exp(-gamma |z - sv_i|^2)``, written as torch operations over the support
vectors (again 1 x 1 convolutions). The scores form a map at 1/``stride`` of the input, which
is upsampled bilinearly to the input (the pooling is padded so that each score sits at the
centre of its patch) and blurred lightly (Gaussian, sigma ``stride / 2``). The image score is
the map's maximum, as for every model (``inference.calibrated_map``).

Why a one-class SVM: scikit-learn's ``IsolationForest`` is a forest of data-dependent trees,
which is no simple torch graph, so it could not run in the exported model; the SVM's decision
function is a kernel sum. A Gaussian scorer (the Mahalanobis distance in the whitened PCA
space) was measured against it on both dev sets (docs/anomaly.md, "Models"): better pixel
figures, a worse image AUROC on bottle, on small sets; not clearly better, so the SVM is the
default and the Gaussian stays as ``scorer="gaussian"`` (``net_args``, :func:`fit_lbp`).

``patch=None`` is the image-level variant: one patch covering the whole input, so one feature
vector and one score per image (or tile), and a constant map: it judges whole images, and a
flagged one is suggested as a single region covering it. :func:`fit_lbp` takes it;
``TrainConfig`` has no field for it, so ``TrainConfig(model="lbp")`` trains the patch-wise
model.

INT8: none (nothing here is a learnt convolution worth quantizing).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..config import Phase, ProgressCallback, TrainConfig
from ..errors import ConfigError
from ..training_data import TrainData
from . import Fitted, ModelSpec, register

#: LBP points and radius (px).
POINTS, RADIUS = 24, 3
#: LBP codes 0..P are the uniform patterns (their number of ones), P + 1 all the others.
BINS = POINTS + 2
#: Grey from RGB: scikit-image's ``rgb2gray`` weights (ITU-R BT.709 luma).
GREY = (0.2125, 0.7154, 0.0721)
#: Features per patch: the LBP histogram, gradient magnitude mean and std, grey mean and std.
FEATURES = BINS + 4
#: Patch size and stride (px) of the patch-wise model.
PATCH, STRIDE = 32, 8
#: At most this many training patches are sampled for the scaler, the PCA and the SVM.
MAX_PATCHES = 10_000
#: Share of the variance of the standardised features the PCA keeps.
PCA_VARIANCE = 0.99
#: The SVM's ``nu``: an upper bound on the share of training patches outside its boundary.
NU = 0.05
SCORERS = ("ocsvm", "gaussian")


def circle_kernels(points: int = POINTS, radius: int = RADIUS) -> torch.Tensor:
    """``(points, 1, 2r+1, 2r+1)`` float64 kernels: kernel ``i`` is scikit-image's bilinear
    interpolation at LBP sample ``i`` (offsets ``-r sin(2 pi i / P)``, ``r cos(2 pi i / P)``
    rounded to 5 decimals, as ``skimage.feature._texture`` does)."""
    size = 2 * radius + 1
    kernels = torch.zeros(points, 1, size, size, dtype=torch.float64)
    for i in range(points):
        r = round(-radius * math.sin(2 * math.pi * i / points), 5)
        c = round(radius * math.cos(2 * math.pi * i / points), 5)
        r0, c0, r1, c1 = math.floor(r), math.floor(c), math.ceil(r), math.ceil(c)
        dr, dc = r - r0, c - c0
        for y, x, w in (
            (r0, c0, (1 - dr) * (1 - dc)),
            (r0, c1, (1 - dr) * dc),
            (r1, c0, dr * (1 - dc)),
            (r1, c1, dr * dc),
        ):
            kernels[i, 0, y + radius, x + radius] += w
    return kernels


def lbp_codes(grey: torch.Tensor, kernels: torch.Tensor, padding: str = "zeros") -> torch.Tensor:
    """Rotation-invariant uniform LBP codes ``(N, 1, H, W)`` (values ``0..P+1``) of a grey
    ``(N, 1, H, W)`` batch, with ``kernels`` from :func:`circle_kernels`.

    ``padding="zeros"`` is scikit-image's (samples outside the image are 0); the model pads by
    reflection, because a tile's edge is not the part's edge.

    A sample within a few float roundings of its centre counts as equal, hence as a 1, as in
    the definition: scikit-image compares in float64 and its own rounding turns some exact ties
    in flat 8-bit regions into 0s (about 0.1 % of a bottle image's pixels; the test shows that
    those are its only differences from exact arithmetic).
    """
    radius = kernels.shape[-1] // 2
    if padding == "zeros":
        samples = F.conv2d(grey, kernels, padding=radius)
    else:
        samples = F.conv2d(F.pad(grey, (radius,) * 4, mode=padding), kernels)
    tolerance = 8 * torch.finfo(grey.dtype).eps  # grey levels are within [0, 1]
    bits = (samples - grey >= -tolerance).to(grey.dtype)
    # transitions along the circle without the wrap-around pair (scikit-image's loop): the
    # circular count is even, so "at most 2" is the same test either way
    transitions = (bits[:, 1:] - bits[:, :-1]).abs().sum(1, keepdim=True)
    ones = bits.sum(1, keepdim=True)
    return torch.where(transitions <= 2, ones, torch.full_like(ones, kernels.shape[0] + 1))


class LbpNet(nn.Module):
    """LBP + gradient + grey statistics per patch, scaler and PCA, one-class SVM (or Gaussian)
    score per patch, upsampled and blurred to the input size (module docstring)."""

    def __init__(
        self,
        patch: int | None = PATCH,
        stride: int = STRIDE,
        components: int = 8,
        support: int = 1,
        scorer: str = "ocsvm",
    ) -> None:
        super().__init__()
        if scorer not in SCORERS:
            raise ConfigError(f"LBP scorer must be one of {SCORERS}, not {scorer!r}")
        if patch is not None and (patch < stride or (patch - stride) % 2):
            raise ConfigError("LBP patch must be >= stride, and patch - stride even")
        self.patch, self.stride, self.scorer = patch, stride, scorer
        self.register_buffer("grey", torch.tensor(GREY).view(1, 3, 1, 1))
        self.register_buffer("circle", circle_kernels().float())
        self.register_buffer("bins", torch.arange(BINS, dtype=torch.float32).view(1, BINS, 1, 1))
        sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8
        self.register_buffer("sobel", torch.stack([sobel, sobel.t()])[:, None])
        sigma = stride / 2
        blur = torch.exp(-((torch.arange(4 * stride + 1) - 2.0 * stride) ** 2) / (2 * sigma**2))
        self.register_buffer("blur", blur / blur.sum())
        # StandardScaler then PCA (whitened), as one affine map
        self.project = nn.Conv2d(FEATURES, components, 1)
        self.register_buffer("support_vectors", torch.zeros(support, components))
        self.register_buffer("dual_coef", torch.zeros(support))
        self.register_buffer("gamma", torch.ones(()))
        self.register_buffer("rho", torch.zeros(()))
        self.eval()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, FEATURES, h, w)`` per-patch features of RGB ``x`` in ``[0, 1]``: ``h = T /
        stride`` (each patch centred on its cell), or ``1`` for the image-level variant."""
        grey = (x * self.grey).sum(1, keepdim=True)
        codes = lbp_codes(grey, self.circle, padding="reflect")
        onehot = (codes == self.bins).to(x.dtype)
        gradient = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), self.sobel)
        magnitude = gradient.pow(2).sum(1, keepdim=True).sqrt()
        moments = torch.cat([onehot, magnitude, magnitude * magnitude, grey, grey * grey], 1)
        pooled = self._pool(moments)
        hist = pooled[:, :BINS]
        mag, mag2, g, g2 = (pooled[:, BINS + i : BINS + i + 1] for i in range(4))
        spread = [
            (second - first * first).clamp_min(0).sqrt() for first, second in ((mag, mag2), (g, g2))
        ]
        return torch.cat([hist, mag, spread[0], g, spread[1]], 1)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.patch is None:
            return x.mean((2, 3), keepdim=True)
        # padded by (patch - stride) / 2 so that the output is T / stride cells, each patch
        # centred on its cell; border patches average only the pixels inside the image. In two
        # steps, the same average at a third of the cost: blocks of `unit` px (which divides
        # the patch, the stride, the padding and the input, a multiple of 32), then the patches
        # as windows of blocks
        pad = (self.patch - self.stride) // 2
        unit = math.gcd(self.patch, self.stride, pad, 32)
        blocks = F.avg_pool2d(x, unit) if unit > 1 else x
        return F.avg_pool2d(
            blocks, self.patch // unit, self.stride // unit, pad // unit, count_include_pad=False
        )

    def score(self, z: torch.Tensor) -> torch.Tensor:
        """Anomaly score ``(N, 1, h, w)`` of projected features ``z`` ``(N, k, h, w)``."""
        if self.scorer == "gaussian":  # Mahalanobis distance: z is whitened
            return z.pow(2).sum(1, keepdim=True)
        sv = self.support_vectors
        distances = (
            z.pow(2).sum(1, keepdim=True)
            - 2 * F.conv2d(z, sv[:, :, None, None])
            + sv.pow(2).sum(1).view(1, -1, 1, 1)
        )
        kernel = torch.exp(-self.gamma * distances.clamp_min(0))
        return self.rho - F.conv2d(kernel, self.dual_coef.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.score(self.project(self.features(x)))
        size = x.shape[-2:]
        if self.patch is None:
            return F.interpolate(scores, size=size, mode="nearest")
        upsampled = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
        taps = self.blur.numel()
        pad = taps // 2
        out = F.pad(upsampled, (0, 0, pad, pad), mode="replicate")
        out = F.conv2d(out, self.blur.view(1, 1, taps, 1))
        out = F.pad(out, (pad, pad, 0, 0), mode="replicate")
        return F.conv2d(out, self.blur.view(1, 1, 1, taps))


def sample_features(
    net: LbpNet,
    batches: Iterable[torch.Tensor],
    max_patches: int,
    seed: int,
) -> tuple[np.ndarray, int]:
    """A uniform sample (without replacement) of at most ``max_patches`` patch feature rows
    over all ``batches``, in bounded memory (each row gets a random key; the smallest keys
    stay), and the number of patches seen."""
    gen = torch.Generator().manual_seed(seed)
    pool = torch.zeros(0, FEATURES, dtype=torch.float64)
    keys = torch.zeros(0, dtype=torch.float64)
    seen = 0
    with torch.no_grad():
        for batch in batches:
            rows = net.features(batch).permute(0, 2, 3, 1).reshape(-1, FEATURES).double().cpu()
            seen += rows.shape[0]
            pool = torch.cat([pool, rows])
            keys = torch.cat([keys, torch.rand(rows.shape[0], generator=gen, dtype=torch.float64)])
            if pool.shape[0] > max_patches:
                keep = keys.topk(max_patches, largest=False).indices
                pool, keys = pool[keep], keys[keep]
    return pool.numpy(), seen


def fit_lbp(
    config: TrainConfig,
    data: TrainData,
    device: torch.device,
    progress: ProgressCallback,
    *,
    patch: int | None = PATCH,
    stride: int = STRIDE,
    scorer: str = "ocsvm",
    max_patches: int = MAX_PATCHES,
) -> Fitted:
    """Sample the training patches' features, fit the scaler, the PCA and the scorer.

    ``patch=None``: the image-level variant (one patch per input). ``scorer``: ``"ocsvm"``
    (the default) or ``"gaussian"`` (module docstring).
    """
    started = time.monotonic()
    sampler = LbpNet(patch, stride, scorer=scorer).to(device)
    batches = data.images.grid_batches(8, device, Phase(progress, 0.02, 0.6))
    rows, seen = sample_features(sampler, batches, max_patches, config.seed)
    progress(0.6, f"fitting on {rows.shape[0]} of {seen} patches")
    net, metrics = fit_scorer(rows, patch, stride, scorer, config.seed)
    metrics = {"patches_seen": seen, **metrics, "fit_seconds": round(time.monotonic() - started, 2)}
    progress(0.85, "fitted")
    return Fitted(net.to(device), net_args(net), metrics)


def fit_scorer(
    rows: np.ndarray, patch: int | None, stride: int, scorer: str, seed: int
) -> tuple[LbpNet, dict]:
    """Fit StandardScaler, whitened PCA and the scorer on feature ``rows`` ``(n, FEATURES)``;
    the network that applies them, and figures for the artifact's metrics."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    if rows.shape[0] < 2:
        raise ConfigError("the LBP model needs at least 2 training patches")
    scaler = StandardScaler().fit(rows)
    pca = PCA(n_components=PCA_VARIANCE, whiten=True, svd_solver="full", random_state=seed)
    z = pca.fit_transform(scaler.transform(rows))
    if not pca.explained_variance_.min() > 1e-12:
        raise ConfigError("the training patches are all alike (blank images?): nothing to fit")
    metrics: dict = {
        "patch": patch,
        "stride": stride,
        "scorer": scorer,
        "patches_fitted": int(rows.shape[0]),
        "pca_components": int(pca.n_components_),
    }
    svm = None
    if scorer == "ocsvm":
        from sklearn.svm import OneClassSVM

        gamma = float(1.0 / (z.shape[1] * z.var()))  # scikit-learn's gamma="scale"
        svm = OneClassSVM(kernel="rbf", gamma=gamma, nu=NU).fit(z)
        metrics.update(support_vectors=int(svm.support_vectors_.shape[0]), gamma=gamma, nu=NU)
    return from_sklearn(patch, stride, scaler, pca, svm), metrics


def from_sklearn(
    patch: int | None,
    stride: int,
    scaler: Any,  # noqa: ANN401 - fitted sklearn objects (sklearn is imported by fit only)
    pca: Any,  # noqa: ANN401
    svm: Any | None,  # noqa: ANN401
) -> LbpNet:
    """The network applying a fitted ``StandardScaler``, whitened ``PCA`` and ``OneClassSVM``
    (RBF, numeric ``gamma``; ``None``: the Gaussian scorer) to its patch features."""
    components = int(pca.n_components_)
    support = 1 if svm is None else int(svm.support_vectors_.shape[0])
    net = LbpNet(patch, stride, components, support, "gaussian" if svm is None else "ocsvm")
    # (f - mean) / scale, minus the PCA mean, onto the components, whitened: one affine map
    whiten = np.sqrt(pca.explained_variance_)
    weight = pca.components_ / scaler.scale_[None, :] / whiten[:, None]
    bias = -(weight @ scaler.mean_) - (pca.components_ @ pca.mean_) / whiten
    with torch.no_grad():
        net.project.weight.copy_(torch.from_numpy(weight).view(components, FEATURES, 1, 1))
        net.project.bias.copy_(torch.from_numpy(bias))
        if svm is not None:
            net.support_vectors.copy_(torch.from_numpy(svm.support_vectors_))
            net.dual_coef.copy_(torch.from_numpy(svm.dual_coef_[0]))
            net.gamma.fill_(float(svm.gamma))
            net.rho.fill_(float(-svm.intercept_[0]))
    return net


def net_args(net: LbpNet) -> dict:
    """The arguments that rebuild ``net``'s shapes (stored in the artifact)."""
    return {
        "patch": net.patch,
        "stride": net.stride,
        "components": net.project.out_channels,
        "support": net.support_vectors.shape[0],
        "scorer": net.scorer,
    }


def build(net_args: dict, pretrained: bool = False) -> LbpNet:
    del pretrained  # nothing pretrained
    return LbpNet(**net_args)


def fit(
    config: TrainConfig, data: TrainData, device: torch.device, progress: ProgressCallback
) -> Fitted:
    return fit_lbp(config, data, device, progress)


register(ModelSpec("lbp", build, fit, min_input_size=64))
