"""Safe zip extraction. Pure functions: no Django.

Whole-archive refusals (nothing is extracted): too many entries, or a declared or actual total
uncompressed size over the cap, or a compression ratio typical of zip bombs. Per-entry refusals
(the rest of the archive still imports): absolute paths, ``..`` components, symlinks,
encrypted entries.
"""

from __future__ import annotations

import os
import shutil
import stat
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath


class ZipRejected(ValueError):
    """The archive as a whole cannot be used; the message says why."""


@dataclass
class Extracted:
    files: list[tuple[str, Path]] = field(default_factory=list)  # (name in zip, extracted path)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name in zip, reason)


_IGNORED_PARTS = {"__MACOSX", ".DS_Store", "Thumbs.db"}


def _entry_problem(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "symbolic links are not allowed in uploads"
    if info.flag_bits & 0x1:
        return "encrypted entries are not supported"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute paths are not allowed in zip files"
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if ".." in parts:
        return "paths with '..' are not allowed in zip files"
    return None


def safe_extract(
    archive: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    max_entries: int,
    max_total_bytes: int,
    max_ratio: int,
) -> Extracted:
    """Extract regular files of ``archive`` under ``dest``; refuse what is unsafe."""
    dest = Path(dest).resolve()
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ZipRejected(f"not a readable zip file ({exc})") from None
    out = Extracted()
    with zf:
        infos = zf.infolist()
        if len(infos) > max_entries:
            raise ZipRejected(
                f"the zip has {len(infos)} entries, over the limit of {max_entries} (LOUPE_ZIP_MAX_ENTRIES)"
            )
        declared = sum(i.file_size for i in infos)
        if declared > max_total_bytes:
            raise ZipRejected(
                f"the zip would unpack to {declared / 1e6:.0f} MB, over the limit of "
                f"{max_total_bytes / 1e6:.0f} MB (LOUPE_ZIP_MAX_TOTAL_BYTES)"
            )
        compressed = sum(i.compress_size for i in infos)
        if declared > 10 * 1024 * 1024 and declared > max_ratio * max(compressed, 1):
            raise ZipRejected(
                f"the zip expands {declared / max(compressed, 1):.0f} times (a zip bomb?); "
                f"the limit is {max_ratio} (LOUPE_ZIP_MAX_RATIO)"
            )
        written = 0
        for index, info in enumerate(infos):
            if info.is_dir():
                continue
            name = info.filename
            parts = PurePosixPath(name.replace("\\", "/")).parts
            if any(p in _IGNORED_PARTS or p.startswith("._") for p in parts):
                continue
            problem = _entry_problem(info)
            if problem:
                out.skipped.append((name, problem))
                continue
            # the folder is the entry's index; the file keeps its (shortened) name and suffix
            leaf = PurePosixPath(*parts).name
            suffix = PurePosixPath(leaf).suffix[:16]
            leaf = leaf if len(leaf.encode()) <= 200 else f"entry{suffix}"
            target = (dest / f"{index:06d}" / leaf).resolve()
            if dest not in target.parents:
                out.skipped.append((name, "the path leaves the upload folder"))
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            # Declared sizes can lie: count the bytes actually written.
            try:
                with zf.open(info) as src, open(target, "wb") as fh:
                    while block := src.read(1 << 20):
                        written += len(block)
                        if written > max_total_bytes:
                            raise ZipRejected(
                                "the zip unpacks to more than its declared size and over the limit "
                                f"of {max_total_bytes / 1e6:.0f} MB (a zip bomb?)"
                            )
                        fh.write(block)
            except ZipRejected:
                raise
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as exc:
                target.unlink(missing_ok=True)
                out.skipped.append((name, f"this entry of the zip is damaged ({exc})"))
                continue
            out.files.append((name, target))
    return out


def safe_extract_tree(
    archive: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    max_entries: int,
    max_total_bytes: int,
    max_ratio: int,
) -> Extracted:
    """Like safe_extract but keeps the folder structure (for layouts such as MVTec AD)."""
    dest = Path(dest).resolve()
    flat_dir = dest / ".flat"
    flat = safe_extract(
        archive,
        flat_dir,
        max_entries=max_entries,
        max_total_bytes=max_total_bytes,
        max_ratio=max_ratio,
    )
    out = Extracted(skipped=flat.skipped)
    for name, path in flat.files:
        rel = PurePosixPath(name.replace("\\", "/"))
        target = (dest / rel).resolve()
        if dest not in target.parents:  # already refused above; belt and braces
            out.skipped.append((name, "the path leaves the upload folder"))
            continue
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            path.replace(target)
        except OSError as exc:  # e.g. a name too long for the file system
            out.skipped.append((name, f"cannot be unpacked here ({exc.strerror or exc})"))
            continue
        out.files.append((name, target))
    shutil.rmtree(flat_dir, ignore_errors=True)  # only the emptied index folders are left
    return out
