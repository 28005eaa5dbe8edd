"""Exports of dataset versions: a background job (kind ``export``, ``cpu`` queue) writes a zip in
any format of the formats registry; reviewers download it; zips expire after
LOUPE_EXPORT_KEEP_DAYS (a maintenance hook deletes them; the Job row stays as the audit trail).
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files import File
from django.core.files.storage import default_storage
from django.utils import timezone

from annotations.formats import Dataset
from annotations.formats.registry import OptionError, export_choices, get_exporter
from annotations.models import DatasetVersion
from annotations.services.dataset_versions import version_dataset_from_content
from inspection import storage
from inspection.models import Job, Role
from inspection.permissions import require_role
from inspection.services.jobs import job_enqueue
from inspection.services.maintenance import maintenance_hook

logger = logging.getLogger(__name__)

ProgressFn = Callable[[float, str], None]
JOB_KIND = "export"


def export_formats() -> dict[str, str]:
    """Export format name -> what people call it, in the registry's order."""
    return dict(export_choices())


def dataset_export_enqueue(
    *, user, version: DatasetVersion, fmt: str, options: dict[str, Any] | None = None
) -> Job:
    """Start the background export of a version to a zip (project admins)."""
    require_role(user, version.project, Role.ADMIN)
    try:
        clean = get_exporter(fmt).clean_options(options or {})
    except OptionError as exc:
        raise ValidationError({exc.field: str(exc)}) from None
    return job_enqueue(
        kind=JOB_KIND,
        user=user,
        project=version.project,
        payload={
            "version": version.id,
            "version_number": version.number,
            "format": fmt,
            "options": clean,
        },
    )


def _with_local_files(dataset: Dataset, content: dict, tmp: Path) -> list[str]:
    """Point every image at a local file; returns the keys whose file is gone (then dropped)."""
    files = {str(im["id"]): im["file"] for im in content["images"]}
    references = {str(im["id"]): im["reference"] for im in content["images"] if im.get("reference")}
    missing = []
    for im in dataset.images:
        name = files[im.key]
        if not name or not default_storage.exists(name):
            missing.append(im.key)
            continue
        im.path = _local(name, tmp / "originals" / f"{im.key}{Path(name).suffix}")
        ref = references.get(im.key)
        if ref and ref.get("file") and default_storage.exists(ref["file"]):
            # a reference deleted since the freeze: the image is exported without it
            im.reference_path = _local(
                ref["file"], tmp / "references" / f"{ref['id']}{Path(ref['file']).suffix}"
            )
        else:
            im.reference_name = ""
    if missing:
        gone = set(missing)
        dataset.images = [im for im in dataset.images if im.key not in gone]
        dataset.shapes = [s for s in dataset.shapes if s.image_key not in gone]
    return missing


def _local(name: str, copy_to: Path) -> Path:
    """The stored file ``name`` on local disk: itself, or a copy at ``copy_to``."""
    if storage.is_local():
        return Path(default_storage.path(name))
    if not copy_to.exists():
        copy_to.parent.mkdir(parents=True, exist_ok=True)
        with default_storage.open(name, "rb") as src, open(copy_to, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return copy_to


def _zip_folder(folder: Path, target: Path) -> None:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())


def dataset_export_run(
    *, version: DatasetVersion, fmt: str, options: dict[str, Any], job_id: str, progress: ProgressFn
) -> dict[str, Any]:
    """Write a version in ``fmt`` to a zip in storage; return what the job records as its result.

    Called by the export job (the permission check happened when it was enqueued).
    """
    exporter = get_exporter(fmt)
    dataset = version_dataset_from_content(version.content)
    with tempfile.TemporaryDirectory(prefix="loupe-export-") as tmp_name:
        tmp = Path(tmp_name)
        progress(0.05, "Collecting image files")
        missing = _with_local_files(dataset, version.content, tmp)
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", version.project.name).strip("._") or "dataset"
        out = tmp / f"{stem}-v{version.number}-{fmt}"
        out.mkdir()
        progress(0.2, f"Writing {exporter.label}")
        extra = exporter.write(dataset, out, **options) or {}
        progress(0.8, "Packing the zip")
        archive = tmp / "export.zip"
        _zip_folder(out, archive)
        size = archive.stat().st_size
        name = f"projects/{version.project_id}/exports/{job_id}.zip"
        with open(archive, "rb") as fh:
            stored = default_storage.save(name, File(fh))
    images = len(dataset.images)
    return {
        "file": stored,
        "download_name": f"{out.name}.zip",
        "size_bytes": size,
        "format": fmt,
        "version": version.number,
        "content_hash": version.content_hash,
        "images": images,
        "shapes": len(dataset.shapes),
        "missing_images": [int(k) for k in missing],
        **extra,
        "message": f"Exported v{version.number} as {exporter.label}: {images} images"
        + (f"; {len(missing)} image files were missing" if missing else ""),
    }


def dataset_export_job(*, user, job: Job) -> Job:
    """The finished export job ``job`` if ``user`` may download it (reviewers and up)."""
    if job.project is None or job.kind != JOB_KIND:
        raise ValidationError("This job is not a dataset export.")
    require_role(user, job.project, Role.REVIEWER)
    if job.result.get("expired"):
        raise ValidationError(
            f"This export was deleted {settings.LOUPE_EXPORT_KEEP_DAYS} days after it was made "
            "(LOUPE_EXPORT_KEEP_DAYS); export the version again."
        )
    if job.status != Job.Status.SUCCEEDED or not job.result.get("file"):
        raise ValidationError(f"This export is {job.status}; there is nothing to download yet.")
    return job


@maintenance_hook("delete expired export zips")
def dataset_exports_prune(*, now=None) -> int:
    """Delete the zips of exports finished more than LOUPE_EXPORT_KEEP_DAYS ago; their jobs stay
    (the audit trail) and say the file expired. Returns how many zips were deleted."""
    days = settings.LOUPE_EXPORT_KEEP_DAYS
    if days <= 0:
        return 0
    cutoff = (now or timezone.now()) - timedelta(days=days)
    old = Job.objects.filter(
        kind=JOB_KIND, status=Job.Status.SUCCEEDED, finished_at__lt=cutoff
    ).exclude(result__has_key="expired")  # not result__expired=True: NULL for other rows
    pruned = 0
    for job in old:
        name = job.result.get("file")
        try:
            if name and default_storage.exists(name):
                default_storage.delete(name)
                pruned += 1
        except OSError:  # storage hiccup: try again at the next sweep, never fail the caller
            logger.exception("could not delete expired export %s", name)
            continue
        note = f" (file expired after {days} days)"
        result = {**job.result, "file": "", "expired": True}
        result["message"] = f"{result.get('message', 'Exported')}{note}"
        Job.objects.filter(pk=job.pk).update(result=result, message=f"{job.message}{note}")
    return pruned
