"""The README's commands are what CI runs: its install command, then the main job and the test command."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _first_block(readme: str, heading: str) -> list[str]:
    """The lines of the first bash block under a ``## heading``."""
    section = readme.split(f"## {heading}\n", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, heading
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_ci_runs_exactly_the_readme_commands() -> None:
    readme = (REPO / "README.md").read_text()
    install, main_job = _first_block(readme, "Quick start")
    (test,) = _first_block(readme, "Test")
    assert "[dev" in install and "bench" in install  # tests and bench peers work after this one command
    assert test == "python -m pytest -q"
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    steps = [line for line in ci if line in (install, "ruff check .", main_job, test)]
    assert steps == [install, "ruff check .", main_job, test]


def test_quick_start_output_is_git_ignored() -> None:
    readme = (REPO / "README.md").read_text()
    _, main_job = _first_block(readme, "Quick start")
    target = main_job.split(" -o ", 1)[1].split()[0]
    folder = target.split("/")[0]
    assert "/" in target and f"/{folder}/" in (REPO / ".gitignore").read_text().splitlines()
