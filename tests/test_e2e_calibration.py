"""End-to-end calibration of a converted SNN's corrections (spikeforge.convert.finetune)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spikeforge import ConversionError, convert
from spikeforge.convert import calibrate_end_to_end
from spikeforge.convert.finetune import _distillation_loss

from test_fewstep import _qnet, _relu_net  # the small nets of the few-step tests (tests/ is on sys.path)


def _confident_net_and_images(seed: int, n: int = 128):
    """The small ReLU net with confident logits (as a trained net has) and random images."""
    net = _relu_net()
    with torch.no_grad():
        net[-1].weight.mul_(30)
    torch.manual_seed(seed)
    return net, torch.randn(n, 3, 8, 8)


def _snn_loss(snn, net, x, T):
    with torch.no_grad():
        return float(_distillation_loss(snn(x, T).mean(0), net(x), 1.0))


@pytest.mark.parametrize("kind", ["qcfs", "relu-per-channel"])
def test_the_differentiable_path_is_the_same_snn(kind):
    """With the corrections handed to the surrogate path unchanged, run_with_grad gives the
    outputs of the ordinary (no-grad, native-kernel) simulation: a QCFS net (one θ per layer,
    residual add, max-pool, avg-pool) and a ReLU net with per-channel θ and bias correction."""
    if kind == "qcfs":
        net, x = _qnet(4), torch.rand(16, 2, 8, 8)
        snn = convert(net, x, correction="potential", target_T=4, batch_size=16)
    else:
        net, x = _relu_net(), torch.randn(16, 3, 8, 8)
        snn = convert(net, x, threshold="mse", correction="bias", target_T=4, batch_size=16, per_channel=True)
        assert any(m.threshold.numel() > 1 for m in snn.neurons().values())
    ref = snn(x, 5)
    for m in snn.neurons().values():
        m.surrogate_corrections = {"potential": m.v_offset, "bias": m.input_bias}
    try:
        got = snn.run_with_grad(x, 5)
    finally:
        for m in snn.neurons().values():
            m.surrogate_corrections = None
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_calibration_lowers_the_distillation_loss_and_keeps_the_weights():
    net, x = _confident_net_and_images(1, 256)
    T = 3
    # started without the half-threshold initial membrane: a systematic error the
    # per-channel corrections can undo (a random net's own rounding noise they cannot)
    snn = convert(net, x, threshold="mse", target_T=T, batch_size=256, v_init=0.0)
    weights = {k: v.clone() for k, v in snn.state_dict().items() if "weight" in k}
    before = _snn_loss(snn, net, x, T)
    report = calibrate_end_to_end(snn, net, x, T, epochs=4, batch_size=32, lr=3e-3)
    after = _snn_loss(snn, net, x, T)
    assert after < 0.85 * before, (before, after)
    assert len(report["loss"]) == 4 and report["steps"] == 4 * 8
    assert report["loss"][-1] < report["loss"][0]
    for k, v in snn.state_dict().items():
        if k in weights:
            assert torch.equal(v, weights[k]), k
    for m in snn.neurons().values():
        assert m.surrogate_corrections is None
        assert m.v_offset is not None and not m.v_offset.requires_grad
        assert m.input_bias is not None and m.input_bias.shape[0] == m.v_offset.shape[0]
    assert all(p.requires_grad for p in net.parameters())  # the ANN is handed back as it came


def test_learning_only_the_potential_leaves_the_bias_alone():
    net = _relu_net(2)
    x = torch.randn(64, 3, 8, 8)
    snn = convert(net, x, threshold="mse", target_T=2, batch_size=64)
    calibrate_end_to_end(snn, net, x, 2, learn=("potential",), lr=1e-2)
    for m in snn.neurons().values():
        assert m.input_bias is None and m.v_offset is not None
    assert any(float(m.v_offset.abs().max()) > 0 for m in snn.neurons().values())


def test_bad_input_names_the_problem():
    net = _relu_net()
    x = torch.randn(32, 3, 8, 8)
    burst = convert(net, x, batch_size=32, max_spikes=3)
    with pytest.raises(ConversionError, match="max_spikes=3"):
        calibrate_end_to_end(burst, net, x, 2)
    snn = convert(net, x, batch_size=32)
    bad = x.clone()
    bad[3, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        calibrate_end_to_end(snn, net, bad, 2)
    with pytest.raises(ValueError, match="lr"):
        calibrate_end_to_end(snn, net, x, 2, lr=0.0)
    with pytest.raises(ValueError, match="learn"):
        calibrate_end_to_end(snn, net, x, 2, learn=("weights",))
    with pytest.raises(ValueError, match="T must"):
        calibrate_end_to_end(snn, net, x, 0)


def test_an_augmented_calibration_sees_transformed_batches_with_their_own_targets():
    net = _relu_net()
    x = torch.randn(64, 3, 8, 8)
    snn = convert(net, x, threshold="mse", target_T=2, batch_size=64, v_init=0.0)
    seen = []

    def flip_all(batch, generator):
        seen.append(batch.shape[0])
        return batch.flip(-1)

    report = calibrate_end_to_end(snn, net, x, 2, epochs=2, batch_size=16, augment=flip_all, lr=1e-2)
    assert seen == [16] * 8 and report["steps"] == 8
    assert not net.training


def _cifar_methods():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "cifar_methods.py"
    spec = importlib.util.spec_from_file_location("cifar_methods_under_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_benchmark_method_suffix_asks_for_end_to_end_calibration():
    parse = _cifar_methods().parse_method
    kw = parse("percentile+potential@4/cb4/e2e4096")
    assert kw["e2e_images"] == 4096 and kw["target_T"] == 4 and kw["correction_batches"] == 4
    with pytest.raises(SystemExit, match="e2eN calibrates for the @T"):
        parse("percentile/e2e100")
    with pytest.raises(SystemExit, match="unknown suffix /e2e0"):
        parse("percentile+potential@4/e2e0")


def test_learnt_thresholds_become_per_channel_and_the_snn_still_runs():
    net, x = _confident_net_and_images(3)
    snn = convert(net, x, threshold="mse", target_T=3, batch_size=128, v_init=0.0)
    before = _snn_loss(snn, net, x, 3)
    calibrate_end_to_end(snn, net, x, 3, epochs=3, lr=3e-3, learn=("potential", "bias", "threshold"))
    for m in snn.neurons().values():
        assert m.threshold.shape[0] == m.v_offset.shape[0] and (m.threshold > 0).all()
    assert any(m.threshold.std() > 0 for m in snn.neurons().values())
    assert _snn_loss(snn, net, x, 3) < before


def test_convert_runs_it_on_its_calibration_images():
    net, x = _confident_net_and_images(4)
    plain = convert(net, x, threshold="mse", target_T=3, batch_size=64, v_init=0.0)
    tuned = convert(net, x, threshold="mse", target_T=3, batch_size=64, v_init=0.0, e2e_epochs=3, e2e_lr=3e-3)
    assert tuned.e2e_report["images"] == 128 and tuned.options["e2e_epochs"] == 3
    assert _snn_loss(tuned, net, x, 3) < 0.9 * _snn_loss(plain, net, x, 3)
    with pytest.raises(Exception, match="needs target_T"):
        convert(net, x, e2e_epochs=1)
    with pytest.raises(ConversionError, match="max_spikes=2"):
        convert(net, x, target_T=2, max_spikes=2, e2e_epochs=1)
    with pytest.raises(Exception, match="e2e_lr"):
        convert(net, x, target_T=2, e2e_epochs=1, e2e_lr=float("nan"))


def test_lenet5_convert_asks_for_it_on_the_command_line(tmp_path, capsys):
    import json

    from spikeforge.cli import main

    out = tmp_path / "run"
    assert main(["run", "lenet5-convert", "--epochs", "1", "--T", "4", "--calib-batches", "1", "--val-split", "500",
                 "--correction", "potential", "--target-T", "4", "--e2e-epochs", "1", "--e2e-lr", "0.001",
                 "--out", str(out), "--no-progress"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["conversion"]["e2e_epochs"] == 1 and m["conversion"]["e2e_lr"] == 0.001
    assert m["e2e_report"]["images"] == 256 and len(m["e2e_report"]["loss"]) == 1
    assert "potential and bias learnt end to end for T=4" in (out / "report.md").read_text()
    assert main(["run", "lenet5-convert", "--e2e-lr", "0.01", "--out", str(tmp_path / "bad")]) != 0
    assert "--e2e-lr" in capsys.readouterr().err



@pytest.mark.parametrize("flag,value,needle", [("--e2e-lr", "nan", "--e2e-lr"), ("--e2e-aug", "-2", "--e2e-aug")])
def test_the_benchmark_names_a_bad_e2e_option(flag, value, needle):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "cifar_methods.py"
    r = subprocess.run([sys.executable, str(script), "--run", "no-such-run", flag, value], capture_output=True, text=True)
    assert r.returncode != 0 and needle in r.stderr and "Traceback" not in r.stderr


def test_learning_the_weights_too_fine_tunes_the_snn_and_leaves_the_ann_alone():
    net, x = _confident_net_and_images(5, 256)
    ann_state = {k: v.clone() for k, v in net.state_dict().items()}
    T = 3
    plain = convert(net, x, threshold="mse", target_T=T, batch_size=256, v_init=0.0)
    snn = convert(net, x, threshold="mse", target_T=T, batch_size=256, v_init=0.0)
    weights = {k: v.clone() for k, v in snn.state_dict().items() if k.endswith("weight")}
    before = _snn_loss(snn, net, x, T)
    report = calibrate_end_to_end(snn, net, x, T, epochs=4, batch_size=32, lr=3e-3, weight_lr=1e-3,
                                  learn=("potential", "bias", "weight"))
    assert report["weight_lr"] == 1e-3 and "weight" in report["learn"]
    assert _snn_loss(snn, net, x, T) < 0.85 * before
    changed = [k for k, v in snn.state_dict().items() if k in weights and not torch.equal(v, weights[k])]
    assert len(changed) == len(weights)  # every synaptic layer was tuned
    for k, v in net.state_dict().items():
        assert torch.equal(v, ann_state[k]), k  # the ANN is not
    assert not any(p.requires_grad for p in snn.parameters()) or all(
        p.requires_grad == q.requires_grad for p, q in zip(snn.parameters(), plain.parameters()))
    with pytest.raises(ValueError, match="weight_lr"):
        calibrate_end_to_end(snn, net, x, T, learn=("weight",), weight_lr=-1.0)


def test_the_benchmark_saves_and_loads_a_tuned_snn(tmp_path):
    mod = _cifar_methods()
    kw = mod.parse_method("percentile+potential@4/cb4/e2e4096w")
    assert kw["e2e_images"] == 4096 and kw["e2e_weights"] is True
    assert mod.parse_method("percentile+potential@4/e2e64")["e2e_weights"] is False
    with pytest.raises(SystemExit, match="unknown suffix"):
        mod.parse_method("percentile+potential@4/e2e64ww")
    net, x = _confident_net_and_images(6, 64)
    snn = convert(net, x, threshold="mse", correction="potential", target_T=3, batch_size=64)
    calibrate_end_to_end(snn, net, x, 3, learn=("potential", "bias", "weight"), lr=1e-2, weight_lr=1e-2)
    mod.PART = 2_000  # several parts
    mod.save_snn(snn, str(tmp_path / "snn"), {"method": "m"})
    assert len(list((tmp_path / "snn").glob("part*"))) >= 2
    mod.save_snn(snn, str(tmp_path / "snn"), {"method": "m"})  # saving again replaces the state whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snn"]
    fresh = convert(net, x, threshold="mse", target_T=3, batch_size=64)
    assert not torch.equal(fresh(x, 3), snn(x, 3))
    assert mod.load_snn(fresh, str(tmp_path / "snn"))["method"] == "m"
    torch.testing.assert_close(fresh(x, 3), snn(x, 3))
    (tmp_path / "snn" / "part01").write_bytes(b"xx")
    with pytest.raises(SystemExit, match="cannot read"):
        mod.load_snn(fresh, str(tmp_path / "snn"))


def test_extra_readouts_are_distilled_too():
    net, x = _confident_net_and_images(7, 64)
    snn = convert(net, x, threshold="mse", target_T=2, batch_size=64, v_init=0.0)
    seen = []
    real = snn.run_with_grad

    def spy(inp, T):
        seen.append(T)
        return real(inp, T)

    snn.run_with_grad = spy
    report = calibrate_end_to_end(snn, net, x, 2, extra_T=(5,), batch_size=32, lr=1e-3)
    assert seen == [5, 5] and report["extra_T"] == [5]
    with pytest.raises(ValueError, match="extra_T"):
        calibrate_end_to_end(snn, net, x, 2, extra_T=(0,))


def test_gradients_pass_the_spiking_max_pool():
    """The lateral-inhibition max-pool keeps the autograd graph while calibrating (its native
    kernel does not), so the layers in front of a pool are learnt too — with the same values."""
    from spikeforge.layers import SpikingMaxPool2d

    torch.manual_seed(0)
    xs = torch.rand(5, 2, 3, 8, 8)
    pool = SpikingMaxPool2d(2, mode="lipool")
    ref = pool(xs)
    pool.reset_state()
    leaf = xs.clone().requires_grad_(True)
    out = pool(leaf)
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    assert leaf.grad is not None and leaf.grad.abs().sum() > 0


def test_convert_and_the_cli_fine_tune_the_weights_when_asked(tmp_path, capsys):
    import json

    from spikeforge.cli import main

    net, x = _confident_net_and_images(8)
    snn = convert(net, x, threshold="mse", target_T=3, batch_size=64, e2e_epochs=1, e2e_lr=1e-3, e2e_weight_lr=1e-3)
    assert snn.options["e2e_weight_lr"] == 1e-3 and "weight" in snn.e2e_report["learn"]
    with pytest.raises(Exception, match="e2e_weight_lr"):
        convert(net, x, target_T=3, e2e_weight_lr=1e-3)  # without e2e_epochs
    out = tmp_path / "run"
    assert main(["run", "lenet5-convert", "--epochs", "1", "--T", "4", "--calib-batches", "1", "--val-split", "500",
                 "--correction", "potential", "--target-T", "4", "--e2e-epochs", "1", "--e2e-weight-lr", "0.0001",
                 "--out", str(out), "--no-progress"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["conversion"]["e2e_weight_lr"] == 0.0001 and "weight" in m["e2e_report"]["learn"]
    assert "potential, bias and weights learnt end to end for T=4" in (out / "report.md").read_text()
    assert main(["run", "lenet5-convert", "--e2e-weight-lr", "0.01", "--out", str(tmp_path / "bad")]) != 0
    assert "--e2e-weight-lr" in capsys.readouterr().err


@pytest.mark.parametrize("setting", ["2:0", "x:0:1e-3", "2:0:0", "1.5:0:1e-3"])
def test_the_lenet5_tuning_screen_names_a_bad_setting(setting):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "lenet5_tuning_screen.py"
    r = subprocess.run([sys.executable, str(script), "--checkpoint", "none.pt", "--setting", setting],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "--setting must be EPOCHS:WEIGHT_LR:LR" in r.stderr and "Traceback" not in r.stderr
