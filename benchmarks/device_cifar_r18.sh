#!/usr/bin/env bash
# Train issue 12's ResNet-18 (full width) and its QCFS L=4 twin on a lent GPU, within the
# device tool's limits (one call of < 10 min; files back <= 16 MiB each). Run from the repo root
# after `python benchmarks/device_transport.py pack ... --out .devdata/cifar.sfj` (carry .devdata).
# The epochs are chosen from a speed probe so that each training fits its budget (seconds).
# Then, while LIMIT (seconds since the start) allows, the conversion comparisons of issue 12 on
# all 10,000 held-out images (exact pixels), SNNs evaluated on the GPU in float32.
# Settings by environment: MODEL (resnet18; any cifar-convert --model), NAME (r18: run names),
# RELU_METHODS (1: also the ReLU net's training-free comparison), DEV (cuda), WIDTH (1), BUDGET1/BUDGET2 (ReLU/QCFS training seconds),
# MAXE1/MAXE2 (epoch caps), LIMIT (540), N (10000), PY (python3), OUT (logs, exported nets, bundle).
set -uo pipefail
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/sf-out}; DEV=${DEV:-cuda}; WIDTH=${WIDTH:-1}; PY=${PY:-python3}
BUDGET1=${BUDGET1:-300}; BUDGET2=${BUDGET2:-150}; MAXE1=${MAXE1:-40}; MAXE2=${MAXE2:-12}
MODEL=${MODEL:-resnet18}; NAME=${NAME:-r18}; RELU_METHODS=${RELU_METHODS:-1}
RUNS=${RUNS:-/tmp/sf-runs}; DATA=${DATA:-/tmp/sf-cifar}; LIMIT=${LIMIT:-540}; N=${N:-10000}
bundle() { tar -czf "$OUT/bundle.tgz.tmp" -C "$RUNS" --exclude='*.pt' . 2>/dev/null && mv "$OUT/bundle.tgz.tmp" "$OUT/bundle.tgz"; }
mkdir -p "$OUT" "$RUNS"
(nvidia-smi -L || true; date)
$PY benchmarks/device_transport.py unpack --src .devdata/cifar.sfj --out "$DATA" || exit 1
E1=$($PY - "$DEV" "$WIDTH" "$BUDGET1" "$MAXE1" "$MODEL" <<'PYEOF'
import sys, time, torch, torch.nn.functional as F
from spikeforge.models import create_model
dev, width, budget, cap = torch.device(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
m = create_model(sys.argv[5], in_channels=3, num_classes=10, width=width).to(dev).to(memory_format=torch.channels_last)
opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, nesterov=True)
x = torch.randn(256, 3, 32, 32, device=dev).to(memory_format=torch.channels_last); y = torch.randint(0, 10, (256,), device=dev)
def sync():
    if dev.type == "cuda": torch.cuda.synchronize()
for i in range(25):
    if i == 5: sync(); t0 = time.perf_counter()
    with torch.autocast(dev.type, dtype=torch.bfloat16):
        loss = F.cross_entropy(m(x).float(), y)
    opt.zero_grad(); loss.backward(); opt.step()
sync(); rate = 20 * 256 / (time.perf_counter() - t0)
est = 40000 / rate * 1.5 + 1.5
print(f"probe: {rate:.0f} samples/s, epoch estimate {est:.1f} s", file=sys.stderr)
print(max(1, min(cap, int(budget / est))))
PYEOF
) || exit 1
echo "ReLU epochs: $E1"
COMMON=(--dataset cifar10 --data-dir "$DATA" --val-split 10000 --model "$MODEL" --width "$WIDTH" --translate 4
        --T 8 --snn-limit 250 --device "$DEV" --no-progress)
timeout $((BUDGET1 * 2)) $PY -m spikeforge run cifar-convert "${COMMON[@]}" --epochs "$E1" --out "$RUNS/$NAME" || echo "ReLU training failed or timed out"
$PY benchmarks/device_transport.py export --run "$RUNS/$NAME" --out "$OUT/$NAME"
E2=$($PY - "$RUNS/$NAME/metrics.json" "$E1" "$BUDGET2" "$MAXE2" <<'PYEOF'
import json, sys
m = json.load(open(sys.argv[1])); per = m["train_seconds"] / int(sys.argv[2])
print(max(1, min(int(sys.argv[4]), int(float(sys.argv[3]) / (2.0 * per)))))
PYEOF
) || E2=3
echo "QCFS epochs: $E2"
timeout $((BUDGET2 * 2)) $PY -m spikeforge run cifar-convert "${COMMON[@]}" --activation qcfs --levels 4 \
    --init-from "$RUNS/$NAME" --epochs "$E2" --lr 0.05 --lookahead --out "$RUNS/$NAME-q4" || echo "QCFS training failed or timed out"
$PY benchmarks/device_transport.py export --run "$RUNS/$NAME-q4" --out "$OUT/${NAME}q4"
bundle
methods() {  # run dir, T, json name, methods...
    local run=$1 T=$2 name=$3; shift 3
    local left=$((LIMIT - SECONDS - 15)) args=()
    if [ "$left" -lt 30 ]; then echo "skipped $name: ${left}s left"; return; fi
    for m in "$@"; do args+=(--method "$m"); done
    timeout "$left" $PY benchmarks/cifar_methods.py --run "$RUNS/$run" --data-dir "$DATA" --n "$N" --head 1000 \
        --T "$T" --device "$DEV" --json "$RUNS/$name.json" "${args[@]}" || echo "$name: failed or stopped"
    bundle
}
methods "$NAME-q4" 8 "$NAME-q4-methods" percentile+potential@4/cb4 percentile
if [ "$RELU_METHODS" = 1 ]; then methods "$NAME" 32 "$NAME-relu-methods" mse+potential@16/pc/cb4 mse+potential@32/pc/cb4; fi
date
