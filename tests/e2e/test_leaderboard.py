"""Which model for this part? An admin compares PaDiM and PatchCore, each with and without the
shading correction and at two resolutions, on the project's own reviewed bottles (real MVTec
images: normals, and broken bottles whose ground truth came with the import), reads the table
and its figures per defect kind, and activates the best with one click."""

import shutil
from pathlib import Path

import pytest
from django.template.defaultfilters import floatformat

from annotations.services.dataset_import import dataset_import_run
from inspection import storage
from inspection.models import Job, ModelVersion
from inspection.services.inspections import comparison_rank
from tests.conftest import dataset
from tests.e2e.test_workspace import login

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def small_bottles(root, dest):
    """6 normal bottles and 3 broken ones (2 large breaks, 1 small) with their masks, in MVTec
    layout."""
    for i, p in enumerate(sorted((root / "train" / "good").glob("*.png"))[:6]):
        (dest / "train" / "good").mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dest / "train" / "good" / f"{i:03d}.png")
    for kind, n in (("broken_large", 2), ("broken_small", 1)):
        for p in sorted((root / "test" / kind).glob("*.png"))[:n]:
            for sub, name in (("test", p.name), ("ground_truth", f"{p.stem}_mask.png")):
                (dest / sub / kind).mkdir(parents=True, exist_ok=True)
                shutil.copy(root / sub / kind / name, dest / sub / kind / name)
    return dest


