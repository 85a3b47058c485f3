"""Spike statistics: SOPs against independent counts, bursts, MACs, the energy estimate."""

import importlib.util
import itertools

import pytest
import torch
from torch import nn

from spikeforge import convert
from spikeforge.metrics.spikes import (
    ENERGY_MODELS, SpikeStats, dense_macs, energy_pj, fanout_map, spike_stats_table, synaptic_operations,
)
from spikeforge.models import create_model
from spikeforge.models.snn import SpikingSequential
from spikeforge.neurons import LIF


def relay() -> LIF:
    """A neuron layer that passes a 0/1 input through as spikes (β = 0, threshold 0.5)."""
    return LIF(0.0, threshold=0.5, reset="zero")


def brute_force_conv_sops(conv: nn.Conv2d, spikes: torch.Tensor) -> int:
    """Σ over every connection (output unit, kernel tap) of the spikes at its input position."""
    C_in, H, W = spikes.shape[1:]
    g = conv.groups
    cin_g, cout_g = C_in // g, conv.out_channels // g
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    ph, pw = conv.padding
    dh, dw = conv.dilation
    Ho = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    Wo = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    total = 0
    s = spikes.sum(0)
    for co, ho, wo in itertools.product(range(conv.out_channels), range(Ho), range(Wo)):
        grp = co // cout_g
        for ci, i, j in itertools.product(range(grp * cin_g, (grp + 1) * cin_g), range(kh), range(kw)):
            h, w = ho * sh - ph + i * dh, wo * sw - pw + j * dw
            if 0 <= h < H and 0 <= w < W:
                total += int(s[ci, h, w])
    return total


def brute_force_convtranspose_sops(conv: nn.ConvTranspose2d, spikes: torch.Tensor) -> int:
    """Each input unit scatters to C_out/groups·k_h·k_w outputs; count those inside the output."""
    H, W = spikes.shape[2:]
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    ph, pw = conv.padding
    Ho = (H - 1) * sh - 2 * ph + kh + conv.output_padding[0]
    Wo = (W - 1) * sw - 2 * pw + kw + conv.output_padding[1]
    s = spikes.sum((0, 1))
    total = 0
    for h, w, i, j in itertools.product(range(H), range(W), range(kh), range(kw)):
        oh, ow = h * sh - ph + i, w * sw - pw + j
        if 0 <= oh < Ho and 0 <= ow < Wo:
            total += int(s[h, w]) * (conv.out_channels // conv.groups)
    return total


def test_linear_sops_are_spikes_times_out_features():
    torch.manual_seed(0)
    net = SpikingSequential(relay(), nn.Linear(20, 7)).eval()
    spikes = (torch.rand(6, 3, 20) < 0.3).float()
    with SpikeStats(net) as st:
        net(spikes)
    s = st.summary()
    assert s["layers"]["1"]["sops_per_image"] == pytest.approx(float(spikes.sum()) * 7 / 3)
    assert s["layers"]["1"]["input"] == "spikes"
    assert synaptic_operations(nn.Linear(20, 7), spikes.flatten(0, 1)) == float(spikes.sum()) * 7


@pytest.mark.parametrize("kw", [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=(3, 2), padding=(2, 0), dilation=(2, 1)),
    dict(kernel_size=5, padding=2, groups=2),
])
def test_conv_sops_match_a_count_over_every_connection(kw):
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 6, **kw)
    spikes = (torch.rand(2, 4, 7, 9) < 0.4).float()
    want = brute_force_conv_sops(conv, spikes)
    assert synaptic_operations(conv, spikes) == want
    # the same through the hooks, over 3 steps of a sequence (borders included, no averaging)
    net = SpikingSequential(relay(), conv).eval()
    seq = torch.stack([spikes, torch.zeros_like(spikes), spikes])
    with SpikeStats(net) as st:
        net(seq)
    assert st.summary()["layers"]["1"]["sops_per_image"] == pytest.approx(2 * want / 2)
    assert st.summary()["per_step"]["sops_per_image"] == pytest.approx([want / 2, want / 2, want])


def test_border_fanout_is_exact_not_average():
    conv = nn.Conv2d(1, 1, 3, padding=1)
    f, out = fanout_map(conv, (4, 4))
    assert out == (4, 4)
    assert f[0, 0] == 4 and f[0, 1] == 6 and f[1, 1] == 9  # corner, edge, interior
    assert float(f.sum()) == 4 * 4 * 9 - 4 * 3 * 2 - 4 * 3 * 2 + 4  # taps minus the padded ones


def test_transposed_conv_sops_match_a_count():
    conv = nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1)
    spikes = (torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(2)) < 0.5).float()
    assert synaptic_operations(conv, spikes) == brute_force_convtranspose_sops(conv, spikes)


