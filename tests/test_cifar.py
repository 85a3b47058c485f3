"""Tests for spikeforge.data.cifar: both official formats, safe unpickling, look-up, download."""

from __future__ import annotations

import codecs
import hashlib
import io
import os
import pickle
import struct
import subprocess
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from spikeforge.data import (
    CLASS_NAMES,
    DataError,
    DataFileNotFoundError,
    DownloadError,
    UnsafePickleError,
    dataset_names,
    load_dataset,
    read_cifar_binary,
    read_cifar_python,
    safe_load_pickle,
    search_dirs,
)
from spikeforge.data import cifar as cifar_mod
from spikeforge.data import download as download_mod

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TRAIN_SIZES = (2, 1, 3, 1, 2)  # records in data_batch_1..5
TEST_SIZE = 3


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """Keep tests away from the real user cache, SPIKEFORGE_DATA and the network."""
    monkeypatch.delenv("SPIKEFORGE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))

    def no_network(url, dest, timeout=60.0):
        raise AssertionError(f"test tried to access the network: {url}")

    monkeypatch.setattr(download_mod, "fetch_url", no_network)
    cifar_mod._load_cached.cache_clear()


def fake_records(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    return images, labels


def binary_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    """Hand-pack records: label byte, then the R, G and B planes (row-major)."""
    out = bytearray()
    for image, label in zip(images, labels):
        out.append(int(label))
        for channel in range(3):
            out += image[channel].tobytes()
    return bytes(out)


def python_batch(images: np.ndarray, labels: np.ndarray, *, str_keys: bool = False) -> dict:
    """A dict laid out like the official python batches."""
    batch = {
        b"batch_label": b"testing batch 1 of 1",
        b"labels": [int(v) for v in labels],
        b"data": images.reshape(len(images), 3072).copy(),
        b"filenames": [f"img_{i}.png".encode() for i in range(len(images))],
    }
    return {k.decode(): v for k, v in batch.items()} if str_keys else batch


def make_split_data(seed: int = 0) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    return {
        "train": [fake_records(n, seed + i) for i, n in enumerate(TRAIN_SIZES)],
        "test": [fake_records(TEST_SIZE, seed + 99)],
    }


def write_binary(folder: Path, data) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, (images, labels) in enumerate(data["train"], start=1):
        (folder / f"data_batch_{i}.bin").write_bytes(binary_bytes(images, labels))
    (folder / "test_batch.bin").write_bytes(binary_bytes(*data["test"][0]))
    return folder


def write_python(folder: Path, data, protocol: int = 2, str_keys: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)]
    for name, (images, labels) in zip(names, data["train"]):
        (folder / name).write_bytes(pickle.dumps(python_batch(images, labels, str_keys=str_keys), protocol=protocol))
    images, labels = data["test"][0]
    (folder / "test_batch").write_bytes(pickle.dumps(python_batch(images, labels, str_keys=str_keys), protocol=protocol))
    return folder


def expected(data, split: str) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([d[0] for d in data[split]]), np.concatenate([d[1] for d in data[split]])


def check_set(ds, data, split: str) -> None:
    images, labels = expected(data, split)
    assert ds.name == f"cifar10/{split}" and ds.classes == CLASSES
    assert ds.images.dtype == torch.uint8 and ds.labels.dtype == torch.int64
    assert tuple(ds.images.shape) == (len(labels), 3, 32, 32)
    np.testing.assert_array_equal(ds.images.numpy(), images)
    np.testing.assert_array_equal(ds.labels.numpy(), labels.astype(np.int64))


# --------------------------------------------------------------------------- registry


def test_registered_in_datasets():
    assert "cifar10" in dataset_names()
    assert CLASS_NAMES["cifar10"] == CLASSES


# --------------------------------------------------------------------------- binary version


def test_binary_round_trip_and_channel_order(tmp_path):
    data = make_split_data()
    write_binary(tmp_path / "cifar-10-batches-bin", data)
    for split in ("train", "test"):
        check_set(load_dataset("cifar10", split, data_dir=tmp_path, download=False), data, split)
    # one hand-made record: R plane all 10 except pixel (0, 1) = 200, G = 20, B = 30
    planes = [bytearray([10] * 1024), bytes([20] * 1024), bytes([30] * 1024)]
    planes[0][1] = 200
    path = tmp_path / "one.bin"
    path.write_bytes(bytes([7]) + b"".join(bytes(p) for p in planes))
    images, labels = read_cifar_binary(path)
    assert labels.tolist() == [7] and images.shape == (1, 3, 32, 32)
    assert images[0, 0, 0, 1] == 200 and images[0, 0, 0, 0] == 10 and images[0, 0, 1, 1] == 10
    assert (images[0, 1] == 20).all() and (images[0, 2] == 30).all()


def test_loaded_tensors_are_private_copies(tmp_path):
    data = make_split_data()
    write_binary(tmp_path / "cifar-10-batches-bin", data)
    ds = load_dataset("cifar10", "test", data_dir=tmp_path, download=False)
    ds.images.zero_()
    ds.labels.zero_()
    check_set(load_dataset("CIFAR_10", "test", data_dir=tmp_path, download=False), data, "test")


@pytest.mark.parametrize("cut", [1, 3072, 3074])
def test_truncated_binary_names_file(tmp_path, cut):
    data = make_split_data()
    folder = write_binary(tmp_path / "cifar-10-batches-bin", data)
    path = folder / "data_batch_3.bin"
    raw = path.read_bytes()
    path.write_bytes(raw[:-cut] if cut < len(raw) else raw + b"\0" * (cut - 3073))
    size = path.stat().st_size
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", "train", data_dir=tmp_path, download=False)
    message = str(info.value)
    assert str(path) in message and "truncated or corrupt" in message and str(size) in message


def test_binary_bad_label_and_empty(tmp_path):
    images, labels = fake_records(2, 1)
    labels[1] = 10
    path = tmp_path / "bad.bin"
    path.write_bytes(binary_bytes(images, labels))
    with pytest.raises(DataError, match=r"label 10 out of range") as info:
        read_cifar_binary(path)
    assert str(path) in str(info.value)
    path.write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        read_cifar_binary(path)
    with pytest.raises(DataFileNotFoundError):
        read_cifar_binary(tmp_path / "nope.bin")


# --------------------------------------------------------------------------- python version


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
@pytest.mark.parametrize("str_keys", [False, True])
def test_python_round_trip(tmp_path, protocol, str_keys):
    data = make_split_data(seed=5)
    write_python(tmp_path / "cifar10" / "cifar-10-batches-py", data, protocol=protocol, str_keys=str_keys)
    for split in ("train", "test"):
        check_set(load_dataset("cifar10", split, data_dir=tmp_path, download=False), data, split)


def test_python_and_binary_agree_on_channel_order(tmp_path):
    data = make_split_data(seed=3)
    write_binary(tmp_path / "a" / "cifar-10-batches-bin", data)
    write_python(tmp_path / "b" / "cifar-10-batches-py", data)
    from_bin = read_cifar_binary(tmp_path / "a" / "cifar-10-batches-bin" / "test_batch.bin")
    from_py = read_cifar_python(tmp_path / "b" / "cifar-10-batches-py" / "test_batch")
    np.testing.assert_array_equal(from_bin[0], from_py[0])
    np.testing.assert_array_equal(from_bin[1], from_py[1])


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (lambda b: b.update({b"data": b[b"data"][:, :3071]}), r"shape \[N, 3072\].*\(3, 3071\)"),
        (lambda b: b.update({b"data": b[b"data"].astype(np.int16)}), "uint8"),
        (lambda b: b.update({b"labels": b[b"labels"][:-1]}), "3 images but 2 labels"),
        (lambda b: b.update({b"labels": [0, 1, 12]}), "label 12 out of range"),
        (lambda b: b.update({b"labels": "abc"}), "list of ints"),
        (lambda b: b.pop(b"data"), "needs 'data' and 'labels'"),
    ],
)
def test_python_bad_contents(tmp_path, mutate, pattern):
    batch = python_batch(*fake_records(3, 2))
    mutate(batch)
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match=pattern) as info:
        read_cifar_python(path)
    assert str(path) in str(info.value)
    path.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(DataError, match="expected a pickled dict"):
        read_cifar_python(path)


