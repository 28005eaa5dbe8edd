"""Fidelity check of workers.detection against PaddleDetection's own PP-YOLOE+-SOD.

Not part of CI: the Paddle side needs a separate venv (see ../shared/reference/README.md).

    # 1. in the Paddle venv: build the reference model from the shared config, save its random
    #    weights as .pdparams and its head outputs / losses on a fixed input
    $HOME/paddle-ref/bin/python benchmarks/detection_parity.py paddle
    # 2. in the project venv: convert the weights, run the same input, compare
    .venv/bin/python benchmarks/detection_parity.py torch
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CFG = ROOT.parent / "shared" / "reference" / "ppyoloe_plus_sod_crn_s.yml"
SIZE = (256, 320)  # H, W: non-square so the position-embedding layout is exercised


def fixed_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.random((2, 3, *SIZE), dtype=np.float32)
    gt_bbox = np.array(
        [
            [[20, 30, 60, 64], [100, 100, 112, 109], [200, 40, 290, 150]],
            [[5, 5, 25, 21], [150, 200, 156, 205], [0, 0, 0, 0]],
        ],
        np.float32,
    )
    gt_class = np.array([[[0], [1], [1]], [[1], [0], [0]]], np.int32)
    pad = np.array([[[1], [1], [1]], [[1], [1], [0]]], np.float32)
    return {"image": image, "gt_bbox": gt_bbox, "gt_class": gt_class, "pad_gt_mask": pad}


def run_paddle(cfg_path: Path, out: Path) -> None:
    import paddle
    import paddle.nn.functional as F
    from ppdet.core.workspace import create, load_config

    paddle.set_device("cpu")
    paddle.seed(0)
    cfg = load_config(str(cfg_path))
    model = create(cfg.architecture)
    model.eval()
    # Random BN statistics and alpha so the check exercises them (fresh BN is the identity).
    rng = np.random.default_rng(1)
    state = model.state_dict()
    for k, v in state.items():
        if k.endswith("_mean"):
            v.set_value(rng.normal(0, 0.1, v.shape).astype("float32"))
        elif k.endswith("_variance"):
            v.set_value(rng.uniform(0.5, 1.5, v.shape).astype("float32"))
        elif k.endswith("alpha"):
            v.set_value(rng.uniform(0.5, 1.5, v.shape).astype("float32"))
        elif "pred_cls" in k or "pred_reg" in k:  # zero-initialised in Paddle: randomise
            v.set_value(rng.normal(0, 0.01, v.shape).astype("float32"))
    paddle.save(model.state_dict(), str(out / "ref.pdparams"))

    inp = fixed_inputs()
    x = paddle.to_tensor(inp["image"])
    with paddle.no_grad():
        feats = model.neck(model.backbone({"image": x}))
        head = model.yolo_head
        cls_list, reg_list = [], []
        for i, feat in enumerate(feats):
            avg = F.adaptive_avg_pool2d(feat, (1, 1))
            cls_logit = head.pred_cls[i](head.stem_cls[i](feat, avg) + feat)
            reg = head.pred_reg[i](head.stem_reg[i](feat, avg))
            cls_list.append(F.sigmoid(cls_logit).flatten(2).transpose([0, 2, 1]))
            reg_list.append(reg.flatten(2).transpose([0, 2, 1]))
        scores = paddle.concat(cls_list, 1).numpy()
        reg_raw = paddle.concat(reg_list, 1).numpy()
        targets = {
            "gt_class": paddle.to_tensor(inp["gt_class"]),
            "gt_bbox": paddle.to_tensor(inp["gt_bbox"]),
            "pad_gt_mask": paddle.to_tensor(inp["pad_gt_mask"]),
            "epoch_id": 100,
        }
        losses = head.forward_train(feats, targets)
    np.savez(
        out / "ref_outputs.npz",
        scores=scores,
        reg_raw=reg_raw,
        **{k: np.asarray(v.numpy()).reshape(-1)[:1] for k, v in losses.items()},
    )
    print(
        f"saved {out / 'ref.pdparams'} and outputs; losses: "
        + ", ".join(f"{k}={float(v.numpy().reshape(-1)[0]):.6f}" for k, v in losses.items())
    )


def run_torch(cfg_path: Path, out: Path) -> None:
    sys.path.insert(0, str(ROOT))
    import torch

    from workers.detection.config import ModelConfig
    from workers.detection.convert import convert_state_dict, read_pdparams
    from workers.detection.model import build_model

    cfg = ModelConfig.from_ppdet_yaml(cfg_path)
    model = build_model(cfg)
    state, rep = convert_state_dict(read_pdparams(out / "ref.pdparams"), model, strict=False)
    model.load_state_dict(state, strict=False)
    print(
        f"converted {rep.loaded} tensors; unexpected {rep.unexpected}; missing {rep.missing}; "
        f"mismatched {rep.mismatched}"
    )
    model.eval()
    ref = np.load(out / "ref_outputs.npz")
    inp = fixed_inputs()
    with torch.no_grad():
        x = torch.from_numpy(inp["image"])
        head_out = model.head_outputs(x)
        scores = torch.sigmoid(head_out.cls_logits).numpy()
        reg_raw = head_out.reg_dist.numpy()
        losses = model.yolo_head.loss(
            head_out,
            torch.from_numpy(inp["gt_class"]).long(),
            torch.from_numpy(inp["gt_bbox"]),
            torch.from_numpy(inp["pad_gt_mask"]),
        )

    def rel(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-12))

    print(f"class scores  max rel err {rel(scores, ref['scores']):.2e} (target 1e-4)")
    print(f"box distrib.  max rel err {rel(reg_raw, ref['reg_raw']):.2e} (target 1e-4)")
    for k in ("loss", "loss_cls", "loss_iou", "loss_dfl", "loss_l1"):
        if k in ref:
            a, b = float(losses[k]), float(ref[k][0])
            print(
                f"{k:9s} torch {a:.6f} paddle {b:.6f} rel err {abs(a - b) / (abs(b) + 1e-12):.2e}"
                " (target 1e-3)"
            )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("side", choices=["paddle", "torch"])
    p.add_argument("--config", default=str(DEFAULT_CFG))
    p.add_argument("--out", default=str(ROOT / "var" / "parity"))
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.side == "paddle":
        run_paddle(Path(args.config), out)
    else:
        run_torch(Path(args.config), out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
