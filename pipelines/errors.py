"""Errors a user can cause, with messages that name the file and the fix.

This module has no third-party imports so every layer (readers, models, app)
can raise these without pulling in Keras or OpenCV.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "MedlensError",
    "ImageReadError",
    "DatasetError",
    "ConfigError",
    "WeightsError",
    "RunDirError",
    "ClusterError",
]


class MedlensError(Exception):
    """Base class of every error medlens raises on purpose.

    The CLI prints ``str(error)`` as one line and exits with status 2; a
    traceback is only shown with ``--debug``.
    """


class ImageReadError(MedlensError):
    """A file could not be read as an image; the message names the file and why."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class DatasetError(MedlensError):
    """A dataset spec points at something unusable (empty folder, missing column...)."""


class ConfigError(MedlensError):
    """A configuration value is missing or invalid."""


class WeightsError(MedlensError):
    """Backbone weights are unavailable (offline, missing file, wrong architecture)."""


class RunDirError(MedlensError):
    """A run directory is missing, incomplete, or would be overwritten."""


class ClusterError(MedlensError):
    """A multi-worker training cluster did not assemble, or lost a worker mid-run."""
