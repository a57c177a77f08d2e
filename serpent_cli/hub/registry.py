"""The model registry: the one place that says where Serpent's trained weights are and what they must hash to.

Each entry names a Hub repo (laid out as ``config.json`` + ``model.safetensors``), a pinned revision, the
file name, the sha256 the file must have, what it was trained on, and its evaluation metrics.

Honesty rule: ``published`` stays ``False`` until the weights really are on the Hub. Until then the weights
live in the package's ``weights/`` folder (bundled), ``serpent download NAME`` says so instead of trying the
network, and ``serpent export`` produces the folder to upload.

Which names have entries, and the sha256 each file must have, is the model registry's answer
(:func:`serpent_cli.models.registry.shipped_models`): one table of names for the whole package.  After
training, ``python -m serpent_cli.hub.registry`` prints the pins of the files in ``weights/`` to paste there.
This module is plain data and its validation: finding files in the Hub cache is :mod:`serpent_cli.hub.client`'s
job, hashing and the bundled folder :mod:`serpent_cli.hub.local`'s.

Users (and tests) override or extend entries with a JSON file named by the ``SERPENT_REGISTRY`` environment
variable: ``{"serpent-b": {"published": true, "revision": "..."}, "my-model": {"repo_id": "me/my-model"}}``.
Fields given there replace the built-in ones; new names are added (published unless they say
``"published": false``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serpent_cli.errors import UsageError
from serpent_cli.hub.local import bundled_weights_dir, read_json_file, sha256_file
from serpent_cli.models.registry import model_info, shipped_models

REGISTRY_ENV = "SERPENT_REGISTRY"
HUB_FILENAME = "model.safetensors"
HUB_ORG = "serpent-cli"
TRAINING_DATA = (
    "natural-train (170 photos) + faces-train (60 faces), validated on natural-val; benchmark degradation: "
    "Gaussian blur 61x61 sigma 3.0 + Gaussian noise sigma 0.05 (serpent-l-blind: the blind family); CPU "
    "budget: 2000 steps of 4 crops of 96x96, Adam lr 1e-3 cosine, seed 0 (scripts/train_weights.sh cpu), "
    "run again from the previous weights (INIT_DIR=weights): serpent-l-blind six times, serpent-l four "
    "times, serpent-b three times, serpent-h four times"
)

# `serpent eval` (PSNR dB / SSIM) of the bundled weights on whole test sets: set names under the benchmark
# degradation, blind/SET under the blind family. Written by scripts/registry_metrics.py from
# benchmarks/results/eval/*.json (scripts/results_table.py --json); a test holds them equal.
METRICS: dict[str, dict[str, dict[str, float]]] = {
    "serpent-b": {
        "faces-test-256": {"psnr": 25.57, "ssim": 0.533},
        "faces-test-512": {"psnr": 26.68, "ssim": 0.501},
        "cbsd68": {"psnr": 23.17, "ssim": 0.434},
        "kodak24": {"psnr": 23.73, "ssim": 0.427},
        "mcmaster18": {"psnr": 24.28, "ssim": 0.489},
        "set14": {"psnr": 22.90, "ssim": 0.458},
    },
    "serpent-l": {
        "faces-test-256": {"psnr": 27.82, "ssim": 0.773},
        "faces-test-512": {"psnr": 29.86, "ssim": 0.796},
        "cbsd68": {"psnr": 24.64, "ssim": 0.628},
        "kodak24": {"psnr": 25.25, "ssim": 0.659},
        "mcmaster18": {"psnr": 25.99, "ssim": 0.712},
        "set14": {"psnr": 24.15, "ssim": 0.633},
        "blind/kodak24": {"psnr": 20.68, "ssim": 0.592},
        "blind/cbsd68": {"psnr": 20.40, "ssim": 0.575},
    },
    "serpent-h": {
        "faces-test-256": {"psnr": 27.93, "ssim": 0.778},
        "faces-test-512": {"psnr": 29.96, "ssim": 0.800},
        "cbsd68": {"psnr": 24.71, "ssim": 0.634},
        "kodak24": {"psnr": 25.32, "ssim": 0.664},
        "mcmaster18": {"psnr": 26.06, "ssim": 0.718},
        "set14": {"psnr": 24.27, "ssim": 0.640},
    },
    "serpent-l-blind": {
        "kodak24": {"psnr": 24.49, "ssim": 0.613},
        "cbsd68": {"psnr": 23.88, "ssim": 0.581},
        "blind/kodak24": {"psnr": 27.43, "ssim": 0.766},
        "blind/cbsd68": {"psnr": 27.08, "ssim": 0.728},
    },
}

# What each shipped file does to the two reference photos (serpent_cli.evaluation.evaluate.REFERENCE_PHOTOS, 256 px
# centre crops, benchmark degradation): PSNR gain over the degraded input (dB) and patch-grid score.
# scripts/ship_weights.py prints these lines; tests/test_shipped_weights.py holds every bundled file to them.
REFERENCE_CHECKS: dict[str, dict[str, dict[str, float | None]]] = {
    "serpent-b": {"kodak24/kodim03.png": {"gain_db": 2.234, "grid": 1.049},
                  "kodak24/kodim23.png": {"gain_db": 2.303, "grid": 1.05}},
    "serpent-l": {"kodak24/kodim03.png": {"gain_db": 4.634, "grid": 1.373},
                  "kodak24/kodim23.png": {"gain_db": 4.385, "grid": 1.316}},
    "serpent-h": {"kodak24/kodim03.png": {"gain_db": 4.711, "grid": None},
                  "kodak24/kodim23.png": {"gain_db": 4.429, "grid": None}},
    "serpent-l-blind": {"kodak24/kodim03.png": {"gain_db": 3.716, "grid": 1.359},
                        "kodak24/kodim23.png": {"gain_db": 3.703, "grid": 1.323}},
}

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class RegistryEntry:
    """Where one named model's weights live and what they must hash to."""

    name: str
    repo_id: str
    revision: str = "main"
    filename: str = HUB_FILENAME
    sha256: str | None = None
    published: bool = False
    architecture: str | None = None  # the create_model() name the weights build; None for a user's own model
    license: str = "apache-2.0"
    training_data: str = ""
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    description: str = ""

    @property
    def bundled_filename(self) -> str:
        """File name in the package's ``weights/`` folder."""
        return f"{self.name}.safetensors"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _description(name: str) -> str:
    size = name.split("-")[1].upper()
    if model_info(name).degradation == "blind":
        return f"Serpent {size} for real photos: trained on the blind degradation family (blur kinds, noise, JPEG)."
    return f"Serpent {size} deblurring network, trained on the paper's benchmark degradation (DESIGN.md section 2)."


