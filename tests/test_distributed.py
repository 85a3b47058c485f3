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


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("WORLD_SIZE", None)
    src = str(Path(distributed.__file__).resolve().parents[1])  # the spikeforge under test
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def _run(dump: Path, args: list[str], processes: int, *, code: int = 0, **env: str) -> subprocess.CompletedProcess:
    if processes == 1:
        cmd = [sys.executable, str(WORKER), str(dump), *args]
    else:
        cmd = [str(TORCHRUN), "--standalone", f"--nproc-per-node={processes}", str(WORKER), str(dump), *args]
    done = subprocess.run(cmd, env=_env(**env), capture_output=True, text=True, timeout=600)
    assert (done.returncode == 0) == (code == 0), f"{' '.join(cmd)}\nstdout: {done.stdout[-3000:]}\nstderr: {done.stderr[-3000:]}"
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


def _history(path: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "train_seconds"}
            for row in json.loads((path / "metrics.json").read_text())["history"]]


FC_LIF = ["run", "fc-lif", "--dataset", "mnist", "--epochs", "2", "--batch-size", "25", "--hidden", "16", "--T", "4",
          "--dropout", "0.2", "--lr", "0.003", "--device", "cpu", "--no-progress"]


def test_fc_lif_two_processes_equal_one(tmp_path, data):
    """BPTT under torchrun: gloo, 2 ranks, dropout masks and batches drawn for the global batch.

    96 images in batches of 25 (the last 21): shares 13/12 and 11/10; 40 test images in
    one evaluation batch split 20/20.
    """
    common = [*FC_LIF, "--data-dir", str(data)]
    _run(tmp_path / "d1", [*common, "--out", str(tmp_path / "one")], 1)
    _run(tmp_path / "d2", [*common, "--out", str(tmp_path / "two")], 2)
    _compare(tmp_path / "d1", tmp_path / "d2", atol=1e-5)
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert (one["processes"], two["processes"]) == (1, 2) and two["device"] == "cpu"
    for a, b in zip(_history(tmp_path / "one"), _history(tmp_path / "two")):
        assert a["epoch"] == b["epoch"]
        for key in ("train_loss", "train_accuracy", "test_accuracy", "test_loss"):
            assert b[key] == pytest.approx(a[key], abs=1e-4), key
    assert two["spike_stats"]["images"] == one["spike_stats"]["images"] == 40
    assert two["command"].startswith("torchrun --nproc-per-node 2 -m spikeforge run fc-lif")
    for name in ("metrics.json", "report.md", "checkpoint.pt", "curves.png", "predictions.png"):
        assert (tmp_path / "two" / name).is_file()


def test_fc_lif_resume_under_torchrun_equals_an_uninterrupted_run(tmp_path, data):
    """2 ranks interrupted after epoch 1 of 2, then --resume: the weights and history of a straight 2-rank run."""
    common = [*FC_LIF, "--data-dir", str(data)]
    _run(tmp_path / "straight", [*common, "--out", str(tmp_path / "a")], 2)
    _run(tmp_path / "cut", [*common, "--out", str(tmp_path / "b")], 2, code=1, SPIKEFORGE_TEST_STOP_AFTER_EPOCH="1")
    assert not (tmp_path / "b" / "metrics.json").exists() and (tmp_path / "b" / "checkpoint.pt").is_file()
    done = _run(tmp_path / "resumed", [*common, "--out", str(tmp_path / "b"), "--resume"], 2)
    assert done.stdout.count("resumed from") == 1  # rank 0 says so
    a, b = torch.load(tmp_path / "straight" / "rank0.pt"), torch.load(tmp_path / "resumed" / "rank0.pt")
    r1 = torch.load(tmp_path / "resumed" / "rank1.pt")
    assert set(a) == set(b) == set(r1)
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name}: resumed vs straight"
        assert torch.equal(b[name], r1[name]), f"{name} differs between the ranks"
    assert _history(tmp_path / "a") == _history(tmp_path / "b")


UNET_SCRIPT = '''
import os, sys
import torch
from spikeforge import distributed
from spikeforge.data.segmentation import PatchSampler, load_segmentation
from spikeforge.models import create_model
from spikeforge.train.segmentation import train_segmenter

distributed.initialize(torch.device("cpu"))
torch.set_num_threads(1)
data = load_segmentation("synthetic-em", "train", n_slices=2, slice_shape=(64, 64))
torch.manual_seed(0)
model = create_model("unet", width=2, depth=2)
history, _ = train_segmenter(model, PatchSampler(data, 32), steps=4, batch_size=3, log_every=2, lr=3e-3,
                             dice_weight=1.0, progress=False, schedule="constant", warmup=0.0, sync_bn=True,
                             device="cpu")
torch.save({"model": model.state_dict(), "loss": [r["loss"] for r in history]},
           os.path.join(sys.argv[1], f"rank{distributed.rank()}.pt"))
distributed.finalize()
'''


def test_unet_two_processes_equal_one_with_the_dice_of_the_global_batch(tmp_path):
    """Batches of 3 patches split 2/1: BCE weighted by share, the soft Dice's sums added over the ranks,
    BatchNorm synchronized: the weights and losses of one process."""
    script = tmp_path / "unet_ddp.py"
    script.write_text(UNET_SCRIPT)
    for processes, dump in ((1, tmp_path / "one"), (2, tmp_path / "two")):
        dump.mkdir()
        cmd = ([sys.executable, str(script), str(dump)] if processes == 1 else
               [str(TORCHRUN), "--standalone", f"--nproc-per-node={processes}", str(script), str(dump)])
        done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{' '.join(cmd)}\nstdout: {done.stdout[-3000:]}\nstderr: {done.stderr[-3000:]}"
    one = torch.load(tmp_path / "one" / "rank0.pt")
    r0, r1 = torch.load(tmp_path / "two" / "rank0.pt"), torch.load(tmp_path / "two" / "rank1.pt")
    assert r0["loss"] == r1["loss"]  # the history rows are all-reduced
    assert r0["loss"] == pytest.approx(one["loss"], rel=1e-5)
    for name, value in one["model"].items():
        assert torch.equal(r0["model"][name], r1["model"][name]), f"{name} differs between the ranks"
        if value.is_floating_point():
            torch.testing.assert_close(r0["model"][name], value, atol=2e-5, rtol=1e-4, msg=f"{name}: 2 processes vs 1")
        else:
            assert torch.equal(r0["model"][name], value), name
