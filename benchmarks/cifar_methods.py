"""Conversion methods side by side on one trained cifar-fast network (binary spikes).

Usage::

    python benchmarks/cifar_methods.py --run runs/cifar-fast --data-dir ../shared/data/cifar10 \
        --n 2000 --T 64 --method percentile --method mse+bias@16 --method mse+potential@8

``--run`` is the ``--out`` folder of ``spikeforge run cifar-convert`` (its ``model.pt``
holds the trained weights and the training options, including ``--val-split``); the
SNNs are evaluated on the first ``--n`` images of the same held-out split. A method is
``percentile[:p]``, ``mse@T`` or ``mse+bias@T`` / ``mse+potential@T`` /
``percentile+bias@T`` (T = the target steps of the threshold search and corrections), with
``/pc`` appended for per-channel thresholds, ``/cbN`` for N correction batches
(``mse+potential@8/pc/cb4``), ``/wN`` for N steps of layer-wise weight calibration and
``/e2eN`` for end-to-end calibration of the corrections at the target T on N training images
outside the calibration and selection sets (``percentile+potential@4/cb4/e2e4096``; randomly
shifted by up to ``--e2e-aug`` pixels and flipped; see ``spikeforge.convert.calibrate_end_to_end``);
``/e2eNw`` fine-tunes the SNN's weights in the same pass (learning rate ``--e2e-weight-lr``), a
distillation fine-tune of the whole SNN at the target T. ``--e2e-epochs`` and ``--e2e-batch`` set
its passes and batch; on ``--device cuda`` it runs there.

``--save-snn DIR`` writes the (last) method's SNN state (float16 parts of ≤ 15 MiB, as
``device_transport.py export``), ``--load-snn DIR`` evaluates such a state instead of
calibrating again (the method without ``/e2e`` rebuilds the SNN's structure).
``--data-pack FILE`` reads the images from a ``device_transport.py pack`` file instead of
``--data-dir`` (one packed with ``--train-keep`` carries fewer training images).
Prints, per method, the conversion time and accuracy at T = 1, 2, 4, 8, 16, 32, 64, and
writes ``methods.json`` into ``--run`` (or to ``--json PATH``, so that a second comparison on
the same run does not replace the first).

``--sj 99.9%`` / ``--sj ltb`` (repeatable) also converts the same trained net with
SpikingJelly 2.0 (its rate-coding recipe at that percentile, or its local-threshold-balancing
recipe; see ``_peers.py``), on the same calibration images, and evaluates it on the same
images (the image fed at every step, outputs summed over steps); the last table puts the best
spikeforge method and the best SpikingJelly recipe side by side at every T.

``--select-T T`` (with ``--select-n N``, default 2,000) ranks the methods first: each is
converted and scored by how often its SNN, after T steps, predicts what the ANN predicts on N
training images that the calibration did not use (the ANN has seen them, so only the
agreement with it ranks the methods, not their accuracy); only the winner is evaluated on the
held-out images. The evaluation images take no part in the choice.

``--precision bf16`` evaluates spikeforge's SNNs with bfloat16 convolutions (float32
membranes); ``both`` does that and evaluates the head again in float32, printing the two
accuracies and the speed ratio. The head (``--head N``, the first N of the ``--n`` images)
is where the float32 comparison and SpikingJelly run, so that ``--n 10000`` stays affordable.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from spikeforge import convert
from spikeforge.convert import calibrate_end_to_end
from spikeforge.data.augment import random_crop_flip
from spikeforge.evaluate import evaluate_snn
from spikeforge.experiments.common import load_split_tensors
from spikeforge.experiments.cifar_convert import build_model
from spikeforge.train import evaluate_classifier, load_checkpoint

PART = 15 * 2**20


def load_pack(path: str, val_split: int) -> tuple:
    """``load_split_tensors`` on a ``device_transport.py pack`` file: the same held-out images
    in the same order; the training images the file carries."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from device_transport import read_pack
    from spikeforge.data.cifar import CIFAR10_CLASSES
    from spikeforge.data.split import stratified_split
    from spikeforge.experiments.common import VAL_SPLIT_SEED

    import lzma
    import struct

    try:
        rec, held, present = read_pack(path)
    except (OSError, ValueError, EOFError, struct.error, lzma.LZMAError) as exc:
        raise SystemExit(f"--data-pack {path}: truncated, corrupt or missing ({exc})") from None
    labels = torch.from_numpy(rec[:, 0].astype(np.int64))
    train_idx, val_idx = stratified_split(labels, val_split, seed=VAL_SPLIT_SEED)
    mask = np.zeros(len(rec), dtype=bool)
    mask[val_idx.numpy()] = True
    if not (mask == held).all():
        raise SystemExit(f"--data-pack {path}: its held-out images are not the run's --val-split {val_split}")
    train_idx = train_idx[torch.from_numpy(present[train_idx.numpy()])]
    x = torch.from_numpy(rec[:, 1:]).view(-1, 3, 32, 32)
    return ((x[train_idx].float().div_(255), labels[train_idx]), (x[val_idx].float().div_(255), labels[val_idx]),
            list(CIFAR10_CLASSES))


