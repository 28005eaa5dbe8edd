"""API representations of labels, suggestions, reviews and dataset versions (writes go through
services; these only shape data)."""

from django.urls import get_script_prefix
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from annotations.formats.registry import EXPORTERS, IMPORTERS
from annotations.models import (
    Annotation,
    DatasetVersion,
    DefectCategory,
    ImageComment,
    Review,
    Suggestion,
)
from inspection.api.base import FastRepresentation, url_for
from inspection.api.serializers import ImageSerializer
from inspection.models import Image


class CategorySerializer(serializers.ModelSerializer):
    class Meta:
        model = DefectCategory
        fields = ["id", "name", "color", "shortcut", "created_at"]
        read_only_fields = ["id", "created_at"]
        extra_kwargs = {"color": {"required": False}, "shortcut": {"required": False}}
        validators = []  # uniqueness is a service rule, with a clearer message


class GridImageSerializer(ImageSerializer):
    """An image in the grid (and after a decision on it): its files, plus where it is labelled."""

    def get_urls(self, obj, prefix: str | None = None) -> dict:
        prefix = get_script_prefix() if prefix is None else prefix
        return {
            "page": url_for("image-page", obj.pk, prefix),
            **super().get_urls(obj, prefix),
            "annotations": url_for("api-image-annotations", obj.pk, prefix),
        }


class ImageBulkSerializer(serializers.Serializer):
    image_ids = serializers.ListField(child=serializers.JSONField(), help_text="ids of images")
    action = serializers.CharField(
        help_text="normal, not_normal, split, inspect, detect, reference, not_reference, "
        "propose_reference, delete"
    )
    split = serializers.CharField(
        required=False, allow_blank=True, help_text="with action=split: train, val, test or ''"
    )


class ImageBulkRefusedSerializer(serializers.Serializer):
    image = serializers.IntegerField()
    name = serializers.CharField()
    reason = serializers.CharField()


class ImageBulkResultSerializer(serializers.Serializer):
    action = serializers.CharField()
    done = serializers.ListField(child=serializers.IntegerField())
    refused = ImageBulkRefusedSerializer(many=True)
    run = serializers.IntegerField(allow_null=True)
    job = serializers.CharField(allow_null=True, help_text="propose_reference: its job")
    message = serializers.CharField()


class RequiredBooleanField(serializers.BooleanField):
    """A boolean that must be sent. DRF reads a boolean missing from a form (multipart) as
    false, an unticked checkbox; here that would unmark an image's "normal" by omission."""

    default_empty_html = serializers.empty


class NormalSerializer(serializers.Serializer):
    is_normal = RequiredBooleanField()


class AnnotationSerializer(FastRepresentation, serializers.ModelSerializer):
    category_name = serializers.CharField(source="category.name", read_only=True)
    color = serializers.CharField(source="category.color", read_only=True)
    author = serializers.CharField(
        source="author.username", default=None, read_only=True, allow_null=True
    )
    updated_by = serializers.CharField(
        source="updated_by.username", default=None, read_only=True, allow_null=True
    )

    class Meta:
        model = Annotation
        fields = [
            "id",
            "image",
            "category",
            "category_name",
            "color",
            "kind",
            "geometry",
            "source",
            "review_status",
            "author",
            "updated_by",
            "created_at",
            "updated_at",
            "version",
        ]
        read_only_fields = fields


class AnnotationWriteSerializer(serializers.Serializer):
    category = serializers.IntegerField()
    geometry = serializers.JSONField()
    client_id = serializers.CharField(
        required=False, allow_blank=True, max_length=64, help_text="Makes retries idempotent."
    )


class AnnotationPatchSerializer(serializers.Serializer):
    version = serializers.IntegerField()
    category = serializers.IntegerField(required=False)
    geometry = serializers.JSONField(required=False)


class CommentSerializer(serializers.ModelSerializer):
    author = serializers.CharField(
        source="author.username", default=None, read_only=True, allow_null=True
    )

    class Meta:
        model = ImageComment
        fields = ["id", "text", "author", "created_at"]
        read_only_fields = ["id", "author", "created_at"]


class VerdictSerializer(serializers.Serializer):
    verdict = serializers.ChoiceField(choices=Image.Verdict.choices, allow_blank=True)


