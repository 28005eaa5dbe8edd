"""manage.py loupe_jobs [--sweep]: list active jobs; with --sweep, run the maintenance hooks
(re-queue jobs whose worker died, delete export zips past LOUPE_EXPORT_KEEP_DAYS, ...)."""

from django.core.management.base import BaseCommand

from inspection.models import Job
from inspection.services.maintenance import maintenance_run


class Command(BaseCommand):
    help = "Show queued/running jobs; with --sweep, run every maintenance hook once."

    def add_arguments(self, parser):
        parser.add_argument("--sweep", action="store_true")

    def handle(self, *args, sweep: bool, **options):
        if sweep:
            # each hook returns what it did: a count, or the rows it changed
            for name, result in maintenance_run().items():
                for item in result if isinstance(result, list) else [result] if result else []:
                    self.stdout.write(f"{name}: {item}")
        for job in Job.objects.filter(status__in=[Job.Status.QUEUED, Job.Status.RUNNING]):
            self.stdout.write(f"{job.id} {job.kind} {job.status} {job.progress:.0f}% {job.message}")
