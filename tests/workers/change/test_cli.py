"""``python -m workers.change align|regions`` on a synthetic pair (in-process)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from workers.change.__main__ import main

from .conftest import board, noisy, paint_defect

pytestmark = pytest.mark.ml


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    reference = board(256, 320, seed=50)
    shift = np.float32([[1, 0, -3], [0, 1, 2]])
    moved = cv2.warpAffine(reference, shift, (320, 256), borderValue=215)
    image = paint_defect(noisy(moved, 51), 160, 128, 10, 40)
    cv2.imwrite(str(tmp_path / "image.png"), cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
    cv2.imwrite(str(tmp_path / "reference.png"), reference)
    return tmp_path / "image.png", tmp_path / "reference.png"


def test_align_prints_json_and_writes_the_difference(files, tmp_path, capsys):
    image, reference = files
    out = tmp_path / "diff.png"
    assert main(["align", str(image), str(reference), "--out", str(out)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True and data["method"] == "ecc"
    assert data["matrix"][0][2] == pytest.approx(-3, abs=0.3)
    assert data["matrix"][1][2] == pytest.approx(2, abs=0.3)
    diff = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert diff.shape == (256, 320) and diff[128, 160] > 60


def test_align_refused_exits_1(tmp_path, capsys):
    cv2.imwrite(str(tmp_path / "a.png"), board(200, 200, seed=52))
    cv2.imwrite(str(tmp_path / "b.png"), np.full((200, 200), 200, np.uint8))
    assert main(["align", str(tmp_path / "a.png"), str(tmp_path / "b.png")]) == 1
    assert "blank" in json.loads(capsys.readouterr().out)["reason"]


def test_regions_with_a_raw_threshold(files, tmp_path, capsys):
    image, reference = files
    heat = tmp_path / "heat.png"
    assert (
        main(["regions", str(image), str(reference), "--threshold", "100", "--heatmap", str(heat)])
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert data["scores"].startswith("raw")
    assert len(data["regions"]) == 1
    x, y, w, h = data["regions"][0]["box"]
    assert x <= 160 <= x + w and y <= 128 <= y + h
    assert data["regions"][0]["peak_score"] > 100
    assert cv2.imread(str(heat), cv2.IMREAD_UNCHANGED).shape == (64, 80)


def test_unreadable_file_exits_2(tmp_path, capsys):
    (tmp_path / "x.png").write_bytes(b"not an image")
    assert main(["align", str(tmp_path / "x.png"), str(tmp_path / "x.png")]) == 2
    assert "cannot read" in capsys.readouterr().err
