"""Uploading, listing, filtering and deleting images through the API, with every kind of bad input."""

import io
import stat
import zipfile

import pytest

from inspection.models import Image, Job
from tests.conftest import image_bytes, jpeg_with_orientation, png_bomb_bytes, tiff16_rgb_bytes

pytestmark = pytest.mark.django_db


def post_files(client, project, files, **extra):
    return client.post(
        f"/api/projects/{project.pk}/images/", {"files": files, **extra}, format="multipart"
    )


def test_upload_many_files_of_every_format(team, client_for, upload):
    files = [
        upload("a.png", image_bytes("PNG", seed=1)),
        upload("b.jpg", image_bytes("JPEG", seed=2)),
        upload("c16.tif", image_bytes("TIFF", mode="I;16", seed=3)),
        upload("rgb16.tiff", tiff16_rgb_bytes(seed=4)),
        upload("d.bmp", image_bytes("BMP", seed=5)),
        upload("e.webp", image_bytes("WEBP", seed=6)),
        upload("rotated.jpg", jpeg_with_orientation(size=(60, 30), orientation=8, seed=7)),
    ]
    r = post_files(client_for(team["reviewer"]), team["project"], files)
    assert r.status_code == 201, r.content
    body = r.json()
    assert body["counts"] == {"stored": 7, "duplicate": 0, "rejected": 0}
    job = Job.objects.get(pk=body["job"])
    assert job.kind == "pyramid" and job.queue == "cpu" and job.status == "queued"
    assert sorted(job.payload["image_ids"]) == sorted(f["image_id"] for f in body["files"])
    rotated = Image.objects.get(original_name="rotated.jpg")
    assert (rotated.width, rotated.height, rotated.orientation) == (30, 60, 8)
    assert Image.objects.get(original_name="c16.tif").bit_depth == 16
    # originals are stored byte for byte
    stored = Image.objects.get(original_name="a.png")
    assert stored.file.read() == image_bytes("PNG", seed=1)
    assert stored.uploaded_by == team["reviewer"]


def test_a_bad_file_in_a_batch_fails_alone(team, client_for, upload):
    good = [upload(f"good{i}.png", image_bytes(seed=10 + i)) for i in range(3)]
    bad = [
        upload("empty.png", b""),
        upload("notes.png", b"not an image at all"),
        upload("bomb.png", png_bomb_bytes()),
        upload("cut.jpg", image_bytes("JPEG", size=(300, 200))[:900]),
        upload("anim.gif", image_bytes("GIF")),
    ]
    r = post_files(client_for(team["admin"]), team["project"], good[:2] + bad + good[2:])
    assert r.status_code == 201
    outcome = {f["name"]: f for f in r.json()["files"]}
    assert [n for n, f in outcome.items() if f["status"] == "stored"] == [
        "good0.png",
        "good1.png",
        "good2.png",
    ]
    assert "empty" in outcome["empty.png"]["reason"]
    assert "not a supported image" in outcome["notes.png"]["reason"]
    assert "over the limit" in outcome["bomb.png"]["reason"]
    assert "truncated" in outcome["cut.jpg"]["reason"]
    assert "GIF" in outcome["anim.gif"]["reason"]
    assert team["project"].images.count() == 3


def test_all_bad_is_a_400_with_the_reason(team, client_for, upload):
    r = post_files(client_for(team["admin"]), team["project"], [upload("x.png", b"nope")])
    assert r.status_code == 400
    assert r.json()["error"].startswith("No image was stored. x.png: not a supported image")


def test_duplicates_are_reported_not_stored(team, client_for, upload):
    data = image_bytes(seed=42)
    client = client_for(team["admin"])
    first = post_files(
        client, team["project"], [upload("one.png", data), upload("again.png", data)]
    ).json()
    assert [f["status"] for f in first["files"]] == ["stored", "duplicate"]
    r = post_files(client, team["project"], [upload("later.png", data)])
    assert r.status_code == 200
    f = r.json()["files"][0]
    assert f["status"] == "duplicate" and f["duplicate_of"] == first["files"][0]["image_id"]
    assert team["project"].images.count() == 1


def test_pixel_limit_setting(team, client_for, upload, settings):
    settings.LOUPE_MAX_IMAGE_PIXELS = 1000
    r = post_files(
        client_for(team["admin"]), team["project"], [upload("big.png", image_bytes(size=(50, 50)))]
    )
    assert r.status_code == 400 and "LOUPE_MAX_IMAGE_PIXELS" in r.json()["error"]


def _zip(entries) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data, *mode in entries:
            info = zipfile.ZipInfo(name)
            if mode:
                info.external_attr = mode[0] << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return buf.getvalue()


