"""Direct training experiments (seeds 002 and 004): ``fc-lif``, ``fc-poisson``, ``csnn``.

Each run trains with BPTT (:func:`spikeforge.train.snn.fit_snn`) and writes into
``--out``: ``metrics.json`` (``test_accuracy``, per-epoch ``history``, config,
timings), ``curves.png``, ``predictions.png``, ``report.md`` and the resumable
``checkpoint.pt``. ``fc-lif --sweep`` trains a grid of decays β and hidden sizes
(each point in its own sub-folder, skipped when already complete) and adds a table
and comparison plots.

The training settings come from a recipe (:data:`RECIPES`): ``--recipe tuned`` (the
default, chosen by measurement) or ``--recipe seed`` (the seed's settings). Every
option given explicitly replaces that one setting of the recipe; ``metrics.json``
names them under ``recipe.overridden`` and ``report.md`` lists both recipes' settings
beside the run's.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from spikeforge import distributed
from spikeforge.errors import CheckpointError, ConfigError
from spikeforge.evaluate import merge_summaries
from spikeforge.experiments.common import (
    GRAYSCALE_28, add_device_arguments, add_val_split_argument, command_line, device_of, environment,
    eval_split_name, fraction, integer, learning_rate, load_split_tensors, nonnegative_float, number, number_list,
    parallel_info, positive_int, prepare_out_dir, read_json, require_images, seed_int, unit_interval,
)
from spikeforge.experiments.registry import Experiment
from spikeforge.io import write_json, write_text
from spikeforge.metrics.spikes import SpikeStats, spike_stats_table
from spikeforge.models import create_model
from spikeforge.nir.cli import add_export_argument, check_exportable, export_file
from spikeforge.precision import recipe_bf16
from spikeforge.plots import plot_curves, plot_history, plot_predictions, plot_spike_stats, plot_sweep
from spikeforge.train.checkpoint import load_checkpoint
from spikeforge.train.losses import LOSSES, SMOOTHABLE
from spikeforge.train.snn import OPTIMIZERS, SNNTrainConfig, fit_snn, predict

#: Data-set families for the augmentation of the tuned recipes: digits are not mirror
#: symmetric (no flips), clothing is (flips); both get small translations.
FAMILY = {"mnist-sample": "digits", "mnist": "digits", "fashion-mnist": "clothing"}

#: Training recipes per experiment; explicit options win over them (``--recipe`` picks one).
#:
#: * ``seed`` — the seed's settings (seed 002 for fc-lif, seed 004 for fc-poisson and csnn):
#:   constant Adam 1e-3 (fc-lif, fc-poisson), SGD 0.1 momentum 0.9 with a cosine decay
#:   (csnn), the seed's losses and epochs, no augmentation, float32. Where the seed does
#:   not state a value the recipe says which one it took (``NOTES``).
#: * ``tuned`` — chosen by short measurements on held-out training images
#:   (benchmarks/RESULTS.md, "Issue 17: direct-training recipes"): the rate cross-entropy
#:   for the FC nets (spike counts are what the prediction reads), cosine decays, TET with
#:   flips + ±1 px shifts (clothing) or shifts only (digits), bf16 autocast + channels-last
#:   for csnn (3.9× the float32 images/s on one thread).
#:
#: ``augment`` maps a data-set family to ``(largest shift in pixels, horizontal flip)``;
#: None trains on the images as they are.
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "fc-lif": {
        "seed": dict(T=25, epochs=10, batch_size=128, optimizer="adam", lr=1e-3, weight_decay=0.0, schedule="none",
                     loss="ce-membrane", label_smoothing=0.0, surrogate="atan", surrogate_slope=2.0, augment=None,
                     bf16=False, channels_last=False, dropout=0.0),
        "tuned": dict(T=25, epochs=30, batch_size=128, optimizer="adam", lr=5e-4, weight_decay=0.0, schedule="cosine",
                      loss="ce-rate", label_smoothing=0.0, surrogate="atan", surrogate_slope=2.0, augment=None,
                      bf16=False, channels_last=False, dropout=0.2),
    },
    "fc-poisson": {
        "seed": dict(T=100, epochs=100, batch_size=128, optimizer="adam", lr=1e-3, weight_decay=0.0, schedule="none",
                     loss="mse-rate", label_smoothing=0.0, surrogate="atan", surrogate_slope=2.0, augment=None,
                     bf16=False, channels_last=False),
        "tuned": dict(T=100, epochs=20, batch_size=128, optimizer="adam", lr=1e-3, weight_decay=0.0, schedule="cosine",
                      loss="ce-rate", label_smoothing=0.0, surrogate="atan", surrogate_slope=2.0, augment=None,
                      bf16=False, channels_last=False),
    },
    "csnn": {
        "seed": dict(T=4, epochs=64, batch_size=64, optimizer="sgd", lr=0.1, weight_decay=0.0, schedule="cosine",
                     loss="mse-rate", label_smoothing=0.0, surrogate="atan", surrogate_slope=2.0, augment=None,
                     bf16=False, channels_last=True),
        "tuned": dict(T=4, epochs=30, batch_size=64, optimizer="sgd", lr=0.1, weight_decay=0.0, schedule="cosine",
                      loss="tet", label_smoothing=0.0, surrogate="atan", surrogate_slope=2.0,
                      augment={"digits": (1, False), "clothing": (1, True)}, bf16=True, channels_last=True),
    },
}
#: Where a seed recipe's value is not stated by the seed, what it was taken from.
NOTES = {
    "fc-lif": "seed 002 states β=0.95, 500 hidden, T=25, Adam 1e-3 and snnTorch's built-in surrogate (ATan α=2) but "
              "no epoch count or batch size: 10 epochs (issue 3's seed-settings run) and snnTorch's batch of 128",
    "fc-poisson": "seed 004 (part 1): τ=2, T=100, 100 epochs, batch 128, Adam 1e-3, MSE on the rate, ATan",
    "csnn": "seed 004 (part 2): T=4, 64 channels, SGD 0.1 momentum 0.9, 64 epochs, MSE on the rate, ATan; "
            "the cosine decay over the epochs is SpikingJelly's tutorial, which the seed follows; batch 64 "
            "(not stated) as in every earlier csnn run here",
}
RECIPE_NAMES = ("tuned", "seed")
DESCRIPTIONS = {
    "fc-lif": "train 784-500-10 LIF (seed 002) with BPTT; --sweep over beta and hidden size; --recipe tuned|seed",
    "fc-poisson": "train 784-10 LIF with Poisson input (seed 004, part 1); --recipe tuned|seed",
    "csnn": "train the convolutional SNN of seed 004 (T=4, direct input); --recipe tuned|seed",
}
#: The options a recipe sets (its keys), as the ``argparse`` destinations; fc-lif's also
#: set the dropout of its hidden layer.
_RECIPE_KEYS = tuple(RECIPES["csnn"]["seed"])


def _recipe_keys(name: str) -> tuple[str, ...]:
    return tuple(RECIPES[name]["seed"])


#: ``--betas``: decays in [0, 1]; ``--hiddens``: hidden sizes (both non-empty lists).
_float_list = number_list(unit_interval, "decays in [0, 1]")
_int_list = number_list(integer(1, 1_000_000), "positive hidden sizes")
_slope = number(0, 1e6, lo_open=True, what="a surrogate slope in (0, 1e6]")
_smoothing = number(0, 1, hi_open=True, what="a label smoothing in [0, 1)")


def _adder(name: str):
    def add_arguments(p: argparse.ArgumentParser) -> None:
        tuned = RECIPES[name]["tuned"]
        p.add_argument("--dataset", default="mnist-sample", choices=GRAYSCALE_28)
        p.add_argument("--data-dir", default=None, help="folder with the dataset files")
        add_val_split_argument(p)
        p.add_argument("--out", default=f"runs/{name}")
        p.add_argument("--recipe", choices=RECIPE_NAMES, default="tuned",
                       help="training settings: 'tuned' (chosen by measurement, the default) or 'seed' (the seed's); "
                            "the options below override single settings of either")
        p.add_argument("--epochs", type=integer(1, 1_000_000), default=None, help=f"(tuned: {tuned['epochs']})")
        p.add_argument("--T", type=integer(1, 100_000), default=None, help=f"time steps (tuned: {tuned['T']})")
        p.add_argument("--batch-size", type=positive_int, default=None, help=f"(tuned: {tuned['batch_size']})")
        p.add_argument("--optimizer", choices=OPTIMIZERS, default=None,
                       help=f"adamw: Adam with decoupled weight decay (tuned: {tuned['optimizer']})")
        p.add_argument("--lr", type=learning_rate, default=None, help=f"(tuned: {tuned['lr']:g})")
        p.add_argument("--schedule", choices=("none", "cosine"), default=None, help=f"(tuned: {tuned['schedule']})")
        p.add_argument("--loss", choices=tuple(LOSSES), default=None,
                       help=f"tet: the per-step cross-entropy averaged over steps (tuned: {tuned['loss']})")
        p.add_argument("--label-smoothing", type=_smoothing, default=None,
                       help=f"for the cross-entropy losses (tuned: {tuned['label_smoothing']:g})")
        p.add_argument("--seed", type=seed_int, default=0)
        p.add_argument("--train-limit", type=positive_int, default=None, help="use only the first N training images")
        p.add_argument("--resume", action="store_true", help="continue from checkpoint.pt in --out")
        p.add_argument("--no-progress", action="store_true")
        p.add_argument("--surrogate", choices=("atan", "sigmoid", "fast-sigmoid", "triangle"), default=None,
                       help=f"(tuned: {tuned['surrogate']})")
        p.add_argument("--surrogate-slope", type=_slope, default=None,
                       help="shape of the surrogate: ATan/Sigmoid alpha, FastSigmoid slope, Triangle width "
                            f"(tuned: {tuned['surrogate_slope']:g} with {tuned['surrogate']})")
        p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                       help=f"bfloat16 autocast (spikes are exact in bf16; tuned: {'on' if tuned['bf16'] else 'off'})")
        p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                       help=f"channels-last memory layout (tuned: {'on' if tuned['channels_last'] else 'off'})")
        p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                       help="random shifts (and, for clothing, horizontal flips) of the training images; "
                            "tuned: " + ("off" if tuned["augment"] is None else
                                         ", ".join(f"{fam} ±{sh} px{' + flip' if fl else ''}"
                                                   for fam, (sh, fl) in tuned["augment"].items())))
        p.add_argument("--augment-shift", type=integer(0, 27), default=None,
                       help="largest shift of the augmentation, pixels (0 = none)")
        p.add_argument("--augment-flip", action=argparse.BooleanOptionalAction, default=None,
                       help="horizontal flips in the augmentation")
        p.add_argument("--weight-decay", type=nonnegative_float, default=None,
                       help=f"(tuned: {tuned['weight_decay']:g})")
        add_export_argument(p)
        add_device_arguments(p, training=name == "csnn")  # --sync-bn where there is BatchNorm
        if name == "fc-lif":
            p.add_argument("--beta", type=unit_interval, default=0.95, help="membrane decay β in [0, 1]")
            p.add_argument("--reset", choices=("subtract", "zero"), default="subtract",
                           help="reset of the LIF neurons (zero: the hard reset NIR can express)")
            p.add_argument("--hidden", type=integer(1, 1_000_000), default=500)
            p.add_argument("--dropout", type=fraction, default=None,
                           help=f"dropout of hidden neurons (whole sequence), in [0, 1) (tuned: {tuned['dropout']:g})")
            p.add_argument("--sweep", action="store_true", help="train the grid --betas x --hiddens")
            p.add_argument("--betas", type=_float_list, default=[0.5, 0.7, 0.9, 0.95])
            p.add_argument("--hiddens", type=_int_list, default=[200, 500, 1000])
        elif name == "fc-poisson":
            p.add_argument("--tau", type=number(1, 1e6, what="a membrane time constant in [1, 1e6]"), default=2.0)
        else:
            p.add_argument("--channels", type=integer(1, 4096), default=64)

    return add_arguments


def resolve_settings(name: str, args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    """The settings of this run: the ``--recipe``'s, with every explicitly given option in
    their place; returns them and the names of the options that overrode the recipe.

    The recipe's augmentation is resolved for the data set's family; ``augment`` becomes
    ``(shift, flip)`` or None.
    """
    recipe = RECIPES[name][args.recipe]
    settings: dict[str, Any] = {}
    overrides: list[str] = []
    for key in _recipe_keys(name):
        given = getattr(args, key, None)
        if key == "augment":
            continue
        if given is None:
            settings[key] = recipe[key]
        else:
            settings[key] = given
            if given != recipe[key]:
                overrides.append(key)
    if args.surrogate is not None and args.surrogate != recipe["surrogate"] and args.surrogate_slope is None:
        settings["surrogate_slope"] = None  # another surrogate: its own default shape
    planned = recipe["augment"][FAMILY[args.dataset]] if recipe["augment"] else None
    shift_given, flip_given = args.augment_shift is not None, args.augment_flip is not None
    if args.augment is False and (shift_given or flip_given):
        raise ConfigError("--augment-shift/--augment-flip set the augmentation that --no-augment turns off")
    on = args.augment if args.augment is not None else (planned is not None or shift_given or flip_given)
    if on:
        # the data set's kind of augmentation (digits: shifts only; clothing: shifts + flips) unless told
        shift, flip = planned or ((2, False) if FAMILY[args.dataset] == "digits" else (2, True))
        shift = args.augment_shift if shift_given else shift
        flip = args.augment_flip if flip_given else flip
        if shift == 0 and not flip:
            raise ConfigError("the augmentation has nothing to do: --augment-shift 0 with --no-augment-flip "
                              "(use --no-augment)")
        settings["augment"] = (shift, flip)
    else:
        settings["augment"] = None
    if settings["augment"] != (tuple(planned) if planned else None):
        overrides.append("augment")
    if settings["label_smoothing"] and settings["loss"] not in SMOOTHABLE:
        raise ConfigError(f"--label-smoothing applies to the cross-entropy losses ({', '.join(SMOOTHABLE)}), "
                          f"not to --loss {settings['loss']}" + (" (the recipe's loss)" if args.loss is None else ""))
    return settings, overrides


def _model_config(name: str, args: argparse.Namespace, **override: Any) -> dict[str, Any]:
    st = args.settings
    cfg: dict[str, Any] = {"T": st["T"], "surrogate": st["surrogate"]}
    if st["surrogate_slope"] is not None:
        cfg["surrogate_slope"] = st["surrogate_slope"]
    if name == "fc-lif":
        cfg.update(beta=args.beta, hidden=args.hidden)
        if st["dropout"]:
            cfg.update(dropout=st["dropout"])
        if args.reset != "subtract":
            cfg.update(reset=args.reset)
    elif name == "fc-poisson":
        cfg.update(tau=args.tau)
    else:
        cfg.update(channels=args.channels)
    cfg.update(override)
    return cfg


def _train_config(name: str, args: argparse.Namespace) -> SNNTrainConfig:
    st = args.settings
    shift, flip = st["augment"] or (0, False)
    return SNNTrainConfig(
        epochs=st["epochs"], batch_size=st["batch_size"], optimizer=st["optimizer"], lr=st["lr"],
        schedule=st["schedule"], loss=st["loss"], label_smoothing=st["label_smoothing"], seed=args.seed,
        bf16=st["bf16"], augment=st["augment"] is not None, augment_pad=shift, augment_flip=flip,
        weight_decay=st["weight_decay"], channels_last=st["channels_last"],
    )


def _identity(name: str, args: argparse.Namespace, model_cfg: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint must match to be resumed (see :func:`fit_snn`)."""
    ident = {"name": name, **model_cfg, **({"val_split": args.val_split} if args.val_split else {})}
    if name == "csnn" and distributed.world_size() > 1 and not getattr(args, "sync_bn", False):
        ident["bn_processes"] = distributed.world_size()  # BatchNorm over each process's share of a batch
    return ident


