from importlib import import_module
from pkgutil import iter_modules

from django.apps import AppConfig


class TasksConfig(AppConfig):
    """Job bodies. Every module of this package is imported when Django starts, so each
    ``@job_task`` and maintenance hook is registered in every process (web, worker, commands):
    a new job kind is one new module here, and nothing else lists it."""

    name = "workers.tasks"
    label = "loupe_tasks"
    verbose_name = "Background jobs"

    def ready(self) -> None:
        for module in iter_modules(self.module.__path__):
            if module.name not in ("apps", "runner"):
                import_module(f"{self.name}.{module.name}")
