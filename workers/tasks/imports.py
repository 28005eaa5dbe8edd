"""Job kind 'import_mvtec': import an MVTec AD folder (a server path or an uploaded zip)."""

import shutil
import tempfile
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files.storage import default_storage

from inspection.models import Job
from inspection.services.images import images_enqueue_derivatives
from inspection.services.mvtec import ImportReport, MvtecLayoutError, mvtec_import
from inspection.storage import local_copy
from inspection.ziputil import ZipRejected, safe_extract_tree
from workers.tasks.runner import JobContext, JobError, job_task


def _single_top_folder(root: Path) -> Path:
    """A zip of 'bottle/' holds bottle/train/...: step into that folder."""
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir() and not (root / "train").exists():
        return entries[0]
    return root


@job_task("import_mvtec")
def import_mvtec(job: Job, ctx: JobContext) -> dict:
    user = get_user_model().objects.filter(pk=job.created_by_id).first()
    tmp = None
    report = ImportReport()
    queued = False
    try:
        if job.payload.get("zip"):
            tmp = Path(tempfile.mkdtemp(prefix="loupe-mvtec-"))
            ctx.progress(0.0, "Unpacking the zip", force=True)
            try:
                with local_copy(job.payload["zip"]) as archive:
                    extracted = safe_extract_tree(
                        archive,
                        tmp,
                        max_entries=settings.LOUPE_ZIP_MAX_ENTRIES,
                        max_total_bytes=settings.LOUPE_ZIP_MAX_TOTAL_BYTES,
                        max_ratio=settings.LOUPE_ZIP_MAX_RATIO,
                    )
            except ZipRejected as exc:
                raise JobError(f"The zip was refused: {exc}") from None
            root = _single_top_folder(tmp)
            skipped = [{"name": n, "reason": r} for n, r in extracted.skipped]
        else:
            root = Path(job.payload["path"])
            skipped = []
        try:
            mvtec_import(
                user=user,
                project=job.project,
                root=root,
                progress=lambda f, m: ctx.progress(f * 0.99, m),
                report=report,
            )
        except MvtecLayoutError as exc:
            raise JobError(str(exc)) from None
        report.skipped = skipped + report.skipped
        if report.image_ids:
            images_enqueue_derivatives(user=user, project=job.project, image_ids=report.image_ids)
            queued = True
        result = report.to_dict()
        result.pop("image_ids")
        result["message"] = (
            f"{report.normal} normal and {report.unlabeled} test images, {report.annotations} "
            f"ground-truth polygons; {report.duplicates} duplicates, {len(report.skipped)} skipped"
        )
        return result
    finally:
        if report.image_ids and not queued:
            # stopped half-way: the images stored so far still get their pyramids
            images_enqueue_derivatives(user=user, project=job.project, image_ids=report.image_ids)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if job.payload.get("zip") and default_storage.exists(job.payload["zip"]):
            default_storage.delete(job.payload["zip"])
