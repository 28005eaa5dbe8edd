"""Model versions and inspection runs as the labeling side sees them: suggestions stored once per
model and settings, training and inspection rules, run figures against ground truth, the models
and run pages."""

import pytest

from annotations.figures import run_figures
from annotations.models import Annotation, Suggestion
from annotations.services.suggestions import suggestions_store
from inspection.models import Image, InspectionRun, ModelVersion
from tests.annotations.conftest import region, square
from tests.conftest import image_bytes

pytestmark = pytest.mark.django_db


def test_rerun_never_duplicates(loop):
    again = suggestions_store(
        image=loop["images"][0],
        run=loop["run"],
        model_version=loop["version"],
        suggestions=[region([1, 1, 5, 5], square(1, 1, 5), 0.99)],
    )
    assert again == [] and Suggestion.objects.filter(image=loop["images"][0]).count() == 2


def test_rerun_with_new_settings_replaces_what_nobody_decided(loop, client_for):
    image, version = loop["images"][0], loop["version"]
    accepted, pending = loop["suggestions"]  # at (10, 10) and (100, 50)
    r = client_for(loop["reviewer"]).post(
        f"/api/suggestions/{accepted.pk}/accept/", {"category": loop["crack"].pk}, format="json"
    )
    assert r.status_code == 201
    rerun = InspectionRun.objects.create(
        project=loop["project"], model_version=version, image_ids=[image.pk],
        params={"threshold": 0.7, "specular_mask": True},
    )  # fmt: skip
    made = suggestions_store(
        image=image,
        run=rerun,
        model_version=version,
        suggestions=[
            region([10, 10, 21, 20], square(10, 10, 21), 0.95),  # the accepted place again
            region([150, 20, 8, 8], square(150, 20, 8), 0.8),  # new
        ],
    )
    assert [s.geometry["points"][0] for s in made] == [[150, 20]]
    left = Suggestion.objects.filter(image=image).order_by("id")
    assert [(s.pk, s.status) for s in left] == [(accepted.pk, "accepted"), (made[0].pk, "pending")]
    assert not Suggestion.objects.filter(pk=pending.pk).exists()
    # the same settings again: nothing new
    again = InspectionRun.objects.create(
        project=loop["project"], model_version=version, image_ids=[image.pk],
        params={"specular_mask": True, "threshold": 0.7, "min_area": 64},
    )  # fmt: skip
    regions = [region([150, 20, 8, 8], square(150, 20, 8), 0.8)]
    assert (
        suggestions_store(image=image, run=again, model_version=version, suggestions=regions) == []
    )


def test_deleting_a_model_version_keeps_its_labels(loop, client_for):
    s = loop["suggestions"][0]
    client_for(loop["reviewer"]).post(
        f"/api/suggestions/{s.pk}/accept/", {"category": loop["crack"].pk}, format="json"
    )
    assert (
        client_for(loop["reviewer"]).delete(f"/api/models/{loop['version'].pk}/").status_code == 403
    )
    assert client_for(loop["admin"]).delete(f"/api/models/{loop['version'].pk}/").status_code == 204
    ann = Annotation.objects.get(suggestion=s)
    assert ann.category == loop["crack"] and ann.source == "suggestion"
    s.refresh_from_db()
    assert s.model_version is None and s.status == "accepted"


def test_training_needs_normal_images_and_an_admin(loop, client_for):
    url = f"/api/projects/{loop['project'].pk}/models/"
    assert (
        client_for(loop["reviewer"]).post(url, {"architecture": "padim"}, format="json").status_code
        == 403
    )
    r = client_for(loop["admin"]).post(url, {"architecture": "padim"}, format="json")
    assert r.status_code == 400 and "at least 2 normal" in r.json()["error"]
    Image.objects.filter(project=loop["project"]).update(is_normal=True)
    r = client_for(loop["admin"]).post(
        url, {"architecture": "padim", "params": {"input_size": 64}}, format="json"
    )
    assert r.status_code == 202 and r.json()["number"] == 2 and r.json()["status"] == "training"
    r = client_for(loop["admin"]).post(
        url, {"architecture": "padim", "params": {"bogus": 1}}, format="json"
    )
    assert r.status_code == 400 and "bogus" in r.json()["error"]


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"scale": 0}, "scale is the tiles' resolution"),
        ({"scale": 5}, "scale is the tiles' resolution"),
        ({"scale": "1"}, "scale is the tiles' resolution"),
        ({"scale": True}, "scale is the tiles' resolution"),
        ({"scale": 1, "tile_overlap": 0.95}, "tile_overlap"),
        ({"scale": 1, "coarse_pass": "yes"}, "coarse_pass is true or false"),
        ({"coarse_pass": True}, "set scale too"),
        ({"lines": 1}, "lines (a dark-line detector beside it) is true or false"),
    ],
)
def test_tile_parameters_are_checked_before_training(loop, client_for, params, says):
    Image.objects.filter(project=loop["project"]).update(is_normal=True)
    url = f"/api/projects/{loop['project'].pk}/models/"
    r = client_for(loop["admin"]).post(url, {"architecture": "padim", "params": params}, "json")
    assert r.status_code == 400 and says in r.json()["error"]
    assert ModelVersion.objects.filter(project=loop["project"]).count() == 1  # nothing queued


