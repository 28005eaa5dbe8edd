"""Fixtures of the labeling side: a project with an inspection run's suggestions (``loop``)."""

import pytest

from annotations.services.categories import category_create
from annotations.services.suggestions import SuggestionIn, suggestions_store
from inspection.models import Image, InspectionRun, ModelVersion
from tests.conftest import image_bytes
from workers.anomaly.regions import Region


def region(box, polygon, peak_score, mean_score=0.6, area=100.0) -> SuggestionIn:
    """A region as the anomaly engine returns it (box in COCO order), as the inspection job
    hands it to suggestions_store."""
    return SuggestionIn.from_region(
        Region(box=box, polygon=polygon, area=area, peak_score=peak_score, mean_score=mean_score)
    )


def square(x, y, s):
    return [[x, y], [x + s, y], [x + s, y + s], [x, y + s]]


@pytest.fixture
def loop(team, client_for, upload):
    project = team["project"]
    r = client_for(team["admin"]).post(
        f"/api/projects/{project.pk}/images/",
        {
            "files": [
                upload("a.png", image_bytes(size=(200, 100), seed=1)),
                upload("b.png", image_bytes(size=(200, 100), seed=2)),
            ]
        },
        format="multipart",
    )
    images = [Image.objects.get(pk=f["image_id"]) for f in r.json()["files"]]
    version = ModelVersion.objects.create(
        project=project, number=1, architecture="padim", status="ready", is_active=True
    )
    run = InspectionRun.objects.create(
        project=project, model_version=version, image_ids=[i.pk for i in images]
    )
    made = suggestions_store(
        image=images[0],
        run=run,
        model_version=version,
        suggestions=[
            region([10, 10, 20, 20], square(10, 10, 20), 0.9),
            region([100, 50, 10, 10], square(100, 50, 10), 0.7),
        ],
    )
    crack = category_create(user=team["admin"], project=project, name="crack")
    return {
        "images": images,
        "version": version,
        "run": run,
        "suggestions": made,
        "crack": crack,
        **team,
    }
