"""Bad input and faults: every failure a clear message, nothing lost, no traceback.

Each case feeds the command line (in process, through ``spikeforge.cli.main``) or the
library one bad input or fault and checks the exit status or the exception type, that
the message names the option, file or layer at fault, that no traceback is printed and
that the user's files are unchanged. Data is written by the tests themselves in the
real formats (IDX, CIFAR binary, checkpoints) and kept tiny.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

import spikeforge.train.snn as snn_loop
from spikeforge import convert
from spikeforge.cli import main, one_line
from spikeforge.data import download as download_mod
from spikeforge.data import load_dataset
from spikeforge.data.idx import write_idx
from spikeforge.data.segmentation import PatchSampler, SegmentationSet, load_segmentation, tile_windows
from spikeforge.errors import (
    CheckpointError,
    ConfigError,
    ConversionError,
    DataError,
    DataFileNotFoundError,
    DivergenceError,
    IncompatibleDataError,
    InputTypeError,
    OutputError,
    SpikeforgeError,
)
from spikeforge.evaluate import evaluate_snn
from spikeforge.models import create_model
from spikeforge.progress import LogProgress, progress
from spikeforge.train import evaluate_classifier, load_checkpoint, save_checkpoint, train_classifier
from spikeforge.train.checkpoint import load_state
from spikeforge.train.segmentation import train_segmenter
from spikeforge.train.simclr import linear_probe, pretrain_simclr
from spikeforge.train.snn import SNNTrainConfig, fit_snn

# --------------------------------------------------------------------------- fixtures and helpers

_KERNEL_CACHE = os.environ.get("SPIKEFORGE_CACHE") or str(
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "spikeforge")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No SPIKEFORGE_DATA, an empty user cache, no network; compiled kernels still found."""
    monkeypatch.delenv("SPIKEFORGE_DATA", raising=False)
    monkeypatch.setenv("SPIKEFORGE_CACHE", _KERNEL_CACHE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))

    def no_network(url, dest, timeout=60.0):
        raise AssertionError(f"test tried to access the network: {url}")

    monkeypatch.setattr(download_mod, "fetch_url", no_network)


def write_mnist(folder: Path, n_train: int = 64, n_test: int = 32, size: int = 28, test_size: int | None = None,
                seed: int = 0, labels_max: int = 9) -> Path:
    """A learnable MNIST-format IDX set: class c has a bright row at 2 + 2c."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n, side in (("train", n_train, size), ("t10k", n_test, test_size or size)):
        y = (np.arange(n) % (labels_max + 1)).astype(np.uint8)
        x = (rng.random((n, side, side)) * 60).astype(np.uint8)
        for i, c in enumerate(y):
            x[i, (2 + 2 * int(c)) % side, :] = 255
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", x)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", y)
    return folder


@pytest.fixture(scope="module")
def data28(tmp_path_factory) -> Path:
    return write_mnist(tmp_path_factory.mktemp("data28"))


def snapshot(*roots: Path) -> dict[Path, bytes]:
    files: dict[Path, bytes] = {}
    for root in roots:
        root = Path(root)
        if root.is_file():
            files[root] = root.read_bytes()
        elif root.is_dir():
            files.update({p: p.read_bytes() for p in root.rglob("*") if p.is_file()})
    return files


def assert_intact(before: dict[Path, bytes]) -> None:
    for path, data in before.items():
        assert path.is_file(), f"{path} was removed"
        assert path.read_bytes() == data, f"{path} was changed"


class Captured(NamedTuple):
    out: str
    err: str


def cli(capsys, argv, *, rc: int = 2, needles=(), keep=()) -> Captured:
    """Run the CLI in process; check the status, one error line naming ``needles``, no traceback, files kept."""
    before = snapshot(*keep)
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == rc, f"exit {code}, expected {rc}\nstdout: {out}\nstderr: {err}"
    assert "Traceback" not in out + err, err
    if rc == 2:
        lines = err.strip().splitlines()
        assert lines and lines[-1].startswith("spikeforge: error: "), err
        assert sum(line.startswith("spikeforge:") for line in lines) == 1, err
        for needle in needles:
            assert str(needle) in lines[-1], f"{needle!r} not in: {lines[-1]}"
    assert_intact(before)
    return Captured(out, err)


@pytest.fixture
def user_out(tmp_path) -> Path:
    """An output folder that already holds a file of the user's."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("my notes\n")
    return out


FC = ["--dataset", "mnist", "--hidden", "16", "--T", "4", "--batch-size", "32", "--no-progress"]


# --------------------------------------------------------------------------- numeric options (argparse)

