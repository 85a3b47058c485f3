"""``spikeforge run cifar-convert``: the fast CIFAR-10 recipe, converted and evaluated at every step.

Trains :class:`~spikeforge.models.fastnet.FastNet` (``cifar-fast``) with the fast
recipe — frozen patch-whitening first conv, BN with learnt biases only (their
learning rate ×64), Nesterov SGD with a linear warm-up and linear decay, label
smoothing, random flips and 2-pixel translations, bf16 autocast in the
channels-last layout — then converts it to integrate-and-fire neurons with binary
spikes and evaluates the SNN after every step.

The training writes ``checkpoint.pt`` after every epoch (``--resume`` continues
exactly) and ``model.pt`` when done, which later runs with the same training options
reuse (``--retrain`` ignores it).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from spikeforge import distributed
from spikeforge.convert import convert
from spikeforge.data import dataset_names
from spikeforge.errors import ConfigError, IncompatibleDataError
from spikeforge.evaluate import evaluate_snn
from spikeforge.experiments.common import (
    add_device_arguments,
    add_method_arguments,
    add_val_split_argument,
    command_line,
    device_of,
    method_name,
    method_options,
    environment,
    eval_split_name,
    learning_rate,
    load_split_tensors,
    nonnegative_float,
    number,
    parallel_info,
    percentile_value,
    positive_int,
    prepare_out_dir,
    require_images,
    seed_int,
)
from spikeforge.experiments.registry import Experiment
from spikeforge.io import write_json, write_text
from spikeforge.models import create_model
from spikeforge.models.backbones import ACTIVATIONS
from spikeforge.models.fastnet import POOLS, init_whitening
from spikeforge.metrics.spikes import spike_stats_table
from spikeforge.nir.cli import add_export_argument, check_exportable, export_file
from spikeforge.precision import native_bf16
from spikeforge.plots import plot_accuracy_vs_T, plot_bars, plot_history, plot_spike_stats
from spikeforge.train import CheckpointError, evaluate_classifier, load_checkpoint, save_checkpoint, train_classifier
from spikeforge.train.checkpoint import load_state

#: Options that change the trained network (a cached model is reused only when all match).
TRAIN_KEYS = (
    "dataset", "val_split", "epochs", "batch_size", "lr", "weight_decay", "momentum", "bias_lr_scale",
    "warmup", "label_smoothing", "translate", "widths", "pool", "activation", "levels", "precision", "seed",
    "model", "width", "lookahead", "init_from",
)
#: What a cached model.pt written before ``--model``/``--width`` existed was trained as.
_OLD_DEFAULTS = {"model": "cifar-fast", "width": None, "lookahead": False, "init_from": None}
#: Training options that fix the network's layout (they must match for ``--init-from``).
ARCH_KEYS = ("dataset", "model", "width", "widths", "pool")

#: Networks ``--model`` trains: the fast net, or a VGG/ResNet backbone of the study at ``--width``.
MODELS = ("cifar-fast", "vgg11", "vgg13", "vgg16", "resnet18", "resnet34")

#: The optimizer settings per kind of network, used where the option is not given.
#: cifar-fast: the fast recipe (BN without scale, so its biases learn 64× faster).
#: Backbones (BN with scale and bias): Nesterov SGD lr 0.2 for batch 256, weight decay
#: 5e-4 and label smoothing 0.1, the usual CIFAR ResNet/VGG settings.
RECIPE_DEFAULTS = {
    "cifar-fast": dict(lr=0.375, weight_decay=1.33e-3, momentum=0.85, bias_lr_scale=64.0, warmup=0.2,
                       label_smoothing=0.2),
    "backbone": dict(lr=0.2, weight_decay=5e-4, momentum=0.9, bias_lr_scale=1.0, warmup=0.15,
                     label_smoothing=0.1),
}


def _widths(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three comma-separated channel counts, got {text!r}") from None
    if len(vals) != 3 or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected three positive channel counts, got {text!r}")
    return vals


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {value}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="cifar10", choices=dataset_names())
    p.add_argument("--data-dir", default=None, help="folder with the dataset files")
    add_val_split_argument(p)
    p.add_argument("--out", default="runs/cifar-convert")
    p.add_argument("--epochs", type=positive_int, default=12, help="12 ≈ 20 min on 2 cores (40k images)")
    p.add_argument("--T", type=positive_int, default=64, help="evaluate steps 1..T")
    p.add_argument("--batch-size", type=positive_int, default=256)
    fast, bb = RECIPE_DEFAULTS["cifar-fast"], RECIPE_DEFAULTS["backbone"]

    def d(key: str) -> str:
        return f"(default {fast[key]:g} for cifar-fast, {bb[key]:g} for the backbones)"

    p.add_argument("--model", choices=MODELS, default="cifar-fast",
                   help="the fast net, or a VGG/ResNet backbone of the study scaled by --width")
    p.add_argument("--width", type=number(0, 64, lo_open=True, what="a width factor in (0, 64]"), default=None,
                   help="channel factor of a backbone (1 = 64-128-256-512 channels; default 0.5)")
    p.add_argument("--lr", type=learning_rate, default=None, help="SGD learning rate (mean loss over the batch) " + d("lr"))
    p.add_argument("--weight-decay", type=nonnegative_float, default=None, help="of conv/linear weights " + d("weight_decay"))
    p.add_argument("--momentum", type=_fraction, default=None, help="Nesterov momentum " + d("momentum"))
    p.add_argument("--bias-lr-scale", type=number(0, 1e6, lo_open=True), default=None,
                   help="learning-rate factor of BN biases " + d("bias_lr_scale"))
    p.add_argument("--warmup", type=_fraction, default=None, help="fraction of steps of linear warm-up " + d("warmup"))
    p.add_argument("--label-smoothing", type=_fraction, default=None, help=d("label_smoothing"))
    p.add_argument("--lookahead", action=argparse.BooleanOptionalAction, default=False,
                   help="average the weights over the last 70%% of the epochs and keep the average "
                        "(a lookahead on an exponential moving average)")
    p.add_argument("--init-from", default=None, metavar="RUN",
                   help="start from the trained network of an earlier cifar-convert --out RUN (same layout; "
                        "the activation may differ: a ReLU net fine-tuned with --activation qcfs gets each "
                        "QCFS ceiling λ from the ReLU activations there, their 99.9th percentile)")
    p.add_argument("--translate", type=int, choices=range(0, 9), default=2, metavar="PIXELS",
                   help="random translation of training images (0-8 pixels); flips always on")
    p.add_argument("--widths", type=_widths, default=[64, 256, 256], help="channels of the three blocks (cifar-fast)")
    p.add_argument("--pool", choices=POOLS, default="max", help="pooling of cifar-fast's blocks")
    p.add_argument("--activation", choices=ACTIVATIONS, default="relu")
    p.add_argument("--levels", type=positive_int, default=8, help="QCFS quantization levels L")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="training arithmetic: bf16 autocast + channels-last or plain fp32; auto (default): bf16 "
                        "where the CPU/GPU computes bfloat16 natively (else it is slower than fp32), or the "
                        "precision of the network already trained in --out")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--percentile", type=percentile_value, default=99.99)
    p.add_argument("--per-channel", action="store_true", help="per-channel thresholds")
    p.add_argument("--maxpool", choices=("lipool", "gated", "plain"), default="lipool")
    p.add_argument("--calib-batches", type=positive_int, default=8, help="batches of 256 training images")
    add_method_arguments(p, activation=False)
    p.add_argument("--snn-limit", type=positive_int, default=None,
                   help="evaluate the SNN on the first N evaluation images only (default: all)")
    p.add_argument("--eval-batch-size", type=positive_int, default=250)
    p.add_argument("--snn-bf16", action=argparse.BooleanOptionalAction, default=False,
                   help="run the SNN's convolutions in bfloat16 (membranes and the analog input stay float32)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted training from checkpoint.pt")
    p.add_argument("--retrain", action="store_true", help="ignore a trained model.pt in --out")
    p.add_argument("--no-progress", action="store_true")
    add_device_arguments(p)
    add_export_argument(p, converted=True)


def resolve_recipe(args: argparse.Namespace) -> None:
    """Fill the optimizer options not given with the defaults of ``--model``'s kind (in place)."""
    fast = args.model == "cifar-fast"
    if fast and args.width is not None:
        raise ConfigError("--width scales the VGG/ResNet backbones; cifar-fast takes --widths")
    if not fast:
        if args.widths != [64, 256, 256] or args.pool != "max":
            raise ConfigError(f"--widths/--pool shape cifar-fast; --model {args.model} takes --width")
        args.width = 0.5 if args.width is None else args.width
    for key, value in RECIPE_DEFAULTS["cifar-fast" if fast else "backbone"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def _config(args: argparse.Namespace) -> dict[str, Any]:
    config = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in ((k, getattr(args, k)) for k in TRAIN_KEYS)}
    if distributed.world_size() > 1 and not getattr(args, "sync_bn", False):
        config["bn_processes"] = distributed.world_size()  # BatchNorm over each process's share of a batch
    return config