def _train_one(name, args, out: Path, model_cfg, train, test, classes) -> dict[str, Any]:
    cfg = _train_config(name, args)
    device = device_of(args)
    torch.manual_seed(args.seed)
    model = create_model(name, **model_cfg)
    t0 = time.perf_counter()
    # spike statistics of each epoch's test pass (hooks count in eval mode only); the last one is kept
    stats, last_stats = SpikeStats(model).attach(), {}

    def keep_stats(epoch: int, row: dict[str, float]) -> None:
        summary = stats.summary() if stats.images else None
        if distributed.active():  # each rank counted its share of the test pass
            parts = [s for s in distributed.all_gather_rows(summary) if s is not None]
            summary = merge_summaries(parts) if parts else None
        if summary is not None:
            last_stats["stats"] = summary
        stats.reset()

    try:
        history = fit_snn(
            model, train, test, cfg, out_dir=out, resume=args.resume, progress=not args.no_progress,
            model_config=_identity(name, args, model_cfg), on_epoch=keep_stats, device=device,
            sync_bn=getattr(args, "sync_bn", False),
        )
    finally:
        stats.detach()
    wall = time.perf_counter() - t0
    # predictions on 10 random test images
    gen = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(test[1]), generator=gen)[:10]
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
        pred = predict(model(test[0][idx].to(device), generator=gen)).cpu()
    plot_predictions(test[0][idx], test[1][idx].tolist(), pred.tolist(), classes, out / "predictions.png",
                     title=f"{name}: 10 random test images")
    plot_history(history, out / "curves.png", title=f"{name} ({args.dataset})")
    metrics: dict[str, Any] = {
        "experiment": name,
        "command": command_line(),
        "dataset": args.dataset,
        "n_train": len(train[1]),
        "n_test": len(test[1]),
        "eval_split": eval_split_name(args.val_split),
        "test_accuracy": history[-1]["test_accuracy"],
        "best_test_accuracy": max(h["test_accuracy"] for h in history),
        "train_accuracy": history[-1]["train_accuracy"],
        "epochs": len(history),
        "train_seconds": sum(h["train_seconds"] for h in history),
        "wall_seconds_this_call": wall,
        "history": history,
        "model": {"name": name, **model_cfg},
        "training": asdict(cfg),
        "recipe": {"name": args.recipe, "overridden": list(args.overrides),
                   "adjusted": dict(getattr(args, "adjusted", {}))},
        "environment": environment(),
        **parallel_info(device),
    }
    if last_stats:
        metrics["spike_stats"] = last_stats["stats"]
        plot_spike_stats(last_stats["stats"], out / "spike_stats.png", title=f"{name} on {args.dataset}: test set")
    nir_export = export_file(args, model.cpu().eval(), None)
    if nir_export:
        metrics["nir_export"] = {**nir_export, "input": "Poisson spikes" if name == "fc-poisson" else "the image"}
    write_json(out / "metrics.json", metrics)
    write_text(out / "report.md", _report(metrics))
    return metrics


