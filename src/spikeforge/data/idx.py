"""Reader and writer for the IDX file format used by MNIST and Fashion-MNIST.

An IDX file is a 4-byte magic number followed by ``ndim`` big-endian ``uint32``
dimension sizes and then the array payload in C order, big-endian.  The magic
number is two zero bytes, a type code and the number of dimensions::

    0x00 0x00 <type> <ndim> <dim_0 (4 bytes)> ... <dim_{ndim-1}> <payload>

Type codes: ``0x08`` uint8, ``0x09`` int8, ``0x0B`` int16, ``0x0C`` int32,
``0x0D`` float32, ``0x0E`` float64.  Files may be gzip-compressed; compression is
detected from the gzip magic bytes (``1f 8b``), not from the file name.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Union

import numpy as np

from .errors import DataError, DataFileNotFoundError

__all__ = [
    "IDX_DTYPES",
    "read_file_bytes",
    "parse_idx",
    "read_idx",
    "write_idx",
    "load_idx_pair",
]

PathLike = Union[str, os.PathLike]

#: IDX type code -> big-endian numpy dtype of the payload.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"


def read_file_bytes(path: PathLike) -> bytes:
    """Read a whole file, transparently decompressing gzip data.

    Raises:
        DataFileNotFoundError: the file does not exist.
        DataError: the file cannot be read or its gzip stream is corrupt.
    """
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise DataFileNotFoundError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read file: {exc}") from exc
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt gzip data ({exc})") from exc


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse an uncompressed IDX byte string into a native-endian numpy array.

    Args:
        data: The complete (decompressed) file contents.
        source: Name used in error messages, normally the file path.

    Raises:
        DataError: bad magic number, unknown type code, truncated header or
            payload, or trailing bytes after the payload.
    """
    if len(data) < 4:
        raise DataError(
            f"{source}: not an IDX file: {len(data)} bytes is too short for the 4-byte magic number"
        )
    zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0:
        raise DataError(
            f"{source}: not an IDX file: bad magic number 0x{data[:4].hex()} "
            "(expected two zero bytes, a type code and the number of dimensions)"
        )
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in sorted(IDX_DTYPES))
        raise DataError(f"{source}: unknown IDX type code 0x{code:02X} (known: {known})")
    if ndim == 0:
        raise DataError(f"{source}: IDX header declares 0 dimensions")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(
            f"{source}: truncated header: expected {header_len} header bytes for "
            f"{ndim} dimensions, found {len(data)}"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header_len])
    dtype = IDX_DTYPES[code]
    expected = math.prod(dims) * dtype.itemsize  # Python ints: no overflow
    found = len(data) - header_len
    if found < expected:
        raise DataError(f"{source}: truncated: expected {expected} bytes of data, found {found}")
    if found > expected:
        raise DataError(
            f"{source}: unexpected trailing data: expected {expected} bytes of data, "
            f"found {found} ({found - expected} extra bytes)"
        )
    array = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize, offset=header_len)
    # astype always copies here, which also makes the result writeable.
    return array.astype(dtype.newbyteorder("="), copy=True).reshape(dims)


def read_idx(path: PathLike) -> np.ndarray:
    """Read an IDX file (raw or gzip-compressed) into a numpy array.

    The returned array has native byte order, is writeable and has the shape
    stored in the file header.

    Raises:
        DataFileNotFoundError: the file does not exist.
        DataError: the file is corrupt or not a valid IDX file; the message names
            the file and the problem.
    """
    return parse_idx(read_file_bytes(path), source=str(path))


def _type_code(dtype: np.dtype) -> int:
    for code, idx_dtype in IDX_DTYPES.items():
        if idx_dtype.kind == dtype.kind and idx_dtype.itemsize == dtype.itemsize:
            return code
    supported = ", ".join(str(d.newbyteorder("=")) for d in IDX_DTYPES.values())
    raise DataError(f"IDX cannot store dtype {dtype} (supported: {supported})")


def write_idx(path: PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file; gzip-compress it when ``path`` ends in ``.gz``.

    The gzip header carries no timestamp, so equal arrays give identical files.

    Raises:
        DataError: the dtype or the shape cannot be represented in IDX.
    """
    arr = np.asarray(array)
    code = _type_code(arr.dtype)
    if not 1 <= arr.ndim <= 255:
        raise DataError(f"{path}: IDX needs 1 to 255 dimensions, got {arr.ndim}")
    if any(dim >= 2**32 for dim in arr.shape):
        raise DataError(f"{path}: dimension too large for IDX: {arr.shape}")
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload = np.ascontiguousarray(arr, dtype=IDX_DTYPES[code]).tobytes()
    if str(path).endswith(".gz"):
        with open(path, "wb") as raw_handle:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw_handle, mtime=0) as handle:
                handle.write(header)
                handle.write(payload)
    else:
        with open(path, "wb") as handle:
            handle.write(header)
            handle.write(payload)


def load_idx_pair(images_path: PathLike, labels_path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read and cross-check an MNIST-style images/labels pair of IDX files.

    Returns:
        ``(images, labels)``: images ``uint8 [N, H, W]`` and labels ``uint8 [N]``
        with every label in ``0..9``.

    Raises:
        DataError: either file is invalid, has the wrong dtype or rank, the label
            values are out of range, or the two files hold different counts.
    """
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(
            f"{images_path}: expected 3-D uint8 images [N, H, W], "
            f"got {images.ndim}-D {images.dtype} array of shape {images.shape}"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DataError(
            f"{labels_path}: expected 1-D uint8 labels [N], "
            f"got {labels.ndim}-D {labels.dtype} array of shape {labels.shape}"
        )
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"image/label count mismatch: {images_path} holds {images.shape[0]} images "
            f"but {labels_path} holds {labels.shape[0]} labels"
        )
    if labels.size and int(labels.max()) > 9:
        bad = int(np.flatnonzero(labels > 9)[0])
        raise DataError(
            f"{labels_path}: label {int(labels[bad])} at index {bad} is outside 0..9"
        )
    return images, labels
