"""Core data: projects (one product category each), memberships, images and background jobs."""

import uuid

from django.conf import settings
from django.db import models

from inspection.listcache import WatchedModel


class Role(models.TextChoices):
    ANNOTATOR = "annotator", "Annotator"
    REVIEWER = "reviewer", "Reviewer"
    ADMIN = "admin", "Project admin"


ROLE_RANK = {Role.ANNOTATOR: 1, Role.REVIEWER: 2, Role.ADMIN: 3}


class Project(WatchedModel):
    """One product category: its images, defect categories, members and (later) models."""

    LIST_CACHE_PROJECT = "id"  # cached lists (inspection.listcache)

    # unique among the projects a user can see (services.projects), not site-wide: a refusal
    # would tell a non-member that a project of that name exists (docs/permissions.md)
    name = models.CharField(max_length=200, db_index=True)
    description = models.TextField(blank=True)
    auto_inspect = models.BooleanField(
        default=False, help_text="Run the active anomaly model and detector on every new upload."
    )
    retrain_after_labels = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Freeze a new dataset version and train the active detector again once this "
        "many approved labels were added since its dataset version (empty: never).",
    )
    inspection = models.JSONField(
        default=dict,
        blank=True,
        help_text="How heatmaps become suggestions (threshold, minimum area, suggestions per "
        "image, specular mask); missing keys take inspection.services.projects.INSPECTION_DEFAULTS.",
    )
    reference_rule = models.TextField(
        default="_test=_temp",
        blank=True,
        help_text="How uploads are paired with their reference by file name: 'image "
        "suffix=reference suffix' per line ('_test=_temp': a_test.jpg is compared with "
        "a_temp.jpg); empty: never by name.",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Membership(WatchedModel):
    """A user's role in one project."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.ANNOTATOR)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "user"], name="unique_membership"),
        ]
        ordering = ["project", "user__username"]

    def __str__(self) -> str:
        return f"{self.user} is {self.role} of {self.project}"


def image_upload_path(instance: "Image", filename: str) -> str:
    suffix = filename.rsplit(".", 1)[-1].lower() if "." in filename else "bin"
    return f"projects/{instance.project_id}/originals/{instance.uid}.{suffix}"


class Image(WatchedModel):
    """An uploaded image. The original file is never modified; derived files sit beside it.

    width/height are the displayed size, i.e. after EXIF orientation is applied; annotation
    coordinates use that frame.
    """

    class Status(models.TextChoices):
        NEW = "new", "New"
        INSPECTED = "inspected", "Inspected"
        LABELED = "labeled", "Labeled"
        REVIEWED = "reviewed", "Reviewed"

    class Split(models.TextChoices):
        NONE = "", "None"
        TRAIN = "train", "Train"
        VAL = "val", "Validation"
        TEST = "test", "Test"

    class PyramidStatus(models.TextChoices):
        PENDING = "pending", "Pending"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    uid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="images")
    file = models.FileField(upload_to=image_upload_path, max_length=300)
    original_name = models.CharField(max_length=500)
    sha256 = models.CharField(max_length=64)
    size_bytes = models.BigIntegerField()
    format = models.CharField(max_length=10)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    channels = models.PositiveSmallIntegerField(default=3)
    bit_depth = models.PositiveSmallIntegerField(default=8)
    orientation = models.PositiveSmallIntegerField(default=1, help_text="EXIF orientation tag")
    is_normal = models.BooleanField(
        default=False, help_text="Defect-free: used to train anomaly models."
    )
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.NEW)
    split = models.CharField(max_length=10, choices=Split.choices, default="", blank=True)
    source_group = models.CharField(
        max_length=100, blank=True, help_text="Where it came from, e.g. MVTec 'test/crack'."
    )

    class Verdict(models.TextChoices):
        NONE = "", "No verdict"
        OK = "ok", "OK: no defect"
        NEEDS_REVIEW = "needs_review", "Needs review"

    verdict = models.CharField(max_length=20, choices=Verdict.choices, default="", blank=True)
    verdict_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    verdict_at = models.DateTimeField(null=True, blank=True)
    detector_checked_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When a detector last looked at the image, whatever it found (a detection "
        "run, or the active detector classifying an inspection's regions); written by "
        "annotations.services.image_state only.",
    )
    is_reference = models.BooleanField(
        default=False,
        help_text="A golden sample, template or 'before' picture other images are compared with.",
    )
    reference = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="paired_images",
        help_text="The reference this image is compared with (same project).",
    )
    alignment = models.JSONField(
        default=dict,
        blank=True,
        help_text="How the reference was registered onto this image: status (pending, ok, "
        "failed), method, inliers, matches, residual_px, overlap, matrix (reference pixels -> "
        "image pixels), reason; written by inspection.services.references only.",
    )
    reference_pyramid_path = models.CharField(
        max_length=300, blank=True, help_text="Deep Zoom pyramid of the aligned reference."
    )
    difference_path = models.CharField(
        max_length=300, blank=True, help_text="Aligned difference (grey PNG, display size)."
    )
    pyramid_status = models.CharField(
        max_length=10, choices=PyramidStatus.choices, default=PyramidStatus.PENDING
    )
    pyramid_path = models.CharField(max_length=300, blank=True)
    thumbnail_path = models.CharField(max_length=300, blank=True)
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "sha256"], name="unique_image_per_project"),
        ]
        ordering = ["id"]
        indexes = [
            models.Index(fields=["project", "status"]),
            models.Index(fields=["project", "is_normal"]),
        ]

    def __str__(self) -> str:
        return self.original_name

    @property
    def megapixels(self) -> float:
        return round(self.width * self.height / 1e6, 1)

    @property
    def derived_prefix(self) -> str:
        return f"projects/{self.project_id}/derived/{self.uid}"


class Job(models.Model):
    """Background work. The row is the source of truth; Celery only carries its id."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(max_length=50)
    queue = models.CharField(max_length=20)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    progress = models.FloatField(default=0.0, help_text="0-100")
    message = models.CharField(max_length=500, blank=True)
    error = models.TextField(blank=True, help_text="What went wrong, in plain words.")
    traceback = models.TextField(blank=True)
    payload = models.JSONField(default=dict, blank=True)
    result = models.JSONField(default=dict, blank=True)
    project = models.ForeignKey(
        Project, null=True, blank=True, on_delete=models.CASCADE, related_name="jobs"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="jobs"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    cancel_requested = models.BooleanField(default=False)
    attempts = models.PositiveSmallIntegerField(default=0)
    worker = models.CharField(max_length=200, blank=True)
    sent_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When its message last reached the broker; empty: not yet (the sweep sends it).",
    )

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "heartbeat_at"])]

    def __str__(self) -> str:
        return f"{self.kind} {self.id} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    @property
    def duration_seconds(self) -> float | None:
        if not self.started_at:
            return None
        from django.utils import timezone

        end = self.finished_at or timezone.now()
        return round((end - self.started_at).total_seconds(), 2)


