"""The fast-recipe probe: the public airbench94 schedule, on our data and our fast net.

Trains ``cifar-fast`` (64/256/256) on the 40,000 training images of ``--val-split 10000``
with the hyperparameters Keller Jordan's airbench94 publishes (per-example lr 11.5/1024
scaled for momentum 0.85, weight decay 0.0153 per 1,024 examples, BN biases at 64x lr,
label smoothing 0.2, triangular schedule 0.2 → 1 at 23 % → ``--end``, flip + 2-pixel
translation, optional alternating flips, whitening bias trained for ``--wbias`` epochs, and
``--lookahead`` weight averaging) in bf16 channels-last, and prints the held-out accuracy
after every epoch and with flip test-time augmentation at the end. ``--act gelu`` swaps
every ReLU for a GELU (airbench's activation; not convertible), to measure what the ReLU
costs. A diagnostic for issue 11 (why 93 % is out of reach here), not part of the toolkit.

    python benchmarks/cifar_recipe_probe.py --data-dir ../shared/data/cifar10 --epochs 10 \
        --lookahead --altflip --wbias 3 --end 0.07 [--act gelu]
"""
import argparse, math, time
import torch, torch.nn.functional as F
from torch import nn
from spikeforge.experiments.common import load_split_tensors
from spikeforge.models import create_model
from spikeforge.models.fastnet import init_whitening
from spikeforge.data.augment import random_crop_flip
p = argparse.ArgumentParser()
p.add_argument("--act", default="relu"); p.add_argument("--epochs", type=float, default=10)
p.add_argument("--lookahead", action="store_true"); p.add_argument("--widths", default="64,256,256")
p.add_argument("--batch", type=int, default=256); p.add_argument("--end", type=float, default=0.0)
p.add_argument("--wbias", type=int, default=0); p.add_argument("--altflip", action="store_true")
p.add_argument("--limit", type=int, default=0)
p.add_argument("--data-dir", default="../shared/data/cifar10")
a = p.parse_args()
torch.manual_seed(0)
(xt, yt), (xv, yv), _ = load_split_tensors("cifar10", a.data_dir, 10000)
if a.limit: xt, yt = xt[:a.limit], yt[:a.limit]
model = create_model("cifar-fast", widths=tuple(int(w) for w in a.widths.split(",")))
if a.act == "gelu":
    for name, m in list(model.named_modules()):
        for cn, c in list(m.named_children()):
            if isinstance(c, nn.ReLU): setattr(m, cn, nn.GELU())
g = torch.Generator().manual_seed(0)
init_whitening(model, xt[torch.randperm(len(yt), generator=g)[:5000]])
model = model.to(memory_format=torch.channels_last)
B = a.batch
lr = 0.375 * B / 256  # mean loss over the batch: the per-example rate times B
wd_per_step = 5e-4 * B / 256  # 0.002 per 1,024 examples
bn = [p_ for n, p_ in model.named_parameters() if p_.requires_grad and "bn" in n]
other = [p_ for n, p_ in model.named_parameters() if p_.requires_grad and "bn" not in n and n != "whiten.bias"]
groups = [dict(params=bn, lr=lr * 64, weight_decay=wd_per_step / (lr * 64)), dict(params=other, lr=lr, weight_decay=wd_per_step / lr)]
if a.wbias:
    model.whiten.bias.requires_grad_(True)
    groups.append(dict(params=[model.whiten.bias], lr=lr, weight_decay=wd_per_step / lr))
opt = torch.optim.SGD(groups, momentum=0.85, nesterov=True)
spe = len(yt) // B
total = int(spe * a.epochs)
def fac(s):
    pk = int(0.23 * total)
    if s < pk: return 0.2 + 0.8 * s / pk
    return 1 + (a.end - 1) * (s - pk) / (total - pk)
sched = torch.optim.lr_scheduler.LambdaLR(opt, fac)
ema = None; step = 0
def evaluate(m, tta=0):
    m.eval(); correct = 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for i in range(0, len(yv), 1000):
            x = xv[i:i+1000].contiguous(memory_format=torch.channels_last)
            o = m(x).float()
            if tta: o = o + m(x.flip(-1)).float()
            correct += int((o.argmax(1) == yv[i:i+1000]).sum())
    m.train(); return correct / len(yv)
t0 = time.time()
for ep in range(math.ceil(a.epochs)):
    if a.wbias and ep == a.wbias: model.whiten.bias.requires_grad_(False)
    perm = torch.randperm(len(yt), generator=g)
    for i in range(spe):
        idx = perm[i*B:(i+1)*B]
        xb = xt[idx]
        if a.altflip:
            xb = random_crop_flip(xb, pad=2, flip=False, generator=g)
            flipmask = (idx % 2 == 0) ^ (ep % 2 == 1)
            xb = torch.where(flipmask.view(-1,1,1,1), xb.flip(-1), xb)
        else:
            xb = random_crop_flip(xb, pad=2, generator=g)
        xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(xb)
        loss = F.cross_entropy(out.float(), yt[idx], label_smoothing=0.2)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step(); sched.step(); step += 1
        if a.lookahead and ep >= 3 and step % 5 == 0:
            sd = model.state_dict()
            if ema is None: ema = {k: v.detach().clone() for k, v in sd.items()}
            else:
                rho = (0.95 ** 5) * (step / total) ** 3
                for k, v in sd.items():
                    if v.dtype.is_floating_point:
                        ema[k].lerp_(v, 1 - rho); v.copy_(ema[k])
        if step >= total: break
    if ema is not None:
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point: v.copy_(ema[k])
    print(f"epoch {ep+1} {time.time()-t0:.0f}s val {evaluate(model):.4f}", flush=True)
print(f"final val {evaluate(model):.4f} flipTTA {evaluate(model, 1):.4f} train_s {time.time()-t0:.0f}", flush=True)
