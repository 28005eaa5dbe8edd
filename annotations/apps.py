from django.apps import AppConfig


class AnnotationsConfig(AppConfig):
    name = "annotations"
    verbose_name = "Annotations"

    def ready(self) -> None:
        # registers its maintenance hook (expired export zips)
        from annotations.services import dataset_export  # noqa: F401
