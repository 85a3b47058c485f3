"""Whether bfloat16 autocast pays on this machine.

bf16 autocast + channels-last is 3-4x faster than float32 for the conv nets here on a CPU
with native bfloat16 instructions (AVX512-BF16 or AMX), but about 10x *slower* on one
without them, where oneDNN emulates it (measured on an AVX2 EPYC: the fast CIFAR net
117 → 10 samples/s, ResNet-18 ×0.5 132 → 9). The recipes that train in bf16 therefore do
so only where the device computes it natively, unless told explicitly (``--bf16``,
``--precision bf16``).
"""

from __future__ import annotations

import functools

import torch

#: CPU flags (Linux /proc/cpuinfo) of native bfloat16 arithmetic: x86 (AVX512-BF16, AMX)
#: and Arm (the ``bf16`` feature of Armv8.6, e.g. Neoverse V1/V2).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def native_bf16(device: torch.device | str | None = None) -> bool:
    """Whether ``device`` (default: the CPU) computes bfloat16 natively."""
    dev = torch.device("cpu" if device is None else device)
    if dev.type == "cuda":
        # compute capability 8 (Ampere) and later; torch's is_bf16_supported() also says yes
        # where bf16 is merely emulated (V100, T4)
        return bool(torch.cuda.is_available() and torch.cuda.get_device_capability(dev)[0] >= 8)
    if dev.type == "cpu":
        return any(flag in cpu_flags() for flag in BF16_CPU_FLAGS)
    return False


def recipe_bf16(wanted: bool, device: torch.device | str | None = None, *,
                option: str = "--bf16") -> tuple[bool, str | None]:
    """A recipe's bf16 setting on ``device``: ``(bf16, note)``.

    Kept where the device computes bfloat16 natively; otherwise float32, with a note that
    says why (to print and to put in the report) and which ``option`` insists on bf16.
    """
    if not wanted or native_bf16(device):
        return wanted, None
    dev = torch.device("cpu" if device is None else device)
    flags = " or ".join(BF16_CPU_FLAGS)
    what = f"this CPU has no native bfloat16 arithmetic (no {flags} flag)" if dev.type == "cpu" \
        else f"{dev} has no native bfloat16 arithmetic"
    return False, (f"float32 instead of the recipe's bfloat16: {what}, where bfloat16 autocast runs slower "
                   f"than float32; ask for it with {option}")
