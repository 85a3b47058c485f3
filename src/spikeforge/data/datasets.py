"""Image-classification datasets: ``mnist-sample``, ``mnist``, ``fashion-mnist`` and ``cifar10``.

For ``mnist`` and ``fashion-mnist`` the standard four IDX files are looked up in
the ``data_dir`` argument (``--data-dir`` on the command line) when one is given, and
only there: a ``data_dir`` that does not hold the files is an error naming it (no
other location is tried and nothing is downloaded). Without ``data_dir`` these base
directories are searched, in order:

1. the environment variable ``SPIKEFORGE_DATA``,
2. the user cache ``$XDG_CACHE_HOME/spikeforge`` (default ``~/.cache/spikeforge``),
3. for ``fashion-mnist`` only, the Debian location ``/usr/share/datasets/fashion-mnist``.

In each base the files may lie directly in it or in a subfolder named after the
dataset (``mnist/``, ``fashion-mnist/``; the torchvision layouts ``MNIST/raw/`` and
``FashionMNIST/raw/`` are accepted too), each gzipped or not.  When they are not
found and ``download=True``, the official files are downloaded into
``<user cache>/<dataset>/`` and verified.

``cifar10`` (official binary or python version, looked up in the same base
directories) is read by :mod:`spikeforge.data.cifar`.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from . import download as _download
from .errors import DataError, DataFileNotFoundError
from .idx import load_idx_pair
from .sample import load_sample_split

__all__ = [
    "DATASETS",
    "SPLITS",
    "CLASS_NAMES",
    "DEBIAN_FASHION_MNIST_DIR",
    "ImageSet",
    "check_data_dir",
    "dataset_names",
    "user_cache_dir",
    "search_dirs",
    "find_idx_files",
    "load_dataset",
]

DATASETS: tuple[str, ...] = ("mnist-sample", "mnist", "fashion-mnist", "cifar10")
SPLITS: tuple[str, ...] = ("train", "test")

_DIGITS = [str(d) for d in range(10)]
_FASHION = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
_CIFAR10 = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]
CLASS_NAMES: dict[str, list[str]] = {
    "mnist-sample": _DIGITS,
    "mnist": _DIGITS,
    "fashion-mnist": _FASHION,
    "cifar10": _CIFAR10,
}

#: Other spellings accepted by :func:`load_dataset` (after lower-casing and ``_`` -> ``-``).
_ALIASES: dict[str, str] = {"cifar-10": "cifar10"}

#: Where Debian's ``dataset-fashion-mnist`` package installs the official files.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

#: Subfolders of a base directory that may hold a dataset's files.
_SUBDIRS: dict[str, tuple[str, ...]] = {
    "mnist-sample": ("mnist-sample",),
    "mnist": ("mnist", "MNIST/raw"),
    "fashion-mnist": ("fashion-mnist", "fashion_mnist", "FashionMNIST/raw"),
}

#: File stems (without ``.gz``) of the images and labels of each split.
_SPLIT_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

PathArg = Union[str, os.PathLike]


@dataclass
class ImageSet:
    """An in-memory labelled image set.

    Attributes:
        images: ``uint8`` tensor ``[N, C, H, W]`` with pixel values ``0..255``
            (``C`` = 1 for the MNIST sets, 3 (R, G, B) for ``cifar10``).
        labels: ``int64`` tensor ``[N]`` of class indices.
        name: Dataset name plus split, e.g. ``"mnist/train"``.
        classes: Human-readable class names, indexed by label.
    """

    images: torch.Tensor
    labels: torch.Tensor
    name: str
    classes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.images.dim() != 4:
            raise DataError(f"{self.name}: images must be [N, C, H, W], got shape {tuple(self.images.shape)}")
        if self.labels.dim() != 1 or self.labels.shape[0] != self.images.shape[0]:
            raise DataError(
                f"{self.name}: labels must be [N] with N = {self.images.shape[0]}, "
                f"got shape {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(classes)``)."""
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape ``(C, H, W)`` of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def as_float(self) -> torch.Tensor:
        """Images as a new ``float32`` tensor scaled to ``[0, 1]``.

        ``uint8`` images are divided by 255; images of any other dtype are
        assumed to be scaled already and are only converted to ``float32``.
        """
        if self.images.dtype == torch.uint8:
            return self.images.to(torch.float32).div_(255.0)
        return self.images.to(torch.float32, copy=True)