def test_compare_models_on_reviewed_images_and_activate_the_best(
    page, celery_worker, team, tmp_path
):
    project, admin = team["project"], team["admin"]
    folder = small_bottles(dataset("mvtec_bottle"), tmp_path / "bottles")
    report = dataset_import_run(
        user=admin, project=project, fmt="mvtec", folder=folder, build_pyramids=False
    )
    assert (report["images"], report["annotations"]) == (9, 3), report

    login(page, admin.username)
    page.goto(f"/projects/{project.pk}/models/")
    form = page.locator("#compare-form")
    checked = [
        box.get_attribute("value")
        for box in form.locator("input[name=architectures]").all()
        if box.is_checked()
    ]
    assert checked == ["padim", "patchcore", "patchcore_fine"]  # the one-pass models
    # bottles are 900 px: seen whole, as the training form proposes for them; this admin
    # wants tiles at half resolution, and to know whether a quarter would do
    assert form.locator("select[name=scale]").input_value() == ""
    form.locator("select[name=scale]").select_option("0.5")
    # each model with and without the shading correction, at full and half that resolution:
    # four settings apiece, so four models make 16 versions, and more than 8 are refused
    form.locator("input[name=shading_variants]").check()
    form.locator("input[name=size_variants]").check()
    form.locator("input[name=architectures][value=lbp]").check()
    form.locator("button[type=submit]").click()
    status = page.locator("#compare-status")
    status.filter(has_text="4 model(s) in 4 settings make 16 versions").wait_for()
    assert "Not started" in status.inner_text() and "at most 8" in status.inner_text()
    assert not Job.objects.filter(project=project).exists()
    assert not ModelVersion.objects.filter(project=project).exists()
    for name in ("lbp", "patchcore_fine"):
        form.locator(f"input[name=architectures][value={name}]").uncheck()
    form.locator("button[type=submit]").click()
    page.locator("#comparison-table").wait_for(timeout=300_000)

    job = Job.objects.get(project=project, kind="anomaly_compare")
    assert job.status == "succeeded", job.error
    assert (job.result["defect_images"], job.result["normal_images"]) == (3, 2)
    assert job.result["training_images"] == 4
    # MVTec's masks came in as polygons: every defect image counts for the pixel figures too
    assert job.result["pixel_defect_images"] == 3
    status = page.locator("#comparison-status").inner_text()
    assert "scored on 3 reviewed defect images and 2 normal images, trained on 4" in status
    rows = page.locator("#comparison-table tr[data-comparison-version]")
    assert rows.count() == 8
    versions = ModelVersion.objects.filter(project=project).order_by("number")
    settings = [(v.params.get("shading"), v.params.get("scale")) for v in versions]
    assert [v.architecture for v in versions] == ["padim"] * 4 + ["patchcore"] * 4
    assert settings == [(None, 0.5), (None, 0.25), (0.2, 0.5), (0.2, 0.25)] * 2
    assert all(v.status == "ready" and not v.is_active for v in versions)
    for v, (shading, scale) in zip(versions, settings, strict=True):
        # each row says how its model saw the images
        cell = page.locator(f'tr[data-comparison-version="{v.pk}"] td').first.inner_text()
        assert f"tiles of 256 px at scale {scale:g}" in cell, cell
        assert ("lighting corrected" in cell) == bool(shading), cell
        figures = v.metrics["comparison"]
        assert figures["images"] == 5 and figures["pixel_defect_images"] == 3
        assert 0 <= figures["image_auroc"] <= 1 and 0 <= figures["pixel_auroc"] <= 1
        # every figure with its 95 % bootstrap interval, shown under it and drawn as a whisker
        row = page.locator(f'tr[data-comparison-version="{v.pk}"]')
        for name in ("image_auroc", "pixel_auroc", "au_pro", "region_recall"):
            lo, hi = figures["intervals"][name]
            assert lo <= figures[name] <= hi, (name, figures["intervals"][name], figures[name])
            # rounded as the page rounds (half up: 0.985 shows as 0.99, where Python says 0.98)
            assert floatformat(figures[name], 3) in row.inner_text()
            assert f"{floatformat(lo, 2)}–{floatformat(hi, 2)}" in row.inner_text()
        for dot in ("auroc", "pixel", "aupro", "region", "recall"):
            assert row.locator(f"svg.dots circle.{dot}").count() == 1, dot
        assert isinstance(figures["model_mb"], float)  # its size on disk
        # the memory a fresh process took to load it and predict: torch alone is over 100 MB
        assert figures["memory_mb"] > 100, figures["memory_mb"]
        assert floatformat(figures["memory_mb"], 0) in row.inner_text()
    header = page.locator("#comparison-table thead").inner_text()
    assert "Size on disk, MB" in header and "Model MB" not in header
    assert "Memory to run, MB" in header
    # which kinds of defect each model finds: a line per label category, a cell per version
    kinds = page.locator("#comparison-kinds")
    assert kinds.locator("thead th").count() == 2 + 8
    for kind, images in (("broken_large", 2), ("broken_small", 1)):
        line = kinds.locator(f'tr[data-kind="{kind}"] td')
        assert line.nth(0).inner_text() == kind and line.nth(1).inner_text() == str(images)
        for i, v in enumerate(versions):
            f = v.metrics["comparison"]["by_type"][kind]
            assert f["images"] == images and f["regions"] >= images
            cell = line.nth(2 + i).inner_text()
            assert cell.startswith(floatformat(f["region_recall"], 2)), (kind, cell)
            assert f"image AUROC {floatformat(f['image_auroc'], 2)}" in cell, (kind, cell)
            assert f"AU-PRO {floatformat(f['au_pro'], 2)}" in cell, (kind, cell)
    # large breaks are easy: every model tells them from the normal bottles
    assert all(v.metrics["comparison"]["by_type"]["broken_large"]["image_auroc"] == 1.0
               for v in versions)  # fmt: skip

    best = ModelVersion.objects.get(pk=job.result["best"])
    scale = best.params["scale"]
    corrected = "; lighting corrected" if best.params.get("shading") else ""
    # the best model's setup, then the kind it finds least of (both kinds have regions here),
    # unless it found every region of that kind too
    by_type = best.metrics["comparison"]["by_type"]
    weak = min(by_type, key=lambda k: comparison_rank(by_type[k]))
    found = round(by_type[weak]["region_recall"] * by_type[weak]["regions"])
    weakest = f"; weakest on {weak}: {found} of {by_type[weak]['regions']} regions found"
    assert job.result["message"].endswith(
        f"best: {best.architecture} v{best.number} (tiles of 256 px at scale {scale:g}{corrected})"
        + (weakest if found < by_type[weak]["regions"] else "")
    ), job.result["message"]
    best_row = page.locator("#comparison-table tr.best")
    assert best_row.get_attribute("data-comparison-version") == str(best.pk)
    assert "best" in best_row.inner_text()
    best_row.get_by_role("button", name="Make active").click()
    page.locator("#comparison-table tr.best .badge", has_text="active").wait_for()
    best.refresh_from_db()
    assert best.is_active
    assert ModelVersion.objects.filter(project=project, is_active=True).count() == 1


