"""`serpent models`: the registered weights and where each one is (bundled, cached, remote, unavailable)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from serpent_cli.cli.common import info, print_table
from serpent_cli.hub.client import model_status

_STATUS_STYLE = {"bundled": "green", "cached": "green", "remote": "cyan", "unavailable": "yellow"}


def models_command(
    json_out: Annotated[bool, typer.Option("--json", help="One JSON document on stdout (for scripts).")] = False,
) -> None:
    """List the registered models and where their weights are.

    For each: Hub repo and pinned revision, sha256, and whether the weights are bundled in weights/,
    in the Hub cache, only remote, or not available yet.
    """
    rows = model_status()
    if json_out:
        typer.echo(json.dumps({"models": rows}, indent=2))
        return
    table = Table(title="Registered models")
    # Names, repo ids and hashes never wrap (a repo id cut in two cannot be copied); the revision
    # goes on its own line, and the free-text columns wrap between words on narrow terminals.
    table.add_column("name", no_wrap=True)
    table.add_column("status", overflow="fold")
    table.add_column("hub repo @ revision", no_wrap=True)
    table.add_column("sha256 pin", no_wrap=True)
    table.add_column("eval", overflow="fold")
    for row in rows:
        status = row["status"] + (" (sha256 MISMATCH)" if row["pin_ok"] is False else "")
        where = f"{row['repo_id']}\n@ {row['revision'][:12]}" + ("" if row["published"] else "\n(not published)")
        table.add_row(
            row["name"],
            Text(status, style=_STATUS_STYLE.get(row["status"], "white")),
            where,
            (row["sha256"][:12] + "...") if row["sha256"] else "not pinned",
            _metrics_cell(row["metrics"]),
        )
    print_table(table)
    if not any(row["published"] for row in rows):
        info(
            "No weights are published on the Hub yet: trained weights ship in weights/ (bundled); "
            "'serpent export WEIGHTS -o DIR' makes the folder to upload."
        )


def _metrics_cell(metrics: dict[str, dict[str, float]]) -> str:
    """A one-line digest of a model's eval metrics for the table (all of them are in --json)."""
    psnr = {dataset: values["psnr"] for dataset, values in metrics.items() if "psnr" in values}
    if not psnr:
        return "-"
    if len(psnr) == 1:
        dataset, value = next(iter(psnr.items()))
        return f"{dataset}: PSNR {value:.2f} dB"
    return f"PSNR {min(psnr.values()):.2f}-{max(psnr.values()):.2f} dB on {len(psnr)} sets (--json: all)"
