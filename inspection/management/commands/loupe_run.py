"""manage.py loupe_run: serve Loupe on one machine: web server, Celery worker and broker."""

from __future__ import annotations

import os
import secrets
import signal
import sys
import time

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand

from inspection.models import Station
from inspection.redis_local import redis_answers, start_local_redis
from inspection.supervise import Child, Supervisor, spawn


class Command(BaseCommand):
    help = (
        "Run the web server (gunicorn), a Celery worker (queues cpu and gpu, with beat for the "
        "maintenance hooks), the line stations marked 'start with Loupe' and, if needed, Redis."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--bind",
            default="127.0.0.1:8000",
            help="address:port the web server listens on (0.0.0.0:8000 for the whole network; "
            "then set ALLOWED_HOSTS). Default: %(default)s",
        )
        parser.add_argument(
            "--web-workers",
            type=int,
            default=2,
            help="gunicorn processes (each with 4 threads). Default: %(default)s",
        )
        parser.add_argument(
            "--worker-concurrency",
            type=int,
            default=1,
            help="jobs the Celery worker runs at once; each training or inference uses "
            "LOUPE_WORKER_THREADS CPU threads. Default: %(default)s",
        )

    def handle(self, *args, bind: str, web_workers: int, worker_concurrency: int, **options):
        var = settings.VAR_DIR
        var.mkdir(parents=True, exist_ok=True)
        children: list[Child] = []
        if redis_answers(settings.REDIS_URL):
            self.stdout.write(f"Redis answers at {settings.REDIS_URL}")
        else:
            self.stdout.write(f"No Redis at {settings.REDIS_URL}: starting a local one")
            children.append(
                Child("redis", lambda: start_local_redis(settings.REDIS_URL, var / "redis"))
            )
        call_command("collectstatic", interactive=False, verbosity=0)
        login = self._ensure_admin(var)
        queues = ",".join(settings.LOUPE_QUEUE_PREFIX + q for q in ("cpu", "gpu"))
        worker = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers.celery",
            "worker",
            "-Q",
            queues,
            "--concurrency",
            str(worker_concurrency),
            "--loglevel",
            "INFO",
            "-n",
            "loupe@%h",
            # beat in the same process: the maintenance hooks (stale jobs, expired exports)
            # every LOUPE_MAINTENANCE_SECONDS
            "-B",
            "--schedule",
            str(var / "celerybeat-schedule"),
        ]
        web = [
            sys.executable,
            "-m",
            "gunicorn",
            "inspection.wsgi",
            "--bind",
            bind,
            "--workers",
            str(web_workers),
            "--threads",
            "4",
            "--timeout",
            "300",
            "--access-logfile",
            "-",
        ]
        children.append(Child("worker", lambda: spawn(worker)))
        children.append(Child("web", lambda: spawn(web)))
        # line stations marked "start with Loupe" (docs/stations.md), each its own process,
        # with half the cores: here they share the machine with the worker and the web server
        station_env = dict(os.environ)
        station_env.setdefault("LOUPE_STATION_THREADS", str(max(1, (os.cpu_count() or 2) // 2)))
        for name in Station.objects.filter(start_with_loupe=True).values_list("name", flat=True):
            command = [sys.executable, str(settings.BASE_DIR / "manage.py"), "loupe_station", name]
            children.append(
                Child(
                    f"station {name}",
                    lambda c=command: spawn(c, env=station_env),
                )
            )
        # a child that exits is started again (with back-off) while the others keep running:
        # a crashed worker must not take the web server down with it
        supervisor = Supervisor(children, lambda line: self.stderr.write(line))
        supervisor.start_all()
        self.stdout.write(
            self.style.SUCCESS(
                f"\nLoupe is running at http://{bind}/\n{login}\nPress Ctrl+C to stop.\n"
            )
        )
        stopping = False

        def stop(*_):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        try:
            while not stopping:
                supervisor.tick()
                time.sleep(0.5)
        finally:
            supervisor.stop_all()

    def _ensure_admin(self, var) -> str:
        User = get_user_model()
        secret_file = var / "admin-password.txt"
        if not User.objects.filter(is_superuser=True).exists():
            password = secrets.token_urlsafe(12)
            User.objects.create_superuser("admin", "", password)
            secret_file.write_text(password + "\n")
            secret_file.chmod(0o600)
        if secret_file.exists():
            return f"Log in as 'admin' with the password in {secret_file} ({secret_file.read_text().strip()})"
        return "Log in with your superuser account (manage.py createsuperuser makes one)."