NUMERIC = [
    # (experiment words, option, value)
    (["run", "lenet5-convert"], "--lr", "nan"),
    (["run", "lenet5-convert"], "--lr", "inf"),
    (["run", "lenet5-convert"], "--lr", "-0.1"),
    (["run", "lenet5-convert"], "--lr", "0"),
    (["run", "lenet5-convert"], "--lr", "1e300"),
    (["run", "lenet5-convert"], "--seed", "99999999999999999999"),
    (["run", "lenet5-convert"], "--seed", "-1"),
    (["run", "lenet5-convert"], "--v-init", "nan"),
    (["run", "lenet5-convert"], "--v-init", "2"),
    (["run", "lenet5-convert"], "--percentile", "nan"),
    (["run", "lenet5-convert"], "--percentile", "0"),
    (["run", "lenet5-convert"], "--T", "0"),
    (["run", "lenet5-convert"], "--T", "ten"),
    (["run", "lenet5-convert"], "--epochs", "-3"),
    (["run", "lenet5-convert"], "--batch-size", "0"),
    (["run", "lenet5-convert"], "--augment-shift", "-1"),
    (["run", "lenet5-convert"], "--max-spikes", "0"),
    (["run", "lenet5-convert"], "--calib-batches", "0"),
    (["run", "lenet5-convert"], "--target-T", "0"),
    (["run", "lenet5-convert"], "--weight-iters", "-1"),
    (["run", "lenet5-convert"], "--weight-refresh", "0"),
    (["run", "lenet5-convert"], "--levels", "0"),
    (["run", "lenet5-convert"], "--val-split", "-5"),
    (["run", "fc-lif"], "--beta", "nan"),
    (["run", "fc-lif"], "--beta", "1.5"),
    (["run", "fc-lif"], "--dropout", "1"),
    (["run", "fc-lif"], "--betas", ","),
    (["run", "fc-lif"], "--hiddens", ","),
    (["run", "fc-lif"], "--hiddens", "0,5"),
    (["run", "fc-lif"], "--betas", "0.5,nan"),
    (["run", "fc-lif"], "--weight-decay", "inf"),
    (["run", "fc-lif"], "--weight-decay", "-1"),
    (["run", "fc-lif"], "--lr", "1e300"),
    (["run", "fc-lif"], "--seed", "1e3"),
    (["run", "fc-poisson"], "--tau", "0.5"),
    (["run", "fc-poisson"], "--tau", "nan"),
    (["run", "csnn"], "--channels", "0"),
    (["run", "csnn"], "--augment-shift", "100"),
    (["run", "cifar-convert"], "--lr", "nan"),
    (["run", "cifar-convert"], "--momentum", "1"),
    (["run", "cifar-convert"], "--label-smoothing", "nan"),
    (["run", "cifar-convert"], "--seed", "-5"),
    (["run", "cifar-convert"], "--widths", "8,16"),
    (["run", "cifar-convert"], "--bias-lr-scale", "0"),
    (["run", "unet-convert"], "--dice-weight", "nan"),
    (["run", "unet-convert"], "--overlap", "-4"),
    (["run", "unet-convert"], "--tile", "-1"),
    (["run", "unet-convert"], "--v-init", "inf"),
    (["run", "unet-convert"], "--lr", "nan"),
    (["run", "unet-convert"], "--depth", "0"),
    (["run", "unet-convert"], "--ann-slices", "-1"),
    (["run", "unet-convert"], "--threads", "-2"),
    (["study", "backbones"], "--T", "0"),
    (["study", "backbones"], "--seed", "nan"),
    (["study", "backbones"], "--levels", "0"),
]


@pytest.mark.parametrize("words,option,value", NUMERIC, ids=[f"{w[-1]}{o}={v}" for w, o, v in NUMERIC])
def test_numeric_option_out_of_range_is_refused_before_any_work(capsys, user_out, words, option, value):
    cli(capsys, [*words, option, value, "--out", user_out], needles=[option, value], keep=[user_out])
    assert sorted(p.name for p in user_out.iterdir()) == ["notes.txt"]  # nothing started


@pytest.mark.parametrize("argv,needle", [
    ([], "command"),
    (["run"], "NAME"),
    (["run", "no-such-experiment"], "no-such-experiment"),
    (["run", "fc-lif", "--no-such-option"], "--no-such-option"),
    (["study", "backbones", "--dataset", "imagenet"], "--dataset"),
])
def test_usage_errors_are_one_line(capsys, argv, needle):
    cli(capsys, argv, needles=[needle])


def test_help_exits_0(capsys):
    assert main(["run", "fc-lif", "--help"]) == 0
    assert "--lr" in capsys.readouterr().out


# --------------------------------------------------------------------------- lists and study options


@pytest.mark.parametrize("extra,needles", [
    (["--models", ","], ["--models"]),
    (["--models", "resnet7"], ["resnet7"]),
    (["--load", "resnet18"], ["--load", "NAME=PATH"]),
    (["--load", "vgg99=x.pt"], ["vgg99"]),
    (["--load", "resnet18=does-not-exist.pt"], ["does-not-exist.pt"]),
])
def test_study_bad_model_options(capsys, user_out, extra, needles):
    cli(capsys, ["study", "backbones", "--preset", "smoke", *extra, "--out", user_out], needles=needles,
        keep=[user_out])
    assert not (user_out / "metrics.json").exists()


def test_study_load_of_a_file_that_is_not_weights(capsys, tmp_path, data28):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    cli(capsys, ["study", "backbones", "--dataset", "mnist", "--data-dir", data28, "--preset", "smoke",
                 "--models", "vgg11", "--load", f"vgg11={junk}", "--out", tmp_path / "out", "--no-progress"],
        needles=[junk], keep=[junk, data28])


# --------------------------------------------------------------------------- where results go

OUT_COMMANDS = {
    "lenet5-convert": ["run", "lenet5-convert", "--epochs", "1"],
    "fc-lif": ["run", "fc-lif", "--epochs", "1"],
    "csnn": ["run", "csnn", "--epochs", "1"],
    "cifar-convert": ["run", "cifar-convert", "--epochs", "1"],
    "unet-convert": ["run", "unet-convert", "--quick"],
    "study": ["study", "backbones", "--preset", "smoke"],
}


