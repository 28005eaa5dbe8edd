"""Loupe on S3-compatible object storage (MinIO, Ceph, AWS) instead of a local disk: uploads,
the Deep Zoom pyramid, tiles served through Loupe, deletion. Django's STORAGES point at
django-storages' S3 backend, and that talks HTTP to moto's S3 server on 127.0.0.1 (a local
server speaking the S3 protocol: no cloud and no MinIO binary needed)."""

import socket

import pytest
from django.test import override_settings

from inspection.models import Image
from tests.conftest import image_bytes

pytestmark = pytest.mark.django_db(transaction=True)

BUCKET = "loupe-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3(monkeypatch):
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for k, v in {
        "AWS_ACCESS_KEY_ID": "loupe",
        "AWS_SECRET_ACCESS_KEY": "loupe-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(k, v)
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    storages = {
        "default": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": BUCKET,
                "endpoint_url": endpoint,
                "access_key": "loupe",
                "secret_key": "loupe-secret",
                "region_name": "us-east-1",
                "default_acl": None,
                "file_overwrite": False,
            },
        },
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    with override_settings(STORAGES=storages):
        yield client
    server.stop()


def keys(client, prefix=""):
    out = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return out


def test_upload_pyramid_tiles_and_delete_on_s3(s3, team, client_for, upload, settings):
    from inspection import storage
    from inspection.services.images import image_build_derivatives

    assert not storage.is_local()
    api = client_for(team["admin"])
    r = api.post(
        f"/api/projects/{team['project'].pk}/images/",
        {"files": [upload("part.png", image_bytes(size=(1500, 1000), seed=4))]},
        format="multipart",
    )
    assert r.status_code == 201, r.json()
    image = Image.objects.get(pk=r.json()["files"][0]["image_id"])
    assert keys(s3, image.file.name) == [image.file.name]  # the original is in the bucket

    # the pyramid job's body: reads the original from S3, writes tiles and thumbnail back
    image_build_derivatives(image=image)
    image.refresh_from_db()
    assert image.pyramid_status == Image.PyramidStatus.READY
    stored = keys(s3, image.derived_prefix)
    assert any(k.endswith(".dzi") for k in stored)
    assert sum("_files/" in k for k in stored) > 10

    # served through Loupe (with the role check), not by public bucket URLs
    dzi = api.get(f"/api/images/{image.pk}/dzi/image.dzi")
    assert dzi.status_code == 200 and b'Width="1500"' in b"".join(dzi.streaming_content)
    tile = api.get(f"/api/images/{image.pk}/dzi/image_files/0/0_0.jpg")
    assert tile.status_code == 200 and b"".join(tile.streaming_content)[:2] == b"\xff\xd8"
    assert (
        client_for(team["outsider"]).get(f"/api/images/{image.pk}/dzi/image.dzi").status_code == 404
    )
    original = api.get(f"/api/images/{image.pk}/original/")
    assert original.status_code == 200
    assert b"".join(original.streaming_content)[:8] == b"\x89PNG\r\n\x1a\n"

    # deleting the image removes its original and every derived file from the bucket
    assert api.delete(f"/api/images/{image.pk}/").status_code == 204
    assert keys(s3) == []


def test_train_inspect_and_export_with_the_worker_on_its_own_disk(
    s3, team, client_for, upload, settings, tmp_path
):
    """The web process and the worker share no disk: the job bodies run with a MEDIA_ROOT of
    their own, which stays empty, and read and write everything through the bucket."""
    import io
    import zipfile

    from annotations.services.categories import category_create
    from annotations.services.dataset_versions import dataset_version_freeze
    from annotations.services.labels import annotation_create
    from inspection.models import Job
    from inspection.services.inspections import inspection_run_start, model_version_train
    from workers.tasks.anomaly import run_inspection, train_anomaly_model
    from workers.tasks.datasets import export_dataset
    from workers.tasks.runner import run_job

    project, admin = team["project"], team["admin"]
    api = client_for(admin)
    normals = [upload(f"n{i}.png", image_bytes(size=(96, 96), seed=i)) for i in range(4)]
    api.post(
        f"/api/projects/{project.pk}/images/",
        {"files": normals, "is_normal": "true"},
        format="multipart",
    )
    r = api.post(
        f"/api/projects/{project.pk}/images/",
        {"files": [upload("t1.png", image_bytes(size=(96, 96), seed=10))]},
        format="multipart",
    )
    t1 = r.json()["files"][0]["image_id"]

    worker_disk = tmp_path / "worker-media"
    worker_disk.mkdir()
    settings.MEDIA_ROOT = str(worker_disk)  # what the worker machine has: nothing

    version = model_version_train(
        user=admin, project=project, architecture="padim", params={"input_size": 64}
    )
    assert run_job(str(version.job_id), train_anomaly_model.body) == "succeeded", Job.objects.get(
        pk=version.job_id
    ).error
    version.refresh_from_db()
    assert version.status == "ready" and keys(s3, version.artifact) == [version.artifact]

    run = inspection_run_start(
        user=team["reviewer"], project=project, scope="selected", image_ids=[t1]
    )
    assert run_job(str(run.job_id), run_inspection.body) == "succeeded"
    run.refresh_from_db()
    assert run.results[str(t1)]["score"] >= 0
    heat = api.get(f"/api/images/{t1}/heatmap.png")
    assert heat.status_code == 200 and b"".join(heat.streaming_content)[:4] == b"\x89PNG"

    # a label, a frozen version, its COCO export: the zip is stored in the bucket and downloaded
    scratch = category_create(user=admin, project=project, name="scratch")
    annotation_create(
        user=admin,
        image=Image.objects.get(pk=t1),
        category_id=scratch.pk,
        geometry={"type": "box", "x": 10, "y": 10, "w": 20, "h": 20},
    )
    frozen = dataset_version_freeze(user=admin, project=project, note="on s3")
    r = api.post(
        f"/api/projects/{project.pk}/datasets/{frozen.number}/exports/",
        {"format": "coco", "options": {}},
        format="json",
    )
    assert r.status_code == 202, r.content
    assert run_job(r.json()["id"], export_dataset.body) == "succeeded"
    got = api.get(f"/api/dataset-exports/{r.json()['id']}/download/")
    assert got.status_code == 200
    with zipfile.ZipFile(io.BytesIO(b"".join(got.streaming_content))) as z:
        assert any(n.endswith(".json") for n in z.namelist())
    assert list(worker_disk.rglob("*")) == []  # the worker wrote nothing to its own disk
