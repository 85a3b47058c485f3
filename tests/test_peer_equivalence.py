"""Optional: spikeforge's IF/LIF forward spikes equal SpikingJelly's (runs when it is installed)."""

from __future__ import annotations

import pytest
import torch

from spikeforge.functional.lif import lif_seq

neuron = pytest.importorskip("spikingjelly.activation_based.neuron")


@pytest.mark.parametrize("beta", [1.0, 0.95])
def test_forward_spikes_match_spikingjelly(beta):
    torch.manual_seed(0)
    x = torch.rand(64, 32, 200) * 0.6  # [T, N, features]
    if beta == 1.0:
        sj = neuron.IFNode(v_reset=None, step_mode="m")
    else:
        sj = neuron.LIFNode(tau=1.0 / (1.0 - beta), decay_input=False, v_reset=None, step_mode="m")
    with torch.no_grad():
        ref = sj(x)
        s, _, v = lif_seq(x, beta=beta, reset="subtract")
    assert ref.sum() > 1000  # the neurons do fire
    assert torch.equal(s, ref)
    torch.testing.assert_close(v, sj.v, atol=1e-5, rtol=0)
