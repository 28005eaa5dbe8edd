"""API representations. Writes go through services; these only shape data."""

from django.urls import get_script_prefix
from rest_framework import serializers

from inspection.api.base import FastRepresentation, url_for
from inspection.models import (
    Image,
    InspectionRegion,
    InspectionRun,
    Job,
    Membership,
    ModelVersion,
    Project,
    Role,
    Station,
    StationResult,
)
from inspection.permissions import has_role, role_of
from inspection.services.inspections import ARCHITECTURES, MAX_COMPARED
from inspection.services.jobs import job_label
from inspection.services.projects import RETRAIN_MAX


class ProjectSerializer(serializers.ModelSerializer):
    my_role = serializers.SerializerMethodField()
    image_count = serializers.IntegerField(read_only=True, required=False)

    class Meta:
        model = Project
        fields = [
            "id",
            "name",
            "description",
            "auto_inspect",
            "inspection",
            "retrain_after_labels",
            "reference_rule",
            "created_at",
            "my_role",
            "image_count",
        ]
        read_only_fields = ["id", "created_at", "my_role", "image_count"]
        # the service's bounds, in the schema too (it words the refusal)
        extra_kwargs = {"retrain_after_labels": {"min_value": 1, "max_value": RETRAIN_MAX}}

    def get_my_role(self, obj) -> str | None:
        return role_of(self.context["request"].user, obj)

    def to_representation(self, instance):
        from inspection.services.projects import inspection_settings

        data = super().to_representation(instance)
        data["inspection"] = inspection_settings(instance)  # every setting, defaults filled in
        if data.get("image_count") is None:  # a created or updated project is not annotated
            data["image_count"] = instance.images.count()
        return data


class MembershipSerializer(serializers.ModelSerializer):
    username = serializers.CharField(source="user.username")

    class Meta:
        model = Membership
        fields = ["username", "role", "created_at"]


class MemberWriteSerializer(serializers.Serializer):
    username = serializers.CharField()
    role = serializers.ChoiceField(choices=Role.choices)


def _has_heatmap(image: Image) -> bool:
    """From the list's ``has_heatmap`` annotation when there is one, else its heatmaps."""
    has = getattr(image, "has_heatmap", None)
    return bool(has) if has is not None else len(image.heatmaps.all()) > 0


class ImageSerializer(FastRepresentation, serializers.ModelSerializer):
    uploaded_by = serializers.CharField(
        source="uploaded_by.username", default=None, read_only=True, allow_null=True
    )
    megapixels = serializers.FloatField(read_only=True)
    urls = serializers.SerializerMethodField()

    class Meta:
        model = Image
        fields = [
            "id",
            "uid",
            "project",
            "original_name",
            "width",
            "height",
            "megapixels",
            "channels",
            "bit_depth",
            "format",
            "size_bytes",
            "sha256",
            "orientation",
            "is_normal",
            "status",
            "split",
            "source_group",
            "pyramid_status",
            "is_reference",
            "reference",
            "alignment",
            "uploaded_by",
            "created_at",
            "urls",
        ]
        read_only_fields = [f for f in fields if f != "split"]

    def validate(self, attrs):
        # is_normal is a decision with rules (a reviewer's, refused on images with defects): it
        # has its own action, and a PATCH that tries it is refused rather than ignored
        if "is_normal" in self.initial_data:
            raise serializers.ValidationError(
                {"is_normal": 'Use POST /api/images/{id}/normal/ with {"is_normal": true|false}.'}
            )
        return attrs

    def get_urls(self, obj, prefix: str | None = None) -> dict:
        prefix = get_script_prefix() if prefix is None else prefix
        pk = obj.pk
        return {
            "original": url_for("api-image-original", pk, prefix),
            "thumbnail": url_for("api-image-thumbnail", pk, prefix) if obj.thumbnail_path else None,
            "dzi": url_for("api-image-dzi", pk, prefix) if obj.pyramid_path else None,
            "heatmap": url_for("api-image-heatmap", pk, prefix) if _has_heatmap(obj) else None,
            # ?v= changes with every alignment: the files are cached as immutable
            "reference_dzi": url_for("api-image-reference-dzi", pk, prefix)
            + f"?v={(obj.alignment or {}).get('stamp', '')}"
            if obj.reference_pyramid_path
            else None,
            "difference": url_for("api-image-difference", pk, prefix)
            + f"?v={(obj.alignment or {}).get('stamp', '')}"
            if obj.difference_path
            else None,
        }


