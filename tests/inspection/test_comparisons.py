"""Starting a model comparison (the leaderboard) through the API: who may, what it refuses,
what it makes (a version per model, none active, one job), and the job body's pure parts."""

import numpy as np
import pytest

from inspection.models import Job, ModelVersion
from inspection.services.images import IncomingFile, image_store_one
from tests.conftest import image_bytes

pytestmark = pytest.mark.django_db


def normals(team, tmp_path, n: int, split: str = "", first_seed: int = 0) -> list[int]:
    ids = []
    for i in range(first_seed, first_seed + n):
        path = tmp_path / f"good-{i}.png"
        path.write_bytes(image_bytes("PNG", size=(64, 48), seed=i))
        out = image_store_one(
            project=team["project"],
            user=team["admin"],
            incoming=IncomingFile(path.name, path),
            is_normal=True,
            split=split,
        )
        ids.append(out.image_id)
    return ids


def url(team) -> str:
    return f"/api/projects/{team['project'].pk}/model-comparisons/"


def test_a_comparison_makes_one_inactive_version_per_model_and_sets_normals_aside(
    team, client_for, tmp_path
):
    ids = sorted(normals(team, tmp_path, 7))
    admin = client_for(team["admin"])
    assert admin.get(url(team)).status_code == 404  # none yet
    r = admin.post(url(team), {"architectures": ["padim", "patchcore"]}, format="json")
    assert r.status_code == 202, r.content
    job = Job.objects.get(pk=r.json()["id"])
    assert job.kind == "anomaly_compare" and job.queue == "gpu"
    assert job.payload["eval_normal_ids"] == [ids[0], ids[5]]  # one in five, at least one
    versions = list(ModelVersion.objects.filter(job=job).order_by("number"))
    assert [(v.architecture, v.number, v.status, v.is_active) for v in versions] == [
        ("padim", 1, "training", False),
        ("patchcore", 2, "training", False),
    ]
    assert all(v.image_ids == [i for i in ids if i not in (ids[0], ids[5])] for v in versions)
    assert admin.get(url(team)).json()["id"] == str(job.pk)


def test_normal_images_of_the_test_split_are_scored_never_trained_on(team, client_for, tmp_path):
    trained = sorted(normals(team, tmp_path, 6))
    tested = sorted(normals(team, tmp_path, 2, split="test", first_seed=10))
    r = client_for(team["admin"]).post(url(team), {"architectures": ["padim"]}, format="json")
    assert r.status_code == 202, r.content
    job = Job.objects.get(pk=r.json()["id"])
    assert job.payload["eval_normal_ids"] == sorted([trained[0], trained[5], *tested])
    version = ModelVersion.objects.get(job=job)
    assert version.image_ids == trained[1:5]


def test_each_model_in_each_setting_one_version_apiece(team, client_for, tmp_path):
    normals(team, tmp_path, 4)
    body = {
        "architectures": ["padim", "patchcore"],
        "params": {"scale": 0.5},
        "variants": [{}, {"shading": 0.2}],
    }
    r = client_for(team["admin"]).post(url(team), body, format="json")
    assert r.status_code == 202, r.content
    job = Job.objects.get(pk=r.json()["id"])
    versions = ModelVersion.objects.filter(job=job).order_by("number")
    # model by model, each as it is and then with the correction, the shared scale in all
    assert [(v.architecture, v.params) for v in versions] == [
        ("padim", {"model": "padim", "scale": 0.5}),
        ("padim", {"model": "padim", "scale": 0.5, "shading": 0.2}),
        ("patchcore", {"model": "patchcore", "scale": 0.5}),
        ("patchcore", {"model": "patchcore", "scale": 0.5, "shading": 0.2}),
    ]
    assert job.payload["variants"] == [{}, {"shading": 0.2}]
    assert not any(v.is_active for v in versions)


