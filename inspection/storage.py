"""Small helpers over Django's default storage (local disk or S3-compatible)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from django.core.files import File
from django.core.files.storage import FileSystemStorage, default_storage


def is_local() -> bool:
    return isinstance(default_storage, FileSystemStorage)


@contextlib.contextmanager
def local_copy(name: str) -> Iterator[Path]:
    """A path on local disk holding the stored file ``name`` (the file itself when local)."""
    if is_local():
        yield Path(default_storage.path(name))
        return
    suffix = Path(name).suffix
    with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
        with default_storage.open(name, "rb") as src:
            shutil.copyfileobj(src, tmp)
        tmp.flush()
        yield Path(tmp.name)


def fetched(name: str, workdir: Path) -> Path:
    """A local path of the stored file ``name``: the file itself on local disk, else a copy
    downloaded into ``workdir`` (closed at once, so a thousand images need no open files)."""
    if is_local():
        return Path(default_storage.path(name))
    dest = Path(tempfile.mkdtemp(dir=workdir)) / Path(name).name
    with default_storage.open(name, "rb") as src, open(dest, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return dest


@contextlib.contextmanager
def local_tree(prefix: str) -> Iterator[Path]:
    """A local folder holding every file stored under ``prefix`` (the folder itself when local)."""
    if is_local():
        yield Path(default_storage.path(prefix))
        return
    with tempfile.TemporaryDirectory(prefix="loupe-tree-") as tmp:
        _download(prefix, Path(tmp))
        yield Path(tmp)


def _download(prefix: str, dest: Path) -> None:
    dirs, files = default_storage.listdir(prefix)
    dest.mkdir(parents=True, exist_ok=True)
    for name in files:
        with default_storage.open(f"{prefix}/{name}", "rb") as src, open(dest / name, "wb") as out:
            shutil.copyfileobj(src, out)
    for name in dirs:
        _download(f"{prefix}/{name}", dest / name)


def save_tree(local_dir: Path, prefix: str) -> None:
    """Store every file under ``local_dir`` at ``prefix/<relative path>``."""
    for path in sorted(local_dir.rglob("*")):
        if path.is_file():
            name = f"{prefix}/{path.relative_to(local_dir).as_posix()}"
            if default_storage.exists(name):
                default_storage.delete(name)
            with open(path, "rb") as fh:
                default_storage.save(name, File(fh))


def delete_tree(prefix: str) -> None:
    """Delete everything stored under ``prefix``."""
    if is_local():
        shutil.rmtree(default_storage.path(prefix), ignore_errors=True)
        return
    try:
        dirs, files = default_storage.listdir(prefix)
    except (FileNotFoundError, NotImplementedError):
        return
    for f in files:
        default_storage.delete(f"{prefix}/{f}")
    for d in dirs:
        delete_tree(f"{prefix}/{d}")
