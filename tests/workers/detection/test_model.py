"""Architecture: shapes, Paddle-compatible names, RepVGG re-parameterisation, SOD parts."""

from __future__ import annotations

import pytest
import torch

from workers.detection.backbone import RepVggBlock
from workers.detection.config import ModelConfig
from workers.detection.model import build_model
from workers.detection.neck import build_2d_sincos_position_embedding

from .conftest import REPO, tiny_model_config

pytestmark = pytest.mark.ml

REFERENCE_YML = REPO.parent / "shared" / "reference" / "ppyoloe_plus_sod_crn_s.yml"


def _randomise_bn(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


def test_reference_config_is_the_s_preset() -> None:
    if not REFERENCE_YML.is_file():
        pytest.skip(f"reference config not found at {REFERENCE_YML}")
    cfg = ModelConfig.from_ppdet_yaml(REFERENCE_YML)
    assert cfg == ModelConfig.sod_s(num_classes=2)
    assert cfg.reg_range == (-2, 8) and cfg.grid_cell_scale == 5.0
    assert (cfg.assigner_topk, cfg.assigner_alpha, cfg.assigner_beta) == (13, 1.0, 6.0)
    assert (cfg.nms_top_k, cfg.keep_top_k, cfg.score_threshold, cfg.nms_threshold) == (
        10000,
        500,
        0.01,
        0.6,
    )


def test_s_model_shapes_and_multipliers() -> None:
    model = build_model(ModelConfig.sod_s(num_classes=3)).eval()
    bb = model.backbone
    assert [len(s.blocks) for s in bb.stages] == [1, 2, 2, 1]  # round(3|6 * 0.33)
    assert bb.out_channels == [128, 256, 512]  # (256, 512, 1024) * 0.5
    assert model.neck.out_channels == [384, 192, 96]  # (768, 384, 192) * 0.5
    assert model.neck.hidden_dim == 512 and len(model.neck.encoder.layers) == 4
    assert model.yolo_head.reg_channels == 10
    assert model.yolo_head.proj_conv.weight.flatten().tolist() == list(range(-2, 8))
    x = torch.rand(1, 3, 320, 256)
    with torch.no_grad():
        feats = model.neck(model.backbone(x))
        assert [tuple(f.shape[1:]) for f in feats] == [(384, 10, 8), (192, 20, 16), (96, 40, 32)]
        out = model.head_outputs(x)
        scores, boxes = model(x)
    n = 10 * 8 + 20 * 16 + 40 * 32
    assert out.cls_logits.shape == (1, n, 3) and out.reg_dist.shape == (1, n, 40)
    assert scores.shape == (1, n, 3) and boxes.shape == (1, n, 4)
    # initial head: cls bias prior 0.01, reg weights 0 -> uniform bins -> distance 2.5 strides
    assert scores.max().item() == pytest.approx(0.01, rel=1e-4)
    w = boxes[0, :, 2] - boxes[0, :, 0]
    assert torch.allclose(w[:80], torch.full((80,), 5.0 * 32))


def test_l_preset_widths() -> None:
    cfg = ModelConfig.sod_l(num_classes=1)
    assert (cfg.width_mult, cfg.depth_mult) == (1.0, 1.0)


def test_parameter_names_follow_paddledetection() -> None:
    keys = set(build_model(ModelConfig.sod_s(num_classes=2)).state_dict())
    for name in [
        "backbone.stem.conv3.conv.weight",
        "backbone.stages.0.conv_down.bn.running_mean",
        "backbone.stages.3.blocks.0.conv2.alpha",
        "backbone.stages.2.attn.fc.bias",
        "neck.encoder.layers.3.self_attn.in_proj_weight",
        "neck.encoder.layers.0.linear1.weight",
        "neck.encoder.layers.0.norm2.bias",
        "neck.fpn_stages.0.0.convs.spp.conv.conv.weight",
        "neck.fpn_routes.1.conv.weight",
        "neck.pan_routes.0.bn.running_var",
        "neck.pan_stages.1.0.convs.0.conv2.conv1.conv.weight",
        "yolo_head.stem_cls.2.fc.weight",
        "yolo_head.stem_reg.0.conv.bn.weight",
        "yolo_head.pred_reg.1.bias",
        "yolo_head.proj_conv.weight",
    ]:
        assert name in keys, name


def test_repvgg_reparameterisation_gives_identical_outputs() -> None:
    torch.manual_seed(0)
    block = RepVggBlock(8, 8, act="swish", alpha=True)
    _randomise_bn(block)
    with torch.no_grad():
        block.alpha.fill_(0.37)
    block.eval()
    x = torch.randn(2, 8, 13, 11)
    with torch.no_grad():
        before = block(x)
        block.convert_to_deploy()
        after = block(x)
    assert not hasattr(block, "conv1")
    assert torch.allclose(before, after, atol=1e-5)

    model = build_model(tiny_model_config())
    _randomise_bn(model)
    model.eval()
    x = torch.rand(1, 3, 128, 96)
    with torch.no_grad():
        s0, b0 = model(x)
        model.convert_to_deploy()
        s1, b1 = model(x)
    assert torch.allclose(s0, s1, atol=1e-5) and torch.allclose(b0, b1, atol=1e-3)


def test_position_embedding_reproduces_paddle_w_major_layout() -> None:
    pos = build_2d_sincos_position_embedding(w=3, h=2, embed_dim=8)
    assert pos.shape == (1, 6, 8)
    # first frequency is 1: row t encodes w = t // h in the first quarter, h = t % h in the third
    for t in range(6):
        assert pos[0, t, 0].item() == pytest.approx(torch.sin(torch.tensor(t // 2.0)).item())
        assert pos[0, t, 1].item() == pytest.approx(torch.sin(torch.tensor(t // 2.0) / 100).item())
        assert pos[0, t, 4].item() == pytest.approx(torch.sin(torch.tensor(t % 2.0)).item())
        assert pos[0, t, 6].item() == pytest.approx(torch.cos(torch.tensor(t % 2.0)).item())


def test_negative_distances_decode_inside_the_anchor_cell() -> None:
    model = build_model(tiny_model_config()).eval()
    head = model.yolo_head
    with torch.no_grad():
        out = model.head_outputs(torch.rand(1, 3, 64, 64))
        out.reg_dist.zero_()
        reg = out.reg_dist.view(1, -1, 4, 10)
        reg[..., 0] = 50.0  # all mass on bin 0 -> distance -2 strides on every side
        _, boxes = head.decode(out)
    x_centre = out.anchor_points[:, 0]
    assert torch.allclose(boxes[0, :, 0], x_centre + 2 * out.stride_tensor[:, 0], atol=1e-3)
    assert torch.allclose(boxes[0, :, 2], x_centre - 2 * out.stride_tensor[:, 0], atol=1e-3)


def test_training_loss_is_finite_with_and_without_boxes() -> None:
    model = build_model(tiny_model_config()).train()
    x = torch.rand(2, 3, 96, 96)
    labels = torch.tensor([[[1], [0]], [[0], [0]]])
    boxes = torch.tensor([[[10.0, 10, 30, 40], [50, 50, 53, 52]], [[0, 0, 0, 0], [0, 0, 0, 0]]])
    pad = torch.tensor([[[1.0], [1.0]], [[0.0], [0.0]]])
    losses = model.loss(x, labels, boxes, pad)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_iou"] > 0 and losses["loss_dfl"] > 0
    losses["loss"].backward()
    assert model.backbone.stem.conv1.conv.weight.grad is not None
    assert model.yolo_head.proj_conv.weight.grad is None

    empty = model.loss(x, labels[:, :0], boxes[:, :0], pad[:, :0])
    assert empty["loss_iou"].item() == 0.0 and torch.isfinite(empty["loss"])
