"""Configuration dataclasses for PP-YOLOE+-SOD.

The defaults reproduce PaddleDetection's ``ppyoloe_plus_sod_crn_s`` configuration
(``configs/ppyoloe/_base_/ppyoloe_plus_crn.yml`` plus
``configs/smalldet/visdrone/ppyoloe_plus_sod_crn_s_80e_visdrone.yml``); see
``../shared/reference/ppyoloe_plus_sod_crn_s.yml``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BACKBONES = ("cspresnet", "lite0")
# "none": one image in; "siamese": the image and its aligned reference (golden sample, before
# image) through the same backbone, fused per pyramid level (workers/detection/fusion.py);
# "stacked": one pass over the image's grey, the reference's grey and their absolute
# difference as the three input channels (model.stack_reference).
REFERENCES = ("none", "siamese", "stacked")


@dataclass
class ModelConfig:
    """Architecture of one detector. Every field maps to a PaddleDetection config key."""

    num_classes: int = 2
    backbone: str = "cspresnet"
    width_mult: float = 0.50
    depth_mult: float = 0.33
    # CSPResNet
    layers: tuple[int, ...] = (3, 6, 6, 3)
    channels: tuple[int, ...] = (64, 128, 256, 512, 1024)
    return_idx: tuple[int, ...] = (1, 2, 3)
    use_large_stem: bool = True
    use_alpha: bool = True
    # CustomCSPPAN
    neck_out_channels: tuple[int, ...] = (768, 384, 192)
    stage_num: int = 1
    block_num: int = 3
    spp: bool = True
    use_trans: bool = True
    num_layers: int = 4
    nhead: int = 4
    dim_feedforward: int = 2048
    dropout: float = 0.1
    trans_activation: str = "gelu"
    # PPYOLOEHead
    fpn_strides: tuple[int, ...] = (32, 16, 8)
    grid_cell_scale: float = 5.0
    grid_cell_offset: float = 0.5
    reg_range: tuple[int, int] = (-2, 8)
    use_varifocal_loss: bool = True
    loss_weight_class: float = 1.0
    loss_weight_iou: float = 2.5
    loss_weight_dfl: float = 0.5
    # TaskAlignedAssigner_CR
    assigner_topk: int = 13
    assigner_alpha: float = 1.0
    assigner_beta: float = 6.0
    assigner_center_radius: float = 1.0
    # MultiClassNMS
    nms_top_k: int = 10000
    keep_top_k: int = 500
    score_threshold: float = 0.01
    nms_threshold: float = 0.6
    # Inference input (square, stretched like PaddleDetection's eval reader)
    eval_size: int = 640
    # Loupe's extension, not a PaddleDetection key: "siamese" takes a reference image too.
    reference: str = "none"

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.reference not in REFERENCES:
            raise ValueError(f"reference must be one of {REFERENCES}, got {self.reference!r}")
        if self.num_classes < 1:
            raise ValueError("num_classes must be >= 1")
        # JSON round trips turn tuples into lists; keep them hashable and comparable.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                setattr(self, f.name, tuple(value))

    @classmethod
    def sod_s(cls, num_classes: int, **overrides: Any) -> ModelConfig:
        """PP-YOLOE+-SOD size s (width 0.50, depth 0.33)."""
        return cls(num_classes=num_classes, width_mult=0.50, depth_mult=0.33, **overrides)

    @classmethod
    def sod_l(cls, num_classes: int, **overrides: Any) -> ModelConfig:
        """PP-YOLOE+-SOD size l (width 1.0, depth 1.0)."""
        return cls(num_classes=num_classes, width_mult=1.0, depth_mult=1.0, **overrides)

    @classmethod
    def lite0(cls, num_classes: int, **overrides: Any) -> ModelConfig:
        """ImageNet-pretrained ``tf_efficientnet_lite0`` backbone with the s neck and head."""
        return cls(num_classes=num_classes, backbone="lite0", **overrides)

    @classmethod
    def from_ppdet_yaml(cls, path: str | Path, **overrides: Any) -> ModelConfig:
        """Read a self-contained PaddleDetection PP-YOLOE config (as in shared/reference)."""
        import yaml

        raw = yaml.safe_load(Path(path).read_text())
        bb = raw.get("CSPResNet", {})
        neck = raw.get("CustomCSPPAN", {})
        head = raw.get("PPYOLOEHead", {})
        assigner = head.get("assigner", {})
        nms = head.get("nms", {})
        lw = head.get("loss_weight", {})
        if assigner and assigner.get("name") != "TaskAlignedAssigner_CR":
            raise ValueError(f"only TaskAlignedAssigner_CR is implemented, got {assigner}")
        kw: dict[str, Any] = {
            "num_classes": raw.get("num_classes", 80),
            "width_mult": raw.get("width_mult", 1.0),
            "depth_mult": raw.get("depth_mult", 1.0),
            "layers": bb.get("layers", cls.layers),
            "channels": bb.get("channels", cls.channels),
            "return_idx": bb.get("return_idx", cls.return_idx),
            "use_large_stem": bb.get("use_large_stem", False),
            "use_alpha": bb.get("use_alpha", False),
            "neck_out_channels": neck.get("out_channels", cls.neck_out_channels),
            "stage_num": neck.get("stage_num", 1),
            "block_num": neck.get("block_num", 3),
            "spp": neck.get("spp", False),
            "use_trans": neck.get("use_trans", False),
            "num_layers": neck.get("num_layers", 4),
            "nhead": neck.get("nhead", 4),
            "dim_feedforward": neck.get("dim_feedforward", 2048),
            "dropout": neck.get("dropout", 0.1),
            "trans_activation": neck.get("activation", "gelu"),
            "fpn_strides": head.get("fpn_strides", cls.fpn_strides),
            "grid_cell_scale": head.get("grid_cell_scale", 5.0),
            "grid_cell_offset": head.get("grid_cell_offset", 0.5),
            "reg_range": head.get("reg_range", (0, 17)),
            "use_varifocal_loss": head.get("use_varifocal_loss", True),
            "loss_weight_class": lw.get("class", 1.0),
            "loss_weight_iou": lw.get("iou", 2.5),
            "loss_weight_dfl": lw.get("dfl", 0.5),
            "assigner_topk": assigner.get("topk", 13),
            "assigner_alpha": assigner.get("alpha", 1.0),
            "assigner_beta": assigner.get("beta", 6.0),
            "assigner_center_radius": assigner.get("center_radius", 1.0),
            "nms_top_k": nms.get("nms_top_k", 10000),
            "keep_top_k": nms.get("keep_top_k", 500),
            "score_threshold": nms.get("score_threshold", 0.01),
            "nms_threshold": nms.get("nms_threshold", 0.6),
        }
        kw.update(overrides)
        return cls(**kw)

    @property
    def siamese(self) -> bool:
        """True when the network takes a reference image beside the image (Siamese or
        stacked)."""
        return self.reference != "none"

    @property
    def kind(self) -> str:
        """How error messages and logs name the network: "single-image", "Siamese", "stacked"."""
        return {"none": "single-image", "siamese": "Siamese"}.get(self.reference, self.reference)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (tuples become lists). ``reference`` is left out when it is
        ``"none"``: single-image artifacts, checkpoints and exports stay exactly what they were
        before the field existed (and older ones still match a resumed run)."""
        out = {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }
        if out["reference"] == "none":
            del out["reference"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error, not silently dropped."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown ModelConfig keys: {sorted(unknown)}")
        return cls(**data)


