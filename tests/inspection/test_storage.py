"""Model folders round-trip through any storage: local disk, or one without local paths (S3)."""

from __future__ import annotations

from pathlib import Path

from django.core.files.storage import default_storage
from django.test import override_settings

from inspection import storage

IN_MEMORY = {
    "default": {"BACKEND": "django.core.files.storage.InMemoryStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}


def _model_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    (folder / "coarse").mkdir(parents=True)
    (folder / "model.pt").write_bytes(b"weights")
    (folder / "model.onnx").write_bytes(b"graph")
    (folder / "coarse" / "model.pt").write_bytes(b"coarse weights")
    return folder


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_model_tree_round_trips_through_remote_storage(tmp_path: Path):
    folder = _model_folder(tmp_path)
    with override_settings(STORAGES=IN_MEMORY):
        assert not storage.is_local()
        storage.save_tree(folder, "projects/1/models/abc")
        with storage.local_tree("projects/1/models/abc") as local:
            assert local != folder and _files(local) == _files(folder)
        assert not local.exists()  # the temporary copy is gone afterwards
        storage.delete_tree("projects/1/models/abc")
        assert not default_storage.exists("projects/1/models/abc/model.pt")


def test_model_tree_on_local_disk_is_used_in_place(tmp_path: Path, settings):
    settings.MEDIA_ROOT = str(tmp_path / "media")
    folder = _model_folder(tmp_path)
    storage.save_tree(folder, "projects/1/models/abc")
    with storage.local_tree("projects/1/models/abc") as local:
        assert local == Path(settings.MEDIA_ROOT) / "projects/1/models/abc"
        assert _files(local) == _files(folder)
