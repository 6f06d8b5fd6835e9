"""The errors of :mod:`moil.checkpoint`."""

from __future__ import annotations

__all__ = ["CheckpointError", "CheckpointMismatchError", "CorruptCheckpointError"]


class CheckpointError(Exception):
    """Base class of moil's checkpoint errors."""


class CorruptCheckpointError(CheckpointError, ValueError):
    """The file is not a readable moil checkpoint (truncated, garbage, wrong format)."""


class CheckpointMismatchError(CheckpointError, ValueError):
    """The checkpoint is readable but was made for another model or configuration."""