def dataset_names() -> tuple[str, ...]:
    """Names accepted by :func:`load_dataset` (for CLI choices)."""
    return DATASETS


def _canonical_name(name: str) -> str:
    if not isinstance(name, str):
        raise DataError(f"dataset name must be a string, got {type(name).__name__}")
    canonical = name.strip().lower().replace("_", "-")
    canonical = _ALIASES.get(canonical, canonical)
    if canonical not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return canonical


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/spikeforge``, or ``~/.cache/spikeforge`` when it is unset."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "spikeforge"


def check_data_dir(data_dir: Optional[PathArg]) -> Optional[Path]:
    """``data_dir`` as a Path; :class:`DataFileNotFoundError` naming it when it is not a folder."""
    if data_dir is None:
        return None
    if not isinstance(data_dir, (str, os.PathLike)):
        raise DataError(f"data_dir must be a path, got {type(data_dir).__name__}")
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise DataFileNotFoundError(f"data directory {path} (--data-dir / data_dir) does not exist")
    if not path.is_dir():
        raise DataError(f"data directory {path} (--data-dir / data_dir) is not a folder")
    return path


def user_data_dirs(data_dir: Optional[PathArg] = None) -> list[Path]:
    """The base directories every dataset is looked up in.

    An explicit ``data_dir`` is the only one (the data must be there); without it:
    ``$SPIKEFORGE_DATA``, then the user cache.
    """
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    bases: list[Path] = []
    env = os.environ.get("SPIKEFORGE_DATA", "")
    if env:
        bases.append(Path(env).expanduser())
    bases.append(user_cache_dir())
    return bases


def _base_dirs(name: str, data_dir: Optional[PathArg]) -> list[Path]:
    bases = user_data_dirs(data_dir)
    if name == "fashion-mnist" and data_dir is None:
        bases.append(DEBIAN_FASHION_MNIST_DIR)
    return bases


def search_dirs(name: str, data_dir: Optional[PathArg] = None) -> list[Path]:
    """All directories searched for ``name``'s files, in look-up order.

    For ``cifar10`` these are the ``cifar-10-batches-bin`` / ``cifar-10-batches-py``
    folders of :func:`spikeforge.data.cifar.cifar10_search_dirs`.
    """
    canonical = _canonical_name(name)
    if canonical == "cifar10":
        from .cifar import cifar10_search_dirs

        return cifar10_search_dirs(data_dir)
    found: list[Path] = []
    for base in _base_dirs(canonical, data_dir):
        for directory in (base, *(base / sub for sub in _SUBDIRS[canonical])):
            if directory not in found:
                found.append(directory)
    return found


def _find_file(directory: Path, stem: str) -> Optional[Path]:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_idx_files(name: str, split: str, data_dir: Optional[PathArg] = None) -> Optional[tuple[Path, Path]]:
    """Return ``(images_path, labels_path)`` of the first directory holding both, else None."""
    if _canonical_name(name) == "cifar10":
        raise DataError(f"{name!r} is not stored as IDX files (see load_dataset)")
    stems = _SPLIT_FILES[_check_split(split)]
    for directory in search_dirs(name, data_dir):
        images = _find_file(directory, stems[0])
        labels = _find_file(directory, stems[1])
        if images is not None and labels is not None:
            return images, labels
    return None


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of: {', '.join(SPLITS)}")
    return split


def _file_key(path: Path) -> tuple[str, int, int]:
    resolved = path.resolve()
    stat = resolved.stat()
    return str(resolved), stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=4)
def _load_pair_cached(images_key: tuple[str, int, int], labels_key: tuple[str, int, int]) -> tuple[np.ndarray, np.ndarray]:
    images, labels = load_idx_pair(images_key[0], labels_key[0])
    images.flags.writeable = False  # shared through the cache; callers get copies
    labels.flags.writeable = False
    return images, labels


