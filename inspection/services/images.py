"""Images: upload (single files, many files, zips), delete, and derived files (pyramid, thumbnail).

A bad file in a batch fails alone, with its name and the reason; every good file is stored.
Duplicates (same sha256 in the same project) are reported, not stored twice.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from django.conf import settings
from django.core.files import File
from django.db import IntegrityError, transaction

from inspection import imaging, storage
from inspection.models import Image, Job, ModelVersion, Project, Role
from inspection.permissions import require_role
from inspection.ziputil import ZipRejected, safe_extract

log = logging.getLogger(__name__)


@dataclass
class FileOutcome:
    """What happened to one uploaded file."""

    name: str
    status: str  # stored | duplicate | rejected
    reason: str = ""
    image_id: int | None = None
    duplicate_of: int | None = None


@dataclass
class UploadReport:
    """The outcome of one upload request, file by file, and the pyramid job it started."""

    files: list[FileOutcome] = field(default_factory=list)
    job_id: str | None = None
    inspection_run: int | None = None  # the anomaly model's run of an auto-inspected upload
    detection_run: int | None = None  # the detector's
    paired: int = 0  # images paired with their reference by the project's file-name rule
    pairing_refused: list[dict] = field(default_factory=list)  # {name, reason}
    reference_job: str | None = None  # the others look for their most similar reference

    @property
    def stored(self) -> list[FileOutcome]:
        return [f for f in self.files if f.status == "stored"]

    def counts(self) -> dict[str, int]:
        out = {"stored": 0, "duplicate": 0, "rejected": 0}
        for f in self.files:
            out[f.status] += 1
        return out

    def to_dict(self) -> dict:
        return {
            "counts": self.counts(),
            "job": self.job_id,
            "inspection_run": self.inspection_run,
            "detection_run": self.detection_run,
            "paired": self.paired,
            "pairing_refused": self.pairing_refused,
            "reference_job": self.reference_job,
            "files": [asdict(f) for f in self.files],
        }


@dataclass
class IncomingFile:
    """A file waiting to be stored: its user-facing name and a path on local disk."""

    name: str
    path: Path


def _display_name(name: str) -> str:
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    return name[:500] or "unnamed"


def image_store_one(
    *,
    project: Project,
    user,
    incoming: IncomingFile,
    is_normal: bool = False,
    split: str = "",
    source_group: str = "",
) -> FileOutcome:
    """Check and store one image file. Never raises for bad input: the outcome says why."""
    name = incoming.name
    try:
        size = incoming.path.stat().st_size
        if size > settings.LOUPE_MAX_UPLOAD_BYTES:
            return FileOutcome(
                name,
                "rejected",
                f"the file is {size / 1e6:.0f} MB, over the limit of "
                f"{settings.LOUPE_MAX_UPLOAD_BYTES / 1e6:.0f} MB (LOUPE_MAX_UPLOAD_BYTES)",
            )
        info = imaging.probe_image(incoming.path, max_pixels=settings.LOUPE_MAX_IMAGE_PIXELS)
    except imaging.ImageRejected as exc:
        return FileOutcome(name, "rejected", str(exc))
    except OSError as exc:
        return FileOutcome(name, "rejected", f"could not read the file ({exc.strerror or exc})")
    digest = imaging.sha256_of(incoming.path)
    existing = (
        Image.objects.filter(project=project, sha256=digest).values_list("id", flat=True).first()
    )
    if existing:
        return FileOutcome(
            name,
            "duplicate",
            f"the same image is already in the project (#{existing})",
            duplicate_of=existing,
        )
    image = Image(
        project=project,
        original_name=_display_name(name),
        sha256=digest,
        size_bytes=size,
        format=info.format,
        width=info.width,
        height=info.height,
        channels=info.channels,
        bit_depth=info.bit_depth,
        orientation=info.orientation,
        is_normal=is_normal,
        split=split,
        source_group=source_group,
        uploaded_by=user if user is not None and user.is_authenticated else None,
    )
    ext = {"jpeg": "jpg", "tiff": "tif"}.get(info.format, info.format)
    try:
        with transaction.atomic():
            with open(incoming.path, "rb") as fh:
                image.file.save(f"upload.{ext}", File(fh), save=False)
            image.save()
    except IntegrityError:
        if image.file:
            image.file.delete(save=False)
        dup = (
            Image.objects.filter(project=project, sha256=digest)
            .values_list("id", flat=True)
            .first()
        )
        return FileOutcome(
            name,
            "duplicate",
            f"the same image is already in the project (#{dup})",
            duplicate_of=dup,
        )
    return FileOutcome(name, "stored", image_id=image.id)


def images_upload(
    *,
    user,
    project: Project,
    files: Iterable[IncomingFile],
    is_normal: bool = False,
    split: str = "",
) -> UploadReport:
    """Store uploaded images (and the images inside uploaded .zip files); start their pyramid job."""
    require_role(user, project, Role.REVIEWER)
    report = UploadReport()
    with tempfile.TemporaryDirectory(prefix="loupe-upload-") as tmp:
        for index, incoming in enumerate(files):
            if incoming.name.lower().endswith(".zip"):
                size = incoming.path.stat().st_size
                if size > settings.LOUPE_MAX_UPLOAD_BYTES:
                    report.files.append(
                        FileOutcome(
                            incoming.name,
                            "rejected",
                            f"the zip is {size / 1e6:.0f} MB, over the limit of "
                            f"{settings.LOUPE_MAX_UPLOAD_BYTES / 1e6:.0f} MB (LOUPE_MAX_UPLOAD_BYTES)",
                        )
                    )
                    continue
                try:
                    extracted = safe_extract(
                        incoming.path,
                        Path(tmp) / f"zip{index}",
                        max_entries=settings.LOUPE_ZIP_MAX_ENTRIES,
                        max_total_bytes=settings.LOUPE_ZIP_MAX_TOTAL_BYTES,
                        max_ratio=settings.LOUPE_ZIP_MAX_RATIO,
                    )
                except ZipRejected as exc:
                    report.files.append(FileOutcome(incoming.name, "rejected", str(exc)))
                    continue
                for entry, reason in extracted.skipped:
                    report.files.append(FileOutcome(f"{incoming.name}/{entry}", "rejected", reason))
                for entry, path in extracted.files:
                    outcome = image_store_one(
                        project=project,
                        user=user,
                        incoming=IncomingFile(entry, path),
                        is_normal=is_normal,
                        split=split,
                    )
                    outcome.name = f"{incoming.name}/{entry}"
                    report.files.append(outcome)
            else:
                report.files.append(
                    image_store_one(
                        project=project,
                        user=user,
                        incoming=incoming,
                        is_normal=is_normal,
                        split=split,
                    )
                )
    ids = [f.image_id for f in report.stored]
    if ids:
        report.job_id = str(
            images_enqueue_derivatives(user=user, project=project, image_ids=ids).id
        )
        from inspection.services.references import references_pair_by_name

        report.paired, refused = references_pair_by_name(
            user=user, project=project, images=list(Image.objects.filter(pk__in=ids))
        )
        report.pairing_refused = [{"name": n, "reason": r} for n, r in refused]
        # the rest look for their most similar reference, when the project has references
        from inspection.services.references import references_propose

        unpaired = list(
            Image.objects.filter(
                pk__in=ids, reference__isnull=True, is_reference=False
            ).values_list("id", flat=True)
        )
        if unpaired and project.images.filter(is_reference=True).exists():
            report.reference_job = str(
                references_propose(user=user, project=project, image_ids=unpaired).id
            )
        if project.auto_inspect:
            runs = _auto_inspect(user=user, project=project, image_ids=ids)
            report.inspection_run = runs.get(ModelVersion.Kind.ANOMALY)
            report.detection_run = runs.get(ModelVersion.Kind.DETECTOR)
    return report


def _auto_inspect(
    *, user, project: Project, image_ids: list[int], paired: bool = False
) -> dict[str, int]:
    """Run each active model (anomaly, detector) on new uploads, when the project asks for it;
    model kind -> run id. Models that compare each image with its aligned reference (a change
    detector, a Siamese or two-stage detector) are left to :func:`images_auto_inspect_aligned`
    (new uploads are aligned by a job after this), or with ``paired`` they are the only ones."""
    from inspection.services.inspections import active_model, inspection_run_start

    runs = {}
    for kind in ModelVersion.Kind.values:
        model = active_model(project, kind)
        if model is None or model.compares_with_reference != paired:
            continue
        run = inspection_run_start(
            user=user,
            project=project,
            scope="selected",
            image_ids=image_ids,
            kind=kind,
            require_user_role=False,
        )
        runs[kind] = run.pk
    return runs


def images_auto_inspect_aligned(*, user, project: Project, image_ids: list[int]) -> dict[str, int]:
    """The reference alignment job's hook: images just aligned with their references are run by
    the project's active models that compare with references, when the project auto-inspects;
    model kind -> run id."""
    project.refresh_from_db(fields=["auto_inspect"])
    if not project.auto_inspect or not image_ids:
        return {}
    return _auto_inspect(user=user, project=project, image_ids=image_ids, paired=True)


def images_enqueue_derivatives(*, user, project: Project, image_ids: list[int]) -> Job:
    """Start the background job that builds pyramids and thumbnails for these images."""
    from inspection.services.jobs import job_enqueue

    return job_enqueue(kind="pyramid", user=user, project=project, payload={"image_ids": image_ids})


# An upload request or an import job stores its images first and starts their pyramid job at
# the end: images younger than this, or than a running import, may still get theirs.
UPLOAD_GRACE_SECONDS = 120


def images_without_pyramid(project: Project) -> list[int]:
    """Ids of the project's images with no zoomable view that nothing is going to build: their
    pyramid job was cancelled, failed or lost (not: queued, running, or not started yet by an
    upload or import still in progress)."""
    from datetime import timedelta

    from django.utils import timezone

    active = [Job.Status.QUEUED, Job.Status.RUNNING]
    newest_allowed = timezone.now() - timedelta(seconds=UPLOAD_GRACE_SECONDS)
    from inspection.services.jobs import job_kinds

    imports = [k.kind for k in job_kinds() if k.stores_images]
    importing = Job.objects.filter(project=project, kind__in=imports, status__in=active).order_by(
        "created_at"
    )
    first_import = importing.values_list("created_at", flat=True).first()
    if first_import is not None:
        newest_allowed = min(newest_allowed, first_import)
    waiting = Image.objects.filter(project=project, created_at__lt=newest_allowed).exclude(
        pyramid_status=Image.PyramidStatus.READY
    )
    ids = set(waiting.values_list("id", flat=True))
    in_flight = Job.objects.filter(project=project, kind="pyramid", status__in=active)
    for payload in in_flight.values_list("payload", flat=True):
        ids -= set(payload.get("image_ids", []))
    return sorted(ids)


def images_rebuild_derivatives(*, user, project: Project) -> Job | None:
    """Start one pyramid job for every image left without a zoomable view (reviewers and
    admins, who upload); None when there is nothing to rebuild."""
    require_role(user, project, Role.REVIEWER)
    with transaction.atomic():
        Project.objects.select_for_update().filter(pk=project.pk).first()  # one at a time
        ids = images_without_pyramid(project)
        if not ids:
            return None
        Image.objects.filter(pk__in=ids).update(pyramid_status=Image.PyramidStatus.PENDING)
        return images_enqueue_derivatives(user=user, project=project, image_ids=ids)


def image_update(*, user, image: Image, split: str | None = None) -> Image:
    """Set an image's split (reviewers and admins). Whether it is normal is a review decision:
    annotations.services.review.image_set_normal."""
    require_role(user, image.project, Role.REVIEWER)
    if split is not None:
        if split not in Image.Split.values:
            from django.core.exceptions import ValidationError

            raise ValidationError(
                {"split": f"Unknown split '{split}'; use train, val, test or ''."}
            )
        Image.objects.filter(pk=image.pk).update(split=split)
        image.split = split
    return image


def image_delete(*, user, image: Image) -> None:
    """Delete an image, its labels and its files (project admins)."""
    require_role(user, image.project, Role.ADMIN)
    from inspection.services.references import references_unpair_from

    with transaction.atomic():
        references_unpair_from(reference=image)
        image.delete()
        transaction.on_commit(lambda: image_files_delete(image=image))


def image_files_delete(*, image: Image) -> None:
    if image.file:
        image.file.storage.delete(image.file.name)
    storage.delete_tree(image.derived_prefix)


def image_build_derivatives(
    *, image: Image, progress: Callable[[float], bool] | None = None
) -> None:
    """Build the Deep Zoom pyramid and the thumbnail of one image and record where they are."""
    prefix = image.derived_prefix
    with storage.local_copy(image.file.name) as src:
        if storage.is_local():
            from django.core.files.storage import default_storage

            out_dir = Path(default_storage.path(f"{prefix}/pyramid"))
            imaging.build_pyramid(
                src, out_dir, tile_size=settings.LOUPE_TILE_SIZE, progress=progress
            )
            thumb = Path(default_storage.path(f"{prefix}/thumbnail.jpg"))
            imaging.make_thumbnail(src, thumb, size=settings.LOUPE_THUMBNAIL_SIZE)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                out_dir = Path(tmp) / "pyramid"
                imaging.build_pyramid(
                    src, out_dir, tile_size=settings.LOUPE_TILE_SIZE, progress=progress
                )
                imaging.make_thumbnail(
                    src, Path(tmp) / "thumbnail.jpg", size=settings.LOUPE_THUMBNAIL_SIZE
                )
                storage.save_tree(Path(tmp), prefix)
    Image.objects.filter(pk=image.pk).update(
        pyramid_status=Image.PyramidStatus.READY,
        pyramid_path=f"{prefix}/pyramid/image.dzi",
        thumbnail_path=f"{prefix}/thumbnail.jpg",
    )