@pytest.mark.parametrize(
    "body, message",
    [
        ({"architectures": []}, "architectures"),
        (
            {
                "architectures": ["padim", "patchcore", "lbp"],
                "variants": [{}, {"shading": 0.1}, {"shading": 0.2}],
            },
            "make 9 versions",
        ),
        ({"architectures": ["padim"], "variants": [{}, {}]}, "the same"),
        # the same once laid over the shared parameters, or once defaults are dropped
        (
            {
                "architectures": ["padim"],
                "params": {"shading": 0.2},
                "variants": [{}, {"shading": 0.2}],
            },
            "the same once laid over",
        ),
        ({"architectures": ["padim"], "variants": [{}, {"shading": 0}]}, "the same"),
        ({"architectures": ["padim"], "variants": [{"scale": 1}, {"scale": 1.0}]}, "the same"),
        ({"architectures": ["padim"], "variants": []}, "variants"),
        ({"architectures": ["padim"], "variants": [{"layers": 3}]}, "Unknown parameter"),
        ({"architectures": ["padim"], "variants": ["shading"]}, "variants"),
        ({"architectures": ["padim"], "variants": {"shading": 0.2}}, "variants"),
        # EfficientAD's autoencoder takes 256 px or more: not at half resolution
        (
            {"architectures": ["padim", "efficientad"], "variants": [{}, {"input_size": 128}]},
            "256 px or more for efficientad",
        ),
        ({"architectures": ["padim"], "params": {"input_size": 100}}, "multiple of 32"),
        ({"architectures": ["resnet"]}, "architectures"),
        ({"architectures": ["padim"], "params": {"layers": 3}}, "Unknown parameter"),
        ({"architectures": ["padim"], "params": {"scale": 9}}, "scale"),
        ({"architectures": ["padim"], "params": {"multiscale": [256, 100]}}, "multiscale"),
        ({"architectures": ["padim"], "params": {"multiscale": [128, 64]}}, "the input size"),
        ({"architectures": ["padim"], "params": {"multiscale": "256,128"}}, "multiscale"),
        (
            {
                "architectures": ["padim"],
                "params": {"multiscale": [256, 128], "multiscale_fusion": "sum"},
            },
            "mean or max",
        ),
        # a whole-image pass goes beside tiles: a variant that adds it to a whole image is
        # refused before anything trains
        (
            {"architectures": ["padim"], "variants": [{}, {"coarse_pass": True}]},
            "coarse_pass adds a whole-image pass to a tiled model",
        ),
        (
            {"architectures": ["padim"], "params": {"scale": 1}, "variants": [{"coarse_pass": 1}]},
            "coarse_pass is true or false",
        ),
        ({"architectures": ["padim"], "variants": [{}, {"lines": "yes"}]}, "lines (a dark-line"),
        # the line detector goes beside another model, not beside itself
        (
            {"architectures": ["padim", "lines"], "variants": [{}, {"lines": True}]},
            "beside another model",
        ),
        ({"architectures": ["padim"], "variants": [{}, {"lines": False}]}, "the same"),
        ({"architectures": ["padim"], "params": {"shading": 2}}, "shorter side"),
        ({"architectures": ["padim"], "params": {"shading": "on"}}, "shading"),
    ],
)
def test_what_a_comparison_refuses(team, client_for, tmp_path, body, message):
    normals(team, tmp_path, 4)
    r = client_for(team["admin"]).post(url(team), body, format="json")
    assert r.status_code == 400 and message in r.content.decode(), r.content
    assert not ModelVersion.objects.exists() and not Job.objects.exists()


def test_a_bad_setting_is_named_under_variants(team, client_for, tmp_path):
    normals(team, tmp_path, 4)
    body = {"architectures": ["padim"], "variants": [{}, {"shading": 2}]}
    r = client_for(team["admin"]).post(url(team), body, format="json")
    assert r.status_code == 400, r.content
    (message,) = r.json()["detail"]["variants"]
    assert message.startswith('Setting 2 ({"shading": 2}): ') and "shorter side" in message
    assert not ModelVersion.objects.exists() and not Job.objects.exists()


