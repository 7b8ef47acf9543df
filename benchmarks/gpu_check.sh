#!/usr/bin/env bash
# The GPU check: every CUDA path of SideFormer run once, in one prepared script for a lent GPU machine.
#   1. the environment (nvidia-smi, torch and CUDA versions, bf16 support, CPU model and cores);
#   2. the CLI on the GPU: a demo-sized `sideformer train` for 2 epochs under the Training Operator's
#      environment (so torchrun and NCCL, one process), `--resume` for a third as one plain process
#      (`--nproc-per-node auto`), `evaluate`, `predict --device cuda` on a folder and a short video,
#      `export` of that model (ONNX checked with onnxruntime);
#   3. benchmarks/input_share.py: end to end on 1920x1080 JPEGs against the model-only rate, then
#      data_pipeline.py --stages-only: one loader worker's ms per image, stage by stage, on this host's CPU;
#   4. benchmarks/gpu.sh with VARIANTS=b0: fp32, bf16, bf16 + channels_last, bf16 + compile vs the reference;
#   5. benchmarks/accuracy.py with bf16 (the speed-ups on vs off at the same settings);
#   6. benchmarks/step_variants.py: one step under each setting, and where its time goes (profile);
#   7. train_throughput.py with bf16 and torch.compile's CUDA graphs (train.compile_mode=reduce-overhead);
#   8. gpu.sh with VARIANTS=b2, if the time budget allows.
# And the input-path and trials-per-GPU measurements (issue 22), each with its own step name:
#   e2e-defaults   train_throughput.py --defaults: SideFormer as a user gets it (bf16, train.compile=auto:
#                  CUDA graphs, data.decode=auto: nvJPEG + torch ops) vs the HF-docs loop (target >= 1.5x),
#                  and the start-up the first epoch costs (compiling, graph capture);
#   input-decode   input_share.py --decode loader,device: share of the model-only rate on 1920x1080 JPEGs
#                  with the OpenCV path and with the GPU decode path (target >= 90 %);
#   search-slots   search_throughput.py: trials/hour with 1, 2 and 4 trials per GPU.
# The next GPU session runs just those, in one call of about 8 minutes:
#   ONLY="environment e2e-defaults input-decode search-slots" BUDGET=420 bash benchmarks/gpu_check.sh
# Each step runs on even when an earlier one failed, under its own time limit, cut to end by BUDGET + 60
# seconds; steps 3-6 start only while the budget (BUDGET seconds, default 440) leaves room for them. Output: $OUT/check.log (everything), and
# $OUT/results.tar.gz (each step's log and JSON, the evaluation and prediction files).
#
#   bash benchmarks/gpu_check.sh --tiny    # on CPU: the same steps at smoke-test sizes (minutes)
#   bash benchmarks/gpu_check.sh           # on a GPU machine
# PYTHON (default .venv/bin/python) runs everything; SIDEFORMER defaults to "$PYTHON -m sideformer";
# ONLY="cli gpu-b2" runs just the steps named.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHON=${PYTHON:-.venv/bin/python}
export SIDEFORMER=${SIDEFORMER:-$PYTHON -m sideformer}
OUT=${OUT:-$(mktemp -d)}
# --tiny on a small CPU takes about 30 minutes (1757 s on 2 shared cores): a budget that lets every step run.
[[ ${1:-} == --tiny ]] && BUDGET=${BUDGET:-2400}
BUDGET=${BUDGET:-440}
export WORK RESULTS TINY
WORK=$(mktemp -d)
RESULTS=$WORK/results
mkdir -p "$OUT" "$RESULTS"
exec > >(tee -a "$OUT/check.log") 2>&1
export PYTHONUNBUFFERED=1
START=$SECONDS
TINY=0
[[ ${1:-} == --tiny ]] && TINY=1
status=()

pack() { tar -C "$WORK" -czf "$OUT/results.tar.gz" results 2>/dev/null; }
trap pack EXIT

