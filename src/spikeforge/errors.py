"""The errors spikeforge raises on bad input and faults: one hierarchy under :class:`SpikeforgeError`.

Every error about something the user gave (an option, a file, a folder, a model, data)
is a :class:`SpikeforgeError` whose message names the option, file or layer concerned
and, where there is one, the fix. The command line prints such an error as one line,
``spikeforge: error: ...``, and exits with status 2 (``--debug`` shows the traceback).

Each class also derives from the built-in exception that was raised for the same
problem before this hierarchy existed (``ValueError``, ``TypeError``,
``FileNotFoundError``, ``FloatingPointError``), so existing ``except`` clauses keep
working::

    SpikeforgeError
    ├── ConfigError (ValueError)             an option or argument has a bad value
    ├── InputTypeError (TypeError)           an argument of the wrong kind (e.g. not a module)
    ├── OutputError (ValueError)             the output folder cannot be used
    ├── DataError (ValueError)               bad or missing input data
    │   ├── DataFileNotFoundError (FileNotFoundError)
    │   ├── DownloadError
    │   └── IncompatibleDataError            data that does not fit the model
    ├── CheckpointError (ValueError)         a checkpoint is missing, corrupt or does not fit
    ├── ConversionError (ValueError)         a model that cannot be converted
    └── DivergenceError (FloatingPointError) training produced a non-finite loss or weight
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "ConversionError",
    "DataError",
    "DataFileNotFoundError",
    "DivergenceError",
    "DownloadError",
    "IncompatibleDataError",
    "InputTypeError",
    "OutputError",
    "SpikeforgeError",
]


class SpikeforgeError(Exception):
    """Base of every error spikeforge raises about its input; the message names the culprit."""


class ConfigError(SpikeforgeError, ValueError):
    """An option or argument has a value outside its range (NaN, infinite, negative, empty...)."""


class InputTypeError(SpikeforgeError, TypeError):
    """An argument is of the wrong kind (e.g. ``convert()`` given something that is not a module)."""


class OutputError(SpikeforgeError, ValueError):
    """The output folder (``--out``) cannot be used: it is a file, or cannot be created or written."""


class DataError(SpikeforgeError, ValueError):
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


class IncompatibleDataError(DataError):
    """The data does not fit the model: image size, channels or number of classes differ."""


class CheckpointError(SpikeforgeError, ValueError):
    """A checkpoint is missing, truncated, corrupt, of the wrong kind, or does not fit the model."""


class ConversionError(SpikeforgeError, ValueError):
    """The model cannot be converted; the message names the node and its operation."""


class DivergenceError(SpikeforgeError, FloatingPointError):
    """Training produced a non-finite loss or weight; the message names the option to change."""