def save_snn(snn, folder: str, meta: dict, neurons_only: bool = False) -> None:
    """The SNN's parameters and buffers (tensors of > 4,096 elements as float16) in parts;
    ``neurons_only``: only the neuron layers' buffers (thresholds and corrections)."""
    import io

    keep = tuple(f"graph_module.{name}." for name in snn.neurons())
    state = {k: (v.detach().cpu().half() if v.is_floating_point() and v.numel() > 4096 else v.detach().cpu())
             for k, v in snn.state_dict().items()
             if not neurons_only or k.startswith(keep)}
    buf = io.BytesIO()
    torch.save({"snn": state, "meta": meta}, buf)
    data = buf.getvalue()
    import shutil

    out = Path(folder)
    # all parts into a sibling folder first, then swapped in: an interrupted save leaves the old state whole
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for i in range(0, len(data), PART):
        (tmp / f"part{i // PART:02d}").write_bytes(data[i:i + PART])
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.replace(old)
    tmp.replace(out)
    shutil.rmtree(old, ignore_errors=True)
    print(f"SNN state -> {out}: {len(data) / 2**20:.1f} MiB in {(len(data) + PART - 1) // PART} parts")


def load_snn(snn, folder: str) -> dict:
    """Put a state written by :func:`save_snn` into ``snn`` (same structure); returns its meta."""
    import io

    parts = sorted(Path(folder).glob("part*"))
    if not parts:
        raise SystemExit(f"--load-snn {folder}: no part files")
    try:
        payload = torch.load(io.BytesIO(b"".join(p.read_bytes() for p in parts)), map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated / corrupt parts
        raise SystemExit(f"--load-snn {folder}: cannot read the saved SNN ({exc})") from None
    own = snn.state_dict()
    for key, value in payload["snn"].items():
        path, _, attr = key.rpartition(".")
        mod = snn.get_submodule(path) if path else snn
        value = value.float() if value.dtype == torch.float16 else value
        if key in own and own[key].shape != value.shape and attr in mod._parameters:
            raise SystemExit(f"--load-snn {folder}: {key} has shape {tuple(value.shape)}, the SNN {tuple(own[key].shape)}")
        if attr in mod._parameters:
            with torch.no_grad():
                mod._parameters[attr].copy_(value)
        elif attr in mod._buffers:
            mod._buffers[attr] = value.clone()
        else:
            raise SystemExit(f"--load-snn {folder}: {key} is not a parameter or buffer of this SNN (another method?)")
    return payload.get("meta", {})


def parse_method(text: str) -> dict:
    """convert() keywords of a method string such as ``mse+potential@8``.

    Suffixes: ``/pc`` per-channel thresholds, ``/cbN`` N calibration batches for the
    corrections (default 1), ``/wN`` N steps of layer-wise weight calibration before each
    layer's correction (``/wNrK``: its true output simulated every K steps), e.g. ``mse+potential@8/pc/cb4`` or ``mse+potential@16/w30``.
    """
    body, *flags = text.split("/")
    kw: dict = {"per_channel": False}
    for flag in flags:
        if flag == "pc":
            kw["per_channel"] = True
        elif flag.startswith("cb") and flag[2:].isdigit() and int(flag[2:]) > 0:
            kw["correction_batches"] = int(flag[2:])
        elif flag.startswith("e2e") and flag[3:].rstrip("w").isdigit() and int(flag[3:].rstrip("w")) > 0 \
                and flag.count("w") <= 1:
            kw["e2e_images"] = int(flag[3:].rstrip("w"))
            kw["e2e_weights"] = flag.endswith("w")
        elif flag.startswith("w") and flag[1:].partition("r")[0].isdigit() and int(flag[1:].partition("r")[0]) > 0:
            iters, r, refresh = flag[1:].partition("r")
            kw["weight_iters"] = int(iters)
            if r:
                if not (refresh.isdigit() and int(refresh) > 0):
                    raise SystemExit(f"bad --method {text!r}: /wNrK needs a whole K >= 1")
                kw["weight_refresh"] = int(refresh)
        else:
            raise SystemExit(f"bad --method {text!r}: unknown suffix /{flag} (known: /pc, /cbN, /wN, /wNrK, /e2eN, /e2eNw)")
    name, _, target = body.partition("@")
    base, _, corr = name.partition("+")
    thr, _, p = base.partition(":")
    if thr not in ("percentile", "mse") or corr not in ("", "bias", "potential"):
        raise SystemExit(f"bad --method {text!r}")
    kw["percentile"] = float(p) if p else 99.99
    if thr == "mse" or corr:
        if not target:
            raise SystemExit(f"--method {text!r} needs @T (target steps)")
        kw.update(threshold=thr, correction=corr or "none", target_T=int(target))
    if "e2e_images" in kw and "target_T" not in kw:
        raise SystemExit(f"--method {text!r}: /e2eN calibrates for the @T steps; add a correction@T, e.g. "
                         f"percentile+potential@4/e2e4096")
    return kw


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--T", type=int, default=64)
    ap.add_argument("--method", action="append", default=[])
    ap.add_argument("--calib-batches", type=int, default=8)
    ap.add_argument("--precision", choices=("fp32", "bf16", "both"), default="fp32",
                    help="spikeforge's SNNs in float32, with bfloat16 convolutions (float32 membranes), "
                         "or both (bf16 on all images, float32 again on the head: accuracy and images/s side by side)")
    ap.add_argument("--head", type=int, default=1000,
                    help="the first N images: float32 comparison and SpikingJelly run there (0 = all)")
    ap.add_argument("--sj", action="append", default=[], help="SpikingJelly recipe: a percentile such as 99.9%%, or ltb")
    ap.add_argument("--select-T", type=int, default=None,
                    help="rank the methods at this T on training images and evaluate only the best")
    ap.add_argument("--select-n", type=int, default=2000, help="training images for --select-T")
    ap.add_argument("--json", default=None, help="where to write the results (default: --run/methods.json)")
    ap.add_argument("--device", default="cpu",
                    help="where the SNNs are evaluated (cpu, cuda[:K]); conversion runs on the CPU. On CUDA, "
                         "float32 means float32: TF32 convolutions and matrix products are switched off")
    ap.add_argument("--e2e-lr", type=float, default=1e-4, help="learning rate of the /e2eN calibration")
    ap.add_argument("--e2e-aug", type=int, default=4,
                    help="/e2eN: shift the calibration images by up to this many pixels and flip them (0 = as they are)")
    ap.add_argument("--e2e-epochs", type=int, default=1, help="/e2eN: passes over its images")
    ap.add_argument("--e2e-batch", type=int, default=32, help="/e2eN: images per step")
    ap.add_argument("--e2e-weight-lr", type=float, default=1e-5, help="/e2eNw: learning rate of the SNN's weights")
    ap.add_argument("--e2e-bf16", action="store_true",
                    help="/e2eN under bfloat16 autocast even when --precision is fp32 (faster training on a GPU)")
    ap.add_argument("--e2e-extra-T", type=int, action="append", default=[],
                    help="/e2eN: also distil at this readout length (repeatable), e.g. 8 beside a method's @4")
    ap.add_argument("--save-snn", default=None, help="write the last method's SNN state here (float16 parts)")
    ap.add_argument("--save-neurons-only", action="store_true",
                    help="--save-snn: only the neuron layers' thresholds and corrections (small)")
    ap.add_argument("--load-snn", default=None,
                    help="put the SNN state saved here (by --save-snn) into the converted SNN instead of its "
                         "layer-wise correction; a method's /e2eN then continues from it")
    ap.add_argument("--data-pack", default=None, help="read the images from this device_transport.py pack file")
    args = ap.parse_args()
    if args.e2e_epochs < 1 or args.e2e_batch < 1:
        raise SystemExit(f"--e2e-epochs and --e2e-batch must be >= 1, got {args.e2e_epochs} and {args.e2e_batch}")
    if any(t < 1 for t in args.e2e_extra_T):
        raise SystemExit(f"--e2e-extra-T must be >= 1 steps, got {args.e2e_extra_T}")
    if not (args.e2e_weight_lr > 0 and args.e2e_weight_lr < float("inf")):
        raise SystemExit(f"--e2e-weight-lr must be a finite number > 0, got {args.e2e_weight_lr}")
    if not (args.e2e_lr > 0 and args.e2e_lr < float("inf")):
        raise SystemExit(f"--e2e-lr must be a finite number > 0, got {args.e2e_lr}")
    if args.e2e_aug < 0:
        raise SystemExit(f"--e2e-aug must be >= 0 pixels, got {args.e2e_aug}")
    try:
        dev = torch.device(args.device)
    except RuntimeError:
        raise SystemExit(f"--device {args.device!r}: not a device (cpu, cuda or cuda:K)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(f"--device {args.device}: CUDA is not available here")
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    run = Path(args.run)
    payload = load_checkpoint(run / "model.pt", required=("model", "config"))
    cfg = payload["config"]
    if args.data_pack:
        train, val, classes = load_pack(args.data_pack, cfg["val_split"])
    else:
        train, val, classes = load_split_tensors(cfg["dataset"], args.data_dir, cfg["val_split"])
    model = build_model(cfg, train[0].shape[1], len(classes), train[0].shape[-1])
    model.load_state_dict(payload["model"])
    model.eval()
    xs, ys = val[0][: args.n], val[1][: args.n]
    ann = evaluate_classifier(model.to(dev), xs, ys)[0]
    print(f"ANN on the {len(ys)} evaluation images: {ann:.4f} (all {len(val[1])}: {evaluate_classifier(model, *val)[0]:.4f})")
    gen = torch.Generator().manual_seed(cfg["seed"] + 1)
    perm = torch.randperm(len(train[1]), generator=gen)
    calib = train[0][perm[: 256 * args.calib_batches]]
    head = min(args.head or len(ys), len(ys))
    ann_head = evaluate_classifier(model, xs[:head], ys[:head])[0] if head < len(ys) else ann
    model.cpu()
    if head < len(ys):
        print(f"ANN on the first {head} (the head: float32 comparison and SpikingJelly): {ann_head:.4f}")

    def make_snn(text: str) -> tuple:
        """(SNN of method ``text`` on the device, conversion seconds, end-to-end report or None)."""
        kw = parse_method(text)
        e2e_n = kw.pop("e2e_images", 0)
        e2e_w = kw.pop("e2e_weights", False)
        t0 = time.perf_counter()
        if args.load_snn and kw.get("correction", "none") != "none":
            kw["correction"] = "none"  # the loaded state holds it
        snn = convert(model, calib, batch_size=256, max_batches=args.calib_batches, channels_last=True, **kw)
        e2e = None
        if args.load_snn:
            e2e = load_snn(snn, args.load_snn).get("e2e_report")
            print(f"  loaded the SNN state of {args.load_snn}", flush=True)
        if e2e_n:
            start = 256 * args.calib_batches + (args.select_n if args.select_T is not None else 0)
            if start + e2e_n > len(train[1]):
                raise SystemExit(f"/e2e{e2e_n}: only {len(train[1]) - start} training images remain after the "
                                 f"calibration and selection images")
            aug = (lambda x, g: random_crop_flip(x, pad=args.e2e_aug, generator=g)) if args.e2e_aug else None
            learn = ("potential", "bias", "weight") if e2e_w else ("potential", "bias")
            snn.to(dev)
            model.to(dev)
            try:
                e2e = calibrate_end_to_end(snn, model, train[0][perm[start:start + e2e_n]], kw["target_T"],
                                           lr=args.e2e_lr, bf16=bf16 or args.e2e_bf16, augment=aug, seed=cfg["seed"],
                                           epochs=args.e2e_epochs, batch_size=args.e2e_batch, learn=learn,
                                           weight_lr=args.e2e_weight_lr, extra_T=tuple(args.e2e_extra_T),
                                           log=lambda line: print("  " + line, flush=True))
            finally:
                model.cpu()
        if args.save_snn:
            save_snn(snn, args.save_snn, {"method": text, "e2e_report": e2e}, neurons_only=args.save_neurons_only)
        return snn.to(dev), time.perf_counter() - t0, e2e

    def show(key: str, acc: list[float], ref: float, extra: str = "") -> None:
        shown = {t: acc[t - 1] for t in (1, 2, 4, 8, 16, 32, 64, 128) if t <= args.T}
        print(f"{key:30s} {extra}| " + " ".join(f"T{t}={a:.4f} ({100 * (a - ref):+.2f})" for t, a in shown.items()),
              flush=True)

    bf16 = args.precision != "fp32"
    methods = args.method or ["percentile"]
    selection, chosen = {}, {}
    if args.select_T is not None:
        if args.select_T < 1 or args.select_T > args.T:
            raise SystemExit(f"--select-T must be in 1..--T ({args.T}), got {args.select_T}")
        if args.select_n < 1 or 256 * args.calib_batches >= len(train[1]):
            raise SystemExit(f"--select-n must be positive and the training split must hold images beyond the "
                             f"{256 * args.calib_batches} calibration images (got --select-n {args.select_n}, "
                             f"{len(train[1])} training images)")
        sel = train[0][perm[256 * args.calib_batches: 256 * args.calib_batches + args.select_n]]
        with torch.no_grad():
            ann_pred = torch.cat([model(sel[i:i + 250]).argmax(1) for i in range(0, len(sel), 250)])  # CPU
        print(f"Choosing among {len(methods)} methods by agreement with the ANN at T={args.select_T} "
              f"on {len(sel)} training images outside the calibration set:")
        for text in methods:
            snn, conv_s, e2e = make_snn(text)
            r = evaluate_snn(snn, sel, ann_pred, args.select_T, batch_size=250, bf16=bf16, spike_stats=False)
            selection[text] = r["accuracy"][args.select_T - 1]
            chosen[text] = (snn, conv_s, e2e)
            print(f"  {text:34s} agreement {selection[text]:.4f} (convert {conv_s:.0f} s)", flush=True)
        best = max(methods, key=lambda m: selection[m])  # the first listed wins a tie
        print(f"chosen: {best}")
        methods = [best]
        chosen = {best: chosen[best]}

    rows, head_rows = {}, {}
    for text in methods:
        kw = parse_method(text)
        snn, conv_s, e2e = chosen[text] if text in chosen else make_snn(text)
        # the head and the rest separately: figures on all n images and on the head alone
        parts = [evaluate_snn(snn, xs[:head], ys[:head], args.T, batch_size=250, bf16=bf16, spike_stats=False)]
        if head < len(ys):
            parts.append(evaluate_snn(snn, xs[head:], ys[head:], args.T, batch_size=250, bf16=bf16, spike_stats=False))
        sizes = [head, len(ys) - head]
        acc = [sum(p["accuracy"][t] * k for p, k in zip(parts, sizes)) / len(ys) for t in range(args.T)]
        seconds = sum(p["seconds"] for p in parts)
        key = text if not bf16 else f"{text} [bf16]"
        rows[key] = {"options": kw, "precision": "bf16" if bf16 else "fp32", "convert_seconds": conv_s,
                     "eval_seconds": seconds, "images_per_second": len(ys) / seconds,
                     "snn_accuracy": {str(t + 1): a for t, a in enumerate(acc)}}
        report = getattr(snn, "correction_report", None)
        if report:
            rows[key]["correction_report"] = report
        if e2e:
            rows[key]["e2e_report"] = {**e2e, "aug": args.e2e_aug}
        show(key, acc, ann, f"convert {conv_s:5.0f} s, {len(ys) / seconds:6.1f} img/s at T={args.T} ")
        if report and any("holdout_mse_before" in r for r in report.values()):
            gains = [1 - r["holdout_mse_after"] / r["holdout_mse_before"] for r in report.values()
                     if r.get("holdout_mse_before")]
            print(f"  weight calibration: held-back calibration error lower by {100 * min(gains):.1f}–"
                  f"{100 * max(gains):.1f} % per layer ({len(gains)} layers)")
        head_rows[key] = {str(t + 1): a for t, a in enumerate(parts[0]["accuracy"])}
        if head < len(ys):
            show(f"  on the head ({head})", parts[0]["accuracy"], ann_head)
        if args.precision == "both":
            ref = evaluate_snn(snn, xs[:head], ys[:head], args.T, batch_size=250, spike_stats=False)
            show(f"  float32, on the head ({head})", ref["accuracy"], ann_head,
                 f"{ref['images_per_second']:6.1f} img/s ")
            print(f"  bf16 SNN {parts[0]['images_per_second'] / ref['images_per_second']:.2f}x the float32 SNN's "
                  f"images/s (same images, same run); largest accuracy difference "
                  f"{100 * max(abs(a - b) for a, b in zip(parts[0]['accuracy'], ref['accuracy'])):.2f} pt")
            head_rows[f"{text} [fp32]"] = {str(t + 1): a for t, a in enumerate(ref["accuracy"])}
    sj_rows = {}
    if args.sj:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _peers import sj_convert, sj_run

        loader = [(calib[i:i + 256], torch.zeros(len(calib[i:i + 256]), dtype=torch.long))
                  for i in range(0, len(calib), 256)]
        xh, yh = xs[:head], ys[:head]
        for mode in args.sj:
            t0 = time.perf_counter()
            sj = sj_convert(model, loader, mode=mode)
            conv_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            correct = torch.zeros(args.T)
            for i in range(0, len(yh), 250):
                out_t = sj_run(sj, xh[i:i + 250], args.T).cumsum(0).argmax(-1)  # [T, n]
                correct += (out_t == yh[i:i + 250]).float().sum(1)
            acc = (correct / len(yh)).tolist()
            sj_rows[mode] = {"convert_seconds": conv_s, "eval_seconds": time.perf_counter() - t0,
                             "snn_accuracy": {str(t + 1): a for t, a in enumerate(acc)}}
            show(f"SJ {mode} (head)", acc, ann_head, f"convert {conv_s:5.0f} s ")
        print(f"\nOn the head ({head} images):")
        print("T    best spikeforge (method)              best SpikingJelly (recipe)   difference")
        for t in (1, 2, 4, 8, 16, 32, 64):
            if t > args.T:
                continue
            sf = max(head_rows.items(), key=lambda kv: kv[1][str(t)])
            pj = max(sj_rows.items(), key=lambda kv: kv[1]["snn_accuracy"][str(t)])
            a, b = sf[1][str(t)], pj[1]["snn_accuracy"][str(t)]
            print(f"{t:<4d} {a:.4f} ({sf[0]:28s}) {b:.4f} ({pj[0]:10s})        {100 * (a - b):+.2f} pt")
    out = {"ann_accuracy": ann, "n": len(ys), "device": str(dev), "methods": rows, "head": head, "ann_accuracy_head": ann_head,
           "methods_head": head_rows, "spikingjelly_head": sj_rows,
           "selection": {"T": args.select_T, "n": len(sel), "agreement": selection} if selection else None,
           "command": " ".join(sys.argv)}
    target = Path(args.json) if args.json else run / "methods.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(out, indent=1))
    tmp.replace(target)  # atomic: an interrupted write leaves the earlier results in place
    return 0


if __name__ == "__main__":
    sys.exit(main())