def padim_compare_form(page, team, tmp_path):
    """The admin on the models page of a project holding the small bottles, PaDiM alone ticked
    in the comparison form (returned)."""
    project, admin = team["project"], team["admin"]
    folder = small_bottles(dataset("mvtec_bottle"), tmp_path / "bottles")
    dataset_import_run(
        user=admin, project=project, fmt="mvtec", folder=folder, build_pyramids=False
    )
    login(page, admin.username)
    page.goto(f"/projects/{project.pk}/models/")
    form = page.locator("#compare-form")
    for name in ("patchcore", "patchcore_fine"):
        form.locator(f"input[name=architectures][value={name}]").uncheck()
    return form


def test_compare_tiles_with_and_without_a_whole_image_pass(page, celery_worker, team, tmp_path):
    """The leaderboard also says whether a tiled model needs a whole-image model beside it (the
    coarse pass): one version each way, scored on the same reviewed bottles."""
    project = team["project"]
    form = padim_compare_form(page, team, tmp_path)
    form.locator("input[name=coarse_variants]").check()
    # a whole image has no tiles to add a whole-image pass to: said before anything starts
    form.locator("button[type=submit]").click()
    status = page.locator("#compare-status")
    status.filter(has_text="The whole-image pass goes with tiles").wait_for()
    assert not Job.objects.filter(project=project).exists()
    form.locator("select[name=scale]").select_option("0.5")
    form.locator("button[type=submit]").click()
    page.locator("#comparison-table").wait_for(timeout=300_000)

    job = Job.objects.get(project=project, kind="anomaly_compare")
    assert job.status == "succeeded", job.error
    versions = list(ModelVersion.objects.filter(project=project).order_by("number"))
    assert [(v.architecture, v.params.get("scale"), v.params.get("coarse_pass")) for v in versions] == [
        ("padim", 0.5, None), ("padim", 0.5, True)
    ]  # fmt: skip
    for v, words in zip(versions, ("", " + whole-image pass"), strict=True):
        cell = page.locator(f'tr[data-comparison-version="{v.pk}"] td').first.inner_text()
        assert f"tiles of 256 px at scale 0.5{words}" in cell, cell
        assert v.status == "ready" and 0 <= v.metrics["comparison"]["image_auroc"] <= 1
    # only the second version was trained with a whole-image model beside its tiles
    for v, coarse in zip(versions, (False, True), strict=True):
        with storage.local_tree(str(Path(v.artifact).parent)) as folder:
            assert (folder / "coarse" / "model.pt").is_file() == coarse, v.params


def test_compare_each_model_with_and_without_the_line_detector(page, celery_worker, team, tmp_path):
    """The leaderboard says whether a part's defects need the dark-line detector beside a
    model: PaDiM alone and with it, scored on the same reviewed bottles; the line detector
    itself is not something to put beside itself."""
    project = team["project"]
    form = padim_compare_form(page, team, tmp_path)
    form.locator("input[name=architectures][value=lines]").check()
    form.locator("input[name=lines_variants]").check()
    form.locator("button[type=submit]").click()
    status = page.locator("#compare-status")
    status.filter(has_text="The line detector goes beside another model").wait_for()
    assert not Job.objects.filter(project=project).exists()
    form.locator("input[name=architectures][value=lines]").uncheck()
    form.locator("button[type=submit]").click()
    page.locator("#comparison-table").wait_for(timeout=300_000)

    job = Job.objects.get(project=project, kind="anomaly_compare")
    assert job.status == "succeeded", job.error
    versions = list(ModelVersion.objects.filter(project=project).order_by("number"))
    assert [(v.architecture, v.params.get("lines")) for v in versions] == [
        ("padim", None), ("padim", True)
    ]  # fmt: skip
    for v, words in zip(versions, ("", "; + line detector"), strict=True):
        cell = page.locator(f'tr[data-comparison-version="{v.pk}"] td').first.inner_text()
        assert cell.strip().endswith(f"whole image at 256 px{words}"), cell
        assert v.status == "ready" and 0 <= v.metrics["comparison"]["image_auroc"] <= 1
    # only the second version carries a line model beside its own
    for v, lines in zip(versions, (False, True), strict=True):
        with storage.local_tree(str(Path(v.artifact).parent)) as folder:
            assert (folder / "lines" / "model.pt").is_file() == lines, v.params