@pytest.mark.parametrize("name", list(OUT_COMMANDS))
def test_out_naming_an_existing_file(capsys, tmp_path, name):
    target = tmp_path / "results.txt"
    target.write_text("precious results\n")
    cli(capsys, [*OUT_COMMANDS[name], "--out", target], needles=["--out", target, "not a folder"], keep=[target])


def test_out_below_a_file_cannot_be_created(capsys, tmp_path):
    target = tmp_path / "results.txt"
    target.write_text("precious\n")
    cli(capsys, [*OUT_COMMANDS["fc-lif"], "--out", target / "sub"], needles=["--out", target / "sub", "create"],
        keep=[target])


def test_out_in_an_unwritable_folder_is_refused_before_training(capsys, tmp_path, data28, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "old.txt").write_text("old\n")
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):  # root writes anyway: make the write probe fail as it would
            import tempfile as tempfile_mod

            def refuse(*a, **k):
                raise PermissionError(13, "Permission denied")

            monkeypatch.setattr(tempfile_mod, "mkstemp", refuse)
        trained = []
        monkeypatch.setattr("spikeforge.experiments.direct_train.fit_snn", lambda *a, **k: trained.append(1))
        cli(capsys, ["run", "fc-lif", "--data-dir", data28, *FC, "--out", locked],
            needles=["--out", locked, "Permission denied"], keep=[locked])
        assert not trained
    finally:
        locked.chmod(0o755)


def test_out_under_a_read_only_system_folder(capsys):
    """A real folder nobody (root included) may write into: /sys."""
    import tempfile as tempfile_mod

    sysfs = Path("/sys")
    if not sysfs.is_dir():
        pytest.skip("no /sys here")
    try:
        fd, probe = tempfile_mod.mkstemp(dir=sysfs)
    except OSError:
        pass
    else:  # pragma: no cover - a writable /sys
        os.close(fd)
        os.unlink(probe)
        pytest.skip("/sys is writable here")
    cli(capsys, ["run", "fc-lif", "--epochs", "1", "--out", sysfs], needles=["--out", "/sys"])


# --------------------------------------------------------------------------- data: where it is, what it holds


@pytest.mark.parametrize("words", [
    ["run", "lenet5-convert", "--dataset", "mnist"],
    ["run", "fc-lif", "--dataset", "fashion-mnist"],
    ["run", "cifar-convert", "--dataset", "cifar10"],
    ["run", "unet-convert", "--dataset", "lucchi", "--quick"],
    ["study", "backbones", "--dataset", "mnist", "--preset", "smoke"],
])
def test_explicit_data_dir_that_does_not_exist(capsys, tmp_path, words):
    missing = tmp_path / "no-such-folder"
    cli(capsys, [*words, "--data-dir", missing, "--out", tmp_path / "out"], needles=[missing, "does not exist"])


def test_explicit_data_dir_without_the_data_does_not_fall_back(capsys, tmp_path, data28, monkeypatch):
    """$SPIKEFORGE_DATA and the cache hold the data, but --data-dir was given: it alone is searched."""
    monkeypatch.setenv("SPIKEFORGE_DATA", str(data28))
    write_mnist(tmp_path / "xdg-cache" / "spikeforge" / "mnist")
    empty = tmp_path / "empty"
    empty.mkdir()
    cli(capsys, ["run", "lenet5-convert", "--dataset", "mnist", "--data-dir", empty, "--out", tmp_path / "out"],
        needles=[empty, "train-images-idx3-ubyte"], keep=[data28])


def test_unet_synthetic_data_with_data_dir_is_refused(capsys, tmp_path):
    cli(capsys, ["run", "unet-convert", "--quick", "--data-dir", tmp_path, "--out", tmp_path / "out"],
        needles=["--data-dir", "synthetic-em"])


@pytest.mark.parametrize("name", ["lenet5-convert", "fc-lif"])
def test_empty_idx_data(capsys, tmp_path, name):
    data = write_mnist(tmp_path / "empty-set", n_train=0, n_test=0)
    cli(capsys, ["run", name, "--dataset", "mnist", "--data-dir", data, "--epochs", "1", "--out", tmp_path / "o",
                 "--no-progress"], needles=[data / "train-images-idx3-ubyte.gz", "no images"], keep=[data])


def test_empty_test_split(capsys, tmp_path):
    data = write_mnist(tmp_path / "d", n_train=32, n_test=0)
    cli(capsys, ["run", "fc-lif", *FC, "--data-dir", data, "--epochs", "1", "--out", tmp_path / "o"],
        needles=[data / "t10k-images-idx3-ubyte.gz", "no images"], keep=[data])


@pytest.mark.parametrize("name", ["lenet5-convert", "fc-lif", "csnn", "fc-poisson"])
def test_images_of_the_wrong_size_are_refused_before_training(capsys, tmp_path, name, monkeypatch):
    data = write_mnist(tmp_path / "d32", size=32)
    monkeypatch.setattr("spikeforge.experiments.lenet5_convert.train_classifier",
                        lambda *a, **k: pytest.fail("training started"))
    monkeypatch.setattr("spikeforge.experiments.direct_train.fit_snn", lambda *a, **k: pytest.fail("training started"))
    cli(capsys, ["run", name, "--dataset", "mnist", "--data-dir", data, "--epochs", "1", "--out", tmp_path / "o",
                 "--no-progress"], needles=["1×28×28", "1×32×32", data], keep=[data])


def test_train_and_test_images_of_different_sizes(capsys, tmp_path):
    data = write_mnist(tmp_path / "mixed", size=28, test_size=32)
    cli(capsys, ["run", "fc-lif", *FC, "--data-dir", data, "--epochs", "1", "--out", tmp_path / "o"],
        needles=["28×28", "32×32"], keep=[data])


