from django.apps import AppConfig


class InspectionConfig(AppConfig):
    name = "inspection"
    verbose_name = "Inspection"

    def ready(self) -> None:
        # registers its maintenance hook (stale jobs)
        from inspection.listcache import connect_user_signals
        from inspection.services import jobs  # noqa: F401

        connect_user_signals()
