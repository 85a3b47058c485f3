"""CIFAR-10: readers for the official binary and python versions, look-up and download.

The official data comes in two layouts, both accepted here:

* the **binary** version, folder ``cifar-10-batches-bin/`` with ``data_batch_1.bin``
  ... ``data_batch_5.bin`` (train) and ``test_batch.bin`` (test).  Each file is a
  sequence of 3073-byte records: one label byte (0..9) followed by the 32x32 red
  plane, the green plane and the blue plane (1024 bytes each, row-major);
* the **python** version, folder ``cifar-10-batches-py/`` with ``data_batch_1`` ...
  ``data_batch_5`` and ``test_batch``: pickled dicts whose ``b"data"`` entry is a
  ``uint8`` array ``[N, 3072]`` in the same plane order and whose ``b"labels"``
  entry is a list of ``N`` ints.  A pickle can run arbitrary code when it is
  loaded, so these files are read only through :class:`RestrictedUnpickler`,
  which rebuilds plain containers and numpy arrays and refuses everything else.

The folders are looked up in the base directories shared by all datasets
(``data_dir`` alone when it is given, else ``$SPIKEFORGE_DATA`` and the user cache;
see :func:`spikeforge.data.datasets.user_data_dirs`), directly in a base or in its
``cifar10/`` (or ``cifar-10/``, ``CIFAR10/``) subfolder.  In each base the binary
version is preferred to the python version.  When nothing is found, no ``data_dir``
was given and ``download=True``, the official binary archive is downloaded, verified
and extracted into ``<user cache>/cifar10/cifar-10-batches-bin/``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import importlib
import os
import pickle
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any, Optional

import numpy as np
import torch

from . import download as _download
from .datasets import (
    CLASS_NAMES,
    ImageSet,
    PathArg,
    _check_split,
    _file_key,
    check_data_dir,
    user_cache_dir,
    user_data_dirs,
)
from .errors import DataError, DataFileNotFoundError, DownloadError

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_URL",
    "CIFAR10_BINARY_CHECKSUMS",
    "BINARY_DIR",
    "PYTHON_DIR",
    "RestrictedUnpickler",
    "UnsafePickleError",
    "safe_load_pickle",
    "read_cifar_binary",
    "read_cifar_python",
    "cifar10_search_dirs",
    "find_cifar10_files",
    "download_cifar10",
    "load_cifar10",
]

#: Class names, indexed by label.
CIFAR10_CLASSES: tuple[str, ...] = tuple(CLASS_NAMES["cifar10"])

#: The official binary archive.
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"

#: Expected checksums of :data:`CIFAR10_URL` (every entry is checked).
#:
#: The official page (https://www.cs.toronto.edu/~kriz/cifar.html) publishes only
#: the MD5 ``c32a1d4ab5d03f1284b67883e8d87530``.  The SHA-256 is the value that
#: several independent download tools pin for this same archive (e.g. the Julia
#: package MLDatasets.jl and torchvision-ruby); it, like the archive size of
#: 170,052,171 bytes, could not be checked against the file offline.  Both sums
#: are verified, so a wrong SHA-256 here would make the download fail, never
#: accept a bad file.
CIFAR10_BINARY_CHECKSUMS: dict[str, str] = {
    "sha256": "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
    "md5": "c32a1d4ab5d03f1284b67883e8d87530",
}

BINARY_DIR = "cifar-10-batches-bin"
PYTHON_DIR = "cifar-10-batches-py"

#: Subfolders of a base directory that may hold the batch folders ("" = the base).
_PARENTS: tuple[str, ...] = ("", "cifar10", "cifar-10", "CIFAR10")

#: Batch file stems of each split (the binary files add ``.bin``).
_SPLIT_STEMS: dict[str, tuple[str, ...]] = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}

_SIDE = 32
_PIXELS = 3 * _SIDE * _SIDE  # 3072
_RECORD = 1 + _PIXELS  # 3073
_NUM_CLASSES = 10
_CHUNK = 1 << 20


# --------------------------------------------------------------------------- restricted unpickling


class UnsafePickleError(DataError, pickle.UnpicklingError):
    """A pickle asked for a global (or a call) that :class:`RestrictedUnpickler` does not admit."""


def _numpy_core_attr(submodule: str, name: str) -> Any:
    """``numpy._core.<submodule>.<name>`` (numpy >= 2) or ``numpy.core.<submodule>.<name>``."""
    for package in ("numpy._core", "numpy.core"):
        try:
            module = importlib.import_module(f"{package}.{submodule}")
        except ImportError:
            continue
        value = getattr(module, name, None)
        if value is not None:
            return value
    raise UnsafePickleError(f"numpy provides no {submodule}.{name}")


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """Stand-in for ``_codecs.encode`` that only performs the latin-1 encoding.

    Python 3 writes ``bytes`` into pickles of protocol 0-2 as
    ``_codecs.encode(<str>, "latin1")``; no other use of ``_codecs.encode`` is admitted.
    """
    if not (isinstance(text, str) and isinstance(encoding, str)) or encoding.replace("_", "-").lower() not in (
        "latin1",
        "latin-1",
    ):
        raise UnsafePickleError(
            f"refused call _codecs.encode(<{type(text).__name__}>, {encoding!r}): only latin-1 is admitted"
        )
    return text.encode("latin-1", errors)


def _empty_bytes(*args: Any) -> bytes:
    """Stand-in for ``bytes``: protocols 0-2 write ``b""`` as ``bytes()``; nothing else is admitted."""
    if args:
        raise UnsafePickleError("refused call bytes(...) with arguments: only bytes() is admitted")
    return b""


def _ndarray_rebuilders() -> dict[tuple[str, str], Any]:
    """The allow-list: (module, name) -> the object handed to the unpickler."""
    reconstruct = functools.partial(_numpy_core_attr, "multiarray", "_reconstruct")
    scalar = functools.partial(_numpy_core_attr, "multiarray", "scalar")
    frombuffer = functools.partial(_numpy_core_attr, "numeric", "_frombuffer")
    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
        ("_codecs", "encode"): lambda: _latin1_encode,
        ("builtins", "bytes"): lambda: _empty_bytes,
        ("__builtin__", "bytes"): lambda: _empty_bytes,
    }
    for package in ("numpy.core", "numpy._core"):
        table[(f"{package}.multiarray", "_reconstruct")] = reconstruct  # protocols 0-4
        table[(f"{package}.multiarray", "scalar")] = scalar  # numpy scalars
        table[(f"{package}.numeric", "_frombuffer")] = frombuffer  # protocol 5
    return table


_ALLOWED_GLOBALS = _ndarray_rebuilders()


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds only plain data and numpy arrays.

    Containers, ``bytes``, ``str`` and numbers need no globals at all.  The only
    globals admitted are those numpy uses to rebuild an ``ndarray``:
    ``numpy.ndarray``, ``numpy.dtype``, ``_reconstruct`` and ``scalar`` from
    ``numpy.core.multiarray`` / ``numpy._core.multiarray`` and ``_frombuffer``
    from ``numpy.core.numeric`` / ``numpy._core.numeric`` (protocol 5), plus
    stand-ins for the two calls Python 3 uses to write ``bytes`` in protocols
    0-2: a latin-1-only ``_codecs.encode`` and an argument-less ``bytes``.  Any
    other global (``os.system``, ``builtins.eval``, ``subprocess.Popen``, ...)
    raises :class:`UnsafePickleError` naming it, before anything is imported or
    called.  Out-of-band buffers (``buffers=``) are not supported.
    """

    def __init__(self, file: Any, *, encoding: str = "bytes") -> None:
        # encoding="bytes" is how the official (Python 2) CIFAR pickles are read:
        # their str objects (dict keys, array payloads) come back as bytes.
        super().__init__(file, encoding=encoding)

    def find_class(self, module: str, name: str) -> Any:
        factory = _ALLOWED_GLOBALS.get((module, name))
        if factory is None:
            raise UnsafePickleError(f"refused global {module}.{name}: not needed to rebuild CIFAR data")
        return factory()

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"refused persistent id {pid!r}")


