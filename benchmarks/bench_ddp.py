"""One process against N data-parallel processes (torchrun, gloo) training the same thing.

    python benchmarks/bench_ddp.py [--model lenet5|unet] [--procs 2] [--threads 2] [--repeats 2]

Each configuration trains from the same initial weights on the same global batches
(``train_classifier`` / ``train_segmenter``, synchronized BatchNorm under DDP):
one process with ``--threads`` threads, then ``--procs`` processes with
``threads // procs`` threads each (so both use the same cores), alternated ``--repeats``
times. Printed: the training wall time of each run (process start-up and data loading
excluded), the median throughput of each configuration, their ratio measured in this
run, the CPU seconds of all processes together (less sensitive to other work than
the wall time), the largest weight difference between the two (float tolerance expected: the
global batch is the same) and the load average, since other work on the machine
distorts the figures.
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
from pathlib import Path

HERE = Path(__file__).resolve()


def worker(args: argparse.Namespace) -> None:
    import torch

    from spikeforge import distributed
    from spikeforge.models import create_model

    torch.set_num_threads(args.threads)
    distributed.initialize(torch.device("cpu"))
    torch.manual_seed(0)
    if args.model == "lenet5":
        from spikeforge.data import load_dataset
        from spikeforge.train import train_classifier

        data = load_dataset("mnist-sample", "train")
        x, y = data.as_float()[: args.images], data.labels[: args.images]
        model = create_model("lenet5")
        t0, c0 = time.perf_counter(), time.process_time()
        train_classifier(model, (x, y), None, epochs=args.epochs, batch_size=args.batch_size, progress=False,
                         sync_bn=True, device="cpu")
        steps = args.epochs * -(-len(y) // args.batch_size)
        images = args.epochs * len(y)
    else:
        from spikeforge.data.segmentation import PatchSampler, load_segmentation
        from spikeforge.train.segmentation import train_segmenter

        sampler = PatchSampler(load_segmentation("synthetic-em", "train", n_slices=4, slice_shape=(256, 256)), 128)
        model = create_model("unet", width=8, depth=3)
        t0, c0 = time.perf_counter(), time.process_time()
        train_segmenter(model, sampler, steps=args.steps, batch_size=args.batch_size, progress=False, sync_bn=True,
                        log_every=args.steps, device="cpu")
        steps, images = args.steps, args.steps * args.batch_size
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    seconds = distributed.all_reduce_max(seconds)
    cpu = distributed.all_reduce_sum([cpu])[0]  # CPU seconds of all processes
    if distributed.is_main():
        torch.save(model.state_dict(), args.weights)
        print("RESULT " + json.dumps({"seconds": seconds, "cpu_seconds": cpu, "steps": steps, "images": images,
                                      "processes": distributed.world_size(), "threads": args.threads}))
    distributed.finalize()


def launch(args: argparse.Namespace, procs: int, weights: Path) -> dict:
    threads = args.threads if procs == 1 else max(1, args.threads // procs)
    common = [str(HERE), "--worker", "--model", args.model, "--threads", str(threads), "--weights", str(weights),
              "--images", str(args.images), "--epochs", str(args.epochs), "--steps", str(args.steps),
              "--batch-size", str(args.batch_size)]
    if procs == 1:
        cmd = [sys.executable, *common]
    else:
        cmd = [str(Path(sys.executable).with_name("torchrun")), "--standalone", f"--nproc-per-node={procs}", *common]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    line = next(l for l in done.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--weights", default="", help=argparse.SUPPRESS)
    p.add_argument("--model", choices=("lenet5", "unet"), default="lenet5")
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="threads of the one process (shared by the N processes)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--images", type=int, default=2048, help="lenet5: training images per epoch (MNIST sample)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--steps", type=int, default=8, help="unet: optimizer steps")
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    import torch

    runs: dict[int, list[dict]] = {1: [], args.procs: []}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {n: Path(tmp) / f"w{n}.pt" for n in runs}
        for r in range(args.repeats):
            for n in runs:
                res = launch(args, n, paths[n])
                runs[n].append(res)
                print(f"repeat {r + 1}: {n} process(es) × {res['threads']} thread(s): {res['seconds']:.2f} s "
                      f"({res['images'] / res['seconds']:.0f} images/s), {res['cpu_seconds']:.2f} CPU s; "
                      f"load average {os.getloadavg()[0]:.2f}", flush=True)
        a, b = torch.load(paths[1]), torch.load(paths[args.procs])
        diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())
    ips = {n: statistics.median(x["images"] / x["seconds"] for x in rs) for n, rs in runs.items()}
    cpu = {n: statistics.median(x["cpu_seconds"] for x in rs) for n, rs in runs.items()}
    print(f"{args.model}, global batch {args.batch_size}: 1 process {ips[1]:.0f} images/s, {args.procs} processes "
          f"{ips[args.procs]:.0f} images/s; wall ratio {args.procs}/1 = {ips[args.procs] / ips[1]:.2f}; CPU seconds "
          f"{cpu[1]:.2f} vs {cpu[args.procs]:.2f} (ratio {cpu[args.procs] / cpu[1]:.2f}); medians of {args.repeats}; "
          f"largest weight difference {diff:.2e}; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
