"""UNet segmentation: ANN vs converted SNN speed and memory on full 768×1024 slices.

Usage::

    python benchmarks/bench_unet.py [--checkpoint runs/unet-synth/unet.pt] [--T 32] \
        [--threads 2] [--repeats 3] [--baseline-rev db75b76] [--json benchmarks/_out/unet.json]

Without a checkpoint a UNet of ``--width``/``--depth`` with random weights is used
(speed does not depend on the weights: the SNN runs dense operations). The SNN is
calibrated on synthetic-EM training patches and run as a stream over time
(``SpikingModel.stream``), keeping only the running mean of its output.

In one process, alternating repeats, it times (median of ``--repeats``; wall clock
and the CPU time of the process that ran it):

- the ANN in float32 (the reference) and under bfloat16 autocast;
- the SNN at T steps on this checkout, float32 and bfloat16 convolutions;
- the SNN at T steps on the *baseline* code (``--baseline-rev``, default the commit
  before the issue-13 speed work), run in a worker process that imports spikeforge
  from ``git archive`` of that revision, fed the same weights, calibration patches
  and slice, and timed in turn with the others (``--no-baseline`` skips it).

Prints slices/s, the SNN speed-up over the baseline, SNN/ANN cost ratios in the same
precision and across precisions, the agreement of the binarized predictions with
the float32 ANN and between the SNN paths, the peak resident memory, and the load
average before and after (other jobs on the machine slow both sides of a ratio, but
not always equally: the CPU-time ratios are the steadier figures on a busy machine).
``--dataset lucchi --data-dir DIR`` times a real Lucchi slice (default the last
training slice) with calibration patches from the first two.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from spikeforge._native.memory import keep_freed_memory
from spikeforge.convert import convert
from spikeforge.data.segmentation import PatchSampler, load_segmentation
from spikeforge.evaluate_segmentation import snn_mean_logits
from spikeforge.models import create_model
from spikeforge.train import load_checkpoint

#: The last commit before the issue-13 speed work (native channels-last/bf16 LIPool, bf16 SNN).
BASELINE_REV = "db75b76"
ROOT = Path(__file__).resolve().parents[1]

# The baseline worker: imports the old spikeforge (PYTHONPATH), converts the same model
# with the same options, then answers "run" with the timings of one SNN pass.
WORKER = r"""
import json, sys, time, torch
import spikeforge
from spikeforge._native.memory import keep_freed_memory
from spikeforge.convert import convert
from spikeforge.evaluate_segmentation import snn_mean_logits
from spikeforge.models import create_model
from spikeforge import _native
job = torch.load(sys.argv[1])
torch.set_num_threads(job["threads"])
if job["keep_memory"]:
    keep_freed_memory()
model = create_model("unet", **job["model_kw"])
model.load_state_dict(job["state"])
model.eval().to(memory_format=torch.channels_last)
snn = convert(model, job["calib"], max_batches=None, percentile=job["percentile"],
              max_spikes=job["max_spikes"], channels_last=True)
x, T = job["x"], job["T"]
out = snn_mean_logits(snn, x, [T])[0]  # warm-up
torch.save(out, job["out"])
print(json.dumps({"ready": spikeforge.__file__, "native": _native.library() is not None}), flush=True)
for line in sys.stdin:
    if line.strip() != "run":
        break
    w, c = time.perf_counter(), time.process_time()
    snn_mean_logits(snn, x, [T])
    print(json.dumps({"wall": time.perf_counter() - w, "cpu": time.process_time() - c}), flush=True)
