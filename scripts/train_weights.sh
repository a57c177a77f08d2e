#!/usr/bin/env bash
# The training recipe of the shipped weights: rerun it to reproduce weights/serpent-*.safetensors and the
# U-Net(32) baseline of the README's results table.
#
#   scripts/train_weights.sh [cpu|gpu] [DATA_ROOT] [RUN_ROOT]
#
# cpu: the budget the bundled weights were trained with (one thread per model on a 2-core CPU).
# gpu: the recipe for one GPU (bf16 autocast), resumable across 15-minute sessions (--resume).
# DATA_ROOT holds natural-train/, faces-train/ and natural-val/ (default ../shared/data); RUN_ROOT gets one
# run folder per model (default runs/). Every benchmark model (serpent-b/-l/-h, unet-32) gets the same data,
# steps, crops, schedule and seed; serpent-l-blind the same recipe on the blind degradation family.
# INIT_DIR=weights continues from the shipped files (--init; a fresh cosine cycle) instead of from scratch.
set -euo pipefail
profile=${1:-cpu}
data=${2:-../shared/data}
runs=${3:-runs}
case "$profile" in
  cpu) steps=${STEPS:-2000}; crop=96; batch=4; lr=1e-3; val_crop=128; device=cpu; threads=1 ;;
  gpu) steps=${STEPS:-20000}; crop=128; batch=8; lr=5e-4; val_crop=256; device=cuda; threads=0 ;;
  *) echo "usage: $0 [cpu|gpu] [DATA_ROOT] [RUN_ROOT]" >&2; exit 2 ;;
esac
models=${MODELS:-"serpent-l serpent-l-blind serpent-b unet-32 serpent-h"}
if [ "$threads" -gt 0 ]; then export OMP_NUM_THREADS=$threads; fi
for model in $models; do
  degradation=benchmark
  case "$model" in *-blind) degradation=blind ;; esac
  init=()
  if [ -n "${INIT_DIR:-}" ] && [ -f "$INIT_DIR/$model.safetensors" ]; then init=(--init "$INIT_DIR/$model.safetensors"); fi
  serpent train "$data/natural-train" "$data/faces-train" --model "$model" --val "$data/natural-val" \
    --degradation "$degradation" --steps "$steps" --crop "$crop" --batch-size "$batch" --lr "$lr" \
    --lr-schedule cosine --clip-grad 1.0 --val-crop "$val_crop" --val-every $((steps / 4)) --save-every 100 \
    --seed 0 --device "$device" --out "$runs/$model" --resume "${init[@]}"
done
