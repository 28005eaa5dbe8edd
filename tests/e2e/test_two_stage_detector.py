"""The two-stage change detector in a real browser with a real worker: on a project of paired
scans an admin picks "two-stage" as the detector's way to use the references (the form takes its
own epochs and estimate), trains it, runs it over the scans it has not seen, and a reviewer's A
in the queue of detector suggestions stores a label of the predicted category."""

import pytest

from annotations.models import Annotation, Suggestion
from inspection.models import InspectionRun, ModelVersion
from tests.e2e.test_workspace import login
from tests.workers.tasks.test_two_stage_job import paired_scans

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def test_train_the_two_stage_detector_run_it_and_accept_its_category(
    page, celery_worker, team, tmp_path
):
    data = paired_scans(team, tmp_path)
    project, admin = team["project"], team["admin"]
    login(page, admin.username)
    page.goto(f"/projects/{project.pk}/models/")
    form = page.locator("#detector-form")
    form.wait_for()
    assert "two-stage change detector" in page.locator("#detector-proposal").inner_text()
    reference = form.locator("select[name=reference]")
    assert reference.is_visible() and reference.input_value() == "stacked"  # the proposal's
    # copying defects along the references is offered (the pairs are there), off by default
    transplant = form.locator("input[name=transplant]")
    assert transplant.is_visible() and not transplant.is_checked()
    networks = form.locator("input[name=networks]")
    assert networks.is_hidden()  # the two-stage detector's own setting
    # the stacked and the Siamese PP-YOLOE-SOD keep PP-YOLOE-SOD's settings and the copies
    reference.select_option("siamese")
    for name in ("backbone", "input_size", "batch_size", "rotate", "transplant"):
        assert form.locator(f"[name={name}]").is_visible(), name
    assert networks.is_hidden()
    reference.select_option("two-stage")
    # its own epochs and time estimate, from the server
    page.wait_for_function(
        "() => document.querySelector('#detector-form input[name=epochs]').value === '30'"
    )
    page.locator('#detector-estimate:has-text("DeepPCB benchmark")').wait_for()
    # none of PP-YOLOE-SOD's settings: backbone, input size, slices, batch, turns
    for name in ("backbone", "input_size", "slice", "batch_size", "rotate", "transplant"):
        assert form.locator(f"[name={name}]").is_hidden(), name
    assert form.locator("details.advanced").is_hidden()
    # two networks averaged by default, each trained for the epochs
    assert networks.is_visible() and networks.input_value() == "2"
    page.locator('#detector-estimate:has-text("about 11 min")').wait_for()
    networks.fill("1")
    page.locator('#detector-estimate:has-text("about 6 min")').wait_for()
    networks.fill("2")
    form.locator("input[name=epochs]").fill("8")  # enough for these scans, and quicker
    # 16 epochs in all (each at least 20 batches of DeepPCB-like changes), 2 val pairs checked
    page.locator('#detector-estimate:has-text("about 3 min")').wait_for()
    form.locator("button[type=submit]").click()
    page.locator(
        'tr[data-kind="detector"] .status-ready, #detector-status:has-text("failed:")'
    ).wait_for(timeout=150_000)
    detector = ModelVersion.objects.select_related("job").get(project=project, kind="detector")
    assert detector.status == "ready", detector.job.error
    assert detector.architecture == "two-stage-change" and detector.is_active
    p = detector.params
    assert (p["reference"], p["epochs"], p["networks"]) == ("two-stage", 8, 2)
    assert "backbone" not in p and "input_size" not in p  # none of PP-YOLOE-SOD's settings
    assert detector.metrics["evaluated_on"] == "val"
    row = page.locator(f'tr[data-version="{detector.pk}"]')
    assert "changed against each image's reference" in row.inner_text()
    assert "8 epochs × 2 networks averaged" in row.inner_text()
    assert row.locator('[data-metric="map50"]').inner_text() == f"{detector.metrics['map50']:.3f}"

    # run it over the scans it has not seen: each is compared with its reference
    page.select_option("#detect-form select[name=scope]", "new")
    page.click("#detect-form button[type=submit]")
    page.wait_for_url("**/runs/*/", timeout=90_000)
    page.get_by_role("link", name="Review its suggestions →").wait_for()
    run = InspectionRun.objects.select_related("job").get(model_version=detector)
    assert run.job.status == "succeeded", run.job.error
    (fresh_id,) = data["fresh"]
    assert fresh_id in run.image_ids and "error" not in run.results[str(fresh_id)]
    found = Suggestion.objects.filter(run=run, image_id=fresh_id).order_by("-score", "id")
    shown = [(s.category.name, round(s.score, 3), s.geometry) for s in found]
    assert {s.category.name for s in found[:2]} == {"extra", "missing"}, (shown, data["fresh"])

    # the queue of detector suggestions opens on the best one, its category chosen; A keeps it
    page.goto(f"/projects/{project.pk}/review/?source=detector")
    page.wait_for_function("() => (document.getElementById('viewer').dataset.item || '') !== ''")
    item = page.locator("#viewer").get_attribute("data-item")
    target = Suggestion.objects.select_related("category").get(pk=int(item.split(":")[1]))
    assert target.run_id == run.pk and target.category.name in ("extra", "missing")
    chosen = page.locator('#categories .cat[aria-pressed="true"]')
    assert chosen.get_attribute("data-category") == str(target.category_id)
    page.keyboard.press("a")
    page.wait_for_function("() => document.getElementById('tally').textContent.startsWith('1 acc')")
    accepted = Annotation.objects.get(suggestion=target)
    assert accepted.category_id == target.category_id and accepted.image_id == target.image_id