"""


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


class Baseline:
    """The SNN of another revision, in a worker process."""

    def __init__(self, rev: str, job: dict, tmp: Path) -> None:
        src = tmp / "baseline"
        src.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], capture_output=True, check=True)
        tar_path = tmp / "baseline.tar"
        tar_path.write_bytes(archive.stdout)
        with tarfile.open(tar_path) as tar:
            tar.extractall(src, filter="data")
        self.commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev], capture_output=True,
                                     text=True, check=True).stdout.strip()
        job_path, self.out_path = tmp / "job.pt", tmp / "baseline_out.pt"
        torch.save({**job, "out": str(self.out_path)}, job_path)
        env = dict(os.environ, PYTHONPATH=str(src / "src"))
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER, str(job_path)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=str(tmp))
        ready = json.loads(self._line())
        if not ready["ready"].startswith(str(src)):
            raise RuntimeError(f"the baseline worker imported {ready['ready']}, not the {rev} archive")
        self.native = ready["native"]

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the baseline worker stopped (see its stderr above)")
        return line

    def run(self) -> tuple[float, float]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        r = json.loads(self._line())
        return r["wall"], r["cpu"]

    def output(self) -> torch.Tensor:
        return torch.load(self.out_path)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


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
    ap.add_argument("--dataset", choices=("synthetic-em", "lucchi"), default="synthetic-em",
                    help="where the slice and the calibration patches come from")
    ap.add_argument("--data-dir", default=None, help="Lucchi folder (with --dataset lucchi)")
    ap.add_argument("--slice", type=int, default=-1,
                    help="Lucchi training slice timed (default the last: held out by --val-slices)")
    ap.add_argument("--baseline-rev", default=BASELINE_REV, help="revision of the 'current path' SNN")
    ap.add_argument("--no-baseline", action="store_true", help="skip the baseline worker")
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-keep-memory", action="store_true",
                    help="let glibc return freed buffers to the OS (spikeforge's runs keep them)")
    args = ap.parse_args()
    load_start = os.getloadavg()[0]
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

    if args.dataset == "lucchi":
        data = load_segmentation("lucchi", "train", data_dir=args.data_dir)
        x = data.image(args.slice % len(data))  # [1, 1, 768, 1024]
        train = data.subset([0, 1])  # calibration patches from the first slices (not held out)
    else:
        train = load_segmentation("synthetic-em", "train", n_slices=2)
        x = load_segmentation("synthetic-em", "test", n_slices=1).image(0)  # [1, 1, 768, 1024]
    sampler = PatchSampler(train, 128, seed=1, augment=False)
    calib = [sampler.batch(b, 8)[0] for b in range(8)]
    snn = convert(model, calib, max_batches=None, percentile=args.percentile,
                  max_spikes=args.max_spikes, channels_last=True)
    xc = x.contiguous(memory_format=torch.channels_last)

    def ann(bf16: bool) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return model(xc).float()
        return run

    def spiking(bf16: bool) -> Callable[[], torch.Tensor]:
        return lambda: snn_mean_logits(snn, x, [args.T], bf16=bf16)[0]

    runs: dict[str, Callable[[], object]] = {
        "ann_fp32": ann(False), "ann_bf16": ann(True), "snn_fp32": spiking(False), "snn_bf16": spiking(True),
    }
    outputs = {name: fn() for name, fn in runs.items()}  # warm-up
    baseline = None
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_baseline:
            job = dict(model_kw=model_kw, state=model.state_dict(), calib=calib, x=x, T=args.T,
                       threads=args.threads, percentile=args.percentile, max_spikes=args.max_spikes,
                       keep_memory=not args.no_keep_memory)
            baseline = Baseline(args.baseline_rev, job, Path(tmp))
            runs = {"snn_baseline": baseline.run, **runs}
            outputs["snn_baseline"] = baseline.output()
        rss_before = peak_rss_mb()
        wall: dict[str, list[float]] = {k: [] for k in runs}
        cpu: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(args.repeats):
            for name, fn in runs.items():
                w, c = fn() if name == "snn_baseline" else timed(fn)  # type: ignore[misc]
                wall[name].append(w)
                cpu[name].append(c)
        if baseline is not None:
            baseline.close()
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}

    def agree(a: str, b: str) -> float:
        return float(((outputs[a] > 0) == (outputs[b] > 0)).float().mean())

    summary: dict[str, object] = {
        "dataset": args.dataset,
        "slice_shape": list(x.shape[-2:]),
        "model": model_kw,
        "threads": args.threads,
        "T": args.T,
        "max_spikes": args.max_spikes,
        "baseline": None if baseline is None else {"rev": baseline.commit, "native_kernels": baseline.native},
        "slices_per_second": {k: 1 / v for k, v in med.items()},
        "seconds_wall": wall,
        "seconds_cpu": cpu,
        "snn_over_ann": {
            "fp32_vs_fp32": med["snn_fp32"] / med["ann_fp32"],
            "bf16_vs_bf16": med["snn_bf16"] / med["ann_bf16"],
            "bf16_vs_fp32_ann": med["snn_bf16"] / med["ann_fp32"],
        },
        "snn_over_ann_cpu": {
            "fp32_vs_fp32": med_cpu["snn_fp32"] / med_cpu["ann_fp32"],
            "bf16_vs_bf16": med_cpu["snn_bf16"] / med_cpu["ann_bf16"],
            "bf16_vs_fp32_ann": med_cpu["snn_bf16"] / med_cpu["ann_fp32"],
        },
        "pixel_agreement_with_ann_fp32": {k: agree(k, "ann_fp32") for k in outputs if k != "ann_fp32"},
        "peak_rss_mb": peak_rss_mb(),
        "peak_rss_mb_before_runs": rss_before,
        "chunk_steps": snn.chunk_size(args.T, 1, x[0].numel()),
        "keep_freed_memory": not args.no_keep_memory,
        "load_average_1min": [load_start, os.getloadavg()[0]],
    }
    if baseline is not None:
        summary["speedup_over_baseline"] = {k: med["snn_baseline"] / med[k] for k in ("snn_fp32", "snn_bf16")}
        summary["speedup_over_baseline_cpu"] = {k: med_cpu["snn_baseline"] / med_cpu[k]
                                                for k in ("snn_fp32", "snn_bf16")}
        summary["pixel_agreement_fp32_with_baseline"] = agree("snn_fp32", "snn_baseline")

    print(f"UNet {model_kw} on one {x.shape[-2]}×{x.shape[-1]} slice, threads={args.threads}, "
          f"T={args.T}, Γ={args.max_spikes}, median of {args.repeats} (wall s | CPU s of the running process):")
    labels = {
        "snn_baseline": f"SNN fp32, baseline {summary['baseline']['rev'] if baseline else ''} (current path)",
        "ann_fp32": "ANN fp32", "ann_bf16": "ANN bf16 autocast",
        "snn_fp32": "SNN fp32 (this checkout)", "snn_bf16": "SNN bf16 convolutions (this checkout)",
    }
    for k in runs:
        print(f"  {labels[k]:<40} {1 / med[k]:8.4f} slices/s   wall {', '.join(f'{t:.2f}' for t in wall[k])}"
              f"   cpu {', '.join(f'{t:.2f}' for t in cpu[k])}")
    if baseline is not None:
        s, sc = summary["speedup_over_baseline"], summary["speedup_over_baseline_cpu"]
        print(f"  SNN speed-up over the baseline: fp32 {s['snn_fp32']:.2f}x, bf16 {s['snn_bf16']:.2f}x "
              f"(CPU time: {sc['snn_fp32']:.2f}x, {sc['snn_bf16']:.2f}x); baseline native kernels: {baseline.native}")
    r, rc = summary["snn_over_ann"], summary["snn_over_ann_cpu"]
    print(f"  SNN T={args.T} / ANN cost: fp32/fp32 {r['fp32_vs_fp32']:.1f}x, bf16/bf16 {r['bf16_vs_bf16']:.1f}x, "
          f"bf16 SNN / fp32 ANN {r['bf16_vs_fp32_ann']:.1f}x  (CPU time: {rc['fp32_vs_fp32']:.1f}x, "
          f"{rc['bf16_vs_bf16']:.1f}x, {rc['bf16_vs_fp32_ann']:.1f}x)")
    for k, v in summary["pixel_agreement_with_ann_fp32"].items():  # type: ignore[union-attr]
        print(f"  binarized pixels of {labels[k]} equal to the fp32 ANN's: {100 * v:.3f} %")
    if baseline is not None:
        print(f"  binarized pixels of the fp32 SNN equal to the baseline SNN's: "
              f"{100 * summary['pixel_agreement_fp32_with_baseline']:.4f} %")
    print(f"  peak RSS of this process: {summary['peak_rss_mb']:.0f} MiB "
          f"(before the timed runs: {rss_before:.0f} MiB; chunk of {summary['chunk_steps']} steps)")
    print(f"  load average (1 min) before / after: {load_start:.2f} / {os.getloadavg()[0]:.2f} on "
          f"{os.cpu_count()} CPUs")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
