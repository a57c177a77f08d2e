"""Throughput of `serpent deblur` on one large photo: wall time and peak RSS of the real command.

A real photo (kodak24 by default) is centre-cropped to the aspect of --width x --height and upsampled
(bicubic) to that size (--size for a square, 2048 by default), written as PNG, and restored by the
installed `serpent deblur` as a subprocess with --tile auto, --repeat times (the median is the figure,
every run is listed: this VM's speed drifts by up to 1.5x within minutes).  ``--compete N`` runs N
CPU-bound processes (a busy loop each) beside it, as on a shared machine; ``--threads 0`` leaves the
thread count to serpent's default.  Peak RSS is the largest resident set size of the `serpent deblur` runs
(measured by a small intermediate process, so this script's own memory is not counted).  Uses the
bundled weights of --model when present, else a random-init network of that variant (the speed
and memory are the same; only the picture quality differs).

    python benchmarks/deblur_throughput.py --data ../shared/data --threads 2 [--json]
    python benchmarks/deblur_throughput.py --width 4000 --height 3000 --threads 0 --compete 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from serpent_cli.factory import create_model
from serpent_cli.hub.local import bundled_weights_dir
from serpent_cli.hub.weights import save_model

# The command runs under this small Python process, which prints the peak RSS of its child last on stderr.
# Measured from here, the child's peak would include this process's memory (torch imported): a child's high-water
# mark counts the address space it shared with its parent before exec.
_PEAK_RSS_WRAPPER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:]).returncode\n"
    "print('peak-rss-kib', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--photo", default="kodak24/kodim23.png", help="relative to --data")
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--width", type=int, help="output width (default --size)")
    parser.add_argument("--height", type=int, help="output height (default --size)")
    parser.add_argument("--compete", type=int, default=0, help="CPU-bound processes to run beside it")
    parser.add_argument("--model", default="serpent-b")
    parser.add_argument("--threads", type=int, default=2, help="0: serpent's default")
    parser.add_argument("--tile", default="auto")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of the command; the figures are their median (a shared VM drifts by 1.5x)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    width, height = args.width or args.size, args.height or args.size

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        with Image.open(args.data / args.photo) as img:
            img = img.convert("RGB")
            scale = min(img.width / width, img.height / height)
            cw, ch = round(width * scale), round(height * scale)
            left, top = (img.width - cw) // 2, (img.height - ch) // 2
            big = img.crop((left, top, left + cw, top + ch)).resize((width, height), Image.BICUBIC)
        big.save(tmp / "big.png")
        weights = bundled_weights_dir() / f"{args.model}.safetensors"
        trained = weights.is_file()
        if not trained:
            torch.manual_seed(0)
            weights = save_model(create_model(args.model), tmp / "w.safetensors")
        serpent = Path(sys.executable).with_name("serpent")
        cmd = [str(serpent)] if serpent.exists() else [sys.executable, "-m", "serpent_cli"]
        cmd += ["deblur", str(tmp / "big.png"), "-o", str(tmp / "out.png"), "--weights", str(weights),
                "--device", args.device, "--tile", args.tile, "--json"]
        env = dict(os.environ)
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        else:
            env.pop("OMP_NUM_THREADS", None)
        # Warm-up on a small crop: numba's one-time compile (cached per user) is not part of the figure.
        big.crop((0, 0, 64, 64)).save(tmp / "small.png")
        warm = [str(tmp / "small.png") if c == str(tmp / "big.png") else c for c in cmd]
        warm[warm.index("-o") + 1] = str(tmp / "small-out.png")
        subprocess.run(warm, capture_output=True, env=env, check=True)
        busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.compete)]
        walls: list[float] = []
        restores: list[float] = []
        peaks_kib: list[int] = []
        try:
            for _ in range(max(1, args.repeat)):
                (tmp / "out.png").unlink(missing_ok=True)
                start = time.perf_counter()
                proc = subprocess.run([sys.executable, "-c", _PEAK_RSS_WRAPPER, *cmd], capture_output=True, text=True,
                                      env=env)
                walls.append(time.perf_counter() - start)
                if proc.returncode != 0:
                    sys.exit(f"deblur failed ({proc.returncode}): {proc.stderr.strip()}")
                peaks_kib.append(int(proc.stderr.strip().splitlines()[-1].split()[-1]))
                row = json.loads(proc.stdout.splitlines()[-1])
                restores.append(row["seconds"])
        finally:
            for p in busy:
                p.kill()
                p.wait()
    peak_rss_mib = max(peaks_kib) / 1024  # Linux: KiB
    result = {
        "model": args.model,
        "trained_weights": trained,
        "size": [width, height],
        "threads": args.threads or "default",
        "competing_processes": args.compete,
        "device": args.device,
        "tile_used": row.get("tile"),
        "seconds_wall": round(statistics.median(walls), 2),
        "seconds_wall_runs": [round(w, 2) for w in walls],
        "seconds_restore": round(statistics.median(restores), 2),
        "megapixels_per_second": round(width * height / 1e6 / statistics.median(restores), 4),
        "peak_rss_mib": round(peak_rss_mib, 1),
        "cpu": platform.processor() or platform.machine(),
        "cores_visible": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>22}: {value}")


if __name__ == "__main__":
    main()