def test_a_burst_of_k_spikes_counts_k():
    ann = nn.Sequential(nn.Linear(1, 1, bias=False), nn.ReLU(), nn.Linear(1, 3, bias=False)).eval()
    with torch.no_grad():
        ann[0].weight.fill_(1.0)
    snn = convert(ann, torch.full((8, 1), 2.0), max_spikes=4, v_init=0.0)
    neuron = snn.neurons()["sf_neuron0"]
    neuron.threshold.fill_(1.0)
    with SpikeStats(snn) as st:
        snn(torch.tensor([[3.5], [0.5]]), 2)  # image 1: V=3.5 → 3 spikes, then V=0.5+3.5=4 → 4; image 2: 0, 1
    s = st.summary()
    assert neuron.spike_count == 8
    assert s["layers"]["sf_neuron0"]["spikes_per_image"] == pytest.approx(8 / 2)
    assert s["layers"]["2"]["sops_per_image"] == pytest.approx(8 * 3 / 2)
    assert s["per_step"]["sops_per_image"] == pytest.approx([3 * 3 / 2, 8 * 3 / 2])


def test_energy_of_a_hand_worked_example():
    lin1, lin2 = nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        lin1.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1.0, 0]]))
        lin2.weight.fill_(0.1)
    net = SpikingSequential(lin1, LIF(0.0, threshold=0.5, reset="zero"), lin2).eval()
    with SpikeStats(net) as st:
        net(torch.ones(1, 4), steps=5)
    s = st.summary()
    # lin1: analog input, the same at every step, runs once: 4·3 = 12 MACs.
    # neurons 0 and 2 fire at each of 5 steps: 10 spikes; lin2: 10 spikes × 2 synapses = 20 SOPs.
    # E_SNN = 4.6·12 + 0.9·20 = 73.2 pJ; the ANN: 4.6·(12 + 6) = 82.8 pJ.
    assert s["totals"]["snn_macs_per_image"] == 12 and s["totals"]["sops_per_image"] == 20
    assert s["totals"]["ann_macs_per_image"] == 18
    e = s["energy"]["45nm-fp32"]
    assert e["snn_uj_per_image"] == pytest.approx(73.2e-6)
    assert e["ann_uj_per_image"] == pytest.approx(82.8e-6)
    assert e["snn_to_ann"] == pytest.approx(73.2 / 82.8)
    assert s["energy"]["45nm-int8"]["snn_to_ann"] == pytest.approx((0.23 * 12 + 0.03 * 20) / (0.23 * 18))
    assert energy_pj(12, 20) == pytest.approx(73.2)
    assert s["estimate"] is True and "estimate" in s["note"]
    assert ENERGY_MODELS["45nm-fp32"].e_mac_pj == 4.6 and ENERGY_MODELS["45nm-fp32"].e_ac_pj == 0.9
    assert any("estimate" in line.lower() for line in spike_stats_table(s))


def test_dense_macs():
    assert dense_macs(nn.Linear(5, 3), (5,)) == 15
    assert dense_macs(nn.Conv2d(2, 4, 3, padding=1), (2, 6, 6)) == 4 * 36 * 2 * 9
    assert dense_macs(nn.Conv2d(4, 6, 3, stride=2, groups=2), (4, 7, 7)) == 6 * 9 * 2 * 9
    assert dense_macs(nn.ConvTranspose2d(2, 3, 2, stride=2), (2, 4, 4)) == 2 * 16 * 3 * 4


def avg_lenet5() -> nn.Module:
    torch.manual_seed(0)
    return create_model("lenet5", pool="avg").eval()