def test_zip_upload_with_traps(team, client_for, upload):
    archive = _zip(
        [
            ("parts/a.png", image_bytes(seed=1)),
            ("parts/sub/b.jpg", image_bytes("JPEG", seed=2)),
            ("../../escape.png", image_bytes(seed=3)),
            ("/abs/c.png", image_bytes(seed=4)),
            ("parts/link.png", b"/etc/passwd", stat.S_IFLNK | 0o777),
            ("parts/readme.txt", b"hello"),
        ]
    )
    r = post_files(client_for(team["admin"]), team["project"], [upload("batch.zip", archive)])
    assert r.status_code == 201
    outcome = {f["name"]: f for f in r.json()["files"]}
    assert outcome["batch.zip/parts/a.png"]["status"] == "stored"
    assert outcome["batch.zip/parts/sub/b.jpg"]["status"] == "stored"
    assert "'..'" in outcome["batch.zip/../../escape.png"]["reason"]
    assert "absolute" in outcome["batch.zip//abs/c.png"]["reason"]
    assert "symbolic" in outcome["batch.zip/parts/link.png"]["reason"]
    assert "not a supported image" in outcome["batch.zip/parts/readme.txt"]["reason"]
    assert sorted(team["project"].images.values_list("original_name", flat=True)) == [
        "a.png",
        "b.jpg",
    ]


def test_zip_bomb_is_refused_and_other_files_stored(team, client_for, upload, settings):
    settings.LOUPE_ZIP_MAX_TOTAL_BYTES = 5 * 1024 * 1024
    bomb = _zip([("zeros.png", b"\0" * (30 * 1024 * 1024))])
    r = post_files(
        client_for(team["admin"]),
        team["project"],
        [upload("bomb.zip", bomb), upload("ok.png", image_bytes())],
    )
    outcome = {f["name"]: f for f in r.json()["files"]}
    assert outcome["bomb.zip"]["status"] == "rejected" and "limit" in outcome["bomb.zip"]["reason"]
    assert outcome["ok.png"]["status"] == "stored"


def test_list_filters_and_paging(team, client_for, upload):
    from annotations.models import Annotation
    from annotations.services.categories import category_create

    client = client_for(team["admin"])
    post_files(
        client,
        team["project"],
        [upload(f"n{i}.png", image_bytes(seed=i)) for i in range(3)],
        is_normal="true",
    )
    post_files(
        client, team["project"], [upload(f"t{i}.png", image_bytes(seed=100 + i)) for i in range(4)]
    )
    scratch = category_create(user=team["admin"], project=team["project"], name="scratch")
    labeled = Image.objects.get(original_name="t0.png")
    Annotation.objects.create(
        image=labeled,
        category=scratch,
        kind="box",
        geometry={"type": "box", "x": 1, "y": 1, "w": 2, "h": 2},
    )
    Image.objects.filter(original_name="t1.png").update(status="reviewed", split="val")
    url = f"/api/projects/{team['project'].pk}/images/"

    def names(**params):
        return sorted(i["original_name"] for i in client.get(url, params).json()["results"])

    assert names(state="normal") == ["n0.png", "n1.png", "n2.png"]
    assert names(state="labeled") == ["t0.png"]
    assert names(state="unlabeled") == ["t1.png", "t2.png", "t3.png"]
    assert names(state="reviewed") == ["t1.png"]
    assert names(split="val") == ["t1.png"]
    assert names(category=scratch.pk) == ["t0.png"]
    page = client.get(url, {"limit": 2, "offset": 2}).json()
    assert page["count"] == 7 and len(page["results"]) == 2 and page["next"] and page["previous"]
    item = page["results"][0]
    assert item["urls"]["page"] == f"/images/{item['id']}/" and item["urls"]["dzi"] is None
    r = client.get(url, {"state": "sideways"})
    assert r.status_code == 400 and "state" in r.json()["error"]


def test_delete_image_removes_its_files(
    team, client_for, upload, django_capture_on_commit_callbacks
):
    from django.core.files.storage import default_storage

    r = post_files(client_for(team["admin"]), team["project"], [upload("a.png", image_bytes())])
    image = Image.objects.get(pk=r.json()["files"][0]["image_id"])
    name = image.file.name
    assert default_storage.exists(name)
    r = client_for(team["annotator"]).delete(f"/api/images/{image.pk}/")
    assert r.status_code == 403 and "project admin role" in r.json()["error"]
    assert default_storage.exists(name)
    with django_capture_on_commit_callbacks(execute=True):
        assert client_for(team["admin"]).delete(f"/api/images/{image.pk}/").status_code == 204
    assert not Image.objects.filter(pk=image.pk).exists()
    assert not default_storage.exists(name)


