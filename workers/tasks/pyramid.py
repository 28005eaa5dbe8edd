"""Job kind 'pyramid': Deep Zoom pyramids and thumbnails for freshly uploaded images."""

from inspection import imaging
from inspection.models import Image, Job
from inspection.services.images import image_build_derivatives
from workers.tasks.runner import JobCancelled, JobContext, JobError, job_task


@job_task("pyramid", queue="cpu", label="Image pyramids")
def build_pyramids(job: Job, ctx: JobContext) -> dict:
    ids = list(job.payload.get("image_ids", []))
    built, failed, missing = [], [], []
    for index, image_id in enumerate(ids):
        image = Image.objects.filter(pk=image_id).first()
        if image is None:
            missing.append(image_id)  # deleted meanwhile: nothing to do for it
            continue
        label = f"{image.original_name} ({index + 1}/{len(ids)})"
        ctx.progress(index / len(ids), label, force=True)

        def on_tiles(fraction: float, _i=index, _label=label) -> bool:
            # runs inside a libvips callback, which swallows exceptions: answer False to stop
            try:
                ctx.progress((_i + fraction) / len(ids), _label)
            except JobCancelled:
                return False
            return True

        try:
            image_build_derivatives(image=image, progress=on_tiles)
        except imaging.PyramidCancelled:
            ctx.check_cancelled()
            raise
        except Exception as exc:  # one bad image fails alone
            Image.objects.filter(pk=image_id).update(pyramid_status=Image.PyramidStatus.FAILED)
            failed.append({"image": image_id, "name": image.original_name, "error": str(exc)})
            continue
        built.append(image_id)
    if ids and not built and failed:
        raise JobError(
            "No pyramid could be built: " + "; ".join(f"{f['name']}: {f['error']}" for f in failed)
        )
    return {
        "built": built,
        "failed": failed,
        "missing": missing,
        "message": f"{len(built)} pyramid(s) built" + (f", {len(failed)} failed" if failed else ""),
    }
