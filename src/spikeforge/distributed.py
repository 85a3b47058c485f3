"""Several processes training one model (data parallel, ``torch.distributed``), and devices.

A run started by ``torchrun --nproc-per-node N -m spikeforge run ...`` has ``WORLD_SIZE``
> 1 in its environment; :func:`initialize` then joins the process group torchrun
describes (gloo for CPU tensors, NCCL for CUDA). Every rank runs the whole experiment
on the same data in the same order: each global batch is drawn and augmented
identically on every rank and each rank trains on its contiguous share
(:func:`shard_bounds`), so a run on N processes sees the batches of a one-process run
with the same global batch size. Only rank 0 writes files (:func:`is_main`; the atomic
writers of :mod:`spikeforge.io` and :mod:`spikeforge.train.checkpoint` check it).

Outside torchrun every helper is the one-process identity (rank 0 of 1).
"""

from __future__ import annotations

import datetime
import os
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import nn

from spikeforge.errors import ConfigError

__all__ = [
    "DEVICE_HELP", "active", "all_gather_rows", "all_reduce_sum", "all_reduce_tensor", "barrier", "env_world_size", "finalize",
    "initialize", "is_main", "rank", "resolve_device", "shard_bounds", "sync_batchnorm", "world_size",
]

DEVICE_HELP = ("where to compute: auto (a CUDA GPU when one is visible, else the CPU), cpu, cuda or cuda:K; "
               "under torchrun, cuda means the GPU of the process's LOCAL_RANK")


def env_world_size() -> int:
    """Number of processes torchrun started (1 outside torchrun)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def local_rank() -> int:
    try:
        return int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        return 0


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:K`` as a :class:`torch.device`, checked against this machine.

    ``cuda`` without an index is the GPU of this process's ``LOCAL_RANK`` (0 outside
    torchrun). A CUDA device that is not there raises :class:`ConfigError` naming it.
    """
    if spec is None:
        spec = "auto"
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = str(spec).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank() % torch.cuda.device_count())
        return torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        index: int | None = None
        if text != "cuda":
            try:
                index = int(text[5:])
            except ValueError:
                raise ConfigError(f"--device {spec!r}: expected cuda:K with an integer K") from None
            if index < 0:
                raise ConfigError(f"--device {spec!r}: the GPU index must be >= 0")
        if not torch.cuda.is_available():
            why = "this PyTorch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ConfigError(f"--device {spec}: {why}; use --device cpu (or auto)")
        count = torch.cuda.device_count()
        if index is None:
            index = local_rank()
        if index >= count:
            raise ConfigError(f"--device {spec}: GPU {index} does not exist (this machine shows {count})")
        return torch.device("cuda", index)
    raise ConfigError(f"--device {spec!r}: expected auto, cpu, cuda or cuda:K")


def initialize(device: torch.device | None = None) -> bool:
    """Join torchrun's process group when there is one (``WORLD_SIZE`` > 1); True when joined.

    The backend is NCCL for a CUDA ``device`` and gloo otherwise. Calling it again is harmless.
    """
    if env_world_size() <= 1 or not dist.is_available():
        return False
    if dist.is_initialized():
        return True
    backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(device)
    minutes = float(os.environ.get("SPIKEFORGE_DIST_TIMEOUT_MINUTES", "30"))
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=minutes))
    return True


def finalize() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0, the one process that writes files (always True outside a process group)."""
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def shard_bounds(n: int, *, ranks: int | None = None, index: int | None = None) -> tuple[int, int]:
    """``(start, end)`` of this rank's contiguous share of ``n`` items (sizes differ by at most one)."""
    ranks = world_size() if ranks is None else ranks
    index = rank() if index is None else index
    base, extra = divmod(n, ranks)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


def _comm_device() -> torch.device:
    if active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: Sequence[float] | torch.Tensor) -> list[float]:
    """Element-wise sum over the ranks (float64), returned as Python floats."""
    t = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if active():
        t = t.to(_comm_device())
        dist.all_reduce(t)
    return [float(v) for v in t.cpu()]


