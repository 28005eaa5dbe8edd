"""The job queue (Redis) down: what was sent is kept, the API says 503, and the outbox sends the
jobs once the broker answers again. Against a real Redis, and a real closed port."""

from datetime import timedelta

import pytest
import redis
from django.utils import timezone

from inspection.models import Image, Job, ModelVersion
from inspection.services.jobs import NOT_SENT, jobs_send_unsent, queue_name
from tests.conftest import image_bytes

pytestmark = pytest.mark.django_db(transaction=True)  # on_commit runs inside the request


@pytest.fixture
def broker(redis_url):
    """Switch Celery's broker between the real Redis and a port nobody listens on."""
    from workers.celery import app

    def use(url: str) -> None:
        app.conf.broker_url = url
        app._pool = None  # connections and producers are pooled per broker URL
        app.amqp._producer_pool = None

    class Switch:
        def down(self) -> None:
            use("redis://127.0.0.1:1/0")

        def up(self) -> None:
            use(redis_url)

    switch = Switch()
    switch.up()
    yield switch
    switch.up()


def waiting_in_redis(redis_url, queue: str) -> int:
    return redis.Redis.from_url(redis_url).llen(queue_name(queue))


def test_an_upload_while_redis_is_down_is_kept_answered_503_and_sent_later(
    team, client_for, upload, broker, redis_url
):
    admin = client_for(team["admin"])
    before = waiting_in_redis(redis_url, "cpu")
    broker.down()
    r = admin.post(
        f"/api/projects/{team['project'].pk}/images/",
        {"files": [upload("part.png", image_bytes())]},
        format="multipart",
    )
    assert r.status_code == 503, r.content
    assert "job queue (Redis) is not answering" in r.json()["error"]
    assert "kept" in r.json()["error"] and r["Retry-After"]
    image = Image.objects.get(project=team["project"])  # nothing lost
    job = Job.objects.get(kind="pyramid")
    assert job.status == "queued" and job.sent_at is None and job.message == NOT_SENT
    shown = admin.get(f"/api/jobs/{job.pk}/").json()
    assert shown["message"] == NOT_SENT

    # the sweep while Redis is still down sends nothing and fails nothing
    later = timezone.now() + timedelta(seconds=30)
    assert jobs_send_unsent(now=later) == 0
    broker.up()
    assert jobs_send_unsent(now=later) == 1
    job.refresh_from_db()
    assert job.sent_at is not None and job.message == "Waiting for a worker"
    assert waiting_in_redis(redis_url, "cpu") == before + 1  # the message is really there
    assert jobs_send_unsent(now=later) == 0  # sent once, not at every sweep
    assert image.pk


def test_a_training_started_while_redis_is_down_starts_once_it_is_back(
    team, client_for, upload, broker, redis_url, settings
):
    admin = client_for(team["admin"])
    r = admin.post(
        f"/api/projects/{team['project'].pk}/images/",
        {"files": [upload(f"n{i}.png", image_bytes(seed=i)) for i in range(3)]},
        format="multipart",
    )
    assert r.status_code == 201
    ids = [f["image_id"] for f in r.json()["files"]]
    for pk in ids:
        r = admin.post(f"/api/images/{pk}/normal/", {"is_normal": True}, format="json")
        assert r.status_code == 200, r.content
    before = waiting_in_redis(redis_url, "gpu")
    broker.down()
    r = admin.post(
        f"/api/projects/{team['project'].pk}/models/",
        {"architecture": "padim", "params": {"input_size": 64}},
        format="json",
    )
    assert r.status_code == 503, r.content
    version = ModelVersion.objects.get(project=team["project"])
    assert version.status == "training"
    job = Job.objects.get(pk=version.job_id)
    assert job.sent_at is None
    broker.up()
    assert jobs_send_unsent(now=timezone.now() + timedelta(seconds=30)) == 1
    assert waiting_in_redis(redis_url, "gpu") == before + 1
