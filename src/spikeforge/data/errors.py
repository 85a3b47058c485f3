"""Exception types raised by :mod:`spikeforge.data`."""

from __future__ import annotations

__all__ = ["DataError", "DataFileNotFoundError", "DownloadError"]


class DataError(ValueError):
    """Bad or missing input data.

    Every error about input files that :mod:`spikeforge.data` raises is a
    ``DataError``; its message names the file (or directories) concerned and
    what is wrong with it.
    """


class DataFileNotFoundError(DataError, FileNotFoundError):
    """A required data file does not exist.

    It is both a :class:`DataError` and a :class:`FileNotFoundError`, so callers
    may catch either.
    """


class DownloadError(DataError):
    """Fetching a file from the network failed (no checksum problem involved)."""
