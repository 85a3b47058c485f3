"""bf16 only where the hardware computes it natively (else it is ~10x slower than float32 on a CPU)."""

from __future__ import annotations

import pytest

from spikeforge import precision
from spikeforge.precision import cpu_flags, native_bf16, recipe_bf16


@pytest.mark.parametrize("flags, native", [
    ({"avx2", "fma", "avx512f", "avx512bw"}, False),  # AVX-512 without its bf16 instructions
    ({"avx2", "avx512f", "avx512_bf16"}, True),
    ({"amx_tile", "amx_bf16"}, True),
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
