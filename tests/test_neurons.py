"""IF neuron dynamics against hand-computed sequences."""

import pytest
import torch

from spikeforge.functional import if_seq, if_step
from spikeforge.neurons import IFNeuron


def seq(values):
    return torch.tensor(values, dtype=torch.float32).view(-1, 1)


@pytest.mark.parametrize(
    "reset, max_spikes, threshold, inputs, spikes, v_final",
    [
        # soft reset: 0.6 | 1.2→spike, 0.2 | 0.8 | 2.3→spike, 1.3 | 1.3→spike, 0.3
        ("subtract", 1, 1.0, [0.6, 0.6, 0.6, 1.5, 0.0], [0, 1, 0, 1, 1], 0.3),
        # hard reset: 0.6 | 1.2→spike, 0 | 0.6 | 2.1→spike, 0 | 0
        ("zero", 1, 1.0, [0.6, 0.6, 0.6, 1.5, 0.0], [0, 1, 0, 1, 0], 0.0),
        # burst Γ=2: 3.7→floor 3 clamp 2, v 1.7 | 1.7→1, v 0.7 | 0.9 | 1.2→1, v 0.2
        ("subtract", 2, 1.0, [3.7, 0.0, 0.2, 0.3], [2, 1, 0, 1], 0.2),
        # burst Γ=3, θ=0.5: 1.3→floor 2.6=2, v 0.3 | 0.3+0.9=1.2→2, v 0.2 | 2.2→4 clamp 3, v 0.7
        ("subtract", 3, 0.5, [1.3, 0.9, 2.0], [2, 2, 3], 0.7),
        # burst with hard reset: 2.5→2, v 0 | 0.4 | 0.4+0.7=1.1→1, v 0
        ("zero", 2, 1.0, [2.5, 0.4, 0.7], [2, 0, 1], 0.0),
        # negative input never spikes and is not clamped
        ("subtract", 1, 1.0, [-0.5, 0.9, 0.7], [0, 0, 1], 0.1),
    ],
)
def test_if_seq_hand_computed(reset, max_spikes, threshold, inputs, spikes, v_final):
    s, v = if_seq(seq(inputs), threshold=threshold, reset=reset, max_spikes=max_spikes)
    assert s.view(-1).tolist() == pytest.approx(spikes)
    assert float(v) == pytest.approx(v_final, abs=1e-6)
    # the step-by-step reference agrees
    vr = torch.zeros(1)
    for t, x in enumerate(inputs):
        st, vr = if_step(vr, torch.tensor([x]), threshold=threshold, reset=reset, max_spikes=max_spikes)
        assert float(st) == spikes[t]
    assert float(vr) == pytest.approx(v_final, abs=1e-6)


def test_scaled_output_and_initial_membrane():
    # v_init=0.5, θ=2: v starts at 1; 1.2 → 2.2 spike (out 2.0), v 0.2
    s, v = if_seq(seq([1.2, 0.5]), threshold=2.0, v_init=0.5, scale_output=True)
    assert s.view(-1).tolist() == pytest.approx([2.0, 0.0])
    assert float(v) == pytest.approx(0.7)


def test_constant_input_equals_repeated_input():
    torch.manual_seed(0)
    x = torch.rand(3, 4, 5)
    th = torch.rand(4, 1) + 0.2
    s1, v1 = if_seq(x, threshold=th, steps=7, v_init=0.5)
    s2, v2 = if_seq(x.expand(7, 3, 4, 5), threshold=th, v_init=0.5)
    assert torch.equal(s1, s2) and torch.allclose(v1, v2)


def test_per_channel_threshold():
    x = torch.ones(4, 1, 2)  # [T, N, C]
    s, _ = if_seq(x, threshold=torch.tensor([1.0, 2.0]))
    assert s[:, 0, 0].tolist() == [1, 1, 1, 1]
    assert s[:, 0, 1].tolist() == [0, 1, 0, 1]


def test_rate_approximates_clipped_input():
    x = torch.linspace(-0.5, 1.5, 41).expand(400, 41)
    s, _ = if_seq(x, threshold=1.0, v_init=0.5)
    assert torch.allclose(s.mean(0), x[0].clamp(0, 1), atol=1.0 / 400 + 1e-6)


def test_module_state_and_reset():
    n = IFNeuron(1.0, v_init=0.0)
    out1 = n(seq([0.6, 0.6]))
    assert out1.view(-1).tolist() == [0.0, 1.0]
    out2 = n(seq([0.6]))  # continues from v=0.2
    assert out2.view(-1).tolist() == [0.0]
    n.reset_state()
    assert n.v is None and n(seq([0.6, 0.6])).view(-1).tolist() == [0.0, 1.0]


def test_invalid_options():
    with pytest.raises(ValueError, match="reset"):
        if_seq(seq([1.0]), reset="soft")
    with pytest.raises(ValueError, match="max_spikes"):
        if_seq(seq([1.0]), max_spikes=0)
    with pytest.raises(ValueError, match="thresholds"):
        IFNeuron(torch.tensor([1.0, float("nan")]))
