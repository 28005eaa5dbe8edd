"""Job kinds 'export' (a frozen dataset version to a zip) and 'dataset_import' (COCO/YOLO zip)."""

from django.contrib.auth import get_user_model
from django.core.files.storage import default_storage

from annotations.datasets import dataset_export_run, dataset_exports_prune, dataset_import_run
from annotations.formats import FormatError
from annotations.models import DatasetVersion
from inspection.models import Job
from inspection.storage import local_copy
from workers.tasks.runner import JobContext, JobError, job_task


@job_task("export")
def export_dataset(job: Job, ctx: JobContext) -> dict:
    version = (
        DatasetVersion.objects.select_related("project")
        .filter(pk=job.payload.get("version"))
        .first()
    )
    if version is None:
        raise JobError("The dataset version to export no longer exists.")
    dataset_exports_prune()  # older zips past LOUPE_EXPORT_KEEP_DAYS go as new ones come
    return dataset_export_run(
        version=version,
        fmt=job.payload["format"],
        options=job.payload.get("options") or {},
        job_id=str(job.id),
        progress=lambda f, m: ctx.progress(f * 0.99, m),
    )


@job_task("dataset_import")
def import_dataset(job: Job, ctx: JobContext) -> dict:
    user = get_user_model().objects.filter(pk=job.created_by_id).first()
    name = job.payload["zip"]
    try:
        with local_copy(name) as archive:
            return dataset_import_run(
                user=user,
                project=job.project,
                archive=archive,
                fmt=job.payload["format"],
                source_name=job.payload.get("name", ""),
                progress=lambda f, m: ctx.progress(f * 0.99, m),
            )
    except FormatError as exc:
        raise JobError(f"The zip was refused: {exc}") from None
    finally:
        if default_storage.exists(name):
            default_storage.delete(name)
