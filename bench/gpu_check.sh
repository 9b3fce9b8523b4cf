#!/usr/bin/env bash
# The GPU checks and figures, in one run on a CUDA machine:
#
#   bash bench/gpu_check.sh OUT_DIR DATA_DIR        # DATA_DIR holds Testing/<class>/*.jpg
#
# Steps, each with its own time limit and log in OUT_DIR (a failed step does not stop the next):
#   env          torch, CUDA and the device that select_device("auto") picks
#   dry_run      train.py --dry-run on the GPU (AMP training, calibration, saving, reloading)
#   batch        python -m core.batch over Testing with Grad-CAM on the GPU; accuracy from its CSV
#   train_timing train.py on the GPU for a few epochs with Testing standing in as the training
#                tree: it times an epoch only; its weights are thrown away and never shipped
#   gpu_input    the tensor input path (core/gpu_preprocess.py: decode_jpeg on the GPU, head search and crop as
#                tensor ops) against the CPU definition on every Testing JPEG: box within 2 px, same prediction
#   input_paths  python -m bench.sections.input_paths on the GPU: decode / crop / forward ms and end-to-end img/s of
#                each input path, the fraction of forward-only (issue 22; JSON in OUT_DIR/input_paths.json)
#   bench        python -m bench on the GPU (writes bench/results/gpu-*.json, bench/README_section_gpu.md,
#                and the timing run's card to bench/results/training/; it has the input_paths section too)
#
# GPU_CHECK_SECONDS (default 560) bounds the whole run; DEVICE (default cuda) and BENCH_ARGS /
# TRAIN_ARGS let a CPU machine rehearse the script before a GPU is spent on it.
set -u
out=${1:?usage: bench/gpu_check.sh OUT_DIR DATA_DIR}
data=${2:?usage: bench/gpu_check.sh OUT_DIR DATA_DIR}
budget=${GPU_CHECK_SECONDS:-560}
device=${DEVICE:-cuda}
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$out"
cd "$(dirname "$0")/.."

step() {  # NAME SECONDS COMMAND...: run COMMAND under a time limit that never passes the budget
    local name=$1 limit=$2 left t0 rc
    shift 2
    left=$((budget - SECONDS))
    ((limit > left)) && limit=$left
    if ((limit < 10)); then
        echo "== $name: skipped, the budget is spent" | tee -a "$out/steps.txt"
        return
    fi
    t0=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    rc=$?
    echo "== $name: exit $rc after $((SECONDS - t0)) s (limit $limit s)" | tee -a "$out/steps.txt"
    tail -n 15 "$out/$name.log"
}

step env 60 bash -c "nvidia-smi; $py -c 'import torch; from core.model.device import select_device, autocast_dtype
d = select_device(\"auto\"); print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"auto ->\", d,
      torch.cuda.get_device_name(d) if d.type == \"cuda\" else \"\", \"autocast\", autocast_dtype(d))'"

step dry_run 90 "$py" train.py --dry-run --device "$device" --out "$out/dry_run_model"

step batch 120 "$py" -m core.batch "$data/Testing" --out "$out/batch.csv" --cam-method gradcam \
    --device "$device" --no-audit
step batch_summary 30 "$py" - "$out/batch.csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
ok = [r for r in rows if not r["error"]]
right = sum(r["correct"] == "True" for r in ok)
print(f"{len(rows)} rows, {len(rows) - len(ok)} unreadable, accuracy {right / max(len(ok), 1):.4f} ({right}/{len(ok)}), "
      f"flagged outside intended use {sum(r['ood'] == 'True' for r in ok)}, CAM peaks {sum(bool(r['cam_peak_x']) for r in ok)}")
PY

# Issue 22's fast input path first: its figures must not depend on what the later steps leave of the budget.
step gpu_input 75 "$py" - "$data/Testing" "$device" <<'PY'
import sys, time
from pathlib import Path
import numpy as np, torch
from dataclasses import replace
from core.model.checkpoint import load_bundle
from core.model.device import select_device
from core.gpu_preprocess import stream_batches
from core.io.decode import decode_bytes
from core.inference.predictor import Predictor
from core.preprocess import preprocess_decoded
dev = select_device(sys.argv[2])
bundle = load_bundle("weights")
spec = replace(bundle.spec, head_search="gamma_hist")
pred = Predictor(replace(bundle, spec=spec), dev)
files = sorted(Path(sys.argv[1]).rglob("*.jpg"))
t0, same_box, same_pred, n = time.perf_counter(), 0, 0, 0
for chunk, tb in stream_batches(files, spec, dev, batch_size=256):
    ref = [preprocess_decoded(decode_bytes(f.read_bytes()), spec) for f in chunk]
    ok = [r for r, e in zip(ref, tb.errors) if not e]
    a = pred.predict_preprocessed(ok)
    b = pred.predict_preprocessed([it for it in tb.items() if it is not None])
    same_pred += sum(x.index == y.index for x, y in zip(a, b))
    same_box += sum(max(abs(p - q) for p, q in zip(r.crop_box, bx)) <= 2 for r, bx, e in zip(ref, tb.boxes, tb.errors) if not e)
    n += len(ok)
print(f"{n} slices on {dev}: box within 2 px {same_box / n:.4f} (target >= 0.99), same prediction {same_pred / n:.4f} "
      f"(target >= 0.995), {time.perf_counter() - t0:.0f} s with the CPU reference")
PY

step input_paths 100 "$py" -m bench.sections.input_paths --device "$device" --data "$data/Testing" --images 1311 \
    --out "$out/input_paths.json"

step train_timing 150 "$py" train.py --data-root "$data" --train-dir Testing --test-dir "" --device "$device" \
    --epochs 5 --patience 5 --workers "$(nproc)" --cache-dir "$out/cache" --out "$out/train_timing" \
    --version 0.0.0-timing-only ${TRAIN_ARGS:-}
# Kept beside the bench results (a sub-folder: bench/results/*.json are bench runs) so the README can cite it.
card="bench/results/training/${device}-$(date -u +%F)-timing-card.json"
mkdir -p "$(dirname "$card")" && cp "$out/train_timing/model_card.json" "$card" 2>/dev/null || card=""

# The bench gets what is left of the budget; it saves bench/results/*.partial.json after every section.
step bench $((budget - SECONDS - 5)) "$py" -m bench --device "$device" --data "$data/Testing" --cold-runs 5 \
    ${card:+--train-card "$card"} --readme bench/README_section_gpu.md ${BENCH_ARGS:-}
