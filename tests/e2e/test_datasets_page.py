"""An admin freezes a dataset version, exports it with a progress bar and imports a zip."""

import io
import json
import zipfile

import pytest

from annotations.models import DatasetVersion
from inspection.models import Image
from tests.annotations.test_datasets import add_image, box, label
from tests.conftest import PASSWORD, image_bytes

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def test_freeze_export_and_import_from_the_browser(page, celery_worker, team, tmp_path):
    project = team["project"]
    im = add_image(project, team["admin"], tmp_path, "a.png")
    label(im, "scratch", box(1, 1, 5, 5))

    page.goto("/login/")
    page.fill("input[name=username]", team["admin"].username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.goto(f"/projects/{project.pk}/settings/")
    page.get_by_role("link", name="Datasets: frozen versions, export, import →").click()
    page.fill("#freeze-form input[name=note]", "first cut")
    page.click("#freeze-form button[type=submit]")
    page.locator('tr[data-version="1"]').wait_for()
    assert "first cut" in page.locator('tr[data-version="1"]').inner_text()
    assert DatasetVersion.objects.get(project=project).counts["shapes"] == 1

    page.click('tr[data-version="1"] button[data-format="coco"]')
    status = page.locator('tr[data-version="1"] .export-status')
    status.locator("a").wait_for(timeout=60_000)
    assert "succeeded" in status.inner_text()
    assert status.locator("progress").evaluate("e => e.value") == 100
    with page.expect_download() as got:
        status.locator("a").click()
    assert zipfile.ZipFile(got.value.path()).namelist()

    coco = {
        "images": [{"id": 1, "file_name": "b.png", "width": 64, "height": 48}],
        "categories": [{"id": 1, "name": "dent"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 5]},
            {"id": 2, "image_id": 5, "category_id": 1, "bbox": [1, 2, 10, 5]},
        ],
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("instances_train.json", json.dumps(coco))
        zf.writestr("b.png", image_bytes("PNG", size=(64, 48), seed=77))
    (tmp_path / "in.zip").write_bytes(buf.getvalue())
    page.set_input_files("#import-form input[name=zip]", str(tmp_path / "in.zip"))
    page.click("#import-form button[type=submit]")
    page.locator("#import-report li").wait_for(timeout=60_000)
    assert "image id 5" in page.locator("#import-report").inner_text()
    assert "succeeded" in page.locator("#import-status").inner_text()
    assert Image.objects.filter(project=project).count() == 2
