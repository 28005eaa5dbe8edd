"""Read an uploaded zip in any supported format, through ``inspection.ziputil``'s safe extraction.

Unsafe entries (zip slip: absolute paths, ``..``; symlinks; encrypted entries) are refused one by
one and appear in the report's ``skipped``; a zip bomb or an unreadable archive is refused whole
with ``FormatError`` (nothing is read).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from inspection.ziputil import ZipRejected, safe_extract_tree

from .coco import read_coco_folder
from .model import FormatError, ImportReport
from .yolo import read_yolo

__all__ = ["extract_upload", "read_zip"]


def extract_upload(
    archive: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    max_entries: int,
    max_total_bytes: int,
    max_ratio: int,
) -> tuple[Path, ImportReport]:
    """Extract ``archive`` under ``dest``; return the dataset root and a report of refused entries.

    When everything sits in one top-level folder (``my_dataset/...``, as zipping a folder does),
    that folder is the root.
    """
    try:
        extracted = safe_extract_tree(
            archive,
            dest,
            max_entries=max_entries,
            max_total_bytes=max_total_bytes,
            max_ratio=max_ratio,
        )
    except ZipRejected as exc:
        raise FormatError(str(exc)) from exc
    report = ImportReport()
    for name, reason in extracted.skipped:
        report.skip(name, reason)
    root = Path(dest).resolve()
    children = [p for p in root.iterdir() if p.name != ".flat"]
    if len(children) == 1 and children[0].is_dir():
        root = children[0]
    return root, report


def read_zip(
    archive: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    fmt: Literal["coco", "yolo"],
    max_entries: int,
    max_total_bytes: int,
    max_ratio: int,
    **reader_options: Any,
) -> ImportReport:
    """Extract safely and read as COCO (``read_coco_folder``) or YOLO (``read_yolo``).

    Image paths in the result point into ``dest``; keep it until the images are stored.
    """
    root, report = extract_upload(
        archive, dest, max_entries=max_entries, max_total_bytes=max_total_bytes, max_ratio=max_ratio
    )
    if fmt == "coco":
        report.merge(read_coco_folder(root, **reader_options))
    elif fmt == "yolo":
        report.merge(read_yolo(root, **reader_options))
    else:
        raise ValueError(f"unknown format {fmt!r}")
    return report
