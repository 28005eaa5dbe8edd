"""The command line, run as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

pytestmark = pytest.mark.ml


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers.detection", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_predict_prints_json_lines(trained: dict) -> None:
    image = str(Path(trained["coco"]).parent / "img" / "1.png")
    proc = run_cli("predict", str(trained["path"]), image, "--score", "0.3")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["image"] == image
    assert len(out["detections"]) >= 2
    assert {d["category"] for d in out["detections"]} <= {"red", "blue"}


def test_predict_through_onnx_runtime_prints_the_same_detections(
    trained: dict, tmp_path: Path
) -> None:
    import shutil

    from workers.detection.inference import Detector

    model = shutil.copy(trained["path"], tmp_path / "model.pt")
    image = str(Path(trained["coco"]).parent / "img" / "1.png")
    proc = run_cli("predict", model, image, "--score", "0.3", "--runtime", "onnx")
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout.strip().splitlines()[-1])["detections"]
    assert (tmp_path / "model.128.onnx").is_file()  # exported next to the model on first use
    expected = Detector.load(model, device="cpu").predict_sliced(image, score_threshold=0.3)
    assert len(printed) == len(expected) >= 2
    for a, b in zip(printed, expected, strict=True):  # printed to 0.1 px and 1e-4
        assert a["category"] == b.category_name and abs(a["score"] - b.score) <= 0.6e-4
        box = (b.x1, b.y1, b.x2, b.y2)
        assert all(abs(u - v) <= 0.06 for u, v in zip(a["bbox_xyxy"], box, strict=True))


def test_missing_model_is_a_readable_error(tmp_path: Path) -> None:
    proc = run_cli("predict", str(tmp_path / "missing.pt"), str(tmp_path / "x.png"))
    assert proc.returncode == 2
    assert "missing.pt not found" in proc.stderr and "workers.detection train" in proc.stderr
    assert "Traceback" not in proc.stderr


def write_ppdet_files(tmp_path: Path, weights_classes: int, yaml_classes: int) -> tuple[str, str]:
    """A self-contained ppdet yml saying ``yaml_classes`` and Paddle-style weights of a tiny
    model with ``weights_classes``."""
    import pickle

    import yaml

    from workers.detection.model import build_model

    from .conftest import tiny_model_config
    from .test_convert import paddle_style_state

    cfg = tiny_model_config(num_classes=weights_classes)
    yml = {
        "num_classes": yaml_classes,
        "width_mult": cfg.width_mult,
        "depth_mult": cfg.depth_mult,
        "CSPResNet": {"use_large_stem": True, "use_alpha": True},
        "CustomCSPPAN": {"spp": True, "use_trans": True, "num_layers": 1, "dim_feedforward": 64},
        "PPYOLOEHead": {"reg_range": [-2, 8], "assigner": {"name": "TaskAlignedAssigner_CR"}},
    }
    (tmp_path / "cfg.yml").write_text(yaml.safe_dump(yml))
    (tmp_path / "w.pdparams").write_bytes(pickle.dumps(paddle_style_state(build_model(cfg))))
    return str(tmp_path / "w.pdparams"), str(tmp_path / "cfg.yml")


def test_convert_from_a_ppdet_yaml(tmp_path: Path) -> None:
    from workers.detection.artifact import read_artifact

    weights, yml = write_ppdet_files(tmp_path, weights_classes=3, yaml_classes=80)
    proc = run_cli(
        "convert",
        weights,
        str(tmp_path / "out.pt"),
        "--config",
        yml,
        "--categories",  # overrides the yml's 80
        "open,short,spur",
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["missing"] == [] and report["unexpected"] == [] and report["loaded"] > 100
    payload = read_artifact(tmp_path / "out.pt")
    assert [c["name"] for c in payload["categories"]] == ["open", "short", "spur"]


def test_convert_takes_the_class_count_from_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from workers.detection.artifact import read_artifact

    weights, yml = write_ppdet_files(tmp_path, weights_classes=2, yaml_classes=2)
    proc = run_cli("convert", weights, str(tmp_path / "out.pt"), "--config", yml)
    assert proc.returncode == 0, proc.stderr  # was: 80 classes assumed, strict mismatch
    payload = read_artifact(tmp_path / "out.pt")
    assert payload["model_config"]["num_classes"] == 2
    assert [c["name"] for c in payload["categories"]] == ["class_0", "class_1"]
    # an explicit --num-classes still wins, and a wrong one is still refused by name
    # (in-process: the same code path without a second interpreter start)
    from workers.detection.__main__ import main

    args = ["convert", weights, str(tmp_path / "x.pt"), "--config", yml, "--num-classes", "3"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "mismatched" in err and "pred_cls" in err
