"""docker-compose.yml, checked without Docker (there is none here): the file parses, every Loupe
service gets the settings it needs, the queues are served, the GPU worker reserves a GPU, and
Django starts with the stack's environment (storage on MinIO included)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
LOUPE = ("web", "worker-cpu", "worker-gpu", "beat")


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}; $$ is a literal $."""

    def one(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if name in env and env[name] != "":
            return env[name]
        if op == ":-":
            return arg
        raise AssertionError(f"compose needs {name}: {arg}")

    protected = value.replace("$$", "\0")
    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, protected).replace("\0", "$")


def service_env(name: str, env: dict[str, str]) -> dict[str, str]:
    raw = compose()["services"][name].get("environment", {})
    return {k: interpolate(str(v), env) for k, v in raw.items()}


def settings_env_names() -> set[str]:
    text = (ROOT / "inspection" / "settings.py").read_text()
    return set(re.findall(r'env(?:\.\w+)?\(\s*"(\w+)"', text))


def test_every_loupe_service_gets_the_stack_settings():
    given = {"SECRET_KEY": "s" * 50, "MINIO_ROOT_PASSWORD": "minio-secret"}
    needed = {
        "DATABASE_URL",
        "REDIS_URL",
        "SECRET_KEY",
        "STORAGE_BACKEND",
        "AWS_STORAGE_BUCKET_NAME",
        "AWS_S3_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    }
    assert needed <= settings_env_names() | {"SECRET_KEY"}  # names the settings really read
    for name in LOUPE:
        env = service_env(name, given)
        assert needed <= set(env), (name, needed - set(env))
        assert env["AWS_S3_ENDPOINT_URL"] == "http://minio:9000"
        assert env["AWS_SECRET_ACCESS_KEY"] == "minio-secret"
    # MinIO's root user is the key Loupe uses; the bucket is made before any Loupe service
    services = compose()["services"]
    assert services["minio"]["environment"]["MINIO_ROOT_USER"] == "loupe"
    for name in ("web", "worker-cpu", "worker-gpu"):
        assert services[name]["depends_on"]["minio-bucket"] == {
            "condition": "service_completed_successfully"
        }


def test_both_queues_are_served_and_the_gpu_worker_reserves_a_gpu():
    services = compose()["services"]
    # compose's interpolation, then the shell's (no WORKER_QUEUES set: the cpu queue)
    cpu = interpolate(interpolate(services["worker-cpu"]["command"], {}), {})
    gpu = services["worker-gpu"]["command"]
    assert "-Q cpu " in cpu and "-A workers.celery worker" in cpu
    assert "-Q gpu " in gpu and "--concurrency 1" in gpu
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "beat" in services["beat"]["command"]
    # every image and volume is named, the images pinned
    for name, s in services.items():
        assert "build" in s or re.search(r":[\w.-]+$", s["image"]), name
        assert not str(s.get("image", "")).endswith(":latest"), name
    used = {v.split(":")[0] for s in services.values() for v in s.get("volumes", [])}
    assert used <= set(compose()["volumes"])


def test_django_starts_with_the_stacks_environment():
    """The web and worker processes' settings load with the compose environment: S3 storage
    selected, PostgreSQL and Redis URLs parsed (nothing is contacted by `check`)."""
    env = dict(os.environ)
    for k in list(env):
        if k.startswith(("AWS_", "DATABASE_URL", "REDIS_URL", "STORAGE_BACKEND")):
            del env[k]
    env.update(service_env("web", {"SECRET_KEY": "k" * 50, "MINIO_ROOT_PASSWORD": "minio-pw"}))
    code = (
        "import django; django.setup(); from django.conf import settings; "
        "from django.core.files.storage import default_storage; default_storage._setup(); "
        "print(type(default_storage._wrapped).__name__); "
        "print(settings.DATABASES['default']['ENGINE'], settings.AWS_S3_ENDPOINT_URL)"
    )
    env["DJANGO_SETTINGS_MODULE"] = "inspection.settings"

    def run(*args):
        done = subprocess.run(
            [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.strip().splitlines()

    lines = run("-c", code)
    assert lines[-2] == "S3Storage"
    assert lines[-1] == "django.db.backends.postgresql http://minio:9000"
    run("manage.py", "check")