def test_truncated_idx_file_is_named(capsys, tmp_path):
    data = write_mnist(tmp_path / "d")
    bad = data / "train-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-40])
    cli(capsys, ["run", "fc-lif", *FC, "--data-dir", data, "--epochs", "1", "--out", tmp_path / "o"],
        needles=[bad], keep=[data])


def test_labels_out_of_range_are_named(capsys, tmp_path):
    data = write_mnist(tmp_path / "d", labels_max=12)
    cli(capsys, ["run", "lenet5-convert", "--dataset", "mnist", "--data-dir", data, "--epochs", "1",
                 "--out", tmp_path / "o"], needles=["train-labels-idx1-ubyte", "outside 0..9"], keep=[data])


def test_val_split_that_holds_out_everything(capsys, tmp_path, data28):
    cli(capsys, ["run", "fc-lif", *FC, "--data-dir", data28, "--val-split", "64", "--out", tmp_path / "o"],
        needles=["--val-split 64"])


# --------------------------------------------------------------------------- geometry options


@pytest.mark.parametrize("extra,needles", [
    (["--depth", "8"], ["--depth 8", "--patch 64", "256"]),
    (["--patch", "60"], ["--patch 60", "multiple of"]),
    (["--patch", "200"], ["--patch 200", "larger than the slices"]),
])
def test_unet_geometry_options_that_do_not_fit(capsys, tmp_path, user_out, extra, needles):
    cli(capsys, ["run", "unet-convert", "--quick", *extra, "--out", user_out], needles=needles, keep=[user_out])
    assert not (user_out / "unet.pt").exists()


def test_target_T_without_a_method(capsys, user_out):
    cli(capsys, ["run", "lenet5-convert", "--target-T", "4", "--out", user_out], needles=["--target-T"],
        keep=[user_out])


def test_weight_calibration_without_a_correction(capsys, user_out):
    cli(capsys, ["run", "lenet5-convert", "--weight-iters", "5", "--out", user_out],
        needles=["--weight-iters", "--correction"], keep=[user_out])


def test_weight_refresh_without_weight_calibration(capsys, user_out):
    cli(capsys, ["run", "lenet5-convert", "--correction", "bias", "--weight-refresh", "5", "--out", user_out],
        needles=["--weight-refresh", "--weight-iters"], keep=[user_out])


# --------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def fc_checkpoint(tmp_path_factory, data28) -> Path:
    """checkpoint.pt of an fc-lif run stopped after epoch 1 of 2."""
    out = tmp_path_factory.mktemp("fc-interrupted")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("SPIKEFORGE_DATA", raising=False)
        real = snn_loop.save_checkpoint

        def save_then_stop(path, payload):
            real(path, payload)
            raise KeyboardInterrupt

        mp.setattr(snn_loop, "save_checkpoint", save_then_stop)
        assert main(["run", "fc-lif", *FC, "--data-dir", str(data28), "--epochs", "2", "--out", str(out)]) == 130
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1
    return out / "checkpoint.pt"


def _resume(capsys, tmp_path, data28, payload_or_bytes, *, needles, epochs=2):
    out = tmp_path / "run"
    out.mkdir()
    ckpt = out / "checkpoint.pt"
    if isinstance(payload_or_bytes, bytes):
        ckpt.write_bytes(payload_or_bytes)
    else:
        torch.save(payload_or_bytes, ckpt)
    cli(capsys, ["run", "fc-lif", *FC, "--data-dir", data28, "--epochs", str(epochs), "--resume",
                 "--out", out], needles=[ckpt, *needles], keep=[out, data28])


def test_resume_without_a_checkpoint(capsys, tmp_path, data28):
    out = tmp_path / "o"
    cli(capsys, ["run", "fc-lif", *FC, "--data-dir", data28, "--epochs", "2", "--resume", "--out", out],
        needles=["--resume", out / "checkpoint.pt"])


def test_resume_with_other_options(capsys, tmp_path, data28, fc_checkpoint):
    _resume(capsys, tmp_path, data28, fc_checkpoint.read_bytes(), epochs=3,
            needles=["another configuration", "train.epochs"])


def test_resume_with_matching_options_but_other_shapes(capsys, tmp_path, data28, fc_checkpoint):
    payload = torch.load(fc_checkpoint, weights_only=True)
    payload["model"]["fc1.weight"] = torch.zeros(8, 784)
    _resume(capsys, tmp_path, data28, payload, needles=["fc1.weight", "do not fit"])


def test_resume_with_a_missing_layer(capsys, tmp_path, data28, fc_checkpoint):
    payload = torch.load(fc_checkpoint, weights_only=True)
    del payload["model"]["fc2.bias"]
    _resume(capsys, tmp_path, data28, payload, needles=["fc2.bias"])


@pytest.mark.parametrize("field,value", [("epoch", "one"), ("history", 5), ("model", [1, 2]), ("epoch", True),
                                         ("epoch", -1)])
def test_resume_with_a_wrong_typed_field(capsys, tmp_path, data28, fc_checkpoint, field, value):
    payload = torch.load(fc_checkpoint, weights_only=True)
    payload[field] = value
    _resume(capsys, tmp_path, data28, payload, needles=[repr(field)])


