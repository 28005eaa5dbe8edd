"""ONNX export and ONNX Runtime inference agree with PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from workers.detection.artifact import load_artifact
from workers.detection.data import load_image, to_tensor
from workers.detection.inference import Detector
from workers.detection.onnx_export import OnnxDetector, export_onnx

pytestmark = pytest.mark.ml


def test_onnx_matches_torch(trained: dict, tmp_path: Path) -> None:
    onnx_path = export_onnx(trained["path"], tmp_path / "model.onnx", size=128)
    ort = OnnxDetector(onnx_path)
    assert [c.name for c in ort.categories] == ["red", "blue"] and ort.size == 128

    model, _, _ = load_artifact(trained["path"])
    image = load_image(Path(trained["coco"]).parent / "img" / "0.png")
    batch = to_tensor([image])
    with torch.no_grad():
        scores, boxes = model(batch)
    o_scores, o_boxes = ort.raw(batch.numpy())
    np.testing.assert_allclose(o_scores, scores.numpy(), atol=1e-4)
    np.testing.assert_allclose(o_boxes, boxes.numpy(), atol=1e-2)

    torch_dets = Detector.load(trained["path"], device="cpu").predict(image, 0.3)
    onnx_dets = ort.predict(image, 0.3)
    assert len(onnx_dets) == len(torch_dets) >= 2
    for a, b in zip(torch_dets, onnx_dets, strict=True):
        assert a.category_id == b.category_id
        assert abs(a.score - b.score) < 1e-3
        assert max(abs(a.x1 - b.x1), abs(a.y2 - b.y2)) < 0.05
        # the other category's score at the box, from the exported graph's scores as well
        assert a.second_score is not None and b.second_score is not None
        assert 0 <= a.second_score <= 1 and abs(a.second_score - b.second_score) < 1e-3


def test_missing_onnx_file_says_how_to_make_it(tmp_path: Path) -> None:
    from workers.detection.errors import WeightsNotFound

    with pytest.raises(WeightsNotFound, match="export-onnx"):
        OnnxDetector(tmp_path / "none.onnx")


def large_image(coco: Path) -> np.ndarray:
    """The synthetic 128 px images tiled 2 x 3 (256 x 384): squares cross slice borders."""
    tiles = [load_image(coco.parent / "img" / f"{i}.png") for i in range(6)]
    return np.concatenate(
        [np.concatenate(tiles[r * 3 : r * 3 + 3], axis=1) for r in range(2)], axis=0
    )


@pytest.fixture
def artifact(trained: dict, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copy(trained["path"], tmp_path / "model.pt"))


def test_load_detector_onnx_gives_torch_detections_on_a_sliced_image(
    artifact: Path, trained: dict
) -> None:
    from workers.detection import load_detector

    image = large_image(Path(trained["coco"]))
    torch_det = load_detector(artifact, "torch", device="cpu")
    onnx_det = load_detector(artifact, "onnx")
    assert (torch_det.runtime, onnx_det.runtime) == ("torch", "onnx")
    assert onnx_det.eval_size == torch_det.eval_size == 128
    kw = {"slice_size": 128, "overlap": 0.25, "score_threshold": 0.3, "batch_size": 4}
    a = torch_det.predict_sliced(image, **kw)
    b = onnx_det.predict_sliced(image, **kw)
    assert len(a) == len(b) >= 12  # 18 squares planted, a short-trained model finds most
    for x, y in zip(a, b, strict=True):
        assert (x.category_id, x.category_name) == (y.category_id, y.category_name)
        assert abs(x.score - y.score) < 1e-4, (x, y)
        assert x.second_score is not None and y.second_score is not None, (x, y)
        assert abs(x.second_score - y.second_score) < 1e-3, (x, y)
        for u, v in zip((x.x1, x.y1, x.x2, x.y2), (y.x1, y.y1, y.x2, y.y2), strict=True):
            assert abs(u - v) < 1e-3, (x, y)


def test_onnx_export_is_made_once_next_to_the_artifact_and_redone_when_stale(
    artifact: Path, trained: dict
) -> None:
    from workers.detection import load_detector
    from workers.detection.artifact import artifact_sha256, read_artifact, save_artifact
    from workers.detection.onnx_export import read_export_metadata

    export = artifact.with_name("model.128.onnx")
    assert not export.exists()
    load_detector(artifact)  # auto on this CPU: ONNX Runtime, exported on first use
    assert read_export_metadata(export)["loupe_artifact_sha256"] == artifact_sha256(artifact)
    stamp = export.stat().st_mtime_ns
    assert load_detector(artifact, "onnx").runtime == "onnx"
    assert export.stat().st_mtime_ns == stamp  # reused, not exported again

    # A retrained model written to the same path must never run through the old export.
    model, cats, meta = load_artifact(artifact)
    save_artifact(artifact, model, cats, metadata={**meta, "retrained": True})
    assert read_artifact(artifact)["metadata"]["retrained"]
    load_detector(artifact, "onnx")
    assert read_export_metadata(export)["loupe_artifact_sha256"] == artifact_sha256(artifact)
    assert not list(artifact.parent.glob("*.tmp")) and not list(artifact.parent.glob(".*.tmp"))


def test_load_detector_errors_and_auto_fallback(artifact: Path, tmp_path: Path) -> None:
    from workers.detection import RuntimeUnavailable, WeightsNotFound, load_detector

    for runtime in ("auto", "torch", "onnx"):
        with pytest.raises(WeightsNotFound, match="missing.pt not found"):
            load_detector(tmp_path / "missing.pt", runtime)
    with pytest.raises(ValueError, match="runtime must be one of"):
        load_detector(artifact, "tensorrt")
    with pytest.raises(RuntimeUnavailable, match="CPU only"):
        load_detector(artifact, "onnx", device="cuda")
    # no export and none may be made: onnx says how to make one, auto runs torch instead
    with pytest.raises(WeightsNotFound, match="export-onnx"):
        load_detector(artifact, "onnx", export_missing=False)
    assert load_detector(artifact, "auto", export_missing=False).runtime == "torch"
    # an export folder that cannot be written
    (tmp_path / "file").write_text("")
    with pytest.raises(RuntimeUnavailable, match="export_dir"):
        load_detector(artifact, "onnx", export_dir=tmp_path / "file" / "sub")
    assert load_detector(artifact, export_dir=tmp_path / "file" / "sub").runtime == "torch"
    # a folder given for exports is used
    det = load_detector(artifact, "onnx", export_dir=tmp_path / "exports", eval_size=160)
    assert det.eval_size == 160 and (tmp_path / "exports" / "model.160.onnx").is_file()
