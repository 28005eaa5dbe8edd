"""Convert PaddleDetection ``.pdparams`` weights to this implementation (no Paddle needed).

A ``.pdparams`` file is a pickled dict of numpy arrays keyed by Paddle parameter names. Names
already match this implementation except BatchNorm statistics; Paddle's Linear weights are
stored [in, out] and are transposed.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .artifact import save_artifact
from .config import ModelConfig
from .data import Category
from .errors import WeightsNotFound
from .model import PPYOLOE, build_model

_RENAMES = (("._mean", ".running_mean"), ("._variance", ".running_var"))


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that only builds numpy arrays and plain containers: a weights file must
    not be able to run code."""

    _ALLOWED = {
        ("collections", "OrderedDict"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("builtins", "dict"),
        ("builtins", "list"),
        ("builtins", "tuple"),
        ("_codecs", "encode"),  # pickle protocol 2 stores array bytes through it
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")
        return super().find_class(module, name)


def read_pdparams(path: str | Path) -> dict[str, np.ndarray]:
    """Read a ``.pdparams`` file into {name: array}."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFound(
            f"{path} not found; download the official PaddleDetection weights "
            "(e.g. ppyoloe_plus_sod_crn_s_80e_visdrone.pdparams) on a machine with internet "
            "access and pass the local path"
        )
    with path.open("rb") as fh:
        raw = _NumpyOnlyUnpickler(fh).load()
    if not isinstance(raw, dict):
        raise ValueError(f"{path} does not hold a dict of arrays")
    return {str(k): np.asarray(v) for k, v in raw.items() if isinstance(v, np.ndarray | np.generic)}


def paddle_to_torch_name(name: str) -> str:
    """Paddle parameter name -> this implementation's state-dict key."""
    for old, new in _RENAMES:
        if name.endswith(old):
            return name[: -len(old)] + new
    return name


@dataclass
class ConversionReport:
    """What the converter did; ``missing`` are model keys no Paddle tensor filled."""

    loaded: int = 0
    transposed: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)


def convert_state_dict(
    params: dict[str, np.ndarray], model: PPYOLOE, strict: bool = True
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Map Paddle arrays onto ``model``'s state dict.

    With ``strict`` any unmatched or wrongly shaped tensor is an error, so a config that does
    not match the weights (size s vs l, class count) fails loudly.
    """
    own = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    rep = ConversionReport()
    for pname, arr in params.items():
        key = paddle_to_torch_name(pname)
        if key not in own:
            rep.unexpected.append(pname)
            continue
        target = own[key]
        value = torch.from_numpy(np.ascontiguousarray(arr)).to(target.dtype)
        if target.ndim == 2 and value.ndim == 2:
            # Every 2-D Paddle weight here is a Linear (or the packed q/k/v projection),
            # stored [in, out]; torch stores [out, in]. Square ones must be transposed too.
            value = value.t().contiguous()
            rep.transposed.append(key)
        if tuple(value.shape) != tuple(target.shape):
            rep.mismatched.append(f"{pname}: {tuple(value.shape)} vs {tuple(target.shape)}")
            continue
        out[key] = value
    for key, value in own.items():
        if key in out:
            continue
        if key.endswith("num_batches_tracked"):
            out[key] = value.clone()
        else:
            rep.missing.append(key)
    rep.loaded = len(out)
    if strict and (rep.unexpected or rep.missing or rep.mismatched):
        raise ValueError(
            "pdparams do not match the model config: "
            f"unexpected={rep.unexpected[:5]} missing={rep.missing[:5]} "
            f"mismatched={rep.mismatched[:5]}"
        )
    return out, rep


def convert_pdparams(
    pdparams: str | Path,
    output: str | Path,
    model_config: ModelConfig,
    category_names: list[str] | None = None,
    strict: bool = True,
) -> ConversionReport:
    """Convert a ``.pdparams`` file into a Loupe artifact at ``output``.

    ``category_names`` default to ``class_0 .. class_{C-1}``; category ids are 1-based.
    """
    model = build_model(model_config, pretrained_backbone=False)
    state, rep = convert_state_dict(read_pdparams(pdparams), model, strict=strict)
    model.load_state_dict(state, strict=False)
    names = category_names or [f"class_{i}" for i in range(model_config.num_classes)]
    if len(names) != model_config.num_classes:
        raise ValueError(f"{len(names)} category names for {model_config.num_classes} classes")
    cats = [Category(id=i + 1, name=n, index=i) for i, n in enumerate(names)]
    save_artifact(output, model, cats, metadata={"converted_from": str(pdparams)})
    return rep