def _report(m: dict[str, Any]) -> str:
    lines = [
        f"# {m['experiment']}: direct training with surrogate gradients",
        "",
        f"Command: `{m['command']}`",
        "",
        f"Dataset **{m['dataset']}** ({m['n_train']} train / {m['n_test']} "
        f"{'held-out validation' if m.get('eval_split') == 'val' else 'test'}; the 'test' columns are on that set). Model: "
        + ", ".join(f"{k}={v}" for k, v in m["model"].items()) + ". Training: "
        + ", ".join(f"{k}={v}" for k, v in m["training"].items()) + ".",
        "",
        *_recipe_lines(m),
        f"**Test accuracy {m['test_accuracy']:.4f}** after {m['epochs']} epochs "
        f"(best {m['best_test_accuracy']:.4f}; train {m['train_accuracy']:.4f}); "
        f"training time {m['train_seconds']:.0f} s on {m['environment']['threads']} threads.",
        "",
        "| epoch | train loss | train acc | test loss | test acc | seconds |",
        "|---:|---:|---:|---:|---:|---:|",
        *[
            f"| {h['epoch']} | {h['train_loss']:.4f} | {h['train_accuracy']:.4f} | {h['test_loss']:.4f} | "
            f"{h['test_accuracy']:.4f} | {h['train_seconds']:.1f} |"
            for h in m["history"]
        ],
        "",
        "![curves](curves.png)",
        "",
        "![predictions](predictions.png)",
        "",
    ]
    if m.get("spike_stats"):
        lines += ["## Spikes, synaptic operations and energy (estimate)", "",
                  "Counted during the last epoch's test pass.", "", *spike_stats_table(m["spike_stats"]), "",
                  "![spike statistics](spike_stats.png)", ""]
    if m.get("nir_export"):
        lines += [f"NIR graph written to `{m['nir_export']['path']}` (its input: {m['nir_export']['input']}).", ""]
    return "\n".join(lines)


