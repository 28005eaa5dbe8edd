"""Loupe's forwards compute anomalib's maps more cheaply; these check they are still anomalib's.

PaDiM's and PatchCore's maps end in a 33x33 Gaussian blur that Loupe runs as two 1-D passes, and
PatchCore's nearest-neighbour search takes its minimum before adding norms and square roots.
Each is compared here with anomalib's own code on fitted networks.
"""

from __future__ import annotations

import pytest
import torch

from workers.anomaly.backbone import lite_normalise, separable_blur
from workers.anomaly.models.padim import PadimNet
from workers.anomaly.models.patchcore import PatchcoreNet


def _fitted_padim() -> PadimNet:
    net = PadimNet(n_features=20)
    gen = torch.Generator().manual_seed(0)
    positions = (64 // 4) ** 2
    net.model.gaussian.mean = torch.randn(20, positions, generator=gen)
    a = torch.randn(positions, 20, 20, generator=gen)
    net.model.gaussian.inv_covariance = a @ a.transpose(1, 2) / 20 + torch.eye(20)
    return net


def test_separable_blur_equals_anomalibs_2d_blur():
    from anomalib.models.components.filters import GaussianBlur2d

    blur = GaussianBlur2d(sigma=4, channels=1)
    x = torch.rand(3, 1, 70, 90, generator=torch.Generator().manual_seed(1)) * 50
    ours, theirs = separable_blur(blur, x), blur(x)
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-4)


def test_padim_forward_is_anomalibs_forward():
    net = _fitted_padim()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = net(x)
        theirs = net.model(lite_normalise(x)).anomaly_map
    assert ours.shape == theirs.shape == (2, 1, 64, 64)
    span = float(theirs.max() - theirs.min())
    assert span > 0
    assert float((ours - theirs).abs().max()) < 1e-5 * float(theirs.abs().max()) + 1e-6 * span


@pytest.mark.parametrize("bank_rows", [1, 257])
def test_patchcore_forward_is_anomalibs_forward(bank_rows: int):
    net = PatchcoreNet()
    m = net.model
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        # a bank of real patch embeddings (other images), so distances are realistic
        other = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(4))
        m.memory_bank = net.embed(other)[:bank_rows].contiguous()
        ours = net(x)
        features = m.feature_extractor(lite_normalise(x))
        features = {k: m.feature_pooler(v) for k, v in features.items()}
        embedding = m.generate_embedding(features)
        b, c, h, w = embedding.shape
        flat = embedding.permute(0, 2, 3, 1).reshape(-1, c)
        scores = m.euclidean_dist(flat, m.memory_bank).amin(1).reshape(b, 1, h, w)
        theirs = m.anomaly_map_generator(scores, x.shape[-2:])
    assert ours.shape == theirs.shape == (2, 1, 64, 64)
    assert float(theirs.max()) > 0
    assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-4 * float(theirs.max()))
