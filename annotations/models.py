"""Defect categories and annotations (human or imported labels)."""

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

from inspection.listcache import WatchedModel
from inspection.models import Image, Project


class DefectCategory(WatchedModel):
    """A kind of defect in one project (scratch, dust, crack...), with a colour and a key."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="categories")
    name = models.CharField(max_length=100)
    color = models.CharField(
        max_length=7,
        default="#e6194b",
        validators=[RegexValidator(r"^#[0-9a-fA-F]{6}$", "Colour must look like #rrggbb.")],
    )
    shortcut = models.CharField(
        max_length=1,
        blank=True,
        validators=[RegexValidator(r"^[0-9a-z]$", "Shortcut must be one key: 0-9 or a-z.")],
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "name"], name="unique_category_name"),
            models.UniqueConstraint(
                fields=["project", "shortcut"],
                condition=~models.Q(shortcut=""),
                name="unique_category_shortcut",
            ),
        ]
        ordering = ["project", "name"]
        verbose_name_plural = "defect categories"

    def __str__(self) -> str:
        return self.name


class Annotation(WatchedModel):
    """A label on an image: a box or polygon in full-resolution pixel coordinates.

    geometry: {"type": "box", "x":, "y":, "w":, "h":} or {"type": "polygon", "points": [[x, y], ...]}.
    """

    LIST_CACHE_PROJECT = "image__project_id"  # cached lists (inspection.listcache)

    class Source(models.TextChoices):
        MANUAL = "manual", "Manual"
        SUGGESTION = "suggestion", "Accepted suggestion"
        IMPORT = "import", "Imported"
        GROUND_TRUTH = "ground_truth", "Ground truth"

    class Kind(models.TextChoices):
        BOX = "box", "Box"
        POLYGON = "polygon", "Polygon"

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="annotations")
    category = models.ForeignKey(
        DefectCategory, on_delete=models.PROTECT, related_name="annotations"
    )
    kind = models.CharField(max_length=10, choices=Kind.choices)
    geometry = models.JSONField()
    source = models.CharField(max_length=20, choices=Source.choices, default=Source.MANUAL)
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class ReviewStatus(models.TextChoices):
        PENDING = "pending", "Pending review"
        APPROVED = "approved", "Approved"
        RETURNED = "returned", "Sent back"

    review_status = models.CharField(
        max_length=10, choices=ReviewStatus.choices, default=ReviewStatus.PENDING
    )
    suggestion = models.ForeignKey(
        "annotations.Suggestion",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="annotations",
        help_text="The model suggestion this label was accepted from.",
    )
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    version = models.PositiveIntegerField(default=1, help_text="Raised by one on every change.")
    client_id = models.CharField(
        max_length=64,
        blank=True,
        default="",
        help_text="Set by the browser: retries are idempotent.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["image", "source"])]
        constraints = [
            models.UniqueConstraint(
                fields=["image", "client_id"],
                condition=~models.Q(client_id=""),
                name="unique_client_id_per_image",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.category} on {self.image_id}"


class ImageComment(WatchedModel):
    """A note on an image ("glare on the left, re-shoot?")."""

    LIST_CACHE_PROJECT = "image__project_id"  # cached lists (inspection.listcache)

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="comments")
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    text = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return self.text[:50]


class Suggestion(WatchedModel):
    """A candidate defect region proposed by a model (machine output, never a label by itself).

    Accepting one creates an Annotation that points back here; every decision is a Review.
    """

    LIST_CACHE_PROJECT = "image__project_id"  # cached lists (inspection.listcache)

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        ACCEPTED = "accepted", "Accepted"
        REJECTED = "rejected", "Rejected"

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="suggestions")
    run = models.ForeignKey(
        "inspection.InspectionRun",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="suggestions",
    )
    model_version = models.ForeignKey(
        "inspection.ModelVersion",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="suggestions",
    )
    category = models.ForeignKey(
        DefectCategory,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="suggestions",
        help_text="The category: a detector's proposal until a reviewer accepts it with theirs.",
    )
    proposed_category = models.ForeignKey(
        DefectCategory,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="What a detector proposed (kept after the decision, to measure it).",
    )
    category_score = models.FloatField(
        null=True, blank=True, help_text="The detector's confidence in the proposed category."
    )
    category_margin = models.FloatField(
        null=True,
        blank=True,
        help_text="The detector's confidence in the proposed category minus its best score for "
        "another category at the same box (small: it hesitated between two; negative: another "
        "category scored higher there). Null without a detector category.",
    )
    same_as = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="echoes",
        help_text="A pending suggestion of the other kind of model (anomaly / detector) at the "
        "same place when this one was stored: the queue shows that one with both sources, and "
        "a decision on it decides this one too.",
    )
    region = models.ForeignKey(
        "inspection.InspectionRegion",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="suggestions",
        help_text="The region of interest it was found in (per-region inspection).",
    )
    kind = models.CharField(max_length=10, choices=Annotation.Kind.choices)
    geometry = models.JSONField()
    score = models.FloatField(help_text="Peak calibrated score (0.5 = the model's threshold).")
    mean_score = models.FloatField(null=True, blank=True)
    area = models.FloatField(default=0)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    reject_reason = models.CharField(max_length=20, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-score", "id"]
        indexes = [
            models.Index(fields=["status", "score"]),
            models.Index(fields=["image", "model_version"]),
        ]

    def __str__(self) -> str:
        return f"suggestion {self.pk} on {self.image_id} ({self.score:.2f}, {self.status})"


class Review(WatchedModel):
    """One human decision on a suggestion or a label: who, when, what, and the shape before/after."""

    LIST_CACHE_PROJECT = "image__project_id"  # cached lists (inspection.listcache)

    class Action(models.TextChoices):
        ACCEPT = "accept", "Accepted suggestion"
        EDIT_ACCEPT = "edit_accept", "Edited and accepted suggestion"
        REJECT = "reject", "Rejected suggestion"
        APPROVE = "approve", "Approved label"
        RETURN = "return", "Sent label back"

    REJECT_REASONS = [
        ("false_alarm", "False alarm"),
        ("reflection", "Reflection"),
        ("out_of_scope", "Out of scope"),
        ("duplicate", "Duplicate"),
    ]

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="reviews")
    suggestion = models.ForeignKey(
        Suggestion, null=True, blank=True, on_delete=models.SET_NULL, related_name="reviews"
    )
    annotation = models.ForeignKey(
        Annotation, null=True, blank=True, on_delete=models.SET_NULL, related_name="reviews"
    )
    action = models.CharField(max_length=20, choices=Action.choices)
    reason = models.CharField(max_length=20, blank=True, choices=REJECT_REASONS)
    comment = models.TextField(blank=True)
    category = models.ForeignKey(
        DefectCategory, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    geometry_before = models.JSONField(null=True, blank=True)
    geometry_after = models.JSONField(null=True, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-decided_at", "-id"]

    def __str__(self) -> str:
        return f"{self.action} by {self.decided_by} on {self.image_id}"


class DatasetVersion(models.Model):
    """A frozen, immutable dataset of a project: which images (with their split) and which labels.

    ``content`` is the snapshot: ``{"images": [{"id", "file", "file_name", "sha256", "width",
    "height", "split", "negative"}], "categories": [name, ...], "shapes": [{"image", "category",
    "kind", "geometry", "annotation"}]}`` with geometry as stored on ``Annotation``. Later edits to
    labels or images never change it; the row refuses to be saved twice.
    """

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="dataset_versions")
    number = models.PositiveIntegerField(help_text="1, 2, 3... per project.")
    note = models.TextField(blank=True)
    options = models.JSONField(default=dict, blank=True, help_text="The freeze options used.")
    content_hash = models.CharField(max_length=64)
    counts = models.JSONField(default=dict, blank=True, help_text="Per split and per category.")
    content = models.JSONField(default=dict, help_text="The frozen images, categories and labels.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["project", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["project", "number"], name="unique_dataset_number"),
        ]

    def __str__(self) -> str:
        return f"{self.project} dataset v{self.number}"

    def save(self, *args, **kwargs) -> None:
        if not self._state.adding:
            raise ValueError("A dataset version is immutable once frozen; freeze a new one.")
        super().save(*args, **kwargs)
