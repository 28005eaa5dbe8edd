"""Whether jobs can run now, as the jobs page says it: a real Redis, real worker processes, and a
broker that does not answer."""

import socket
import time

from django.test import Client

from inspection.models import Job
from tests.conftest import _QUEUE_PREFIX


def health(client) -> dict:
    r = client.get("/api/jobs/health/")
    assert r.status_code == 200
    return r.json()


def test_the_jobs_page_says_when_no_worker_or_no_broker_answers(
    team, client_for, start_worker, settings
):
    import redis

    from inspection.services.queue_health import presence_key

    # workers of earlier tests in this session were stopped, some killed (their presence
    # expires after 35 s): start from none
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    for key in client.scan_iter(match=presence_key("*")):
        client.delete(key)
    api = client_for(team["admin"])
    page = Client()
    page.force_login(team["admin"])
    h = health(api)
    assert h["broker"] and h["workers"] == []
    assert any("No worker is running" in p for p in h["problems"])
    assert "No worker is running" in page.get("/jobs/").content.decode()

    # a worker on the cpu queue only, and a training waiting on the gpu queue
    worker = start_worker("-Q", f"{_QUEUE_PREFIX}cpu")
    Job.objects.create(kind="detection_train", queue="gpu", project=team["project"])
    h = health(api)
    assert [w["queues"] for w in h["workers"]] == [[f"{_QUEUE_PREFIX}cpu"]]
    assert h["waiting"]["gpu"] == 1
    assert h["problems"] == [
        f"1 job(s) wait for a worker on the gpu queue, and no running worker takes that queue "
        f"(start one with -Q {_QUEUE_PREFIX}gpu)."
    ]
    # its presence names this machine, as its jobs record it (the stale sweep relies on that)
    from inspection.services.queue_health import worker_hosts

    assert worker_hosts() == {socket.gethostname()}
    # a worker that stops says so at once (not when its presence expires)
    worker.terminate()
    worker.wait(timeout=30)
    deadline = time.time() + 10
    while health(api)["workers"] and time.time() < deadline:
        time.sleep(0.2)
    assert health(api)["workers"] == []

    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    h = health(api)
    assert not h["broker"] and "job queue (Redis) is not answering" in h["problems"][0]
    assert "job queue (Redis) is not answering" in page.get("/jobs/").content.decode()
