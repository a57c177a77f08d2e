#!/usr/bin/env bash
# The training recipe of the shipped weights: rerun it to reproduce weights/serpent-{b,l,h}.safetensors
# and the U-Net(32) baseline of the README's results table.
#
#   scripts/train_weights.sh [cpu|gpu] [DATA_ROOT] [RUN_ROOT]
#
# cpu: the budget the bundled weights were trained with (2 CPU cores, small crops, few steps).
# gpu: the recipe for one GPU (bf16 autocast), resumable across 15-minute sessions (--resume).
# DATA_ROOT holds natural-train/ and natural-val/ (default ../shared/data); RUN_ROOT gets one run folder
# per model (default runs/). Every model gets the same data, steps, schedule and seed.
set -euo pipefail
profile=${1:-cpu}
data=${2:-../shared/data}
runs=${3:-runs}
case "$profile" in
  cpu) steps=${STEPS:-600}; crop=48; batch=2; lr=1e-3; val_crop=128; device=cpu; models=${MODELS:-"unet-32 serpent-b serpent-l serpent-h"} ;;
  gpu) steps=${STEPS:-20000}; crop=128; batch=8; lr=5e-4; val_crop=256; device=cuda; models=${MODELS:-"unet-32 serpent-b serpent-l serpent-h"} ;;
  *) echo "usage: $0 [cpu|gpu] [DATA_ROOT] [RUN_ROOT]" >&2; exit 2 ;;
esac
for model in $models; do
  serpent train "$data/natural-train" --model "$model" --val "$data/natural-val" \
    --steps "$steps" --crop "$crop" --batch-size "$batch" --lr "$lr" \
    --val-crop "$val_crop" --val-every $((steps / 2)) --save-every 50 --seed 0 \
    --device "$device" --out "$runs/$model" --resume
done