class ReferenceSerializer(serializers.Serializer):
    reference = serializers.IntegerField(
        allow_null=True,
        min_value=1,
        max_value=2**63 - 1,
        help_text="The reference image's id (same project); null: none.",
    )


class UploadSerializer(serializers.Serializer):
    files = serializers.ListField(
        child=serializers.FileField(allow_empty_file=True), allow_empty=False
    )
    is_normal = serializers.BooleanField(required=False, default=False)


class JobSerializer(serializers.ModelSerializer):
    created_by = serializers.CharField(
        source="created_by.username", default=None, read_only=True, allow_null=True
    )
    project_name = serializers.CharField(
        source="project.name", default=None, read_only=True, allow_null=True
    )
    duration_seconds = serializers.FloatField(read_only=True, allow_null=True)
    kind_label = serializers.SerializerMethodField()
    traceback = serializers.SerializerMethodField()

    class Meta:
        model = Job
        fields = [
            "id",
            "kind",
            "kind_label",
            "queue",
            "status",
            "progress",
            "message",
            "error",
            "traceback",
            "payload",
            "result",
            "project",
            "project_name",
            "created_by",
            "created_at",
            "started_at",
            "finished_at",
            "heartbeat_at",
            "duration_seconds",
            "cancel_requested",
            "attempts",
            "worker",
        ]
        read_only_fields = fields

    def get_kind_label(self, obj) -> str:
        return job_label(obj.kind)

    def get_traceback(self, obj) -> str | None:
        """Tracebacks are for admins (site admins and the project's admins)."""
        user = self.context["request"].user
        if obj.project_id and has_role(user, obj.project, Role.ADMIN):
            return obj.traceback
        return obj.traceback if user.is_staff or user.is_superuser else None


class _MadeByAJobSerializer(serializers.ModelSerializer):
    """What model versions and runs share: who asked, the job that made them, how many images."""

    created_by = serializers.CharField(
        source="created_by.username", default=None, read_only=True, allow_null=True
    )
    job = serializers.UUIDField(source="job_id", read_only=True, allow_null=True)
    image_count = serializers.SerializerMethodField()

    def get_image_count(self, obj) -> int:
        return len(obj.image_ids)


class ModelVersionSerializer(_MadeByAJobSerializer):
    class Meta:
        model = ModelVersion
        fields = [
            "id",
            "project",
            "number",
            "kind",
            "architecture",
            "params",
            "image_count",
            "metrics",
            "status",
            "is_active",
            "job",
            "created_by",
            "created_at",
        ]
        read_only_fields = fields


class TrainSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(
        choices=[ModelVersion.Kind.ANOMALY, ModelVersion.Kind.CHANGE],
        default=ModelVersion.Kind.ANOMALY,
        help_text="anomaly: train on the normal images; change: calibrate the change detector on "
        "the aligned pairs (params: quantile, pixel_weight). Detectors train from a dataset "
        "version.",
    )
    architecture = serializers.ChoiceField(choices=ARCHITECTURES, default="padim")
    params = serializers.DictField(required=False, default=dict)
    activate = serializers.BooleanField(default=True)


class CompareSerializer(serializers.Serializer):
    architectures = serializers.ListField(
        child=serializers.ChoiceField(choices=ARCHITECTURES),
        min_length=1,
        max_length=MAX_COMPARED,
        help_text="The anomaly models to train on the same normal images and score on the "
        "project's reviewed images.",
    )
    params = serializers.DictField(
        required=False, default=dict, help_text="Training parameters shared by all of them."
    )
    variants = serializers.ListField(
        child=serializers.DictField(),
        required=False,
        min_length=1,
        max_length=MAX_COMPARED,
        help_text="Settings to try each model with, laid over params: one version per model "
        'and setting, e.g. [{}, {"shading": 0.2}] for without and with the shading '
        "correction (default: [{}], params alone).",
    )


class RunSerializer(_MadeByAJobSerializer):
    class Meta:
        model = InspectionRun
        fields = [
            "id",
            "project",
            "model_version",
            "scope",
            "image_count",
            "params",
            "job",
            "created_by",
            "created_at",
        ]
        read_only_fields = fields


