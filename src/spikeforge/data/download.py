"""Verified, atomic download of the official MNIST and Fashion-MNIST files.

:func:`fetch_url` is the only function that touches the network; tests replace it
with ``monkeypatch.setattr(spikeforge.data.download, "fetch_url", fake)``.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import tempfile
import urllib.request
import zlib
from pathlib import Path

from .errors import DataError, DownloadError

__all__ = [
    "DownloadError",
    "BASE_URLS",
    "EXPECTED_SHA256",
    "EXPECTED_CONTENT_SHA256",
    "fetch_url",
    "sha256_file",
    "verify_download",
    "download_file",
]

#: Where the official ``.gz`` files of each dataset are published.
BASE_URLS: dict[str, str] = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}

#: SHA-256 of the downloaded ``.gz`` files, per dataset and file name.
#:
#: MNIST: the widely published sums of the original archives (the same bytes are
#: served by ossci-datasets, the cvdf mirror and yann.lecun.com).  The value for
#: ``t10k-labels-idx1-ubyte.gz`` ends in ``...defaefb259924204aec6``; a variant
#: ending in ``...defca0c9e1a7fb2a0c11`` circulates but appears nowhere in
#: published download code, so it is not used.  These sums could not be checked
#: against the files offline.
#:
#: Fashion-MNIST has no entry here: only MD5 sums of its ``.gz`` files are
#: published (train-images 8d4fb7e6c68d591d4c3dfef9ec88bf0d, train-labels
#: 25c81989df183df01b3e8a0aad5dffbe, t10k-images bef4ecab320f06d8554ea6380940ec79,
#: t10k-labels bb300cfdad3c16e7a12a480ee83cd310), and the Debian copies in
#: /usr/share/datasets/fashion-mnist are re-compressed, so their ``.gz`` sums
#: differ from the official archives.  Fashion-MNIST downloads are checked
#: against :data:`EXPECTED_CONTENT_SHA256` instead.
EXPECTED_SHA256: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
    "fashion-mnist": {},
}

#: SHA-256 of the *decompressed* IDX payload of each ``.gz`` file.  This does not
#: depend on how the file was compressed.  The Fashion-MNIST values were computed
#: from the Debian package ``dataset-fashion-mnist`` (files dated 2020-06-05),
#: whose decompressed sizes match the official files.
EXPECTED_CONTENT_SHA256: dict[str, dict[str, str]] = {
    "mnist": {},
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}

_CHUNK = 1 << 20


def fetch_url(url: str, dest: Path, timeout: float = 60.0) -> None:
    """Download ``url`` and write its bytes to the (already created) file ``dest``.

    This is the only network access in :mod:`spikeforge.data`; it raises
    ``OSError`` (``urllib.error.URLError`` included) or
    ``http.client.HTTPException`` on failure.
    """
    request = urllib.request.Request(url, headers={"User-Agent": "spikeforge"})
    with urllib.request.urlopen(request, timeout=timeout) as response, open(dest, "wb") as out:
        while True:
            chunk = response.read(_CHUNK)
            if not chunk:
                break
            out.write(chunk)


def sha256_file(path: Path, *, decompress: bool = False) -> str:
    """Return the hex SHA-256 of a file, or of its gzip-decompressed contents."""
    digest = hashlib.sha256()
    opener = gzip.open if decompress else open
    with opener(path, "rb") as handle:
        while True:
            chunk = handle.read(_CHUNK)
            if not chunk:
                break
            digest.update(chunk)
    return digest.hexdigest()


def verify_download(path: Path, dataset: str, filename: str) -> None:
    """Check a downloaded file against the expected-hash tables.

    The file passes when the SHA-256 of its bytes matches
    :data:`EXPECTED_SHA256` or the SHA-256 of its decompressed contents matches
    :data:`EXPECTED_CONTENT_SHA256`.

    Raises:
        DataError: no expected hash is known, or the hashes do not match.
    """
    file_hash = EXPECTED_SHA256.get(dataset, {}).get(filename)
    content_hash = EXPECTED_CONTENT_SHA256.get(dataset, {}).get(filename)
    if file_hash is None and content_hash is None:
        raise DataError(f"{path}: no expected SHA-256 is known for {dataset}/{filename}")
    actual = sha256_file(path)
    if file_hash is not None and actual == file_hash:
        return
    details = [f"file SHA-256 {actual}"]
    if file_hash is not None:
        details[0] += f" (expected {file_hash})"
    if content_hash is not None:
        try:
            actual_content = sha256_file(path, decompress=True)
        except (OSError, EOFError, zlib.error) as exc:
            actual_content = f"unreadable gzip data ({exc})"
        if actual_content == content_hash:
            return
        details.append(f"decompressed SHA-256 {actual_content} (expected {content_hash})")
    raise DataError(f"{path}: SHA-256 checksum mismatch for {dataset}/{filename}: " + "; ".join(details))


def download_file(dataset: str, filename: str, dest_dir: Path, *, timeout: float = 60.0) -> Path:
    """Download one official file of ``dataset`` into ``dest_dir`` and verify it.

    The data is written to a temporary file in ``dest_dir``, verified, and only
    then renamed to its final name with :func:`os.replace`; on any failure the
    temporary file is removed, so no partial or unverified file is ever left.

    Returns:
        The path of the verified file.

    Raises:
        DownloadError: the download failed (network or file-system error).
        DataError: the checksum did not match.
    """
    if dataset not in BASE_URLS:
        raise DataError(f"no download source for dataset {dataset!r}")
    url = BASE_URLS[dataset] + filename
    final = dest_dir / filename
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=dest_dir)
    except OSError as exc:
        raise DownloadError(f"{dest_dir}: cannot create download directory or file: {exc}") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            fetch_url(url, tmp, timeout=timeout)
        except (OSError, http.client.HTTPException) as exc:
            raise DownloadError(f"{final}: download of {url} failed: {exc}") from exc
        verify_download(tmp, dataset, filename)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600 files
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final
