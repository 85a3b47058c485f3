"""Command-line pieces of the NIR interchange: ``--export-nir FILE`` and ``spikeforge nir-run``."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from spikeforge.nir.errors import NIRImportError
from spikeforge.nir.export import DEFAULT_DT, export_nir, write_nir


def add_export_argument(p: argparse.ArgumentParser, *, converted: bool = False) -> None:
    """``--export-nir FILE`` (and, for converted networks, ``--nir-thresholds``)."""
    p.add_argument(
        "--export-nir", metavar="FILE", default=None,
        help="also write the SNN as a NIR graph to FILE (needs the nir package: pip install 'spikeforge[nir]'); "
             "a network NIR cannot express is refused before any work, with the reason",
    )
    if converted:
        p.add_argument(
            "--nir-thresholds", choices=("fold", "scale"), default="fold",
            help="fold: thresholds multiplied into the next layer's weights (unit spikes); scale: a Scale node after "
                 "each IF layer (the SNN's arithmetic exactly)",
        )


def check_exportable(args: argparse.Namespace, build: Callable[[], nn.Module], input_shape: tuple[int, ...]) -> None:
    """With ``--export-nir``: export an untrained twin of the network now, so that a network NIR
    cannot express (or a missing nir package) stops the run before training, naming the layer."""
    if getattr(args, "export_nir", None):
        export_nir(build(), input_shape, **_options(args))


def export_file(args: argparse.Namespace, model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, Any] | None:
    """With ``--export-nir FILE``: write the graph; returns what ``metrics.json`` records about it."""
    path = getattr(args, "export_nir", None)
    if not path:
        return None
    opts = _options(args)
    write_nir(model, path, input_shape, **opts)
    print(f"wrote NIR graph {path}")
    return {"path": str(path), "dt": DEFAULT_DT, **opts}


def _options(args: argparse.Namespace) -> dict[str, Any]:
    th = getattr(args, "nir_thresholds", None)
    return {"thresholds": th} if th else {}


# --- spikeforge nir-run ---------------------------------------------------------------------


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    from spikeforge.experiments.common import add_val_split_argument, integer, number, positive_int, seed_int

    p.add_argument("file", help="a NIR graph (.nir, HDF5)")
    p.add_argument("--dataset", default="mnist-sample", choices=("mnist-sample", "mnist", "fashion-mnist", "cifar10"),
                   help="evaluated on its test split (or --val-split N held-out training images)")
    p.add_argument("--data-dir", default=None, help="folder with the dataset files")
    add_val_split_argument(p)
    p.add_argument("--T", type=integer(1, 100_000), default=32, help="time steps (accuracy after each step 1..T)")
    p.add_argument("--dt", type=number(0, 1e6, lo_open=True, what="a time step > 0"), default=DEFAULT_DT,
                   help="time step that discretizes the neurons (Euler; default 1e-4, snnTorch's)")
    p.add_argument("--encoder", choices=("direct", "poisson"), default="direct",
                   help="direct: the image at every step; poisson: Bernoulli spikes with p = pixel value")
    p.add_argument("--limit", type=positive_int, default=None, help="evaluate the first N images only")
    p.add_argument("--batch-size", type=positive_int, default=500)
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the Poisson spikes")
    p.add_argument("--out", default=None, help="also write metrics.json, report.md and figures there")


@torch.no_grad()
def run_nir(args: argparse.Namespace) -> dict[str, Any]:
    """Import a NIR graph, evaluate it on a classification set at every step, report spikes and energy."""
    from spikeforge.encoding import poisson
    from spikeforge.experiments.common import command_line, environment, load_split_tensors
    from spikeforge.io import write_json, write_text
    from spikeforge.metrics.classification import correct_per_step
    from spikeforge.metrics.spikes import SpikeStats, spike_stats_table
    from spikeforge.nir.importer import import_nir

    model = import_nir(args.file, dt=args.dt)
    shape = tuple(model.input_shape)
    _train, (x, y), _classes = load_split_tensors(args.dataset, args.data_dir, args.val_split)
    if args.limit:
        x, y = x[: args.limit], y[: args.limit]
    if math.prod(x.shape[1:]) != math.prod(shape):
        raise NIRImportError(Path(args.file).name, f"the graph takes inputs of shape {list(shape)}, {args.dataset} "
                                                   f"images are {list(x.shape[1:])}")
    x = x.reshape(len(x), *shape)
    gen = torch.Generator().manual_seed(args.seed)
    correct = torch.zeros(args.T, dtype=torch.long)
    t0 = time.perf_counter()
    stats = SpikeStats(model)
    spikes: dict[str, float] = {}
    steps: dict[str, int] = {}
    with stats:
        for i in range(0, len(y), args.batch_size):
            xb, yb = x[i : i + args.batch_size], y[i : i + args.batch_size]
            if args.encoder == "poisson":
                out = model(poisson(xb, args.T, generator=gen), sequence=True)
            else:
                out = model(xb, args.T)
            if out.dim() != 3:
                raise NIRImportError(Path(args.file).name, f"the graph's output per step has shape {list(out.shape[2:])}"
                                                           "; nir-run needs one score per class")
            correct += correct_per_step(out, yb)
            for name, n in model.neurons().items():
                spikes[name] = spikes.get(name, 0.0) + n.spike_count
                steps[name] = steps.get(name, 0) + n.neuron_steps
    seconds = time.perf_counter() - t0
    acc = (correct.double() / len(y)).tolist()
    s = stats.summary()
    metrics = {
        "experiment": "nir-run", "command": command_line(), "file": str(args.file), "dataset": args.dataset,
        "n_eval": len(y), "eval_split": "val" if args.val_split else "test", "T": args.T, "dt": args.dt,
        "encoder": args.encoder, "input_shape": list(shape), "graph_metadata": _plain(model.nir_metadata),
        "accuracy": {str(t + 1): a for t, a in enumerate(acc)},
        "firing_rates": {k: spikes[k] / steps[k] for k in spikes if steps[k]},
        "spike_stats": s, "seconds": seconds, "environment": environment(),
    }
    shown = [t for t in (1, 2, 4, 8, 16, 32, 64, 128, 256) if t <= args.T] + ([args.T] if args.T not in
                                                                              (1, 2, 4, 8, 16, 32, 64, 128, 256) else [])
    print(f"{args.file}: {len(y)} {args.dataset} images, accuracy " + ", ".join(f"T={t}: {acc[t - 1]:.4f}"
                                                                             for t in shown))
    e = s["energy"].get("45nm-fp32", {})
    print(f"spikes/neuron/step {s['totals']['spikes_per_neuron_per_step']:.4f}, SOPs/image "
          f"{s['totals']['sops_per_image']:,.0f}, energy estimate SNN/ANN {e.get('snn_to_ann') or float('nan'):.3f} "
          "(45 nm fp32)")
    if args.out:
        from spikeforge.plots import plot_accuracy_vs_T, plot_spike_stats

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        plot_accuracy_vs_T({"NIR graph": acc}, out / "accuracy_vs_T.png", title=f"{Path(args.file).name} on "
                                                                              f"{args.dataset}")
        plot_spike_stats(s, out / "spike_stats.png", title=f"{Path(args.file).name}: spikes and operations per image")
        write_json(out / "metrics.json", metrics)
        write_text(out / "report.md", "\n".join([
            f"# NIR graph {Path(args.file).name} on {args.dataset}", "", f"Command: `{metrics['command']}`", "",
            f"Imported with dt={args.dt:g}, {args.encoder} input, {len(y)} images.", "",
            "| T | accuracy |", "|---:|---:|", *[f"| {t} | {acc[t - 1]:.4f} |" for t in shown], "",
            "![accuracy vs T](accuracy_vs_T.png)", "", "## Spikes, operations and energy (estimate)", "",
            *spike_stats_table(s, steps=shown), "", "![spike statistics](spike_stats.png)", "",
        ]))
        print(f"wrote {out / 'metrics.json'}, {out / 'report.md'}")
    return metrics


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    """Graph metadata as JSON-friendly values (h5py gives numpy scalars and bytes)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, bytes):
            v = v.decode(errors="replace")
        elif hasattr(v, "item") and getattr(v, "size", 2) == 1:
            v = v.item()
        elif hasattr(v, "tolist"):
            v = v.tolist()
        out[str(k)] = v if isinstance(v, (str, int, float, bool, list, type(None))) else str(v)
    return out