class RunDetailSerializer(RunSerializer):
    """A run with its per-image outcomes (the list leaves them out: one entry per image)."""

    class Meta(RunSerializer.Meta):
        fields = [*RunSerializer.Meta.fields, "results"]
        read_only_fields = fields


class RunStartSerializer(serializers.Serializer):
    scope = serializers.ChoiceField(
        choices=InspectionRun.Scope.choices, default=InspectionRun.Scope.NEW
    )
    image_ids = serializers.ListField(child=serializers.IntegerField(), required=False)
    model_version = serializers.IntegerField(required=False)
    kind = serializers.ChoiceField(
        choices=ModelVersion.Kind.choices,
        default=ModelVersion.Kind.ANOMALY,
        help_text="Which active model runs when model_version is not given.",
    )


class QueueHealthSerializer(serializers.Serializer):
    """``GET /api/jobs/health/`` (schema only)."""

    broker = serializers.BooleanField()
    workers = serializers.ListField(child=serializers.DictField())
    waiting = serializers.DictField(child=serializers.IntegerField())
    problems = serializers.ListField(child=serializers.CharField())


class UserSerializer(serializers.Serializer):
    """An account as site admins see it. Writes are checked by inspection/services/accounts.py
    (the one owner of what a user name or e-mail may be), so the fields here are plain text."""

    id = serializers.IntegerField(read_only=True)
    username = serializers.CharField(allow_blank=True)
    email = serializers.CharField(required=False, allow_blank=True, default="")
    site_admin = serializers.BooleanField(required=False, default=False)
    is_active = serializers.BooleanField(read_only=True)
    has_password = serializers.SerializerMethodField()
    last_login = serializers.DateTimeField(read_only=True, allow_null=True)
    projects = serializers.SerializerMethodField()

    def get_has_password(self, obj) -> bool:
        return obj.has_usable_password()

    def get_projects(self, obj) -> list[dict[str, str]]:
        return [{"project": name, "role": role} for name, role in obj.project_roles]


class UserCreatedSerializer(UserSerializer):
    set_password_link = serializers.URLField(read_only=True)


class UserUpdateSerializer(serializers.Serializer):
    is_active = serializers.BooleanField(required=False)
    site_admin = serializers.BooleanField(required=False)


class PasswordLinkSerializer(serializers.Serializer):
    set_password_link = serializers.URLField()


class UserNamesSerializer(serializers.Serializer):
    usernames = serializers.ListField(child=serializers.CharField())


class StationSerializer(serializers.ModelSerializer):
    """A line station: its settings (project admins change them) and what its process reports."""

    class Meta:
        model = Station
        fields = [
            "id",
            "project",
            "name",
            "source",
            "enabled",
            "start_with_loupe",
            "unsure_margin",
            "ok_sample_rate",
            "sample_quota",
            "status",
            "message",
            "heartbeat_at",
            "latest",
            "created_at",
        ]
        read_only_fields = ["status", "message", "heartbeat_at", "latest", "created_at"]
        extra_kwargs = {
            "unsure_margin": {"min_value": 0.0, "max_value": 0.49},
            "ok_sample_rate": {"min_value": 0.0, "max_value": 1.0},
            "sample_quota": {"max_value": 1_000_000},
        }


class StationUpdateSerializer(StationSerializer):
    class Meta(StationSerializer.Meta):
        read_only_fields = [*StationSerializer.Meta.read_only_fields, "project", "name"]


class StationResultSerializer(FastRepresentation, serializers.ModelSerializer):
    class Meta:
        model = StationResult
        fields = [
            "id",
            "key",
            "at",
            "source_name",
            "frame_number",
            "verdict",
            "score",
            "regions",
            "latency_ms",
            "skipped",
            "error",
            "model_version",
            "image",
        ]
        read_only_fields = fields


class RegionInSerializer(serializers.Serializer):
    """A region of interest as drawn (services.regions checks the rules)."""

    name = serializers.CharField(max_length=100)
    reference = serializers.IntegerField(
        min_value=1, max_value=2**63 - 1, help_text="The image it is drawn on (same project)."
    )
    polygon = serializers.JSONField(help_text="[[x, y], ...] in the reference's pixels.")
    mode = serializers.ChoiceField(choices=InspectionRegion.Mode.choices, default="inspect")
    threshold = serializers.FloatField(
        required=False, allow_null=True, default=None, help_text="Calibrated; null: the project's."
    )


class RegionPatchSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100, required=False)
    polygon = serializers.JSONField(required=False)
    mode = serializers.ChoiceField(choices=InspectionRegion.Mode.choices, required=False)
    threshold = serializers.FloatField(required=False, allow_null=True)
    model_version = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=2**63 - 1
    )


class RegionTrainSerializer(serializers.Serializer):
    architecture = serializers.ChoiceField(choices=ARCHITECTURES, default="padim")
    params = serializers.DictField(required=False, default=dict)


def _version_label(version) -> str:
    return f"{version.architecture} v{version.number}"


class RegionSerializer(serializers.ModelSerializer):
    """A region of interest; ``models``: the versions trained for it (context ``models``: a
    dict region id -> versions, made once for a list)."""

    reference = serializers.IntegerField(source="reference_id", read_only=True)
    model_version = serializers.IntegerField(
        source="model_version_id", read_only=True, allow_null=True
    )
    model = serializers.SerializerMethodField()
    model_status = serializers.SerializerMethodField()
    models = serializers.SerializerMethodField()
    suggestions = serializers.SerializerMethodField()

    class Meta:
        model = InspectionRegion
        fields = [
            "id",
            "name",
            "reference",
            "polygon",
            "mode",
            "threshold",
            "model_version",
            "model",
            "model_status",
            "models",
            "suggestions",
            "created_at",
        ]
        read_only_fields = fields

    def get_model(self, obj) -> str | None:
        return _version_label(obj.model_version) if obj.model_version else None

    def get_model_status(self, obj) -> str | None:
        versions = self._models(obj)
        if obj.model_version:
            return obj.model_version.status
        return versions[0].status if versions else None  # the latest training's

    def _models(self, obj) -> list:
        made = self.context.get("models")
        if made is None:
            made = regions_models([obj])
            self.context["models"] = made
        return made.get(obj.pk, [])

    def get_models(self, obj) -> list[dict]:
        """Each version trained for the region; once trained, on how many normal images and
        which could not be registered onto the reference (left out, with the reason)."""
        out = []
        for v in self._models(obj):
            region = (v.metrics or {}).get("region") or {}
            skipped = region.get("skipped", [])
            out.append(
                {
                    "id": v.pk,
                    "label": _version_label(v),
                    "status": v.status,
                    "job": v.job_id,
                    "trained_on": region.get("trained_on") if region else None,
                    "skipped": [{"name": x["name"], "reason": x["reason"]} for x in skipped],
                }
            )
        return out

    def get_suggestions(self, obj) -> int:
        """Its suggestions waiting in the review queue."""
        counted = getattr(obj, "suggestion_count", None)
        return counted if counted is not None else obj.suggestions.filter(status="pending").count()


def regions_models(regions) -> dict:
    """Region id -> the anomaly versions trained for it, newest first (one query)."""
    regions = list(regions)
    if not regions:
        return {}
    ids = {r.pk for r in regions}
    made: dict = {}
    versions = ModelVersion.objects.filter(
        project_id=regions[0].project_id, kind=ModelVersion.Kind.ANOMALY
    ).filter(params__has_key="region")
    for version in versions.order_by("-number"):
        key = version.params.get("region")
        if key in ids:
            made.setdefault(key, []).append(version)
    return made


class ReferenceCardSerializer(serializers.Serializer):
    """An image regions are (or may be) drawn on."""

    id = serializers.IntegerField()
    name = serializers.CharField()
    width = serializers.IntegerField()
    height = serializers.IntegerField()
    dzi = serializers.CharField(allow_null=True)


class RegionListSerializer(serializers.Serializer):
    """``GET /api/projects/{id}/regions/`` (the schema's description of the answer)."""

    reference = ReferenceCardSerializer(allow_null=True, help_text="The image they are drawn on.")
    outside = serializers.ChoiceField(
        choices=["inspect", "ignore"],
        help_text="Whether the area outside every region is inspected.",
    )
    references = ReferenceCardSerializer(many=True, help_text="The project's reference images.")
    results = RegionSerializer(many=True)
