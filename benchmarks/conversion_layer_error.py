"""Per-layer error of a converted CIFAR net at T steps against the ANN's activations (250 held-out images).

Usage: python benchmarks/conversion_layer_error.py RUN METHOD T   (METHOD as in cifar_methods.py; data in ../shared/data/cifar10)
"""
import sys, time, torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from cifar_methods import parse_method
from spikeforge import convert
from spikeforge.experiments.common import load_split_tensors
from spikeforge.experiments.cifar_convert import build_model
from spikeforge.train import load_checkpoint
import torch.nn as nn
if len(sys.argv) != 4 or not sys.argv[3].isdigit():
    sys.exit(__doc__)
run, method, T = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.manual_seed(0)
payload = load_checkpoint(f"{run}/model.pt", required=("model", "config"))
cfg = payload["config"]
train, val, classes = load_split_tensors(cfg["dataset"], "../shared/data/cifar10", cfg["val_split"])
model = build_model(cfg, 3, 10, 32); model.load_state_dict(payload["model"]); model.eval()
gen = torch.Generator().manual_seed(cfg["seed"] + 1)
perm = torch.randperm(len(train[1]), generator=gen)
calib = train[0][perm[:256 * 8]]
xs = val[0][:250]
acts = []
hs = [m.register_forward_hook(lambda m, i, o: acts.append(o.detach().clone())) for m in model.modules() if isinstance(m, nn.ReLU)]
with torch.no_grad(): logits = model(xs)
for h in hs: h.remove()
t0 = time.time()
snn = convert(model, calib, batch_size=256, max_batches=8, channels_last=True, **parse_method(method))
print("convert", round(time.time() - t0), "s", file=sys.stderr)
neurons = snn.neurons()
sums = {}
def mk(name):
    def hook(m, i, o):
        k = snn.clock.steps
        s = o.reshape(k, -1, *o.shape[1:]).float().sum(0)
        sums[name] = sums.get(name, 0) + s
    return hook
hs = [n.register_forward_hook(mk(name)) for name, n in neurons.items()]
out = snn(xs, T).sum(0)
for h in hs: h.remove()
print(f"ANN acc {(logits.argmax(1) == val[1][:250]).float().mean():.3f} SNN@{T} {(out.argmax(1) == val[1][:250]).float().mean():.3f}")
rep = getattr(snn, "correction_report", {}) or {}
for (name, n), a in zip(neurons.items(), acts):
    r = sums[name] / T
    a = a.float()
    err = ((r - a) ** 2).sum() / (a ** 2).sum()
    bias = (r.mean() - a.mean()) / a.mean()
    th = n.threshold
    print(f"{name:12s} shape {tuple(a.shape[1:])} thr {float(th.mean()):.3f} relerr {float(err):.4f} meanbias {float(bias):+.4f} "
          f"corr {float(torch.corrcoef(torch.stack([r.flatten(), a.flatten()]))[0,1]):.4f}", rep.get(name, ""))
lo = logits; so = out / T
print("logit relerr", float(((so - lo) ** 2).sum() / (lo ** 2).sum()))
