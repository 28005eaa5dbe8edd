"""Uploads as the app reads them: ``inspection.ziputil`` unpacks the zip safely, then the
registry's importer reads the folder. Zip slip, symlinks and damaged entries are refused one by
one (the rest imports); a zip bomb or a file that is not a zip is refused whole, before any
importer runs."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from annotations.formats import Dataset, ImportReport
from annotations.formats.coco import write_coco
from annotations.formats.registry import get_importer
from annotations.formats.yolo import write_yolo
from inspection.ziputil import ZipRejected, safe_extract_tree

LIMITS = {"max_entries": 1000, "max_total_bytes": 50 * 1024 * 1024, "max_ratio": 100}


def zip_folder(folder: Path, extra=(), top: str = "export/") -> bytes:
    """``folder`` zipped as zipping a folder does (everything under ``top``), plus ``extra``
    entries ``(name, data)`` or ``(name, data, unix mode)``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, top + path.relative_to(folder).as_posix())
        for name, data, *mode in extra:
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if mode:
                info.external_attr = mode[0] << 16
            zf.writestr(info, data)
    return buf.getvalue()


def read_upload(archive: Path, dest: Path, fmt: str) -> ImportReport:
    """What the app does with an upload: unpack safely, read, put the refused entries first."""
    extracted = safe_extract_tree(archive, dest, **LIMITS)
    report = get_importer(fmt).read(dest)
    report.skipped[:0] = [(name, reason) for name, reason in extracted.skipped]
    return report


def damage(data: bytes, entry: str) -> bytes:
    """The zip with the compressed bytes of ``entry`` overwritten (its header stays readable)."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        info = zf.getinfo(entry)
    raw = bytearray(data)
    header = info.header_offset
    name_len = int.from_bytes(raw[header + 26 : header + 28], "little")
    extra_len = int.from_bytes(raw[header + 28 : header + 30], "little")
    start = header + 30 + name_len + extra_len
    raw[start : start + info.compress_size] = b"\xff" * info.compress_size
    return bytes(raw)


def test_coco_zip_with_zip_slip_and_symlink_entries(sample: Dataset, tmp_path):
    write_coco(sample, tmp_path / "coco")
    archive = tmp_path / "up.zip"
    extra = [
        ("../evil.txt", b"x"),
        ("/abs.txt", b"x"),
        ("export/images/train/link.png", b"/etc/passwd", stat.S_IFLNK | 0o777),
    ]
    archive.write_bytes(zip_folder(tmp_path / "coco", extra))
    report = read_upload(archive, tmp_path / "x", "coco")
    assert len(report.dataset.images) == len(sample.images)
    assert len(report.dataset.shapes) == len(sample.shapes)
    reasons = dict(report.skipped)
    assert len(reasons) == 3
    assert "'..'" in reasons["../evil.txt"]
    assert "absolute paths" in reasons["/abs.txt"]
    assert "symbolic links" in reasons["export/images/train/link.png"]
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "x" / "evil.txt").exists()
    assert not any(p.is_symlink() for p in (tmp_path / "x").rglob("*"))


def test_yolo_zip_reads(sample: Dataset, tmp_path):
    write_yolo(sample, tmp_path / "yolo", flavour="segment")
    archive = tmp_path / "up.zip"
    archive.write_bytes(zip_folder(tmp_path / "yolo"))
    report = read_upload(archive, tmp_path / "x", "yolo")
    assert report.skipped == []
    assert len(report.dataset.shapes) == len(sample.shapes)
    assert {s.kind for s in report.dataset.shapes} == {"polygon"}


def test_a_damaged_entry_fails_alone(sample: Dataset, tmp_path):
    write_coco(sample, tmp_path / "coco")
    archive = tmp_path / "up.zip"
    archive.write_bytes(damage(zip_folder(tmp_path / "coco"), "export/images/train/a.png"))
    report = read_upload(archive, tmp_path / "x", "coco")
    reasons = dict(report.skipped)
    assert "damaged" in reasons["export/images/train/a.png"]
    assert "missing" in reasons["instances_train.json: image a.png (id 1)"]
    assert len(report.dataset.images) == len(sample.images) - 1


def test_mvtec_zip_of_a_folder(tmp_path):
    src = tmp_path / "bottle"
    for name in ("train/good/0.png", "test/good/0.png", "test/crack/c.png"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8), 128, np.uint8)).save(src / name)
    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 2:5] = 255
    (src / "ground_truth/crack").mkdir(parents=True)
    Image.fromarray(mask).save(src / "ground_truth/crack/c_mask.png")
    archive = tmp_path / "up.zip"
    archive.write_bytes(zip_folder(src, [("bottle/../../x.png", b"x")], top="bottle/"))
    report = read_upload(archive, tmp_path / "x", "mvtec")
    assert [r for _, r in report.skipped] == ["paths with '..' are not allowed in zip files"]
    assert [(im.key, im.is_negative) for im in report.dataset.images] == [
        ("train/good/0.png", True),
        ("test/crack/c.png", False),
        ("test/good/0.png", False),
    ]
    assert [s.category for s in report.dataset.shapes] == ["crack"]


def test_zip_bomb_is_refused_whole(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("annotations.json", b"\0" * (20 * 1024 * 1024))
    archive = tmp_path / "bomb.zip"
    archive.write_bytes(buf.getvalue())
    with pytest.raises(ZipRejected, match="zip bomb"):
        read_upload(archive, tmp_path / "x", "coco")
    assert not any(p.is_file() for p in (tmp_path / "x").rglob("*"))


def test_not_a_zip(tmp_path):
    archive = tmp_path / "no.zip"
    archive.write_bytes(b"hello")
    with pytest.raises(ZipRejected, match="not a readable zip"):
        read_upload(archive, tmp_path / "x", "coco")
