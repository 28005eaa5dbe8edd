"""Exceptions raised by the anomaly engine.

Every error a caller can act on has its own class so that the job runner can turn it into a
readable message without parsing strings.
"""

from __future__ import annotations


class AnomalyError(Exception):
    """Base class for every error the anomaly engine raises on purpose."""


class Cancelled(AnomalyError):  # noqa: N818 - the name reads as a state, like asyncio's
    """Raised by a progress callback to stop training or prediction promptly.

    The engine never swallows it: it propagates to the caller of ``train``/``predict``.
    """


class MissingWeightsError(AnomalyError):
    """A weights file the engine needs is absent; the message names it and how to make it."""


class ImageReadError(AnomalyError):
    """An image could not be read or decoded; the message names the file and the reason."""


class IncompatibleModelError(AnomalyError):
    """The model artifact does not fit the input (channels, size) or is not a Loupe artifact."""


class ConfigError(AnomalyError):
    """A configuration value is out of range or inconsistent."""
