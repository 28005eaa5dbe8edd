from django.apps import AppConfig


class AnnotationsConfig(AppConfig):
    name = "annotations"
    verbose_name = "Annotations"

    def ready(self) -> None:
        # register their maintenance hooks (expired export zips, the detector retrain trigger)
        from annotations.services import dataset_export, detectors  # noqa: F401