def all_reduce_tensor(t: torch.Tensor) -> torch.Tensor:
    """Differentiable element-wise sum of ``t`` over the ranks (``t`` itself outside a group).

    The gradient of every rank's copy of the sum flows back to every rank's summand:
    a loss computed alike on all ranks from global sums, weighted as the engine
    weights a rank's share, gets DDP's averaged gradient right (see
    :func:`spikeforge.train.segmentation.bce_dice_loss`).
    """
    if not active():
        return t
    from torch.distributed.nn.functional import all_reduce as differentiable_all_reduce

    return differentiable_all_reduce(t)


def all_reduce_max(value: float) -> float:
    t = torch.tensor([float(value)], dtype=torch.float64)
    if active():
        t = t.to(_comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.cpu()[0])


def all_gather_rows(obj: Any) -> list[Any]:
    """One picklable object from every rank, in rank order ([obj] outside a group)."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


# --------------------------------------------------------------------------- synchronized BatchNorm


def _sync_bn_forward(self: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm over the global batch of all ranks (statistics all-reduced, gradients too)."""
    if not (self.training and active()):
        return type(self).forward(self, x)
    from torch.distributed.nn.functional import all_reduce as differentiable_all_reduce

    C = x.shape[1]
    dims = [0, *range(2, x.dim())]
    shape = [1, C] + [1] * (x.dim() - 2)
    xf = x.float()
    local = torch.cat([xf.sum(dims), xf.new_tensor([x.numel() / C])])
    total = differentiable_all_reduce(local)
    count = total[-1].detach()
    mean = total[:-1] / count
    centred = xf - mean.view(shape)
    var = differentiable_all_reduce((centred * centred).sum(dims)) / count
    if self.track_running_stats and self.running_mean is not None:
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            factor = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
            n = float(count)
            unbiased = var.detach() * (n / max(n - 1.0, 1.0))
            self.running_mean.mul_(1 - factor).add_(mean.detach().to(self.running_mean.dtype), alpha=factor)
            self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
    y = centred * torch.rsqrt(var + self.eps).view(shape)
    if self.affine:
        y = y * self.weight.view(shape) + self.bias.view(shape)
    return y.to(x.dtype)


class sync_batchnorm:
    """Context: every BatchNorm of ``model`` normalizes over the global batch of all ranks.

    Works with every backend (gloo on CPU included, unlike ``nn.SyncBatchNorm``): the
    per-channel sums and squared deviations are all-reduced with differentiable
    collectives. The modules keep their class and state dict; leaving the context
    restores their own ``forward``. Outside a process group it changes nothing.
    """

    def __init__(self, model: nn.Module, enabled: bool = True) -> None:
        self.modules = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] \
            if enabled else []

    def __enter__(self) -> "sync_batchnorm":
        for m in self.modules:
            m.forward = _sync_bn_forward.__get__(m)  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: Any) -> None:
        for m in self.modules:
            m.__dict__.pop("forward", None)


# --------------------------------------------------------------------------- differentiable gather


class _GatherRows(torch.autograd.Function):
    """All ranks' rows in rank order; the gradient of every rank's copy flows back to its owner."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:  # type: ignore[override]
        ctx.sizes = sizes
        biggest = max(sizes)
        padded = x.new_zeros((biggest, *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad)  # every rank computed the same loss of all rows: add their gradients
        start = sum(ctx.sizes[: rank()])
        return grad[start:start + ctx.sizes[rank()]], None


def gather_rows(x: torch.Tensor, global_rows: int) -> torch.Tensor:
    """The rows of ``x`` from every rank, concatenated in rank order (differentiable).

    ``x`` is this rank's share (:func:`shard_bounds`) of ``global_rows`` rows. A loss of
    the gathered rows computed alike on every rank gives each rank the gradient of its
    own rows summed over the ranks (so DDP's average is the one-process gradient).
    Outside a process group, ``x`` itself.
    """
    if not active():
        return x
    sizes = tuple(e - s for s, e in (shard_bounds(global_rows, index=r) for r in range(world_size())))
    return _GatherRows.apply(x, sizes)
