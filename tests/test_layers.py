"""Spiking max-pooling: the LIPool identity and gated selection."""

import pytest
import torch
import torch.nn.functional as F

from spikeforge.layers import SpikingMaxPool2d, lipool_reference
from spikeforge.neurons import Clock


def random_spikes(T=20, N=2, C=3, H=8, W=8, p=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(T, N, C, H, W, generator=g) < p).float()


@pytest.mark.parametrize("kernel, stride, padding", [(2, 2, 0), (3, 2, 1), (3, 1, 0), (2, 1, 0), (4, 4, 0)])
def test_lipool_summed_output_is_window_max_of_summed_input(kernel, stride, padding):
    x = random_spikes() * 0.7
    pool = SpikingMaxPool2d(kernel, stride, padding, mode="lipool")
    out = pool(x)
    acc_in = x.cumsum(0)
    acc_out = out.cumsum(0)
    for t in range(x.shape[0]):
        expect = F.max_pool2d(acc_in[t], kernel, stride, padding)
        assert torch.allclose(acc_out[t], expect, atol=1e-5)
    assert (out >= -1e-6).all()


def test_lipool_matches_explicit_inhibition_reference():
    x = random_spikes(T=15)
    out = SpikingMaxPool2d(2, mode="lipool")(x)
    assert torch.allclose(out, lipool_reference(x, 2), atol=1e-6)


def test_lipool_state_carries_across_chunks():
    x = random_spikes(T=12)
    whole = SpikingMaxPool2d(3, 2, 1)(x)
    pool = SpikingMaxPool2d(3, 2, 1)
    parts = torch.cat([pool(x[:5]), pool(x[5:])])
    assert torch.allclose(whole, parts, atol=1e-6)
    pool.reset_state()
    assert torch.allclose(pool(x), whole, atol=1e-6)


def test_gated_pool_passes_most_active_unit():
    # one 2x2 window: unit a fires at t=0,1,3; unit b only at t=2
    x = torch.zeros(4, 1, 1, 2, 2)
    x[[0, 1, 3], 0, 0, 0, 0] = 1.0
    x[2, 0, 0, 1, 1] = 1.0
    gated = SpikingMaxPool2d(2, mode="gated")(x).view(-1)
    assert gated.tolist() == [1.0, 1.0, 0.0, 1.0]  # follows a, ignores b's lone spike
    plain = SpikingMaxPool2d(2, mode="plain")(x).view(-1)
    assert plain.tolist() == [1.0, 1.0, 1.0, 1.0]  # plain max-pool over-counts


def test_gated_pool_ties_go_to_larger_input():
    x = torch.zeros(1, 1, 1, 2, 2)
    x[0, 0, 0, 1, 0] = 0.4
    out = SpikingMaxPool2d(2, mode="gated")(x)
    assert float(out) == pytest.approx(0.4)


def test_static_input_pools_like_maxpool():
    clock = Clock(steps=5, batch=2, input_static=True)
    pool = SpikingMaxPool2d(2, mode="lipool")
    pool.clock, pool.static_input = clock, True
    x = torch.rand(2, 3, 4, 4)
    assert torch.equal(pool(x), F.max_pool2d(x, 2))


def test_unknown_mode():
    with pytest.raises(ValueError, match="max-pool mode"):
        SpikingMaxPool2d(2, mode="fancy")


@pytest.mark.parametrize("kernel", [(2, 2), (3, 3), (2, 3)])
def test_tiled_max_pool_equals_maxpool(kernel):
    from spikeforge.layers import tiled_max_pool2d

    x = torch.randn(3, 4, 13, 14)
    assert torch.equal(tiled_max_pool2d(x, kernel), F.max_pool2d(x, kernel))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_qcfs_single_node_matches_its_autograd_definition(dtype):
    from spikeforge.layers import QCFS, qcfs_reference

    torch.manual_seed(0)
    m = QCFS(4, threshold=1.25)
    x = (torch.randn(6, 8, 5, 5) * 1.5)
    x[0, 0, 0, :3] = torch.tensor([0.0, 1.25, -0.0])  # both clip bounds exactly: gradients pass (as clamp's)
    x = x.to(dtype).to(memory_format=torch.channels_last).requires_grad_()
    out = m(x)
    x64 = x.detach().double().requires_grad_()
    lam64 = m.threshold.detach().double().requires_grad_()
    ref = qcfs_reference(x64, lam64.abs() + 1e-6, 4)
    # forward: the same operations in the same dtype, so the same values (and layout)
    assert torch.equal(out, qcfs_reference(x.detach(), m.ceiling.detach(), 4))
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
    g = torch.randn(out.shape, dtype=torch.float64)
    out.backward(g.to(dtype))
    ref.backward(g)
    assert torch.allclose(x.grad.double(), x64.grad, rtol=1e-2 if dtype == torch.bfloat16 else 1e-6, atol=0)
    assert x.grad[0, 0, 0, 0] != 0 and x.grad[0, 0, 0, 1] != 0
    # ∂/∂λ = Σ g·q/L − Σ g·(x/λ)·[inside], q the levels of *this* forward pass (in bfloat16 a few
    # elements round to the next level, so the float64 forward's levels would not do)
    q = (out.detach().double() * 4 / m.ceiling.item()).round()
    t = x64.detach() / (abs(m.threshold.item()) + 1e-6)
    want = (g * q).sum() / 4 - (g * t * ((t >= 0) & (t <= 1))).sum()
    tol = 5e-2 if dtype == torch.bfloat16 else 1e-5
    assert abs(m.threshold.grad.item() - want.item()) <= tol * max(1.0, abs(want.item()))
    if dtype == torch.float32:
        assert abs(m.threshold.grad.item() - lam64.grad.item()) <= 1e-5 * max(1.0, abs(lam64.grad.item()))