# step NAME LIMIT_SECONDS ESTIMATE_SECONDS COMMAND...: runs COMMAND (a program or one of the functions
# below) with its own log, if the budget allows.
step() {
  local name=$1 limit=$2 estimate=$3
  shift 3
  [[ -z ${ONLY:-} || " $ONLY " == *" $name "* ]] || return 0
  local elapsed=$((SECONDS - START))
  ((limit > BUDGET + 60 - elapsed)) && limit=$((BUDGET + 60 - elapsed))
  if ((elapsed + estimate > BUDGET || limit < 10)); then
    echo "=== $name: not run (${elapsed}s elapsed, about ${estimate}s needed, budget ${BUDGET}s)"
    status+=("$name: not run (budget)")
    return
  fi
  echo "=== $name (at ${elapsed}s, limit ${limit}s)"
  local begun=$SECONDS
  if declare -F "$1" >/dev/null; then set -- bash -c "$*"; fi # timeout runs programs, not functions
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$RESULTS/$name.log"
  local rc=${PIPESTATUS[0]}
  status+=("$name: exit $rc in $((SECONDS - begun))s")
  echo "=== $name: exit $rc in $((SECONDS - begun))s"
  pack
}

environment() {
  nvidia-smi || echo "no nvidia-smi"
  lscpu | grep -E '^(Model name|CPU\(s\))'
  "$PYTHON" - <<'PY'
import torch, transformers
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
      f"transformers {transformers.__version__}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, "
          f"bf16 supported: {torch.cuda.is_bf16_supported()}, NCCL {torch.cuda.nccl.version()}")
else:
    print("no CUDA GPU visible")
PY
}

