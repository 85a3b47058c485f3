"""BPTT training loop: resume exactness, bad input, checkpoints, experiments end to end."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from spikeforge.cli import main
from spikeforge.experiments.direct_train import RECIPES
from spikeforge.models import create_model
from spikeforge.precision import native_bf16
from spikeforge.train import CheckpointError, load_checkpoint
from spikeforge.train.snn import SNNTrainConfig, fit_snn


def _data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = torch.rand(n, 1, 28, 28, generator=g) * 0.3
    x[torch.arange(n), 0, y * 2 + 3, :] = 1.0  # a learnable class cue: one bright row per class
    return x, y


def _cfg(**kw):
    return SNNTrainConfig(**{**dict(epochs=2, batch_size=32, lr=1e-3, seed=3), **kw})


@pytest.mark.parametrize("name,kw,loss", [
    ("fc-lif", dict(hidden=32, T=5), "ce-membrane"),
    ("fc-poisson", dict(T=6), "mse-rate"),
    ("csnn", dict(channels=4, T=2), "mse-rate"),
])
def test_resume_continues_exactly(tmp_path, name, kw, loss):
    train, test = _data(), _data(40, seed=1)
    torch.manual_seed(0)
    straight = create_model(name, **kw)
    h1 = fit_snn(straight, train, test, _cfg(loss=loss), out_dir=tmp_path / "a", progress=False)
    torch.manual_seed(0)
    first = create_model(name, **kw)
    fit_snn(first, train, test, _cfg(loss=loss, epochs=1), out_dir=tmp_path / "b", progress=False)
    # the 1-epoch run's checkpoint was made with epochs=1: resuming with epochs=2 is another config
    with pytest.raises(CheckpointError, match="another configuration"):
        fit_snn(create_model(name, **kw), train, test, _cfg(loss=loss), out_dir=tmp_path / "b", resume=True)
    # a run interrupted after epoch 1 of 2 resumes to the same weights as the straight run
    torch.manual_seed(0)
    part = create_model(name, **kw)
    with pytest.raises(KeyboardInterrupt):
        def stop(epoch, row):
            raise KeyboardInterrupt
        fit_snn(part, train, test, _cfg(loss=loss), out_dir=tmp_path / "c", progress=False, on_epoch=stop)
    resumed = create_model(name, **kw)
    h2 = fit_snn(resumed, train, test, _cfg(loss=loss), out_dir=tmp_path / "c", resume=True, progress=False)
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    assert [r["test_accuracy"] for r in h1] == [r["test_accuracy"] for r in h2]


def test_training_learns_and_models_pickle(tmp_path):
    train = _data(256)
    torch.manual_seed(0)
    model = create_model("fc-lif", hidden=64, T=8)
    hist = fit_snn(model, train, train, _cfg(epochs=3, lr=3e-3), progress=False)
    assert hist[-1]["test_accuracy"] > 0.6 > 0.1  # chance is 0.1
    torch.save(model, tmp_path / "m.pt")
    clone = pickle.loads(pickle.dumps(model))
    x = train[0][:5]
    assert torch.equal(clone(x).spikes, model(x).spikes)


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    import spikeforge.train.snn as loop

    train = _data(64)
    model = create_model("fc-lif", hidden=16, T=4)
    real = loop.loss_of
    calls = {"n": 0}

    def flaky(out, y, loss, *rest):
        calls["n"] += 1
        value = real(out, y, loss, *rest)
        return value * float("nan") if calls["n"] == 3 else value

    monkeypatch.setattr(loop, "loss_of", flaky)
    with pytest.raises(FloatingPointError, match=r"epoch 2, batch 1.*checkpoint.*\(epoch 1\) is intact"):
        fit_snn(model, train, None, _cfg(epochs=2), out_dir=tmp_path, progress=False)
    kept = load_checkpoint(tmp_path / "checkpoint.pt")
    assert kept["epoch"] == 1 and all(torch.isfinite(v).all() for v in kept["model"].values())
    bad = train[0].clone()
    bad[5, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model(bad)


def test_wrong_shape_and_bad_checkpoint(tmp_path):
    model = create_model("csnn", channels=4, T=2)
    with pytest.raises(ValueError, match=r"expects images \[N, 1, 28, 28\]"):
        model(torch.rand(2, 3, 28, 28))
    with pytest.raises(CheckpointError, match="no checkpoint"):
        fit_snn(model, _data(32), None, _cfg(), out_dir=tmp_path, resume=True)
    (tmp_path / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        fit_snn(model, _data(32), None, _cfg(), out_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match="optimizer"):
        fit_snn(model, _data(32), None, _cfg(optimizer="rmsprop"))


def test_experiments_end_to_end(tmp_path, capsys):
    out = tmp_path / "csnn"
    args = ["run", "csnn", "--epochs", "1", "--train-limit", "200", "--channels", "4", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= m["test_accuracy"] <= 1.0 and len(m["history"]) == 1
    # the tuned recipe's settings (digits: never flipped)
    tuned = RECIPES["csnn"]["tuned"]
    # bf16 where the CPU computes it natively (else float32, and the report says why)
    assert m["training"]["bf16"] is (tuned["bf16"] and native_bf16())
    assert m["training"]["channels_last"] is tuned["channels_last"]
    assert ("bf16" in m["recipe"]["adjusted"]) is (tuned["bf16"] and not native_bf16())
    if m["recipe"]["adjusted"]:
        assert "no native bfloat16" in (out / "report.md").read_text()
    assert m["training"]["augment"] is (tuned["augment"] is not None) and m["training"]["augment_flip"] is False
    assert {k: m["recipe"][k] for k in ("name", "overridden")} == {"name": "tuned", "overridden": ["epochs"]}
    for f in ("curves.png", "predictions.png", "report.md", "checkpoint.pt"):
        assert (out / f).stat().st_size > 0
    assert main(args + ["--resume"]) == 0  # already complete: resumes, trains nothing, rewrites outputs
    sweep = tmp_path / "sweep"
    assert main(["run", "fc-lif", "--sweep", "--betas", "0.5,0.9", "--hiddens", "16", "--epochs", "1",
                 "--train-limit", "200", "--T", "4", "--out", str(sweep), "--no-progress"]) == 0
    m = json.loads((sweep / "metrics.json").read_text())
    assert [(r["beta"], r["hidden"]) for r in m["sweep"]] == [(0.5, 16), (0.9, 16)]
    assert (sweep / "sweep_beta.png").exists() and "| 0.9 |" in (sweep / "report.md").read_text()
    assert main(["run", "fc-poisson", "--resume", "--out", str(tmp_path / "none"), "--no-progress"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_bf16_channels_last_training_runs(tmp_path):
    """The bfloat16 autocast + channels-last mode trains and predicts like the float32 one."""
    train = _data(64)
    torch.manual_seed(0)
    model = create_model("csnn", channels=4, T=2)
    hist = fit_snn(model, train, train, _cfg(epochs=1, bf16=True, channels_last=True, loss="mse-rate", lr=0.05,
                                             optimizer="sgd"), progress=False)
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert 0.0 <= hist[0]["test_accuracy"] <= 1.0 and hist[0]["train_loss"] > 0


def test_fc_lif_dropout_silences_whole_neurons_only_in_training():
    from spikeforge.models import create_model

    torch.manual_seed(0)
    model = create_model("fc-lif", hidden=64, T=6, dropout=0.5)
    seen = {}
    model.lif1.register_forward_hook(lambda m, i, o: seen.__setitem__("s1", o))
    model.fc2.register_forward_hook(lambda m, i, o: seen.__setitem__("in2", i[0]))
    x = torch.rand(4, 784) * 3
    model.train()
    model(x, generator=torch.Generator().manual_seed(1))
    s1, in2 = seen["s1"], seen["in2"]
    dropped = (in2 == 0).all(0) & (s1 > 0).any(0)  # fired but never reached fc2
    kept = (in2 != 0).any(0)
    assert dropped.any() and kept.any()
    assert torch.allclose(in2[:, kept], 2 * s1[:, kept])  # survivors scaled by 1/(1-p)
    model.eval()
    model(x)
    assert torch.equal(seen["in2"], seen["s1"])
    with pytest.raises(ValueError, match="dropout"):
        create_model("fc-lif", dropout=1.0)


def _settings(name, *argv):
    import argparse

    from spikeforge.experiments.direct_train import _adder, resolve_settings

    p = argparse.ArgumentParser()
    _adder(name)(p)
    return resolve_settings(name, p.parse_args(list(argv)))


def test_recipes_seed_tuned_and_explicit_options(monkeypatch):
    from spikeforge.errors import ConfigError
    from spikeforge.experiments.direct_train import RECIPES

    seed, over = _settings("csnn", "--recipe", "seed", "--dataset", "fashion-mnist")
    assert over == [] and seed["augment"] is None and seed["bf16"] is False
    assert {k: seed[k] for k in ("optimizer", "lr", "loss", "epochs", "T")} == dict(
        optimizer="sgd", lr=0.1, loss="mse-rate", epochs=64, T=4)
    # a recipe's augmentation follows the data set: clothing is flipped, digits are not
    monkeypatch.setitem(RECIPES["csnn"]["tuned"], "augment", {"digits": (1, False), "clothing": (1, True)})
    monkeypatch.setitem(RECIPES["csnn"]["tuned"], "bf16", True)
    clothing, _ = _settings("csnn", "--dataset", "fashion-mnist")
    digits, _ = _settings("csnn", "--dataset", "mnist")
    assert clothing["augment"] == (1, True) and digits["augment"] == (1, False) and clothing["bf16"] is True
    shift = 1
    # explicit options win and are named
    s, over = _settings("csnn", "--dataset", "fashion-mnist", "--lr", "0.05", "--no-augment-flip", "--no-bf16")
    assert s["lr"] == 0.05 and s["augment"] == (shift, False) and s["bf16"] is False
    assert over == ["lr", "bf16", "augment"]
    s, over = _settings("fc-lif", "--recipe", "seed", "--dataset", "fashion-mnist", "--augment")
    assert s["augment"] == (2, True) and over == ["augment"]  # the data set's kind when the recipe has none
    assert _settings("fc-lif", "--recipe", "seed", "--augment-shift", "3")[0]["augment"] == (3, False)
    s, _ = _settings("fc-lif", "--surrogate", "fast-sigmoid")
    assert s["surrogate_slope"] is None  # another surrogate keeps its own default shape
    with pytest.raises(ConfigError, match="--no-augment"):
        _settings("csnn", "--no-augment", "--augment-shift", "1")
    with pytest.raises(ConfigError, match="nothing to do"):
        _settings("csnn", "--augment-shift", "0", "--no-augment-flip")
    with pytest.raises(ConfigError, match="--label-smoothing.*mse-rate"):
        _settings("fc-poisson", "--recipe", "seed", "--label-smoothing", "0.1")


def test_seed_recipe_end_to_end_and_bad_values(tmp_path, capsys):
    out = tmp_path / "seed"
    assert main(["run", "fc-lif", "--recipe", "seed", "--epochs", "1", "--train-limit", "100", "--hidden", "8",
                 "--T", "3", "--out", str(out), "--no-progress"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["recipe"] == {"name": "seed", "overridden": ["T", "epochs"], "adjusted": {}}  # a float32 recipe
    t = m["training"]
    assert (t["optimizer"], t["lr"], t["schedule"], t["augment"], t["label_smoothing"]) == ("adam", 1e-3, "none",
                                                                                             False, 0.0)
    report = (out / "report.md").read_text()
    assert "Recipe **seed**" in report and "| schedule | none |" in report
    for opt, value in [("--label-smoothing", "1"), ("--label-smoothing", "nan"), ("--surrogate-slope", "0"),
                       ("--recipe", "best"), ("--optimizer", "rmsprop")]:
        assert main(["run", "fc-lif", opt, value, "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err
        assert opt in err and "Traceback" not in err
    assert not (tmp_path / "bad").exists()


def test_label_smoothing_adamw_flip_and_slope_reach_training():
    from spikeforge.errors import ConfigError
    from spikeforge.surrogate import ATan

    with pytest.raises(ConfigError, match="label smoothing"):
        _cfg(loss="mse-rate", label_smoothing=0.1).validate()
    with pytest.raises(ConfigError, match="label_smoothing"):
        _cfg(label_smoothing=1.0).validate()
    model = create_model("fc-lif", hidden=16, T=3, surrogate_slope=4.0)
    assert model.lif1.surrogate == ATan(4.0) and model.lif2.surrogate == ATan(4.0)
    assert create_model("csnn", channels=2, T=1, surrogate_slope=3.0).sn4.surrogate == ATan(3.0)
    from spikeforge.train.snn import _make_optimizer

    opt, _ = _make_optimizer(create_model("fc-lif", hidden=8, T=2), _cfg(optimizer="adamw", weight_decay=0.5), 1)
    assert type(opt) is torch.optim.AdamW and opt.defaults["weight_decay"] == 0.5
    # the smoothing reaches the training loss: same seed and data, another loss value
    losses = []
    for eps in (0.0, 0.2):
        torch.manual_seed(0)
        hist = fit_snn(create_model("fc-lif", hidden=8, T=2), _data(32), None, _cfg(epochs=1, label_smoothing=eps),
                       progress=False)
        losses.append(hist[0]["train_loss"])
    assert losses[1] != pytest.approx(losses[0], rel=1e-3)


def test_augment_flip_off_never_mirrors():
    from spikeforge.data.augment import random_crop_flip

    x = torch.zeros(64, 1, 6, 6)
    x[:, 0, :, 0] = 1.0  # a bright left column: a flip would move it to the right edge
    g = torch.Generator().manual_seed(0)
    assert random_crop_flip(x, pad=0, flip=False, generator=g)[:, 0, :, 5].sum() == 0
    assert random_crop_flip(x, pad=0, flip=True, generator=g)[:, 0, :, 5].sum() > 0


def test_fc_lif_recipes_set_the_hidden_dropout():
    from spikeforge.experiments.direct_train import RECIPES

    tuned, over = _settings("fc-lif", "--dataset", "fashion-mnist")
    assert tuned["dropout"] == RECIPES["fc-lif"]["tuned"]["dropout"] > 0 and over == []
    assert _settings("fc-lif", "--recipe", "seed")[0]["dropout"] == 0.0
    s, over = _settings("fc-lif", "--dropout", "0")
    assert s["dropout"] == 0.0 and over == ["dropout"]
    assert "dropout" not in _settings("csnn")[0]  # only fc-lif has a hidden layer to drop


def test_resume_keeps_the_checkpoints_precision(tmp_path, monkeypatch):
    """A csnn checkpoint trained in bf16 resumes in bf16 on a machine whose recipe choice is
    float32 (and the reverse), unless --bf16/--no-bf16 says otherwise."""
    from spikeforge.experiments import direct_train

    out = tmp_path / "csnn"
    args = ["run", "csnn", "--epochs", "1", "--train-limit", "64", "--channels", "4", "--out", str(out), "--no-progress"]
    assert main(args + ["--bf16"]) == 0
    monkeypatch.setattr(direct_train, "recipe_bf16", lambda want, device=None: (False, "no native bfloat16 (test)"))
    assert main(args + ["--resume"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["training"]["bf16"] is True and "trained in" in m["recipe"]["adjusted"]["bf16"]
    assert main(args + ["--resume", "--no-bf16"]) == 2  # insisting on the other precision still refuses
