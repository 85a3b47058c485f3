"""NIR export and import: round trips with snnTorch 1.0, converted LeNet5, typed errors.

Skipped when the optional packages (nir, nirtorch, snntorch) are not installed.
"""

import numpy as np
import pytest
import torch
from torch import nn

nir = pytest.importorskip("nir")
pytest.importorskip("nirtorch")

from spikeforge import convert  # noqa: E402
from spikeforge.models import create_model  # noqa: E402
from spikeforge.models.snn import SpikingSequential  # noqa: E402
from spikeforge.neurons import IF, LIF  # noqa: E402
from spikeforge.nir import (  # noqa: E402
    NIRExportError, NIRImportError, NIRNeuron, export_nir, import_nir, threshold_above, threshold_below, write_nir,
)

T = 25


def mlp() -> SpikingSequential:
    return SpikingSequential(nn.Linear(12, 16), LIF(0.9, reset="zero"), nn.Linear(16, 4), LIF(0.8, reset="zero"))


def cnn() -> SpikingSequential:
    return SpikingSequential(
        nn.Conv2d(1, 4, 3, padding=1), LIF(0.9, reset="zero"), nn.AvgPool2d(2), nn.Flatten(),
        nn.Linear(4 * 4 * 4, 5), LIF(0.85, reset="zero"),
    )


def train_briefly(net: SpikingSequential, sample: tuple[int, ...], seed: int = 0) -> SpikingSequential:
    """A few surrogate-gradient steps on random data (the nets of the round trips are trained by spikeforge):
    the output rate is pulled to 0.4 for a random class and 0.1 for the others, so every layer spikes."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    classes = net[-2].out_features
    for _ in range(20):
        x = torch.rand((T, 16, *sample), generator=g) * 2
        y = torch.randint(0, classes, (16,), generator=g)
        target = 0.1 + 0.3 * nn.functional.one_hot(y, classes).float()
        loss = ((net(x).mean(0) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def spike_record(net: nn.Module, kind: type) -> tuple[list, list]:
    """Forward hooks that collect the output of every module of ``kind``."""
    seen: list = []
    hooks = [m.register_forward_hook(lambda m, a, o: seen.append(o[0] if isinstance(o, tuple) else o))
             for m in net.modules() if isinstance(m, kind)]
    return seen, hooks


def run_spikeforge(net: SpikingSequential, x: torch.Tensor) -> list[torch.Tensor]:
    seen, hooks = spike_record(net, LIF)
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return [s.detach().clone() for s in seen]


def run_snntorch(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Step an snnTorch network (init_hidden neurons) T times; spikes of every Leaky layer ``[T, N, ...]``."""
    snn = pytest.importorskip("snntorch")
    for m in model.modules():
        if isinstance(m, snn.Leaky):
            m.reset_mem()
    seen, hooks = spike_record(model, snn.Leaky)
    with torch.no_grad():
        for t in range(x.shape[0]):
            model(x[t])
    for h in hooks:
        h.remove()
    n = len(seen) // x.shape[0]
    return [torch.stack(seen[i::n]).float() for i in range(n)]


NETS = {"mlp": (mlp, (12,)), "cnn": (cnn, (1, 8, 8))}


@pytest.mark.parametrize("which", list(NETS))
@pytest.mark.parametrize("batch", [1, 4])
def test_spikeforge_to_snntorch_identical_spikes(tmp_path, which, batch):
    snntorch_import = pytest.importorskip("snntorch.import_nir")
    make, sample = NETS[which]
    net = train_briefly(make(), sample)
    path = tmp_path / f"{which}.nir"
    write_nir(net, path, sample)
    graph = nir.read(str(path))
    model = snntorch_import.import_from_nir(graph)
    for m in model.modules():  # snnTorch 1.0 quirk: its Flatten import keeps NIR's start_dim (0), which counts
        if isinstance(m, nn.Flatten):  # dims without the batch; torch's counts the batch, so it must be 1
            assert m.start_dim == 0
            m.start_dim = 1
    x = torch.rand((T, batch, *sample), generator=torch.Generator().manual_seed(batch)) * 2
    ours = run_spikeforge(net, x)
    theirs = run_snntorch(model, x)
    assert len(ours) == len(theirs) == 2
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b.to(a.dtype))
    assert 0 < float(ours[-1].sum()) < ours[-1].numel()  # the output layer spikes, but not everywhere
    assert float(ours[0].sum()) > 0