class SuggestionSerializer(FastRepresentation, serializers.ModelSerializer):
    decided_by = serializers.CharField(
        source="decided_by.username", default=None, read_only=True, allow_null=True
    )
    image_name = serializers.CharField(source="image.original_name", read_only=True)
    image_width = serializers.IntegerField(source="image.width", read_only=True)
    image_height = serializers.IntegerField(source="image.height", read_only=True)
    model = serializers.SerializerMethodField()
    source = serializers.CharField(
        source="model_version.kind", default=None, read_only=True, allow_null=True
    )
    category_name = serializers.CharField(
        source="category.name", default=None, read_only=True, allow_null=True
    )
    also = serializers.SerializerMethodField()
    reference = serializers.SerializerMethodField()
    region_name = serializers.CharField(
        source="region.name", default=None, read_only=True, allow_null=True
    )

    #: What this serializer reads of the related rows: lists of suggestions load only these
    #: (``suggestion_rows``), not every column of an image, a model version and a user per row
    #: (a review queue page, docs/benchmarks.md "API under load"). A field added above that
    #: reads another column must add it here; tests/annotations/test_list_queries.py fails on
    #: a query per row.
    RELATED_COLUMNS = (
        "image__original_name",
        "image__width",
        "image__height",
        "image__reference_pyramid_path",
        "image__difference_path",
        "image__alignment",
        "model_version__kind",
        "model_version__architecture",
        "model_version__number",
        "decided_by__username",
        "category__name",
        "region__name",
    )

    class Meta:
        model = Suggestion
        fields = [
            "id",
            "also",
            "reference",
            "image",
            "image_name",
            "image_width",
            "image_height",
            "run",
            "model_version",
            "model",
            "source",
            "category",
            "category_name",
            "proposed_category",
            "category_score",
            "category_margin",
            "region",
            "region_name",
            "kind",
            "geometry",
            "score",
            "mean_score",
            "area",
            "status",
            "reject_reason",
            "decided_by",
            "decided_at",
            "created_at",
        ]
        read_only_fields = fields

    @extend_schema_field(
        {
            "type": "object",
            "nullable": True,
            "properties": {"dzi": {"type": "string"}, "difference": {"type": "string"}},
        }
    )
    def get_reference(self, obj) -> dict | None:
        """The image's aligned reference, when it has one: the review queue flickers to it (F)
        and overlays the difference (D) as the workspace does."""
        image = obj.image
        if not image.reference_pyramid_path:
            return None
        stamp = f"?v={(image.alignment or {}).get('stamp', '')}"
        return {
            "dzi": url_for("api-image-reference-dzi", image.pk) + stamp,
            "difference": url_for("api-image-difference", image.pk) + stamp
            if image.difference_path
            else None,
        }

    def get_model(self, obj) -> str | None:
        mv = obj.model_version
        return f"{mv.architecture} v{mv.number}" if mv else None

    def get_also(self, obj) -> list[dict]:
        """The other kind's suggestions at the same place (``same_as`` this one): one queue
        item with both sources; deciding this one decides them."""
        if obj.same_as_id is not None:
            return []
        return [
            {
                "id": e.pk,
                "source": e.model_version.kind if e.model_version else None,
                "model": self.get_model(e),
                "score": e.score,
                "category_name": e.category.name if e.category else None,
                "status": e.status,
            }
            for e in (
                obj.echo_list
                if hasattr(obj, "echo_list")  # the page's, fetched at once (views.with_echoes)
                else obj.echoes.select_related("model_version", "category").order_by("id")
            )
        ]


class ReviewSerializer(serializers.ModelSerializer):
    decided_by = serializers.CharField(
        source="decided_by.username", default=None, read_only=True, allow_null=True
    )
    category_name = serializers.CharField(
        source="category.name", default=None, read_only=True, allow_null=True
    )

    class Meta:
        model = Review
        fields = [
            "id",
            "image",
            "suggestion",
            "annotation",
            "action",
            "reason",
            "comment",
            "category",
            "category_name",
            "geometry_before",
            "geometry_after",
            "decided_by",
            "decided_at",
        ]
        read_only_fields = fields


class AcceptSerializer(serializers.Serializer):
    category = serializers.IntegerField()
    geometry = serializers.JSONField(required=False, help_text="The edited shape, when edited.")


class RejectSerializer(serializers.Serializer):
    reason = serializers.ChoiceField(
        choices=Review.REJECT_REASONS, required=False, allow_blank=True, default=""
    )
    comment = serializers.CharField(required=False, allow_blank=True, default="")


