"""Conversion time of the layer-wise corrections: this checkout against a baseline source tree.

Usage::

    git worktree add /tmp/sf-base <commit>          # the code to compare against
    python benchmarks/bench_correction.py --baseline-src /tmp/sf-base/src --width 0.5 --n 128 --T 8

Each round converts the same ResNet-18 (BN statistics from a few passes over the calibration
images, so that every layer has a realistic spread) with ``threshold="mse",
correction="potential"`` once with each source tree, alternating which goes first, in fresh
processes with the same thread count. Prints every time, the median per tree and the ratio
baseline / this checkout, and the largest difference between the two trees' per-layer errors
after correction (the corrections are not meant to change much).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def worker(args: argparse.Namespace) -> None:
    import torch

    from spikeforge import convert
    from spikeforge.models import create_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = create_model("resnet18", num_classes=10, width=args.width)
    x = torch.randn(args.n, 3, 32, 32)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(x)
    net.eval()
    t0 = time.perf_counter()
    snn = convert(net, x, batch_size=args.n, max_batches=1, threshold="mse", correction=args.correction,
                  target_T=args.T, channels_last=True)
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "report": snn.correction_report}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline-src", type=Path, help="the baseline's src/ folder (required unless --worker)")
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--n", type=int, default=128, help="calibration images (one batch)")
    p.add_argument("--T", type=int, default=8, help="target steps of the correction")
    p.add_argument("--correction", choices=("bias", "potential"), default="potential")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    if args.baseline_src is None or not (args.baseline_src / "spikeforge").is_dir():
        p.error("--baseline-src must be a src/ folder that holds the spikeforge package")
    here = Path(__file__).resolve().parents[1] / "src"
    trees = {"baseline": args.baseline_src.resolve(), "this checkout": here}
    cmd = [sys.executable, __file__, "--worker", "--width", str(args.width), "--n", str(args.n), "--T", str(args.T),
           "--correction", args.correction, "--threads", str(args.threads)]
    times: dict[str, list[float]] = {k: [] for k in trees}
    reports: dict[str, dict] = {}
    for r in range(args.rounds):
        order = list(trees) if r % 2 == 0 else list(trees)[::-1]
        for key in order:
            env = dict(os.environ, PYTHONPATH=str(trees[key]))
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
            res = json.loads(out.strip().splitlines()[-1])
            times[key].append(res["seconds"])
            reports[key] = res["report"]
            print(f"round {r + 1} {key}: {res['seconds']:.1f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"median: baseline {med['baseline']:.1f} s, this checkout {med['this checkout']:.1f} s, "
          f"ratio {med['baseline'] / med['this checkout']:.2f}x")
    diffs = [abs(reports["baseline"][k]["mse_after"] - reports["this checkout"][k]["mse_after"])
             / max(reports["baseline"][k]["mse_before"], 1e-12) for k in reports["baseline"]]
    worse = sum(reports["this checkout"][k]["mse_after"] > reports["baseline"][k]["mse_after"]
                for k in reports["baseline"])
    print(f"per-layer error after correction: largest difference {max(diffs):.2%} of the error before; "
          f"{worse} of {len(diffs)} layers higher in this checkout")


if __name__ == "__main__":
    main()
