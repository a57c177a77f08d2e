"""`serpent models`: the registered models, what each is for, and where its weights are (bundled, cached, ...)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from serpent_cli.cli.common import info, out_console, print_table
from serpent_cli.hub.client import model_status

TABLE_WIDTH = 130  # what the table needs without squeezing a column; narrower terminals get blocks
_STATUS_STYLE = {"bundled": "green", "cached": "green", "remote": "cyan", "unavailable": "yellow"}


def models_command(
    json_out: Annotated[bool, typer.Option("--json", help="One JSON document on stdout (for scripts).")] = False,
) -> None:
    """List the registered models: what each is for, which one deblur uses by default, and where the weights are.

    For each: what it was trained to undo, its evaluation, Hub repo and pinned revision, sha256, and whether
    the weights are bundled in weights/, in the Hub cache, only remote, or not available yet.
    """
    rows = model_status()
    if json_out:
        typer.echo(json.dumps({"models": rows}, indent=2))
        return
    if out_console.is_terminal and out_console.width < TABLE_WIDTH:
        _print_blocks(rows)
    else:
        print_table(_table(rows))
    if not any(row["published"] for row in rows):
        info(
            "No weights are published on the Hub yet: trained weights ship in weights/ (bundled); "
            "'serpent export WEIGHTS -o DIR' makes the folder to upload."
        )


def _table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="Registered models")
    # Names, repo ids and hashes never wrap (a repo id cut in two cannot be copied); the revision
    # goes on its own line, and the free-text column wraps between words.
    table.add_column("name", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("for / eval", overflow="fold")
    table.add_column("hub repo @ revision", no_wrap=True)
    table.add_column("sha256 pin", no_wrap=True)
    for row in rows:
        table.add_row(
            row["name"] + ("\n(default)" if row["default"] else ""),
            _status(row),
            "\n".join(filter(None, (row["trained_for"], _metrics_cell(row["metrics"])))),
            f"{row['repo_id']}\n@ {row['revision'][:12]}" + ("" if row["published"] else "\n(not published)"),
            _pin(row),
        )
    return table


def _print_blocks(rows: list[dict[str, Any]]) -> None:
    """One block per model, for terminals too narrow for the table's five columns (nothing cut mid-word)."""
    for row in rows:
        block = Text()
        block.append(row["name"], style="bold")
        block.append(" (default)" if row["default"] else "")
        block.append("  ").append_text(_status(row))
        hub = f"{row['repo_id']} @ {row['revision'][:12]}" + ("" if row["published"] else " (not published)")
        fields = [("for", row["trained_for"]), ("eval", _metrics_cell(row["metrics"]).replace("\n", "\n" + " " * 10)),
                  ("hub", hub), ("sha256", _pin(row))]
        for label, value in fields:
            if value:
                block.append(f"\n  {label:<8}{value}")
        out_console.print(block)


def _status(row: dict[str, Any]) -> Text:
    status = row["status"] + (" (sha256 MISMATCH)" if row["pin_ok"] is False else "")
    return Text(status, style=_STATUS_STYLE.get(row["status"], "white"))


def _pin(row: dict[str, Any]) -> str:
    return (row["sha256"][:12] + "...") if row["sha256"] else "not pinned"


def _metrics_cell(metrics: dict[str, dict[str, float]]) -> str:
    """A digest of a model's eval metrics for the table, one line per degradation (all of them are in --json).

    Dataset keys are plain set names under the benchmark degradation, ``DEGRADATION/SET`` under another one.
    """
    groups: dict[str, dict[str, float]] = {}
    for dataset, values in metrics.items():
        if "psnr" in values:
            degradation, _, name = dataset.rpartition("/")
            groups.setdefault(degradation, {})[name] = values["psnr"]
    if not groups:
        return "-"
    if len(groups) > 1 and "" in groups:
        groups["benchmark"] = groups.pop("")
    return "\n".join(_psnr_digest(psnr, degradation) for degradation, psnr in sorted(groups.items())) + " (--json: all)"


def _psnr_digest(psnr: dict[str, float], degradation: str) -> str:
    under = f" ({degradation})" if degradation else ""
    if len(psnr) == 1:
        dataset, value = next(iter(psnr.items()))
        return f"{dataset}{under}: PSNR {value:.2f} dB"
    return f"PSNR {min(psnr.values()):.2f}-{max(psnr.values()):.2f} dB on {len(psnr)} sets{under}"