def test_training_with_the_line_detector_is_stored_and_shown(loop, client, client_for):
    Image.objects.filter(project=loop["project"]).update(is_normal=True)
    url = f"/api/projects/{loop['project'].pk}/models/"
    params = {"shading": 0.2, "lines": True}
    r = client_for(loop["admin"]).post(url, {"architecture": "padim", "params": params}, "json")
    assert r.status_code == 202
    assert r.json()["params"] == {"model": "padim", **params}
    client.force_login(loop["admin"])
    page = client.get(f"/projects/{loop['project'].pk}/models/").content.decode()
    assert "whole image at 256 px; lighting corrected; + line detector" in page
    # not beside itself: refused before anything is queued
    body = {"architecture": "lines", "params": {"lines": True}}
    r = client_for(loop["admin"]).post(url, body, "json")
    assert r.status_code == 400 and "beside another model" in r.json()["error"]


def test_tiled_training_is_stored_and_shown(loop, client, client_for):
    Image.objects.filter(project=loop["project"]).update(is_normal=True)
    url = f"/api/projects/{loop['project'].pk}/models/"
    params = {"input_size": 128, "scale": 0.5, "tile_overlap": 0.1, "coarse_pass": True}
    r = client_for(loop["admin"]).post(url, {"architecture": "padim", "params": params}, "json")
    assert r.status_code == 202
    assert r.json()["params"] == {"model": "padim", **params}
    client.force_login(loop["admin"])
    page = client.get(f"/projects/{loop['project'].pk}/models/").content.decode()
    assert "tiles of 128 px at scale 0.5 + whole-image pass" in page
    assert "whole image at 256 px" in page  # the fixture's version, trained before
    # 200 px images are small enough to be seen whole: that is what the form proposes
    assert "200 px on their long side (median)" in page and "small enough" in page
    assert '<option value="" selected>' in page


def test_inspection_needs_a_ready_model(loop, client_for):
    url = f"/api/projects/{loop['project'].pk}/runs/"
    ModelVersion.objects.update(is_active=False)
    r = client_for(loop["reviewer"]).post(url, {"scope": "all"}, format="json")
    assert r.status_code == 400 and "train one first" in r.json()["error"]
    ModelVersion.objects.update(is_active=True)
    assert (
        client_for(loop["annotator"]).post(url, {"scope": "all"}, format="json").status_code == 403
    )
    r = client_for(loop["reviewer"]).post(
        url, {"scope": "selected", "image_ids": [999999]}, format="json"
    )
    assert r.status_code == 400
    r = client_for(loop["reviewer"]).post(url, {"scope": "all"}, format="json")
    assert (
        r.status_code == 202
        and r.json()["image_count"] == 2
        and r.json()["job_detail"]["queue"] == "gpu"
    )