def test_training_refuses_an_input_the_model_cannot_take(team, client_for, tmp_path):
    normals(team, tmp_path, 3)
    models = f"/api/projects/{team['project'].pk}/models/"
    body = {"architecture": "efficientad", "params": {"input_size": 128}}
    r = client_for(team["admin"]).post(models, body, format="json")
    assert r.status_code == 400 and "256 px or more for efficientad" in r.content.decode()
    assert not ModelVersion.objects.exists() and not Job.objects.exists()


def test_too_few_normals_and_roles(team, client_for, tmp_path):
    normals(team, tmp_path, 2)
    r = client_for(team["admin"]).post(url(team), {"architectures": ["padim"]}, format="json")
    assert r.status_code == 400 and "at least 3 normal images" in r.content.decode()
    normals(team, tmp_path, 2)
    for who, code in (("reviewer", 403), ("annotator", 403), ("outsider", 404)):
        r = client_for(team[who]).post(url(team), {"architectures": ["padim"]}, format="json")
        assert r.status_code == code, (who, r.status_code)
    assert client_for(None).post(url(team), {"architectures": ["padim"]}).status_code == 401
    assert not ModelVersion.objects.exists()


def test_label_masks_and_the_ranking():
    from inspection.services.inspections import comparison_rank
    from workers.tasks.anomaly_compare import mask_of

    mask = mask_of(
        [
            {"type": "box", "x": 2, "y": 3, "w": 4, "h": 2},
            {"type": "polygon", "points": [[10, 10], [14, 10], [14, 14], [10, 14]]},
            {"type": "polygon", "points": [[1, 1], [2, 2]]},  # not an area: ignored
        ],
        20,
        20,
    )
    assert mask.dtype == np.uint8 and int((mask[3:5, 2:6] == 255).sum()) == 8
    assert mask[:3].sum() == 0 and mask[12, 12] == 255
    rows = [
        {"figures": {"region_recall": 0.8, "image_auroc": 0.9, "pixel_auroc": 0.95}},
        {"figures": {"region_recall": 0.8, "image_auroc": 0.95, "pixel_auroc": 0.9}},
        {"figures": {"region_recall": None, "image_auroc": 1.0, "pixel_auroc": 1.0}},
        {"error": "no teacher"},
    ]
    assert max(rows, key=lambda r: comparison_rank(r.get("figures"))) is rows[1]


def test_an_images_defect_kind_comes_from_its_labels_categories():
    from workers.tasks.anomaly_compare import defect_kind

    box = {"type": "box", "x": 0, "y": 0, "w": 2, "h": 2}
    assert defect_kind([("crack", box), ("crack", box)]) == "crack"
    assert defect_kind([("scratch", box), ("crack", box)]) == "crack + scratch"
    # a category a team named "good" is still a defect: never the engine's good images
    assert defect_kind([("good", box)]) == "good (label)"