def _builtin_entries() -> dict[str, RegistryEntry]:
    return {
        info.name: RegistryEntry(
            name=info.name,
            repo_id=f"{HUB_ORG}/{info.name}",
            revision="main",  # replace with the commit hash of the upload when publishing
            filename=HUB_FILENAME,
            sha256=info.weights_sha256,
            published=False,
            architecture=info.name,
            training_data=TRAINING_DATA,
            metrics=METRICS.get(info.name, {}),
            description=_description(info.name),
        )
        for info in shipped_models()
    }


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "repo_id": (str,),
    "revision": (str,),
    "filename": (str,),
    "sha256": (str, type(None)),
    "published": (bool,),
    "architecture": (str, type(None)),
    "license": (str,),
    "training_data": (str,),
    "metrics": (dict,),
    "description": (str,),
}


def _apply_override(source: str, name: str, base: RegistryEntry | None, data: object) -> RegistryEntry:
    """Validate one override from the user's JSON and merge it onto the built-in entry (if any)."""
    if not isinstance(data, dict):
        raise UsageError(f"{source}: entry {name!r} must be a JSON object")
    unknown = set(data) - set(_FIELD_TYPES)
    if unknown:
        raise UsageError(
            f"{source}: entry {name!r} has unknown field(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(_FIELD_TYPES)}"
        )
    for key, value in data.items():
        if not isinstance(value, _FIELD_TYPES[key]):
            raise UsageError(f"{source}: entry {name!r}: field {key!r} has the wrong type ({type(value).__name__})")
    if isinstance(data.get("sha256"), str):
        data = {**data, "sha256": data["sha256"].lower()}
        if not _SHA256_RE.match(data["sha256"]):
            raise UsageError(f"{source}: entry {name!r}: sha256 must be 64 hex digits")
    if base is None:
        if "repo_id" not in data:
            raise UsageError(f"{source}: new entry {name!r} needs at least a repo_id")
        # a repo the user adds is one they can reach, so it counts as published unless they say otherwise
        return RegistryEntry(name=name, **{"published": True, **data})
    return dataclasses.replace(base, **data)


def load_registry() -> dict[str, RegistryEntry]:
    """Built-in entries, with the ``SERPENT_REGISTRY`` JSON file (if set) merged on top."""
    entries = _builtin_entries()
    source = os.environ.get(REGISTRY_ENV)
    if not source:
        return entries
    data = read_json_file(source, f"{REGISTRY_ENV}={source}", f"{REGISTRY_ENV}={source}: file not found")
    if not isinstance(data, dict):
        raise UsageError(f"{REGISTRY_ENV}={source}: must hold a JSON object mapping names to entries")
    for name, override in data.items():
        entries[name] = _apply_override(source, name, entries.get(name), override)
    return entries


def get_entry(name: str) -> RegistryEntry:
    """The registry entry for ``name``, or a clear error listing the known names."""
    entries = load_registry()
    if name not in entries:
        raise UsageError(f"unknown model {name!r}; registered models: {', '.join(sorted(entries))}")
    return entries[name]


def pin_lines(weights_dir: Path) -> list[str]:
    """The sha256 pin lines (``"name": "hex",``) of the shipped models' files present in ``weights_dir``."""
    lines = []
    for name in (info.name for info in shipped_models()):
        path = weights_dir / f"{name}.safetensors"
        if path.is_file():
            lines.append(f'    "{name}": "{sha256_file(path)}",')
    return lines


def main(argv: list[str] | None = None) -> int:
    """Print the sha256 pin lines for the bundled weights (paste them into the model registry's entries)."""
    args = sys.argv[1:] if argv is None else argv
    weights_dir = Path(args[0]) if args else bundled_weights_dir()
    lines = pin_lines(weights_dir)
    if not lines:
        print(f"no serpent-b/-l/-h .safetensors files in {weights_dir}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