def _stored_config(payload: dict[str, Any]) -> dict[str, Any]:
    """A cached run's training options, completed for files written before ``--model`` existed."""
    return {**_OLD_DEFAULTS, **payload["config"]}


def build_model(config: dict[str, Any], in_channels: int, num_classes: int, image_size: int = 32) -> torch.nn.Module:
    """The network of a run's training options (``metrics.json``'s ``training`` or model.pt's ``config``)."""
    config = {**_OLD_DEFAULTS, **config}
    if config["model"] == "cifar-fast":
        return create_model("cifar-fast", in_channels=in_channels, num_classes=num_classes,
                            widths=tuple(config["widths"]), pool=config["pool"], act=config["activation"],
                            levels=config["levels"])
    return create_model(config["model"], in_channels=in_channels, num_classes=num_classes, width=config["width"],
                        act=config["activation"], levels=config["levels"], image_size=image_size)


def net_name(config: dict[str, Any]) -> str:
    """``cifar-fast`` or the backbone with its width, for reports and plot titles."""
    config = {**_OLD_DEFAULTS, **config}
    return config["model"] if config["model"] == "cifar-fast" else f"{config['model']} (width ×{config['width']:g})"


def _build(args: argparse.Namespace, in_channels: int, num_classes: int, image_size: int = 32) -> torch.nn.Module:
    return build_model(_config(args), in_channels, num_classes, image_size)


