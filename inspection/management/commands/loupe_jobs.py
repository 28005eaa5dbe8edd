"""manage.py loupe_jobs [--sweep]: list active jobs; re-queue those whose worker died and
delete export zips past LOUPE_EXPORT_KEEP_DAYS."""

from django.core.management.base import BaseCommand

from inspection.models import Job
from inspection.services.jobs import jobs_requeue_stale


class Command(BaseCommand):
    help = "Show queued/running jobs; with --sweep, re-queue or fail jobs whose worker stopped."

    def add_arguments(self, parser):
        parser.add_argument("--sweep", action="store_true")

    def handle(self, *args, sweep: bool, **options):
        if sweep:
            from annotations.datasets import dataset_exports_prune

            for job in jobs_requeue_stale():
                self.stdout.write(f"{job.id} {job.kind}: {job.status} ({job.message or job.error})")
            pruned = dataset_exports_prune()
            if pruned:
                self.stdout.write(f"deleted {pruned} expired export zip(s)")
        for job in Job.objects.filter(status__in=[Job.Status.QUEUED, Job.Status.RUNNING]):
            self.stdout.write(f"{job.id} {job.kind} {job.status} {job.progress:.0f}% {job.message}")
