"""Change detection against a reference image (golden sample, "before"): a plain library.

No Django, no Celery, no app imports; torch is loaded only when a :class:`ChangeEncoder` is built.

``align(image, reference, max_side=1600) -> Alignment``
    3x3 homography reference -> image at full resolution (ECC near the identity, else ORB
    features + MAGSAC refined by ECC), with inliers, residual, overlap; ``ok=False`` and a
    sentence in ``reason`` for a pair that cannot be trusted. ``Alignment.to_dict/from_dict``.
``warp_reference(reference, alignment, (height, width)) -> (warped, valid)``
``difference_image(image, warped, valid) -> uint8`` (display)
``ChangeEncoder(device="cpu", layers=(1, 2))``, ``change_heatmap(encoder, image, warped, valid)``
    Raw change scores: distance of frozen ImageNet EfficientNet-Lite0 features, at 1/4 of the
    image size, tiled.
``fit_calibration(raw_maps, known_change_masks=None, quantile=...) -> ChangeCalibration``
    ``.apply(raw)`` gives the anomaly convention (0.5 = threshold), for
    ``workers.anomaly.regions.extract_regions``.
``compare(image, reference, encoder=..., calibration=...) -> ChangeResult``: all of the above.

Command line: ``python -m workers.change align|regions IMAGE REFERENCE``. Figures on DeepPCB:
docs/benchmarks.md, "Change detection against a reference (DeepPCB)".
"""

from __future__ import annotations

from .align import Alignment, AlignmentError, align, difference_image, warp_reference
from .compare import ChangeResult, compare, read_rgb
from .heatmap import ChangeCalibration, ChangeEncoder, change_heatmap, fit_calibration

__all__ = [
    "Alignment",
    "AlignmentError",
    "ChangeCalibration",
    "ChangeEncoder",
    "ChangeResult",
    "align",
    "change_heatmap",
    "compare",
    "difference_image",
    "fit_calibration",
    "read_rgb",
    "warp_reference",
]