class ModelVersion(WatchedModel):
    """A trained model of a project: what it is, what it saw, how good it was, where it lives."""

    class Kind(models.TextChoices):
        ANOMALY = "anomaly", "Anomaly model"
        DETECTOR = "detector", "Detector"
        CHANGE = "change", "Change detector (against references)"

    class Status(models.TextChoices):
        TRAINING = "training", "Training"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="model_versions")
    number = models.PositiveIntegerField(help_text="1, 2, 3... per project and kind.")
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.ANOMALY)
    architecture = models.CharField(max_length=50)
    params = models.JSONField(default=dict, blank=True)
    image_ids = models.JSONField(
        default=list, blank=True, help_text="The images it was trained on."
    )
    metrics = models.JSONField(default=dict, blank=True)
    artifact = models.CharField(
        max_length=300, blank=True, help_text="Storage name of the artifact."
    )
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.TRAINING)
    is_active = models.BooleanField(default=False)
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["project", "kind", "number"], name="unique_model_number"
            ),
            models.UniqueConstraint(
                fields=["project", "kind"],
                condition=models.Q(is_active=True),
                name="one_active_model_per_kind",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.project} {self.architecture} v{self.number}"

    #: detectors' ``params["reference"]`` that read each image beside its aligned reference: the
    #: Siamese and the stacked PP-YOLOE-SOD and the two-stage change detector
    #: (docs/references.md)
    PAIRED_DETECTORS = ("siamese", "stacked", "two-stage")

    @property
    def compares_with_reference(self) -> bool:
        """Whether it reads each image beside its aligned reference (a change detector, or a
        Siamese, stacked or two-stage detector): it can only run on paired images."""
        return self.kind == self.Kind.CHANGE or (
            self.kind == self.Kind.DETECTOR
            and (self.params or {}).get("reference") in self.PAIRED_DETECTORS
        )


