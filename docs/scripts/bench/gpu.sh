#!/usr/bin/env bash
# Every GPU row of docs/performance.md in one command, inside a fixed time budget on one H100/H200.
#
#   docs/scripts/bench/gpu.sh [OUT_DIR]           # default OUT_DIR: runs/bench-gpu
#   docs/scripts/bench/gpu.sh --tiny [OUT_DIR]    # the same runs on the tests' tiny pipelines, on a CPU (checks the script)
#   BUDGET=420 ROW_LIMIT=150 docs/scripts/bench/gpu.sh ...   # seconds: the whole script, one row (the defaults)
#
# Models are random weights of the published configs, built in code (docs/scripts/bench/models.py; nothing is
# downloaded): an SD1.5-shaped UNet at 64x64 latents (512 px), an SDXL-shaped UNet at 128x128
# (1024 px) and a SANA-600M-shaped transformer at 32x32x32 (1024 px). Each row is one `prefopt bench`
# (the recipe's own training step, fused vs the official DDSPO step, interleaved, medians) in bf16;
# LoRA and full fine-tuning; train.compile off and on; pair generation with backbone.compile_sampling;
# channels-last; SDPA vs xformers attention (when installed).
#
# Device time is scarce, so the rows run in order of what they decide (the SD1.5 LoRA row carries the
# MFU target) and a model is built just before its first row. Each row gets at most ROW_LIMIT seconds
# and no row starts once BUDGET is spent; a row that fails or times out is reported and the next one
# runs. The summary at the end says which rows were measured, failed or left for lack of time.
# Rows go to OUT_DIR/bench.md (copy them into docs/performance.md's GPU table); logs to OUT_DIR/*.log.
set -uo pipefail
cd "$(dirname "$0")/../../.."
TINY=0
if [[ "${1:-}" == "--tiny" ]]; then TINY=1; shift; fi
OUT=${1:-runs/bench-gpu}
BUDGET=${BUDGET:-420}
ROW_LIMIT=${ROW_LIMIT:-150}
mkdir -p "$OUT"
PY=${PYTHON:-python}
PREFOPT=("$PY" -m prefopt.cli)

if (( TINY )); then
  PRECISION=no STEPS=1 GEN_STEPS=1
  SD_BATCH=2 SDXL_BATCH=2 SANA_BATCH=2 RES_SD=16 RES_SDXL=16 RES_SANA=32
else
  PRECISION=bf16 STEPS=5 GEN_STEPS=10
  SD_BATCH=8 SDXL_BATCH=2 SANA_BATCH=8 RES_SD=512 RES_SDXL=1024 RES_SANA=1024
fi
"$PY" -c "import torch; print('device:', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU', '| torch', torch.__version__)"

MEASURED=() FAILED=() LEFT=()

model_dir() {  # family -> pipeline directory, built on first use
  local dir="$OUT/models/$1"
  if [[ ! -f "$dir/model_index.json" ]]; then
    local start=$SECONDS
    "$PY" docs/scripts/bench/models.py "$1" "$dir" $( (( TINY )) && echo --tiny ) > "$OUT/build-$1.log" 2>&1 \
      || { echo "== building $1 failed: see $OUT/build-$1.log" >&2; return 1; }
    echo "== built $1 ($((SECONDS - start)) s)" >&2
  fi
  echo "$dir"
}

