"""`loupe run` keeps serving when its worker crashes, and starts the worker again; it starts
the line stations marked for it."""

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from inspection.supervise import Child, Supervisor
from tests.conftest import ROOT, _free_port

pytestmark = pytest.mark.integration


def children_of(pid: int) -> dict[int, str]:
    """{pid: command line} of the processes whose parent is ``pid`` (Linux /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except (OSError, IndexError, ValueError):
            continue
    return {k: v.decode() for k, v in found.items()}


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (a Celery worker forks its pool and its embedded beat)."""
    found = set(children_of(pid))
    for child in list(found):
        found |= descendants(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def all_gone(pids: set[int], timeout: float = 20.0) -> set[int]:
    """The processes of ``pids`` still alive after ``timeout`` seconds (none, hopefully)."""
    deadline = time.time() + timeout
    while time.time() < deadline and any(alive(p) for p in pids):
        time.sleep(0.2)
    return {p for p in pids if alive(p)}


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - our own http URL
            return r.status == 200
    except OSError:
        return False


def test_a_crashed_worker_is_started_again_and_the_web_keeps_serving(redis_url):
    var = Path(tempfile.mkdtemp(prefix="loupe-run-"))
    port = _free_port()
    env = dict(
        os.environ,
        DATABASE_URL=f"sqlite:///{var / 'db.sqlite3'}",
        MEDIA_ROOT=str(var / "media"),
        # its admin password, static files and beat schedule: not the checkout's var/
        LOUPE_VAR_DIR=str(var / "var"),
        REDIS_URL=redis_url,
        LOUPE_QUEUE_PREFIX=f"run{os.getpid()}-",
        DJANGO_SETTINGS_MODULE="inspection.settings",
    )
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "--noinput"], cwd=ROOT, env=env, check=True, timeout=300)
    # a line station marked "start with Loupe" (its project has no model yet: it waits for one)
    make_station = (
        "from inspection.models import Project, Station; "
        "p = Project.objects.create(name='Line'); "
        "Station.objects.create(project=p, name='line-9', source='/nowhere', start_with_loupe=True)"
    )
    subprocess.run(
        [*manage, "shell", "-c", make_station], cwd=ROOT, env=env, check=True, timeout=120
    )
    log = open(var / "run.log", "w+b")  # noqa: SIM115 - read while the process runs
    run = subprocess.Popen(
        [*manage, "loupe_run", "--bind", f"127.0.0.1:{port}", "--web-workers", "1"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}/login/"
        deadline = time.time() + 120
        while not answers(url) and time.time() < deadline:
            assert run.poll() is None, (var / "run.log").read_text()
            time.sleep(0.5)
        # the first run's admin password is kept where LOUPE_VAR_DIR says, static files too
        assert (var / "var" / "admin-password.txt").read_text().strip()
        assert (var / "var" / "staticfiles").is_dir()
        workers = {p for p, cmd in children_of(run.pid).items() if "celery" in cmd}
        assert len(workers) == 1, children_of(run.pid)
        stations = [p for p, cmd in children_of(run.pid).items() if "loupe_station line-9" in cmd]
        assert len(stations) == 1, children_of(run.pid)
        station_env = Path(f"/proc/{stations[0]}/environ").read_bytes().split(b"\0")
        half = max(1, (os.cpu_count() or 2) // 2)
        assert f"LOUPE_STATION_THREADS={half}".encode() in station_env
        (first,) = workers
        deadline = time.time() + 60  # its pool and beat, forked once it has started
        while len(descendants(first)) < 2 and time.time() < deadline:
            time.sleep(0.5)
        forked = descendants(first)
        assert forked, "the worker forked no pool"
        os.kill(first, signal.SIGKILL)  # out of memory, say
        deadline = time.time() + 60
        again = set()
        while time.time() < deadline:
            assert answers(url), "the web server went down with the worker"
            again = {p for p, cmd in children_of(run.pid).items() if "celery" in cmd} - {first}
            if again:
                break
            time.sleep(0.5)
        assert again, (var / "run.log").read_text()[-3000:]
        assert run.poll() is None
        assert "worker exited with -9" in (var / "run.log").read_text()
        # what the killed worker had forked went with it (no orphaned pool holding memory)
        assert not all_gone(forked), forked
        started = descendants(run.pid)
    finally:
        run.send_signal(signal.SIGTERM)
        try:
            run.wait(timeout=60)
        except subprocess.TimeoutExpired:
            run.kill()
    assert run.returncode == 0  # it stopped on its own, not killed by the test
    # Ctrl+C stops everything it started, and everything they forked
    assert not all_gone(started), {p: children_of(1).get(p) for p in started}


def test_back_off_grows_for_a_child_that_keeps_dying_and_resets_once_it_runs():
    lines: list[str] = []
    fail = Child("flaky", lambda: subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"]))
    sup = Supervisor([fail], lines.append, min_backoff=1, max_backoff=4, stable=30)
    sup.start_all()
    fail.proc.wait()
    now = 1000.0
    fail.started_at = now
    backoffs = []
    for _ in range(4):
        sup.tick(now)  # notices the exit
        backoffs.append(fail.backoff)
        now = fail.due
        sup.tick(now)  # starts it again
        fail.proc.wait()
        fail.started_at = now
    assert backoffs == [1, 2, 4, 4] and fail.restarts == 4
    assert "flaky exited with 3" in lines[0] and "starting again (restart 1)" in lines[1]
    sup.tick(now + 31)  # it had run for longer than `stable` this time: back to the minimum
    assert fail.backoff == 1
    sup.stop_all()
