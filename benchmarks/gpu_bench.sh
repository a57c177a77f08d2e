#!/usr/bin/env bash
# The GPU run of `serpent bench` (issue 5): Serpent and its peers at 256, 512, 1024 and 2048 on
# one GPU, fp32, inference and a training step (Adam, batch 1), written to
# benchmarks/results/bench-<gpu>.json (and .png where matplotlib imports).
#
#   bash benchmarks/gpu_bench.sh            # from anywhere; runs in the repository root
#
# Needs torch with CUDA, typer, rich, einops, safetensors, pillow (the GPU image has them).
# The SwinIR / NAFNet peers need spandrel (pure Python) and the torchvision that matches the
# installed torch; a wheel of spandrel placed in ./.whl/ (git-ignored, carried to the
# machine) is installed with --no-deps when spandrel is missing.  Without spandrel the peers are
# left out and the script says so.  If matplotlib is missing, plot later on any machine with
#   serpent bench --load benchmarks/results/bench-<gpu>.json --plot benchmarks/results/bench-<gpu>.png
# Expected duration on an H100/H200: about 5-8 minutes (SwinIR at 2048 dominates; slow models
# get fewer repeats through --budget; out-of-memory cells are cheap).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n1 | sed -E 's/^NVIDIA //; s/[^A-Za-z0-9]+/-/g; s/-+$//' | tr '[:upper:]' '[:lower:]')
out="benchmarks/results/bench-${gpu:-gpu}"
mkdir -p benchmarks/results

if ! python -c "import spandrel" 2>/dev/null && compgen -G ".whl/spandrel-*.whl" >/dev/null; then
  python -m pip install -q --no-deps .whl/spandrel-*.whl || true
fi
models=(serpent-b serpent-l serpent-h unet-32 unet-64 unet-128)
if python -c "import spandrel" 2>/dev/null; then
  models+=(swinir-b swinir-l nafnet-32)
else
  echo "gpu_bench: spandrel does not import here; SwinIR / NAFNet peers left out" >&2
fi
plot=()
if python -c "import matplotlib" 2>/dev/null; then plot=(--plot "$out.png"); fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >&2
python -m serpent_cli bench \
  --device cuda --precision fp32 --train \
  --resolution 256 512 1024 2048 \
  --models "${models[@]}" \
  --reference serpent-b \
  --warmup 2 --repeats 5 --budget 20 \
  --output "$out.json" "${plot[@]}"
echo "gpu_bench: wrote $out.json" >&2
