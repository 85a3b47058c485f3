"""Encoders and the direct-training losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from spikeforge.encoding import direct, latency, poisson
from spikeforge.train.losses import ce_membrane, ce_rate, mse_rate, tet


def test_direct_repeats_without_copy():
    x = torch.rand(3, 1, 4, 4)
    d = direct(x, 5)
    assert d.shape == (5, 3, 1, 4, 4) and d.data_ptr() == x.data_ptr() and torch.equal(d[4], x)


def test_poisson_rate_and_seed():
    x = torch.tensor([[0.0, 0.25, 0.5, 1.0]])
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a, b = poisson(x, 4000, generator=g1), poisson(x, 4000, generator=g2)
    assert torch.equal(a, b)
    rate = a.mean(0).flatten()
    assert rate[0] == 0 and rate[3] == 1
    assert abs(rate[1] - 0.25) < 0.03 and abs(rate[2] - 0.5) < 0.03


def test_latency_one_spike_bright_first():
    x = torch.tensor([[1.0, 0.5, 0.02, 0.005]])
    s = latency(x, 5)
    assert s.sum(0).tolist() == [[1.0, 1.0, 1.0, 0.0]]
    assert s[:, 0, 0].argmax() == 0 and s[:, 0, 1].argmax() == 2 and s[:, 0, 2].argmax() == 4


def test_encoders_reject_nan_and_bad_T():
    with pytest.raises(ValueError, match="NaN"):
        poisson(torch.tensor([float("nan")]), 3)
    with pytest.raises(ValueError, match="T must"):
        direct(torch.rand(2), 0)


def test_losses_hand_computed():
    # two steps, one sample, two classes
    mem = torch.tensor([[[0.0, 0.0]], [[1.0, 0.0]]])
    y = torch.tensor([0])
    expected = math.log(2) + math.log(1 + math.exp(-1))
    assert abs(float(ce_membrane(mem, y)) - expected) < 1e-6
    spikes = torch.tensor([[[1.0, 0.0]], [[1.0, 1.0]]])  # rates 1, 0.5
    assert abs(float(mse_rate(spikes, y)) - (0.0 + 0.25) / 2) < 1e-7
    assert abs(float(ce_rate(spikes, y, scale=2.0)) - math.log(1 + math.exp(-1))) < 1e-6
    with pytest.raises(ValueError, match="T, N, C"):
        mse_rate(torch.rand(2, 3), y)
    with pytest.raises(ValueError, match="labels"):
        mse_rate(spikes, torch.tensor([0, 1]))


def test_tet_and_label_smoothing_hand_computed():
    mem = torch.tensor([[[0.0, 0.0]], [[1.0, 0.0]]])  # two steps, one sample, two classes
    y = torch.tensor([0])
    plain = math.log(2) + math.log(1 + math.exp(-1))
    assert abs(float(tet(mem, y)) - plain / 2) < 1e-6  # the per-step loss averaged, not summed
    # smoothing 0.2 over 2 classes: target (0.9, 0.1)
    smooth = math.log(2) + 0.9 * math.log(1 + math.exp(-1)) + 0.1 * math.log(1 + math.exp(1))
    assert abs(float(ce_membrane(mem, y, label_smoothing=0.2)) - smooth) < 1e-6
    assert abs(float(tet(mem, y, label_smoothing=0.2)) - smooth / 2) < 1e-6
    spikes = torch.tensor([[[1.0, 0.0]], [[1.0, 1.0]]])  # rates 1, 0.5 -> logits 2, 1
    rate = 0.9 * math.log(1 + math.exp(-1)) + 0.1 * math.log(1 + math.exp(1))
    assert abs(float(ce_rate(spikes, y, scale=2.0, label_smoothing=0.2)) - rate) < 1e-6
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="label_smoothing"):
            tet(mem, y, label_smoothing=bad)