def safe_load_pickle(path: PathArg) -> Any:
    """Load a pickle file through :class:`RestrictedUnpickler`.

    Raises:
        DataFileNotFoundError: the file does not exist.
        UnsafePickleError: the pickle refers to a global that is not admitted
            (nothing it names is imported or called); the message names the file
            and the global.
        DataError: the file is unreadable, truncated or corrupt, or has data
            after the end of the pickle.
    """
    path = Path(path)
    try:
        handle = open(path, "rb")
    except FileNotFoundError as exc:
        raise DataFileNotFoundError(f"{path}: file not found") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read file: {exc}") from exc
    with handle:
        try:
            obj = RestrictedUnpickler(handle).load()
            trailing = handle.read(1)
        except UnsafePickleError as exc:
            raise UnsafePickleError(f"{path}: unsafe pickle: {exc}") from None
        except EOFError as exc:
            raise DataError(f"{path}: truncated or corrupt pickle (unexpected end of file)") from exc
        except Exception as exc:  # any other failure of a restricted load means bad data
            raise DataError(f"{path}: corrupt pickle ({type(exc).__name__}: {exc})") from exc
    if trailing:
        raise DataError(f"{path}: corrupt pickle (data after the end of the pickle)")
    return obj


# --------------------------------------------------------------------------- batch readers


