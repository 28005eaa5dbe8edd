"""Loupe's Django project package and core app (projects, images, jobs)."""
