"""Exception types raised by :mod:`spikeforge.data` (defined in :mod:`spikeforge.errors`).

Every bad-input error of :mod:`spikeforge.data` is a :class:`DataError`, a
:class:`~spikeforge.errors.SpikeforgeError` and a ``ValueError``.
"""

from __future__ import annotations

from spikeforge.errors import DataError, DataFileNotFoundError, DownloadError, IncompatibleDataError

__all__ = ["DataError", "DataFileNotFoundError", "DownloadError", "IncompatibleDataError"]
