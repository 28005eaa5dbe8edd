"""Celery tasks: thin glue, one module per job kind, all run through ``runner.run_job``."""
