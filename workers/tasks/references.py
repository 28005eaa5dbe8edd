"""Job kind 'reference_align': register each image's reference onto it (workers/change), build
the aligned reference's Deep Zoom pyramid and the difference image, and record the alignment
(inspection.services.references is the one writer)."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

import cv2
import numpy as np
from django.core.exceptions import PermissionDenied, ValidationError

from inspection import imaging, storage
from inspection.models import Image, Job
from inspection.services.images import images_auto_inspect_aligned
from inspection.services.references import reference_alignment_store
from workers.tasks.runner import JobContext, JobError, job_task

#: The difference image is shown as an overlay: no larger than this on its long side.
DIFFERENCE_MAX_SIDE = 2048


def image_pixels(image: Image, workdir: Path) -> np.ndarray:
    """The image upright as uint8 (grey HxW or RGB HxWx3), as the change library takes it.
    Raises ValueError naming the image as people know it when its file is missing or damaged."""
    from workers.anomaly.image_io import read_pixels

    try:
        upright = imaging.upright_copy(
            storage.fetched(image.file.name, workdir), image.orientation, workdir
        )
        array = read_pixels(upright)
    except Exception as exc:  # noqa: BLE001 - missing, truncated, not an image...
        what = "is missing" if isinstance(exc, FileNotFoundError) else "cannot be read"
        raise ValueError(f"{image.original_name} {what} ({type(exc).__name__})") from exc
    if array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)
    elif array.dtype != np.uint8:
        array = np.clip(array * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return array


def display_scaled(difference: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The grey-level difference scaled for the overlay, whose colours start at 128: 128 is
    three times the 98th percentile of the pair's differences (what alignment noise and JPEG
    leave on unchanged surface; at least 8 grey levels), so noise stays clear and a real change
    shows at full colour."""
    inside = difference[valid]
    noise = float(np.percentile(inside, 98)) if inside.size else 0.0
    gain = 128.0 / max(3.0 * noise, 8.0)
    return np.clip(difference.astype(np.float32) * gain + 0.5, 0, 255).astype(np.uint8)


def align_one(image: Image, reference: Image, *, tile_size: int) -> tuple[dict, str, str]:
    """Align ``reference`` onto ``image``; returns (alignment dict, pyramid path, difference path)
    with empty paths when the alignment is refused."""
    from django.core.files.storage import default_storage

    from workers.change.align import align, difference_image, warp_reference

    with tempfile.TemporaryDirectory(prefix="loupe-align-") as tmp:
        work = Path(tmp)
        pixels = image_pixels(image, work)
        ref_pixels = image_pixels(reference, work)
        result = align(pixels, ref_pixels)
        stamp = uuid.uuid4().hex[:12]
        alignment = {**result.to_dict(), "status": "ok" if result.ok else "failed", "stamp": stamp}
        alignment["reference"] = reference.pk
        if not result.ok:
            return alignment, "", ""
        height, width = pixels.shape[:2]
        warped, valid = warp_reference(ref_pixels, result, (height, width))
        difference = display_scaled(difference_image(pixels, warped, valid), valid)
        folder = f"{image.derived_prefix}/reference-{stamp}"
        out = work / "out"
        out.mkdir()
        warped_file = work / "warped.png"
        bgr = warped if warped.ndim == 2 else cv2.cvtColor(warped, cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(warped_file), bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        imaging.build_pyramid(warped_file, out / "pyramid", tile_size=tile_size)
        scale = min(1.0, DIFFERENCE_MAX_SIDE / max(height, width))
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            difference = cv2.resize(difference, size, interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(out / "difference.png"), difference)
        if storage.is_local():
            target = Path(default_storage.path(folder))
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(out), str(target))
        else:
            storage.save_tree(out, folder)
    return alignment, f"{folder}/pyramid/image.dzi", f"{folder}/difference.png"


