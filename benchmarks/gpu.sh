#!/usr/bin/env bash
# GPU training throughput: SegFormer-b0 and -b2 at 512x512, SideFormer (fp32; bf16 autocast; bf16 with
# channels_last; bf16 with torch.compile) against the HF docs' loop (fp32, as the docs write it), each pair
# measured in the same run by benchmarks/train_throughput.py. Prints every run's summary line, then all of
# them together; writes each run's numbers to $OUT (default: a temp folder) as JSON.
#
#   bash benchmarks/gpu.sh            # the full run (needs a CUDA GPU; about 10-15 minutes)
#   bash benchmarks/gpu.sh --tiny     # smoke test on CPU: b0 at 128x128, 1 epoch, no compile (minutes)
#   VARIANTS=b2 bash benchmarks/gpu.sh  # one variant (b0 or b2) per call: fits a 10-minute command limit
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"

if [[ ${1:-} == --tiny ]]; then
  common=(--size 128x128 --images 8 --batch-size 2 --epochs 1 --workers 1 --skip-loader --step-batches 1)
  variants=(b0)
  modes=("fp32" "bf16" "bf16 --channels-last")
elif "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  common=(--size 512x512 --images 128 --batch-size 8 --epochs 2 --workers 4 --skip-loader --step-batches 10)
  read -r -a variants <<<"${VARIANTS:-b0 b2}"
  modes=("fp32" "bf16" "bf16 --channels-last" "bf16 --compile")
else
  echo "gpu.sh: no CUDA GPU visible to $PYTHON; run it on a GPU machine, or pass --tiny for the CPU smoke test" >&2
  exit 2
fi

summaries=()
for variant in "${variants[@]}"; do
  for mode in "${modes[@]}"; do
    read -r precision extra <<<"$mode"
    name="$variant-$precision${extra:+-${extra#--}}"
    echo "=== $variant, SideFormer $precision ${extra:-} vs the reference (fp32)"
    # shellcheck disable=SC2086  # $extra is one optional flag
    "$PYTHON" benchmarks/train_throughput.py --variant "$variant" --precision "$precision" $extra \
      "${common[@]}" --json "$OUT/$name.json" | tee "$OUT/$name.log"
    summaries+=("$name: $(grep '^summary:' "$OUT/$name.log" | sed 's/^summary: //')")
  done
done

echo
echo "all runs (JSON and logs in $OUT):"
printf '  %s\n' "${summaries[@]}"