def snntorch_twin(net: SpikingSequential) -> nn.Sequential:
    """The same network in snnTorch (weights copied; β and θ per neuron, zero reset)."""
    snn = pytest.importorskip("snntorch")
    layers: list[nn.Module] = []
    shape = None
    sample = (12,) if isinstance(net[0], nn.Linear) else (1, 8, 8)
    with torch.no_grad():
        x = torch.zeros(1, *sample)
        for m in net:
            if isinstance(m, LIF):
                layers.append(snn.Leaky(beta=torch.full(shape, m.beta), threshold=torch.full(shape, m.threshold),
                                        reset_mechanism="zero", reset_delay=False, init_hidden=True))
            else:
                layers.append(m)
                x = m(x)
                shape = tuple(x.shape[1:])
    return nn.Sequential(*layers)


@pytest.mark.parametrize("which", list(NETS))
@pytest.mark.parametrize("batch", [1, 4])
def test_snntorch_export_imports_with_identical_spikes(tmp_path, which, batch):
    export = pytest.importorskip("snntorch.export_nir")
    make, sample = NETS[which]
    net = train_briefly(make(), sample, seed=1)
    twin = snntorch_twin(net)
    graph = export.export_to_nir(twin, torch.zeros(1, *sample), ignore_dims=[0])
    nir.write(str(tmp_path / "twin.nir"), graph)
    ours = import_nir(tmp_path / "twin.nir")
    x = torch.rand((T, batch, *sample), generator=torch.Generator().manual_seed(10 + batch)) * 2
    theirs = run_snntorch(twin, x)
    seen, hooks = spike_record(ours, NIRNeuron)
    ours(x, sequence=True, chunk=T)
    for h in hooks:
        h.remove()
    assert len(seen) == len(theirs) == 2
    for a, b in zip(seen, theirs):
        assert torch.equal(a.reshape(b.shape), b)
    assert float(theirs[-1].sum()) > 0


