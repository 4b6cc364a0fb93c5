#!/usr/bin/env bash
# Every GPU row of docs/performance.md in one command (target: under 8 minutes on one H100/H200).
#
#   docs/scripts/bench/gpu.sh [OUT_DIR]           # default OUT_DIR: runs/bench-gpu
#   docs/scripts/bench/gpu.sh --tiny [OUT_DIR]    # the same runs on the tests' tiny pipelines, on a CPU (checks the script)
#
# Models are random weights of the published configs, built in code (docs/scripts/bench/models.py; nothing is
# downloaded): an SD1.5-shaped UNet at 64x64 latents (512 px), an SDXL-shaped UNet at 128x128
# (1024 px) and a SANA-600M-shaped transformer at 32x32x32 (1024 px). Each run is `prefopt bench`
# (the recipe's own training step, fused vs the official DDSPO step, interleaved, medians) in bf16;
# LoRA and full fine-tuning; train.compile off and on; pair generation with backbone.compile_sampling;
# SDPA vs xformers attention (when installed).
# Rows go to OUT_DIR/bench.md (copy them into docs/performance.md's GPU table); logs to OUT_DIR/*.log.
set -euo pipefail
cd "$(dirname "$0")/../../.."
TINY=0
if [[ "${1:-}" == "--tiny" ]]; then TINY=1; shift; fi
OUT=${1:-runs/bench-gpu}
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

build() {  # family -> pipeline directory (built once)
  local dir="$OUT/models/$1"
  if [[ ! -f "$dir/model_index.json" ]]; then
    "$PY" docs/scripts/bench/models.py "$1" "$dir" $( (( TINY )) && echo --tiny ) > "$OUT/build-$1.log" 2>&1
  fi
  echo "$dir"
}

bench() {  # name recipe pipeline batch resolution [extra overrides...]
  local name=$1 recipe=$2 model=$3 batch=$4 res=$5; shift 5
  if (( TINY )) && [[ "$name" == *compile* ]]; then
    # On a CPU inductor builds C++ kernels for many minutes; tests/test_bench_speed.py checks the compiled step.
    echo "== $name: skipped with --tiny"; return 0
  fi
  echo "== $name"
  local start=$SECONDS
  "${PREFOPT[@]}" bench "$recipe" \
    "backbone.pretrained=$model" "backbone.resolution=$res" "pairs.prompts.path=$model/prompts.txt" \
    "backbone.num_inference_steps=$GEN_STEPS" "pairs.sample_batch_size=$batch" \
    "train.batch_size=$batch" train.grad_accum=1 "train.mixed_precision=$PRECISION" train.report_to=[] \
    "output_dir=$OUT/run-$name" "$@" --steps "$STEPS" --output "$OUT/bench.md" > "$OUT/$name.log" 2>&1 \
    || { echo "   failed: see $OUT/$name.log"; tail -3 "$OUT/$name.log"; return 1; }
  grep -E "^(fused|naive|fused/naive|pair generation)" "$OUT/$name.log" | sed 's/^/   /'
  echo "   ($((SECONDS - start)) s)"
}

SD=$(build sd15); SDXL=$(build sdxl); SANA=$(build sana)
FULL=(backbone.finetune.mode=full)
LORA=(backbone.finetune.mode=lora backbone.finetune.rank=64)
NOGEN=(--no-generation)

bench sd15-lora        recipes/sd14_ddspo.yaml "$SD" "$SD_BATCH" "$RES_SD" "${LORA[@]}"
bench sd15-lora-compile recipes/sd14_ddspo.yaml "$SD" "$SD_BATCH" "$RES_SD" "${LORA[@]}" train.compile=true "${NOGEN[@]}"
bench sd15-lora-compile-sampling recipes/sd14_ddspo.yaml "$SD" "$SD_BATCH" "$RES_SD" "${LORA[@]}" backbone.compile_sampling=true
bench sd15-full        recipes/sd14_ddspo.yaml "$SD" "$SD_BATCH" "$RES_SD" "${FULL[@]}" "${NOGEN[@]}"
bench sd15-full-compile recipes/sd14_ddspo.yaml "$SD" "$SD_BATCH" "$RES_SD" "${FULL[@]}" train.compile=true "${NOGEN[@]}"
if "$PY" -c "import xformers" 2>/dev/null; then
  bench sd15-lora-xformers recipes/sd14_ddspo.yaml "$SD" "$SD_BATCH" "$RES_SD" "${LORA[@]}" backbone.attention=xformers "${NOGEN[@]}"
else
  echo "== sd15-lora-xformers: xformers not installed, not measured"
fi
bench sdxl-lora        recipes/sdxl_ddspo.yaml "$SDXL" "$SDXL_BATCH" "$RES_SDXL" "${LORA[@]}"
bench sdxl-lora-compile recipes/sdxl_ddspo.yaml "$SDXL" "$SDXL_BATCH" "$RES_SDXL" "${LORA[@]}" train.compile=true "${NOGEN[@]}"
bench sdxl-full        recipes/sdxl_ddspo.yaml "$SDXL" "$SDXL_BATCH" "$RES_SDXL" "${FULL[@]}" "${NOGEN[@]}"
bench sana-lora        recipes/sana_ddspo.yaml "$SANA" "$SANA_BATCH" "$RES_SANA" "${LORA[@]}" backbone.denoiser_dtype=auto
bench sana-full        recipes/sana_ddspo.yaml "$SANA" "$SANA_BATCH" "$RES_SANA" "${FULL[@]}" backbone.denoiser_dtype=auto "${NOGEN[@]}"
echo "rows: $OUT/bench.md"
