"""The fused LIF/IF sequence function against the step-by-step reference, and the modules."""

from __future__ import annotations

import itertools
import pickle

import pytest
import torch

from spikeforge.functional.lif import lif_seq, lif_seq_reference
from spikeforge.functional.neuron import if_seq
from spikeforge.neurons import IF, LIF, ParametricLIF
from spikeforge.surrogate import ATan, FastSigmoid, Sigmoid, Triangle

CASES = [
    c for c in itertools.product(("subtract", "zero"), (False, True), (False, True), (0.5, 0.95, 1.0), (False, True))
    if not (c[2] and c[3] == 1.0)
]


def _native_available() -> bool:
    from spikeforge import _native

    return _native.library() is not None


BACKENDS = ["torch", pytest.param("native", marks=pytest.mark.skipif(not _native_available(), reason="no C compiler"))]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reset,detach,decay_input,beta,constant", CASES)
def test_fused_matches_reference_outputs_and_gradients(reset, detach, decay_input, beta, constant, backend):
    """Both fused paths against the step-by-step autograd reference (float64 for the
    PyTorch path; float32 for the compiled kernels, which compute in float32)."""
    torch.manual_seed(1)
    T = 9
    shape = (3, 4, 5) if constant else (T, 3, 4, 5)
    dtype = torch.float64 if backend == "torch" else torch.float32
    x = torch.randn(shape, dtype=dtype) * 0.8 + 0.4
    x = (x / (1 - beta) if decay_input else x).requires_grad_()
    kw = dict(beta=beta, reset=reset, decay_input=decay_input, detach_reset=detach,
              surrogate=Sigmoid(3.0), steps=T if constant else None, threshold=0.8)
    s, h, v = lif_seq(x, backend=backend, **kw)
    ws, wh = torch.randn_like(s), torch.randn_like(h)
    ((s * ws).sum() + (h * wh).sum()).backward()
    g = x.grad.clone()
    x.grad = None
    s2, h2, v2 = lif_seq_reference(x, **kw)
    ((s2 * ws).sum() + (h2 * wh).sum()).backward()
    assert s.sum() > 0 and (s == 0).any()  # the case exercises both firing and silence
    assert torch.equal(s, s2)
    tol = dict(atol=1e-6, rtol=0) if backend == "torch" else dict(atol=5e-6, rtol=1e-5)  # float32 sums over T
    torch.testing.assert_close(h, h2, **tol)
    torch.testing.assert_close(v, v2.detach(), **tol)
    torch.testing.assert_close(g, x.grad, **tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("decay_input", [False, True])
def test_learnable_beta_gradient_matches_reference(decay_input, backend):
    torch.manual_seed(2)
    dtype = torch.float64 if backend == "torch" else torch.float32
    x = torch.randn(8, 4, 6, dtype=dtype) + 0.5
    out = []
    for fn in (lambda *a, **k: lif_seq(*a, backend=backend, **k), lif_seq_reference):
        b = torch.tensor(0.8, dtype=dtype, requires_grad=True)
        s, h, _ = fn(x, beta=b, decay_input=decay_input, surrogate=ATan())
        (s.sum() + 0.1 * h.square().sum()).backward()
        out.append(b.grad.double())
    torch.testing.assert_close(out[0], out[1], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reset,v0,steps", [("zero", False, None), ("subtract", True, None), ("zero", True, None),
                                            ("subtract", False, 8), ("zero", True, 8)])
def test_learnable_beta_gradient_every_branch(reset, v0, steps, backend):
    """dL/dβ with zero reset, a given initial membrane and a constant input (the kernel's
    separate first-step and reset branches) against the step-by-step reference."""
    torch.manual_seed(5)
    dtype = torch.float64 if backend == "torch" else torch.float32
    x = torch.randn(*((4, 70) if steps else (8, 4, 70)), dtype=dtype) + 0.6
    v = torch.rand(4, 70, dtype=dtype) if v0 else None
    out = []
    for fn in (lambda *a, **k: lif_seq(*a, backend=backend, **k), lif_seq_reference):
        b = torch.tensor(0.7, dtype=dtype, requires_grad=True)
        s, h, _ = fn(x, beta=b, v=v, reset=reset, steps=steps, decay_input=True, surrogate=ATan())
        assert s.sum() > 0 and (s == 0).any()
        (s.sum() + 0.1 * h.square().sum()).backward()
        out.append(b.grad.double())
    torch.testing.assert_close(out[0], out[1], atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not _native_available(), reason="no C compiler")
@pytest.mark.parametrize("sg", [ATan(2.0), Sigmoid(4.0), FastSigmoid(25.0), Triangle(1.0)], ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_equals_torch_path(sg, dtype):
    """Every surrogate the kernels know, bf16 and channels-last layouts included."""
    torch.manual_seed(3)
    x = (torch.randn(4 * 6, 5, 3, 3) * 0.7 + 0.5).contiguous(memory_format=torch.channels_last)
    x = x.view(4, 6, 5, 3, 3).to(dtype)
    res = []
    for backend in ("native", "torch"):
        xi = x.detach().clone().requires_grad_()
        s, h, v = lif_seq(xi, beta=0.9, reset="zero", surrogate=sg, backend=backend)
        w = torch.linspace(-1, 1, s.numel()).view_as(s)
        ((s.float() * w).sum() + 0.01 * h.sum()).backward()
        res.append((s, h, v, xi.grad.float()))
    assert torch.equal(res[0][0], res[1][0]) and res[0][0].dtype == dtype
    assert res[0][0].flatten(0, 1).is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(res[0][1], res[1][1])
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=1e-2)
    torch.testing.assert_close(res[0][3], res[1][3], **tol)