@torch.no_grad()
def init_from_run(model: torch.nn.Module, config: dict[str, Any], run: Path, images: torch.Tensor,
                  num_classes: int, percentile: float = 99.9) -> dict[str, float]:
    """Load the trained network of cifar-convert run ``run`` into ``model`` (same layout).

    The layouts must match (:data:`ARCH_KEYS`); the activations may differ. QCFS
    ceilings that the source does not have (a ReLU source) start at the ``percentile``
    of the source's activation at the same place on ``images``; a QCFS source passes
    its own. Returns the ceilings set, by module name. Errors name the run and the mismatch.
    """
    from spikeforge.layers import QCFS

    path = run / "model.pt"
    payload = load_checkpoint(path, required=("model", "config"))
    source = _stored_config(payload)
    wanted = {**_OLD_DEFAULTS, **config}
    diff = [k for k in ARCH_KEYS if source.get(k) != wanted.get(k)]
    if diff:
        raise ConfigError(f"--init-from {run}: that network has another layout ("
                          + ", ".join(f"{k}={source.get(k)!r}, here {wanted.get(k)!r}" for k in diff) + ")")
    state = payload["model"]
    src = build_model(source, images.shape[1], num_classes, images.shape[-1])
    load_state(src, state, path)
    ceilings = {name: m for name, m in model.named_modules() if isinstance(m, QCFS)}
    missing = [f"{name}.threshold" for name in ceilings if f"{name}.threshold" not in state]
    own = {k: v for k, v in model.state_dict().items()}
    unknown = [k for k in state if k not in own]
    if unknown:
        raise ConfigError(f"--init-from {run}: its weights do not fit this network (unexpected {', '.join(unknown[:3])})")
    load_state(model, {**{k: own[k] for k in missing}, **state}, path)
    # Pair the activation call sites of the two nets by call order: a ReLU block calls one
    # module at several sites, where the QCFS twin has one module per site.
    order: list[str] = []
    was_training = model.training
    probes = [m.register_forward_hook(lambda m, a, y, name=name: order.append(name)) for name, m in ceilings.items()]
    try:
        model.eval()(images[:2])
    finally:
        for h in probes:
            h.remove()
    model.train(was_training)
    outputs: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda m, a, y: outputs.append(_positive_sample(y)))
             for m in src.modules() if isinstance(m, (torch.nn.ReLU, QCFS))]
    try:
        src.eval()(images)
    finally:
        for h in hooks:
            h.remove()
    if len(outputs) != len(order):
        raise ConfigError(f"--init-from {run}: that network has {len(outputs)} activation call sites, this one {len(order)}")
    set_to: dict[str, float] = {}
    for name, y in zip(order, outputs):
        if f"{name}.threshold" not in missing or name in set_to:
            continue
        lam = float(torch.quantile(y, percentile / 100)) if y.numel() else 1.0
        ceilings[name].threshold.fill_(max(lam, 1e-3))
        set_to[name] = float(ceilings[name].threshold)
    return set_to


