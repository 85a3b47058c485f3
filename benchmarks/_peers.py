"""Peer baseline: SpikingJelly's classic rate-coding ANN->SNN conversion.

Notes (checked against the installed source, spikingjelly 2.0.0 from PyPI, torch 2.13 CPU):

* Version / API. 2.0.0 dropped the old ``ann2snn.Converter(mode=..., dataloader=...)``
  call from 0.0.0.0.14. Conversion is now a converter plus a "recipe":
  ``ann2snn.Converter`` (alias of ``ann2snn.FXConverter``, in
  ``spikingjelly/activation_based/ann2snn/converter.py``) runs FX tracing and the
  pipeline steps. The classic algorithm is in
  ``ann2snn.RateCodingRecipe(dataloader, mode="Max", momentum=0.1, fuse_flag=True, ...)``
  (``ann2snn/recipes/rate_coding.py``). The old call maps to:
  ``Converter(recipe=RateCodingRecipe(dataloader=dl, mode=mode)).convert(ann)``.
  The library's own example is ``ann2snn/examples/cnn_mnist.py``.
  ``Converter(recipe="rate_coding")`` raises an error because the recipe needs a dataloader.
* Algorithm. The model is put in eval mode and traced with torch.fx. Conv-BN pairs are
  fused. A ``VoltageHook`` goes after every ``nn.ReLU`` *module* (a functional
  ``F.relu``/``torch.relu`` is NOT matched and stays a ReLU). The recipe then
  runs the calibration loader once. After that, each ReLU becomes
  ``VoltageScaler(1/s) -> IFNode(v_threshold=1, v_reset=None) -> VoltageScaler(s)``.
  ``v_reset=None`` means soft reset (reset by subtraction) and the initial v is 0.
  ``s`` is the per-layer activation scale (one scalar per layer by default;
  ``channel_wise=True`` gives one per channel). The output layer has no neuron:
  each step it returns the analog Linear output driven by the scaled spikes, so
  ``mean_t(out_t)`` approximates the ANN logits.
  Modes: ``"Max"``/``"max"`` (case-insensitive), a percentile string such as
  ``"99.9%"``, or a float in (0, 1], meaning that fraction of the max.
* Calibration gotchas. (a) ``s`` is NOT a global max or percentile over the whole
  calibration set. It is an EMA over batches: the first batch initializes it, then
  ``s = 0.9*s + 0.1*stat(batch)`` (``momentum=0.1``). Results therefore depend on batch size and
  order (0.0.0.0.14 did the same). (b) The percentile modes call ``torch.quantile``
  on the whole activation tensor of a batch. That tensor must have at most 2**24
  elements ("quantile() input tensor is too large"). For LeNet conv1 (6x28x28), the
  calibration batch size must therefore be at most 3566. (c) Calibration wraps the loader in
  ``tqdm``, which writes a progress bar to stderr. ``sj_convert`` silences it unless
  ``progress=True``.
* BN. ``Conv{1,2,3}d -> BatchNorm{1,2,3}d`` pairs are fused
  (``torch.nn.utils.fusion.fuse_conv_bn_eval``, ``fuse_flag=True``). ``Linear ->
  BatchNorm1d`` is NOT fused. The BN1d stays as a separate per-step eval-mode affine
  (``layer.BatchNorm1d``), which gives the same rate as fusing it. Eval mode is essential here, so
  ``sj_convert`` calls ``.eval()`` on the result. The newly inserted scaler and IF modules
  start in training mode, and the converter restores the *input* model's
  original training flags when it finishes.
* MaxPool is left as is, on spikes: ``MaxPool2d`` takes the output of
  ``scaler1``, i.e. values in {0, s}, so it is a max over spikes ("spike max-pool",
  which overestimates the rate). It only moves in front of the neuron with
  ``channel_wise=True, pre_spike_maxpool=True``, which is not the classic method.
* Step mode. Stateless modules are swapped for ``spikingjelly.activation_based.layer.*``
  step-mode twins (deep copies, so the SNN shares no parameters with the ANN). All
  are in single-step mode ``"s"``. The tutorial runs ``functional.reset_net(net)``
  and then calls ``net(img)`` T times with the same static image (direct/analog
  input coding, no Poisson encoder). It accumulates ``out += net(img)`` and takes argmax
  after each step. On CPU, multi-step (``functional.set_step_mode(net, "m")`` with
  a [T, N, ...] input) gives identical outputs but was ~5x slower here, so
  ``sj_run`` uses the single-step loop, as the tutorial does.
* Imports. ``spikingjelly.activation_based.ann2snn`` and ``functional`` do NOT import
  torchvision. Only ``ann2snn/examples/*.py`` do. The installed torchvision 0.28 fails
  to import beside torch 2.13 (``RuntimeError: operator torchvision::nms does not
  exist``), so never import the examples or ``spikingjelly.datasets``. Importing
  ann2snn takes ~1 s (it pulls in requests, loguru and tqdm). SpikingJelly's loguru logger is
  disabled by default. The first IF forward may log a harmless "Triton not
  available" warning from torch.
* Timing. On this 2-core box, torch's default 2 intra-op threads gave erratic times
  when anything else was running: the same T=8, N=16 run took 15 ms to 1.4 s. With
  ``torch.set_num_threads(1)`` (or OMP_NUM_THREADS=1) it was stable at ~7 ms warm, and
  conversion (256 calib images) took ~95 ms. Pin the thread count identically for both
  converters, and warm up before timing.
"""