def _missing_message(name: str, split: str, data_dir: Optional[PathArg], reason: str) -> str:
    stems = _SPLIT_FILES[split]
    target = (Path(data_dir).expanduser() if data_dir is not None else user_cache_dir()) / name
    searched = "\n".join(f"  - {d}" for d in search_dirs(name, data_dir))
    all_files = ", ".join(f"{s}.gz" for pair in _SPLIT_FILES.values() for s in pair)
    if data_dir is not None:
        return (
            f"{name} ({split} split) not found in the data directory {Path(data_dir).expanduser()} "
            f"(--data-dir / data_dir): {reason}\n"
            f"Needed files: {stems[0]}.gz and {stems[1]}.gz (gzipped or decompressed), directly in it or in "
            f"its {name}/ subfolder.\nSearched directories:\n{searched}\n"
            f"Fix: put the official files ({all_files}, from {_download.BASE_URLS[name]}) there, or drop "
            f"--data-dir to search $SPIKEFORGE_DATA and the user cache ({user_cache_dir()}) and download."
        )
    return (
        f"{name} ({split} split) not found: {reason}\n"
        f"Needed files: {stems[0]}.gz and {stems[1]}.gz (gzipped or decompressed).\n"
        f"Searched directories:\n{searched}\n"
        f"Fix: download the official files ({all_files}) from {_download.BASE_URLS[name]} "
        f"and put them into {target}/ . Files directly in a directory given with --data-dir "
        f"(data_dir=...) or the environment variable SPIKEFORGE_DATA, or in its {name}/ "
        f"subfolder, are found too."
    )


def _resolve_idx_files(name: str, split: str, data_dir: Optional[PathArg], download: bool) -> tuple[Path, Path]:
    found = find_idx_files(name, split, data_dir)
    if found is not None:
        return found
    if data_dir is not None:
        raise DataFileNotFoundError(_missing_message(name, split, data_dir, "the files are not there"))
    if not download:
        raise DataFileNotFoundError(_missing_message(name, split, data_dir, "not in any searched directory, and download=False"))
    dest = user_cache_dir() / name
    paths: list[Path] = []
    for stem in _SPLIT_FILES[split]:
        existing = _find_file(dest, stem)
        if existing is not None:
            paths.append(existing)
            continue
        try:
            paths.append(_download.download_file(name, f"{stem}.gz", dest))
        except _download.DownloadError as exc:
            raise DataError(_missing_message(name, split, data_dir, f"not in any searched directory, and the download failed ({exc})")) from exc
    return paths[0], paths[1]


def load_dataset(
    name: str,
    split: str = "train",
    data_dir: Optional[PathArg] = None,
    download: bool = True,
) -> ImageSet:
    """Load one split of a dataset as an :class:`ImageSet`.

    Args:
        name: One of :data:`DATASETS` (case-insensitive, ``_`` accepted for ``-``).
        split: ``"train"`` or ``"test"``.
        data_dir: The folder holding the files (see the module docstring); when
            given, the files must be there (no other place is searched).
        download: For ``mnist``/``fashion-mnist``/``cifar10`` without ``data_dir``,
            download the official files into the user cache when they are not
            found locally.

    Returns:
        ``uint8`` images ``[N, 1, H, W]`` (``[N, 3, 32, 32]`` for ``cifar10``),
        ``int64`` labels ``[N]``; the tensors are fresh copies that the caller
        may modify.  ``mnist-sample`` gives a fixed stratified split of 4,000
        train / 1,000 test images.

    Raises:
        DataError: unknown name or split, missing, empty or invalid files, a
            ``data_dir`` that does not exist or lacks the files, failed download
            or checksum mismatch; the message says what to do.
    """
    canonical = _canonical_name(name)
    _check_split(split)
    check_data_dir(data_dir)
    if canonical == "cifar10":
        from .cifar import load_cifar10  # imported here: cifar imports this module

        return load_cifar10(split, data_dir=data_dir, download=download)
    if canonical == "mnist-sample":
        bases = _base_dirs(canonical, data_dir)
        images, labels = load_sample_split(split, bases, installed=data_dir is None)
    else:
        images_path, labels_path = _resolve_idx_files(canonical, split, data_dir, download)
        cached_images, cached_labels = _load_pair_cached(_file_key(images_path), _file_key(labels_path))
        images, labels = cached_images.copy(), cached_labels.copy()
        if len(labels) == 0:
            raise DataError(f"{images_path}: holds no images (an empty {canonical} {split} split); "
                            f"nothing to train on or evaluate")
    return ImageSet(
        images=torch.from_numpy(images).unsqueeze(1),
        labels=torch.from_numpy(labels.astype(np.int64)),
        name=f"{canonical}/{split}",
        classes=list(CLASS_NAMES[canonical]),
    )
