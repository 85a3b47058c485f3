"""Cost of the spike statistics: evaluation time with and without SpikeStats hooks.

Times the evaluation of an (untrained, random-weight) converted LeNet5 (max- and
average-pooling, ``evaluate_snn`` with ``spike_stats`` off and on) and the test pass
of the fc-lif and csnn networks with and without the hooks, on MNIST-sample test
images. Runs alternate between the two settings; the medians of CPU time (process
time, robust when other jobs share the machine) and wall time are reported with
their ratio::

    python benchmarks/bench_spike_stats.py --images 500 --T 32 --repeats 5 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from spikeforge import convert
from spikeforge.evaluate import evaluate_snn
from spikeforge.experiments.common import load_split_tensors
from spikeforge.metrics.spikes import SpikeStats
from spikeforge.models import create_model


def measure(fn, repeats: int, setup_on, setup_off) -> dict[str, float]:
    cpu = {False: [], True: []}
    wall = {False: [], True: []}
    fn()  # warm-up
    for rep in range(repeats):
        for flag in ((False, True) if rep % 2 == 0 else (True, False)):
            (setup_on if flag else setup_off)()
            c0, w0 = time.process_time(), time.perf_counter()
            fn(flag)
            cpu[flag].append(time.process_time() - c0)
            wall[flag].append(time.perf_counter() - w0)
    setup_off()
    out = {}
    for key, d in (("cpu", cpu), ("wall", wall)):
        a, b = statistics.median(d[False]), statistics.median(d[True])
        out.update({f"{key}_without": a, f"{key}_with": b, f"{key}_ratio": b / a})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--T", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    train, test, _ = load_split_tensors("mnist-sample", None, 0)
    x, y = test[0][: args.images], test[1][: args.images]
    rows = {}
    for pool in ("max", "avg"):
        snn = convert(create_model("lenet5", pool=pool).eval(), train[0][:512])
        rows[f"LeNet5 {pool}-pool converted, evaluate_snn T={args.T}"] = measure(
            lambda flag=False: evaluate_snn(snn, x, y, args.T, spike_stats=flag), args.repeats, lambda: None,
            lambda: None)
    for name, kw, shape in (("fc-lif", dict(T=25), (-1, 784)), ("csnn", dict(T=4, channels=64), (-1, 1, 28, 28))):
        model = create_model(name, **kw).eval()
        stats = SpikeStats(model)
        xs = x.reshape(*shape)

        def run(flag=False, model=model, xs=xs):
            with torch.no_grad():
                for i in range(0, len(xs), 250):
                    model(xs[i : i + 250])

        rows[f"{name} test pass (T={kw['T']})"] = measure(run, args.repeats, stats.attach, stats.detach)
    print(f"{args.images} images, {args.threads} thread(s), median of {args.repeats} runs each")
    print("| network | CPU s without | CPU s with | ratio | wall s without | wall s with | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['cpu_without']:.3f} | {r['cpu_with']:.3f} | {r['cpu_ratio']:.3f} | "
              f"{r['wall_without']:.3f} | {r['wall_with']:.3f} | {r['wall_ratio']:.3f} |")


if __name__ == "__main__":
    main()