def avg_lenet5(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = create_model("lenet5", pool="avg")
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


@pytest.mark.parametrize("per_channel", [False, True])
def test_converted_lenet5_round_trip_identical_outputs(tmp_path, per_channel):
    ann = avg_lenet5()
    x = torch.rand(96, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    snn = convert(ann, x, reset="zero", v_init=0.0, per_channel=per_channel)
    path = tmp_path / "lenet5.nir"
    write_nir(snn, path, (1, 28, 28), thresholds="scale")
    back = import_nir(path)
    want = snn(x[:16], 40, chunk=40)
    got = back(x[:16], 40, chunk=40)
    assert torch.equal(want, got)  # the same arithmetic, bit for bit
    assert sum(n.spike_count for n in back.neurons().values()) > 0
    # folded thresholds (unit spikes, what hardware takes): equal up to float rounding
    write_nir(snn, tmp_path / "folded.nir", (1, 28, 28), thresholds="fold")
    folded = import_nir(tmp_path / "folded.nir")
    assert not any(isinstance(m, nn.Module) and type(m).__name__ == "Scale" for m in folded.modules())
    got = folded(x[:16], 40, chunk=40)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert torch.equal(got.cumsum(0).argmax(-1), want.cumsum(0).argmax(-1))


def test_export_parameters_follow_the_discretization():
    net = SpikingSequential(nn.Linear(3, 5), LIF(0.75, reset="zero", threshold=0.5), nn.Linear(5, 2, bias=False),
                            LIF(tau=2.0, decay_input=True, reset="zero"), nn.Linear(2, 2), IF())
    g = export_nir(net, (3,), dt=1e-3)
    lif, lif2, iff = g.nodes["1"], g.nodes["3"], g.nodes["5"]
    assert isinstance(g.nodes["0"], nir.Affine) and isinstance(g.nodes["2"], nir.Linear)
    assert lif.tau.shape == (5,) and np.allclose(lif.tau, 1e-3 / 0.25) and np.allclose(lif.r, lif.tau / 1e-3)
    assert np.all(lif.v_threshold < 0.5) and np.all(threshold_above(lif.v_threshold).numpy() == np.float32(0.5))
    assert np.allclose(lif2.tau, 2e-3) and np.allclose(lif2.r, 1.0)  # decayed input: R = 1
    assert isinstance(iff, nir.IF) and np.allclose(iff.r, 1e3)
    assert threshold_below(1.0) == np.nextafter(np.float32(1), np.float32(0))


def test_conv_nodes_carry_input_shape_and_avgpool_arrays():
    g = export_nir(cnn().eval(), (1, 8, 8))
    conv, pool, flat = g.nodes["0"], g.nodes["2"], g.nodes["3"]
    assert tuple(conv.input_shape) == (8, 8)
    assert list(pool.kernel_size) == [2, 2] and list(pool.stride) == [2, 2]
    assert flat.start_dim == 0  # NIR's dims exclude the batch
    assert g.nodes["1"].tau.shape == (4, 8, 8)


@pytest.mark.parametrize("net, needle", [
    (SpikingSequential(nn.Linear(4, 3), LIF(0.9)), "resets by subtraction"),
    (SpikingSequential(nn.Conv2d(1, 2, 3), LIF(0.9, reset="zero"), nn.MaxPool2d(2)), "max-pooling of spikes"),
    (SpikingSequential(nn.Linear(4, 3), LIF(0.9, reset="zero"), nn.BatchNorm1d(3)), "BatchNorm"),
    (SpikingSequential(nn.Linear(4, 3), nn.GELU()), "GELU has no NIR node"),
])
def test_what_nir_cannot_express_fails_naming_the_layer(net, needle):
    with pytest.raises(NIRExportError, match=needle) as info:
        export_nir(net.eval(), (1, 6, 6) if isinstance(net[0], nn.Conv2d) else (4,))
    assert info.value.layer in {"1", "2"}


def test_batchnorm_after_a_layer_is_folded():
    net = SpikingSequential(nn.Linear(4, 3), nn.BatchNorm1d(3), LIF(0.9, reset="zero")).eval()
    net[1].running_mean.copy_(torch.tensor([0.1, -0.2, 0.3]))
    net[1].running_var.copy_(torch.tensor([0.5, 2.0, 1.5]))
    back = import_nir(export_nir(net, (4,)))
    x = torch.rand(10, 3, 4) * 3
    torch.testing.assert_close(back(x, sequence=True), net(x))


@pytest.mark.parametrize("options, needle", [
    (dict(reset="subtract", v_init=0.0), "reset by subtraction"),
    (dict(reset="zero", v_init=0.5), "initial membrane"),
    (dict(reset="zero", v_init=0.0, max_spikes=4), "burst spikes"),
])
def test_converted_options_nir_cannot_express(options, needle):
    ann = avg_lenet5()
    snn = convert(ann, torch.rand(32, 1, 28, 28), **options)
    with pytest.raises(NIRExportError, match=needle) as info:
        export_nir(snn, (1, 28, 28))
    assert info.value.layer == "sf_neuron0"


def test_converted_max_pool_cannot_be_exported():
    snn = convert(create_model("lenet5").eval(), torch.rand(32, 1, 28, 28), reset="zero", v_init=0.0)
    with pytest.raises(NIRExportError, match="max-pooling"):
        export_nir(snn, (1, 28, 28))


def test_direct_nets_export_or_say_why():
    fc = create_model("fc-lif", T=5, reset="zero").eval()
    g = export_nir(fc)
    assert isinstance(g.nodes["lif1"], nir.LIF)
    with pytest.raises(NIRExportError, match="subtraction"):
        export_nir(create_model("fc-lif", T=5))
    with pytest.raises(NIRExportError, match="max-pooling") as info:
        export_nir(create_model("csnn", channels=4, T=2).eval())
    assert info.value.layer == "pool1"
    pois = create_model("fc-poisson", T=5).eval()
    back = import_nir(export_nir(pois))
    spikes = (torch.rand(5, 3, 784) < 0.3).float()
    with torch.no_grad():
        want = pois.lif(pois.fc(spikes))
    assert torch.equal(back(spikes, sequence=True), want)


def test_import_supports_li_sumpool_and_sums_edges():
    w = np.eye(4, dtype=np.float32)
    graph = nir.NIRGraph(nodes={
        "input": nir.Input(input_type={"input": np.array([4])}),
        "a": nir.Linear(weight=w), "b": nir.Linear(weight=2 * w),
        "li": nir.LI(tau=np.full(4, 2e-4), r=np.ones(4), v_leak=np.zeros(4)),
        "output": nir.Output(output_type={"output": np.array([4])}),
    }, edges=[("input", "a"), ("input", "b"), ("a", "li"), ("b", "li"), ("li", "output")])
    m = import_nir(graph)
    x = torch.ones(1, 4)
    out = m(x, 3)  # LI with dt/τ = 0.5, R = 1: v ← v/2 + 0.5·(x + 2x)
    torch.testing.assert_close(out[:, 0, 0], torch.tensor([1.5, 2.25, 2.625]))
    pool = nir.NIRGraph.from_list(nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]),
                                                padding=np.array([0, 0])), type_check=False)
    pool.nodes["input"] = nir.Input(input_type={"input": np.array([1, 4, 4])})
    pool.nodes["output"] = nir.Output(output_type={"output": np.array([1, 2, 2])})
    s = import_nir(pool)(torch.ones(1, 1, 4, 4), 1)
    assert torch.equal(s, torch.full((1, 1, 1, 2, 2), 4.0))


