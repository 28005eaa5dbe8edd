"""Training smoke test: the tiny model overfits a synthetic set; progress and cancellation."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.detection import Cancelled
from workers.detection.artifact import read_artifact
from workers.detection.config import TrainConfig
from workers.detection.evaluation import evaluate
from workers.detection.inference import Detector
from workers.detection.trainer import lr_at, param_groups, train

from .conftest import tiny_model_config

pytestmark = pytest.mark.ml


def test_overfits_tiny_set_loss_falls_and_boxes_found(trained: dict) -> None:
    history = trained["result"].history
    first = sum(h["loss"] for h in history[:5]) / 5
    last = sum(h["loss"] for h in history[-5:]) / 5
    assert last < 0.4 * first, (first, last)

    det = Detector.load(trained["path"], device="cpu")
    res = evaluate(det, trained["coco"])
    assert res.map50 > 0.8, res
    assert res.map > 0.5, res


def test_progress_reports_fractions_and_epoch_metrics(trained: dict) -> None:
    calls = trained["calls"]
    fractions = [c[0] for c in calls]
    assert fractions == sorted(fractions)
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    epoch_metrics = [c[2] for c in calls if c[2] is not None]
    assert len(epoch_metrics) == 120
    assert {"loss", "loss_cls", "loss_iou", "loss_dfl", "lr", "epoch"} <= set(epoch_metrics[0])
    # validation mAP every 60 epochs, computed on the EMA weights; it improves
    with_map = [m for m in epoch_metrics if "map50" in m]
    assert [m["epoch"] for m in with_map] == [60, 120]
    assert with_map[1]["map50"] > 0.8 and with_map[1]["map50"] >= with_map[0]["map50"]


def test_artifact_holds_weights_config_and_categories(trained: dict) -> None:
    payload = read_artifact(trained["path"])
    assert [c["name"] for c in payload["categories"]] == ["red", "blue"]
    assert payload["model_config"]["num_classes"] == 2
    assert payload["model_config"]["reg_range"] == [-2, 8]
    assert "backbone.stem.conv1.conv.weight" in payload["state_dict"]


def test_cancel_from_callback_stops_without_artifact(synthetic_coco: Path, tmp_path: Path) -> None:
    seen = []

    def progress(fraction: float, message: str, metrics: dict | None) -> None:
        seen.append(fraction)
        if metrics is not None:  # cancel at the end of the first epoch
            raise Cancelled("user asked")

    out = tmp_path / "m.pt"
    with pytest.raises(Cancelled):
        train(
            synthetic_coco,
            out,
            model_config=tiny_model_config(),
            train_config=TrainConfig(epochs=5, batch_size=8, train_sizes=(128,)),
            progress=progress,
        )
    assert not out.exists()
    assert len(seen) == 2


def test_lr_schedule_warmup_then_cosine() -> None:
    assert lr_at(0, 0.01, 10, 100) == 0.0
    assert lr_at(5, 0.01, 10, 100) == pytest.approx(0.005)
    assert lr_at(10, 0.01, 10, 100) == pytest.approx(0.01 * 0.5 * (1 + 0.9510565162951535))
    assert lr_at(50, 0.01, 10, 100) == pytest.approx(0.005)
    assert lr_at(100, 0.01, 10, 100) == pytest.approx(0.0)


def test_no_weight_decay_on_batchnorm() -> None:
    from torch import nn

    from workers.detection.model import build_model

    model = build_model(tiny_model_config())
    decay, no_decay = param_groups(model, 5e-4)
    bn = {id(p) for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
    assert {id(p) for p in no_decay["params"]} == bn
    assert not bn & {id(p) for p in decay["params"]}
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    # the fixed DFL projection is not trained
    assert id(model.yolo_head.proj_conv.weight) not in {id(p) for p in decay["params"]}


def test_package_exports_functions_not_modules_and_no_django() -> None:
    import subprocess
    import sys

    code = (
        "import sys, workers.detection as d, workers.detection.trainer, workers.detection.evaluation;"
        "assert callable(d.train) and callable(d.evaluate) and callable(d.export_onnx);"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('django', 'celery')];"
        "assert not bad, bad"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_importing_the_package_loads_no_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, workers.detection as d;"
        "assert d.CheckpointError and d.RuntimeUnavailable and d.Cancelled;"
        "assert 'torch' not in sys.modules"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_unreadable_image_is_skipped_and_recorded(synthetic_coco: Path, tmp_path: Path) -> None:
    import json

    data = json.loads(synthetic_coco.read_text())
    data["images"][0]["file_name"] = "img/does-not-exist.png"
    broken = synthetic_coco.parent / "broken.json"
    broken.write_text(json.dumps(data))
    messages = []
    result = train(
        broken,
        tmp_path / "m.pt",
        model_config=tiny_model_config(),
        train_config=TrainConfig(epochs=1, batch_size=8, train_sizes=(128,)),
        progress=lambda f, m, d: messages.append(m),
    )
    skipped = read_artifact(result.artifact)["metadata"]["skipped_images"]
    assert list(skipped) == ["img/does-not-exist.png"]
    assert any("does-not-exist.png" in m for m in messages)


def test_validation_judges_the_model_as_its_artifact_predicts(
    synthetic_coco: Path, tmp_path: Path
) -> None:
    """A 96 px model judged on whole 128 px images runs each at 96 px, as its saved artifact
    runs them: the last epoch's val mAP is the artifact's own on the same images. (Validation
    once ran the network at the slice size: a 416 px DeepPCB model judged on whole 640 px
    images scored 0.154 val mAP50 during training and 0.489 once deployed.)"""
    out = tmp_path / "m.pt"
    result = train(
        synthetic_coco,
        out,
        model_config=tiny_model_config(eval_size=96),
        train_config=TrainConfig(
            epochs=60, batch_size=4, base_lr=0.02, train_sizes=(96,), distort=False
        ),
        val_json=synthetic_coco,
        eval_every=60,
        eval_slice_size=128,
    )
    during = result.history[-1]
    deployed = evaluate(Detector.load(out, device="cpu"), synthetic_coco, slice_size=128)
    assert deployed.map50 > 0.3, deployed  # something to compare
    assert during["map50"] == pytest.approx(deployed.map50, abs=1e-6)
    assert during["map"] == pytest.approx(deployed.map, abs=1e-6)
    # per category: AP50, AP and the precision/recall curve at IoU 0.5 (COCO's 101 points)
    assert during["per_class_ap"] == pytest.approx(deployed.per_class_ap, abs=1e-6)
    assert during["per_class_pr"] == deployed.per_class_pr
    for name, curve in deployed.per_class_pr.items():
        assert curve[0][0] == 0.0 and all(0 <= p <= 1 for _r, p in curve)
        if len(curve) == 101:  # reached full recall: AP50 is the mean precision of the points
            mean = sum(p for _r, p in curve) / 101
            assert deployed.per_class_ap50[name] == pytest.approx(mean, abs=1e-3)
        assert deployed.per_class_ap[name] <= deployed.per_class_ap50[name] + 1e-9


def test_images_without_a_box_are_capped_per_epoch(synthetic_coco: Path, tmp_path: Path) -> None:
    """The synthetic set's images plus as many copies without their boxes (a project's normal
    images and references): with ``negative_share`` 0.2 an epoch takes every labelled image and
    a quarter as many without a box, drawn afresh (the history records how many); without it,
    all of them."""
    import json

    from workers.detection.trainer import epoch_negatives

    data = json.loads(synthetic_coco.read_text())
    positives = len(data["images"])
    copies = [{**im, "id": 1000 + i} for i, im in enumerate(data["images"])]
    data["images"] += copies
    mixed = synthetic_coco.parent / "with-negatives.json"
    mixed.write_text(json.dumps(data))
    seen: list[str] = []
    epochs = []
    for share in (0.2, None):
        result = train(
            mixed,
            tmp_path / f"m-{share}.pt",
            model_config=tiny_model_config(),
            train_config=TrainConfig(
                epochs=2, batch_size=4, train_sizes=(128,), negative_share=share
            ),
            progress=lambda f, m, d: seen.append(m),
        )
        epochs.append([h["images"] for h in result.history])
    capped = positives + positives // 4
    assert epoch_negatives(positives, positives, 0.2) == positives // 4
    assert epochs == [[capped, capped], [2 * positives, 2 * positives]]
    assert any(
        f"{positives // 4} of the {positives} images without a box per epoch" in m for m in seen
    )
    with pytest.raises(ValueError, match="negative_share"):
        TrainConfig(negative_share=1.5)


@pytest.mark.parametrize("option", ["reference_swap", "reference_transplant"])
def test_defects_swapped_for_the_reference_train_a_single_image_detector(
    synthetic_coco: Path, tmp_path: Path, option: str
) -> None:
    """``reference_swap`` and ``reference_transplant``: half the images name a defect-free
    reference (a blank board), the others none. A single-image detector trains on them,
    reading the references only to swap defects out or copy them elsewhere (an image without
    one trains as it is), and validates on images alone."""
    import json

    import numpy as np
    from PIL import Image

    data = json.loads(synthetic_coco.read_text())
    blank = synthetic_coco.parent / "img" / "blank.png"
    Image.fromarray(np.full((128, 128, 3), 90, np.uint8)).save(blank)
    for im in data["images"][::2]:
        im["reference_file_name"] = "img/blank.png"
    with_refs = synthetic_coco.parent / "with-references.json"
    with_refs.write_text(json.dumps(data))
    result = train(
        with_refs,
        tmp_path / "m.pt",
        model_config=tiny_model_config(),
        train_config=TrainConfig(epochs=2, batch_size=4, train_sizes=(128,), **{option: 1.0}),
        val_json=synthetic_coco,
        eval_slice_size=128,
    )
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert "map50" in result.history[-1]
    if option == "reference_transplant":  # the blank board matches anywhere: copies are made
        assert all(h["transplanted"] > 0 for h in result.history)
    else:
        assert all("transplanted" not in h for h in result.history)
    with pytest.raises(ValueError, match=option):
        TrainConfig(**{option: 1.5})