from __future__ import annotations

import copy
import time
from typing import Iterable

import torch

from spikingjelly.activation_based import ann2snn, functional
from spikingjelly.activation_based.ann2snn.recipes import local_threshold_balancing as _sj_ltb
from spikingjelly.activation_based.ann2snn.recipes import rate_coding as _sj_rate_coding

__all__ = ["sj_convert", "sj_run"]


def sj_convert(
    model: torch.nn.Module,
    calib_loader: Iterable,
    *,
    mode: str = "99.9%",
    progress: bool = False,
) -> torch.nn.Module:
    """SpikingJelly 2.0.0 conversion; ``mode="ltb"`` selects its local-threshold-balancing recipe.

    Any other ``mode`` is the classic rate-coding recipe (see :func:`_sj_rate_coding_convert`).
    The local-threshold-balancing recipe (Bu, Li, Yu 2024, as implemented in
    ``ann2snn/recipes/local_threshold_balancing.py``) learns one threshold per channel
    from the calibration batches (it grows by twice the mean overflow of each batch),
    moves a max-pool that follows a ReLU in front of the neuron, and uses
    ``HalfThresholdIFNode`` neurons (initial membrane θ/2, soft reset).
    """
    if mode.lower() == "ltb":
        ann = copy.deepcopy(model).cpu().eval()
        recipe = _sj_ltb.LocalThresholdBalancingRecipe(dataloader=calib_loader)
        orig_tqdm = _sj_ltb.tqdm
        if not progress:
            _sj_ltb.tqdm = lambda it, *a, **k: it
        try:
            snn = ann2snn.Converter(recipe=recipe, device="cpu").convert(ann)
        finally:
            _sj_ltb.tqdm = orig_tqdm
        return snn.cpu().eval()
    return _sj_rate_coding_convert(model, calib_loader, mode=mode, progress=progress)


def _sj_rate_coding_convert(
    model: torch.nn.Module,
    calib_loader: Iterable,
    *,
    mode: str = "99.9%",
    progress: bool = False,
) -> torch.nn.Module:
    """Convert ``model`` with SpikingJelly 2.0.0's classic rate-coding recipe.

    This does the same as 0.0.0.0.14's ``ann2snn.Converter(mode=mode, dataloader=calib_loader)``:
    Conv-BN fusion, max/percentile activation normalization (per-layer EMA over
    calibration batches), ReLU -> IFNode with soft reset, and MaxPool applied to
    spikes. ``calib_loader`` may yield tensors, ``(x, y)`` tuples or dicts.
    The input model is not modified (the function works on a deep copy). Returns an
    eval-mode ``torch.fx.GraphModule`` on CPU in single-step mode.
    """
    ann = copy.deepcopy(model).cpu().eval()
    recipe = ann2snn.RateCodingRecipe(dataloader=calib_loader, mode=mode)
    converter = ann2snn.Converter(recipe=recipe, device="cpu")
    orig_tqdm = _sj_rate_coding.tqdm
    if not progress:
        _sj_rate_coding.tqdm = lambda it, *a, **k: it  # silence calibration progress bar
    try:
        snn = converter.convert(ann)
    finally:
        _sj_rate_coding.tqdm = orig_tqdm
    return snn.cpu().eval()


