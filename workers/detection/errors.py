"""Errors raised by the detection library."""


class DetectionError(Exception):
    """Base class for detection errors with a message meant for people."""


class DetectionDataError(DetectionError):
    """Input data (COCO file, image) is missing or unreadable."""


class WeightsNotFound(DetectionError, FileNotFoundError):
    """A weights file the caller asked for does not exist."""


class CheckpointError(DetectionError):
    """A training checkpoint is unreadable or belongs to a different run (configs, categories
    or training images differ): training refuses to continue from it rather than mix runs."""


class SliceMismatch(DetectionError, ValueError):
    """Sliced prediction at a pixel scale the detector was not trained at (its slices were of
    another size): refused rather than silently worse."""


class RuntimeUnavailable(DetectionError):
    """The inference runtime asked for (ONNX Runtime, OpenVINO) cannot be used here."""


class Cancelled(Exception):  # noqa: N818 - the job runner catches it by this name
    """Raised by a progress callback to stop a running job cooperatively."""
