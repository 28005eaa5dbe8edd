"""What the anomaly probes share (``anomaly_layers_probe.py``, ``anomaly_synthetic_probe.py``):
Lite0's feature stages, an MVTec-layout test set with its masks at one size, PatchCore's blur
of a map, and the three quality figures with image and pixel AUROC per defect type."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def lite0_stages():  # noqa: ANN201 - a timm features_only network (torch imported lazily)
    """Lite0 with its ImageNet weights, every stage out (timm's ``features_only`` indices 0-3:
    ``blocks.0``, ``blocks.1`` (stride 4), ``blocks.2`` (8), ``blocks.4`` (16)), in eval mode."""
    import timm

    from workers import lite0

    net = timm.create_model(
        lite0.timm_name("lite0"), pretrained=False, features_only=True, out_indices=(0, 1, 2, 3)
    )
    lite0.load_into(net, "lite0")
    return net.eval()


class TestSet:
    """``root/test/<kind>/*.png``: paths, defect kinds, labels (not ``good``) and the ground-truth
    masks resized to ``size`` x ``size`` (a good image's is empty)."""

    def __init__(self, root: Path, size: int) -> None:
        from PIL import Image

        self.paths = sorted((root / "test").glob("*/*.png"))
        self.kinds = [p.parent.name for p in self.paths]
        self.labels = np.array([k != "good" for k in self.kinds])
        self.masks = []
        for path, kind in zip(self.paths, self.kinds, strict=True):
            mask_path = root / "ground_truth" / kind / f"{path.stem}_mask.png"
            if kind == "good" or not mask_path.exists():
                self.masks.append(np.zeros((size, size), bool))
            else:
                mask = Image.open(mask_path).convert("L").resize((size, size), Image.NEAREST)
                self.masks.append(np.asarray(mask) > 127)

    def figures(self, maps: list[np.ndarray], scores: list[float] | None = None) -> str:
        """Image AUROC (``scores``, default each map's maximum), pixel AUROC and AU-PRO of
        ``maps``, then per defect type (that type's images against the good ones) its image
        AUROC and pixel AUROC, as ``crack 0.79/0.93``."""
        from sklearn.metrics import roc_auc_score

        from workers.anomaly import metrics

        scores = np.array([m.max() for m in maps] if scores is None else scores)
        pixel = roc_auc_score(np.concatenate([m.ravel() for m in self.masks]),
                              np.concatenate([m.ravel() for m in maps]))  # fmt: skip
        per_kind = []
        for kind in sorted(set(self.kinds) - {"good"}):
            rows = [i for i, k in enumerate(self.kinds) if k in (kind, "good")]
            kind_pixel = roc_auc_score(np.concatenate([self.masks[i].ravel() for i in rows]),
                                       np.concatenate([maps[i].ravel() for i in rows]))  # fmt: skip
            per_kind.append(
                f"{kind} {roc_auc_score(self.labels[rows], scores[rows]):.2f}/{kind_pixel:.2f}"
            )
        return (
            f"image AUROC {roc_auc_score(self.labels, scores):.3f}, pixel AUROC {pixel:.3f}, "
            f"AU-PRO {metrics.au_pro(maps, self.masks):.3f}; {', '.join(per_kind)}"
        )


def blur(m, sigma: float = 4.0):  # noqa: ANN001, ANN201 - torch tensors (N, 1, H, W)
    """PatchCore's Gaussian blur of ``(N, 1, H, W)`` maps (reflected at the borders)."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    k = int(2 * round(4 * sigma) + 1)
    g = torch.exp(-((torch.arange(k) - k // 2).float() ** 2) / (2 * sigma**2))
    g = g / g.sum()
    m = F.pad(m, (k // 2,) * 4, mode="reflect")
    return F.conv2d(F.conv2d(m, g.view(1, 1, -1, 1)), g.view(1, 1, 1, -1))
