#!/usr/bin/env bash
# Issue 12, QCFS ResNet-18 at T=4: fine-tune the converted SNN end to end on a lent GPU, within the
# device tool's limits (one call of < 10 min; 64 MiB carried; files back <= 16 MiB each).
# Carried (made here, see benchmarks/RESULTS.md "Session 20"):
#   PACK   python benchmarks/device_transport.py pack --data-dir ../shared/data/cifar10 --val-split 10000 \
#              --train-keep 20000 --out .devdata/cifar20k.sfj   (10,000 held-out exact + 20,000 training, 37 MiB)
#   MODEL  python benchmarks/device_transport.py export --run runs/gpu/r18-q4 --out .devdata/r18q4   (21 MiB)
#   CORR   cifar_methods.py --run runs/gpu/r18-q4 ... --method percentile+potential@4/cb4 \
#              --save-snn .devdata/r18q4-pot4 --save-neurons-only   (the layer-wise correction, computed here)
# Each configuration: the SNN rebuilt from MODEL + CORR, then potential, bias and weights learnt by
# distillation from the ANN at T=4 (cifar_methods.py /e2eNw) on the training images, evaluated on all
# 10,000 held-out images in float32 (TF32 off) at T=1..8. After each configuration the state of the
# best so far (highest accuracy at T=4, then T=8) is copied to $OUT/best (one 21 MiB state: the tool
# brings back 64 MiB at most); every configuration's figures are in $OUT/NAME.json and $OUT/log.txt.
# Settings by environment: DEV (cuda), PY (python3), LIMIT (seconds for everything, 520), N (10000),
# E2E (training images, 18000), EPOCHS (8), BATCH (128), CONFIGS ("NAME:WEIGHT_LR[:EXTRA_T] ...",
# default "w3e5x8:3e-5:8 w1e5:1e-5 w1e4x8:1e-4:8").
set -uo pipefail
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/sf-out}; DEV=${DEV:-cuda}; PY=${PY:-python3}; LIMIT=${LIMIT:-520}; N=${N:-10000}
RUN=${RUN:-/tmp/sf-run}; PACK=${PACK:-.devdata/cifar20k.sfj}; MODEL=${MODEL:-.devdata/r18q4}
CORR=${CORR:-.devdata/r18q4-pot4}; E2E=${E2E:-18000}; EPOCHS=${EPOCHS:-8}; BATCH=${BATCH:-128}
CONFIGS=${CONFIGS:-"w3e5x8:3e-5:8 w1e5:1e-5 w1e4x8:1e-4:8"}
mkdir -p "$OUT" "$RUN/states"
exec > >(tee -a "$OUT/log.txt") 2>&1
(nvidia-smi -L || true; date)
$PY benchmarks/device_transport.py import --parts "$MODEL" --run "$RUN" || exit 1
for c in $CONFIGS; do
    IFS=: read -r name wlr extra <<<"$c"
    left=$((LIMIT - SECONDS - 10))
    if [ "$left" -lt 60 ]; then echo "skipped $name: ${left}s left"; continue; fi
    args=()
    if [ -n "$extra" ]; then args+=(--e2e-extra-T "$extra"); fi
    echo "== $name: weight lr $wlr, extra readout ${extra:-none} (${left}s left)"
    timeout "$left" $PY benchmarks/cifar_methods.py --run "$RUN" --data-pack "$PACK" --n "$N" --head 0 --T 8 \
        --calib-batches 4 --device "$DEV" --load-snn "$CORR" --method "percentile+potential@4/cb4/e2e${E2E}w" \
        --e2e-epochs "$EPOCHS" --e2e-batch "$BATCH" --e2e-bf16 --e2e-weight-lr "$wlr" "${args[@]}" \
        --save-snn "$RUN/states/$name" --json "$OUT/$name.json" || echo "$name: failed or stopped"
    best=$($PY - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
scores = {}
for f in Path(sys.argv[1]).glob("*.json"):
    try:
        acc = next(iter(json.loads(f.read_text())["methods"].values()))["snn_accuracy"]
        scores[f.stem] = (acc["4"], acc["8"])
    except (ValueError, KeyError, StopIteration):
        pass
print(max(scores, key=scores.get) if scores else "")
PYEOF
)
    if [ -n "$best" ] && [ "$(cat "$OUT/best/NAME" 2>/dev/null)" != "$best" ]; then
        rm -rf "$OUT/best.tmp" && cp -r "$RUN/states/$best" "$OUT/best.tmp" && echo "$best" > "$OUT/best.tmp/NAME" \
            && rm -rf "$OUT/best" && mv "$OUT/best.tmp" "$OUT/best" && echo "best so far: $best"
    fi
done
date
