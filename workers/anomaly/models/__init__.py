"""The table of anomaly models: one module per model, each registering itself in :data:`MODELS`.

A model module (``models/<name>.py``, named after its ``TrainConfig.model`` value) holds the
network and its fitting, and ends with ``register(ModelSpec(name=..., build=..., fit=...))``.
Training, loading, the runtimes and the INT8 export look a model up here and never branch on
its name, so adding a model is adding one module (docs/anomaly.md has an example).

A model's module is imported by the first :func:`get` of its name; :func:`names` lists the
modules without importing them, so neither this package nor :func:`names` pulls in torch.

Every model can also be trained at several input sizes with its maps fused
(``TrainConfig.multiscale``): :func:`get` returns the model's spec with ``build`` and ``fit``
that hand such a config, or an artifact's ``net_args`` holding ``"multiscale"``, to
:mod:`workers.anomaly.multiscale`, and everything else to the model's own functions.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, NamedTuple

from ..errors import IncompatibleModelError

if TYPE_CHECKING:  # pragma: no cover
    import torch


#: What a model trains with when the user leaves these ``TrainConfig`` fields at ``None`` and
#: its ``ModelSpec.train_defaults`` does not name them either (one-pass models such as PaDiM
#: ignore them; a model trained in steps names its own).
TRAIN_DEFAULTS: dict[str, int | float] = {"steps": 1000, "batch_size": 1, "learning_rate": 1e-4}


class Fitted(NamedTuple):
    """What a model's ``fit`` returns: the fitted network, the arguments that rebuild its
    shape (stored in the artifact as ``net_args``) and figures for the artifact's metrics."""

    net: torch.nn.Module
    net_args: dict
    metrics: dict


@dataclass(frozen=True)
class ModelSpec:
    """One model kind.

    ``build(net_args, pretrained)`` makes the network with the shapes ``net_args`` describe
    (``pretrained``: fill an ImageNet backbone; loading an artifact passes ``False`` and then
    loads every tensor). Its forward maps RGB batches in ``[0, 1]`` ``(N, 3, T, T)`` to raw
    anomaly maps ``(N, 1, T, T)``.
    ``fit(config, data, device, progress)`` trains or fits a new network (``config``: a
    ``TrainConfig``; ``data``: a ``training_data.TrainData``; ``progress``: a progress callback)
    and returns :class:`Fitted`.
    ``min_input_size``: the smallest tile the network takes.
    ``quantized_modules``: names of the convolutional submodules INT8 may quantize (everything
    after them, such as distances, stays fp32); empty: the model has no INT8 export.
    ``int8_by_default``: an INT8 export is worth making after training, because it passes the
    export's accuracy check (PaDiM's and PatchCore's distances amplify the INT8 noise of their
    backbone, so their exports are refused: docs/anomaly.md, "Runtimes and INT8").
    ``train_defaults``: what the model trains with when the user leaves ``TrainConfig``'s
    ``steps``, ``batch_size`` or ``learning_rate`` at ``None`` (a field it does not name takes
    :data:`TRAIN_DEFAULTS`); ``TrainConfig.resolved`` applies them, and ``fit`` gets the
    resolved config.
    """

    name: str
    build: Callable[[dict, bool], Any]
    fit: Callable[..., Fitted]
    min_input_size: int = 64
    quantized_modules: tuple[str, ...] = ()
    int8_by_default: bool = False
    train_defaults: dict[str, int | float] = field(default_factory=dict, hash=False)


#: The registered models by name; each module adds itself when imported (:func:`get` does).
MODELS: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add a model to :data:`MODELS` (called once, at the end of its module)."""
    if spec.name in MODELS and MODELS[spec.name] is not spec:
        raise ValueError(f"anomaly model {spec.name!r} is registered twice")
    unknown = set(spec.train_defaults) - set(TRAIN_DEFAULTS)
    if unknown:
        raise ValueError(
            f"train_defaults of {spec.name!r} names {sorted(unknown)}; "
            f"only {sorted(TRAIN_DEFAULTS)} have model defaults"
        )
    MODELS[spec.name] = spec
    return spec


def names() -> tuple[str, ...]:
    """The model names, from the module names (nothing is imported)."""
    return tuple(
        sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    )


def get(name: str) -> ModelSpec:
    """The registered model ``name``, with ``build`` and ``fit`` that also make its multi-scale
    networks (:func:`_scaled`); :class:`IncompatibleModelError` if there is none."""
    if name not in MODELS:
        if name not in names():
            raise IncompatibleModelError(f"unknown model kind {name!r}")
        importlib.import_module(f"{__name__}.{name}")
        if name not in MODELS:
            raise ValueError(f"models/{name}.py does not register a model named {name!r}")
    return _scaled(MODELS[name])


#: name -> (the registered spec, the same with multi-scale build and fit), made once
_SCALED: dict[str, tuple[ModelSpec, ModelSpec]] = {}


def _scaled(spec: ModelSpec) -> ModelSpec:
    """``spec`` whose ``build`` makes a multi-scale network when the artifact's ``net_args``
    hold ``"multiscale"`` and whose ``fit`` fits one when ``TrainConfig.multiscale`` names input
    sizes (both in :mod:`workers.anomaly.multiscale`, imported then: it uses the calibration,
    which imports this table); otherwise the model's own functions, unchanged."""
    made = _SCALED.get(spec.name)
    if made is not None and made[0] is spec:
        return made[1]

    def build(net_args: dict, pretrained: bool) -> Any:
        if "multiscale" in net_args:
            return _multiscale().build(spec, net_args, pretrained)
        return spec.build(net_args, pretrained)

    def fit(config: Any, data: Any, device: Any, progress: Any) -> Fitted:
        if getattr(config, "multiscale", ()):
            return _multiscale().fit(spec, config, data, device, progress)
        return spec.fit(config, data, device, progress)

    scaled = replace(spec, build=build, fit=fit)
    _SCALED[spec.name] = (spec, scaled)
    return scaled


def _multiscale() -> Any:
    return importlib.import_module("..multiscale", __package__)
