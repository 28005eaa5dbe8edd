"""Reference images: pairing on upload by the file-name rule and through the API, every refusal,
the alignment job (aligned pyramid + difference, or a refusal with its figures), and the rule's
setting. Imports/exports with pairs: tests/annotations/test_reference_transfer.py."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image as PILImage

from inspection.models import Image, Job
from workers.tasks.references import align_references
from workers.tasks.runner import run_job

pytestmark = pytest.mark.django_db


def board(seed: int = 0, size=(240, 200)) -> np.ndarray:
    """A textured grey 'part' (blurred noise with edges): alignment has something to lock on."""
    rng = np.random.default_rng(seed)
    w, h = size
    noise = rng.integers(0, 255, (h // 8, w // 8), dtype=np.uint8)
    img = cv2.resize(noise, (w, h), interpolation=cv2.INTER_NEAREST)
    return cv2.GaussianBlur(img, (5, 5), 1.0)


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def pair_bytes(seed: int = 0) -> tuple[bytes, bytes]:
    """(image with a bright blob, its reference shifted by 3 px right and 2 px down)."""
    big = board(seed, size=(260, 220))
    reference = big[10:210, 10:250]
    image = big[12:212, 13:253].copy()
    cv2.circle(image, (120, 100), 9, 255, -1)
    return png(image), png(reference)


def post_files(client, project, files):
    return client.post(f"/api/projects/{project.pk}/images/", {"files": files}, format="multipart")


def test_upload_pairs_by_file_name_and_the_job_aligns_the_pair(team, client_for, upload):
    image, reference = pair_bytes()
    client = client_for(team["reviewer"])
    r = post_files(
        client,
        team["project"],
        [
            upload("p1_test.png", image),
            upload("p1_temp.png", reference),
            upload("x.png", png(board(5))),
        ],
    )
    assert r.status_code == 201, r.content
    assert r.json()["paired"] == 1 and r.json()["pairing_refused"] == []
    test = Image.objects.get(original_name="p1_test.png")
    temp = Image.objects.get(original_name="p1_temp.png")
    assert test.reference == temp and temp.is_reference and test.alignment == {"status": "pending"}
    assert not Image.objects.get(original_name="x.png").is_reference

    job = Job.objects.get(kind="reference_align")
    assert job.queue == "cpu" and job.payload["image_ids"] == [test.pk]
    assert run_job(str(job.pk), align_references.body) == "succeeded", Job.objects.get(
        pk=job.pk
    ).error
    body = client.get(f"/api/images/{test.pk}/").json()
    a = body["alignment"]
    assert a["status"] == "ok", a
    # the reference's pixel (x, y) is the image's (x - 3, y - 2)
    m = np.array(a["matrix"])
    x, y, w = m @ [100.0, 80.0, 1.0]
    assert abs(x / w - 97) < 1 and abs(y / w - 78) < 1, m
    assert body["reference"] == temp.pk and body["is_reference"] is False
    dzi = client.get(body["urls"]["reference_dzi"])
    assert dzi.status_code == 200 and b'Width="240"' in b"".join(dzi.streaming_content)
    tile = client.get(f"/api/images/{test.pk}/reference/image_files/0/0_0.jpg")
    assert tile.status_code == 200
    diff = client.get(body["urls"]["difference"])
    assert diff.status_code == 200
    d = np.array(PILImage.open(io.BytesIO(b"".join(diff.streaming_content))))
    assert d.shape == (200, 240)
    # the blob is what differs; the rest (aligned) hardly does
    assert d[95:106, 115:126].mean() > 80, d[95:106, 115:126].mean()
    border = np.ones_like(d, bool)
    border[80:122, 100:142] = False
    assert np.percentile(d[border][d[border] > 0], 99) < 60
    # the reference itself lists no reference and no difference
    ref_body = client.get(f"/api/images/{temp.pk}/").json()
    assert ref_body["is_reference"] is True and ref_body["urls"]["difference"] is None


def test_an_unrelated_reference_is_refused_with_its_figures(team, client_for, upload):
    client = client_for(team["annotator"])
    admin = client_for(team["admin"])
    post_files(
        admin, team["project"], [upload("a.png", png(board(1))), upload("b.png", png(board(2)))]
    )
    a, b = Image.objects.get(original_name="a.png"), Image.objects.get(original_name="b.png")
    r = client.post(f"/api/images/{a.pk}/reference/", {"reference": b.pk}, format="json")
    assert r.status_code == 200, r.content
    assert r.json()["reference"] == b.pk and r.json()["alignment"]["status"] == "pending"
    job = Job.objects.filter(kind="reference_align").latest("created_at")
    assert run_job(str(job.pk), align_references.body) == "succeeded"
    job.refresh_from_db()
    body = client.get(f"/api/images/{a.pk}/").json()
    a_ = body["alignment"]
    assert a_["status"] == "failed" and a_["reason"], a_
    assert {"inliers", "matches", "residual_px"} <= set(a_)
    assert body["urls"]["difference"] is None and body["urls"]["reference_dzi"] is None
    assert job.result["refused"][0]["name"] == "a.png" and "refused" in job.message
    assert client.get(f"/api/images/{a.pk}/difference.png").status_code == 404


def test_setting_a_reference_refuses_what_makes_no_sense(team, client_for, upload, make_user):
    from inspection.services.projects import project_create

    admin = client_for(team["admin"])
    post_files(
        admin,
        team["project"],
        [upload(f"{n}.png", png(board(10 + i))) for i, n in enumerate("abcd")],
    )
    a, b, c, d = (Image.objects.get(original_name=f"{n}.png") for n in "abcd")
    other = project_create(user=team["admin"], name="Other")
    post_files(admin, other, [upload("o.png", png(board(20)))])
    o = Image.objects.get(original_name="o.png")

    def set_ref(image, ref, user="annotator"):
        return client_for(team[user]).post(
            f"/api/images/{image.pk}/reference/", {"reference": ref}, format="json"
        )

    for ref, words in (
        (a.pk, "its own reference"),
        (o.pk, f"No image {o.pk} in this project"),
        (999999, "No image 999999"),
        ("x", "valid integer"),
    ):
        r = set_ref(a, ref)
        assert r.status_code == 400 and words in str(r.json()), (ref, r.json())
    assert set_ref(a, b.pk).status_code == 200
    # b is a golden sample now: it cannot be compared with something itself...
    r = set_ref(b, c.pk)
    assert r.status_code == 400 and "is the reference of 1 image" in str(r.json())
    # ...and a, compared with b, cannot serve as a reference
    r = set_ref(d, a.pk)
    assert r.status_code == 400 and "is itself compared with another image" in str(r.json())
    # the outsider sees nothing; nothing changed on refusals
    assert set_ref(a, c.pk, user="outsider").status_code == 404
    a.refresh_from_db()
    assert a.reference_id == b.pk
    # null unpairs (and the pending alignment goes)
    r = set_ref(a, None)
    assert r.status_code == 200 and r.json()["reference"] is None and r.json()["alignment"] == {}
    assert (
        client_for(team["annotator"])
        .post(f"/api/images/{a.pk}/reference/", {}, format="json")
        .status_code
        == 400
    )


def test_the_file_name_rule_is_a_project_setting(team, client_for, upload):
    admin = client_for(team["admin"])
    url = f"/api/projects/{team['project'].pk}/"
    assert admin.get(url).json()["reference_rule"] == "_test=_temp"
    r = admin.patch(url, {"reference_rule": "after"}, format="json")
    assert r.status_code == 400 and "image suffix=reference suffix" in str(r.json())
    r = admin.patch(url, {"reference_rule": "_after=_before\n_x=_x"}, format="json")
    assert r.status_code == 400 and "Line 2" in str(r.json())
    assert (
        client_for(team["annotator"]).patch(url, {"reference_rule": ""}, format="json").status_code
        == 403
    )
    r = admin.patch(url, {"reference_rule": "_after=_before"}, format="json")
    assert r.status_code == 200 and r.json()["reference_rule"] == "_after=_before"
    image, reference = pair_bytes(3)
    # the reference was uploaded earlier: found among the project's images
    post_files(admin, team["project"], [upload("lot7_before.png", reference)])
    r = post_files(
        admin,
        team["project"],
        [upload("lot7_after.png", image), upload("q_test.png", png(board(9)))],
    )
    assert r.json()["paired"] == 1
    after = Image.objects.get(original_name="lot7_after.png")
    assert after.reference.original_name == "lot7_before.png"
    assert Image.objects.get(original_name="q_test.png").reference is None


def test_deleting_a_reference_unpairs_its_images(team, client_for, upload):
    image, reference = pair_bytes(4)
    admin = client_for(team["admin"])
    post_files(
        admin, team["project"], [upload("z_test.png", image), upload("z_temp.png", reference)]
    )
    job = Job.objects.get(kind="reference_align")
    assert run_job(str(job.pk), align_references.body) == "succeeded"
    test = Image.objects.get(original_name="z_test.png")
    assert test.alignment["status"] == "ok" and test.reference_pyramid_path
    temp = Image.objects.get(original_name="z_temp.png")
    assert admin.delete(f"/api/images/{temp.pk}/").status_code == 204
    body = admin.get(f"/api/images/{test.pk}/").json()
    assert body["reference"] is None and body["alignment"] == {}
    assert body["urls"]["reference_dzi"] is None and body["urls"]["difference"] is None


def test_a_pair_whose_file_is_damaged_fails_alone_with_its_reason(team, client_for, upload):
    from django.core.files.storage import default_storage

    admin = client_for(team["admin"])
    pairs = [pair_bytes(5), pair_bytes(6)]
    post_files(
        admin,
        team["project"],
        [
            upload(f"{s}_{k}.png", data)
            for s, p in zip("uv", pairs, strict=True)
            for k, data in zip(("test", "temp"), p, strict=True)
        ],
    )
    broken = Image.objects.get(original_name="v_temp.png")
    with default_storage.open(broken.file.name, "wb") as fh:  # the disk lost it
        fh.write(b"\x89PNG\r\n\x1a\n garbage")
    job = Job.objects.get(kind="reference_align")
    assert run_job(str(job.pk), align_references.body) == "succeeded"
    job.refresh_from_db()
    assert job.result["aligned"] == [Image.objects.get(original_name="u_test.png").pk]
    (failed,) = job.result["failed"]
    assert failed["name"] == "v_test.png" and failed["error"].startswith(
        "v_temp.png cannot be read"
    )
    v = Image.objects.get(original_name="v_test.png")
    assert v.alignment["status"] == "failed"
    assert v.alignment["reason"].startswith(
        "the pair could not be read or aligned: v_temp.png cannot be read"
    ), v.alignment
    assert "1 failed" in job.message