bench() {  # name recipe family batch resolution [extra overrides...]
  local name=$1 recipe=$2 family=$3 batch=$4 res=$5; shift 5
  if (( TINY )) && [[ "$name" == *compile* ]]; then
    # On a CPU inductor builds C++ kernels for many minutes; tests/test_bench_speed.py checks the compiled step.
    echo "== $name: skipped with --tiny"; LEFT+=("$name (--tiny)"); return
  fi
  local remaining=$((BUDGET - SECONDS))
  if (( remaining < 30 )); then
    echo "== $name: not run, the ${BUDGET} s budget is spent"; LEFT+=("$name"); return
  fi
  local model
  model=$(model_dir "$family") || { FAILED+=("$name (model build)"); return; }
  local limit=$(( remaining < ROW_LIMIT ? remaining : ROW_LIMIT ))
  echo "== $name (at most $limit s)"
  local start=$SECONDS
  timeout --signal=INT --kill-after=20 "$limit" "${PREFOPT[@]}" bench "$recipe" \
    "backbone.pretrained=$model" "backbone.resolution=$res" "pairs.prompts.path=$model/prompts.txt" \
    "backbone.num_inference_steps=$GEN_STEPS" "pairs.sample_batch_size=$batch" \
    "train.batch_size=$batch" train.grad_accum=1 "train.mixed_precision=$PRECISION" train.report_to=[] \
    "output_dir=$OUT/run-$name" "$@" --steps "$STEPS" --output "$OUT/bench.md" > "$OUT/$name.log" 2>&1
  local rc=$?
  if (( rc == 0 )); then
    MEASURED+=("$name")
    grep -E "^(fused|naive|fused/naive|pair generation)" "$OUT/$name.log" | sed 's/^/   /'
  elif (( rc == 124 || rc == 137 )); then
    FAILED+=("$name (over $limit s)"); echo "   over $limit s: see $OUT/$name.log"
  else
    FAILED+=("$name (exit $rc)"); echo "   failed: see $OUT/$name.log"; tail -3 "$OUT/$name.log"
  fi
  echo "   ($((SECONDS - start)) s, $((SECONDS)) s of $BUDGET used)"
}

FULL=(backbone.finetune.mode=full)
LORA=(backbone.finetune.mode=lora backbone.finetune.rank=64)
NOGEN=(--no-generation)

# In order of what each row decides: the MFU target, the fused step at the real shapes, compile, the
# other families, then the settings whose defaults the rows would revisit.
bench sd15-lora        recipes/sd14_ddspo.yaml sd15 "$SD_BATCH" "$RES_SD" "${LORA[@]}"
bench sd15-full        recipes/sd14_ddspo.yaml sd15 "$SD_BATCH" "$RES_SD" "${FULL[@]}" "${NOGEN[@]}"
bench sd15-lora-compile recipes/sd14_ddspo.yaml sd15 "$SD_BATCH" "$RES_SD" "${LORA[@]}" train.compile=true "${NOGEN[@]}"
bench sd15-lora-compile-sampling recipes/sd14_ddspo.yaml sd15 "$SD_BATCH" "$RES_SD" "${LORA[@]}" backbone.compile_sampling=true
bench sdxl-lora        recipes/sdxl_ddspo.yaml sdxl "$SDXL_BATCH" "$RES_SDXL" "${LORA[@]}"
bench sana-lora        recipes/sana_ddspo.yaml sana "$SANA_BATCH" "$RES_SANA" "${LORA[@]}" backbone.denoiser_dtype=auto
bench sd15-full-compile recipes/sd14_ddspo.yaml sd15 "$SD_BATCH" "$RES_SD" "${FULL[@]}" train.compile=true "${NOGEN[@]}"
bench sd15-lora-channels-last recipes/sd14_ddspo.yaml sd15 "$SD_BATCH" "$RES_SD" "${LORA[@]}" train.channels_last=true "${NOGEN[@]}"
if "$PY" -c "import xformers" 2>/dev/null; then
  bench sd15-lora-xformers recipes/sd14_ddspo.yaml sd15 "$SD_BATCH" "$RES_SD" "${LORA[@]}" backbone.attention=xformers "${NOGEN[@]}"
else
  echo "== sd15-lora-xformers: xformers not installed, not measured"; LEFT+=("sd15-lora-xformers (no xformers)")
fi
bench sdxl-full        recipes/sdxl_ddspo.yaml sdxl "$SDXL_BATCH" "$RES_SDXL" "${FULL[@]}" "${NOGEN[@]}"
bench sdxl-lora-compile recipes/sdxl_ddspo.yaml sdxl "$SDXL_BATCH" "$RES_SDXL" "${LORA[@]}" train.compile=true "${NOGEN[@]}"
bench sana-full        recipes/sana_ddspo.yaml sana "$SANA_BATCH" "$RES_SANA" "${FULL[@]}" backbone.denoiser_dtype=auto "${NOGEN[@]}"

echo "== summary after $SECONDS s"
echo "measured: ${MEASURED[*]:-none}"
echo "failed:   ${FAILED[*]:-none}"
echo "not run:  ${LEFT[*]:-none}"
echo "rows: $OUT/bench.md"
(( ${#FAILED[@]} == 0 ))
