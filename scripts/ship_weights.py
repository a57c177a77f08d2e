"""Turn a training run's EMA weights into the fp16 file that ships in ``weights/``.

    python scripts/ship_weights.py runs/serpent-b weights/serpent-b.safetensors

The shipped file keeps the variant config in its header and adds how it was trained (from the run's
``run.json``: steps, crop, batch, learning rate, seed, device; the data folder by name only, no local path)
and the last validation PSNR/SSIM from ``log.csv``.  Then run ``python -m serpent_cli.hub.registry`` and paste
the printed sha256 lines into ``serpent_cli/hub/registry.py``; the last line printed here (the gain and grid
score on the two reference photos) goes into ``REFERENCE_CHECKS`` there.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from serpent_cli.evaluation.evaluate import reference_check
from serpent_cli.hub.weights import load_model, save_model

RECIPE_KEYS = ("model", "steps", "crop", "batch_size", "lr_used", "lr_schedule", "warmup_used", "clip_grad", "rotate",
               "ema", "loss", "seed", "device", "world_size", "degradation")


def training_metadata(run: Path) -> dict[str, object]:
    """What a user of the weights should know about their training, without machine paths."""
    info = json.loads((run / "run.json").read_text())
    recipe = {key: info[key] for key in RECIPE_KEYS if key in info}
    folders = info["data"] if isinstance(info["data"], list) else [info["data"]]
    recipe["data"] = "+".join(Path(f).name for f in folders)
    if info.get("init"):
        recipe["init"] = Path(info["init"]).name
    recipe["val"] = Path(info["val"]).name if info.get("val") else None
    validated = [row for row in csv.DictReader((run / "log.csv").open()) if row.get("val_psnr")]
    if validated:
        last = validated[-1]
        recipe["val_step"] = int(last["step"])
        recipe["val_psnr"] = float(last["val_psnr"])
        recipe["val_ssim"] = float(last["val_ssim"])
        recipe["val_psnr_degraded"] = float(last["val_psnr_degraded"])
    return recipe


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    run, out = Path(argv[1]), Path(argv[2])
    save_model(load_model(run / "model.safetensors"), out, metadata={"training": training_metadata(run)})
    print(out)
    # What the shipped (fp16) file does to the reference photos: paste into registry.REFERENCE_CHECKS.
    data = Path(os.environ.get("SERPENT_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    with tempfile.TemporaryDirectory() as tmp:  # a copy: the new file is not pinned in the registry yet
        copy = Path(tmp) / out.name
        shutil.copyfile(out, copy)
        shipped = load_model(copy)
    print(f'    "{shipped.config.name}": {json.dumps(reference_check(shipped, data))},')
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
