"""Errors a user can fix.

Library code raises :class:`FeatkitError` for bad input (a missing folder, a wrong
image size, a store without labels). The CLI turns it into a one-line message and a
non-zero exit; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class FeatkitError(Exception):
    """A user mistake or bad input, reported as one line: what, expected, given."""


class FingerprintMismatchError(FeatkitError):
    """An existing store was made with other weights, preprocessing or precision."""


class ImageDecodeError(FeatkitError):
    """One image could not be decoded; the reason is recorded and the pass goes on."""


class DiskFullError(FeatkitError):
    """A write ran out of space; what was written before stays, and a rerun resumes."""


class StoreDamagedError(FeatkitError):
    """A store or shard does not match what was recorded when it was written."""
