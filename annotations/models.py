"""Defect categories and annotations (human or imported labels)."""

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

from inspection.models import Image, Project


class DefectCategory(models.Model):
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


class Annotation(models.Model):
    """A label on an image: a box or polygon in full-resolution pixel coordinates.

    geometry: {"type": "box", "x":, "y":, "w":, "h":} or {"type": "polygon", "points": [[x, y], ...]}.
    """

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
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    version = models.PositiveIntegerField(default=1, help_text="Raised by one on every change.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["image", "source"])]

    def __str__(self) -> str:
        return f"{self.kind} {self.category} on {self.image_id}"


class ImageComment(models.Model):
    """A note on an image ("glare on the left, re-shoot?")."""

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
