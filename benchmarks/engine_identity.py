"""Do the loops on the training engine train exactly as the loops before it did?

    python benchmarks/engine_identity.py OUT.pt            # with this checkout
    python benchmarks/engine_identity.py OUT.pt snn        # only the BPTT cases (fc-lif, fc-poisson, csnn)
    python benchmarks/engine_identity.py --compare A.pt B.pt

Trains, single process and one thread, the configurations the engine refactor (issue 16)
had to keep: LeNet5 with AdamW/one-cycle and shift augmentation; LeNet5 with Nesterov
SGD, linear warm-up, flips, label smoothing, bias lr scale, bf16 autocast and
channels-last (with the optimizer state of the last epoch); a small UNet with a cosine
schedule and checkpoints every 2 steps; SimCLR pretraining of a narrow ResNet-18 and
its linear probe; BPTT (``fit_snn``) on a tiny fc-lif (Adam, cosine, dropout, ce-membrane),
fc-poisson (ce-rate) and csnn (SGD, TET, bf16, channels-last, shift+flip augmentation),
each with its per-epoch checkpoint. It saves the weights, histories (wall-clock seconds removed) and
optimizer state; ``--compare`` lists every entry that differs between two such files
(run the script in a worktree of the earlier commit for A).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch


def train_snn(res: dict) -> None:
    from spikeforge.models import create_model
    from spikeforge.train.snn import SNNTrainConfig, fit_snn

    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(120, 1, 28, 28, generator=g), torch.arange(120) % 10
    cases = {
        "fc-lif": (dict(hidden=32, T=4, dropout=0.2),
                   SNNTrainConfig(epochs=2, batch_size=32, schedule="cosine", loss="ce-membrane", eval_batch_size=50)),
        "fc-poisson": (dict(T=8), SNNTrainConfig(epochs=2, batch_size=32, loss="ce-rate", lr=2e-3, eval_batch_size=50)),
        "csnn": (dict(channels=4, T=2), SNNTrainConfig(epochs=2, batch_size=24, optimizer="sgd", lr=0.1, schedule="cosine",
                                                       loss="tet", bf16=True, channels_last=True, augment=True,
                                                       augment_pad=1, augment_flip=True, eval_batch_size=50)),
    }
    for name, (kw, cfg) in cases.items():
        torch.manual_seed(0)
        m = create_model(name, **kw)
        with tempfile.TemporaryDirectory() as tmp:
            h = fit_snn(m, (x, y), (x[:50], y[:50]), cfg, out_dir=tmp, progress=False, model_config={"name": name, **kw})
            ckpt = torch.load(Path(tmp) / "checkpoint.pt", weights_only=False)
        res[f"snn-{name}"] = (m.state_dict(), [{k: v for k, v in r.items() if k != "train_seconds"} for r in h],
                              ckpt["optimizer"], ckpt["epoch"], ckpt["identity"])


def train(out: str, only: str = "") -> None:
    if only == "snn":
        torch.set_num_threads(1)
        res: dict = {}
        train_snn(res)
        torch.save(res, out)
        print(f"wrote {out}")
        return
    from spikeforge.data.segmentation import PatchSampler, load_segmentation
    from spikeforge.models import create_model
    from spikeforge.train import train_classifier
    from spikeforge.train.segmentation import train_segmenter
    from spikeforge.train.simclr import linear_probe, pretrain_simclr

    torch.set_num_threads(1)
    res = {}
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(200, 1, 28, 28, generator=g), torch.arange(200) % 10
    torch.manual_seed(0)
    m = create_model("lenet5")
    h = train_classifier(m, (x, y), (x[:50], y[:50]), epochs=2, batch_size=32, augment_shift=2, progress=False)
    res["lenet5-adamw"] = (m.state_dict(), h)
    torch.manual_seed(0)
    m = create_model("lenet5")
    states: list = []
    h = train_classifier(m, (x, y), (x[:50], y[:50]), epochs=2, batch_size=32, augment_shift=2, flip=True,
                         optimizer="sgd", schedule="linear", lr=0.05, bf16=True, channels_last=True,
                         label_smoothing=0.1, bias_lr_scale=4, progress=False, on_state=lambda e, s: states.append(s))
    res["lenet5-sgd-bf16"] = (m.state_dict(), h, states[-1]["optimizer"])
    data = load_segmentation("synthetic-em", "train", n_slices=2, slice_shape=(64, 64))
    torch.manual_seed(0)
    m = create_model("unet", width=2, depth=2)
    with tempfile.TemporaryDirectory() as tmp:
        h, _ = train_segmenter(m, PatchSampler(data, 32), steps=6, batch_size=2, save_every=2, log_every=2,
                               progress=False, schedule="cosine", warmup=0.2, checkpoint=Path(tmp) / "unet.pt")
    res["unet"] = (m.state_dict(), [{k: v for k, v in r.items() if k != "seconds"} for r in h])
    torch.manual_seed(0)
    m = create_model("resnet18", in_channels=1, num_classes=10, width=1 / 16, image_size=28)
    h = pretrain_simclr(m, x[:64], epochs=2, batch_size=16, progress=False)
    acc = linear_probe(m, (x[:64], y[:64]), epochs=3)
    res["simclr"] = (m.state_dict(), [{k: v for k, v in r.items() if k != "seconds"} for r in h], acc)
    train_snn(res)
    torch.save(res, out)
    print(f"wrote {out}")


def compare(a_path: str, b_path: str) -> None:
    a, b = torch.load(a_path, weights_only=False), torch.load(b_path, weights_only=False)
    diffs: list[str] = []

    def walk(u, v, path):
        if isinstance(u, torch.Tensor):
            if not torch.equal(u, v):
                diffs.append(f"{path}: max |diff| {float((u.double() - v.double()).abs().max()):.3g}")
        elif isinstance(u, dict):
            if set(u) != set(v):
                diffs.append(f"{path}: keys differ")
            for k in set(u) & set(v):
                walk(u[k], v[k], f"{path}.{k}")
        elif isinstance(u, (list, tuple)):
            if len(u) != len(v):
                diffs.append(f"{path}: lengths differ")
            for i, (p, q) in enumerate(zip(u, v)):
                walk(p, q, f"{path}[{i}]")
        elif u != v:
            diffs.append(f"{path}: {u!r} != {v!r}")

    for key in a:
        walk(a[key], b.get(key), key)
    print("\n".join(diffs) if diffs else f"identical: {', '.join(a)} (weights, histories, optimizer state, probe)")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--compare":
        compare(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 2:
        train(sys.argv[1])
    elif len(sys.argv) == 3 and sys.argv[2] == "snn":
        train(sys.argv[1], "snn")
    else:
        sys.exit(__doc__)