def test_the_leaderboard_shows_every_figure_with_its_interval(team, client_for):
    """The stored figures as the compare job writes them (``figures["intervals"]`` from the
    engine's evaluation): the table prints each interval, the plot draws a dot and a whisker per
    figure, a figure without an interval gets its dot only, and the model's size is on disk."""
    from django.test import Client

    project = team["project"]
    job = Job.objects.create(
        kind="anomaly_compare", queue="gpu", status="succeeded", project=project
    )
    figures = {
        "image_auroc": 0.9, "pixel_auroc": 0.87, "au_pro": 0.73, "region_recall": 0.656,
        "region_false_per_good_image": 0.6, "recall_at_threshold": 0.6,
        "false_per_good_image_at_threshold": 0.5, "ms_per_image": 120.0, "model_mb": 12.5,
        "train_seconds": 30, "images": 70, "pixel_defect_images": 50, "memory_mb": 812.3,
        "intervals": {
            "image_auroc": [0.81, 0.96], "pixel_auroc": [0.8312, 0.9041],
            "au_pro": [0.6543, 0.7987], "region_recall": [0.5211, 0.7802],
            "recall_at_threshold": [0.47, 0.73], "false_per_good_image_at_threshold": [0.2, 0.9],
        },
    }  # fmt: skip
    figures["by_type"] = {
        "crack": {"images": 10, "image_auroc": 0.705, "pixel_auroc": 0.9606, "au_pro": 0.8929,
                  "regions": 13, "region_recall": 0.3846, "recall_at_threshold": 0.3846},
        "crack + scratch": {"images": 1, "image_auroc": 1.0, "pixel_auroc": None,
                            "au_pro": None, "regions": 1, "region_recall": 1.0,
                            "recall_at_threshold": 1.0},
    }  # fmt: skip
    bare = {**figures, "au_pro": None, "intervals": {**figures["intervals"], "au_pro": None}}
    del bare["memory_mb"]  # a comparison from before memory was measured
    bare["by_type"] = {"crack": {**figures["by_type"]["crack"], "region_recall": 0.5}}
    rows = []
    for number, (arch, f) in enumerate((("patchcore", figures), ("padim", bare)), start=1):
        v = ModelVersion.objects.create(
            project=project, number=number, architecture=arch, status="ready", job=job
        )
        rows.append({"model_version": v.pk, "number": number, "architecture": arch, "figures": f})
    rows[0]["best"] = True
    ModelVersion.objects.filter(pk=rows[0]["model_version"]).update(params={"scale": 1.0})
    # a row as the job writes it now names its settings; rows from before do not: the page
    # takes its version's, and says nothing of a version deleted since
    rows.append({**rows[1], "model_version": 999_999, "number": 3})
    rows[1]["params"] = {"input_size": 128, "shading": 0.2}
    job.result = {"rows": rows, "best": rows[0]["model_version"], "normal_images": 20,
                  "defect_images": 50, "pixel_defect_images": 50, "training_images": 80}  # fmt: skip
    job.save(update_fields=["result"])
    # the API gives the stored figures as they are
    api = client_for(team["admin"]).get(url(team)).json()
    assert api["result"]["rows"][0]["figures"]["intervals"]["au_pro"] == [0.6543, 0.7987]

    browser = Client()
    browser.force_login(team["admin"])
    page = browser.get(f"/projects/{project.pk}/models/").content.decode()
    start = page.index('id="comparison-table"')
    table = page[start : page.index("</table>", start)]
    first, second, third = table.split("data-comparison-version=")[1:4]
    assert "tiles of 256 px at full resolution" in first
    assert "whole image at 128 px; lighting corrected" in second
    assert "(deleted)" in third and 'class="hint setup"' not in third
    for lo_hi in ("0.83–0.90", "0.65–0.80", "0.52–0.78", "0.81–0.96", "0.47–0.73"):
        assert lo_hi in first, lo_hi
    assert "Size on disk, MB" in table and "Model MB" not in table
    assert "<td>812</td>" in first and "<td>—</td>" in second  # memory to run, MB
    # dots at 6 + 108 * value px, whiskers from lo to hi
    assert 'class="pixel" fill="#7c3aed" cx="94"' in first  # 0.87 * 108 = 94
    assert 'x1="90" y1="11" x2="98" y2="11"' in first  # 0.8312, 0.9041
    assert 'class="aupro" fill="#b45309" cx="79"' in first and 'y1="18"' in first
    assert 'class="region" fill="#0e7490" cx="71"' in first and 'y1="25"' in first
    assert 'circle class="auroc"' in first and 'circle class="recall"' in first
    assert 'class="aupro"' not in second and 'y1="18"' not in second  # no AU-PRO, no whisker
    assert 'class="pixel"' in second
    # per defect kind: a line per kind, a cell per scored model (a dash without its figures),
    # the kind's leaders by the table's rule in bold (both of a tie; none of a lone cell)
    start = page.index('id="comparison-kinds"')
    kinds = page[start : page.index("</table>", start)]
    assert kinds.count("<th>patchcore v1") == 1 and kinds.count("<th>padim v") == 2
    crack, both = kinds.split("<tr data-kind=")[1:3]
    assert crack.startswith('"crack"><td>crack</td><td>10</td><td>0.38 <span class="hint">')
    assert '0.38 <span class="hint">of 13 regions</span>' in crack
    assert "image AUROC 0.71 · pixel AUROC 0.96 · AU-PRO 0.89" in crack  # 0.705: half up
    assert crack.count('<td class="best-kind"><strong>0.50</strong>') == 2
    assert both.startswith('"crack + scratch"><td>crack + scratch</td><td>1</td><td>1.00 ')
    assert both.count("<td>—</td>") == 2  # the two rows without figures for that kind
    assert "of 1 region<" in both and "pixel AUROC" not in both  # boxes only: no pixel figures


