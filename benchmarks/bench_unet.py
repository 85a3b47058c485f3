"""UNet segmentation: ANN vs converted SNN speed and memory on full 768×1024 slices.

Usage::

    python benchmarks/bench_unet.py [--checkpoint runs/unet-synth/unet.pt] [--T 32] \
        [--threads 2] [--repeats 3] [--json benchmarks/_out/unet.json]

Without a checkpoint a UNet of ``--width``/``--depth`` with random weights is used
(speed does not depend on the weights: the SNN runs dense operations). The SNN is
calibrated on synthetic-EM training patches and run as a stream over time
(``SpikingModel.stream``), keeping only the running mean of its output. Prints
slices/s of the ANN and of the SNN at T steps (medians of alternating repeats in this
one process), their ratio, the agreement of the binarized predictions and the peak
resident memory of the process (which bounds both runs).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from spikeforge._native.memory import keep_freed_memory
from spikeforge.convert import convert
from spikeforge.data.segmentation import PatchSampler, load_segmentation
from spikeforge.evaluate_segmentation import snn_mean_logits
from spikeforge.models import create_model
from spikeforge.train import load_checkpoint


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="unet.pt written by `spikeforge run unet-convert`")
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--T", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--percentile", type=float, default=99.0)
    ap.add_argument("--max-spikes", type=int, default=3)
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-keep-memory", action="store_true",
                    help="let glibc return freed buffers to the OS (spikeforge's runs keep them)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not args.no_keep_memory:
        keep_freed_memory()

    if args.checkpoint:
        payload = load_checkpoint(args.checkpoint, required=("model", "config"))
        model_kw = dict(payload["config"]["model"])
        model = create_model("unet", **model_kw)
        model.load_state_dict(payload["model"])
    else:
        model_kw = dict(width=args.width, depth=args.depth)
        torch.manual_seed(0)
        model = create_model("unet", **model_kw)
    model.eval().to(memory_format=torch.channels_last)

    train = load_segmentation("synthetic-em", "train", n_slices=2)
    test = load_segmentation("synthetic-em", "test", n_slices=1)
    x = test.image(0)  # [1, 1, 768, 1024]
    sampler = PatchSampler(train, 128, seed=1, augment=False)
    calib = [sampler.batch(b, 8)[0] for b in range(8)]
    snn = convert(model, calib, max_batches=None, percentile=args.percentile,
                  max_spikes=args.max_spikes, channels_last=True)
    rss_before = peak_rss_mb()

    def ann() -> torch.Tensor:
        with torch.no_grad():
            return model(x.contiguous(memory_format=torch.channels_last))

    def spiking() -> torch.Tensor:
        return snn_mean_logits(snn, x, [args.T])[0]

    ann_out, snn_out = ann(), spiking()  # warm-up
    times: dict[str, list[float]] = {"ann": [], "snn": []}
    for _ in range(args.repeats):
        for name, fn in (("ann", ann), ("snn", spiking)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    agree = float(((ann_out > 0) == (snn_out > 0)).float().mean())
    summary = {
        "slice_shape": list(x.shape[-2:]),
        "model": model_kw,
        "threads": args.threads,
        "T": args.T,
        "ann_slices_per_second": 1 / med["ann"],
        "snn_slices_per_second": 1 / med["snn"],
        "ann_over_snn": med["snn"] / med["ann"],
        "seconds": times,
        "pixel_agreement": agree,
        "peak_rss_mb": peak_rss_mb(),
        "peak_rss_mb_before_runs": rss_before,
        "chunk_steps": snn.chunk_size(args.T, 1, x[0].numel()),
        "keep_freed_memory": not args.no_keep_memory,
    }
    print(f"UNet {model_kw} on one {x.shape[-2]}×{x.shape[-1]} slice, threads={args.threads}, "
          f"median of {args.repeats}:")
    print(f"  ANN:        {summary['ann_slices_per_second']:.3f} slices/s   runs (s): "
          + ", ".join(f"{t:.2f}" for t in times["ann"]))
    print(f"  SNN T={args.T}:  {summary['snn_slices_per_second']:.4f} slices/s   runs (s): "
          + ", ".join(f"{t:.2f}" for t in times["snn"]))
    print(f"  ANN / SNN speed ratio: {summary['ann_over_snn']:.1f}x  (SNN per step: "
          f"{med['snn'] / args.T / med['ann']:.2f}x one ANN pass)")
    print(f"  binarized pixels equal to the ANN's at T={args.T}: {100 * agree:.3f} %")
    print(f"  peak RSS of the process: {summary['peak_rss_mb']:.0f} MiB "
          f"(before the timed runs: {rss_before:.0f} MiB; chunk of {summary['chunk_steps']} steps)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
