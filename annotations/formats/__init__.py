"""Dataset formats: one module per format, pure read/write/validate functions.

Nothing here imports Django or Celery; services and jobs convert between the ORM and the neutral
model in ``model.py`` and call these functions with paths. Each format module registers its
exporters and importers in ``registry.py`` (the one table the app lists and looks formats up in).
"""

from .model import (
    Category,
    Dataset,
    DatasetImage,
    FormatError,
    ImportReport,
    Shape,
    Skipped,
)

__all__ = [
    "Category",
    "Dataset",
    "DatasetImage",
    "FormatError",
    "ImportReport",
    "Shape",
    "Skipped",
]
