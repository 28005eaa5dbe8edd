"""Training loop: SGD momentum, no decay on BN, linear warm-up + cosine, EMA, multi-scale."""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .artifact import read_artifact, save_artifact
from .checkpoint import (
    capture_rng,
    check_matches,
    dataset_fingerprint,
    read_checkpoint,
    restore_rng,
    run_identity,
    save_checkpoint,
)
from .config import ModelConfig, TrainConfig
from .data import (
    CocoDetectionDataset,
    Sample,
    collate_train,
    random_crop,
    random_distort,
    random_distort_pair,
    random_flip,
    random_turn,
    swap_defects,
    transplant_defects,
)
from .errors import Cancelled, CheckpointError, DetectionDataError
from .model import PPYOLOE, build_model

ProgressCallback = Callable[[float, str, "dict[str, Any] | None"], None]


@dataclass
class TrainResult:
    """What a finished training run produced."""

    artifact: Path
    epochs: int
    iterations: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from_epoch: int = 0  # epochs taken from the checkpoint (0: trained from the start)


class ModelEMA:
    """Exponential moving average of all float weights and buffers (Paddle's ModelEMA with
    ``ema_decay_type='threshold'``: the decay ramps up as (1 + n) / (10 + n))."""

    def __init__(self, model: nn.Module, decay: float = 0.9998) -> None:
        self.decay = decay
        self.step = 0
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = min(self.decay, (1 + self.step) / (10 + self.step))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.state[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
            else:
                self.state[k].copy_(v)
        self.step += 1


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """BatchNorm weights and biases without decay (PaddleDetection's L2Decay(0.) on BN);
    every other trainable parameter gets ``weight_decay``."""
    bn_params = set()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            bn_params.update(id(p) for p in m.parameters(recurse=False))
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (no_decay if id(p) in bn_params else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def lr_at(step: int, base_lr: float, warmup_steps: int, max_steps: int) -> float:
    """Linear warm-up from 0, then cosine on the global step (PaddleDetection's
    LinearWarmup(start_factor=0) + CosineDecay(max_epochs))."""
    if step < warmup_steps:
        return base_lr * step / max(1, warmup_steps)
    return base_lr * 0.5 * (math.cos(min(step, max_steps) * math.pi / max_steps) + 1)


def _augment(
    sample: Sample,
    cfg: TrainConfig,
    rng: random.Random,
    siamese: bool = False,
    counts: dict[str, int] | None = None,
) -> Sample:
    if cfg.reference_transplant:
        before = len(sample.boxes)
        sample = transplant_defects(sample, rng, cfg.reference_transplant)
        if counts is not None:
            counts["transplanted"] = counts.get("transplanted", 0) + len(sample.boxes) - before
    if cfg.reference_swap:
        sample = swap_defects(sample, rng, cfg.reference_swap, keep_reference=siamese)
    if not siamese and sample.reference is not None:  # read for the two above only
        sample = Sample(
            sample.image, sample.boxes, sample.labels, sample.image_id, sample.file_name
        )
    if cfg.crop_size:
        sample = random_crop(sample, cfg.crop_size, rng)
    if cfg.distort and sample.reference is not None:
        image, reference = random_distort_pair(sample.image, sample.reference, rng)
        sample = Sample(
            image, sample.boxes, sample.labels, sample.image_id, sample.file_name, reference
        )
    elif cfg.distort:
        sample = Sample(
            random_distort(sample.image, rng),
            sample.boxes,
            sample.labels,
            sample.image_id,
            sample.file_name,
        )
    if cfg.rotate:
        sample = random_turn(sample, rng)
    return random_flip(sample, rng, cfg.flip_prob)


def _load_initial_weights(model: PPYOLOE, path: str) -> None:
    """Start from an artifact or a converted state dict (``.pt`` from ``convert``); head
    classifier weights are skipped when the class count differs."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"pretrained weights {p} not found; make them with "
            "`python -m workers.detection convert <model.pdparams> <out.pt>` or train a model first"
        )
    try:
        state = read_artifact(p)["state_dict"]
    except ValueError:
        state = torch.load(p, map_location="cpu", weights_only=True)
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(usable, strict=False)


def _validate(
    model: PPYOLOE,
    ema: ModelEMA | None,
    dataset: CocoDetectionDataset,
    val_json: str | Path,
    val_image_root: str | Path | None,
    val_filter: Callable[[dict[str, Any]], bool] | None,
    slice_size: int,
    device: torch.device,
    val_reference_root: str | Path | None = None,
) -> dict[str, float]:
    """Evaluate a deploy copy holding the EMA weights; the training model is untouched."""
    from .evaluation import evaluate
    from .inference import Detector

    copy_model = copy.deepcopy(model)
    if ema is not None:
        copy_model.load_state_dict(ema.state)
    copy_model.eval().convert_to_deploy()
    # the network at the model's own input size, as the deployed artifact runs it (a whole
    # 640 px image through a 416 px model is resized to 416, not run at 640)
    detector = Detector(copy_model, dataset.categories, device)
    res = evaluate(
        detector,
        val_json,
        image_root=val_image_root,
        image_filter=val_filter,
        slice_size=slice_size,
        reference_root=val_reference_root,
    )
    return {
        "map": res.map,
        "map50": res.map50,
        "ap_small": res.ap_small,
        "per_class_ap50": dict(res.per_class_ap50),
        "per_class_ap": dict(res.per_class_ap),
        "per_class_ap_small": dict(res.per_class_ap_small),
        "per_class_pr": dict(res.per_class_pr),
    }


def epoch_negatives(positives: int, negatives: int, share: float | None) -> int:
    """How many of the ``negatives`` (images without a box) an epoch trains on, so that they
    are at most ``share`` of its images (None or 1: all of them; every one when there is no
    positive to weigh them against)."""
    if share is None or share >= 1 or positives == 0:
        return negatives
    return min(negatives, math.floor(share / (1 - share) * positives + 1e-9))


def train(
    train_json: str | Path,
    output: str | Path,
    *,
    image_root: str | Path | None = None,
    model_config: ModelConfig | None = None,
    train_config: TrainConfig | None = None,
    image_filter: Callable[[dict[str, Any]], bool] | None = None,
    progress: ProgressCallback | None = None,
    val_json: str | Path | None = None,
    val_image_root: str | Path | None = None,
    val_filter: Callable[[dict[str, Any]], bool] | None = None,
    eval_every: int = 1,
    eval_slice_size: int = 640,
    checkpoint: str | Path | None = None,
    reference_root: str | Path | None = None,
    val_reference_root: str | Path | None = None,
) -> TrainResult:
    """Train PP-YOLOE+-SOD on a COCO JSON file and write one artifact to ``output``.

    ``progress(fraction, message, metrics)`` is called every ``log_every`` iterations (metrics
    None) and at the end of each epoch (metrics: epoch, mean losses, lr, seconds). It may raise
    :class:`Cancelled`; the exception propagates and no artifact is written.

    With ``val_json`` the EMA weights are evaluated (pycocotools; each image cut into slices of
    ``eval_slice_size``, every slice resized to the model's ``eval_size`` as the deployed
    artifact does) every ``eval_every`` epochs and after the last one; ``map``, ``map50``,
    ``ap_small``, ``per_class_ap50``, ``per_class_ap`` and ``per_class_ap_small`` (category name
    -> AP50, AP, AP on small objects) and
    ``per_class_pr`` (category name -> [[recall, precision], ...] at IoU 0.5) join that epoch's
    metrics.

    With ``checkpoint`` a checkpoint is written there (atomically) after every epoch, before
    that epoch's progress call, so a run cancelled from the callback or lost with its worker
    keeps the epoch. If the file exists when training starts, the run continues from the epoch
    after it, with the same weights, optimizer, schedule, history and RNG states, so the result
    equals an uninterrupted run; a checkpoint of another run (model or train config, categories
    or training images differ) raises :class:`CheckpointError`. The checkpoint is left in place
    when training ends (a rerun then only writes the artifact again): delete it once the
    artifact is stored.

    A Siamese ``model_config`` (``reference="siamese"``) trains on image pairs: every training
    image needs a reference, named by its COCO entry's ``reference_file_name`` (or DeepPCB's
    ``template_file_name``) and read from ``reference_root`` (default: ``image_root``); one
    without is a :class:`DetectionDataError` before training starts. Flip, crop and resize move
    image and reference alike; colour distortion draws the same values for both, then shifts
    the reference's brightness and contrast by up to 5 %. Validation reads the val images'
    references from ``val_reference_root`` (default: ``val_image_root``).

    A single-image detector trained with ``reference_swap`` or ``reference_transplant`` reads
    the references of the training images that name one (from ``reference_root``) for those
    two only, and trains the others as they are; an epoch's metrics then count the defects it
    copied (``transplanted``).
    """
    tcfg = train_config or TrainConfig()
    siamese = model_config is not None and model_config.siamese
    dataset = CocoDetectionDataset(
        train_json,
        image_root,
        image_filter=image_filter,
        references=siamese
        or ("optional" if tcfg.reference_swap or tcfg.reference_transplant else False),
        reference_root=reference_root,
    )
    if len(dataset) == 0:
        raise DetectionDataError(f"no training images in {train_json}")
    mcfg = model_config or ModelConfig.sod_s(num_classes=len(dataset.categories))
    if mcfg.num_classes != len(dataset.categories):
        raise DetectionDataError(
            f"model has {mcfg.num_classes} classes, dataset has {len(dataset.categories)}"
        )
    report = progress or (lambda f, m, d: None)

    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    identity: dict[str, Any] = {}
    resume: dict[str, Any] | None = None
    if ckpt_path is not None:
        identity = run_identity(mcfg, tcfg, dataset.categories, dataset_fingerprint(dataset))
        if ckpt_path.exists():
            resume = read_checkpoint(ckpt_path)
            check_matches(resume, identity, ckpt_path)

    random.seed(tcfg.seed)
    np.random.seed(tcfg.seed)
    torch.manual_seed(tcfg.seed)
    rng = random.Random(tcfg.seed)
    if tcfg.num_threads:
        torch.set_num_threads(tcfg.num_threads)  # process-wide: workers run one job at a time
    device = torch.device(tcfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    model = build_model(mcfg, pretrained_backbone=resume is None)
    if tcfg.pretrained and resume is None:
        _load_initial_weights(model, tcfg.pretrained)
    model.to(device).train()
    lr = tcfg.base_lr * tcfg.batch_size / tcfg.base_batch_size
    optimizer = torch.optim.SGD(
        param_groups(model, tcfg.weight_decay), lr=lr, momentum=tcfg.momentum
    )
    ema = ModelEMA(model, tcfg.ema_decay) if tcfg.use_ema else None

    positives, negatives = [], []
    for i in range(len(dataset)):
        (positives if len(dataset.targets(i)[0]) else negatives).append(i)
    negatives_per_epoch = epoch_negatives(len(positives), len(negatives), tcfg.negative_share)
    n_batches = math.ceil((len(positives) + negatives_per_epoch) / tcfg.batch_size)
    iters_per_epoch = min(n_batches, tcfg.max_iters_per_epoch or n_batches)
    total_iters = iters_per_epoch * tcfg.epochs
    warmup_steps = int(round(tcfg.warmup_epochs * iters_per_epoch))
    max_steps = max(1, int(round(tcfg.epochs * tcfg.cosine_epochs_factor * iters_per_epoch)))
    schedule = {
        "kind": "linear_warmup_cosine",
        "base_lr": lr,
        "warmup_steps": warmup_steps,
        "max_steps": max_steps,
    }

    history: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    cur_lr = 0.0
    start = time.time()
    step = 0
    first_epoch = 0
    if resume is not None:
        saved_schedule = {k: v for k, v in resume["lr_schedule"].items() if k != "step"}
        if saved_schedule != schedule:  # configs and images matched, so this is a code change
            raise CheckpointError(
                f"training checkpoint {ckpt_path} was written with LR schedule {saved_schedule}, "
                f"this run computes {schedule}; delete it to train from the start"
            )
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        if ema is not None:
            ema.state = {k: v.to(device) for k, v in resume["ema"]["state"].items()}
            ema.step = int(resume["ema"]["step"])
        step = int(resume["iteration"])
        first_epoch = int(resume["epoch"])
        history = list(resume["history"])
        skipped = dict(resume["skipped_images"])
        start -= float(resume["seconds"])
        # Last, after everything above that draws random numbers (weight init).
        restore_rng(resume["rng"], rng)
        report(
            step / total_iters,
            f"resuming from {ckpt_path} after epoch {first_epoch}/{tcfg.epochs}",
            None,
        )
    else:
        report(
            0.0,
            f"training {len(dataset)} images, {total_iters} iterations"
            + (
                f" ({negatives_per_epoch} of the {len(negatives)} images without a box per epoch)"
                if negatives_per_epoch < len(negatives)
                else ""
            ),
            None,
        )
    for epoch in range(first_epoch, tcfg.epochs):
        epoch_start = time.time()
        if negatives_per_epoch == len(negatives):
            order = list(range(len(dataset)))  # every image, as before the cap existed
        else:
            order = positives + rng.sample(negatives, negatives_per_epoch)
        rng.shuffle(order)
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for it in range(iters_per_epoch):
            idx = order[it * tcfg.batch_size : (it + 1) * tcfg.batch_size]
            if not idx:
                break
            samples = []
            for i in idx:
                # One unreadable image must not sink a long job: skip it, say which, go on.
                try:
                    samples.append(_augment(dataset[i], tcfg, rng, siamese=siamese, counts=counts))
                except DetectionDataError as exc:
                    if dataset.images[i]["file_name"] not in skipped:
                        skipped[dataset.images[i]["file_name"]] = str(exc)
                        report(step / total_iters, f"skipping image: {exc}", None)
            if not samples:
                continue
            batch = collate_train(samples, rng.choice(tcfg.train_sizes), rng)
            cur_lr = lr_at(step, lr, warmup_steps, max_steps)
            for g in optimizer.param_groups:
                g["lr"] = cur_lr
            losses = model.loss(
                batch.images.to(device),
                batch.gt_labels.to(device),
                batch.gt_bboxes.to(device),
                batch.pad_gt_mask.to(device),
                references=None if batch.references is None else batch.references.to(device),
            )
            if not torch.isfinite(losses["loss"]):
                raise FloatingPointError(f"loss is not finite at epoch {epoch + 1} step {it + 1}")
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            optimizer.step()
            if ema is not None:
                ema.update(model)
            step += 1
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            if step % tcfg.log_every == 0:
                report(
                    step / total_iters,
                    f"epoch {epoch + 1}/{tcfg.epochs} iter {it + 1}/{iters_per_epoch} "
                    f"loss {float(losses['loss'].detach()):.4f}",
                    None,
                )
        metrics = {k: v / max(1, iters_per_epoch) for k, v in sums.items()}
        metrics.update(
            {
                "epoch": epoch + 1,
                "lr": cur_lr,
                "seconds": time.time() - epoch_start,
                "images": min(len(order), iters_per_epoch * tcfg.batch_size),
                **counts,  # "transplanted": defects copied this epoch (reference_transplant)
            }
        )
        last = epoch + 1 == tcfg.epochs
        if val_json is not None and ((epoch + 1) % max(1, eval_every) == 0 or last):
            metrics.update(
                _validate(
                    model,
                    ema,
                    dataset,
                    val_json,
                    val_image_root,
                    val_filter,
                    eval_slice_size,
                    device,
                    val_reference_root,
                )
            )
            model.train()
        history.append(metrics)
        if ckpt_path is not None:
            save_checkpoint(
                ckpt_path,
                {
                    "run": identity,
                    "epoch": epoch + 1,
                    "iteration": step,
                    "model": model.state_dict(),
                    "ema": {"state": ema.state, "step": ema.step} if ema is not None else None,
                    "optimizer": optimizer.state_dict(),
                    "lr_schedule": {**schedule, "step": step},
                    "history": history,
                    "skipped_images": skipped,
                    "seconds": time.time() - start,
                    "rng": capture_rng(rng),
                },
            )
        report(
            step / total_iters,
            f"epoch {epoch + 1}/{tcfg.epochs} done, loss {metrics.get('loss', float('nan')):.4f}",
            metrics,
        )

    if step == 0:
        raise DetectionDataError(f"no readable training images in {train_json}")
    final_state = ema.state if ema is not None else model.state_dict()
    export = copy.deepcopy(model).cpu()
    seconds = time.time() - start
    path = save_artifact(
        output,
        export,
        dataset.categories,
        metadata={
            "train_config": tcfg.to_dict(),
            "history": history,
            "seconds": seconds,
            "train_json": str(train_json),
            "num_images": len(dataset),
            "skipped_images": skipped,
        },
        state_dict=final_state,
    )
    report(1.0, f"saved {path}", None)
    return TrainResult(path, tcfg.epochs, step, seconds, history, first_epoch)


__all__ = ["Cancelled", "ModelEMA", "TrainResult", "lr_at", "param_groups", "train"]
