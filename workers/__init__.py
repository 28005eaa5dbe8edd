"""Background work: the Celery app, job tasks, and the ML libraries."""