def _check_labels(path: Path, labels: np.ndarray) -> None:
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= _NUM_CLASSES):
        bad = labels[(labels < 0) | (labels >= _NUM_CLASSES)]
        raise DataError(f"{path}: label {int(bad[0])} out of range 0..{_NUM_CLASSES - 1} (corrupt file?)")


def read_cifar_binary(path: PathArg) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch file of the binary version.

    Returns:
        ``(images, labels)``: ``uint8`` ``[N, 3, 32, 32]`` (channels R, G, B) and
        ``uint8`` ``[N]``.

    Raises:
        DataFileNotFoundError: the file does not exist.
        DataError: the file is empty, its size is not a multiple of 3073 bytes
            (truncated or corrupt), or a label is outside 0..9.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise DataFileNotFoundError(f"{path}: file not found") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read file: {exc}") from exc
    size = len(data)
    if size == 0:
        raise DataError(f"{path}: empty file (expected records of {_RECORD} bytes)")
    if size % _RECORD:
        raise DataError(
            f"{path}: truncated or corrupt CIFAR-10 binary batch: size {size} bytes is not a "
            f"multiple of the {_RECORD}-byte record (1 label + {_PIXELS} pixels); "
            f"{size // _RECORD} whole records and {size % _RECORD} bytes left over"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, _RECORD)
    labels = records[:, 0].copy()
    _check_labels(path, labels)
    images = records[:, 1:].reshape(-1, 3, _SIDE, _SIDE).copy()
    return images, labels


def _entry(batch: dict, key: str) -> Any:
    for candidate in (key.encode("ascii"), key):
        if candidate in batch:
            return batch[candidate]
    return None