def python2_pickle(images: np.ndarray, labels: np.ndarray) -> bytes:
    """Assemble, opcode by opcode, a batch as Python 2's cPickle wrote the official files.

    Python 2 strings are SHORT_BINSTRING / BINSTRING (no ``_codecs.encode``) and
    numpy lives in ``numpy.core.multiarray``.
    """

    def short(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b

    raw = images.reshape(len(images), 3072).tobytes()
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + short(b"b") + b"\x87R"
        + b"(K\x01J" + struct.pack("<i", len(images)) + b"M\x00\x0c\x86"
        + b"cnumpy\ndtype\n" + short(b"u1") + b"K\x00K\x01\x87R"
        + b"(K\x03" + short(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
        + b"\x89T" + struct.pack("<I", len(raw)) + raw + b"tb"
    )
    label_list = b"](" + b"".join(b"K" + bytes([int(v)]) for v in labels) + b"e"
    return b"\x80\x02}(" + short(b"batch_label") + short(b"testing batch 1 of 1") + short(b"data") + array + short(b"labels") + label_list + b"u."


def test_python2_style_pickle(tmp_path):
    data = make_split_data(seed=7)
    folder = write_python(tmp_path / "cifar-10-batches-py", data, protocol=pickle.HIGHEST_PROTOCOL)
    (folder / "test_batch").write_bytes(python2_pickle(*data["test"][0]))
    check_set(load_dataset("cifar10", "test", data_dir=tmp_path, download=False), data, "test")


class _HugeBytes:
    def __reduce__(self):
        return (bytes, (10**12,))


def test_protocol2_bytes_stand_ins(tmp_path):
    path = tmp_path / "p"
    path.write_bytes(pickle.dumps({b"empty": b"", b"text": b"\xff\x00abc"}, protocol=2))
    assert safe_load_pickle(path) == {b"empty": b"", b"text": b"\xff\x00abc"}
    path.write_bytes(pickle.dumps(_HugeBytes(), protocol=2))
    with pytest.raises(UnsafePickleError, match=r"bytes\(\.\.\.\) with arguments"):
        safe_load_pickle(path)


def test_truncated_and_garbage_pickle(tmp_path):
    raw = pickle.dumps(python_batch(*fake_records(2, 4)), protocol=2)
    path = tmp_path / "data_batch_1"
    for broken in (raw[: len(raw) // 2], raw[:-1], b"", b"\x80\x02garbage that is no pickle"):
        path.write_bytes(broken)
        with pytest.raises(DataError) as info:
            safe_load_pickle(path)
        assert str(path) in str(info.value) and ("truncated" in str(info.value) or "corrupt" in str(info.value))
    path.write_bytes(raw + b"extra")
    with pytest.raises(DataError, match="after the end"):
        safe_load_pickle(path)


class _RunsCommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _Evals:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


class _Popen:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (subprocess.Popen, (["touch", str(self.marker)],))


class _Rot13:
    def __reduce__(self):
        return (codecs.encode, ("abc", "rot13"))


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_malicious_pickle_is_refused_and_not_run(tmp_path, protocol):
    marker = tmp_path / "PWNED"
    payloads = {
        "system": _RunsCommand(f"touch {marker}"),
        "eval": _Evals(),
        "Popen": _Popen(marker),
        "encode": _Rot13(),
    }
    for refused, payload in payloads.items():
        path = tmp_path / f"evil_{refused}"
        batch = python_batch(*fake_records(1, 0))
        batch[b"labels"] = payload  # hidden inside an otherwise normal batch
        path.write_bytes(pickle.dumps(batch, protocol=protocol))
        with pytest.raises(UnsafePickleError) as info:
            safe_load_pickle(path)
        assert isinstance(info.value, DataError) and isinstance(info.value, pickle.UnpicklingError)
        assert refused in str(info.value) and str(path) in str(info.value)
    assert not marker.exists()
    # through the dataset loader too
    data = make_split_data()
    folder = write_python(tmp_path / "d" / "cifar-10-batches-py", data)
    (folder / "test_batch").write_bytes(pickle.dumps(_RunsCommand(f"touch {marker}"), protocol=protocol))
    with pytest.raises(DataError, match="refused global (posix|os|nt).system"):
        load_dataset("cifar10", "test", data_dir=tmp_path / "d", download=False)
    assert not marker.exists()


# --------------------------------------------------------------------------- look-up


def test_binary_preferred_and_lookup_order(tmp_path, monkeypatch):
    bin_data, py_data = make_split_data(seed=10), make_split_data(seed=20)
    write_binary(tmp_path / "base" / "cifar10" / "cifar-10-batches-bin", bin_data)
    write_python(tmp_path / "base" / "cifar-10-batches-py", py_data)
    check_set(load_dataset("cifar10", "test", data_dir=tmp_path / "base", download=False), bin_data, "test")
    # the environment variable and the user cache are searched too; data_dir wins
    env_data = make_split_data(seed=30)
    write_python(tmp_path / "env" / "cifar-10-batches-py", env_data)
    monkeypatch.setenv("SPIKEFORGE_DATA", str(tmp_path / "env"))
    check_set(load_dataset("cifar10", "test", download=False), env_data, "test")
    check_set(load_dataset("cifar10", "test", data_dir=tmp_path / "base", download=False), bin_data, "test")
    monkeypatch.delenv("SPIKEFORGE_DATA")
    cache_data = make_split_data(seed=40)
    write_binary(tmp_path / "xdg-cache" / "spikeforge" / "cifar10" / "cifar-10-batches-bin", cache_data)
    check_set(load_dataset("cifar10", "train", download=False), cache_data, "train")
    # a data_dir that is itself the batch folder
    check_set(load_dataset("cifar10", "train", data_dir=tmp_path / "base" / "cifar-10-batches-py", download=False), py_data, "train")
    dirs = search_dirs("cifar10", tmp_path / "base")
    assert dirs.index(tmp_path / "base" / "cifar-10-batches-bin") < dirs.index(tmp_path / "base" / "cifar-10-batches-py")


def test_missing_data_offline_names_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataFileNotFoundError) as info:
        load_dataset("cifar10", "train", data_dir=empty, download=False)
    message = str(info.value)
    for needle in (
        "cifar-10-batches-bin/", "cifar-10-batches-py/", "data_batch_1.bin", "data_batch_5.bin",
        "test_batch.bin", str(empty / "cifar-10-batches-bin"), str(empty / "cifar10" / "cifar-10-batches-py"),
        str(tmp_path / "xdg-cache" / "spikeforge" / "cifar10"),
        cifar_mod.CIFAR10_URL, "--data-dir", "SPIKEFORGE_DATA",
    ):
        assert needle in message, needle
    # an explicit data_dir is the only place searched: the cache is named as the alternative only
    assert str(tmp_path / "xdg-cache" / "spikeforge" / "cifar10" / "cifar-10-batches-bin") not in message
    # an incomplete folder is pointed out
    data = make_split_data()
    folder = write_binary(empty / "cifar-10-batches-bin", data)
    (folder / "data_batch_4.bin").unlink()
    with pytest.raises(DataError, match=r"exists but lacks data_batch_4\.bin"):
        load_dataset("cifar10", "train", data_dir=empty, download=False)
    assert len(load_dataset("cifar10", "test", data_dir=empty, download=False)) == TEST_SIZE


# --------------------------------------------------------------------------- download


def tar_gz(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, payload in members:
            if payload is not None:
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            else:
                tar.addfile(info)
    return buffer.getvalue()


def file_member(name: str, payload: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), payload


def official_like_archive(data) -> bytes:
    members = [(tarfile.TarInfo("cifar-10-batches-bin"), None)]
    members[0][0].type = tarfile.DIRTYPE
    for i, (images, labels) in enumerate(data["train"], start=1):
        members.append(file_member(f"cifar-10-batches-bin/data_batch_{i}.bin", binary_bytes(images, labels)))
    members.append(file_member("cifar-10-batches-bin/test_batch.bin", binary_bytes(*data["test"][0])))
    members.append(file_member("cifar-10-batches-bin/batches.meta.txt", "\n".join(CLASSES).encode()))
    return tar_gz(members)


def serve(payload: bytes, calls: list[str]):
    def fake_fetch(url, dest, timeout=60.0):
        calls.append(url)
        Path(dest).write_bytes(payload)

    return fake_fetch


def trust(monkeypatch, payload: bytes) -> None:
    sums = {"sha256": hashlib.sha256(payload).hexdigest(), "md5": hashlib.md5(payload).hexdigest()}
    monkeypatch.setattr(cifar_mod, "CIFAR10_BINARY_CHECKSUMS", sums)


def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "xdg-cache" / "spikeforge" / "cifar10"


def assert_cache_empty(tmp_path: Path) -> None:
    cache = cache_dir(tmp_path)
    assert not cache.exists() or list(cache.iterdir()) == []


def test_download_success_then_cached(tmp_path, monkeypatch):
    data = make_split_data(seed=50)
    archive = official_like_archive(data)
    trust(monkeypatch, archive)
    calls: list[str] = []
    monkeypatch.setattr(download_mod, "fetch_url", serve(archive, calls))
    check_set(load_dataset("cifar10", "test"), data, "test")
    assert calls == [cifar_mod.CIFAR10_URL]
    assert [p.name for p in cache_dir(tmp_path).iterdir()] == ["cifar-10-batches-bin"]  # no temporary leftovers
    check_set(load_dataset("cifar10", "train"), data, "train")
    assert len(calls) == 1


def test_download_checksum_mismatch_leaves_nothing(tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(download_mod, "fetch_url", serve(official_like_archive(make_split_data()), calls))
    with pytest.raises(DownloadError, match="checksum mismatch") as info:
        load_dataset("cifar10", "train")
    assert cifar_mod.CIFAR10_BINARY_CHECKSUMS["sha256"] in str(info.value)
    assert calls == [cifar_mod.CIFAR10_URL]
    assert_cache_empty(tmp_path)


def _link(kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo("cifar-10-batches-bin/test_batch.bin")
    info.type = kind
    info.linkname = "/etc/passwd"
    return info, None


@pytest.mark.parametrize(
    "bad, pattern",
    [
        (file_member("../evil", b"x"), r"'\.\.'"),
        (file_member("cifar-10-batches-bin/../../evil", b"x"), r"'\.\.'"),
        (file_member("/tmp/evil-absolute-cifar", b"x"), "absolute"),
        (_link(tarfile.SYMTYPE), "links"),
        (_link(tarfile.LNKTYPE), "links"),
    ],
)
def test_download_rejects_unsafe_archive(tmp_path, monkeypatch, bad, pattern):
    data = make_split_data()
    members = [file_member("cifar-10-batches-bin/data_batch_1.bin", binary_bytes(*data["train"][0])), bad]
    archive = tar_gz(members)
    trust(monkeypatch, archive)
    monkeypatch.setattr(download_mod, "fetch_url", serve(archive, []))
    with pytest.raises(DataError, match=pattern):
        load_dataset("cifar10", "test")
    assert_cache_empty(tmp_path)
    for escaped in (cache_dir(tmp_path).parent / "evil", cache_dir(tmp_path) / "evil", tmp_path / "evil"):
        assert not escaped.exists()
    assert not Path("/tmp/evil-absolute-cifar").exists()


def test_download_network_failure_explains_fix(tmp_path, monkeypatch):
    def offline(url, dest, timeout=60.0):
        Path(dest).write_bytes(b"partial")
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(download_mod, "fetch_url", offline)
    with pytest.raises(DownloadError) as info:
        load_dataset("cifar10", "test")
    message = str(info.value)
    assert "download failed" in message and "Name or service not known" in message
    assert "cifar-10-batches-bin/" in message and str(cache_dir(tmp_path)) in message
    assert_cache_empty(tmp_path)