class DecisionCommentSerializer(serializers.Serializer):
    comment = serializers.CharField(required=False, allow_blank=True, default="")


class DatasetVersionSerializer(serializers.ModelSerializer):
    created_by = serializers.CharField(
        source="created_by.username", default=None, read_only=True, allow_null=True
    )

    class Meta:
        model = DatasetVersion
        fields = [
            "id",
            "project",
            "number",
            "note",
            "options",
            "content_hash",
            "counts",
            "created_by",
            "created_at",
        ]
        read_only_fields = fields


class DatasetVersionContentSerializer(DatasetVersionSerializer):
    class Meta(DatasetVersionSerializer.Meta):
        fields = [*DatasetVersionSerializer.Meta.fields, "content"]
        read_only_fields = fields


class FreezeSerializer(serializers.Serializer):
    note = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)
    include_pending = serializers.BooleanField(required=False, default=False)
    include_ground_truth = serializers.BooleanField(required=False, default=False)
    seed = serializers.IntegerField(required=False, default=0)
    ratios = serializers.DictField(child=serializers.FloatField(), required=False, default=None)


class ExportSerializer(serializers.Serializer):
    format = serializers.ChoiceField(choices=list(EXPORTERS))
    options = serializers.DictField(required=False, default=dict)


class ImportSerializer(serializers.Serializer):
    format = serializers.ChoiceField(choices=list(IMPORTERS))
    zip = serializers.FileField(
        required=False,
        help_text="COCO: JSON + images; YOLO: data.yaml, images/, labels/; MVTec AD: train/good, "
        "test/<type>, ground_truth/<type>.",
    )
    path = serializers.CharField(
        required=False, help_text="A folder on the server (site admins; under LOUPE_IMPORT_ROOTS)."
    )

    def validate(self, attrs):
        if attrs.get("zip") and attrs.get("path"):
            raise serializers.ValidationError("Give a zip file or a server path, not both.")
        if not attrs.get("zip") and not attrs.get("path"):
            raise serializers.ValidationError("Give a (non-empty) zip file or a server path.")
        return attrs


class DetectorTrainSerializer(serializers.Serializer):
    params = serializers.DictField(
        required=False,
        default=dict,
        help_text="backbone (lite0, s, m, l), input_size, slice, overlap, epochs, batch_size, "
        "iterations_per_epoch, seed, reference, rotate, negatives, transplant, networks; "
        "missing ones take the proposal's values",
    )
    activate = serializers.BooleanField(default=True)


class DetectorParamsQuery(serializers.Serializer):
    """The training form's edits as query parameters (each optional), for their time estimate."""

    def validate(self, attrs):
        unknown = set(self.initial_data) - set(self.fields)
        if unknown:  # as training refuses them: a typo must not silently estimate the default
            raise serializers.ValidationError(
                f"Unknown parameter(s): {', '.join(sorted(unknown))}."
            )
        return attrs

    backbone = serializers.CharField(required=False)
    input_size = serializers.IntegerField(required=False)
    # not a BooleanField: in a query string DRF reads a missing boolean as false
    slice = serializers.ChoiceField(choices=["true", "false"], required=False)
    overlap = serializers.FloatField(required=False)
    epochs = serializers.IntegerField(required=False)
    batch_size = serializers.IntegerField(required=False)
    iterations_per_epoch = serializers.IntegerField(required=False)
    seed = serializers.IntegerField(required=False)
    networks = serializers.IntegerField(required=False)  # the two-stage change detector's
    reference = serializers.ChoiceField(
        choices=["none", "siamese", "stacked", "two-stage"], required=False
    )
    rotate = serializers.ChoiceField(choices=["true", "false"], required=False)
    transplant = serializers.ChoiceField(choices=["true", "false"], required=False)
    # a share from 0 to 1, or "all" (JSON's null: every image without a box, every epoch)
    negatives = serializers.CharField(required=False)

    def validate_negatives(self, value: str) -> float | None:
        if value == "all":
            return None
        try:
            return float(value)
        except ValueError:
            raise serializers.ValidationError("A share from 0 to 1, or 'all'.") from None

    def validate_slice(self, value: str) -> bool:
        return value == "true"

    def validate_rotate(self, value: str) -> bool:
        return value == "true"

    def validate_transplant(self, value: str) -> bool:
        return value == "true"
