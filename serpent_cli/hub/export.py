"""Turn a weights file into a Hub-ready folder: ``model.safetensors``, ``config.json`` and a ``README.md`` model card.

The weights are copied byte for byte (so the sha256 a registry pins is the one of the file users will
download), after a full load has shown they are a valid Serpent network. The model card carries the YAML
front matter the Hub reads (license, library_name, pipeline_tag ``image-to-image``, tags, and the eval
metrics as a ``model-index``) and a human-readable metrics table.

Metrics come, in this order of preference, from an explicit mapping (``--metrics FILE``), the weights'
own ``metrics`` metadata, or the registry entry of the same name; the mapping is
``{dataset: {metric: value}}`` (e.g. ``{"faces-test-256": {"psnr": 28.4, "ssim": 0.81}}``).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serpent_cli import __version__
from serpent_cli.atomic import write_atomic, write_json_atomic
from serpent_cli.errors import SerpentError, UsageError, WeightsError
from serpent_cli.hub.local import read_json_file, sha256_file
from serpent_cli.hub.registry import HUB_FILENAME, load_registry

LIBRARY_NAME = "serpent-cli"
TAGS = ["image-restoration", "deblurring", "denoising", "state-space-model", "mamba", "serpent", "safetensors"]
METRIC_NAMES = {"psnr": "PSNR (dB)", "ssim": "SSIM", "lpips": "LPIPS"}

Metrics = dict[str, dict[str, float]]


@dataclass(frozen=True)
class ExportResult:
    """What ``export`` wrote."""

    out_dir: Path
    files: list[Path]
    sha256: str
    name: str


def parse_metrics(data: Any, source: str) -> Metrics:
    """Validate a ``{dataset: {metric: number}}`` mapping; anything else is a clear error."""
    if not isinstance(data, dict):
        raise UsageError(f"{source}: metrics must be a JSON object {{dataset: {{metric: value}}}}")
    out: Metrics = {}
    for dataset, values in data.items():
        if not isinstance(values, dict):
            raise UsageError(f"{source}: metrics for {dataset!r} must be an object {{metric: value}}")
        row = {}
        for metric, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UsageError(f"{source}: metric {dataset}/{metric} must be a finite number, got {value!r}")
            row[str(metric)] = float(value)
        out[str(dataset)] = row
    return out


def load_metrics_file(path: Path) -> Metrics:
    """Read a metrics JSON file (``--metrics``)."""
    data = read_json_file(path, str(path), f"metrics file not found: {path}")
    return parse_metrics(data, str(path))


def _yaml_str(value: str) -> str:
    """A YAML scalar that is always read back as this string (JSON strings are valid YAML)."""
    return json.dumps(value)


def model_card(
    *,
    name: str,
    config: dict[str, Any],
    sha256: str,
    license: str,
    metrics: Metrics,
    training_data: str,
    repo_id: str | None,
) -> str:
    """The README.md of the Hub repo: YAML front matter + description, usage and metrics table."""
    lines = ["---", f"license: {license}", f"library_name: {LIBRARY_NAME}", "pipeline_tag: image-to-image", "tags:"]
    lines += [f"- {tag}" for tag in TAGS]
    if metrics:
        lines += ["model-index:", f"- name: {_yaml_str(name)}", "  results:"]
        for dataset, values in metrics.items():
            lines += [
                "  - task:",
                "      type: image-to-image",
                "      name: Image deblurring",
                "    dataset:",
                f"      name: {_yaml_str(dataset)}",
                f"      type: {_yaml_str(dataset)}",
                "    metrics:",
            ]
            for metric, value in values.items():
                lines += [
                    f"    - type: {_yaml_str(metric)}",
                    f"      value: {value:.4f}",
                    f"      name: {_yaml_str(METRIC_NAMES.get(metric.lower(), metric))}",
                ]
    lines += ["---", "", f"# {name}", ""]
    lines += [
        f"Serpent image-deblurring network ({name}, patch size {config.get('patch_size')}, "
        f"embedding {config.get('embed_dim')}): a U-shaped stack of selective state-space (Mamba-style) blocks "
        "that scan the image in four directions, so every output pixel sees the whole image at a cost linear "
        "in the pixel count.",
        "",
        f"- Weights: `{HUB_FILENAME}` (safetensors, the variant config in the header metadata; never pickle)",
        f"- sha256: `{sha256}`",
        f"- Exported with serpent-cli {__version__}",
    ]
    if training_data:
        lines.append(f"- Training data: {training_data}")
    repo = repo_id or "OWNER/REPO"
    lines += [
        "",
        "## Usage",
        "",
        "```bash",
        "pip install serpent-cli",
        f"serpent download --repo-id {repo}   # prints the cached file's path",
        f'serpent deblur blurred.png -o restored.png --weights "$(serpent download --repo-id {repo})"',
        "```",
        "",
        "## Evaluation",
        "",
    ]
    if metrics:
        columns = sorted({m for values in metrics.values() for m in values})
        lines.append("| dataset | " + " | ".join(METRIC_NAMES.get(c.lower(), c) for c in columns) + " |")
        lines.append("|---|" + "---|" * len(columns))
        for dataset, values in metrics.items():
            cells = [f"{values[c]:.4f}" if c in values else "" for c in columns]
            lines.append(f"| {dataset} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Benchmark degradation: Gaussian blur 61x61, sigma 3.0, plus Gaussian noise sigma 0.05, seeded per image "
            "(`serpent eval`).",
        ]
        if any(dataset.startswith("blind/") for dataset in metrics):
            lines.append("Sets named blind/SET: the blind family instead (Gaussian, motion or defocus blur of random "
                         "strength or none, noise, JPEG; `serpent eval --degradation blind`), seeded per image.")
    else:
        lines.append(
            "No evaluation metrics were recorded for these weights (run `serpent eval` and export with "
            "`--metrics FILE`)."
        )
    return "\n".join(lines) + "\n"


def export_folder(
    weights: Path,
    out_dir: Path,
    *,
    name: str | None = None,
    repo_id: str | None = None,
    license: str = "apache-2.0",
    metrics: Metrics | None = None,
    training_data: str | None = None,
    overwrite: bool = False,
) -> ExportResult:
    """Validate ``weights`` (full load) and write the Hub folder into ``out_dir``."""
    weights = Path(weights)
    if not weights.exists():  # before torch and safetensors load: a typo answers at once
        raise WeightsError(f"weights file not found: {weights}")
    from serpent_cli.hub.weights import FORMAT_NAME, FORMAT_VERSION, load_model, read_metadata

    model = load_model(weights)  # raises one clear WeightsError for anything that is not a valid Serpent file
    config = model.config.to_dict()  # type: ignore[union-attr, operator]
    del model
    meta = read_metadata(weights)
    name = name or str(config.get("name") or weights.stem)
    digest = sha256_file(weights)
    # The registry's metrics and training data describe the registered file only, never a lookalike.
    entry = next((e for e in load_registry().values() if e.sha256 == digest), None)
    if metrics is None and "metrics" in meta:
        try:
            metrics = parse_metrics(json.loads(meta["metrics"]), f"{weights} (metrics metadata)")
        except (json.JSONDecodeError, UsageError):
            metrics = None
    if metrics is None:
        metrics = dict(entry.metrics) if entry is not None else {}
    if training_data is None:
        training_data = meta.get("training_data") or (entry.training_data if entry is not None else "")

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir} exists and is not a folder; pick another -o")
    targets = [out_dir / HUB_FILENAME, out_dir / "config.json", out_dir / "README.md"]
    existing = [p.name for p in targets if p.exists()]
    if existing and not overwrite:
        raise SerpentError(f"{out_dir} already holds {', '.join(existing)}; pass --overwrite to replace them")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SerpentError(f"cannot create {out_dir}: {exc}") from None

    hub_config = {
        "architecture": "Serpent",
        "model_type": "serpent",
        "library_name": LIBRARY_NAME,
        "name": name,
        "weights": HUB_FILENAME,
        "sha256": digest,
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": config,
        "serpent_version": __version__,
    }
    card = model_card(
        name=name,
        config=config,
        sha256=digest,
        license=license,
        metrics=metrics,
        training_data=training_data,
        repo_id=repo_id,
    )
    try:
        write_atomic(targets[0], lambda tmp: shutil.copyfile(weights, tmp))
        write_json_atomic(targets[1], hub_config)
        write_atomic(targets[2], lambda tmp: tmp.write_text(card, encoding="utf-8"))
    except OSError as exc:
        raise SerpentError(f"cannot write into {out_dir}: {exc}") from None
    if sha256_file(targets[0]) != digest:
        raise SerpentError(f"{targets[0]}: copy does not match the source (disk problem?)")
    return ExportResult(out_dir=out_dir, files=targets, sha256=digest, name=name)
