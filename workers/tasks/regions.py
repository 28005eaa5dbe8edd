"""Regions of interest in anomaly jobs (inspection.services.regions): images registered onto the
regions' reference, a region model's training crops, and a run's regions applied to each
prediction (workers/anomaly/roi.py). Glue for workers/tasks/anomaly.py and the line stations
(workers/tasks/stations.py); no job kind of its own."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import cv2
import numpy as np

from inspection import storage
from inspection.models import Image, InspectionRegion, ModelVersion
from inspection.services.regions import registration_onto
from workers.tasks.references import image_pixels
from workers.tasks.runner import JobError

logger = logging.getLogger(__name__)


class RegistrationRefused(Exception):
    """An image could not be registered onto the regions' reference (the reason, for people)."""


class ReferenceGone(JobError):
    """The regions' reference cannot be read any more (deleted while a run ran)."""


class Registrar:
    """Each image's registration onto ``reference`` (3x3, reference pixels -> image pixels):
    none for the reference itself, the stored alignment when the image is paired with the
    reference and aligned, else the same registration (workers/change/align.py) made here."""

    def __init__(self, reference: Image, workdir: Path) -> None:
        self.reference = reference
        self.workdir = workdir
        self._reference_pixels: np.ndarray | None = None

    def matrix(self, image: Image, pixels) -> np.ndarray | None:
        """``pixels``: the image upright, as read_pixels gives it, or a function that reads
        them (called only when the registration has to be made here)."""
        stored = registration_onto(image, self.reference)  # the workspace draws with it too
        if stored.state == "reference":
            return None
        if stored.state == "aligned":
            return np.asarray(stored.matrix, np.float64)
        if callable(pixels):
            pixels = pixels()
        return self.align(image.original_name, pixels)

    def align(self, name: str, pixels: np.ndarray) -> np.ndarray:
        """Register ``pixels`` (a frame or an image, as read_pixels gives it) onto the
        reference here; RegistrationRefused with the reason when the pair cannot be trusted."""
        from workers.change.align import AlignmentError, align

        if self._reference_pixels is None:
            try:
                self._reference_pixels = image_pixels(self.reference, self.workdir)
            except ValueError as exc:
                raise ReferenceGone(f"The regions' reference cannot be read: {exc}") from None
        try:
            result = align(pixels, self._reference_pixels)  # any pixel type read_pixels gives
        except AlignmentError as exc:
            result = None
            reason = str(exc)
        if result is None or not result.ok:
            reason = result.reason if result is not None else reason
            raise RegistrationRefused(
                f"{name} could not be registered onto "
                f"{self.reference.original_name}, which the regions are drawn on ({reason})"
            )
        return result.homography


def training_crops(
    version: ModelVersion, images: list[Image], paths: list[Path], folder: Path
) -> tuple[list[Path], dict]:
    """The region's crop of each normal image (registered onto the reference, as inspections
    crop it) as PNG files, and what was done (``region``, ``box``, ``skipped`` with reasons)."""
    from workers import anomaly
    from workers.anomaly.image_io import read_pixels

    region = (
        InspectionRegion.objects.select_related("reference")
        .filter(pk=version.params.get("region"), project=version.project_id)
        .first()
    )
    if region is None:
        raise JobError("The region this model was to be trained for was deleted.")
    reference = region.reference
    folder.mkdir(parents=True, exist_ok=True)
    registrar = Registrar(reference, folder)
    box = anomaly.roi_box(region.polygon, (reference.height, reference.width))
    crops, skipped = [], []
    for image, path in zip(images, paths, strict=True):
        pixels = read_pixels(path)
        try:
            matrix = registrar.matrix(image, pixels)
        except RegistrationRefused as exc:
            skipped.append({"image": image.pk, "name": image.original_name, "reason": str(exc)})
            continue
        crop = anomaly.registered_crop(pixels, matrix, box)
        if crop.dtype not in (np.uint8, np.uint16):
            # float pixels (float or 32-bit TIFFs) in [0, 1]: PNG keeps 16 bits of them, the
            # same values the network gets from the float image at inspection
            crop = np.round(np.clip(crop, 0.0, 1.0) * 65535).astype(np.uint16)
        if crop.ndim == 3 and crop.shape[2] == 3:
            crop = cv2.cvtColor(crop, cv2.COLOR_RGB2BGR)
        target = folder / f"{image.pk}.png"
        if not cv2.imwrite(str(target), crop):
            raise JobError(f"The crop of {image.original_name} could not be written.")
        crops.append(target)
    if len(crops) < 2:
        why = "; ".join(s["reason"] for s in skipped[:3])
        raise JobError(
            f"Only {len(crops)} normal image(s) could be registered onto "
            f"{reference.original_name} to train the region '{region.name}': {why}"
        )
    info = {
        "region": region.pk,
        "name": region.name,
        "polygon": region.polygon,  # the outline learnt: a redrawn region needs a new model
        "box": list(box),
        "trained_on": len(crops),
        "skipped": skipped,
    }
    return crops, info


