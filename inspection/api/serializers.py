"""API representations. Writes go through services; these only shape data."""

from django.urls import reverse
from rest_framework import serializers

from annotations.models import DefectCategory
from inspection.models import Image, Job, Membership, Project, Role
from inspection.permissions import has_role, role_of


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
            "created_at",
            "my_role",
            "image_count",
        ]
        read_only_fields = ["id", "created_at", "my_role", "image_count"]

    def get_my_role(self, obj) -> str | None:
        return role_of(self.context["request"].user, obj)

    def to_representation(self, instance):
        from inspection.services.projects import inspection_settings

        data = super().to_representation(instance)
        data["inspection"] = inspection_settings(instance)  # every setting, defaults filled in
        return data


class MembershipSerializer(serializers.ModelSerializer):
    username = serializers.CharField(source="user.username")

    class Meta:
        model = Membership
        fields = ["username", "role", "created_at"]


class MemberWriteSerializer(serializers.Serializer):
    username = serializers.CharField()
    role = serializers.ChoiceField(choices=Role.choices)


class CategorySerializer(serializers.ModelSerializer):
    class Meta:
        model = DefectCategory
        fields = ["id", "name", "color", "shortcut", "created_at"]
        read_only_fields = ["id", "created_at"]
        extra_kwargs = {"color": {"required": False}, "shortcut": {"required": False}}
        validators = []  # uniqueness is a service rule, with a clearer message


class ImageSerializer(serializers.ModelSerializer):
    uploaded_by = serializers.CharField(source="uploaded_by.username", default=None, read_only=True)
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
            "uploaded_by",
            "created_at",
            "urls",
        ]
        read_only_fields = [f for f in fields if f not in ("is_normal", "split")]

    def get_urls(self, obj) -> dict:
        return {
            "page": reverse("image-page", args=[obj.pk]),
            "original": reverse("api-image-original", args=[obj.pk]),
            "thumbnail": reverse("api-image-thumbnail", args=[obj.pk])
            if obj.thumbnail_path
            else None,
            "dzi": reverse("api-image-dzi", args=[obj.pk]) if obj.pyramid_path else None,
            "heatmap": reverse("api-image-heatmap", args=[obj.pk])
            if len(obj.heatmaps.all())
            else None,
            "annotations": reverse("api-image-annotations", args=[obj.pk]),
        }


class UploadSerializer(serializers.Serializer):
    files = serializers.ListField(
        child=serializers.FileField(allow_empty_file=True), allow_empty=False
    )
    is_normal = serializers.BooleanField(required=False, default=False)


class MvtecImportSerializer(serializers.Serializer):
    zip = serializers.FileField(required=False, help_text="A zip of an MVTec AD folder.")
    path = serializers.CharField(
        required=False, help_text="A folder on the server (site admins; under LOUPE_IMPORT_ROOTS)."
    )

    def validate(self, attrs):
        if attrs.get("zip") and attrs.get("path"):
            raise serializers.ValidationError("Give a zip file or a server path, not both.")
        if not attrs.get("zip") and not attrs.get("path"):
            raise serializers.ValidationError("Give a (non-empty) zip file or a server path.")
        return attrs


class JobSerializer(serializers.ModelSerializer):
    created_by = serializers.CharField(source="created_by.username", default=None, read_only=True)
    project_name = serializers.CharField(source="project.name", default=None, read_only=True)
    duration_seconds = serializers.FloatField(read_only=True)
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
        from inspection.services.jobs import JOB_LABELS

        return JOB_LABELS.get(obj.kind, obj.kind)

    def get_traceback(self, obj) -> str | None:
        """Tracebacks are for admins (site admins and the project's admins)."""
        user = self.context["request"].user
        if obj.project_id and has_role(user, obj.project, Role.ADMIN):
            return obj.traceback
        return obj.traceback if user.is_staff or user.is_superuser else None