def _show(key: str, value: Any) -> str:
    if key == "augment":
        return "none" if value is None else f"±{value[0]} px" + (" + flip" if value[1] else "")
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _recipe_lines(m: dict[str, Any]) -> list[str]:
    """The settings of both recipes for this experiment and data set beside this run's."""
    name, recipe = m["experiment"], m.get("recipe", {}).get("name", "tuned")
    fam = FAMILY.get(m["dataset"], "digits")
    tr, model = m["training"], m["model"]
    used = {**{k: tr[k] for k in ("epochs", "batch_size", "optimizer", "lr", "weight_decay", "schedule", "loss",
                                  "label_smoothing", "bf16", "channels_last")},
            "T": model["T"], "surrogate": model.get("surrogate", "atan"),
            "surrogate_slope": model.get("surrogate_slope"),
            "augment": (tr["augment_pad"], tr["augment_flip"]) if tr["augment"] else None,
            "dropout": model.get("dropout", 0.0)}
    rows = [f"Recipe **{recipe}** (`--recipe {recipe}`)"
            + (f"; overridden by options: {', '.join(m['recipe']['overridden'])}" if m["recipe"]["overridden"] else "")
            + "".join(f"; {k}: {v}" for k, v in m["recipe"].get("adjusted", {}).items())
            + f". Settings of both recipes for {name} on {m['dataset']} ({fam}) and of this run "
            f"(seed recipe: {NOTES[name]}):", "",
            "| setting | seed | tuned | this run |", "|---|---|---|---|"]
    for key in _recipe_keys(name):
        vals = []
        for r in ("seed", "tuned"):
            v = RECIPES[name][r][key]
            vals.append(_show(key, tuple(v[fam]) if key == "augment" and v else v))
        rows.append(f"| {key} | {vals[0]} | {vals[1]} | {_show(key, used[key])} |")
    return rows + [""]