def test_hand_computed_lif_sequence():
    # β = 0.5, θ = 1, subtract: H = 0.6, 0.9 → V 0.6, 0.9; H = 1.05 → spike, V 0.05; H = 0.025 ...
    x = torch.tensor([0.6, 0.6, 0.6, 0.0]).view(4, 1)
    s, h, v = lif_seq(x, beta=0.5)
    assert s.flatten().tolist() == [0.0, 0.0, 1.0, 0.0]
    torch.testing.assert_close(h.flatten(), torch.tensor([0.6, 0.9, 1.05, 0.025]))
    s, h, v = lif_seq(x, beta=0.5, reset="zero")
    torch.testing.assert_close(h.flatten(), torch.tensor([0.6, 0.9, 1.05, 0.0]))


def test_if_equals_conversion_engine():
    """β = 1 is the converter's IF neuron (v_init = 0, Γ = 1): one engine, two routes."""
    x = torch.rand(20, 3, 7) * 0.7
    for reset in ("subtract", "zero"):
        s, _, v = lif_seq(x, beta=1.0, reset=reset)
        s2, v2 = if_seq(x, reset=reset, v_init=0.0)
        assert torch.equal(s, s2)
        torch.testing.assert_close(v, v2)


def test_bf16_input_gives_bf16_spikes_and_channels_last_is_kept():
    x = torch.randn(2 * 3, 4, 5, 5).contiguous(memory_format=torch.channels_last).view(2, 3, 4, 5, 5)
    s, h, _ = lif_seq(x.bfloat16(), beta=0.9)
    assert s.dtype == torch.bfloat16 and h.dtype == torch.float32
    assert s.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)
    s32, _, _ = lif_seq(x.bfloat16().float(), beta=0.9)
    assert torch.equal(s.float(), s32)


def test_bad_arguments():
    x = torch.rand(4, 2)
    with pytest.raises(ValueError, match="reset"):
        lif_seq(x, reset="soft")
    with pytest.raises(ValueError, match="beta"):
        lif_seq(x, beta=1.5)
    with pytest.raises(ValueError, match="decay_input"):
        lif_seq(x, beta=1.0, decay_input=True)
    with pytest.raises(ValueError, match="T, N"):
        lif_seq(torch.rand(5))
    with pytest.raises(ValueError, match="beta or as tau"):
        LIF()


def test_modules_keep_explicit_state_and_pickle(tmp_path):
    lif = LIF(tau=2.0, decay_input=True, surrogate=FastSigmoid())
    assert lif.beta == 0.5
    x = torch.rand(5, 3, 4)
    a = lif(x)
    b = lif(x)  # continues from the kept membrane
    lif.reset_state()
    assert torch.equal(lif(x), a) and lif.v is not None
    assert not torch.equal(a, b) or a.sum() == 0
    with pytest.raises(ValueError, match="reset_state"):
        lif(torch.rand(5, 2, 4))
    for m in (lif, IF(surrogate=Triangle()), ParametricLIF(init_tau=3.0)):
        m.reset_state()
        clone = pickle.loads(pickle.dumps(m))
        torch.save(m, tmp_path / "m.pt")
        assert torch.equal(clone(x), m(x))


def test_parametric_lif_learns_its_decay():
    m = ParametricLIF(init_tau=2.0)
    assert abs(float(m.decay().detach()) - 0.5) < 1e-6
    s = m(torch.rand(6, 4, 3) + 0.3)
    s.sum().backward()
    assert m.w.grad is not None and m.w.grad != 0


@pytest.mark.skipif(not _native_available(), reason="no C compiler")
@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("constant", [False, True])
@pytest.mark.parametrize("max_spikes,scale_output", [(1, True), (4, True), (4, False)])
def test_converter_if_neuron_native_equals_torch_path(reset, constant, max_spikes, scale_output, monkeypatch):
    torch.manual_seed(4)
    T = 12
    x = torch.rand(3, 7, 11) if constant else torch.rand(T, 3, 7, 11)  # vector loop and remainder
    x = x * max_spikes - 0.2  # bursts when Γ > 1, and some negative input
    kw = dict(threshold=0.7, v_init=0.5, reset=reset, steps=T if constant else None, scale_output=scale_output,
              max_spikes=max_spikes)
    s_native, v_native = if_seq(x, **kw)
    monkeypatch.setenv("SPIKEFORGE_NATIVE", "0")
    s_torch, v_torch = if_seq(x, **kw)
    counts = s_native / 0.7 if scale_output else s_native
    assert counts.sum() > 0 and int(counts.round().max()) == max_spikes
    assert torch.equal(s_native, s_torch)
    torch.testing.assert_close(v_native, v_torch)
