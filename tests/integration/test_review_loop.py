"""The whole loop through a real Celery worker on Redis: MVTec bottle imported from a server
folder, a model trained, an inspection run, one suggestion accepted and one rejected, and the
run's figures."""

import pytest

from annotations.models import Annotation, Review, Suggestion
from inspection.models import Image, ImageHeatmap, InspectionRun, Job, ModelVersion
from tests.conftest import dataset, wait_for_job

pytestmark = [pytest.mark.integration, pytest.mark.datasets]


def test_bottle_train_inspect_review(team, client_for, celery_worker, settings):
    root = dataset("mvtec_bottle")
    project = team["project"]
    settings.LOUPE_IMPORT_ROOTS = [root.parent]
    r = client_for(team["site_admin"]).post(
        f"/api/projects/{project.pk}/datasets/import/",
        {"format": "mvtec", "path": str(root)},
        format="json",
    )
    assert r.status_code == 202, r.content
    job = wait_for_job(r.json()["id"], timeout=300)
    assert job.status == "succeeded", (job.error, job.traceback[-2000:])
    report = job.result
    assert report["negatives"] >= 2 and report["annotations"] > 0 and not report["skipped"]
    admin, reviewer = client_for(team["admin"]), client_for(team["reviewer"])

    # train (PaDiM: one pass over the normal images; the CPU default)
    r = admin.post(
        f"/api/projects/{project.pk}/models/",
        {"architecture": "padim", "params": {"input_size": 128}},
        format="json",
    )
    assert r.status_code == 202, r.content
    job = wait_for_job(r.json()["job"], timeout=600)
    assert job.status == "succeeded", (job.error, job.traceback[-2000:])
    assert job.queue == "gpu" and job.progress == 100.0
    version = ModelVersion.objects.get(pk=r.json()["id"])
    assert version.status == "ready" and version.is_active and version.artifact
    assert len(version.image_ids) == report["negatives"]

    # inspect the test images
    r = reviewer.post(f"/api/projects/{project.pk}/runs/", {"scope": "new"}, format="json")
    assert r.status_code == 202, r.content
    run = InspectionRun.objects.get(pk=r.json()["id"])
    test_images = Image.objects.filter(project=project, split="test").count()
    assert len(run.image_ids) == test_images
    job = wait_for_job(r.json()["job"], timeout=600)
    assert job.status == "succeeded", (job.error, job.traceback[-2000:])
    assert ImageHeatmap.objects.filter(run=run).count() == test_images
    suggestions = Suggestion.objects.filter(model_version=version)
    assert suggestions.count() > 0
    assert Image.objects.filter(project=project, split="test", status="inspected").exists()

    # the reviewer works the queue: best first
    queue = reviewer.get(
        f"/api/projects/{project.pk}/suggestions/", {"status": "pending", "run": run.pk}
    ).json()
    first, second = queue["results"][0], queue["results"][1]
    assert first["score"] >= second["score"]
    group = Image.objects.get(pk=first["image"]).source_group  # e.g. test/broken_large
    category = (
        project.categories.filter(name=group.split("/")[1]).first() or project.categories.first()
    )
    r = reviewer.post(
        f"/api/suggestions/{first['id']}/accept/", {"category": category.pk}, format="json"
    )
    assert r.status_code == 201
    r = reviewer.post(
        f"/api/suggestions/{second['id']}/reject/", {"reason": "false_alarm"}, format="json"
    )
    assert r.status_code == 200
    label = Annotation.objects.get(suggestion_id=first["id"])
    assert (
        label.category == category
        and label.source == "suggestion"
        and label.author == team["reviewer"]
    )
    assert [
        rv.action for rv in Review.objects.filter(image__project=project).order_by("decided_at")
    ] == ["accept", "reject"]

    # the run's figures
    figures = reviewer.get(f"/api/runs/{run.pk}/").json()["figures"]
    assert figures["images"] == test_images and figures["failed_images"] == 0
    assert (figures["accepted"], figures["rejected"]) == (1, 1) and figures[
        "precision_reviewed"
    ] == 0.5
    assert (
        figures["gt_regions"]
        == Annotation.objects.filter(image__project=project, source="ground_truth").count()
    )
    assert (
        figures["normal_images"]
        == Image.objects.filter(project=project, source_group="test/good").count()
    )
    assert 0 <= figures["region_recall"] <= 1 and figures["curve"]
    assert (
        Job.objects.filter(
            project=project, kind__in=["anomaly_train", "anomaly_inspect"], status="succeeded"
        ).count()
        == 2
    )

    # re-running the same model version adds no duplicate suggestions
    before = suggestions.count()
    again = [first["image"], second["image"]]
    r = reviewer.post(
        f"/api/projects/{project.pk}/runs/",
        {"scope": "selected", "image_ids": again},
        format="json",
    )
    job = wait_for_job(r.json()["job"], timeout=600)
    assert (
        job.status == "succeeded"
        and Suggestion.objects.filter(model_version=version).count() == before
    )
