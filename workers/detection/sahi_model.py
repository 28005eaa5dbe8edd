"""SAHI adapter: lets ``sahi.predict.get_sliced_prediction`` drive a Loupe detector."""

from __future__ import annotations

from typing import Any

import numpy as np
from sahi.models.base import DetectionModel
from sahi.prediction import ObjectPrediction

from .inference import Detection, Detector


class LoupeSahiModel(DetectionModel):
    """``sahi.models.base.DetectionModel`` for PP-YOLOE+-SOD artifacts.

    Construct with ``model_path=<artifact>`` (loaded by :meth:`load_model`) or with an already
    loaded ``detector=``. Batches of slices run as one forward pass.
    """

    def __init__(self, detector: Detector | None = None, **kwargs: Any) -> None:
        self._detector = detector
        if detector is not None:
            kwargs.setdefault("load_at_init", True)
            kwargs["model"] = detector
            kwargs.setdefault("device", str(detector.device))
        super().__init__(**kwargs)

    def load_model(self) -> None:
        """Load the artifact at ``self.model_path``."""
        if not self.model_path:
            raise ValueError("LoupeSahiModel needs model_path or detector")
        self.set_model(Detector.load(self.model_path, device=self.device))

    def set_model(self, model: Any, **kwargs: Any) -> None:
        """Use an already loaded :class:`Detector`."""
        if not isinstance(model, Detector):
            raise TypeError("LoupeSahiModel expects a workers.detection.Detector")
        self.model = model
        self._detector = model
        self.category_mapping = {str(c.index): c.name for c in model.categories}

    def perform_inference(self, image: np.ndarray) -> None:
        """Predict one slice (RGB uint8)."""
        self._original_predictions = self._detector.predict_batch(
            [image], score_threshold=self.confidence_threshold
        )

    def perform_batch_inference(
        self, images: list[np.ndarray], references: list[np.ndarray] | None = None
    ) -> None:
        """Predict a batch of slices in one forward pass (a Siamese detector's with the
        reference slices at the same windows: :meth:`Detector.predict_sliced` passes them;
        SAHI's own ``get_sliced_prediction`` cannot, so a Siamese detector fails there with a
        clear error)."""
        self._batch_images = None
        self._original_shapes = [img.shape for img in images]
        self._original_predictions = self._detector.predict_batch(
            list(images), score_threshold=self.confidence_threshold, references=references
        )

    def _create_object_prediction_list_from_original_predictions(
        self,
        shift_amount_list: list[list[int | float]] | None = None,
        full_shape_list: list[list[int | float]] | None = None,
    ) -> None:
        preds: list[list[Detection]] = self._original_predictions or []
        shifts = shift_amount_list or [[0, 0]]
        if shifts and not isinstance(shifts[0], list | tuple):
            shifts = [shifts]  # a single [x, y]
        shapes = full_shape_list
        if shapes and not isinstance(shapes[0], list | tuple):
            shapes = [shapes]
        per_image = []
        for i, dets in enumerate(preds):
            shift = list(shifts[i]) if i < len(shifts) else [0, 0]
            full = list(shapes[i]) if shapes and i < len(shapes) else None
            items = []
            for d in dets:
                if d.score < self.confidence_threshold or d.x2 <= d.x1 or d.y2 <= d.y1:
                    continue
                items.append(
                    ObjectPrediction(
                        bbox=[d.x1, d.y1, d.x2, d.y2],
                        category_id=d.category_id,
                        category_name=d.category_name,
                        score=d.score,
                        shift_amount=shift,
                        full_shape=full,
                    )
                )
            per_image.append(items)
        self._object_prediction_list_per_image = per_image
