"""Keep freed memory in the process heap during training (glibc only).

PyTorch's CPU allocator returns large tensors to the operating system as soon as
they are freed, and glibc serves every allocation above a threshold with a fresh
``mmap``: each training step then pays page faults (the kernel zeroing every page)
for the same activation buffers again. On this project's 2-core machines a 51 MB
buffer cost ~15 ms to allocate and touch, more than the neuron update written into it.
:func:`keep_freed_memory` tells glibc to serve large blocks from the heap and not to
trim it, so buffers freed by one step are reused by the next without page faults.
Peak memory is unchanged; memory is returned to the OS when the process exits.
Training (``fit_snn``), the SNN's runs (:meth:`SpikingModel.stream`) and the UNet
experiment apply it; ``SPIKEFORGE_KEEP_FREED_MEMORY=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
_done = False
_unavailable = False  # no glibc mallopt here: not looked up again (every SNN run calls this)


def keep_freed_memory() -> bool:
    """Apply the glibc settings once; False where glibc's ``mallopt`` is not available or
    ``SPIKEFORGE_KEEP_FREED_MEMORY=0`` says not to."""
    global _done, _unavailable
    if _done:
        return True
    if _unavailable or os.environ.get("SPIKEFORGE_KEEP_FREED_MEMORY", "1").lower() in ("0", "false", "no", "off"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        _unavailable = True
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    _done = ok
    _unavailable = not ok
    return ok
