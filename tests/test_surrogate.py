"""Surrogate gradients: derivative = autograd of the named smooth function; picklable."""

from __future__ import annotations

import pickle

import pytest
import torch

from spikeforge.functional.lif import SpikeFunction
from spikeforge.surrogate import ATan, FastSigmoid, Sigmoid, Triangle, get_surrogate

ALL = [ATan(2.0), ATan(0.7), Sigmoid(4.0), FastSigmoid(25.0), FastSigmoid(3.0), Triangle(1.0), Triangle(0.4)]


@pytest.mark.parametrize("sg", ALL, ids=repr)
def test_derivative_is_autograd_of_smooth(sg):
    u = torch.linspace(-2.5, 2.5, 1001, dtype=torch.float64).requires_grad_()
    (grad,) = torch.autograd.grad(sg.smooth(u).sum(), u)
    torch.testing.assert_close(sg.derivative(u.detach()), grad, atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(sg.derivative_(u.detach().clone()), grad, atol=1e-9, rtol=1e-7)
    # a stand-in for the step: rises from ~0 to ~1
    assert float(sg.smooth(torch.tensor(-50.0))) < 0.05 and float(sg.smooth(torch.tensor(50.0))) > 0.95


@pytest.mark.parametrize("sg", ALL, ids=repr)
def test_spike_function_uses_surrogate(sg):
    u = torch.tensor([-0.3, 0.0, 0.2], requires_grad=True)
    s = SpikeFunction.apply(u, sg)
    assert s.tolist() == [0.0, 1.0, 1.0]
    s.sum().backward()
    torch.testing.assert_close(u.grad, sg.derivative(u.detach()))


def test_pickle_and_names():
    for sg in ALL:
        assert pickle.loads(pickle.dumps(sg)) == sg
    assert get_surrogate("atan") == ATan()
    with pytest.raises(ValueError, match="unknown surrogate"):
        get_surrogate("relu")
    with pytest.raises(ValueError, match="alpha"):
        ATan(-1)
