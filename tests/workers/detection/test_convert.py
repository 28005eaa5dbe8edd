"""The .pdparams converter on a synthetic Paddle-style file (pickled dict of numpy arrays)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from workers.detection.artifact import load_artifact
from workers.detection.convert import convert_pdparams, paddle_to_torch_name, read_pdparams
from workers.detection.errors import WeightsNotFound
from workers.detection.model import build_model

from .conftest import tiny_model_config

pytestmark = pytest.mark.ml


def paddle_style_state(model: torch.nn.Module, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights laid out the way PaddleDetection saves them: BN stats as ``_mean`` /
    ``_variance``, Linear weights [in, out], no ``num_batches_tracked``."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        arr = rng.standard_normal(tuple(value.shape)).astype(np.float32) * 0.1
        if key.endswith("running_var"):
            arr = np.abs(arr) + 0.5
        if value.ndim == 2:
            arr = np.ascontiguousarray(arr.T)
        name = key.replace(".running_mean", "._mean").replace(".running_var", "._variance")
        out[name] = arr
    return out


def test_names() -> None:
    assert paddle_to_torch_name("yolo_head.stem_cls.0.conv.bn._variance") == (
        "yolo_head.stem_cls.0.conv.bn.running_var"
    )
    assert (
        paddle_to_torch_name("backbone.stem.conv1.bn._mean")
        == "backbone.stem.conv1.bn.running_mean"
    )
    assert paddle_to_torch_name("neck.encoder.layers.0.self_attn.in_proj_weight") == (
        "neck.encoder.layers.0.self_attn.in_proj_weight"
    )


def test_converted_weights_reproduce_the_source_model(tmp_path: Path) -> None:
    cfg = tiny_model_config()
    reference = build_model(cfg)
    params = paddle_style_state(reference)
    pdparams = tmp_path / "model.pdparams"
    with pdparams.open("wb") as fh:
        pickle.dump(params, fh, protocol=2)

    # the reference model gets the same numbers the Paddle way round
    state = {}
    for key, value in reference.state_dict().items():
        name = key.replace(".running_mean", "._mean").replace(".running_var", "._variance")
        if name in params:
            arr = torch.from_numpy(params[name])
            state[key] = arr.t() if value.ndim == 2 else arr
        else:
            state[key] = value
    reference.load_state_dict(state)
    reference.eval()

    rep = convert_pdparams(pdparams, tmp_path / "model.pt", cfg, ["a", "b"])
    assert not rep.missing and not rep.unexpected and not rep.mismatched
    assert "neck.encoder.layers.0.self_attn.in_proj_weight" in rep.transposed
    assert "neck.encoder.layers.0.self_attn.out_proj.weight" in rep.transposed  # square

    converted, cats, meta = load_artifact(tmp_path / "model.pt")
    assert [c.name for c in cats] == ["a", "b"]
    assert meta["converted_from"].endswith("model.pdparams")
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        s0, b0 = reference(x)
        s1, b1 = converted(x)
    assert torch.equal(s0, s1) and torch.equal(b0, b1)


def test_mismatched_config_fails_loudly(tmp_path: Path) -> None:
    params = paddle_style_state(build_model(tiny_model_config()))
    pdparams = tmp_path / "m.pdparams"
    pdparams.write_bytes(pickle.dumps(params))
    with pytest.raises(ValueError, match="do not match"):
        convert_pdparams(pdparams, tmp_path / "x.pt", tiny_model_config(num_classes=5))
    assert not (tmp_path / "x.pt").exists()


def test_refuses_pickles_that_are_not_plain_arrays(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (os.getcwd, ())

    path = tmp_path / "evil.pdparams"
    path.write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        read_pdparams(path)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFound, match="nope.pdparams"):
        read_pdparams(tmp_path / "nope.pdparams")
