"""The labeling side's REST API (routes in urls.py)."""