def test_import_rejects_unsupported_nodes_by_name():
    graph = nir.NIRGraph(nodes={
        "input": nir.Input(input_type={"input": np.array([3])}),
        "syn": nir.CubaLIF(tau_syn=np.ones(3), tau_mem=np.ones(3), r=np.ones(3), v_leak=np.zeros(3),
                           v_threshold=np.ones(3)),
        "output": nir.Output(output_type={"output": np.array([3])}),
    }, edges=[("input", "syn"), ("syn", "output")])
    with pytest.raises(NIRImportError, match="'syn'.*synaptic current"):
        import_nir(graph)
    loop = nir.NIRGraph(nodes={
        "input": nir.Input(input_type={"input": np.array([2])}),
        "w": nir.Linear(weight=np.eye(2, dtype=np.float32)),
        "lif": nir.IF(r=np.ones(2), v_threshold=np.ones(2)),
        "output": nir.Output(output_type={"output": np.array([2])}),
    }, edges=[("input", "w"), ("w", "lif"), ("lif", "w"), ("lif", "output")], type_check=False)
    with pytest.raises(NIRImportError, match="cycle"):
        import_nir(loop)


def test_threshold_tie_rule_matches_nir():
    # NIR fires at v > v_threshold; an imported layer must not fire at v == v_threshold
    graph = nir.NIRGraph.from_list(
        nir.Linear(weight=np.eye(2, dtype=np.float32)),
        nir.IF(r=np.full(2, 1e4), v_threshold=np.ones(2)),
    )
    m = import_nir(graph)
    out = m(torch.tensor([[1.0, 1.5]]), 1)
    assert out[0, 0].tolist() == [0.0, 1.0]


def test_cli_export_then_nir_run(tmp_path, capsys):
    import json

    from spikeforge.cli import main

    out, graph = tmp_path / "run", tmp_path / "lenet5.nir"
    args = ["run", "lenet5-convert", "--epochs", "1", "--T", "20", "--calib-batches", "2", "--pool", "avg",
            "--reset", "zero", "--v-init", "0", "--export-nir", str(graph), "--out", str(out), "--no-progress"]
    assert main(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["nir_export"]["path"] == str(graph) and graph.stat().st_size > 0
    stats = m["spike_stats"]
    assert stats["T"] == 20 and stats["images"] == m["n_test"] and stats["energy"]["45nm-fp32"]["snn_to_ann"] > 0
    report = (out / "report.md").read_text()
    assert "Energy estimate" in report and "estimate" in report and (out / "spike_stats.png").stat().st_size > 0
    assert main(["nir-run", str(graph), "--T", "20", "--out", str(tmp_path / "nirrun")]) == 0
    r = json.loads((tmp_path / "nirrun" / "metrics.json").read_text())
    assert r["accuracy"]["20"] == pytest.approx(m["snn_accuracy"]["20"], abs=0.005)  # folded thresholds: rounding only
    assert r["spike_stats"]["totals"]["sops_per_image"] == pytest.approx(stats["totals"]["sops_per_image"], rel=0.01)
    # a network NIR cannot express is refused before training, naming the layer and the reason
    capsys.readouterr()
    refused = tmp_path / "refused"
    assert main(["run", "lenet5-convert", "--epochs", "1", "--export-nir", str(tmp_path / "x.nir"), "--out",
                 str(refused), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "cannot export to NIR: layer 'sf_neuron0'" in err and "reset by subtraction" in err
    assert main(["run", "lenet5-convert", "--epochs", "1", "--reset", "zero", "--v-init", "0", "--export-nir",
                 str(tmp_path / "x.nir"), "--out", str(refused), "--no-progress"]) == 2
    assert "max-pooling of spikes" in capsys.readouterr().err
    assert not (refused / "lenet5.pt").exists() and not (tmp_path / "x.nir").exists()


def test_cli_direct_training_export(tmp_path, capsys):
    import json

    from spikeforge.cli import main

    graph = tmp_path / "fc.nir"
    assert main(["run", "fc-lif", "--epochs", "1", "--T", "4", "--hidden", "32", "--train-limit", "300", "--reset",
                 "zero", "--export-nir", str(graph), "--out", str(tmp_path / "fc"), "--no-progress"]) == 0
    m = json.loads((tmp_path / "fc" / "metrics.json").read_text())
    assert m["nir_export"]["path"] == str(graph) and m["model"]["reset"] == "zero"
    back = import_nir(graph)
    assert [type(n).__name__ for n in back.neurons().values()] == ["NIRNeuron", "NIRNeuron"]
    capsys.readouterr()
    assert main(["run", "csnn", "--epochs", "1", "--T", "2", "--channels", "4", "--export-nir", str(tmp_path / "c.nir"),
                 "--out", str(tmp_path / "csnn"), "--no-progress"]) == 2
    assert "layer 'pool1': max-pooling of spikes" in capsys.readouterr().err
    assert not (tmp_path / "csnn" / "checkpoint.pt").exists()
    assert main(["run", "fc-lif", "--epochs", "1", "--export-nir", str(tmp_path / "s.nir"), "--out",
                 str(tmp_path / "sub"), "--no-progress"]) == 2
    assert "layer 'lif1'" in capsys.readouterr().err