def test_resume_with_nan_weights(capsys, tmp_path, data28, fc_checkpoint):
    payload = torch.load(fc_checkpoint, weights_only=True)
    payload["model"]["fc2.weight"][0, 0] = float("nan")
    _resume(capsys, tmp_path, data28, payload, needles=["fc2.weight", "NaN"])


def test_resume_with_a_truncated_checkpoint(capsys, tmp_path, data28, fc_checkpoint):
    _resume(capsys, tmp_path, data28, fc_checkpoint.read_bytes()[:-100], needles=["corrupt or truncated"])


def test_resume_with_a_bad_optimizer_state(capsys, tmp_path, data28, fc_checkpoint):
    payload = torch.load(fc_checkpoint, weights_only=True)
    payload["optimizer"] = {"state": {}, "param_groups": []}
    _resume(capsys, tmp_path, data28, payload, needles=["optimizer"])


class _RunsCommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_resume_from_a_malicious_pickle_runs_nothing(capsys, tmp_path, data28):
    marker = tmp_path / "pwned"
    _resume(capsys, tmp_path, data28, pickle.dumps({"model": _RunsCommand(marker)}), needles=["corrupt"])
    assert not marker.exists()


def test_cached_lenet5_with_nan_weights_is_not_reused(capsys, tmp_path, data28):
    out = tmp_path / "o"
    args = ["run", "lenet5-convert", "--dataset", "mnist", "--data-dir", data28, "--epochs", "1", "--T", "4",
            "--calib-batches", "1", "--out", out, "--no-progress"]
    config = {"dataset": "mnist", "epochs": 1, "batch_size": 128, "lr": 3e-3, "seed": 0, "augment_shift": 0}
    state = create_model("lenet5").state_dict()
    state["0.weight"][0] = float("nan")
    save_checkpoint(out / "lenet5.pt", {"model": state, "config": config, "history": []})
    out_text = cli(capsys, args, rc=0).out
    assert "warning" in out_text and "NaN" in out_text and "training again" in out_text
    payload = load_checkpoint(out / "lenet5.pt")
    assert all(torch.isfinite(v).all() for v in payload["model"].values())
    assert not json.loads((out / "metrics.json").read_text())["checkpoint_reused"]


# --------------------------------------------------------------------------- divergence


def _poison_after(steps: int, name: str | None = None):
    """A global optimizer hook that writes NaN into a weight after ``steps`` optimizer steps."""
    count = {"n": 0}

    def hook(opt, args, kwargs):
        count["n"] += 1
        if count["n"] == steps:
            for group in opt.param_groups:
                with torch.no_grad():
                    group["params"][0].view(-1)[0] = float("nan")
                break

    return register_optimizer_step_post_hook(hook)


def test_lenet5_divergence_names_lr_and_caches_nothing(capsys, tmp_path, data28):
    out = tmp_path / "o"
    handle = _poison_after(1)
    try:
        cli(capsys, ["run", "lenet5-convert", "--dataset", "mnist", "--data-dir", data28, "--epochs", "2",
                     "--lr", "0.5", "--out", out, "--no-progress"], needles=["diverged", "--lr", "0.5"])
    finally:
        handle.remove()
    assert not (out / "lenet5.pt").exists() and not (out / "metrics.json").exists()


def test_fc_lif_divergence_keeps_the_last_good_checkpoint(capsys, tmp_path, data28, monkeypatch):
    out = tmp_path / "o"
    real = snn_loop.loss_of
    calls = {"n": 0}

    def nan_in_epoch_2(o, y, loss, *rest):
        value = real(o, y, loss, *rest)
        if not torch.is_grad_enabled():  # evaluation
            return value
        calls["n"] += 1
        return value * float("nan") if calls["n"] == 3 else value  # 2 training batches per epoch

    monkeypatch.setattr(snn_loop, "loss_of", nan_in_epoch_2)
    cli(capsys, ["run", "fc-lif", *FC, "--data-dir", data28, "--epochs", "3", "--lr", "0.002", "--out", out],
        needles=["diverged", "epoch 2", "--lr", out / "checkpoint.pt", "(epoch 1)"])
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1
    assert not (out / "metrics.json").exists()


