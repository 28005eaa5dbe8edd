"""Zip uploads: zip slip entries are refused alone, zip bombs are refused whole."""

from __future__ import annotations

import io
import zipfile

import pytest

from annotations.formats import Dataset, FormatError
from annotations.formats.archives import read_zip
from annotations.formats.coco import write_coco
from annotations.formats.yolo import write_yolo

LIMITS = {"max_entries": 1000, "max_total_bytes": 50 * 1024 * 1024, "max_ratio": 100}


def zip_folder(folder, extra=()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, "export/" + path.relative_to(folder).as_posix())
        for name, data in extra:
            zf.writestr(name, data)
    return buf.getvalue()


def test_coco_zip_with_zip_slip_entries(sample: Dataset, tmp_path):
    write_coco(sample, tmp_path / "coco")
    archive = tmp_path / "up.zip"
    archive.write_bytes(zip_folder(tmp_path / "coco", [("../evil.txt", b"x"), ("/abs.txt", b"x")]))
    report = read_zip(archive, tmp_path / "x", fmt="coco", **LIMITS)
    assert len(report.dataset.images) == len(sample.images)
    assert len(report.dataset.shapes) == len(sample.shapes)
    reasons = dict(report.skipped)
    assert "'..'" in reasons["../evil.txt"]
    assert "absolute paths" in reasons["/abs.txt"]
    assert not (tmp_path / "evil.txt").exists()


def test_yolo_zip_reads(sample: Dataset, tmp_path):
    write_yolo(sample, tmp_path / "yolo", flavour="segment")
    archive = tmp_path / "up.zip"
    archive.write_bytes(zip_folder(tmp_path / "yolo"))
    report = read_zip(archive, tmp_path / "x", fmt="yolo", flavour="segment", **LIMITS)
    assert report.skipped == []
    assert len(report.dataset.shapes) == len(sample.shapes)


def test_zip_bomb_is_refused_whole(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("annotations.json", b"\0" * (20 * 1024 * 1024))
    archive = tmp_path / "bomb.zip"
    archive.write_bytes(buf.getvalue())
    with pytest.raises(FormatError, match="zip bomb"):
        read_zip(archive, tmp_path / "x", fmt="coco", **LIMITS)


def test_not_a_zip(tmp_path):
    archive = tmp_path / "no.zip"
    archive.write_bytes(b"hello")
    with pytest.raises(FormatError, match="not a readable zip"):
        read_zip(archive, tmp_path / "x", fmt="coco", **LIMITS)