cli_on_gpu() {
  local -a sf
  read -r -a sf <<<"$SIDEFORMER"
  local data=$WORK/data run=$WORK/run device=cuda
  local -a size=(--train 200 --valid 40 --size 128x128) demo=(
    --set model.variant=b0 --set 'data.crop_size=[128,128]' --set 'data.scale_range=[0.75,1.5]'
    --set optim.lr=1e-3 --set optim.head_lr_mult=1.0 --set optim.warmup_steps=50
    --set early_stop.monitor=val_miou --set early_stop.patience=0 --set wandb.enabled=false
    --set checkpoint.keep_temp=true)
  if ((TINY)); then
    size=(--train 16 --valid 8 --size 64x64)
    demo+=(--set 'data.crop_size=[64,64]' --set data.num_workers=1)
    device=cpu
  fi
  set -euo pipefail
  "${sf[@]}" synth --out "$data" "${size[@]}"
  "$PYTHON" - "$data/video.mp4" <<'PY'
import sys, cv2, numpy as np
from sideformer.data.synth import draw_scene
writer = cv2.VideoWriter(sys.argv[1], cv2.VideoWriter_fourcc(*"mp4v"), 10, (320, 240))
for i in range(20):
    image, _ = draw_scene(np.random.default_rng(i), 240, 320)
    writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
writer.release()
PY
  echo "--- train, 2 epochs, under the Training Operator's environment (torchrun, one process, NCCL on a GPU)"
  PET_NNODES=1 PET_NPROC_PER_NODE=1 PET_NODE_RANK=0 PET_MASTER_ADDR=127.0.0.1 PET_MASTER_PORT=29511 \
    "${sf[@]}" train --data "$data" --output "$run" --nproc-per-node auto "${demo[@]}" \
    --set train.epochs=2
  echo "--- train --resume to a third epoch, one plain process"
  "${sf[@]}" train --data "$data" --output "$run" --nproc-per-node auto --resume "${demo[@]}" \
    --set train.epochs=3
  "$PYTHON" - "$run" <<'PY'
import json, sys
metrics = json.load(open(f"{sys.argv[1]}/metrics.json"))
epochs = [h["epoch"] for h in metrics["history"]]
print(f"metrics.json: epochs {epochs}, best {metrics['best_epoch']}, val mIoU {metrics['best']['val_miou']:.4f}")
assert epochs == [1, 2, 3], f"resume did not continue to a third epoch: {epochs}"
PY
  cp "$run/metrics.json" "$run/train_log.jsonl" "$RESULTS/"
  echo "--- evaluate"
  "${sf[@]}" evaluate --model "$run" --data "$data" --split valid --device "$device" \
    --output "$RESULTS/evaluate"
  echo "--- predict on a folder and a video"
  mkdir -p "$WORK/inputs" && cp "$data"/valid/images/*.* "$data/video.mp4" "$WORK/inputs/"
  "${sf[@]}" predict --model "$run" --input "$WORK/inputs" --output "$WORK/predictions" --device "$device"
  find "$WORK/predictions/overlays" -type f | head -3
  cp "$WORK/predictions/overlays/video.mp4" "$RESULTS/"
  echo "--- export the GPU-trained model to ONNX"
  "${sf[@]}" export --model "$run" --onnx "$WORK/model.onnx"
  echo "--- the state_dict loads where no GPU is (a user's laptop)"
  CUDA_VISIBLE_DEVICES="" "$PYTHON" -c "
import torch; state = torch.load('$run/final_ckpts/best_model.pth', weights_only=True)
print(f'best_model.pth: {len(state)} tensors, devices {sorted({str(t.device) for t in state.values()})}')"
}

export -f environment cli_on_gpu

if ((TINY)); then
  step environment 60 0 environment
  step cli 900 0 cli_on_gpu
  step input-share 900 0 "$PYTHON" benchmarks/input_share.py --quick --workers 1 --json "$RESULTS/input.json"
  step input-stages 900 0 "$PYTHON" benchmarks/data_pipeline.py --quick --stages-only \
    --json "$RESULTS/input-stages.json"
  step e2e-defaults 900 0 "$PYTHON" benchmarks/train_throughput.py --quick --defaults --skip-loader \
    --json "$RESULTS/e2e-defaults.json"
  step input-decode 900 0 "$PYTHON" benchmarks/input_share.py --quick --workers "" \
    --decode loader,device --no-preresize --json "$RESULTS/input-decode.json"
  step search-slots 900 0 "$PYTHON" benchmarks/search_throughput.py --quick --json "$RESULTS/search-slots.json"
  step gpu-b0 900 0 env OUT="$RESULTS/gpu-b0" bash benchmarks/gpu.sh --tiny
  step accuracy 900 0 "$PYTHON" benchmarks/accuracy.py --quick --json "$RESULTS/accuracy.json"
  step step-variants 900 0 "$PYTHON" benchmarks/step_variants.py --quick
else
  step environment 60 0 environment
  step e2e-defaults 200 110 "$PYTHON" benchmarks/train_throughput.py --defaults --variant b0 --size 512x512 \
    --images 128 --batch-size 8 --epochs 2 --workers 4 --skip-loader --step-batches 10 \
    --json "$RESULTS/e2e-defaults.json"
  step input-decode 200 120 "$PYTHON" benchmarks/input_share.py --images 128 --workers "" \
    --decode loader,device --no-preresize --json "$RESULTS/input-decode.json"
  step search-slots 300 150 "$PYTHON" benchmarks/search_throughput.py --slots 1,2,4 --rounds 2 \
    --json "$RESULTS/search-slots.json"
  step cli 240 0 cli_on_gpu
  step input-share 180 90 "$PYTHON" benchmarks/input_share.py --json "$RESULTS/input.json"
  step input-stages 60 30 "$PYTHON" benchmarks/data_pipeline.py --stages-only --images 16 --stage-crops 512 \
    --json "$RESULTS/input-stages.json"
  step gpu-b0 300 150 env OUT="$RESULTS/gpu-b0" VARIANTS=b0 bash benchmarks/gpu.sh
  step accuracy 150 60 "$PYTHON" benchmarks/accuracy.py --json "$RESULTS/accuracy.json"
  step step-variants 200 100 "$PYTHON" benchmarks/step_variants.py
  step graphs-b0 150 90 "$PYTHON" benchmarks/train_throughput.py --variant b0 --precision bf16 --compile \
    --compile-mode reduce-overhead --size 512x512 --images 128 --batch-size 8 --epochs 2 --workers 4 \
    --skip-loader --step-batches 10 --json "$RESULTS/graphs-b0.json"
  step gpu-b2 300 180 env OUT="$RESULTS/gpu-b2" VARIANTS=b2 bash benchmarks/gpu.sh
fi

echo
echo "=== steps ($((SECONDS - START))s in all)"
printf '  %s\n' "${status[@]}"
grep -h '^summary:' "$RESULTS"/*.log "$RESULTS"/gpu-*/*.log 2>/dev/null | sort -u