def test_converted_lenet5_counts_agree_with_the_neurons():
    ann = avg_lenet5()
    x = torch.rand(40, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    snn = convert(ann, x)
    counts: dict[str, float] = {}
    with SpikeStats(snn) as st:
        for batch, chunk in ((x[:10], 5), (x[10:20], None)):  # chunks of 5 steps, then one chunk
            snn(batch, 12, chunk=chunk)
            for name, neuron in snn.neurons().items():  # the neurons' own counters, reset at every run
                counts[name] = counts.get(name, 0.0) + neuron.spike_count
    s = st.summary()
    assert s["images"] == 20 and s["T"] == 12
    for name in snn.neurons():
        assert s["layers"][name]["spikes_per_image"] == pytest.approx(counts[name] / 20)
    # the first conv sees the image: MACs once per image, nothing else is analog
    convs = [k for k, v in s["layers"].items() if v["kind"] == "synapses"]
    first = s["layers"][convs[0]]
    assert first["macs_per_image"] == first["ann_macs_per_image"] == 6 * 28 * 28 * 25
    assert all(s["layers"][k]["macs_per_image"] == 0 and s["layers"][k]["input"] == "spikes" for k in convs[1:])
    assert s["per_step"]["sops_per_image"][-1] == pytest.approx(s["totals"]["sops_per_image"])
    # the conv after the average pool: SOPs = spikes routed to the pooled unit × its exact fan-out
    conv2 = snn.graph_module.get_submodule(convs[1])
    th = float(snn.neurons()["sf_neuron0"].threshold)
    seen = []
    h = conv2.register_forward_pre_hook(lambda m, a: seen.append(a[0] * 4 / th))
    snn(x[:10], 12, chunk=12)
    h.remove()
    st2 = SpikeStats(snn)
    with st2:
        snn(x[:10], 12, chunk=12)
    assert st2.summary()["layers"][convs[1]]["sops_per_image"] * 10 == pytest.approx(
        synaptic_operations(conv2, seen[0].round()))


def test_unet_concatenation_mixes_spikes_and_analog_channels():
    torch.manual_seed(0)
    ann = create_model("unet", width=4, depth=1).eval()
    x = torch.rand(4, 1, 16, 16)
    snn = convert(ann, x)
    with SpikeStats(snn) as st:
        snn(x, 4)
    layers = st.summary()["layers"]
    mixed = [v for v in layers.values() if v["kind"] == "synapses" and v["input"].startswith("spikes on")]
    assert mixed and mixed[0]["input"] == "spikes on 4 of 8 channels, analog on 4"
    assert mixed[0]["macs_per_image"] > 0 and mixed[0]["sops_per_image"] > 0


def test_direct_nets_counted_in_eval_only_and_by_value():
    net = create_model("csnn", channels=4, T=3)
    x = torch.rand(5, 1, 28, 28)
    with SpikeStats(net) as st:
        net.train()
        net(x)
        assert st.images == 0
        net.eval()
        with torch.no_grad():
            net(x)
    s = st.summary()
    assert s["images"] == 5 and s["T"] == 3
    assert s["layers"]["conv1"]["input"].startswith("analog")
    assert s["layers"]["conv2"]["input"] == "spikes" and s["layers"]["fc1"]["input"] == "spikes"
    assert s["layers"]["sn1"]["neurons"] == 4 * 28 * 28


def test_evaluate_snn_collects_the_statistics_in_the_same_pass():
    from spikeforge.evaluate import evaluate_snn

    ann = avg_lenet5()
    x = torch.rand(30, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    y = torch.randint(0, 10, (30,))
    snn = convert(ann, x)
    calls = []
    h = snn.graph_module.register_forward_pre_hook(lambda m, a: calls.append(1))
    res = evaluate_snn(snn, x, y, 6, batch_size=10)
    h.remove()
    assert len(calls) == 3  # one run per batch: no second pass for the statistics
    s = res["spike_stats"]
    assert s["images"] == 30 and s["T"] == 6 and len(s["per_step"]["sops_per_image"]) == 6
    for name, rate in res["firing_rates"].items():
        assert s["layers"][name]["spikes_per_neuron_per_step"] == pytest.approx(rate)
    assert "spike_stats" not in evaluate_snn(snn, x, y, 2, spike_stats=False)
    assert not snn.graph_module._forward_pre_hooks  # the hooks are gone afterwards


def test_csnn_run_reports_the_statistics(tmp_path):
    import json

    from spikeforge.cli import main

    out = tmp_path / "csnn"
    assert main(["run", "csnn", "--epochs", "1", "--T", "2", "--channels", "4", "--train-limit", "200", "--out",
                 str(out), "--no-progress"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    s = m["spike_stats"]
    assert s["images"] == m["n_test"] and s["T"] == 2
    assert set(s["layers"]) == {"conv1", "sn1", "conv2", "sn2", "fc1", "sn3", "fc2", "sn4"}
    assert "Energy estimate" in (out / "report.md").read_text() and (out / "spike_stats.png").stat().st_size > 0


def test_segmentation_counter_collects_statistics_over_several_windows():
    from spikeforge.evaluate_segmentation import SpikeCounter, snn_mean_logits

    torch.manual_seed(0)
    ann = create_model("unet", width=4, depth=1).eval()
    x = torch.rand(3, 1, 16, 16)
    snn = convert(ann, x)
    counter = SpikeCounter(stats=True)
    for i in range(3):
        snn_mean_logits(snn, x[i : i + 1], [1, 4], counter=counter)
    s = counter.spike_stats()
    with SpikeStats(snn) as st:
        snn(x, 4)
    want = st.summary()
    assert s["images"] == 3 and s["T"] == 4
    for name, layer in want["layers"].items():
        for key in ("sops_per_image", "macs_per_image", "spikes_per_image"):
            if key in layer:
                assert s["layers"][name][key] == pytest.approx(layer[key], rel=1e-6)
    assert SpikeCounter().spike_stats() is None


def test_unet_convert_reports_the_statistics(tmp_path, capsys):
    import json

    from spikeforge.cli import main

    out = tmp_path / "unet"
    assert main(["run", "unet-convert", "--quick", "--T", "4", "--curve-T", "4", "--out", str(out),
                 "--no-progress"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    s = m["spike_stats"]
    assert s["T"] == 4 and s["images"] >= 1 and s["totals"]["sops_per_image"] > 0
    assert any(v.get("input", "").startswith("spikes on") for v in s["layers"].values())  # the concatenations
    assert "Energy estimate" in (out / "report.md").read_text() and (out / "spike_stats.png").is_file()
    if importlib.util.find_spec("nir") is not None:  # the UNet (burst spikes, max-pool, concat) is refused up front
        capsys.readouterr()
        assert main(["run", "unet-convert", "--quick", "--export-nir", str(tmp_path / "u.nir"), "--out",
                     str(tmp_path / "u2"), "--no-progress"]) == 2
        assert "cannot export to NIR: layer 'sf_neuron0'" in capsys.readouterr().err
        assert not (tmp_path / "u2" / "unet.pt").exists()