def _positive_sample(y: torch.Tensor, limit: int = 1 << 22) -> torch.Tensor:
    """The positive entries of an activation (a fixed random subset of ``limit`` when more)."""
    y = y.detach().float().flatten()
    y = y[y > 0]
    if y.numel() > limit:
        y = y[torch.randperm(y.numel(), generator=torch.Generator().manual_seed(0))[:limit]]
    return y


def _adopt_precision(args: argparse.Namespace, payload: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """With ``--precision auto``, a stored network trained with the same options in the other
    precision is reused (or resumed) in its own precision: the choice depends on the machine."""
    stored = _stored_config(payload)
    if (getattr(args, "precision_note", None) is not None and stored.get("precision") in ("bf16", "fp32")
            and {**stored, "precision": config["precision"]} == config):
        args.precision = stored["precision"]
        args.precision_note = f"{args.precision} (auto: the precision of the network stored in --out)"
        return _config(args)
    return config


def _train_or_load(args, out: Path, train, test, num_classes: int,
                   device: torch.device | None = None) -> tuple[torch.nn.Module, list, bool, float]:
    config = _config(args)
    model = _build(args, train[0].shape[1], num_classes, train[0].shape[-1])
    final, ckpt = out / "model.pt", out / "checkpoint.pt"
    if final.exists() and not args.retrain:
        try:
            payload = load_checkpoint(final, required=("model", "config", "history", "train_seconds"))
            config = _adopt_precision(args, payload, config)
            if _stored_config(payload) == config:
                load_state(model, payload["model"], final)
                print(f"loaded the trained network from {final} (same training options)")
                return model.to(device or "cpu").eval(), list(payload["history"]), True, float(payload["train_seconds"])
            print(f"{final} was trained with other options; training again")
        except (CheckpointError, RuntimeError) as exc:
            print(f"warning: {final}: {exc}; training again")
    start, history, opt_state, spent = 1, [], None, 0.0
    if args.resume:
        payload = load_checkpoint(ckpt, required=("model", "config", "history", "epoch", "state", "train_seconds"))
        config = _adopt_precision(args, payload, config)
        if _stored_config(payload) != config:
            diff = sorted(k for k in config if _stored_config(payload).get(k) != config[k])
            raise CheckpointError(f"{ckpt} was written with other training options ({', '.join(diff)}); "
                                  "rerun with the same options or drop --resume")
        load_state(model, payload["model"], ckpt)
        start, history, opt_state = int(payload["epoch"]) + 1, list(payload["history"]), payload["state"]
        spent = float(payload["train_seconds"])
        print(f"resuming from {ckpt} after epoch {payload['epoch']}")
    else:
        torch.manual_seed(args.seed)
        model = _build(args, train[0].shape[1], num_classes, train[0].shape[-1])
        gen = torch.Generator().manual_seed(args.seed)
        if args.init_from is not None:
            lams = init_from_run(model, config, Path(args.init_from),
                                 train[0][torch.randperm(len(train[1]), generator=gen)[:1024]], num_classes)
            print(f"started from {args.init_from}/model.pt" + (f"; QCFS ceilings from its activations: "
                  + ", ".join(f"{v:.2f}" for v in lams.values()) if lams else ""))
        elif args.model == "cifar-fast":
            init_whitening(model, train[0][torch.randperm(len(train[1]), generator=gen)[:5000]])
    t0 = time.perf_counter()
    bf16 = args.precision == "bf16"

    def on_state(epoch: int, state: dict) -> None:
        state = dict(state)
        done = state.pop("history")
        save_checkpoint(ckpt, {"model": model.state_dict(), "config": config, "history": done,
                               "epoch": epoch, "state": state, "train_seconds": spent + time.perf_counter() - t0})

    if start <= args.epochs:
        # channels-last in float32 too: 1.27x (cifar-fast) and 1.40x (ResNet-18 x0.5) on an AVX2 CPU
        history = train_classifier(
            model, train, test, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
            weight_decay=args.weight_decay, momentum=args.momentum, optimizer="sgd", schedule="linear",
            warmup=args.warmup, label_smoothing=args.label_smoothing, bias_lr_scale=args.bias_lr_scale,
            augment_shift=args.translate, flip=True, bf16=bf16, channels_last=True, seed=args.seed,
            progress=not args.no_progress, start_epoch=start, history=history, opt_state=opt_state,
            on_state=on_state, device=device, sync_bn=getattr(args, "sync_bn", False), lookahead=args.lookahead,
        )
    train_seconds = spent + time.perf_counter() - t0
    save_checkpoint(final, {"model": model.state_dict(), "config": config, "history": history,
                            "train_seconds": train_seconds})
    return model.eval(), history, False, train_seconds


def _report(m: dict[str, Any]) -> str:
    acc = m["snn_accuracy"]
    T = len(acc)
    shown = [t for t in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if t <= T]
    if T not in shown:
        shown.append(T)
    split = "held-out validation" if m["eval_split"] == "val" else "test"
    lines = [
        f"# {net_name(m['training'])}: ANN → SNN conversion",
        "",
        f"Command: `{m['command']}`",
        "",
        f"Dataset **{m['dataset']}**: {m['n_train']} training images; evaluation on {m['n_test']} {split} images "
        f"(the SNN on {m['n_snn_eval']} of them).",
        "",
        (f"Network: `cifar-fast`, widths {m['training']['widths']}, {m['training']['pool']} pooling, "
         if m["training"].get("model", "cifar-fast") == "cifar-fast" else
         f"Network: `{m['training']['model']}` at width ×{m['training']['width']:g} (1 = 64-128-256-512 channels), ")
        + f"{m['training']['activation']} activation, {m['parameters']:,} parameters. Training: {m['epochs']} epochs, "
        f"{m.get('precision_choice') or m['training']['precision']}, batch {m['training']['batch_size']}, "
        f"Nesterov SGD lr {m['training']['lr']} "
        f"(warm-up {m['training']['warmup']}, then linear decay), label smoothing {m['training']['label_smoothing']}, "
        f"flip + {m['training']['translate']}-pixel translation"
        f"{', weight averaging (lookahead)' if m['training'].get('lookahead') else ''}; "
        f"{m['train_seconds'] / 60:.1f} min of training "
        f"({'loaded from cache' if m['checkpoint_reused'] else 'this run'}).",
        "",
        f"ANN {split} accuracy: **{m['ann_accuracy']:.4f}** (on the SNN's images: {m['ann_accuracy_snn_images']:.4f}).",
        "",
        f"Method: **{m['method']}**. Conversion: binary spikes, "
        + ", ".join(f"{k}={v}" for k, v in m["conversion"].items()),
        "",
        "| T | SNN accuracy | SNN − ANN (pt, same images) |",
        "|---:|---:|---:|",
    ]
    for t in shown:
        a = acc[str(t)]
        lines.append(f"| {t} | {a:.4f} | {100 * (a - m['ann_accuracy_snn_images']):+.2f} |")
    if m.get("spike_stats"):
        lines += ["", "## Spikes, synaptic operations and energy (estimate)", "",
                  *spike_stats_table(m["spike_stats"], steps=shown), "", "![spike statistics](spike_stats.png)"]
    lines += [
        "",
        "![accuracy vs T](accuracy_vs_T.png)",
        "",
        "## Firing rates (spikes per neuron per step)",
        "",
        "| layer | rate |",
        "|---|---:|",
        *[f"| {k} | {v:.4f} |" for k, v in m["firing_rates"].items()],
        "",
        f"Speed ({m['environment']['threads']} threads): ANN {m['ann_images_per_second']:.0f} images/s; "
        f"SNN at T={T} {m['snn_images_per_second']:.1f} images/s "
        f"({'bfloat16 convolutions, float32 membranes' if m.get('snn_precision') == 'bf16' else 'float32'}).",
        "",
        "![training curves](training_curves.png)",
        "",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    resolve_recipe(args)
    method_options(args)  # bad method options fail before any work
    device = device_of(args)  # so does an unusable --device
    args.precision_note = None
    if args.precision == "auto":
        args.precision = "bf16" if native_bf16(device) else "fp32"
        why = ("native bfloat16 on this device" if args.precision == "bf16"
               else "no native bfloat16 on this device, where bf16 autocast is slower than fp32")
        args.precision_note = f"{args.precision} (auto: {why})"
    out = prepare_out_dir(args.out)
    if args.resume and not (out / "checkpoint.pt").is_file() and not (out / "model.pt").is_file():
        raise CheckpointError(f"--resume: no checkpoint to resume from in --out {out} (expected {out / 'checkpoint.pt'})")
    if args.init_from is not None and not (Path(args.init_from) / "model.pt").is_file():
        raise CheckpointError(f"--init-from {args.init_from}: no trained network there "
                              f"(expected {Path(args.init_from) / 'model.pt'}, written by a finished cifar-convert run)")
    train, test, classes = load_split_tensors(args.dataset, args.data_dir, args.val_split)
    require_images(args.dataset, args.data_dir, train, test, model=args.model, num_classes=len(classes))
    h, w = train[0].shape[-2:]
    if (h, w) not in ((32, 32), (28, 28)):
        raise IncompatibleDataError(f"{args.model} expects 32×32 or 28×28 images, {args.dataset} has {h}×{w}")
    options = dict(percentile=args.percentile, per_channel=args.per_channel, maxpool=args.maxpool)
    options.update(method_options(args))
    check_exportable(args, lambda: convert(_build(args, train[0].shape[1], len(classes), train[0].shape[-1]).eval(), train[0][:64],
                                           batch_size=64, max_batches=1, **options), tuple(train[0].shape[1:]))
    model, history, reused, train_seconds = _train_or_load(args, out, train, test, len(classes), device)
    model.to(device)
    t0 = time.perf_counter()
    ann_acc, _ = evaluate_classifier(model, *test, batch_size=500)
    ann_ips = len(test[1]) / (time.perf_counter() - t0)

    gen = torch.Generator().manual_seed(args.seed + 1)
    calib = train[0][torch.randperm(len(train[1]), generator=gen)[: 256 * args.calib_batches]]
    # converted on the CPU (calibration is a few batches), evaluated on the device
    snn = convert(model.cpu(), calib, batch_size=256, max_batches=args.calib_batches, channels_last=True, **options)
    model.to(device)
    snn.to(device)
    n_snn = min(len(test[1]), args.snn_limit or len(test[1]))
    x_snn, y_snn = test[0][:n_snn], test[1][:n_snn]
    ann_snn_images = ann_acc if n_snn == len(test[1]) else evaluate_classifier(model, x_snn, y_snn)[0]
    res = evaluate_snn(snn, x_snn, y_snn, args.T, batch_size=args.eval_batch_size, progress=not args.no_progress,
                       bf16=args.snn_bf16)
    snn_acc = {str(t + 1): a for t, a in enumerate(res["accuracy"])}
    metrics: dict[str, Any] = {
        "experiment": "cifar-convert",
        "command": command_line(),
        "dataset": args.dataset,
        "eval_split": eval_split_name(args.val_split),
        "n_train": len(train[1]),
        "n_test": len(test[1]),
        "n_snn_eval": n_snn,
        "epochs": len(history),
        "ann_accuracy": ann_acc,
        "ann_accuracy_snn_images": ann_snn_images,
        "snn_accuracy": snn_acc,
        "firing_rates": res["firing_rates"],
        "conversion": options,
        "method": method_name(options, args.activation, args.levels),
        "training": _config(args),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": train_seconds,
        "checkpoint_reused": reused,
        "ann_images_per_second": ann_ips,
        "snn_images_per_second": res["images_per_second"],
        "snn_seconds": res["seconds"],
        "snn_precision": "bf16" if args.snn_bf16 else "fp32",
        "precision_choice": args.precision_note or f"{args.precision} (--precision {args.precision})",
        "history": history,
        "environment": environment(),
        "spike_stats": res["spike_stats"],
        **parallel_info(device),
    }
    if getattr(snn, "e2e_report", None):
        metrics["e2e_report"] = snn.e2e_report
    snn.cpu()
    plot_spike_stats(res["spike_stats"], out / "spike_stats.png", title=f"{net_name(_config(args))} on {args.dataset}: converted SNN")
    nir_export = export_file(args, snn, tuple(train[0].shape[1:]))
    if nir_export:
        metrics["nir_export"] = nir_export
    plot_accuracy_vs_T({"SNN (binary spikes)": res["accuracy"]}, out / "accuracy_vs_T.png",
                       ann_accuracy=ann_snn_images, title=f"{net_name(_config(args))} on {args.dataset}: converted SNN")
    plot_bars(res["firing_rates"], out / "firing_rates.png", title="firing rate per layer", ylabel="spikes / neuron / step")
    if history:
        plot_history(history, out / "training_curves.png", title=f"{net_name(_config(args))} (ANN) training")
    write_json(out / "metrics.json", metrics)
    write_text(out / "report.md", _report(metrics))
    shown = [t for t in (4, 8, 16, 32, 64, 128) if t <= args.T]
    print(f"ANN accuracy {ann_acc:.4f}; SNN " + ", ".join(f"T={t}: {snn_acc[str(t)]:.4f}" for t in shown))
    print(f"wrote {out / 'metrics.json'}, {out / 'report.md'}")
    return metrics


EXPERIMENT = Experiment(
    name="cifar-convert",
    description="train the fast CIFAR-10 network, convert it to an SNN, accuracy at every step",
    add_arguments=add_arguments,
    run=run,
)
