"""Job kinds 'export' (a frozen dataset version to a zip) and 'dataset_import' (a COCO, YOLO or
MVTec AD zip, or a server folder)."""

from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.files.storage import default_storage

from annotations.formats import FormatError
from annotations.models import DatasetVersion
from annotations.services.dataset_export import dataset_export_run
from annotations.services.dataset_import import dataset_import_run
from inspection.models import Job
from inspection.storage import local_copy
from workers.tasks.runner import JobContext, JobError, job_task


@job_task("export", queue="cpu", label="Dataset export")
def export_dataset(job: Job, ctx: JobContext) -> dict:
    version = (
        DatasetVersion.objects.select_related("project")
        .filter(pk=job.payload.get("version"))
        .first()
    )
    if version is None:
        raise JobError("The dataset version to export no longer exists.")
    return dataset_export_run(
        version=version,
        fmt=job.payload["format"],
        options=job.payload.get("options") or {},
        job_id=str(job.id),
        progress=lambda f, m: ctx.progress(f * 0.99, m),
    )


@job_task("dataset_import", queue="cpu", label="Dataset import", stores_images=True)
def import_dataset(job: Job, ctx: JobContext) -> dict:
    user = get_user_model().objects.filter(pk=job.created_by_id).first()
    name = job.payload.get("zip")
    common = {
        "user": user,
        "project": job.project,
        "fmt": job.payload["format"],
        "source_name": job.payload.get("name", ""),
        "progress": lambda f, m: ctx.progress(f * 0.99, m),
    }
    try:
        if not name:
            return dataset_import_run(folder=Path(job.payload["path"]), **common)
        with local_copy(name) as archive:
            return dataset_import_run(archive=archive, **common)
    except FormatError as exc:
        what = "The zip" if name else "The folder"
        raise JobError(f"{what} was refused: {exc}") from None
    finally:
        if name and default_storage.exists(name):
            default_storage.delete(name)
