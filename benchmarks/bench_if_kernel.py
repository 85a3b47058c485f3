"""The converter's IF neuron or spiking max-pool: native kernel (this checkout, or a baseline) against the PyTorch path.

Usage::

    python benchmarks/bench_if_kernel.py [--shapes 14,500,6,28,28 14,500,16,10,10] [--repeats 7] \
        [--baseline-flags "-O3 -march=native -ffp-contract=off -fopenmp -shared -fPIC -std=c11"]
    python benchmarks/bench_if_kernel.py --op lipool --baseline-src /tmp/sf-base/src --channels-last

``--op lipool`` times the lateral-inhibition 2×2 max-pool (``SpikingMaxPool2d``) on θ-scaled
spikes instead; ``--op plif-backward`` the surrogate-gradient backward pass of a LIF layer with
a learnable decay β (``ParametricLIF``: dL/dX and dL/dβ; checks dL/dβ against the PyTorch path); ``--baseline-src`` runs the baseline with another source tree (its own kernel
file and flags) instead of other flags.

Each setting runs in its own process (the kernel library is loaded once per process):
``native`` (the flags in ``spikeforge._native``), ``native-baseline`` (``--baseline-flags``,
built into a separate cache folder) and ``torch`` (``SPIKEFORGE_NATIVE=0``). Every process
runs ``if_seq`` (scalar threshold, soft reset, v0 = θ/2, θ-scaled spikes: what a converted
layer runs) on the same random currents ``[T, N, C, H, W]``, checks that the spikes equal the
PyTorch path's, and reports the median time of ``--repeats`` runs after a warm-up. glibc keeps
freed memory (as the SNN evaluation does) so that page faults do not dominate. Prints
ratios against the PyTorch path measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def pool_worker(shape: list[int], repeats: int, threads: int, channels_last: bool) -> None:
    import torch

    from spikeforge import _native
    from spikeforge._native.memory import keep_freed_memory
    from spikeforge.layers import SpikingMaxPool2d

    keep_freed_memory()
    torch.set_num_threads(threads)
    T, N = shape[0], shape[1]
    x = (torch.rand(*shape, generator=torch.Generator().manual_seed(0)) < 0.2).float() * 1.5
    if channels_last:
        x = x.reshape(T * N, *shape[2:]).contiguous(memory_format=torch.channels_last).view(*shape)

    def run():
        return SpikingMaxPool2d(2)(x)

    native = _native.enabled() and SpikingMaxPool2d(2)._lipool_native(x[:1]) is not None
    first = run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"seconds": statistics.median(times), "native": native,
                      "checksum": float(first.double().sum()), "same_as_torch": None}))


def plif_worker(shape: list[int], repeats: int, threads: int) -> None:
    import torch

    from spikeforge import _native
    from spikeforge._native.memory import keep_freed_memory
    from spikeforge.functional.lif import lif_seq

    keep_freed_memory()
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen) * 1.5
    grad = torch.randn(*shape, generator=gen)
    beta = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)

    def run(backend: str = "auto"):
        beta.grad = None
        s, _, _ = lif_seq(x, beta=beta, threshold=1.0, decay_input=True, backend=backend)
        t0 = time.perf_counter()
        s.backward(grad)
        return time.perf_counter() - t0, float(beta.grad)

    _, ref = run("torch")
    _, got = run()
    times = [run()[0] for _ in range(repeats)]
    native = _native.enabled() and _native.library() is not None
    print(json.dumps({"seconds": statistics.median(times), "native": native, "same_as_torch": None,
                      "checksum": got, "torch_gbeta": ref}))


def worker(shape: list[int], repeats: int, threads: int, flags: str | None) -> None:
    import torch

    from spikeforge import _native
    from spikeforge._native.memory import keep_freed_memory
    from spikeforge.functional.lif import if_forward_native
    from spikeforge.functional.neuron import if_seq

    if flags:
        _native._FLAGS = flags.split()
    keep_freed_memory()
    torch.set_num_threads(threads)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 2
    th = torch.full((shape[2],) + (1,) * (len(shape) - 3), 1.5)  # per channel: the PyTorch path, same values
    ref, _ = if_seq(x, threshold=th, v_init=0.5, reset="subtract", scale_output=True)
    native = _native.enabled() and _native.library() is not None

    def run():
        return if_seq(x, threshold=1.5, v_init=0.5, reset="subtract", scale_output=True)[0]

    if native and if_forward_native(x[:1], threshold=1.5, v=None, v_init=0.5, reset="subtract", steps=None,
                                    scale_output=True) is None:
        native = False
    same = bool(torch.equal(run(), ref))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"seconds": statistics.median(times), "native": native, "same_as_torch": same}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", nargs="+", default=["14,500,6,28,28", "14,500,16,10,10", "8,256,64,32,32"])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--baseline-flags", default="-O3 -march=native -ffp-contract=off -fopenmp -shared -fPIC -std=c11")
    p.add_argument("--baseline-src", default=None, help="a src/ folder: the baseline runs that tree's kernels")
    p.add_argument("--op", choices=("if", "lipool", "plif-backward"), default="if")
    p.add_argument("--channels-last", action="store_true", help="lipool: channels-last time slices")
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        shape, flags = args.worker
        dims = [int(s) for s in shape.split(",")]
        if args.op == "lipool":
            pool_worker(dims, args.repeats, args.threads, args.channels_last)
        elif args.op == "plif-backward":
            plif_worker(dims, args.repeats, args.threads)
        else:
            worker(dims, args.repeats, args.threads, flags or None)
        return
    if args.op == "plif-backward" and args.shapes == p.get_default("shapes"):
        args.shapes = ["8,128,800", "8,64,64,16,16", "25,128,256"]  # fc, conv and longer-T layers
    base_cache = tempfile.mkdtemp(prefix="sf-kernels-baseline-")
    base_env = {"SPIKEFORGE_CACHE": base_cache}
    if args.baseline_src:
        base_env["PYTHONPATH"] = args.baseline_src
    settings = {
        "torch": ({"SPIKEFORGE_NATIVE": "0"}, ""),
        "native-baseline": (base_env, "" if args.baseline_src else args.baseline_flags),
        "native": ({}, ""),
    }
    print(f"op={args.op} threads={args.threads}; baseline: "
          + (f"source {args.baseline_src}" if args.baseline_src else f"flags {args.baseline_flags}"))
    for shape in args.shapes:
        got = {}
        for name, (env, flags) in settings.items():
            extra = ["--op", args.op] + (["--channels-last"] if args.channels_last else [])
            out = subprocess.run([sys.executable, __file__, "--worker", shape, flags, "--repeats", str(args.repeats),
                                  "--threads", str(args.threads), *extra], env={**os.environ, **env},
                                 capture_output=True, text=True, check=True).stdout
            got[name] = json.loads(out.strip().splitlines()[-1])
        base = got["torch"]["seconds"]
        numel = 1
        for s in shape.split(","):
            numel *= int(s)
        print(f"[{shape}] ({numel / 1e6:.1f} M elements)")
        for name, r in got.items():
            ran = "native kernel" if r["native"] else "PyTorch path"
            check = (f"spikes {'==' if r['same_as_torch'] else '!='} PyTorch path" if r["same_as_torch"] is not None
                     else f"dL/dbeta {r['checksum']:.8g} (PyTorch path {r['torch_gbeta']:.8g})"
                     if "torch_gbeta" in r else f"output sum {r['checksum']:.6g}")
            print(f"  {name:16s} {1e3 * r['seconds']:8.1f} ms  {base / r['seconds']:5.2f}x torch  ({ran}; {check})")


if __name__ == "__main__":
    main()
