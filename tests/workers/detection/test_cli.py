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
