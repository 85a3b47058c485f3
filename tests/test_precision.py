"""bf16 only where the hardware computes it natively (else it is ~10x slower than float32 on a CPU)."""

from __future__ import annotations

import pytest

from spikeforge import precision
from spikeforge.precision import cpu_flags, native_bf16, recipe_bf16


@pytest.mark.parametrize("flags, native", [
    ({"avx2", "fma", "avx512f", "avx512bw"}, False),  # AVX-512 without its bf16 instructions
    ({"avx2", "avx512f", "avx512_bf16"}, True),
    ({"amx_tile", "amx_bf16"}, True),
    ({"fp", "asimd", "sve", "bf16", "i8mm"}, True),  # Arm Neoverse V1 (the Features line)
    ({"fp", "asimd", "sve"}, False),
    (set(), False),  # no /proc/cpuinfo (macOS, Windows): float32
])
def test_native_bf16_follows_the_cpu_flags(monkeypatch, flags, native):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
    assert native_bf16() is native and native_bf16("cpu") is native
    bf16, note = recipe_bf16(True)
    assert bf16 is native and (note is None) is native
    if not native:
        assert "no native bfloat16" in note and "--bf16" in note
    assert recipe_bf16(False) == (False, None)  # a float32 recipe stays float32


def test_cpu_flags_reads_this_machine():
    flags = cpu_flags()
    assert isinstance(flags, frozenset)
    try:
        text = open("/proc/cpuinfo", encoding="utf-8").read()
    except OSError:
        assert flags == frozenset()
        return
    if "\nflags" in "\n" + text:
        assert {"fpu"} <= flags or {"sse2"} <= flags  # every x86-64 has these


def test_the_note_names_the_option_that_insists():
    bf16, note = recipe_bf16(True, "meta", option="--snn-bf16")  # a device with no native bf16
    assert bf16 is False and note.endswith("ask for it with --snn-bf16")


@pytest.mark.parametrize("capability, native", [((7, 0), False), ((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_cuda_bf16_needs_ampere_or_later(monkeypatch, capability, native):
    """V100 / T4 emulate bf16 (torch's is_bf16_supported() says yes there); A100 and later do not."""
    import torch

    seen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda dev=None: seen.append(dev) or capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert native_bf16("cuda:1") is native and seen == [torch.device("cuda:1")]