@job_task("reference_align", queue="cpu", label="Reference alignment")
def align_references(job: Job, ctx: JobContext) -> dict:
    from django.conf import settings

    ids = list(job.payload.get("image_ids", []))
    aligned, refused, failed = [], [], []
    for index, image_id in enumerate(ids):
        image = Image.objects.select_related("reference").filter(pk=image_id).first()
        if image is None or image.reference is None:
            continue  # deleted or unpaired meanwhile: nothing to do
        ctx.progress(index / max(len(ids), 1), f"Aligning {image.original_name}", force=True)
        reference = image.reference
        try:
            alignment, pyramid, difference = align_one(
                image, reference, tile_size=settings.LOUPE_TILE_SIZE
            )
        except Exception as exc:  # one bad pair fails alone, with its reason
            alignment = {
                "status": "failed",
                "reason": f"the pair could not be read or aligned: {exc}",
                "reference": reference.pk,
            }
            pyramid = difference = ""
            failed.append({"image": image_id, "name": image.original_name, "error": str(exc)})
        stored = reference_alignment_store(
            image_id=image.pk,
            reference_id=reference.pk,
            alignment=alignment,
            pyramid_path=pyramid,
            difference_path=difference,
        )
        if not stored and pyramid:
            storage.delete_tree(str(Path(pyramid).parent.parent))  # the pair changed meanwhile
        if alignment["status"] == "ok":
            aligned.append(image_id)
        elif not failed or failed[-1]["image"] != image_id:
            refused.append(
                {"image": image_id, "name": image.original_name, "reason": alignment["reason"]}
            )
    if ids and failed and not aligned and not refused:
        raise JobError(
            "No pair could be aligned: " + "; ".join(f"{f['name']}: {f['error']}" for f in failed)
        )
    message = f"{len(aligned)} aligned"
    if refused:
        message += f", {len(refused)} refused (the images do not match their reference)"
    if failed:
        message += f", {len(failed)} failed"
    runs = {}
    if aligned and job.project_id:  # uploads of an auto-inspecting project: compare them now
        try:
            runs = images_auto_inspect_aligned(
                user=job.created_by, project=job.project, image_ids=aligned
            )
        except (ValidationError, PermissionDenied) as exc:  # the alignments stand regardless
            message += f"; no automatic run: {'; '.join(getattr(exc, 'messages', [str(exc)]))}"
        if runs:
            message += "; " + ", ".join(f"{kind} run #{pk} started" for kind, pk in runs.items())
    return {
        "aligned": aligned,
        "refused": refused,
        "failed": failed,
        "runs": runs,
        "message": message,
    }


_DESCRIPTOR = None  # one per worker process


def _descriptor_model():
    global _DESCRIPTOR
    if _DESCRIPTOR is None:
        from workers.change.descriptor import DescriptorModel

        _DESCRIPTOR = DescriptorModel()
    return _DESCRIPTOR


@job_task("reference_propose", queue="cpu", label="Reference proposal")
def propose_references(job: Job, ctx: JobContext) -> dict:
    """For each image without a reference: rank the project's references by a global descriptor,
    align the best few in turn, and pair the image with the first that aligns."""
    from django.conf import settings

    from inspection.services.references import PROPOSE_CANDIDATES, reference_proposal_store
    from workers.change.descriptor import rank

    model = _descriptor_model()
    ids = list(job.payload.get("image_ids", []))
    references = list(Image.objects.filter(project_id=job.project_id, is_reference=True))
    paired, unpaired, left = [], [], []
    descriptors: dict[int, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="loupe-propose-") as tmp:
        for ref in references:
            try:
                descriptors[ref.pk] = model.describe(
                    image_pixels(ref, Path(tempfile.mkdtemp(dir=tmp)))
                )
            except Exception as exc:  # noqa: BLE001 - an unreadable reference is not proposed
                left.append({"image": ref.pk, "name": ref.original_name, "reason": str(exc)})
        for n, image_id in enumerate(ids):
            image = Image.objects.filter(pk=image_id).first()
            if image is None or image.reference_id is not None or image.is_reference:
                continue  # deleted, paired meanwhile, or a reference itself
            ctx.progress(
                n / max(len(ids), 1), f"Looking for {image.original_name}'s reference", force=True
            )
            try:
                query = model.describe(image_pixels(image, Path(tempfile.mkdtemp(dir=tmp))))
            except Exception as exc:  # noqa: BLE001 - one unreadable image fails alone
                unpaired.append(
                    {"image": image_id, "name": image.original_name, "reason": str(exc)}
                )
                continue
            candidates = {k: v for k, v in descriptors.items() if k != image.pk}
            tried = []
            for ref_id, similarity in rank(query, candidates)[:PROPOSE_CANDIDATES]:
                reference = next(r for r in references if r.pk == ref_id)
                alignment, pyramid, difference = align_one(
                    image, reference, tile_size=settings.LOUPE_TILE_SIZE
                )
                if alignment["status"] == "ok":
                    alignment.update(proposed=True, similarity=round(similarity, 4))
                    if reference_proposal_store(
                        image_id=image.pk,
                        reference_id=reference.pk,
                        alignment=alignment,
                        pyramid_path=pyramid,
                        difference_path=difference,
                    ):
                        paired.append(
                            {
                                "image": image_id,
                                "reference": reference.pk,
                                "similarity": round(similarity, 4),
                            }
                        )
                    else:
                        storage.delete_tree(str(Path(pyramid).parent.parent))
                    break
                tried.append(f"{reference.original_name} ({alignment['reason']})")
            else:
                unpaired.append(
                    {
                        "image": image_id,
                        "name": image.original_name,
                        "reason": "no reference aligns: " + "; ".join(tried)
                        if tried
                        else "no reference to compare with",
                    }
                )
    message = f"{len(paired)} image(s) paired with a proposed reference"
    if unpaired:
        message += f", {len(unpaired)} without one ({unpaired[0]['name']}: {unpaired[0]['reason']})"
    return {
        "paired": paired,
        "unpaired": unpaired,
        "unreadable_references": left,
        "message": message[:500],
    }