@torch.no_grad()
def sj_run(snn: torch.nn.Module, x: torch.Tensor, T: int) -> torch.Tensor:
    """Run the converted SNN for ``T`` steps on a static input and return per-step outputs.

    Returns a tensor of shape ``[T, N, num_classes]``: element ``t`` is the raw output of
    ``snn(x)`` at step ``t``, not accumulated. The same analog image ``x`` is fed
    at every step (direct coding, as in SpikingJelly's tutorial). The network state is
    reset with ``functional.reset_net`` before the batch and again after it.

    To evaluate as the tutorial does, accumulate over time and take the argmax of the running sum::

        out = sj_run(snn, x, T)              # [T, N, C]
        pred_t = out.cumsum(0).argmax(-1)    # [T, N] prediction after steps 1..T
        logits_T = out.mean(0)               # ~ ANN logits (rate estimate)
    """
    if T <= 0:
        raise ValueError("T must be positive.")
    x = x.cpu()
    functional.reset_net(snn)
    try:
        outs = [snn(x) for _ in range(T)]
    finally:
        functional.reset_net(snn)
    return torch.stack(outs, dim=0)


def _lenet5(bn1d: bool = True) -> torch.nn.Sequential:
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(400, 120), *( [nn.BatchNorm1d(120)] if bn1d else [] ), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, 10),
    )


if __name__ == "__main__":
    import importlib.metadata as md

    torch.set_num_threads(1)  # stable timings on the 2-core box (see header)
    torch.manual_seed(0)
    ann = _lenet5()
    # Give BN non-trivial running stats, then freeze.
    ann.train()
    with torch.no_grad():
        for _ in range(3):
            ann(torch.rand(64, 1, 28, 28))
    ann.eval()

    calib = torch.utils.data.TensorDataset(
        torch.rand(256, 1, 28, 28), torch.randint(0, 10, (256,))
    )
    calib_loader = torch.utils.data.DataLoader(calib, batch_size=64)

    t0 = time.perf_counter()
    snn = sj_convert(ann, calib_loader, mode="99.9%")
    t_conv = time.perf_counter() - t0

    x = torch.rand(16, 1, 28, 28)
    T = 8
    t0 = time.perf_counter()
    sj_run(snn, x, T)  # cold: the first IF forward does one-off lazy init (triton probe etc.)
    t_cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = sj_run(snn, x, T)
    t_run = time.perf_counter() - t0

    with torch.no_grad():
        ref = ann(x)
    agree = (out.cumsum(0)[-1].argmax(-1) == ref.argmax(-1)).float().mean().item()
    print(f"spikingjelly {md.version('spikingjelly')}, torch {torch.__version__}")
    print("BatchNorm2d left in SNN (False => fused):", any(isinstance(m, torch.nn.BatchNorm2d) for m in snn.modules()))
    print("IF neurons:", sum(type(m).__name__ == "IFNode" for m in snn.modules()))
    print(f"convert: {t_conv*1e3:.1f} ms | run T={T}, N={x.shape[0]}: "
          f"cold {t_cold*1e3:.1f} ms, warm {t_run*1e3:.1f} ms")
    print("input", tuple(x.shape), "-> per-step outputs", tuple(out.shape))
    print(f"max |mean_t(out) - ANN logits| = {(out.mean(0) - ref).abs().max().item():.4f}; "
          f"argmax agreement @T={T}: {agree:.3f}")
