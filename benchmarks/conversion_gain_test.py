"""Hypothesis test (session 15): per-channel output gains (mean ANN activation / mean SNN rate), layer by layer.

Usage: python benchmarks/conversion_gain_test.py RUN METHOD TARGET_T N   (data in ../shared/data/cifar10; evaluates to T=32)
"""
import sys, time, torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from cifar_methods import parse_method
from _probe_common import load_run, relu_outputs
from spikeforge import convert
from spikeforge.evaluate import evaluate_snn
if len(sys.argv) != 5 or not (sys.argv[3].isdigit() and sys.argv[4].isdigit()):
    sys.exit(__doc__)
run, method, Tc, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
model, train, val, calib = load_run(run)
xc = calib[:256]
_, acts = relu_outputs(model, xc)
t0 = time.time()
snn = convert(model, calib, batch_size=256, max_batches=8, channels_last=True, **parse_method(method))
print("convert", round(time.time() - t0), "s", flush=True)
neurons = snn.neurons()
gains = {}
def apply(name):
    def hook(m, i, o):
        g = gains.get(name)
        return o * g if g is not None else o
    return hook
for name, nrn in neurons.items():
    nrn.register_forward_hook(apply(name))
t0 = time.time()
for (name, nrn), a in zip(neurons.items(), acts):
    s = 0
    for y in snn.stream(xc, Tc, record=False, until=name):
        s = s + y.float().sum(0)
    r = s / Tc  # [N, C, ...] (gain of this layer not yet set)
    dims = [0] + list(range(2, r.dim()))
    mr, ma = r.mean(dims), a.float().mean(dims)
    g = torch.where(mr > 1e-6, ma / mr.clamp_min(1e-6), torch.ones_like(mr)).clamp(0.8, 1.25)
    gains[name] = g.reshape(-1, *([1] * (r.dim() - 2)))
    print(name, f"mean gain {float(g.mean()):.3f}", flush=True)
print("gains", round(time.time() - t0), "s", flush=True)
xs, ys = val[0][:n], val[1][:n]
T = 32
r = evaluate_snn(snn, xs, ys, T, batch_size=250, spike_stats=False)
acc = r["accuracy"]
print(method, "+gain@", Tc, " ".join(f"T{t}={acc[t-1]:.4f}" for t in (1, 2, 4, 8, 16, 32)), flush=True)
