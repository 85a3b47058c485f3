"""Optional native kernels, compiled on first use with the system C compiler.

The fused LIF loops of :mod:`spikeforge.functional.lif` have two implementations:
plain PyTorch ops (always available; the reference) and a small C file
(``lif_kernels.c``) that keeps each membrane in registers for the whole sequence.
The C file is compiled once per machine with ``cc -O3 -march=native -fopenmp`` (and
``-fno-trapping-math``: without it GCC 12 leaves the neuron loops scalar, since their
``H >= θ`` selects may not be if-converted; values are unchanged) into
the user cache (``$SPIKEFORGE_CACHE`` or ``~/.cache/spikeforge/kernels``) and loaded
with :mod:`ctypes`; no Python headers or build tools beyond a C compiler are needed.
If there is no compiler or the build fails, a warning is printed once and the
PyTorch path is used. ``SPIKEFORGE_NATIVE=0`` turns the native path off.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

_SOURCE = Path(__file__).with_name("lif_kernels.c")
_FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fno-trapping-math", "-fopenmp", "-shared", "-fPIC", "-std=c11"]
_lib: ctypes.CDLL | None = None
_tried = False

P, I64, F, I, D = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int, ctypes.POINTER(ctypes.c_double)
_FORWARD_ARGS = [P, I64, I64, I, F, F, F, I, P, P, P, P, F, I, I]
_BACKWARD_ARGS = [P, P, P, P, I64, I64, I, F, F, F, I, I, I, F, P, P, I, P, I]


def enabled() -> bool:
    return os.environ.get("SPIKEFORGE_NATIVE", "1") not in ("0", "false", "no", "off")


def cache_dir() -> Path:
    root = os.environ.get("SPIKEFORGE_CACHE")
    if root:
        return Path(root) / "kernels"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "spikeforge" / "kernels"


def _build(cc: str) -> Path:
    src = _SOURCE.read_bytes()
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    key = hashlib.sha256(src + " ".join(_FLAGS).encode() + version.encode() + platform.machine().encode()
                         + platform.node().encode()).hexdigest()[:16]
    out = cache_dir() / f"lif_kernels-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".lif_kernels.", suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        res = subprocess.run([cc, *_FLAGS, str(_SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            raise RuntimeError(f"{cc} failed: {res.stderr.strip()[-800:]}")
        os.replace(tmp, out)  # atomic: concurrent builders never see a half-written library
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out


def library() -> ctypes.CDLL | None:
    """The loaded kernel library, or None when unavailable (the PyTorch path is used)."""
    global _lib, _tried
    if _tried or not enabled():
        return _lib if enabled() else None
    _tried = True
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        warnings.warn("spikeforge: no C compiler found; using the (slower) PyTorch LIF path", stacklevel=2)
        return None
    try:
        lib = ctypes.CDLL(str(_build(cc)))
        for name in ("sf_lif_forward_f32", "sf_lif_forward_bf16"):
            getattr(lib, name).argtypes = _FORWARD_ARGS
            getattr(lib, name).restype = None
        for name in ("sf_lipool_f32", "sf_lipool_bf16"):
            getattr(lib, name).argtypes = [P, I64, I64, I64, I64, I, I, P, P, P, I]
            getattr(lib, name).restype = None
        for name in ("sf_lipool_cl_f32", "sf_lipool_cl_bf16"):
            getattr(lib, name).argtypes = [P, I64, I64, I64, I64, I64, I, I, P, P, P, I]
            getattr(lib, name).restype = None
        for name in ("sf_lif_backward_f32", "sf_lif_backward_bf16"):
            getattr(lib, name).argtypes = _BACKWARD_ARGS
            getattr(lib, name).restype = None
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        warnings.warn(f"spikeforge: native LIF kernels unavailable ({exc}); using the PyTorch path", stacklevel=2)
        return None
    _lib = lib
    return _lib