def test_run_figures_against_ground_truth(loop, client_for):
    image = loop["images"][0]
    other = loop["images"][1]
    Image.objects.filter(pk=other.pk).update(source_group="test/good")
    gt = {"type": "polygon", "points": square(12, 12, 10)}
    Annotation.objects.create(
        image=image, category=loop["crack"], kind="polygon", geometry=gt, source="ground_truth"
    )
    Annotation.objects.create(
        image=image,
        category=loop["crack"],
        kind="polygon",
        geometry={"type": "polygon", "points": square(150, 10, 5)},
        source="ground_truth",
    )
    suggestions_store(
        image=other,
        run=loop["run"],
        model_version=loop["version"],
        suggestions=[region([1, 1, 5, 5], square(1, 1, 5), 0.8)],
    )
    fig = run_figures(loop["run"], threshold=0.5)
    assert (fig.gt_regions, fig.normal_images, fig.suggestions) == (2, 1, 3)
    assert fig.region_recall == 0.5  # the 0.9 suggestion covers the first region; none the second
    assert fig.precision_gt == round(
        1 / 3, 4
    )  # 0.9 true; 0.7 and the one on the normal image false
    assert fig.false_per_normal_image == 1.0
    at_085 = next(p for p in fig.curve if p["threshold"] == 0.9)
    assert at_085["precision"] == 1.0 and at_085["recall"] == 0.5
    body = client_for(loop["annotator"]).get(f"/api/runs/{loop['run'].pk}/").json()
    assert body["figures"]["region_recall"] == 0.5
    r = client_for(loop["annotator"]).get(f"/api/runs/{loop['run'].pk}/", {"threshold": "high"})
    assert r.status_code == 400 and "threshold" in r.json()["error"]


def test_models_and_run_pages(loop, client, client_for):
    client.force_login(loop["annotator"])
    page = client.get(f"/projects/{loop['project'].pk}/models/").content.decode()
    assert (
        "padim" in page and "active" in page and "Train on" not in page
    )  # annotators do not train
    client.force_login(loop["admin"])
    page = client.get(f"/projects/{loop['project'].pk}/models/").content.decode()
    assert "Train on 0 normal images" in page and f"/runs/{loop['run'].pk}/" in page
    client_for(loop["reviewer"]).post(
        f"/api/suggestions/{loop['suggestions'][0].pk}/accept/",
        {"category": loop["crack"].pk},
        format="json",
    )
    page = client.get(f"/runs/{loop['run'].pk}/").content.decode()
    assert "1 / 0 / 1" in page and "1.000" in page  # accepted / rejected / pending, precision
    assert "has ground truth" in page
    client.force_login(loop["outsider"])
    assert client.get(f"/runs/{loop['run'].pk}/").status_code == 404
    client.force_login(loop["annotator"])
    assert client.get(f"/projects/{loop['project'].pk}/review/").status_code == 403


def test_auto_inspect_on_upload(loop, client_for, upload):
    r = client_for(loop["admin"]).patch(
        f"/api/projects/{loop['project'].pk}/", {"auto_inspect": True}, format="json"
    )
    assert r.status_code == 200 and r.json()["auto_inspect"] is True
    r = client_for(loop["reviewer"]).post(
        f"/api/projects/{loop['project'].pk}/images/",
        {"files": [upload("new.png", image_bytes(seed=77))]},
        format="multipart",
    )
    run = InspectionRun.objects.get(pk=r.json()["inspection_run"])
    assert (
        run.image_ids == [r.json()["files"][0]["image_id"]] and run.model_version == loop["version"]
    )
    assert run.job.kind == "anomaly_inspect"


def test_inspection_settings_on_the_models_and_run_pages(loop, client, client_for):
    from inspection.services.projects import project_update

    project = loop["project"]
    client.force_login(loop["reviewer"])
    page = client.get(f"/projects/{project.pk}/models/").content.decode()
    assert "Run inspection" in page and "inspection-form" not in page  # admins only
    project_update(user=loop["admin"], project=project, inspection={"threshold": 0.8})
    client.force_login(loop["admin"])
    page = client.get(f"/projects/{project.pk}/models/").content.decode()
    assert "(changed)" in page and 'name="threshold" type="number"' in page
    assert 'value="0.8"' in page and 'value="64"' in page
    loop["run"].params = {**project.inspection, "min_area": 64, "max_regions": 20}
    loop["run"].params |= {"specular_mask": True, "specular_v_min": 230, "specular_s_max": 30}
    loop["run"].save()
    page = client.get(f"/runs/{loop['run'].pk}/").content.decode()
    assert "calibrated score 0.8 up, at least 64 px, at most 20 per image" in page
    assert "specular mask on (value &gt; 230, saturation &lt; 30)" in page
    # its figures count from the score it suggested from, unless asked otherwise
    body = client_for(loop["admin"]).get(f"/api/runs/{loop['run'].pk}/").json()
    assert body["params"]["threshold"] == 0.8 and body["figures"]["threshold"] == 0.8
    body = client_for(loop["admin"]).get(f"/api/runs/{loop['run'].pk}/", {"threshold": 0.5})
    assert body.json()["figures"]["threshold"] == 0.5
