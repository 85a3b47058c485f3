"""Figures written by the experiments."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from spikeforge.io import save_figure  # noqa: E402


def plot_accuracy_vs_T(
    curves: Mapping[str, Sequence[float]],
    path: str | Path,
    *,
    ann_accuracy: float | None = None,
    title: str = "SNN accuracy vs time steps",
    ylabel: str = "test accuracy",
) -> Path:
    """One line per curve (value after each step t = 1..T), log-scaled T axis."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, acc in curves.items():
        ax.plot(range(1, len(acc) + 1), acc, label=label, lw=1.6)
    if ann_accuracy is not None:
        ax.axhline(ann_accuracy, color="k", ls="--", lw=1, label=f"ANN ({ann_accuracy:.4f})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("time steps T")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    lows = [min(a[min(len(a) - 1, 7):]) for a in curves.values() if len(a)]
    if lows and ann_accuracy is not None:
        ax.set_ylim(max(0.0, min(min(lows), ann_accuracy) - 0.05), min(1.0, ann_accuracy + 0.02))
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right")
    return save_figure(fig, path, dpi=120, bbox_inches="tight")


def plot_bars(values: Mapping[str, float], path: str | Path, *, title: str, ylabel: str) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    names = list(values)
    ax.bar(range(len(names)), [values[n] for n in names], color="#4477aa")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    return save_figure(fig, path, dpi=120, bbox_inches="tight")


def plot_history(history: Sequence[Mapping[str, float]], path: str | Path, *, title: str = "training") -> Path:
    """Loss and accuracy per epoch (train and, when present, test)."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
    ep = [h["epoch"] for h in history]
    for key, ax in (("loss", a1), ("accuracy", a2)):
        for split in ("train", "test"):
            k = f"{split}_{key}"
            if all(k in h for h in history):
                ax.plot(ep, [h[k] for h in history], marker="o", ms=3, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return save_figure(fig, path, dpi=120, bbox_inches="tight")


def plot_predictions(
    images, labels: Sequence[int], predicted: Sequence[int], classes: Sequence[str], path: str | Path, *, title: str
) -> Path:
    """A row of test images with their true and predicted labels (red when wrong)."""
    n = len(labels)
    fig, axes = plt.subplots(1, n, figsize=(1.5 * n, 2.1))
    for ax, img, y, p in zip(axes if n > 1 else [axes], images, labels, predicted):
        ax.imshow(img.reshape(img.shape[-2], img.shape[-1]), cmap="gray")
        ax.set_xticks([])
        ax.set_yticks([])
        ok = int(y) == int(p)
        ax.set_title(f"true: {classes[int(y)]}\npred: {classes[int(p)]}", fontsize=7, color="black" if ok else "red")
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path, dpi=120, bbox_inches="tight")


def plot_sweep(
    rows: Sequence[Mapping[str, float]], path: str | Path, *, x: str, group: str, y: str = "test_accuracy", title: str
) -> Path:
    """``y`` against ``x``, one line per value of ``group`` (a hyperparameter sweep)."""
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for g in sorted({r[group] for r in rows}):
        pts = sorted((r[x], r[y]) for r in rows if r[group] == g)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{group}={g}")
    ax.set_xlabel(x)
    ax.set_ylabel(y.replace("_", " "))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path, dpi=120, bbox_inches="tight")


def plot_curves(curves: Mapping[str, Sequence[float]], path: str | Path, *, xlabel: str, ylabel: str, title: str) -> Path:
    """Several curves over epochs (e.g. test accuracy of each sweep point)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, ys in curves.items():
        ax.plot(range(1, len(ys) + 1), ys, marker="o", ms=2, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, path, dpi=120, bbox_inches="tight")


def plot_metrics_vs_steps(
    curves: Mapping[str, Mapping[int, float]],
    path: str | Path,
    *,
    references: Mapping[str, float] | None = None,
    title: str,
    ylabel: str = "score",
) -> Path:
    """Metrics measured at selected time steps (``{label: {T: value}}``), log2 T axis.

    ``references`` are drawn as dashed horizontal lines (e.g. the ANN's scores).
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (label, pts) in enumerate(curves.items()):
        ts = sorted(pts)
        ax.plot(ts, [pts[t] for t in ts], marker="o", ms=4, lw=1.6, label=label, color=colors[k % len(colors)])
    for k, (label, value) in enumerate((references or {}).items()):
        ax.axhline(value, ls="--", lw=1, color=colors[k % len(colors)], label=f"{label} ({value:.4f})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("time steps T")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path, dpi=120, bbox_inches="tight")


def plot_segmentation_panels(panels: Mapping[str, object], path: str | Path, *, title: str = "") -> Path:
    """Images side by side (e.g. raw, label, ANN, SNN), each ``[H, W]`` in gray."""
    n = len(panels)
    first = next(iter(panels.values()))
    h, w = first.shape[-2], first.shape[-1]  # type: ignore[attr-defined]
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.2 * h / w + 0.5))
    for ax, (label, img) in zip(axes if n > 1 else [axes], panels.items()):
        ax.imshow(img, cmap="gray", interpolation="nearest", vmin=0, vmax=1)
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi=150, bbox_inches="tight")


def plot_study(
    results: Mapping[str, Mapping],
    path: str | Path,
    *,
    title: str,
    dashed=None,
) -> Path:
    """Converted models side by side: SNN accuracy (left) and ANN − SNN in points (right) vs T.

    ``results`` maps a label to ``{"ann_accuracy": a, "snn_accuracy": {t: acc}}``;
    ``dashed(label)`` picks the labels drawn dashed.
    """
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    worst = 0.0
    for i, (label, r) in enumerate(results.items()):
        steps = sorted(int(t) for t in r["snn_accuracy"])
        acc = [r["snn_accuracy"][str(t)] for t in steps]
        ls = "--" if dashed is not None and dashed(label) else "-"
        c = colors[i % len(colors)]
        a1.plot(steps, acc, ls=ls, color=c, lw=1.6, label=f"{label} (ANN {r['ann_accuracy']:.3f})")
        gap = [100 * (r["ann_accuracy"] - a) for a in acc]
        worst = max([worst] + [abs(g) for g in gap])
        a2.plot(steps, gap, ls=ls, color=c, lw=1.6, label=label)
    for ax in (a1, a2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("time steps T")
        ax.grid(alpha=0.3, which="both")
    a1.set_ylabel("SNN accuracy (evaluation images)")
    a2.set_ylabel("ANN − SNN accuracy (pt)")
    if worst > 5:  # large losses next to small ones: linear within ±1 pt, logarithmic beyond
        a2.set_yscale("symlog", linthresh=1.0)
    a2.axhline(0, color="k", lw=0.8)
    a1.legend(fontsize=7, loc="lower right")
    fig.suptitle(title)
    return save_figure(fig, path, dpi=120, bbox_inches="tight")


def plot_spike_stats(stats: Mapping, path: str | Path, *, title: str = "spikes and operations per image",
                     energy: str = "45nm-fp32") -> Path:
    """Two bar charts from :meth:`spikeforge.metrics.spikes.SpikeStats.summary`: spikes per
    neuron per step of each neuron layer, and per weighted layer the SNN's SOPs and MACs
    beside the ANN's dense MACs (log scale), with the energy estimate in the title."""
    layers = stats.get("layers", {})
    neurons = {k: v for k, v in layers.items() if v["kind"] == "neurons"}
    syn = {k: v for k, v in layers.items() if v["kind"] == "synapses"}
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1, 1.6]})
    names = list(neurons)
    a1.bar(range(len(names)), [neurons[n]["spikes_per_neuron_per_step"] for n in names], color="#4477aa")
    a1.set_xticks(range(len(names)), names, rotation=30, ha="right")
    a1.set_ylabel("spikes / neuron / step")
    a1.set_title("firing rate per neuron layer")
    a1.grid(alpha=0.3, axis="y")
    names = list(syn)
    x = list(range(len(names)))
    w = 0.27
    series = (("SOPs (SNN)", "sops_per_image", "#228833"), ("MACs (SNN, analog input)", "macs_per_image", "#ccbb44"),
              ("MACs (ANN)", "ann_macs_per_image", "#aa3377"))
    for i, (label, key, color) in enumerate(series):
        a2.bar([v + (i - 1) * w for v in x], [max(syn[n][key], 1e-9) for n in names], w, label=label, color=color)
    a2.set_yscale("log")
    a2.set_ylim(bottom=1)
    a2.set_xticks(x, names, rotation=30, ha="right")
    a2.set_ylabel("operations per image")
    a2.legend(fontsize=8)
    a2.grid(alpha=0.3, axis="y", which="both")
    e = stats.get("energy", {}).get(energy)
    ratio = f"; energy estimate SNN/ANN {e['snn_to_ann']:.3f} ({energy})" if e and e.get("snn_to_ann") else ""
    a2.set_title(f"operations per weighted layer, T={stats.get('T')}{ratio}", fontsize=9)
    fig.suptitle(title)
    return save_figure(fig, path, dpi=120, bbox_inches="tight")
