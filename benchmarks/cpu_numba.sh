#!/usr/bin/env bash
# The CPU speed figures of the numba scan backend, side by side with the torch backend, in one run.
# Writes benchmarks/results/cpu-*.json. Run on a quiet machine (nothing else CPU-bound), 2 threads:
#
#   benchmarks/cpu_numba.sh [DATA_ROOT]        # about 10 minutes on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data}
out=benchmarks/results
mkdir -p "$out"
echo "== scan op, 512x512 shapes of serpent-b / serpent-l, 2 threads"
python benchmarks/cpu_scan.py --threads 2 --repeats 2 --json "$out/cpu-scan.json"
echo "== forward 512x512, 2 threads: numba (N = E/6, the default), numba and torch at N = c/6 (the shipped files)"
python benchmarks/cpu_forward.py --threads 2 --backend numba --json "$out/cpu-forward-numba.json"
python benchmarks/cpu_forward.py --threads 2 --backend numba --state-divisor 6 --variants serpent-b serpent-l \
  --json "$out/cpu-forward-numba-c6.json"
python benchmarks/cpu_forward.py --threads 2 --backend torch --state-divisor 6 --variants serpent-b serpent-l \
  --json "$out/cpu-forward-torch-c6.json"
echo "== forward 512x512, 2 threads, paired: the models in one process, in turn; time ratios to U-Net(32)"
python benchmarks/cpu_forward.py --paired --variants serpent-b serpent-l unet-32 --repeats 15 \
  --json "$out/cpu-forward-paired.json"
echo "== training step (forward, backward, Adam), batch 4 of 96x96, 1 thread"
python benchmarks/cpu_train_step.py --threads 1 --size 96 --batch 4 --steps 3 --backend numba \
  --variants serpent-b serpent-l serpent-h unet-32 --json "$out/cpu-train-numba.json"
python benchmarks/cpu_train_step.py --threads 1 --size 96 --batch 4 --steps 3 --backend numba --state-divisor 6 \
  --variants serpent-b serpent-l --json "$out/cpu-train-numba-c6.json"
python benchmarks/cpu_train_step.py --threads 1 --size 96 --batch 4 --steps 3 --backend torch --state-divisor 6 \
  --variants serpent-b serpent-l --json "$out/cpu-train-torch-c6.json"
echo "== serpent deblur on a 4000x3000 photo, serpent-b, 2 threads: alone, then beside one CPU-bound process"
python benchmarks/deblur_throughput.py --data "$data" --width 4000 --height 3000 --threads 2 --json \
  | tee "$out/cpu-deblur-4000x3000.json"
python benchmarks/deblur_throughput.py --data "$data" --width 4000 --height 3000 --threads 2 --compete 1 --json \
  | tee "$out/cpu-deblur-4000x3000-compete1.json"