def test_unet_divergence_writes_no_finished_model(capsys, tmp_path, monkeypatch):
    import spikeforge.train.segmentation as seg

    real = seg.bce_dice_loss
    monkeypatch.setattr(seg, "bce_dice_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    out = tmp_path / "o"
    cli(capsys, ["run", "unet-convert", "--quick", "--steps", "4", "--out", out, "--no-progress"],
        needles=["diverged", "step 1", "--lr"])
    assert not (out / "unet.pt").exists() and not (out / "metrics.json").exists()


# --------------------------------------------------------------------------- interruption, --debug, bugs


def test_sigterm_is_handled_like_ctrl_c_and_the_checkpoint_kept(capsys, tmp_path, data28, monkeypatch):
    out = tmp_path / "o"
    real = snn_loop.save_checkpoint

    def save_then_term(path, payload):
        real(path, payload)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(snn_loop, "save_checkpoint", save_then_term)
    before = signal.getsignal(signal.SIGTERM)
    args = ["run", "fc-lif", *FC, "--data-dir", data28, "--epochs", "2", "--out", out]
    err = cli(capsys, args, rc=143).err
    assert signal.getsignal(signal.SIGTERM) is before
    assert "SIGTERM" in err and str(out / "checkpoint.pt") in err and "--resume" in err and "kept" in err
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1
    monkeypatch.setattr(snn_loop, "save_checkpoint", real)
    cli(capsys, [*args, "--resume"], rc=0)
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 2


def test_ctrl_c_names_the_kept_checkpoint(capsys, tmp_path, data28):
    out = tmp_path / "o"
    real = snn_loop.save_checkpoint

    def save_then_interrupt(path, payload):
        real(path, payload)
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(snn_loop, "save_checkpoint", save_then_interrupt)
        err = cli(capsys, ["run", "fc-lif", *FC, "--data-dir", data28, "--epochs", "2", "--out", out], rc=130).err
    assert "interrupted" in err and str(out / "checkpoint.pt") in err


def test_debug_prints_the_traceback(capsys, tmp_path):
    code = main(["run", "fc-lif", "--data-dir", str(tmp_path / "missing"), "--debug", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("spikeforge: error:")
    code = main(["--debug", "run", "fc-lif", "--data-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert code == 2 and "Traceback" in capsys.readouterr().err


def test_an_unexpected_exception_is_one_line_too(capsys, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("something nobody foresaw")

    monkeypatch.setattr("spikeforge.experiments.direct_train.load_split_tensors", boom)
    err = cli(capsys, ["run", "fc-lif", "--out", tmp_path / "o"], rc=1).err
    assert err.strip().startswith("spikeforge: error: unexpected RuntimeError: something nobody foresaw")
    assert "--debug" in err and len(err.strip().splitlines()) == 1


def test_multi_line_messages_become_one_line():
    assert one_line("x not found: y\nSearched:\n  - /a\n  - /b\nFix: z") == "x not found: y Searched: /a, /b Fix: z"


# --------------------------------------------------------------------------- library: convert()


@pytest.fixture(scope="module")
def lenet():
    torch.manual_seed(0)
    return create_model("lenet5").eval()


X = torch.rand(8, 1, 28, 28)


@pytest.mark.parametrize("model,data,kind,needle", [
    ("not a module", X, InputTypeError, "torch.nn.Module"),
    (None, X, InputTypeError, "NoneType"),
    ("lenet", None, InputTypeError, "calibration data"),
    ("lenet", 5, InputTypeError, "int"),
    ("lenet", [X, "text"], InputTypeError, "str"),
    ("lenet", torch.rand(0, 1, 28, 28), ConfigError, "empty"),
    ("lenet", torch.full((4, 1, 28, 28), float("nan")), ConfigError, "NaN"),
    ("lenet", torch.rand(4, 3, 32, 32), ConversionError, "(4, 3, 32, 32)"),
    ("lenet", [], ConfigError, "no batches"),
])
def test_convert_bad_model_or_calibration_data(lenet, model, data, kind, needle):
    model = lenet if model == "lenet" else model
    with pytest.raises(kind, match=__import__("re").escape(needle)) as info:
        convert(model, data)
    assert isinstance(info.value, SpikeforgeError)


def test_convert_refuses_a_model_with_nan_weights():
    model = create_model("lenet5").eval()
    with torch.no_grad():
        model[4].weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(ConversionError, match=r"4\.weight.*NaN or infinite"):
        convert(model, X)


@pytest.mark.parametrize("option,value", [("percentile", float("nan")), ("percentile", 0), ("v_init", float("nan")),
                                          ("max_batches", 0), ("maxpool", "bogus"), ("reset", "half"),
                                          ("batch_size", 0), ("threshold", "magic")])
def test_convert_bad_options(lenet, option, value):
    with pytest.raises(ConfigError, match=option):
        convert(lenet, X, **{option: value})


# --------------------------------------------------------------------------- library: data


def test_load_dataset_data_dir_that_does_not_exist(tmp_path):
    with pytest.raises(DataFileNotFoundError, match="does not exist") as info:
        load_dataset("mnist", "train", data_dir=tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value)


def test_load_dataset_data_dir_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        load_dataset("fashion-mnist", "train", data_dir=f)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10", "mnist-sample"])
def test_explicit_data_dir_is_the_only_place_searched(tmp_path, data28, monkeypatch, name):
    monkeypatch.setenv("SPIKEFORGE_DATA", str(data28))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataFileNotFoundError) as info:
        load_dataset(name, "train", data_dir=empty)  # download=True, but never with an explicit data_dir
    assert str(empty) in str(info.value) and "--data-dir" in str(info.value)


def test_empty_idx_split_names_the_file(tmp_path):
    data = write_mnist(tmp_path / "d", n_train=0, n_test=4)
    with pytest.raises(DataError, match="holds no images") as info:
        load_dataset("mnist", "train", data_dir=data)
    assert str(data / "train-images-idx3-ubyte.gz") in str(info.value)
    assert len(load_dataset("mnist", "test", data_dir=data)) == 4


@pytest.mark.parametrize("kwargs,kind,needle", [
    (dict(name="synthetic-em", n_slices=0), ConfigError, "n_slices"),
    (dict(name="synthetic-em", n_slices=-2), ConfigError, "n_slices"),
    (dict(name="lucchi", n_slices=0), ConfigError, "n_slices"),
    (dict(name="synthetic-em", data_dir="somewhere"), ConfigError, "synthetic-em"),
    (dict(name="lucchi", data_dir="/no/such/lucchi"), DataFileNotFoundError, "/no/such/lucchi"),
])
def test_load_segmentation_refuses_silent_substitutions(kwargs, kind, needle):
    name = kwargs.pop("name")
    with pytest.raises(kind, match=needle):
        load_segmentation(name, "train", slice_shape=(32, 32), **kwargs)


def test_segmentation_geometry_errors():
    data = SegmentationSet(torch.zeros(2, 1, 32, 40, dtype=torch.uint8), torch.zeros(2, 1, 32, 40, dtype=torch.uint8),
                           "tiny")
    with pytest.raises(ConfigError, match="larger than the slices"):
        PatchSampler(data, 33)
    with pytest.raises(ConfigError, match="overlap"):
        tile_windows(64, 16, -1)


# --------------------------------------------------------------------------- library: training loops


def _tiny_set(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 10
    return torch.rand(n, 1, 28, 28, generator=g), y


def test_train_classifier_empty_and_bad_options():
    model = create_model("lenet5")
    x, y = _tiny_set()
    with pytest.raises(DataError, match="no training images"):
        train_classifier(model, (x[:0], y[:0]), None, epochs=1, progress=False)
    for kwargs, needle in ((dict(lr=float("nan")), "lr"), (dict(lr=1e300), "lr"), (dict(weight_decay=-1), "weight_decay"),
                           (dict(bias_lr_scale=0), "bias_lr_scale"), (dict(batch_size=0), "batch_size")):
        with pytest.raises(ConfigError, match=needle):
            train_classifier(model, (x, y), None, epochs=1, progress=False, **kwargs)
    with pytest.raises(DataError, match="no images"):
        evaluate_classifier(model, x[:0], y[:0])


def test_train_classifier_catches_weights_that_diverge_in_the_last_step():
    """The hole of the old loop: NaN weights after the final step were returned (and cached)."""
    model = create_model("lenet5")
    x, y = _tiny_set()
    handle = _poison_after(1)
    try:
        with pytest.raises(DivergenceError, match=r"end of epoch 1.*lower the learning rate \(--lr") as info:
            train_classifier(model, (x, y), None, epochs=1, batch_size=64, progress=False)
    finally:
        handle.remove()
    assert isinstance(info.value, FloatingPointError)


def test_fit_snn_bad_config_and_empty_data(tmp_path):
    model = create_model("fc-lif", hidden=8, T=3)
    x, y = _tiny_set()
    for kwargs in (dict(lr=float("inf")), dict(momentum=1.0), dict(weight_decay=float("nan")), dict(epochs=0)):
        with pytest.raises(ConfigError):
            fit_snn(model, (x, y), None, SNNTrainConfig(**kwargs), progress=False)
    with pytest.raises(DataError, match="no training images"):
        fit_snn(model, (x[:0], y[:0]), None, SNNTrainConfig(epochs=1), progress=False)
    with pytest.raises(DataError, match="no test images"):
        fit_snn(model, (x, y), (x[:0], y[:0]), SNNTrainConfig(epochs=1), progress=False)


def test_fit_snn_nan_weights_stop_at_the_end_of_the_epoch(tmp_path):
    model = create_model("fc-lif", hidden=8, T=3)
    x, y = _tiny_set()
    handle = _poison_after(1)
    try:
        with pytest.raises(DivergenceError, match="fc1.weight"):
            fit_snn(model, (x, y), None, SNNTrainConfig(epochs=2, batch_size=32), out_dir=tmp_path, progress=False)
    finally:
        handle.remove()
    assert not (tmp_path / "checkpoint.pt").exists()


def test_simclr_divergence_and_probe_options():
    model = create_model("resnet18", in_channels=1, num_classes=10, width=1 / 16, image_size=28)
    x, y = _tiny_set(16)
    handle = _poison_after(1)
    try:
        with pytest.raises(DivergenceError, match="contrastive"):
            pretrain_simclr(model, x, epochs=2, batch_size=8, progress=False)
    finally:
        handle.remove()
    with pytest.raises(ConfigError, match="lr"):
        linear_probe(model, (x, y), lr=float("nan"))
    with pytest.raises(ConfigError, match="batch_size"):
        pretrain_simclr(model, x, epochs=1, batch_size=1, progress=False)


def test_train_segmenter_keeps_the_last_good_checkpoint(tmp_path):
    data = load_segmentation("synthetic-em", "train", n_slices=2, slice_shape=(64, 64))
    sampler = PatchSampler(data, 32)
    model = create_model("unet", width=2, depth=2)
    with pytest.raises(ConfigError, match="dice_weight"):
        train_segmenter(model, sampler, steps=2, dice_weight=float("nan"), progress=False)
    ckpt = tmp_path / "unet.pt"
    handle = _poison_after(3)
    try:
        with pytest.raises(DivergenceError, match=r"step 4.*--lr.*intact") as info:
            train_segmenter(model, sampler, steps=6, batch_size=2, checkpoint=ckpt, save_every=2, log_every=1,
                            progress=False)
    finally:
        handle.remove()
    assert str(ckpt) in str(info.value)
    payload = load_checkpoint(ckpt)
    assert payload["step"] == 2 and not payload["done"]


def test_evaluate_snn_on_no_images(lenet):
    snn = convert(lenet, X)
    with pytest.raises(DataError, match="no images"):
        evaluate_snn(snn, X[:0], torch.zeros(0, dtype=torch.long), 4)


# --------------------------------------------------------------------------- library: checkpoints


def test_load_checkpoint_names_a_wrong_typed_field(tmp_path):
    path = tmp_path / "c.pt"
    torch.save({"model": {}, "epoch": "3"}, path)
    with pytest.raises(CheckpointError, match="'epoch'") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_load_state_names_the_layer_that_does_not_fit(tmp_path):
    model = create_model("lenet5")
    state = create_model("lenet5", in_channels=3).state_dict()
    with pytest.raises(CheckpointError, match=r"w\.pt.*0\.weight") as info:
        load_state(model, state, tmp_path / "w.pt")
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_state(model, {"a": 1}, tmp_path / "w.pt")


# --------------------------------------------------------------------------- the error hierarchy


def test_hierarchy_keeps_old_except_clauses_working():
    import spikeforge
    import spikeforge.data
    import spikeforge.train
    from spikeforge.convert import ConversionError as from_convert
    from spikeforge.data.cifar import UnsafePickleError

    assert spikeforge.data.DataError is DataError and spikeforge.train.CheckpointError is CheckpointError
    assert from_convert is ConversionError is spikeforge.ConversionError
    assert issubclass(UnsafePickleError, DataError) and issubclass(UnsafePickleError, pickle.UnpicklingError)
    for cls, old in ((ConfigError, ValueError), (InputTypeError, TypeError), (OutputError, ValueError),
                     (DataError, ValueError), (DataFileNotFoundError, FileNotFoundError),
                     (IncompatibleDataError, DataError), (CheckpointError, ValueError),
                     (ConversionError, ValueError), (DivergenceError, FloatingPointError)):
        assert issubclass(cls, SpikeforgeError) and issubclass(cls, old)


# --------------------------------------------------------------------------- progress output


def test_progress_prints_plain_lines_when_stderr_is_not_a_terminal(capsys, monkeypatch):
    monkeypatch.setattr("spikeforge.progress.LOG_INTERVAL", 0.0)
    bar = progress(range(3), total=3, desc="epoch 1/1")
    assert isinstance(bar, LogProgress)
    for _ in bar:
        bar.set_postfix(loss="0.5000", refresh=False)
    err = capsys.readouterr().err
    assert "\r" not in err and err.splitlines()[-1].startswith("epoch 1/1: 3/3 (100%)")
    assert "loss=0.5000" in err and len(err.splitlines()) == 3


def test_progress_lines_are_rate_limited(capsys, monkeypatch):
    monkeypatch.setattr("spikeforge.progress.LOG_INTERVAL", 3600.0)
    assert list(progress(range(1000), desc="x")) == list(range(1000))
    assert capsys.readouterr().err == ""
    assert list(progress(range(5), enabled=False)) == list(range(5))
    assert capsys.readouterr().err == ""


def test_progress_is_a_tqdm_bar_on_a_terminal(monkeypatch):
    from tqdm import tqdm

    monkeypatch.setattr("spikeforge.progress._is_terminal", lambda stream: True)
    bar = progress(range(2), desc="x", enabled=False)
    assert isinstance(bar, tqdm)


def test_training_log_has_no_carriage_returns(capsys, tmp_path, data28, monkeypatch):
    monkeypatch.setattr("spikeforge.progress.LOG_INTERVAL", 0.0)
    args = ["run", "fc-lif", "--dataset", "mnist", "--hidden", "16", "--T", "4", "--batch-size", "32",
            "--data-dir", str(data28), "--epochs", "1", "--out", str(tmp_path / "o")]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "\r" not in captured.err + captured.out and "epoch 1/1: 1/2 (50%)" in captured.err


# --------------------------------------------------------------------------- killed with SIGKILL, then resumed

_CHILD = textwrap.dedent("""
    import sys, time
    import torch
    torch.set_num_threads(1)
    import spikeforge.train.snn as loop
    real = loop.save_checkpoint
    def save_then_hang(path, payload):
        real(path, payload)
        print("CHECKPOINT", flush=True)
        time.sleep(600)
    loop.save_checkpoint = save_then_hang
    from spikeforge.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _comparable(metrics: dict) -> dict:
    keep = ("test_accuracy", "best_test_accuracy", "train_accuracy", "epochs", "model", "training", "n_train")
    hist = [{k: v for k, v in row.items() if k != "train_seconds"} for row in metrics["history"]]
    return {**{k: metrics[k] for k in keep}, "history": hist}


def test_sigkill_after_the_first_checkpoint_then_resume_equals_an_uninterrupted_run(tmp_path, data28):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base = ["run", "fc-lif", *FC, "--data-dir", str(data28), "--epochs", "3"]
        killed = tmp_path / "killed"
        env = {k: v for k, v in os.environ.items() if k != "SPIKEFORGE_DATA"}
        env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
        child = subprocess.Popen([sys.executable, "-c", _CHILD, *base, "--out", str(killed)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            for line in child.stdout:
                if line.strip() == "CHECKPOINT":
                    break
            else:
                pytest.fail(f"the child never wrote a checkpoint: {child.stderr.read()}")
            child.send_signal(signal.SIGKILL)
        finally:
            child.wait(timeout=60)
        assert child.returncode == -signal.SIGKILL
        assert load_checkpoint(killed / "checkpoint.pt")["epoch"] == 1
        assert not (killed / "metrics.json").exists()

        assert main([*base, "--out", str(killed), "--resume"]) == 0
        straight = tmp_path / "straight"
        assert main([*base, "--out", str(straight)]) == 0
    finally:
        torch.set_num_threads(threads)
    a, b = load_checkpoint(killed / "checkpoint.pt"), load_checkpoint(straight / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 3
    for key, value in b["model"].items():
        assert torch.equal(a["model"][key], value), key
    ma = json.loads((killed / "metrics.json").read_text())
    mb = json.loads((straight / "metrics.json").read_text())
    assert _comparable(ma) == _comparable(mb)
    assert not any(math.isnan(r["train_loss"]) for r in ma["history"])
