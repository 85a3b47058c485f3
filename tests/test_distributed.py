"""Data-parallel training: torchrun with 2 CPU processes (gloo) against one process.

Each run goes through ``tests/_ddp_worker.py``, which runs one ``spikeforge`` command
line and then saves the weights each rank trained and the files each rank wrote.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from spikeforge import distributed
from spikeforge.data.idx import write_idx

WORKER = Path(__file__).with_name("_ddp_worker.py")
TORCHRUN = Path(sys.executable).with_name("torchrun")


def _mnist(folder: Path, n_train: int = 96, n_test: int = 40) -> Path:
    """A learnable MNIST-format set: class c has a bright row at 2 + 2c."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = (np.arange(n) % 10).astype(np.uint8)
        x = (rng.random((n, 28, 28)) * 60).astype(np.uint8)
        for i, c in enumerate(y):
            x[i, 2 + 2 * int(c), :] = 255
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", x)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", y)
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return _mnist(tmp_path_factory.mktemp("mnist"))


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("WORLD_SIZE", None)
    src = str(Path(distributed.__file__).resolve().parents[1])  # the spikeforge under test
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run(dump: Path, args: list[str], processes: int) -> subprocess.CompletedProcess:
    if processes == 1:
        cmd = [sys.executable, str(WORKER), str(dump), *args]
    else:
        cmd = [str(TORCHRUN), "--standalone", f"--nproc-per-node={processes}", str(WORKER), str(dump), *args]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(cmd)}\nstdout: {done.stdout[-3000:]}\nstderr: {done.stderr[-3000:]}"
    return done


def _compare(single: Path, parallel: Path, atol: float) -> None:
    one = torch.load(single / "rank0.pt")
    r0, r1 = torch.load(parallel / "rank0.pt"), torch.load(parallel / "rank1.pt")
    assert one and set(one) == set(r0) == set(r1)
    for name in one:
        assert torch.equal(r0[name], r1[name]), f"{name} differs between the ranks"
        if r0[name].is_floating_point():
            torch.testing.assert_close(r0[name], one[name], atol=atol, rtol=1e-4, msg=f"{name}: 2 processes vs 1")
        else:
            assert torch.equal(r0[name], one[name]), name
    assert (parallel / "rank0.writes").read_text().strip(), "rank 0 wrote nothing"
    assert (parallel / "rank1.writes").read_text().strip() == "", "rank 1 wrote files"


def test_lenet5_convert_two_processes_equal_one(tmp_path, data):
    """gloo, 2 ranks, synchronized BatchNorm: the weights of a one-process run with the same global batch.

    96 images in batches of 25 (the last 21): the ranks' shares differ in size (13/12, 11/10).
    """
    if shutil.which(str(TORCHRUN)) is None:
        pytest.fail(f"torchrun not found beside {sys.executable}")
    common = ["run", "lenet5-convert", "--dataset", "mnist", "--data-dir", str(data), "--epochs", "2",
              "--batch-size", "25", "--lr", "0.003", "--augment-shift", "2", "--T", "8", "--calib-batches", "1",
              "--eval-batch-size", "16", "--device", "cpu", "--sync-bn", "--no-progress"]
    _run(tmp_path / "d1", [*common, "--out", str(tmp_path / "one")], 1)
    _run(tmp_path / "d2", [*common, "--out", str(tmp_path / "two")], 2)
    _compare(tmp_path / "d1", tmp_path / "d2", atol=2e-5)
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert (one["processes"], two["processes"]) == (1, 2)
    assert two["n_test"] == one["n_test"] == 40
    # the evaluation of the 40 test images is sharded 20/20 and gathered: the same counts
    assert abs(two["ann_accuracy"] - one["ann_accuracy"]) <= 1 / 40 + 1e-9
    for t in one["snn_accuracy"]:
        assert abs(two["snn_accuracy"][t] - one["snn_accuracy"][t]) <= 1 / 40 + 1e-9
    assert two["spike_stats"]["images"] == 40
    assert two["command"].startswith("torchrun --nproc-per-node 2 -m spikeforge run lenet5-convert")
    for name in ("metrics.json", "report.md", "lenet5.pt", "accuracy_vs_T.png"):
        assert (tmp_path / "two" / name).is_file()
