"""manage.py import_dataset <folder-or-zip> --format coco|yolo|mvtec --project NAME [--user NAME]"""

from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from annotations.formats import FormatError
from annotations.formats.registry import IMPORTERS
from annotations.services.dataset_import import dataset_import_run
from inspection.selectors import projects_visible_to
from inspection.services.projects import project_create


class Command(BaseCommand):
    help = "Import a labelled dataset (a folder or a zip) into a project, as the import job does."
    format: str | None = None  # set by commands that import one format (import_mvtec)

    def add_arguments(self, parser):
        parser.add_argument("source", type=Path, help="A folder, or a .zip file.")
        if self.format is None:
            parser.add_argument("--format", required=True, choices=list(IMPORTERS))
        parser.add_argument("--project", required=True, help="Project name (created if missing).")
        parser.add_argument(
            "--user", default=None, help="Who imports (default: the first superuser)."
        )
        parser.add_argument("--no-pyramids", action="store_true", help="Do not queue pyramid jobs.")

    def handle(self, *args, source: Path, project: str, user, no_pyramids: bool, **options):
        fmt = self.format or options["format"]
        User = get_user_model()
        who = (
            User.objects.filter(username=user).first()
            if user
            else User.objects.filter(is_superuser=True).order_by("id").first()
        )
        if who is None:
            raise CommandError("No such user (create a superuser first, or pass --user).")
        if not source.exists():
            raise CommandError(f"No file or folder at {source}.")
        same = list(projects_visible_to(who).filter(name__iexact=project)[:2])
        if len(same) > 1:
            raise CommandError(
                f"{len(same)} projects named '{project}' are visible to {who.username}; "
                "rename one, or import as a user who sees only one of them (--user)."
            )
        proj = same[0] if same else project_create(user=who, name=project)

        def progress(fraction: float, message: str) -> None:
            self.stdout.write(f"\r{fraction * 100:5.1f}% {message[:60]:<60}", ending="")

        where = {"archive": source} if source.is_file() else {"folder": source}
        try:
            report = dataset_import_run(
                user=who,
                project=proj,
                fmt=fmt,
                source_name=source.name,
                progress=progress,
                build_pyramids=not no_pyramids,
                **where,
            )
        except FormatError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write("")
        self.stdout.write(self.style.SUCCESS(f"{proj.name}: {report['message']}"))
        for item in report["skipped"]:
            self.stdout.write(self.style.WARNING(f"skipped {item['item']}: {item['reason']}"))