def test_memory_not_measured_is_none_not_a_guess(tmp_path):
    """The fresh process that measures a model's memory fails on a missing model: the row gets
    None (the page shows a dash), and the comparison goes on."""
    from workers.tasks.anomaly_compare import memory_to_run

    image = tmp_path / "a.png"
    image.write_bytes(image_bytes("PNG", size=(64, 48)))
    assert memory_to_run(tmp_path / "missing" / "model.pt", [image]) is None


def test_a_versions_setup_in_words():
    from inspection.services.inspections import anomaly_setup

    assert anomaly_setup({}) == anomaly_setup(None) == "whole image at 256 px"
    assert anomaly_setup({"input_size": 128, "shading": 0.2}) == (
        "whole image at 128 px; lighting corrected"
    )
    assert anomaly_setup({"scale": 1.0, "coarse_pass": True}) == (
        "tiles of 256 px at full resolution + whole-image pass"
    )
    assert anomaly_setup({"scale": 0.5, "multiscale": [256, 128], "shading": 0}) == (
        "tiles of 256 px at scale 0.5; scales 256 + 128 px fused"
    )
    assert anomaly_setup({"shading": 0.2, "lines": True}) == (
        "whole image at 256 px; lighting corrected; + line detector"
    )
    # whatever else was set tells two versions apart: named as given
    assert anomaly_setup(
        {"model": "patchcore", "multiscale": [256, 128], "multiscale_fusion": "max", "seed": 3}
    ) == ("whole image at 256 px; scales 256 + 128 px fused by their max; seed 3")


def test_the_jobs_message_names_the_best_models_weakest_kind():
    from inspection.services.inspections import weakest_kind

    def kind(recall, regions, auroc=0.9):
        return {"region_recall": recall, "regions": regions, "image_auroc": auroc}

    figures = {"by_type": {"blowhole": kind(1.0, 4), "crack": kind(0.4, 5), "uneven": kind(0.6, 5)}}
    assert weakest_kind(figures) == "weakest on crack: 2 of 5 regions found"
    # a tie on recall goes to image AUROC, as the leaderboard ranks
    figures["by_type"]["uneven"] = kind(0.4, 5, auroc=0.7)
    assert weakest_kind(figures) == "weakest on uneven: 2 of 5 regions found"
    # a kind without regions (boxes outside the scored images, say) is not the weakest
    figures["by_type"]["fray"] = {"region_recall": None, "regions": 0, "image_auroc": None}
    assert weakest_kind(figures).startswith("weakest on uneven")
    # one kind, or an older row without per-kind figures: the whole set already says it
    assert weakest_kind({"by_type": {"crack": kind(0.4, 5)}}) == ""
    assert weakest_kind({"region_recall": 0.5}) == "" and weakest_kind(None) == ""
    # every kind found whole: no kind is weak
    assert weakest_kind({"by_type": {"a": kind(1.0, 4, 0.8), "b": kind(1.0, 2)}}) == ""
