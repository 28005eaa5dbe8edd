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


def test_missing_model_is_a_readable_error(tmp_path: Path) -> None:
    proc = run_cli("predict", str(tmp_path / "missing.pt"), str(tmp_path / "x.png"))
    assert proc.returncode == 2
    assert "missing.pt not found" in proc.stderr and "workers.detection train" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_convert_from_a_ppdet_yaml(tmp_path: Path) -> None:
    import pickle

    import yaml

    from workers.detection.artifact import read_artifact
    from workers.detection.model import build_model

    from .conftest import tiny_model_config
    from .test_convert import paddle_style_state

    cfg = tiny_model_config(num_classes=3)
    yml = {
        "num_classes": 80,  # overridden by --categories
        "width_mult": cfg.width_mult,
        "depth_mult": cfg.depth_mult,
        "CSPResNet": {"use_large_stem": True, "use_alpha": True},
        "CustomCSPPAN": {"spp": True, "use_trans": True, "num_layers": 1, "dim_feedforward": 64},
        "PPYOLOEHead": {"reg_range": [-2, 8], "assigner": {"name": "TaskAlignedAssigner_CR"}},
    }
    (tmp_path / "cfg.yml").write_text(yaml.safe_dump(yml))
    (tmp_path / "w.pdparams").write_bytes(pickle.dumps(paddle_style_state(build_model(cfg))))
    proc = run_cli(
        "convert",
        str(tmp_path / "w.pdparams"),
        str(tmp_path / "out.pt"),
        "--config",
        str(tmp_path / "cfg.yml"),
        "--categories",
        "open,short,spur",
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["missing"] == [] and report["unexpected"] == [] and report["loaded"] > 100
    payload = read_artifact(tmp_path / "out.pt")
    assert [c["name"] for c in payload["categories"]] == ["open", "short", "spur"]