class RunRegions:
    """A run's regions (as its params keep them) applied to each prediction of the run.

    ``models=False`` (detector and change runs): the regions mask and tag only; a region's own
    anomaly model and threshold belong to anomaly runs (a detector's confidences and a change
    map are on other scales)."""

    def __init__(
        self,
        rows: list[dict],
        outside: str,
        stack: contextlib.ExitStack,
        workdir: Path,
        *,
        models: bool = True,
    ):
        from workers import anomaly

        self.notes: list[str] = []
        self.specs: list = []
        self._versions: dict[int, ModelVersion] = {}  # region id -> the model inspecting it
        reference_ids = {row["reference_id"] for row in rows}
        reference = Image.objects.filter(pk__in=reference_ids).first()
        if reference is None or len(reference_ids) != 1:
            # deleting the reference deleted its regions: the project has none now
            self.notes.append(
                "the image the regions were drawn on was deleted (and its regions with it): "
                "the images were inspected whole"
            )
            return
        self.reference = reference
        self.outside = outside != "ignore"
        self.registrar = Registrar(reference, workdir)
        versions = ModelVersion.objects.in_bulk(
            [r["model_version_id"] for r in rows if r["model_version_id"]]
        )
        for row in rows:
            model = None
            version = versions.get(row["model_version_id"]) if models else None
            if models and row["mode"] == InspectionRegion.Mode.INSPECT and row["model_version_id"]:
                if version is None or not version.artifact:
                    self.notes.append(
                        f"the model of region '{row['name']}' was deleted: the project's model "
                        "inspected it"
                    )
                else:
                    folder = stack.enter_context(
                        storage.local_tree(str(Path(version.artifact).parent))
                    )
                    try:
                        model = anomaly.load_model(folder / Path(version.artifact).name)
                    except anomaly.AnomalyError as exc:
                        raise JobError(
                            f"The model of region '{row['name']}' could not be loaded: {exc}"
                        ) from None
            if model is not None:
                self._versions[row["id"]] = version
            trained = ((version.metrics or {}).get("region") or {}) if version else {}
            self.specs.append(
                anomaly.RoiSpec(
                    key=row["id"],
                    name=row["name"],
                    polygon=row["polygon"],
                    exclude=row["mode"] == InspectionRegion.Mode.EXCLUDE,
                    model=model,
                    threshold=row["threshold"] if models else None,
                    # the crop its model learnt, exactly (the outline may have moved since)
                    box=tuple(trained["box"]) if model is not None and "box" in trained else None,
                )
            )

    def model_versions(self) -> dict[int, ModelVersion]:
        """The model version of each region inspected by a model of its own, by region id (the
        ``roi`` its suggestions carry): their suggestions are that version's, not the run's."""
        return {
            spec.key: self._versions[spec.key] for spec in self.specs if spec.key in self._versions
        }

    def apply(self, image: Image, path: str | None, prediction, config, pixels=None):
        """``prediction`` with the regions applied; RegistrationRefused when the image cannot be
        registered onto the reference (it is then not inspected: the regions would land in the
        wrong place). The image's pixels are read from ``path``, or got from ``pixels()``, only
        when needed."""
        from workers import anomaly

        if not self.specs:
            return prediction
        pixels = pixels or _reader(path)
        try:
            matrix = self.registrar.matrix(image, pixels)
        except ReferenceGone:
            return self._gone(prediction)
        needs_pixels = any(spec.model is not None for spec in self.specs)
        size = (self.reference.height, self.reference.width)
        return anomaly.apply_rois(
            prediction,
            pixels() if needs_pixels else None,
            matrix,
            self.specs,
            size,
            config,
            outside=self.outside,
        )

    def place(self, image: Image, path: str, centres: list) -> list[tuple[bool, int | None]]:
        """For boxes (a detector run's, by their centres ``[x, y]`` in image pixels):
        ``(kept, region id)`` each, as ``apply`` treats a map's pixels there; RegistrationRefused
        as ``apply``."""
        from workers import anomaly

        if not self.specs:
            return [(True, None)] * len(centres)
        try:
            matrix = self.registrar.matrix(image, _reader(path))
        except ReferenceGone:
            self._gone(None)
            return [(True, None)] * len(centres)
        return anomaly.rois_at_points(centres, self.specs, matrix, outside=self.outside)

    def _gone(self, prediction):
        """The reference was deleted (its regions with it) while the run went on: the rest is
        inspected whole, as the project now stands, and the run says so."""
        if not Image.objects.filter(pk=self.reference.pk).exists():
            self.specs = []
            self.notes.append(
                "the image the regions were drawn on was deleted during the run (and its "
                "regions with it): the images after it were inspected whole"
            )
            return prediction
        raise JobError(  # still there, but unreadable: the run cannot apply its regions
            f"The regions' reference {self.reference.original_name} cannot be read."
        )

    def apply_frame(self, name: str, pixels: np.ndarray, prediction, config):
        """The same for a line station's frame (no stored alignment: registered here)."""
        from workers import anomaly

        if not self.specs:
            return prediction
        try:
            matrix = self.registrar.align(name, pixels)
        except ReferenceGone:
            return self._gone(prediction)
        size = (self.reference.height, self.reference.width)
        return anomaly.apply_rois(
            prediction, pixels, matrix, self.specs, size, config, outside=self.outside
        )


def _reader(path: str):
    """The upright image at ``path``, decoded on the first call only (when a registration has to
    be made here or a region's model needs it)."""
    from workers.anomaly.image_io import read_pixels

    read: list = []

    def pixels():
        if not read:
            read.append(read_pixels(path))
        return read[0]

    return pixels