def _sweep(args: argparse.Namespace, out: Path, train, test, classes) -> dict[str, Any]:
    rows = []
    curves = {}
    for beta in args.betas:
        for hidden in args.hiddens:
            sub = out / "sweep" / f"beta{beta:g}_hidden{hidden}"
            model_cfg = _model_config("fc-lif", args, beta=beta, hidden=hidden)
            done = read_json(sub / "metrics.json")
            if (done and done.get("model") == {"name": "fc-lif", **model_cfg}
                    and done.get("training") == asdict(_train_config("fc-lif", args))):
                print(f"sweep point beta={beta:g} hidden={hidden}: complete, reusing {sub}")
                m = done
            else:
                print(f"sweep point beta={beta:g} hidden={hidden}")
                resume = (sub / "checkpoint.pt").exists()
                m = _train_one("fc-lif", argparse.Namespace(**{**vars(args), "resume": resume}), sub, model_cfg,
                               train, test, classes)
            rows.append({"beta": beta, "hidden": hidden, "test_accuracy": m["test_accuracy"],
                         "train_accuracy": m["train_accuracy"], "train_seconds": m["train_seconds"]})
            curves[f"β={beta:g}, h={hidden}"] = [h["test_accuracy"] for h in m["history"]]
    plot_sweep(rows, out / "sweep_beta.png", x="beta", group="hidden", title="fc-lif: test accuracy vs decay β")
    plot_sweep(rows, out / "sweep_hidden.png", x="hidden", group="beta", title="fc-lif: test accuracy vs hidden size")
    plot_curves(curves, out / "sweep_curves.png", xlabel="epoch", ylabel="test accuracy", title="fc-lif sweep")
    best = max(rows, key=lambda r: r["test_accuracy"])
    metrics = {
        "experiment": "fc-lif-sweep", "command": command_line(), "dataset": args.dataset,
        "eval_split": eval_split_name(args.val_split),
        "test_accuracy": best["test_accuracy"], "best": best, "sweep": rows, "epochs": args.settings["epochs"],
        "environment": environment(),
    }
    table = ["| β \\ hidden | " + " | ".join(str(h) for h in args.hiddens) + " |",
             "|---|" + "---:|" * len(args.hiddens)]
    for beta in args.betas:
        accs = [r["test_accuracy"] for h in args.hiddens for r in rows if r["beta"] == beta and r["hidden"] == h]
        table.append(f"| {beta:g} | " + " | ".join(f"{a:.4f}" for a in accs) + " |")
    report = "\n".join([
        "# fc-lif sweep: decay β × hidden size", "", f"Command: `{metrics['command']}`", "",
        f"Dataset **{args.dataset}**, {args.settings['epochs']} epochs per point, T={args.settings['T']} "
        f"(recipe {args.recipe}). Test accuracy:", "",
        *table, "", f"Best: β={best['beta']:g}, hidden={best['hidden']}: {best['test_accuracy']:.4f}.", "",
        "![accuracy vs beta](sweep_beta.png)", "", "![accuracy vs hidden](sweep_hidden.png)", "",
        "![test accuracy per epoch](sweep_curves.png)", "",
    ])
    write_json(out / "metrics.json", metrics)
    write_text(out / "report.md", report)
    return metrics


