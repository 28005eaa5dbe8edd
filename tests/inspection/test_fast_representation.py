"""The list endpoints' serializers skip DRF's per-field loop (``FastRepresentation``): what they
answer must be exactly what DRF's own ``to_representation`` makes, for rows with every optional
part set and with none of it."""

import io

import pytest
from django.utils import timezone
from PIL import Image as PILImage
from rest_framework import serializers

from annotations.api.serializers import (
    AnnotationSerializer,
    GridImageSerializer,
    SuggestionSerializer,
)
from annotations.models import Annotation, Suggestion
from annotations.services.categories import category_create
from annotations.services.labels import annotation_create
from annotations.services.suggestions import SuggestionIn, suggestions_store
from inspection.api.base import url_for
from inspection.api.serializers import ImageSerializer, StationResultSerializer
from inspection.models import Image, ImageHeatmap, InspectionRun, ModelVersion, StationResult
from inspection.services.images import IncomingFile, image_build_derivatives, image_store_one
from inspection.services.stations import station_create, station_results_record
from workers.anomaly.regions import Region

pytestmark = pytest.mark.django_db


def drf(serializer, obj) -> dict:
    """What DRF itself makes of ``obj`` with this serializer's fields."""
    return serializers.ModelSerializer.to_representation(serializer, obj)


def store(project, user, tmp_path, name, colour):
    path = tmp_path / name
    buf = io.BytesIO()
    PILImage.new("RGB", (320, 240), colour).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())
    outcome = image_store_one(project=project, user=user, incoming=IncomingFile(name, path))
    return Image.objects.get(pk=outcome.image_id)


def test_fast_rows_are_drfs_rows(team, tmp_path, client_for):
    project, admin = team["project"], team["admin"]
    plain = store(project, None, tmp_path, "plain.png", (10, 20, 30))  # no uploader, no files
    full = store(project, admin, tmp_path, "full.png", (200, 20, 30))
    image_build_derivatives(image=full)  # thumbnail and pyramid
    Image.objects.filter(pk=full.pk).update(
        is_normal=False,
        split="val",
        reference=plain,
        alignment={"status": "ok", "stamp": "abc", "inliers": 12},
        reference_pyramid_path="x/reference/image.dzi",
        difference_path="x/difference.png",
    )
    scratch = category_create(user=admin, project=project, name="scratch")
    version = ModelVersion.objects.create(
        project=project, number=1, architecture="padim", status="ready", is_active=True
    )
    run = InspectionRun.objects.create(project=project, model_version=version)
    for image in (plain, full):
        annotation_create(
            user=admin,
            image=image,
            category_id=scratch.pk,
            geometry={"type": "box", "x": 5, "y": 6, "w": 20, "h": 15},
        )
        suggestions_store(
            image=image,
            run=run,
            model_version=version,
            suggestions=[
                SuggestionIn.from_region(
                    Region(box=[50, 40, 30, 30], polygon=[[50, 40], [80, 40], [80, 70]], area=900.0, peak_score=0.8,
                           mean_score=0.6)
                )
            ],
        )  # fmt: skip
    decided = Suggestion.objects.filter(image=full).first()
    Suggestion.objects.filter(pk=decided.pk).update(
        status="accepted", decided_by=admin, decided_at=timezone.now(), category=scratch
    )
    Annotation.objects.filter(image=full).update(updated_by=team["reviewer"])
    Annotation.objects.filter(image=plain).update(updated_by=None, author=None)  # imported

    images = list(Image.objects.filter(project=project).order_by("id"))
    assert len(images) == 2
    for cls in (ImageSerializer, GridImageSerializer):
        ser = cls()
        rows = [ser.to_representation(i) for i in images]
        assert rows == [drf(ser, i) for i in images]
        assert set(rows[0]) == set(cls.Meta.fields)
    grid = GridImageSerializer().to_representation(Image.objects.get(pk=full.pk))
    assert grid["reference"] == plain.pk and grid["uploaded_by"] == admin.username
    assert grid["urls"]["thumbnail"] == url_for("api-image-thumbnail", full.pk)
    assert grid["urls"]["reference_dzi"].endswith("?v=abc")
    assert grid["created_at"].endswith("Z")

    labels = list(Annotation.objects.order_by("id"))
    ser = AnnotationSerializer()
    assert [ser.to_representation(a) for a in labels] == [drf(ser, a) for a in labels]
    assert [ser.to_representation(a)["updated_by"] for a in labels] == [None, "rita"]
    assert [ser.to_representation(a)["author"] for a in labels] == [None, "padmin"]

    # the grid's page: the same rows, a heatmap link where the image has heatmaps (two runs'),
    # from one annotation instead of every heatmap row
    for n in range(2):
        ImageHeatmap.objects.create(image=full, run=run, path=f"h{n}.png", score=0.7)
    page = client_for(team["annotator"]).get(f"/api/projects/{project.pk}/images/").json()
    by = {row["id"]: row for row in page["results"]}
    assert by[full.pk]["urls"]["heatmap"] == url_for("api-image-heatmap", full.pk)
    assert by[plain.pk]["urls"]["heatmap"] is None
    ser = GridImageSerializer()
    assert by[plain.pk] == drf(ser, Image.objects.get(pk=plain.pk))
    assert by[full.pk] == drf(ser, Image.objects.get(pk=full.pk))

    suggestions = list(Suggestion.objects.order_by("id"))
    ser = SuggestionSerializer()
    rows = [ser.to_representation(x) for x in suggestions]
    assert rows == [drf(ser, x) for x in suggestions]
    assert {r["decided_by"] for r in rows} == {None, "padmin"}
    assert {r["category_name"] for r in rows} == {None, "scratch"}

    # a station's results, as a PLC gateway or an MES pages through them
    station = station_create(user=admin, project=project, name="line-1", source=str(tmp_path))
    common = {"source_name": "line.avi", "latency_ms": 30.5, "skipped": 0}
    station_results_record(
        station=station,
        rows=[
            {**common, "key": "line.avi#0", "at": timezone.now(), "frame_number": 0,
             "verdict": "ok", "score": 0.1, "regions": [], "error": "",
             "model_version_id": None, "image_id": None},
            {**common, "key": "line.avi#1", "at": timezone.now(), "frame_number": 1,
             "verdict": "ng", "score": 0.9, "regions": [{"box": [1, 2, 3, 4], "score": 0.9}],
             "error": "", "model_version_id": version.pk, "image_id": full.pk},
            {**common, "key": "line.avi#2", "at": timezone.now(), "frame_number": None,
             "verdict": "failed", "score": None, "regions": [], "error": "unreadable",
             "model_version_id": None, "image_id": None},
        ],
    )  # fmt: skip
    results = list(StationResult.objects.filter(station=station).order_by("id"))
    ser = StationResultSerializer()
    rows = [ser.to_representation(r) for r in results]
    assert rows == [drf(ser, r) for r in results]
    assert [r["image"] for r in rows] == [None, full.pk, None]
    assert rows[1]["regions"] == [{"box": [1, 2, 3, 4], "score": 0.9}]
