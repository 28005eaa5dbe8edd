"""INT8: kept only where it passes its check against fp32, and then what load_detector runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from workers.detection import load_detector
from workers.detection.errors import DetectionError, WeightsNotFound
from workers.detection.onnx_export import read_export_metadata
from workers.detection.quantize import check_int8, int8_export_path
from workers.detection.runtimes import onnx_export_path

pytestmark = pytest.mark.ml

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def artifact(trained: dict, tmp_path: Path) -> Path:
    return Path(shutil.copy(trained["path"], tmp_path / "model.pt"))


def test_int8_that_keeps_map_is_kept_and_run(artifact: Path, trained: dict) -> None:
    coco = Path(trained["coco"])
    # speed is not judged here (a 1/8-width network is too small for INT8 to pay off): the
    # accuracy half of the check decides
    result = check_int8(artifact, coco, slice_size=None, min_speedup=0.0)
    assert result["passed"], result
    assert result["map50_fp32"] > 0.8  # the fixture's overfit model: a real figure to keep
    assert result["map50_int8"] >= result["map50_fp32"] - 0.01
    assert result["images"] == 8 and result["ms_int8"] > 0 and result["ms_fp32"] > 0
    int8_path = int8_export_path(onnx_export_path(artifact, 128))
    meta = read_export_metadata(int8_path)
    assert meta["loupe_precision"] == "int8"
    assert json.loads(meta["loupe_int8_check"])["map50_int8"] == result["map50_int8"]

    auto = load_detector(artifact, "onnx")
    fp32 = load_detector(artifact, "onnx", precision="fp32")
    assert (auto.precision, fp32.precision) == ("int8", "fp32")
    image = coco.parent / "img" / "0.png"
    a = [(d.category_name, round(d.x1), round(d.y1)) for d in fp32.predict(image, 0.5)]
    b = [(d.category_name, round(d.x1), round(d.y1)) for d in auto.predict(image, 0.5)]
    assert len(a) >= 2 and sorted(c for c, _x, _y in a) == sorted(c for c, _x, _y in b)

    # a model retrained into the same path never runs the old model's INT8 copy
    other = shutil.copy(artifact, artifact.with_name("tmp.pt"))
    import torch

    payload = torch.load(other, weights_only=False)
    payload["metadata"] = {"retrained": True}
    torch.save(payload, artifact)
    assert load_detector(artifact, "onnx").precision == "fp32"
    with pytest.raises(WeightsNotFound, match="INT8"):
        load_detector(artifact, "onnx", precision="int8")


def test_int8_that_loses_map_is_not_kept(artifact: Path, trained: dict) -> None:
    coco = Path(trained["coco"])
    # a negative tolerance asks INT8 to beat fp32 by a whole point of mAP50: it cannot
    result = check_int8(artifact, coco, tolerance=-1.0, min_speedup=0.0)
    assert not result["passed"] and "loses" in result["reason"], result
    assert not int8_export_path(onnx_export_path(artifact, 128)).exists()
    assert load_detector(artifact, "onnx").precision == "fp32"


def test_int8_that_is_not_faster_is_not_kept(artifact: Path, trained: dict) -> None:
    result = check_int8(artifact, Path(trained["coco"]), min_speedup=1000.0)
    assert not result["passed"] and "not faster" in result["reason"], result
    assert not int8_export_path(onnx_export_path(artifact, 128)).exists()


def test_int8_check_refuses_images_without_boxes(artifact: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text(
        json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "red"}]})
    )
    with pytest.raises(DetectionError, match="no boxes"):
        check_int8(artifact, empty)


def test_cli_check_int8_says_why_and_exits_1_when_not_kept(artifact: Path, trained: dict) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "workers.detection", "check-int8", str(artifact),
         str(trained["coco"]), "--tolerance", "-1"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert out["passed"] is False and "loses" in out["reason"]
