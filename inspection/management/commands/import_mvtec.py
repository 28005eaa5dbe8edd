"""manage.py import_mvtec <folder> --project NAME [--user NAME]"""

from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from inspection.models import Project
from inspection.services.images import images_enqueue_derivatives
from inspection.services.mvtec import MvtecLayoutError, mvtec_import
from inspection.services.projects import project_create


class Command(BaseCommand):
    help = (
        "Import a folder in MVTec AD layout (train/good, test/<type>, ground_truth) into a project."
    )

    def add_arguments(self, parser):
        parser.add_argument("folder", type=Path)
        parser.add_argument("--project", required=True, help="Project name (created if missing).")
        parser.add_argument(
            "--user", default=None, help="Who imports (default: the first superuser)."
        )
        parser.add_argument("--no-pyramids", action="store_true", help="Do not queue pyramid jobs.")

    def handle(
        self, *args, folder: Path, project: str, user: str | None, no_pyramids: bool, **options
    ):
        User = get_user_model()
        who = (
            User.objects.filter(username=user).first()
            if user
            else User.objects.filter(is_superuser=True).order_by("id").first()
        )
        if who is None:
            raise CommandError("No such user (create a superuser first, or pass --user).")
        proj = Project.objects.filter(name=project).first() or project_create(
            user=who, name=project
        )

        def progress(fraction: float, message: str) -> None:
            self.stdout.write(f"\r{fraction * 100:5.1f}% {message[:60]:<60}", ending="")

        try:
            report = mvtec_import(user=who, project=proj, root=folder, progress=progress)
        except MvtecLayoutError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write("")
        if report.image_ids and not no_pyramids:
            job = images_enqueue_derivatives(user=who, project=proj, image_ids=report.image_ids)
            self.stdout.write(f"Queued pyramid job {job.id}")
        self.stdout.write(
            self.style.SUCCESS(
                f"{proj.name}: {report.normal} normal, {report.unlabeled} test images, {report.annotations} "
                f"ground-truth polygons in {len(report.categories)} categories; {report.duplicates} duplicates"
            )
        )
        for item in report.skipped:
            self.stdout.write(self.style.WARNING(f"skipped {item['name']}: {item['reason']}"))