class InspectionRun(WatchedModel):
    """A model applied to a set of images: heatmaps, suggestions, and the run's figures."""

    class Scope(models.TextChoices):
        SELECTED = "selected", "Selected images"
        NEW = "new", "Images not inspected by this model yet"
        ALL = "all", "Every image"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="inspection_runs")
    model_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="runs"
    )
    scope = models.CharField(max_length=20, choices=Scope.choices, default=Scope.ALL)
    image_ids = models.JSONField(default=list, blank=True)
    params = models.JSONField(default=dict, blank=True)
    results = models.JSONField(default=dict, blank=True, help_text="Per-image outcome and errors.")
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    station = models.ForeignKey(
        "Station",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="runs",
        help_text="The station whose sampled frames this run inspected (no job then).",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"run {self.pk} of {self.project}"


class ImageHeatmap(WatchedModel):
    """An anomaly heatmap of an image (8-bit grey PNG, any size: it is stretched over the image).

    Written by inspection runs; the workspace overlays the latest one.
    """

    LIST_CACHE_PROJECT = "image__project_id"  # cached lists (inspection.listcache)

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="heatmaps")
    run = models.ForeignKey(
        InspectionRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="heatmaps"
    )
    score = models.FloatField(null=True, blank=True, help_text="Calibrated image score.")
    path = models.CharField(max_length=300, help_text="Storage name of the PNG.")
    label = models.CharField(
        max_length=200, blank=True, help_text="What made it, e.g. the model version."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"heatmap of {self.image_id} ({self.label})"


class InspectionRegion(WatchedModel):
    """A named region of interest of a project's parts, drawn on one reference image: inspected
    with its own anomaly model and threshold, or excluded (never suggested). Images are
    registered to the reference so the polygon lands on the same place of every part
    (workers/anomaly/roi.py); written by inspection.services.regions only."""

    class Mode(models.TextChoices):
        INSPECT = "inspect", "Inspect"
        EXCLUDE = "exclude", "Exclude (never suggested)"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="regions")
    reference = models.ForeignKey(
        Image,
        on_delete=models.CASCADE,
        related_name="regions",
        help_text="The image the polygon is drawn on; every region of a project shares it.",
    )
    name = models.CharField(max_length=100)
    polygon = models.JSONField(help_text="[[x, y], ...] in the reference's upright pixels.")
    mode = models.CharField(max_length=10, choices=Mode.choices, default=Mode.INSPECT)
    model_version = models.ForeignKey(
        ModelVersion,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Its own model (trained on this region's crops); none: the project's model.",
    )
    threshold = models.FloatField(
        null=True,
        blank=True,
        help_text="Calibrated score a suggestion needs here (0.5 = the model's threshold); "
        "none: the project's.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["project", "name"], name="unique_region_name"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.project})"


class Station(models.Model):
    """A place at the line where a camera, a video or a watched folder is inspected frame by
    frame with the project's active model (``manage.py loupe_station NAME``, docs/stations.md).

    The station process owns ``status``, ``message``, ``heartbeat_at`` and ``latest_frame``;
    people own the rest. ``enabled`` is how the station page starts and stops a running process.
    """

    class Status(models.TextChoices):
        STOPPED = "stopped", "Stopped"
        RUNNING = "running", "Running"
        WAITING = "waiting", "Waiting for the source"
        PAUSED = "paused", "Paused"
        FAILED = "failed", "Failed"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="stations")
    name = models.SlugField(
        max_length=100, unique=True, help_text="Also the name `loupe_station` is started with."
    )
    source = models.CharField(
        max_length=500,
        help_text="A camera index (0), an rtsp:// or http:// stream, a video file or a folder "
        "on the station's machine.",
    )
    enabled = models.BooleanField(default=True, help_text="Inspect while the process runs.")
    start_with_loupe = models.BooleanField(
        default=False, help_text="`loupe run` starts this station's process."
    )
    unsure_margin = models.FloatField(
        default=0.1, help_text="Scores within this distance of the threshold (0.5) are unsure."
    )
    ok_sample_rate = models.FloatField(
        default=0.01, help_text="Share of OK frames stored for review (0-1)."
    )
    sample_quota = models.PositiveIntegerField(
        default=500, help_text="Most frames this station stores as project images."
    )
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.STOPPED)
    message = models.CharField(max_length=500, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    latest_frame = models.CharField(max_length=300, blank=True, help_text="Storage name (JPEG).")
    latest = models.JSONField(default=dict, blank=True, help_text="The latest frame's verdict.")
    # running totals, kept with the rows (the live page reads them every second: counting
    # millions of rows each time would not do)
    count_ok = models.PositiveBigIntegerField(default=0)
    count_ng = models.PositiveBigIntegerField(default=0)
    count_unsure = models.PositiveBigIntegerField(default=0)
    count_failed = models.PositiveBigIntegerField(default=0)
    count_sampled = models.PositiveBigIntegerField(default=0)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class StationResult(models.Model):
    """One inspected frame: written in batches by the station process, once per ``key``."""

    class Verdict(models.TextChoices):
        OK = "ok", "OK"
        NG = "ng", "NG"
        UNSURE = "unsure", "Unsure"
        FAILED = "failed", "Failed"

    station = models.ForeignKey(Station, on_delete=models.CASCADE, related_name="results")
    key = models.CharField(max_length=300, help_text="Unique per station: file#frame, file name.")
    at = models.DateTimeField(db_index=True)
    source_name = models.CharField(max_length=300)
    frame_number = models.BigIntegerField(null=True, blank=True)
    verdict = models.CharField(max_length=10, choices=Verdict.choices)
    score = models.FloatField(null=True, blank=True)
    regions = models.JSONField(default=list, blank=True)
    latency_ms = models.FloatField()
    skipped = models.PositiveIntegerField(default=0, help_text="Live frames that went by unseen.")
    error = models.CharField(max_length=300, blank=True)
    model_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    image = models.ForeignKey(
        Image, null=True, blank=True, on_delete=models.SET_NULL, related_name="station_results"
    )

    class Meta:
        ordering = ["-at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["station", "key"], name="station_result_once"),
        ]
        indexes = [
            models.Index(fields=["station", "at"]),
            # where a video resumes: the last frame recorded of that file
            models.Index(fields=["station", "source_name", "frame_number"]),
        ]

    def __str__(self) -> str:
        return f"{self.station} {self.key} {self.verdict}"


class StationEvent(models.Model):
    """Something that happened to a station: started, stopped, lost or regained its source."""

    station = models.ForeignKey(Station, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField(auto_now_add=True)
    kind = models.CharField(max_length=20)
    message = models.CharField(max_length=500, blank=True)
    gap_s = models.FloatField(default=0.0, help_text="Seconds without frames (reconnected).")

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.station} {self.kind}"
