"""The change detector through the API and its job bodies (run in this process): pairs made by
the upload's file-name rule are aligned, a change detector is calibrated on the normal and
labelled pairs (labels masked), and a change run suggests the new defect of a tested part and
nothing on an unchanged one; every refusal says why."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image as PILImage

from annotations.models import Suggestion
from annotations.services.categories import category_create
from annotations.services.labels import LabelIn, labels_import
from inspection.models import Image, InspectionRun, Job, ModelVersion
from workers.tasks.change import calibrate_change_model, run_change
from workers.tasks.references import align_references
from workers.tasks.runner import run_job

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("torch_one_thread")]

SIZE = 256


def surface(seed: int) -> np.ndarray:
    """A machined surface larger than the picture (the part shifts between shots)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(80, 200, ((SIZE + 16) // 8, (SIZE + 16) // 8), dtype=np.uint8)
    big = cv2.resize(coarse, (SIZE + 16, SIZE + 16), interpolation=cv2.INTER_LINEAR)
    return cv2.cvtColor(big, cv2.COLOR_GRAY2RGB)


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def pair(seed: int, defect: tuple[int, int] | None = None) -> tuple[bytes, bytes]:
    """(tested, reference): the tested part 3 px right, 2 px down; a dark pit at ``defect``."""
    big = surface(seed)
    rng = np.random.default_rng(seed + 100)

    def shot(crop: np.ndarray) -> np.ndarray:  # each shot has its own sensor noise
        noisy = crop.astype(np.float32) + rng.normal(0, 3, crop.shape)
        return np.clip(noisy, 0, 255).astype(np.uint8)

    reference = shot(big[4 : 4 + SIZE, 4 : 4 + SIZE])
    tested = big[6 : 6 + SIZE, 7 : 7 + SIZE].copy()
    if defect is not None:
        cv2.circle(tested, defect, 10, (15, 15, 15), -1)
    return png(shot(tested)), png(reference)


def bounds(geometry: dict) -> tuple[float, float, float, float]:
    if geometry["type"] == "box":
        return tuple(geometry[k] for k in ("x", "y", "w", "h"))
    xs, ys = zip(*geometry["points"], strict=True)
    return min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)


def upload_pairs(client, project, upload, pairs: dict[str, tuple[bytes, bytes]], **extra):
    files = []
    for stem, (tested, reference) in pairs.items():
        files += [upload(f"{stem}_test.png", tested), upload(f"{stem}_temp.png", reference)]
    r = client.post(
        f"/api/projects/{project.pk}/images/", {"files": files, **extra}, format="multipart"
    )
    assert r.status_code == 201 and r.json()["paired"] == len(pairs), r.content
    job = Job.objects.filter(kind="reference_align").latest("created_at")
    assert run_job(str(job.pk), align_references.body) == "succeeded"


def test_calibrate_on_pairs_then_a_change_run_suggests_the_new_defect(team, client_for, upload):
    project, admin = team["project"], client_for(team["admin"])
    # calibration pairs: two normal ones, one labelled (its pit is masked out)
    upload_pairs(admin, project, upload, {"n1": pair(1), "n2": pair(2)}, is_normal="true")
    upload_pairs(admin, project, upload, {"l1": pair(3, defect=(60, 180))})
    labelled = Image.objects.get(original_name="l1_test.png")
    pit = category_create(user=team["admin"], project=project, name="pit")
    labels_import(
        user=team["admin"],
        image=labelled,
        labels=[LabelIn(pit, {"type": "box", "x": 48, "y": 168, "w": 24, "h": 24})],
        source="import",
    )
    r = admin.post(f"/api/projects/{project.pk}/models/", {"kind": "change"}, format="json")
    assert r.status_code == 202, r.content
    version = ModelVersion.objects.get(pk=r.json()["id"])
    assert version.kind == "change" and len(version.image_ids) == 3
    assert run_job(str(version.job_id), calibrate_change_model.body) == "succeeded"
    version.refresh_from_db()
    assert version.status == "ready" and version.is_active, version.metrics
    assert version.metrics["pairs"] == 3 and version.metrics["pairs_labelled"] == 1
    assert version.metrics["threshold"] > version.metrics["typical"]

    # new parts: one with a pit, one unchanged
    upload_pairs(admin, project, upload, {"t1": pair(7, defect=(170, 90)), "t2": pair(8)})
    r = client_for(team["reviewer"]).post(
        f"/api/projects/{project.pk}/runs/", {"kind": "change", "scope": "new"}, format="json"
    )
    assert r.status_code == 202, r.content
    run = InspectionRun.objects.get(pk=r.json()["id"])
    t1, t2 = (Image.objects.get(original_name=f"t{n}_test.png") for n in (1, 2))
    # only paired images are compared (not the references, not the calibration pairs)
    assert set(run.image_ids) == {t1.pk, t2.pk}
    assert run_job(str(run.job_id), run_change.body) == "succeeded", Job.objects.get(
        pk=run.job_id
    ).error
    run.refresh_from_db()
    assert set(run.results) == {str(t1.pk), str(t2.pk)}, run.results
    found = list(Suggestion.objects.filter(image=t1, run=run))
    assert found, run.results
    # the pit at (170, 90), radius 10: the best suggestion covers it, by far the strongest
    best = max(found, key=lambda s: s.score)
    x, y, w, h = bounds(best.geometry)
    assert x <= 170 <= x + w and y <= 90 <= y + h, best.geometry
    # far above anything else on the part (texture seen at the picture's border, where the two
    # shots' content differs, can come out just above the threshold on so little calibration)
    assert all(best.score > 5 * f.score for f in found if f is not best), found
    assert not Suggestion.objects.filter(image=t2, run=run).exists(), run.results
    # heatmaps as for an inspection: the workspace's H shows it
    body = client_for(team["annotator"]).get(f"/api/images/{t1.pk}/").json()
    assert body["urls"]["heatmap"]
    # the suggestions are of source "change" in the review queue
    queue = client_for(team["reviewer"]).get(
        f"/api/projects/{project.pk}/suggestions/?source=change"
    )
    assert queue.status_code == 200 and queue.json()["count"] == len(found)


def test_change_detector_refusals(team, client_for, upload):
    project, admin = team["project"], client_for(team["admin"])
    url = f"/api/projects/{project.pk}/models/"
    r = admin.post(url, {"kind": "change"}, format="json")
    assert r.status_code == 400 and "has none" in str(r.json())
    r = admin.post(url, {"kind": "change", "params": {"quantile": 2}}, format="json")
    assert r.status_code == 400 and "quantile must be a number" in str(r.json())
    r = admin.post(url, {"kind": "change", "params": {"epochs": 2}}, format="json")
    assert r.status_code == 400 and "Unknown parameter" in str(r.json())
    assert (
        client_for(team["reviewer"]).post(url, {"kind": "change"}, format="json").status_code == 403
    )
    runs = f"/api/projects/{project.pk}/runs/"
    r = client_for(team["reviewer"]).post(runs, {"kind": "change"}, format="json")
    assert r.status_code == 400 and "no active change detector" in str(r.json())

    upload_pairs(admin, project, upload, {"n1": pair(1)}, is_normal="true")
    r = admin.post(url, {"kind": "change"}, format="json")
    version = ModelVersion.objects.get(pk=r.json()["id"])
    assert run_job(str(version.job_id), calibrate_change_model.body) == "succeeded"
    lone = Image.objects.get(original_name="n1_temp.png")  # a reference: nothing to compare
    r = client_for(team["reviewer"]).post(
        runs, {"kind": "change", "scope": "selected", "image_ids": [lone.pk]}, format="json"
    )
    assert r.status_code == 400 and "No aligned reference to compare with: n1_temp.png" in str(
        r.json()
    )


def test_a_change_run_honours_the_regions_of_interest(team, client_for, upload):
    """A region drawn on a tested part's reference tags the change found in it; excluded, it
    suggests nothing there; a part that cannot be registered onto that reference is not
    compared, and the run says why."""
    project, admin = team["project"], client_for(team["admin"])
    upload_pairs(admin, project, upload, {"n1": pair(1), "n2": pair(2)}, is_normal="true")
    r = admin.post(f"/api/projects/{project.pk}/models/", {"kind": "change"}, format="json")
    version = ModelVersion.objects.get(pk=r.json()["id"])
    assert run_job(str(version.job_id), calibrate_change_model.body) == "succeeded"
    upload_pairs(admin, project, upload, {"t1": pair(7, defect=(170, 90)), "t2": pair(8)})
    t1, t2 = (Image.objects.get(original_name=f"t{n}_test.png") for n in (1, 2))
    # the pit at (170, 90) of t1 lies at (173, 92) of its reference (the shot moved 3, 2 px)
    r = admin.post(
        f"/api/projects/{project.pk}/regions/",
        {
            "name": "boss",
            "reference": t1.reference_id,
            "polygon": [[140, 60], [210, 60], [210, 125], [140, 125]],
        },
        format="json",
    )
    assert r.status_code == 201, r.content
    region = r.json()["id"]
    reviewer = client_for(team["reviewer"])

    def change_run() -> InspectionRun:
        r = reviewer.post(
            f"/api/projects/{project.pk}/runs/",
            {"kind": "change", "scope": "selected", "image_ids": [t1.pk, t2.pk]},
            format="json",
        )
        assert r.status_code == 202, r.content
        run = InspectionRun.objects.get(pk=r.json()["id"])
        assert run.params["regions"][0]["id"] == region
        assert run_job(str(run.job_id), run_change.body) == "succeeded"
        run.refresh_from_db()
        # t2 is another part: registered onto t1's reference it would put the regions anywhere
        assert "could not be registered onto t1_temp.png" in run.results[str(t2.pk)]["error"]
        return run

    run = change_run()
    found = list(Suggestion.objects.filter(image=t1, run=run))
    best = max(found, key=lambda s: s.score)
    x, y, w, h = bounds(best.geometry)
    assert x <= 170 <= x + w and y <= 90 <= y + h and best.region_id == region, best.geometry
    queue = reviewer.get(f"/api/projects/{project.pk}/suggestions/?region={region}").json()
    assert best.pk in {s["id"] for s in queue["results"]}

    r = admin.patch(f"/api/regions/{region}/", {"mode": "exclude"}, format="json")
    assert r.status_code == 200, r.content
    run = change_run()
    assert "error" not in run.results[str(t1.pk)], run.results
    # masked: nothing suggested over the pit any more (the undecided one was replaced)
    for s in Suggestion.objects.filter(image=t1, status="pending"):
        x, y, w, h = bounds(s.geometry)
        assert not (x <= 170 <= x + w and y <= 90 <= y + h), s.geometry


def test_a_change_run_masks_highlights_when_the_project_does(team, client_for, upload):
    """A glint on the tested part is a change; with the project's specular mask on (the
    inspection setting), a change run no longer suggests it, as an inspection would not."""
    project, admin = team["project"], client_for(team["admin"])
    upload_pairs(admin, project, upload, {"n1": pair(1), "n2": pair(2)}, is_normal="true")
    r = admin.post(f"/api/projects/{project.pk}/models/", {"kind": "change"}, format="json")
    version = ModelVersion.objects.get(pk=r.json()["id"])
    assert run_job(str(version.job_id), calibrate_change_model.body) == "succeeded"
    tested, reference = pair(7)
    glint = np.array(PILImage.open(io.BytesIO(tested)))
    cv2.circle(glint, (170, 90), 10, (255, 255, 255), -1)
    upload_pairs(admin, project, upload, {"g1": (png(glint), reference)})
    g1 = Image.objects.get(original_name="g1_test.png")

    def glints() -> list:
        r = client_for(team["reviewer"]).post(
            f"/api/projects/{project.pk}/runs/",
            {"kind": "change", "scope": "selected", "image_ids": [g1.pk]},
            format="json",
        )
        assert r.status_code == 202, r.content
        run = InspectionRun.objects.get(pk=r.json()["id"])
        assert run_job(str(run.job_id), run_change.body) == "succeeded"
        out = []
        for s in Suggestion.objects.filter(image=g1, status="pending"):
            x, y, w, h = bounds(s.geometry)
            if x <= 170 <= x + w and y <= 90 <= y + h:
                out.append(s)
        return out

    assert glints(), "the glint is a change like any other without the mask"
    r = admin.patch(
        f"/api/projects/{project.pk}/", {"inspection": {"specular_mask": True}}, format="json"
    )
    assert r.status_code == 200, r.content
    assert glints() == []
