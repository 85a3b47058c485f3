"""Direct-training speed: spikeforge vs SpikingJelly vs snnTorch, same nets, one process.

Usage (needs `pip install spikingjelly snntorch torch==2.13.0` beside spikeforge)::

    python benchmarks/bench_direct_training.py --net csnn [--threads 2] [--repeats 5]
    python benchmarks/bench_direct_training.py --net fc

Each contender trains the same architecture on the same random batches (the cost of
a training step does not depend on the pixel values) with the same loss and
optimizer: forward over T steps, loss, backward, optimizer step.

* ``--net csnn``: {Conv3x3(1→64)-BN-IF-MaxPool2}×2 - Linear(3136→1024)-IF -
  Linear(1024→10)-IF, T=4, batch 64, MSE on rate, SGD momentum (seed 004). Also the
  same layers as a plain ReLU CNN (one pass) as a reference.
* ``--net fc``: 784-500-10 LIF β=0.95, T=25, batch 128, cross-entropy on the output
  membrane at every step, Adam (seed 002).

Throughput is measured in alternating repeats (each contender once per round) and
reported as medians and as ratios to the fastest peer: these machines are noisy, and
only ratios measured in one run mean anything. The process keeps freed memory in its
heap (:func:`spikeforge._native.memory.keep_freed_memory`, as spikeforge's training
loop does) for every contender alike; ``--no-keep-memory`` turns that off. Peak memory: each contender trains
in a fresh subprocess and reports the growth of its peak RSS over the RSS before
training (model, optimizer and data already allocated).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

C = 64


# --- contenders -----------------------------------------------------------------


def sf_csnn(bf16: bool, channels_last: bool = False) -> tuple[nn.Module, Callable]:
    from spikeforge.models import create_model
    from spikeforge.train.snn import loss_of

    model = create_model("csnn", channels=C, T=4)
    if bf16 or channels_last:
        model.to(memory_format=torch.channels_last)

    def loss_fn(x, y):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        return loss_of(out, y, "mse-rate")

    return model, loss_fn


def sj_csnn() -> tuple[nn.Module, Callable]:
    from spikingjelly.activation_based import functional, layer, neuron, surrogate

    def IF():
        return neuron.IFNode(surrogate_function=surrogate.ATan(), step_mode="m")

    net = nn.Sequential(
        layer.Conv2d(1, C, 3, padding=1, bias=False, step_mode="m"), layer.BatchNorm2d(C, step_mode="m"), IF(),
        layer.MaxPool2d(2, 2, step_mode="m"),
        layer.Conv2d(C, C, 3, padding=1, bias=False, step_mode="m"), layer.BatchNorm2d(C, step_mode="m"), IF(),
        layer.MaxPool2d(2, 2, step_mode="m"),
        layer.Flatten(step_mode="m"),
        layer.Linear(C * 49, C * 16, bias=False, step_mode="m"), IF(),
        layer.Linear(C * 16, 10, bias=False, step_mode="m"), IF(),
    )

    def loss_fn(x, y):
        functional.reset_net(net)
        out = net(x.unsqueeze(0).repeat(4, 1, 1, 1, 1)).mean(0)
        return F.mse_loss(out, F.one_hot(y, 10).float())

    return net, loss_fn


def snntorch_csnn() -> tuple[nn.Module, Callable]:
    import snntorch as snn
    from snntorch import surrogate

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            g = surrogate.atan()
            self.conv1, self.bn1 = nn.Conv2d(1, C, 3, padding=1, bias=False), nn.BatchNorm2d(C)
            self.conv2, self.bn2 = nn.Conv2d(C, C, 3, padding=1, bias=False), nn.BatchNorm2d(C)
            self.fc1, self.fc2 = nn.Linear(C * 49, C * 16, bias=False), nn.Linear(C * 16, 10, bias=False)
            self.sn = nn.ModuleList(snn.Leaky(beta=1.0, spike_grad=g, reset_mechanism="zero") for _ in range(4))

        def forward(self, x):
            mems = [m.init_leaky() for m in self.sn]
            outs = []
            for _ in range(4):
                s, mems[0] = self.sn[0](self.bn1(self.conv1(x)), mems[0])
                s, mems[1] = self.sn[1](self.bn2(self.conv2(F.max_pool2d(s, 2))), mems[1])
                s, mems[2] = self.sn[2](self.fc1(F.max_pool2d(s, 2).flatten(1)), mems[2])
                s, mems[3] = self.sn[3](self.fc2(s), mems[3])
                outs.append(s)
            return torch.stack(outs)

    net = Net()

    def loss_fn(x, y):
        return F.mse_loss(net(x).mean(0), F.one_hot(y, 10).float())

    return net, loss_fn


def relu_cnn(bf16: bool = False) -> tuple[nn.Module, Callable]:
    net = nn.Sequential(
        nn.Conv2d(1, C, 3, padding=1, bias=False), nn.BatchNorm2d(C), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(C, C, 3, padding=1, bias=False), nn.BatchNorm2d(C), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(C * 49, C * 16, bias=False), nn.ReLU(), nn.Linear(C * 16, 10, bias=False),
    )
    if bf16:
        net.to(memory_format=torch.channels_last)

    def loss_fn(x, y):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = net(x.contiguous(memory_format=torch.channels_last) if bf16 else x)
        return F.cross_entropy(out.float(), y)

    return net, loss_fn


def sf_fc() -> tuple[nn.Module, Callable]:
    from spikeforge.models import create_model
    from spikeforge.train.snn import loss_of

    model = create_model("fc-lif", hidden=500, beta=0.95, T=25)
    return model, lambda x, y: loss_of(model(x), y, "ce-membrane")


def sj_fc() -> tuple[nn.Module, Callable]:
    from spikingjelly.activation_based import functional, layer, neuron, surrogate

    def LIF():
        return neuron.LIFNode(tau=20.0, decay_input=False, v_reset=None, surrogate_function=surrogate.Sigmoid(),
                              detach_reset=True, step_mode="m", store_v_seq=True)

    net = nn.Sequential(layer.Linear(784, 500, step_mode="m"), LIF(), layer.Linear(500, 10, step_mode="m"), LIF())

    def loss_fn(x, y):
        functional.reset_net(net)
        net(x.flatten(1).unsqueeze(0).repeat(25, 1, 1))
        mem = net[3].v_seq
        return F.cross_entropy(mem.flatten(0, 1), y.repeat(25), reduction="sum") / y.numel()

    return net, loss_fn


def snntorch_fc() -> tuple[nn.Module, Callable]:
    import snntorch as snn

    class Net(nn.Module):  # snnTorch tutorial 5
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.lif1 = nn.Linear(784, 500), snn.Leaky(beta=0.95)
            self.fc2, self.lif2 = nn.Linear(500, 10), snn.Leaky(beta=0.95)

        def forward(self, x):
            mem1, mem2 = self.lif1.init_leaky(), self.lif2.init_leaky()
            mems = []
            for _ in range(25):
                spk1, mem1 = self.lif1(self.fc1(x), mem1)
                spk2, mem2 = self.lif2(self.fc2(spk1), mem2)
                mems.append(mem2)
            return torch.stack(mems)

    net = Net()

    def loss_fn(x, y):
        mem = net(x.flatten(1))
        return F.cross_entropy(mem.flatten(0, 1), y.repeat(25), reduction="sum") / y.numel()

    return net, loss_fn


CONTENDERS: dict[str, dict[str, Callable[[], tuple[nn.Module, Callable]]]] = {
    "csnn": {
        "spikeforge-fp32": lambda: sf_csnn(False),
        "spikeforge-fp32-cl": lambda: sf_csnn(False, True),
        "spikeforge-bf16": lambda: sf_csnn(True),
        "spikingjelly": sj_csnn,
        "snntorch": snntorch_csnn,
        "relu-cnn": relu_cnn,
        "relu-cnn-bf16": lambda: relu_cnn(True),
    },
    "fc": {"spikeforge": sf_fc, "spikingjelly": sj_fc, "snntorch": snntorch_fc},
}
BATCH = {"csnn": 64, "fc": 128}
PEERS = ("spikingjelly", "snntorch")


def make_step(net_name: str, name: str, seed: int = 0):
    torch.manual_seed(seed)
    model, loss_fn = CONTENDERS[net_name][name]()
    model.train()
    if net_name == "csnn":
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    B = BATCH[net_name]
    gen = torch.Generator().manual_seed(seed)
    batches = [(torch.rand(B, 1, 28, 28, generator=gen), torch.randint(0, 10, (B,), generator=gen)) for _ in range(4)]
    state = {"i": 0}

    def step() -> None:
        x, y = batches[state["i"] % len(batches)]
        state["i"] += 1
        loss = loss_fn(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def status_mb(key: str) -> float:
    """VmRSS / VmHWM (peak RSS) of this process from /proc; unlike ru_maxrss, VmHWM
    starts afresh at exec and does not inherit the parent's peak."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def memory_child(net_name: str, name: str, steps: int) -> None:
    step = make_step(net_name, name)
    before = status_mb("VmRSS")
    for _ in range(steps):
        step()
    peak = status_mb("VmHWM")
    print(json.dumps({"before_mb": before, "peak_mb": peak, "growth_mb": peak - before}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--net", choices=tuple(CONTENDERS), default="csnn")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=0, help="training steps per timing (default: net-specific)")
    ap.add_argument("--only", nargs="*", default=None, help="subset of contenders")
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-keep-memory", action="store_true", help="leave glibc's malloc settings alone")
    ap.add_argument("--memory-child", nargs=2, metavar=("NET", "NAME"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(*args.memory_child, steps=3)
        return
    if not args.no_keep_memory:
        # Applies to every contender alike (one process): freed buffers stay in the heap,
        # so no step pays page faults for re-allocating the previous step's activations.
        from spikeforge._native.memory import keep_freed_memory

        keep_freed_memory()
    names = args.only or list(CONTENDERS[args.net])
    steps = args.steps or {"csnn": 10, "fc": 40}[args.net]
    B = BATCH[args.net]
    fns = {n: make_step(args.net, n) for n in names}
    for fn in fns.values():  # warm-up
        for _ in range(2):
            fn()
    speeds: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.repeats):
        for n, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            speeds[n].append(B * steps / (time.perf_counter() - t0))
    med = {n: statistics.median(v) for n, v in speeds.items()}
    mem = {}
    for n in names:
        res = subprocess.run(
            [sys.executable, __file__, "--threads", str(args.threads), "--memory-child", args.net, n],
            capture_output=True, text=True, check=True,
        )
        mem[n] = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"\n{args.net}: training images/s, batch {B}, threads={args.threads}, median of {args.repeats} x {steps} steps")
    for n in names:
        print(f"  {n:>16}: {med[n]:9.0f}   runs: {', '.join(f'{s:.0f}' for s in speeds[n])}"
              f"   peak RSS growth {mem[n]['growth_mb']:.0f} MB")
    peers = [p for p in PEERS if p in med]
    ratios = {}
    if peers:
        best = max(peers, key=lambda p: med[p])
        for n in names:
            if n.startswith("spikeforge"):
                ratios[n] = med[n] / med[best]
                print(f"ratio {n} / {best} (faster peer): {ratios[n]:.2f}x")
                if "spikingjelly" in mem:
                    print(f"peak memory {n} / spikingjelly: {mem[n]['growth_mb'] / mem['spikingjelly']['growth_mb']:.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"net": args.net, "median": med, "runs": speeds, "memory": mem,
                                               "ratios_to_faster_peer": ratios}, indent=2) + "\n")


if __name__ == "__main__":
    main()
