"""`serpent export WEIGHTS -o DIR`: a Hub-ready folder (model.safetensors, config.json, README.md model card)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from serpent_cli.cli.common import info
from serpent_cli.hub.export import export_folder, load_metrics_file


def export_command(
    weights: Annotated[Path, typer.Argument(help="A serpent weights file (.safetensors).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write the Hub repo files into.")],
    name: Annotated[str | None, typer.Option(help="Model name in the card (default: the variant's).")] = None,
    repo_id: Annotated[str | None, typer.Option(help="Hub repo the folder is meant for (used in the card).")] = None,
    license: Annotated[str, typer.Option(help="License identifier for the card's front matter.")] = "apache-2.0",
    metrics: Annotated[
        Path | None, typer.Option(help="JSON file {dataset: {metric: value}} for the card's metrics.")
    ] = None,
    training_data: Annotated[
        str | None, typer.Option(help="What the weights were trained on (default: from the file or the registry).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing files in the folder.")] = False,
) -> None:
    """Write a Hub-ready folder for WEIGHTS, to upload as a model repo.

    The folder holds model.safetensors (copied byte for byte), config.json and a README.md model card
    (license, library_name, pipeline_tag image-to-image, tags, eval metrics).
    """
    loaded = load_metrics_file(metrics) if metrics is not None else None
    result = export_folder(
        weights,
        output,
        name=name,
        repo_id=repo_id,
        license=license,
        metrics=loaded,
        training_data=training_data,
        overwrite=overwrite,
    )
    for path in result.files:
        typer.echo(str(path))
    target = repo_id or "OWNER/REPO"
    info(f"exported {result.name} (sha256 {result.sha256}) to {result.out_dir}")
    info(
        f"to publish: 'hf upload {target} {result.out_dir}', then set the registry entry's revision to the "
        f"upload's commit, sha256 to {result.sha256[:16]}..., and published to true"
    )
