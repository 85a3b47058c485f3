"""benchmarks/device_transport.py: CIFAR-10 and checkpoints survive the trip to a lent GPU."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from spikeforge.experiments.common import load_split_tensors

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "device_transport.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT)


def _write_cifar(root: Path, per_batch: int = 20) -> None:
    """Five batch files of smooth images (JPEG codes them well), labels cycling 0..9."""
    d = root / "cifar-10-batches-bin"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32]
    for b in range(5):
        rec = np.empty((per_batch, 3073), dtype=np.uint8)
        for i in range(per_batch):
            rec[i, 0] = (b * per_batch + i) % 10
            a, c, ph = rng.uniform(40, 90), rng.uniform(0.05, 0.2), rng.uniform(0, 6)
            img = np.stack([127 + a * np.sin(c * (xx + k * yy) + ph) for k in range(3)])
            rec[i, 1:] = np.clip(img, 0, 255).astype(np.uint8).reshape(-1)
        rec.tofile(d / f"data_batch_{b + 1}.bin")
    (d / "batches.meta.txt").write_text("\n".join(f"c{i}" for i in range(10)) + "\n")


def test_pack_unpack_keeps_held_out_images_exact_and_labels(tmp_path):
    _write_cifar(tmp_path / "src")
    r = _run("pack", "--data-dir", str(tmp_path / "src"), "--val-split", "30", "--out", str(tmp_path / "c.sfj"))
    assert r.returncode == 0, r.stderr
    r = _run("unpack", "--src", str(tmp_path / "c.sfj"), "--out", str(tmp_path / "dst"))
    assert r.returncode == 0, r.stderr
    a = load_split_tensors("cifar10", str(tmp_path / "src"), 30)
    b = load_split_tensors("cifar10", str(tmp_path / "dst"), 30)
    assert torch.equal(a[0][1], b[0][1]) and torch.equal(a[1][1], b[1][1])
    assert torch.equal(a[1][0], b[1][0])  # held-out pixels travel exactly
    err = (a[0][0] - b[0][0]).abs().mean().item() * 255
    assert 0 < err < 3, err  # training pixels: JPEG-coded, close


def test_unpack_rejects_a_foreign_file(tmp_path):
    f = tmp_path / "x.sfj"
    f.write_bytes(b"not a pack file")
    r = _run("unpack", "--src", str(f), "--out", str(tmp_path / "o"))
    assert r.returncode != 0 and "not a file written by 'pack'" in r.stderr


def test_export_import_round_trip_in_float16_parts(tmp_path):
    spec = importlib.util.spec_from_file_location("device_transport", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.PART = 20_000  # force several parts
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(100, 80), torch.nn.BatchNorm1d(80))
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": net.state_dict(), "config": {"a": 1}, "history": [], "train_seconds": 1.0}, run / "model.pt")
    ns = type("A", (), {})
    args = ns()
    args.run, args.out = str(run), str(tmp_path / "parts")
    mod.export(args)
    parts = sorted((tmp_path / "parts").glob("part*"))
    assert len(parts) >= 2 and all(p.stat().st_size <= 20_000 for p in parts)
    args = ns()
    args.parts, args.run = str(tmp_path / "parts"), str(tmp_path / "back")
    mod.import_(args)
    back = torch.load(tmp_path / "back" / "model.pt", weights_only=True)
    assert back["config"] == {"a": 1}
    w0, w1 = net.state_dict()["0.weight"], back["model"]["0.weight"]
    assert w1.dtype == torch.float32 and torch.allclose(w0, w1, rtol=1e-3, atol=1e-4) and not torch.equal(w0, w1)
    assert torch.equal(net.state_dict()["1.running_var"], back["model"]["1.running_var"])  # small: float32


def test_export_refuses_values_float16_cannot_hold(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": {"w": torch.full((5000,), 1e5)}, "config": {}, "history": [], "train_seconds": 0.0},
               run / "model.pt")
    r = _run("export", "--run", str(run), "--out", str(tmp_path / "p"))
    assert r.returncode != 0 and "too large for float16" in r.stderr


def test_pack_names_a_missing_batch_and_unpack_a_truncated_file(tmp_path):
    _write_cifar(tmp_path / "src")
    (tmp_path / "src" / "cifar-10-batches-bin" / "data_batch_3.bin").unlink()
    r = _run("pack", "--data-dir", str(tmp_path / "src"), "--val-split", "30", "--out", str(tmp_path / "c.sfj"))
    assert r.returncode != 0 and "data_batch_3.bin: missing" in r.stderr
    _write_cifar(tmp_path / "ok")
    assert _run("pack", "--data-dir", str(tmp_path / "ok"), "--val-split", "30", "--out", str(tmp_path / "c.sfj")).returncode == 0
    data = (tmp_path / "c.sfj").read_bytes()
    (tmp_path / "cut.sfj").write_bytes(data[: len(data) // 3])
    r = _run("unpack", "--src", str(tmp_path / "cut.sfj"), "--out", str(tmp_path / "o"))
    assert r.returncode != 0 and "truncated or corrupt" in r.stderr


def test_a_pack_with_fewer_training_images_keeps_the_held_out_split(tmp_path):
    """--train-keep N: the same held-out images (exact, same order) and the first N training
    images; cifar_methods.py --data-pack reads it, unpack refuses to make a partial data set."""
    _write_cifar(tmp_path / "src")
    r = _run("pack", "--data-dir", str(tmp_path / "src"), "--val-split", "30", "--train-keep", "25",
             "--out", str(tmp_path / "c.sfj"))
    assert r.returncode == 0, r.stderr
    assert "55 of 100 images" in r.stdout
    spec = importlib.util.spec_from_file_location("cifar_methods_pack", ROOT / "benchmarks" / "cifar_methods.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    train, val, classes = mod.load_pack(str(tmp_path / "c.sfj"), 30)
    a = load_split_tensors("cifar10", str(tmp_path / "src"), 30)
    assert torch.equal(val[0], a[1][0]) and torch.equal(val[1], a[1][1])
    assert torch.equal(train[1], a[0][1][:25]) and train[0].shape == (25, 3, 32, 32)
    assert 0 < (train[0] - a[0][0][:25]).abs().mean().item() * 255 < 3
    with pytest.raises(SystemExit, match="not the run's --val-split 20"):
        mod.load_pack(str(tmp_path / "c.sfj"), 20)
    data = (tmp_path / "c.sfj").read_bytes()
    for cut in (40, len(data) // 2):  # in the header, in the images
        (tmp_path / "t.sfj").write_bytes(data[:cut])
        with pytest.raises(SystemExit, match="--data-pack .*t.sfj: truncated, corrupt or missing"):
            mod.load_pack(str(tmp_path / "t.sfj"), 30)
    with pytest.raises(SystemExit, match="truncated, corrupt or missing"):
        mod.load_pack(str(tmp_path / "absent.sfj"), 30)
    r = _run("unpack", "--src", str(tmp_path / "c.sfj"), "--out", str(tmp_path / "dst"))
    assert r.returncode != 0 and "--train-keep" in r.stderr
    assert _run("pack", "--data-dir", str(tmp_path / "src"), "--train-keep", "0", "--out",
                str(tmp_path / "d.sfj")).returncode != 0
