"""Defect categories, annotations (labels), and later suggestions, reviews and dataset versions."""