def _adopt_checkpoint_precision(args: argparse.Namespace, ckpt: Path) -> None:
    """``--resume`` without ``--bf16/--no-bf16``: continue in the precision the checkpoint was
    trained in (the recipe's choice depends on the machine; the checkpoint must not)."""
    stored = load_checkpoint(ckpt, required=("identity",))["identity"]
    bf16 = stored.get("train", {}).get("bf16") if isinstance(stored, dict) else None
    if isinstance(bf16, bool) and bf16 != args.settings["bf16"]:
        args.settings["bf16"] = bf16
        note = f"bf16={bf16}: the precision {ckpt} was trained in (--resume without --bf16/--no-bf16)"
        args.adjusted["bf16"] = note
        print(f"note: {note}")


def _runner(name: str):
    def run(args: argparse.Namespace) -> dict[str, Any]:
        args.settings, args.overrides = resolve_settings(name, args)
        device = device_of(args)  # an unusable --device fails before any work
        args.adjusted = {}
        if args.bf16 is None and args.settings["bf16"]:  # the recipe's bf16, where the hardware has it
            args.settings["bf16"], note = recipe_bf16(True, device)
            if note:
                args.adjusted["bf16"] = note
                print(f"note: {note}")
        out = prepare_out_dir(args.out)
        if args.resume and not (name == "fc-lif" and args.sweep) and not (out / "checkpoint.pt").is_file():
            raise CheckpointError(f"--resume: no checkpoint to resume from in --out {out} "
                                  f"(expected {out / 'checkpoint.pt'})")
        if args.resume and args.bf16 is None and not (name == "fc-lif" and args.sweep):
            _adopt_checkpoint_precision(args, out / "checkpoint.pt")
        train, test, classes = load_split_tensors(args.dataset, args.data_dir, args.val_split)
        require_images(args.dataset, args.data_dir, train, test, model=name, shape=(1, 28, 28), num_classes=10)
        if args.train_limit:
            train = (train[0][: args.train_limit], train[1][: args.train_limit])
        if args.export_nir and name == "fc-lif" and args.sweep:
            raise ConfigError("--export-nir writes one network; it cannot be combined with --sweep")
        check_exportable(args, lambda: create_model(name, **_model_config(name, args)).eval(), None)
        if name == "fc-lif" and args.sweep:
            m = _sweep(args, out, train, test, classes)
        else:
            m = _train_one(name, args, out, _model_config(name, args), train, test, classes)
        print(f"{name}: test accuracy {m['test_accuracy']:.4f}; wrote {out / 'metrics.json'}, {out / 'report.md'}")
        return m

    return run


EXPERIMENTS = [
    Experiment(name=n, description=DESCRIPTIONS[n], add_arguments=_adder(n), run=_runner(n)) for n in RECIPES
]