def read_cifar_python(path: PathArg) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch file of the python version (safely, see :func:`safe_load_pickle`).

    Returns:
        ``(images, labels)``: ``uint8`` ``[N, 3, 32, 32]`` and ``uint8`` ``[N]``.

    Raises:
        DataError: unsafe, truncated or corrupt pickle, or contents that are not
            a dict with ``data`` (``uint8`` ``[N, 3072]``) and ``labels`` (``N``
            ints in 0..9) entries.
    """
    path = Path(path)
    batch = safe_load_pickle(path)
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a pickled dict with 'data' and 'labels', got {type(batch).__name__}")
    data = _entry(batch, "data")
    raw_labels = _entry(batch, "labels")
    if data is None or raw_labels is None:
        keys = ", ".join(sorted(repr(k) for k in batch))
        raise DataError(f"{path}: CIFAR-10 batch needs 'data' and 'labels' entries; found keys: {keys or 'none'}")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        desc = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' must be a uint8 array of shape [N, {_PIXELS}], got {desc}")
    if isinstance(raw_labels, np.ndarray):
        label_list = raw_labels.tolist() if raw_labels.ndim == 1 else None
    elif isinstance(raw_labels, (list, tuple)):
        label_list = list(raw_labels)
    else:
        label_list = None
    if label_list is None or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in label_list
    ):
        raise DataError(f"{path}: 'labels' must be a list of ints, got {type(raw_labels).__name__}")
    if len(label_list) != data.shape[0]:
        raise DataError(f"{path}: {data.shape[0]} images but {len(label_list)} labels")
    labels = np.asarray(label_list, dtype=np.int64)
    _check_labels(path, labels)
    images = np.ascontiguousarray(data).reshape(-1, 3, _SIDE, _SIDE).copy()
    return images, labels.astype(np.uint8)


def _batch_files(folder: Path, split: str) -> list[Path]:
    suffix = ".bin" if folder.name == BINARY_DIR else ""
    return [folder / f"{stem}{suffix}" for stem in _SPLIT_STEMS[split]]


# --------------------------------------------------------------------------- look-up


def cifar10_search_dirs(data_dir: Optional[PathArg] = None) -> list[Path]:
    """Every folder that may hold CIFAR-10 batches, in look-up order.

    For each base directory of :func:`~spikeforge.data.datasets.user_data_dirs`:
    its ``cifar-10-batches-bin/`` folders (directly in the base, then in
    ``cifar10/``, ``cifar-10/``, ``CIFAR10/``), then its ``cifar-10-batches-py/``
    folders in the same order.  A base that is itself such a folder comes first.
    """
    found: list[Path] = []
    for base in user_data_dirs(data_dir):
        candidates = [base] if base.name in (BINARY_DIR, PYTHON_DIR) else []
        for folder in (BINARY_DIR, PYTHON_DIR):
            candidates.extend(base / parent / folder for parent in _PARENTS)
        for candidate in candidates:
            if candidate not in found:
                found.append(candidate)
    return found


def _folder_format(folder: Path) -> str:
    return "binary" if folder.name == BINARY_DIR else "python"


def find_cifar10_files(split: str, data_dir: Optional[PathArg] = None) -> Optional[tuple[str, list[Path]]]:
    """Return ``(format, batch_files)`` from the first folder holding all of ``split``'s files.

    ``format`` is ``"binary"`` or ``"python"``; ``None`` when no folder is complete.
    """
    _check_split(split)
    for folder in cifar10_search_dirs(data_dir):
        files = _batch_files(folder, split)
        if all(f.is_file() for f in files):
            return _folder_format(folder), files
    return None


def _incomplete_folders(split: str, data_dir: Optional[PathArg]) -> list[str]:
    notes = []
    for folder in cifar10_search_dirs(data_dir):
        if folder.is_dir():
            missing = [f.name for f in _batch_files(folder, split) if not f.is_file()]
            if missing:
                notes.append(f"  - {folder} exists but lacks {', '.join(missing)}")
    return notes


def _missing_message(split: str, data_dir: Optional[PathArg], reason: str) -> str:
    train_bin = ", ".join(f"{s}.bin" for s in _SPLIT_STEMS["train"])
    train_py = ", ".join(_SPLIT_STEMS["train"])
    needed_bin = ", ".join(f.name for f in _batch_files(Path(BINARY_DIR), split))
    needed_py = ", ".join(f.name for f in _batch_files(Path(PYTHON_DIR), split))
    target = Path(data_dir).expanduser() if data_dir is not None else user_cache_dir() / "cifar10"
    searched = "\n".join(f"  - {d}" for d in cifar10_search_dirs(data_dir))
    incomplete = _incomplete_folders(split, data_dir)
    incomplete_text = ("Incomplete folders:\n" + "\n".join(incomplete) + "\n") if incomplete else ""
    if data_dir is not None:
        return (
            f"cifar10 ({split} split) not found in the data directory {Path(data_dir).expanduser()} "
            f"(--data-dir / data_dir): {reason}\n"
            f"Needed: a folder {BINARY_DIR}/ holding {needed_bin} (binary version, preferred), "
            f"or a folder {PYTHON_DIR}/ holding {needed_py} (python version), in it or in its cifar10/ "
            f"subfolder (or the data directory is such a folder).\n"
            f"Searched folders:\n{searched}\n"
            f"{incomplete_text}"
            f"Fix: extract {CIFAR10_URL} there, so that {target / BINARY_DIR}/ holds {train_bin} and "
            f"test_batch.bin, or drop --data-dir to search $SPIKEFORGE_DATA and the user cache "
            f"({user_cache_dir() / 'cifar10'}) and download."
        )
    return (
        f"cifar10 ({split} split) not found: {reason}\n"
        f"Needed: a folder {BINARY_DIR}/ holding {needed_bin} (binary version, preferred), "
        f"or a folder {PYTHON_DIR}/ holding {needed_py} (python version).\n"
        f"Searched folders:\n{searched}\n"
        f"{incomplete_text}"
        f"Fix: download {CIFAR10_URL} and extract it into {target}/ so that "
        f"{target / BINARY_DIR}/ holds {train_bin} and test_batch.bin "
        f"(or put the python version's {PYTHON_DIR}/ folder, with {train_py} and test_batch, there). "
        f"The folders are also found directly in, or in the cifar10/ subfolder of, a directory "
        f"given with --data-dir (data_dir=...) or the environment variable SPIKEFORGE_DATA."
    )


# --------------------------------------------------------------------------- download


def _verify_archive(path: Path) -> None:
    expected = dict(CIFAR10_BINARY_CHECKSUMS)
    if not expected:
        raise DownloadError(f"{path}: no expected checksum is known for {CIFAR10_URL}")
    digests = {name: hashlib.new(name, usedforsecurity=False) for name in expected}
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(_CHUNK)
            if not chunk:
                break
            for digest in digests.values():
                digest.update(chunk)
    wrong = [
        f"{name.upper()} {digests[name].hexdigest()} (expected {value})"
        for name, value in expected.items()
        if digests[name].hexdigest() != value.lower()
    ]
    if wrong:
        raise DownloadError(f"{path}: checksum mismatch for {CIFAR10_URL}: " + "; ".join(wrong))


def _member_path(member: tarfile.TarInfo) -> PurePosixPath:
    """Validate one archive member; return its relative path."""
    name = member.name
    if not name or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise DataError(f"unsafe archive member {name!r}: absolute path")
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if ".." in parts:
        raise DataError(f"unsafe archive member {name!r}: '..' in path")
    if member.issym() or member.islnk():
        raise DataError(f"unsafe archive member {name!r}: links are not extracted (target {member.linkname!r})")
    if not (member.isfile() or member.isdir()):
        raise DataError(f"unsafe archive member {name!r}: not a regular file or directory")
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _safe_extract(archive: Path, dest: Path) -> None:
    """Extract the regular files under ``cifar-10-batches-bin/`` of ``archive`` into ``dest``.

    Each member is validated before anything of it is written: absolute paths,
    ``..`` components, links and special files are rejected (the caller removes
    whatever was extracted before).  Safe members outside
    ``cifar-10-batches-bin/`` are skipped.
    """
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                try:
                    relative = _member_path(member)
                except DataError as exc:
                    raise DataError(f"{archive}: {exc}") from None
                if not relative.parts or relative.parts[0] != BINARY_DIR:
                    continue
                target = dest.joinpath(*relative.parts)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                if source is None:  # pragma: no cover - regular files always have data
                    raise DataError(f"{archive}: cannot read member {member.name!r}")
                with source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out, _CHUNK)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise DataError(f"{archive}: corrupt archive: {exc}") from exc


def download_cifar10(timeout: float = 60.0) -> Path:
    """Download, verify and extract the binary version into the user cache.

    The archive is written to a temporary file in ``<user cache>/cifar10/``,
    checked against :data:`CIFAR10_BINARY_CHECKSUMS`, extracted (safely) into a
    temporary folder there and only then renamed to
    ``<user cache>/cifar10/cifar-10-batches-bin``.  On any failure the temporary
    file and folder are removed, so nothing partial or unverified is left.

    Returns:
        The path of the new ``cifar-10-batches-bin`` folder.

    Raises:
        DownloadError: the download failed or the checksum did not match.
        DataError: the archive is corrupt or holds unsafe members, or the target
            folder already exists.
    """
    parent = user_cache_dir() / "cifar10"
    final = parent / BINARY_DIR
    if final.exists():
        raise DataError(
            f"{final}: already exists but does not hold every CIFAR-10 batch file; "
            f"delete it to download the data again"
        )
    created_parent = not parent.exists()
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".cifar-10-binary.tar.gz.", suffix=".part", dir=parent)
    except OSError as exc:
        raise DownloadError(f"{parent}: cannot create download directory or file: {exc}") from exc
    os.close(fd)
    archive = Path(tmp_name)
    extract_dir: Optional[Path] = None
    ok = False
    try:
        try:
            _download.fetch_url(CIFAR10_URL, archive, timeout=timeout)
        except (OSError, http.client.HTTPException) as exc:
            raise DownloadError(f"{final}: download of {CIFAR10_URL} failed: {exc}") from exc
        _verify_archive(archive)
        try:
            extract_dir = Path(tempfile.mkdtemp(prefix=".cifar-10-extract.", dir=parent))
            _safe_extract(archive, extract_dir)
        except OSError as exc:
            raise DataError(f"{archive}: cannot extract into {parent}: {exc}") from exc
        extracted = extract_dir / BINARY_DIR
        missing = [f.name for split in ("train", "test") for f in _batch_files(extracted, split) if not f.is_file()]
        if missing:
            raise DataError(f"{CIFAR10_URL}: the archive lacks {BINARY_DIR}/{', '.join(missing)}")
        try:
            os.rename(extracted, final)
        except OSError as exc:
            complete = all(f.is_file() for split in ("train", "test") for f in _batch_files(final, split))
            if not complete:  # else another process has just put the same data there
                raise DataError(f"{final}: cannot move the extracted files into place: {exc}") from exc
        ok = True
    finally:
        archive.unlink(missing_ok=True)
        if extract_dir is not None:
            shutil.rmtree(extract_dir, ignore_errors=True)
        if not ok and created_parent:
            with contextlib.suppress(OSError):
                parent.rmdir()  # only succeeds when empty
    return final


# --------------------------------------------------------------------------- loading


@functools.lru_cache(maxsize=2)
def _load_cached(fmt: str, keys: tuple[tuple[str, int, int], ...]) -> tuple[np.ndarray, np.ndarray]:
    reader = read_cifar_binary if fmt == "binary" else read_cifar_python
    parts = [reader(key[0]) for key in keys]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    images.flags.writeable = False  # shared through the cache; callers get copies
    labels.flags.writeable = False
    return images, labels


def _checked_key(path: Path) -> tuple[str, int, int]:
    try:
        return _file_key(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot read file: {exc}") from exc


def load_cifar10(split: str = "train", data_dir: Optional[PathArg] = None, download: bool = True) -> ImageSet:
    """Load one split of CIFAR-10 as an :class:`~spikeforge.data.datasets.ImageSet`.

    Args:
        split: ``"train"`` (50,000 images from ``data_batch_1..5``) or ``"test"``
            (10,000 images from ``test_batch``).
        data_dir: The folder holding the batches (see the module docstring); when
            given, they must be there (no other place is searched).
        download: Without ``data_dir``, download the official binary archive into
            the user cache when no complete folder is found.

    Returns:
        ``uint8`` images ``[N, 3, 32, 32]`` (R, G, B), ``int64`` labels ``[N]``,
        name ``"cifar10/<split>"`` and :data:`CIFAR10_CLASSES`; fresh tensors the
        caller may modify.

    Raises:
        DataFileNotFoundError: nothing found and ``download=False``; the message
            names the folders expected and where.
        DownloadError: the download failed or its checksum did not match.
        DataError: a found file is truncated, corrupt or unsafe (named in the message).
    """
    _check_split(split)
    check_data_dir(data_dir)
    found = find_cifar10_files(split, data_dir)
    if found is None:
        if data_dir is not None:
            raise DataFileNotFoundError(_missing_message(split, data_dir, "no complete folder there"))
        if not download:
            raise DataFileNotFoundError(
                _missing_message(split, data_dir, "no complete folder in any searched directory, and download=False")
            )
        try:
            download_cifar10()
        except DownloadError as exc:
            raise DownloadError(
                _missing_message(split, data_dir, f"no complete folder in any searched directory, and the download failed ({exc})")
            ) from exc
        folder = user_cache_dir() / "cifar10" / BINARY_DIR
        found = ("binary", _batch_files(folder, split))
    fmt, files = found
    images, labels = _load_cached(fmt, tuple(_checked_key(f) for f in files))
    return ImageSet(
        images=torch.from_numpy(images.copy()),
        labels=torch.from_numpy(labels.astype(np.int64)),
        name=f"cifar10/{split}",
        classes=list(CIFAR10_CLASSES),
    )
