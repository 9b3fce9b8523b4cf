"""Errors that carry a message meant for the user (radiologist or CLI user).

Every failure to read or interpret an input is raised as :class:`ImageLoadError`
with a short, specific sentence. Callers (batch runner, dashboard) show
``str(err)`` as-is and never a traceback.
"""
from __future__ import annotations


class ImageLoadError(ValueError):
    """The input could not be turned into an image. ``str(err)`` is user-facing."""


class CheckpointError(RuntimeError):
    """A weights file or model card is missing, tampered with or inconsistent."""


class PretrainedUnavailableError(RuntimeError):
    """Pretrained weights were requested but cannot be obtained (e.g. offline)."""
