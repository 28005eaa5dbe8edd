"""Checkpoint every epoch, resume after an interruption, refuse another run's checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from workers.detection import Cancelled, CheckpointError
from workers.detection.artifact import read_artifact
from workers.detection.checkpoint import read_checkpoint
from workers.detection.config import TrainConfig
from workers.detection.trainer import train

from .conftest import tiny_model_config

pytestmark = pytest.mark.ml


def small_config(**overrides: Any) -> TrainConfig:
    # Two sizes, distortion, flips and the encoder's dropout: every RNG the loop draws from
    # (the trainer's random.Random, torch's generator) matters for the result.
    kw: dict[str, Any] = {
        "epochs": 3,
        "batch_size": 4,
        "max_iters_per_epoch": 2,
        "train_sizes": (96, 128),
        "warmup_epochs": 1,
        "log_every": 1000,
    }
    kw.update(overrides)
    return TrainConfig(**kw)


def run(coco: Path, out: Path, checkpoint: Path | None, progress=None, **cfg: Any):
    return train(
        coco,
        out,
        model_config=tiny_model_config(),
        train_config=small_config(**cfg),
        progress=progress,
        val_json=coco,
        eval_every=2,  # evaluated at epochs 2 and 3: the history holds mAP across the resume
        eval_slice_size=128,
        checkpoint=checkpoint,
    )


def without_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def cancel_after_epoch_1(fraction: float, message: str, metrics: dict | None) -> None:
    if metrics is not None and metrics["epoch"] == 1:
        raise Cancelled("worker lost")


@pytest.fixture(scope="module")
def runs(synthetic_coco: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("ckpt")
    whole = run(synthetic_coco, tmp / "whole.pt", tmp / "whole.ckpt")

    ckpt = tmp / "resumed.ckpt"
    with pytest.raises(Cancelled):
        run(synthetic_coco, tmp / "resumed.pt", ckpt, progress=cancel_after_epoch_1)
    after_cancel = read_checkpoint(ckpt)
    calls: list[tuple[float, str, dict | None]] = []
    resumed = run(
        synthetic_coco, tmp / "resumed.pt", ckpt, progress=lambda f, m, d: calls.append((f, m, d))
    )
    return {
        "tmp": tmp,
        "whole": whole,
        "resumed": resumed,
        "after_cancel": after_cancel,
        "calls": calls,
        "ckpt": ckpt,
    }


def test_resumed_run_equals_uninterrupted_run_bit_for_bit(runs: dict) -> None:
    whole, resumed = runs["whole"], runs["resumed"]
    assert resumed.resumed_from_epoch == 1 and whole.resumed_from_epoch == 0
    assert resumed.iterations == whole.iterations == 6
    # Every RNG is restored and CPU kernels are deterministic with a fixed thread count, so
    # the results are identical, not merely close (only wall-clock seconds differ).
    assert without_seconds(resumed.history) == without_seconds(whole.history)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    a = read_artifact(whole.artifact)["state_dict"]
    b = read_artifact(resumed.artifact)["state_dict"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    # the training weights and the optimizer's momentum too, not only the EMA
    ca, cb = read_checkpoint(runs["tmp"] / "whole.ckpt"), read_checkpoint(runs["ckpt"])
    assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"])
    mom_a = [s["momentum_buffer"] for s in ca["optimizer"]["state"].values()]
    mom_b = [s["momentum_buffer"] for s in cb["optimizer"]["state"].values()]
    assert len(mom_a) == len(mom_b) > 0
    assert all(torch.equal(x, y) for x, y in zip(mom_a, mom_b, strict=True))


def test_checkpoint_holds_the_run_and_is_written_before_the_epoch_report(runs: dict) -> None:
    ck = runs["after_cancel"]  # cancelled from the epoch-1 report: the epoch is kept
    assert ck["epoch"] == 1 and ck["iteration"] == 2
    assert [h["epoch"] for h in ck["history"]] == [1]
    assert set(ck) >= {"model", "ema", "optimizer", "lr_schedule", "rng", "run", "seconds"}
    assert ck["ema"]["step"] == 2 and ck["lr_schedule"]["step"] == 2
    assert set(ck["rng"]) >= {"trainer", "python", "numpy", "torch"}
    assert ck["run"]["categories"] == [{"id": 1, "name": "red"}, {"id": 2, "name": "blue"}]
    assert ck["run"]["model_config"] == tiny_model_config().to_dict()
    assert ck["run"]["train_config"]["epochs"] == 3
    # left in place at the end, holding the finished run
    assert read_checkpoint(runs["ckpt"])["epoch"] == 3
    assert not list(runs["tmp"].glob("*.tmp")) and not list(runs["tmp"].glob(".*.tmp"))


def test_resumed_run_reports_only_the_remaining_epochs(runs: dict) -> None:
    calls = runs["calls"]
    assert "resuming" in calls[0][1] and calls[0][0] == pytest.approx(2 / 6)
    epochs = [m for _, _, m in calls if m is not None]
    assert [m["epoch"] for m in epochs] == [2, 3]
    assert [c[0] for c in calls] == sorted(c[0] for c in calls) and calls[-1][0] == 1.0
    for m in epochs:  # evaluated epochs carry the COCO figures and AP50 per category
        assert {"map", "map50", "ap_small", "per_class_ap50"} <= set(m)
        assert set(m["per_class_ap50"]) == {"red", "blue"}


def test_finished_checkpoint_only_rewrites_the_artifact(runs: dict, synthetic_coco: Path) -> None:
    out = runs["tmp"] / "again.pt"
    calls: list[dict | None] = []
    again = run(synthetic_coco, out, runs["ckpt"], progress=lambda f, m, d: calls.append(d))
    assert again.resumed_from_epoch == 3 and not [d for d in calls if d is not None]
    a = read_artifact(runs["resumed"].artifact)["state_dict"]
    b = read_artifact(out)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"epochs": 4}, "train config epochs: checkpoint 3, now 4"),
        ({"base_lr": 0.02}, "train config base_lr"),
        ({"model": {"num_layers": 2}}, "model config num_layers"),
        ({"categories": True}, "categories"),
        ({"images": True}, "training images"),
    ],
)
def test_checkpoint_of_another_run_is_refused(
    runs: dict, synthetic_coco: Path, tmp_path: Path, change: dict, reason: str
) -> None:
    coco = synthetic_coco
    if "categories" in change or "images" in change:
        data = json.loads(synthetic_coco.read_text())
        if "categories" in change:
            data["categories"][1]["name"] = "green"
        else:
            data["images"] = data["images"][:-1]
        coco = synthetic_coco.parent / f"changed-{tmp_path.name}.json"
        coco.write_text(json.dumps(data))
    cfg = {k: v for k, v in change.items() if k not in ("model", "categories", "images")}
    before = runs["ckpt"].read_bytes()
    with pytest.raises(CheckpointError, match="different run") as info:
        train(
            coco,
            tmp_path / "m.pt",
            model_config=tiny_model_config(**change.get("model", {})),
            train_config=small_config(**cfg),
            checkpoint=runs["ckpt"],
        )
    assert reason in str(info.value)
    assert runs["ckpt"].read_bytes() == before and not (tmp_path / "m.pt").exists()


def test_a_checkpoint_from_before_an_option_existed_resumes_at_its_default(
    runs: dict, synthetic_coco: Path, tmp_path: Path
) -> None:
    """A worker upgraded mid-training: its checkpoint does not name ``reference_swap``
    (the code gained it since). Left at its default the run goes on; set, it is another run."""
    payload = torch.load(runs["ckpt"], weights_only=False)
    del payload["run"]["train_config"]["reference_swap"]
    older = tmp_path / "older.ckpt"
    torch.save(payload, older)
    res = run(synthetic_coco, tmp_path / "m.pt", older)
    assert res.resumed_from_epoch == 3
    with pytest.raises(CheckpointError, match="train config reference_swap"):
        run(synthetic_coco, tmp_path / "n.pt", older, reference_swap=0.5)


def test_runtime_settings_may_change_on_resume(runs: dict, synthetic_coco: Path) -> None:
    out = runs["tmp"] / "threads.pt"
    res = run(synthetic_coco, out, runs["ckpt"], num_threads=1, log_every=7, device="cpu")
    assert res.resumed_from_epoch == 3


def test_unreadable_checkpoint_is_refused_not_ignored(synthetic_coco: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read training checkpoint"):
        run(synthetic_coco, tmp_path / "m.pt", bad)
    torch.save({"format": "something else"}, bad)
    with pytest.raises(CheckpointError, match="not a Loupe detection training checkpoint"):
        run(synthetic_coco, tmp_path / "m.pt", bad)