def test_unknown_ids_are_json_404(team, client_for):
    client = client_for(team["admin"])
    for url in [
        "/api/images/999999/",
        "/api/projects/999999/images/",
        "/api/jobs/00000000-0000-0000-0000-000000000000/",
        "/api/nowhere/",
        # ids that are not numbers are unknown ids too, on every router (not a 500)
        "/api/images/abc/",
        "/api/images/abc/thumbnail/",
        "/api/images/1x/annotations/",
        "/api/projects/abc/images/",
        "/api/projects/abc/members/",
        "/api/models/abc/",
        "/api/runs/abc/",
        "/api/annotations/abc/",
        "/api/jobs/not-a-uuid/",
        "/api/projects/1/datasets/abc/",
        "/api/dataset-exports/abc/download/",
    ]:
        r = client.get(url)
        assert r.status_code == 404, url
        assert r.json()["error"]
    for url in ("/api/suggestions/abc/accept/", "/api/projects/abc/categories/"):
        assert client.post(url, {}, format="json").status_code == 404, url


def test_a_damaged_zip_entry_fails_alone(team, client_for, upload):
    raw = bytearray(
        _zip(
            [
                ("a.png", image_bytes(seed=5)),
                ("b.png", image_bytes(seed=6)),
                ("c.png", image_bytes(seed=7)),
            ]
        )
    )
    start = raw.find(b"b.png") + len(b"b.png") + 20  # inside b.png's compressed data
    raw[start : start + 40] = bytes(40)
    long_name = "x" * 300 + ".png"
    files = [
        upload("damaged.zip", bytes(raw)),
        upload("long.zip", _zip([(long_name, image_bytes(seed=8))])),
    ]
    r = post_files(client_for(team["admin"]), team["project"], files)
    assert r.status_code == 201, r.content
    outcome = {f["name"]: f for f in r.json()["files"]}
    assert outcome["damaged.zip/a.png"]["status"] == "stored"
    assert outcome["damaged.zip/c.png"]["status"] == "stored"
    assert outcome["damaged.zip/b.png"]["status"] == "rejected"
    assert outcome[f"long.zip/{long_name}"]["status"] == "stored"


def test_zip_over_the_upload_limit(team, client_for, upload, settings):
    settings.LOUPE_MAX_UPLOAD_BYTES = 100
    files = [upload("big.zip", _zip([("a.png", image_bytes())]))]
    r = post_files(client_for(team["admin"]), team["project"], files)
    assert r.status_code == 400 and "LOUPE_MAX_UPLOAD_BYTES" in r.json()["error"]


def test_rebuild_pyramids_after_a_cancelled_job(team, client_for, client, upload):
    """A cancelled pyramid job leaves its images without a zoomable view: the images page says
    so, and one click (the API behind it) builds exactly those again, once."""
    from datetime import timedelta

    from django.utils import timezone

    from inspection.services.jobs import job_enqueue
    from workers.tasks.pyramid import build_pyramids
    from workers.tasks.runner import run_job

    project, reviewer = team["project"], team["reviewer"]
    url = f"/api/projects/{project.pk}/images/rebuild-pyramids/"
    files = [upload(f"p{i}.png", image_bytes(seed=40 + i)) for i in range(3)]
    body = post_files(client_for(reviewer), project, files).json()
    ids = sorted(f["image_id"] for f in body["files"])
    # while the upload's own job is queued there is nothing to rebuild
    assert client_for(reviewer).post(url).json() == {
        "job": None,
        "message": "Every image has its zoomable view.",
    }
    r = client_for(team["admin"]).post(f"/api/jobs/{body['job']}/cancel/")
    assert r.json()["status"] == "cancelled"
    # just uploaded: an upload or import may still be about to start their job
    assert client_for(reviewer).post(url).json()["job"] is None
    Image.objects.filter(pk__in=ids).update(created_at=timezone.now() - timedelta(minutes=5))
    importing = job_enqueue(kind="dataset_import", user=reviewer, project=project)
    Job.objects.filter(pk=importing.pk).update(created_at=timezone.now() - timedelta(minutes=6))
    assert client_for(reviewer).post(url).json()["job"] is None  # an import is still running
    Job.objects.filter(pk=importing.pk).update(status=Job.Status.SUCCEEDED)
    client.force_login(reviewer)
    page = client.get(f"/projects/{project.pk}/").content.decode()
    assert "3 images have no zoomable view" in page and "rebuild-button" in page

    assert client_for(team["annotator"]).post(url).status_code == 403  # annotators do not upload
    r = client_for(reviewer).post(url)
    assert r.status_code == 202
    job = Job.objects.get(pk=r.json()["id"])
    assert job.kind == "pyramid" and sorted(job.payload["image_ids"]) == ids
    assert client_for(reviewer).post(url).json()["job"] is None  # not twice while it waits
    assert run_job(str(job.pk), build_pyramids.body) == "succeeded"
    assert set(Image.objects.filter(pk__in=ids).values_list("pyramid_status", flat=True)) == {
        "ready"
    }
    assert "zoomable view (" not in client.get(f"/projects/{project.pk}/").content.decode()
    outsider = client_for(team["outsider"]).post(url)
    assert outsider.status_code == 404
