"""Loupe's line stations as a plain library: frame sources and the verdict loop.

No Django, no Celery: ``workers/tasks/stations.py`` (``manage.py loupe_station``) plugs the
engine and the results table into :func:`~workers.station.loop.run`; ``benchmarks/station.py``
plugs in the same engine and a seeds-style SQLite loop for comparison. docs/stations.md.
"""
