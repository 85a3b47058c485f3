"""Per-layer error of a converted CIFAR net at T steps against the ANN's activations (250 held-out images).

Usage: python benchmarks/conversion_layer_error.py RUN METHOD T   (METHOD as in cifar_methods.py; data in ../shared/data/cifar10)
"""
import sys, time, torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from cifar_methods import parse_method
from _probe_common import load_run, relu_outputs
from spikeforge import convert
if len(sys.argv) != 4 or not sys.argv[3].isdigit():
    sys.exit(__doc__)
run, method, T = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.manual_seed(0)
model, train, val, calib = load_run(run)
xs = val[0][:250]
logits, acts = relu_outputs(model, xs)
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