@dataclass
class TrainConfig:
    """Optimisation settings; defaults are the published SOD recipe (lr 0.01 for batch 8)."""

    epochs: int = 80
    batch_size: int = 8
    base_lr: float = 0.01
    base_batch_size: int = 8  # lr is scaled linearly from this batch size
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    cosine_epochs_factor: float = 1.2  # cosine runs to 96 epochs for an 80-epoch schedule
    ema_decay: float = 0.9998
    use_ema: bool = True
    train_sizes: tuple[int, ...] = tuple(range(320, 769, 32))
    flip_prob: float = 0.5
    rotate: bool = False  # quarter turns and vertical flips too (parts without an "up")
    distort: bool = True
    crop_size: int | None = None  # random crops of large images (on-the-fly sliced training)
    # At most this share of an epoch's images are negatives (images without a box), drawn
    # afresh each epoch; None: every negative every epoch (docs/detection.md, TrainConfig).
    negative_share: float | None = None
    # With this probability a training image with an aligned reference gets a random half of
    # its defects replaced by the reference's pixels (those boxes dropped): data.swap_defects.
    reference_swap: float = 0.0
    # With this probability a training image with an aligned reference gets up to three of its
    # defects copied to places where the reference shows the same pattern, with their boxes:
    # data.transplant_defects.
    reference_transplant: float = 0.0
    seed: int = 0
    device: str | None = None
    num_threads: int | None = None  # torch intra-op threads; 1 is fastest on a busy small CPU
    max_iters_per_epoch: int | None = None  # cap for smoke runs and benchmarks
    log_every: int = 10
    pretrained: str | None = None  # artifact or converted .pdparams state to start from

    def __post_init__(self) -> None:
        if isinstance(self.train_sizes, list):
            self.train_sizes = tuple(self.train_sizes)
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if self.negative_share is not None and not 0 <= self.negative_share <= 1:
            raise ValueError("negative_share must be between 0 and 1, or None")
        if not 0 <= self.reference_swap <= 1:
            raise ValueError("reference_swap must be between 0 and 1")
        if not 0 <= self.reference_transplant <= 1:
            raise ValueError("reference_transplant must be between 0 and 1")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }


# The sizes a trained model is named by: the pretrained Lite0 backbone, or CSPResNet s / m / l
# (PaddleDetection's crn_s, crn_m, crn_l widths and depths).
SIZES = {
    "lite0": {"backbone": "lite0"},
    "s": {"width_mult": 0.50, "depth_mult": 0.33},
    "m": {"width_mult": 0.75, "depth_mult": 0.67},
    "l": {"width_mult": 1.0, "depth_mult": 1.0},
}


def model_config_for(size: str, num_classes: int, **overrides: Any) -> ModelConfig:
    """The ModelConfig of one of :data:`SIZES` (``"lite0"``, ``"s"``, ``"m"``, ``"l"``)."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    return ModelConfig(num_classes=num_classes, **SIZES[size], **overrides)


def train_sizes_around(input_size: int) -> tuple[int, ...]:
    """Multi-scale training sizes around an input size, in multiples of the stride 32, from half
    to 1.2x (320..768 for 640: the SOD recipe)."""
    low = -(-input_size // 64) * 32  # half, rounded up to a multiple of 32
    return tuple(range(low, int(input_size * 1.2) // 32 * 32 + 1, 32))
