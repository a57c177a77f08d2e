"""Batches of images: which inputs, which output names, and running them so one bad file stops nothing.

Decisions (DESIGN.md section 5 is the contract; these fill in where it is silent):

- Inputs are files, folders, globs (expanded here too, for shells that do not) or ``-`` (stdin).
  A folder gives its image files (by extension); ``--recursive`` descends and the output tree
  mirrors the input tree.  Hidden files and folders (``.DS_Store``, ``.git``) are ignored; other
  non-image files in a folder are skipped with one warning line each and do not fail the run.
  A named file is always attempted, so a non-image named explicitly fails clearly.
- A missing path, a glob that matches nothing, an empty folder: one error line each, the rest of
  the batch still runs, and the exit code is 1.
- ``-o`` is a file when there is one input and it has an image extension, ``-`` for stdout, else a
  folder.  Names come from a template, ``{stem}{suffix}{ext}`` by default, with ``{model}`` also
  available; the suffix defaults to ``_deblurred`` (``_degraded``) beside the input and to nothing
  inside an ``-o`` folder.  Two inputs that would write the same output: the second fails.
- An existing output is never replaced without ``--overwrite``; ``--skip-existing`` skips it
  (status ``skipped``, not a failure).
"""

from __future__ import annotations

import glob
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serpent_cli.errors import EXIT_OK, EXIT_SOME_FAILED, SerpentError, UsageError
from serpent_cli.io.formats import IMAGE_EXTENSIONS, walk_folder

if TYPE_CHECKING:
    from rich.console import Console

    from serpent_cli.io.imageio import Picture

STDIO = "-"
_GLOB_CHARS = set("*?[")


@dataclass
class Job:
    """One input and where its result goes; ``error`` set when it failed before any work."""

    index: int
    source: str  # a path, or "-" for stdin
    key: str  # relative path used for output naming and per-file seeds
    output: str | None = None  # a path, or "-" for stdout
    error: str | None = None
    from_folder: bool = False  # found by listing a folder (not named on the command line)


@dataclass
class Result:
    """One line of ``--json``: what happened to one input."""

    path: str
    output: str | None
    size: list[int] | None = None
    seconds: float = 0.0
    status: str = "ok"  # ok | skipped | failed
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    index: int = -1  # position among the inputs (orders results gathered from several ranks)

    def to_json(self, fields: Sequence[str] = ()) -> str:
        """One JSON line; every key of ``fields`` is present (null when this result has no value for
        it), so lines of ok, skipped and failed inputs all have the same keys."""
        data = asdict(self)
        data.pop("index")
        extra = data.pop("extra")
        data.update({key: None for key in fields})
        data.update(extra)
        return json.dumps(data)


@dataclass
class Naming:
    """How output names are made: ``-o`` target, template and suffix."""

    output: str | None = None
    template: str = "{stem}{suffix}{ext}"
    suffix: str | None = None  # None: default_suffix beside the input, "" inside an -o folder
    default_suffix: str = "_deblurred"
    fields: dict[str, str] = field(default_factory=dict)


def _is_glob(text: str) -> bool:
    return any(ch in _GLOB_CHARS for ch in text)


def expand_inputs(
    inputs: Sequence[str], recursive: bool, warn: Callable[[str], None], *, exclude: str | None = None
) -> list[Job]:
    """Turn command-line inputs into jobs (without outputs yet), keeping the given order.

    Files found in folders under ``exclude`` (the ``-o`` folder) are left out, so writing the
    outputs inside an input folder does not feed them back in on the next run.
    """
    jobs: list[Job] = []
    skip_under = Path(exclude).resolve() if exclude not in (None, STDIO) else None

    def add(source: str, key: str, error: str | None = None, from_folder: bool = False) -> None:
        if from_folder and skip_under is not None and Path(source).resolve().is_relative_to(skip_under):
            return
        jobs.append(Job(index=len(jobs), source=source, key=key, error=error, from_folder=from_folder))

    for text in inputs:
        if text == STDIO:
            add(STDIO, "stdin")
            continue
        path = Path(text).expanduser()
        if path.is_dir():
            _add_folder(path, recursive, add, warn)
        elif path.exists():
            add(str(path), path.name)
        elif _is_glob(text):
            matches = sorted(glob.glob(str(path), recursive=True))
            if not matches:
                add(text, Path(text).name, f"{text}: no files match this pattern")
            for match in matches:
                m = Path(match)
                if m.is_dir():
                    _add_folder(m, recursive, add, warn)
                elif m.suffix.lower() in IMAGE_EXTENSIONS:
                    add(str(m), m.name)
                else:
                    warn(f"skipping {m}: not an image file (extension {m.suffix or 'none'})")
        else:
            add(text, path.name, f"{text}: no such file or folder")
    return jobs


def _add_folder(folder: Path, recursive: bool, add: Callable[..., None], warn: Callable[[str], None]) -> None:
    found = 0
    for p, is_image in walk_folder(folder, recursive):
        if not is_image:
            warn(f"skipping {p}: not an image file (extension {p.suffix or 'none'})")
            continue
        add(str(p), p.relative_to(folder).as_posix(), from_folder=True)
        found += 1
    if not found:
        where = "or its subfolders " if recursive else ""
        hint = "" if recursive else " (use --recursive for subfolders)"
        add(str(folder), folder.name, f"{folder}: no images in this folder {where}{hint}".replace("  ", " ").strip())


def drop_earlier_outputs(jobs: list[Job], naming: Naming) -> list[Job]:
    """Without ``-o``, files found in folders whose names already end with the suffix are earlier
    outputs (``photo_deblurred.png``): leave them out instead of restoring them again."""
    if naming.output is not None:
        return jobs
    suffix = naming.suffix if naming.suffix is not None else naming.default_suffix
    if not suffix:
        return jobs
    kept = [j for j in jobs if not (j.from_folder and Path(j.key).stem.endswith(suffix))]
    for index, job in enumerate(kept):
        job.index = index
    return kept


def assign_outputs(jobs: list[Job], naming: Naming) -> None:
    """Fill in each job's output path (or an error), per the module's naming rules."""
    out = naming.output
    runnable = [j for j in jobs if j.error is None]
    if out == STDIO:
        if len(jobs) != 1:
            raise UsageError("-o - (stdout) takes exactly one input")
        for j in runnable:
            j.output = STDIO
        return
    single_file = out is not None and Path(out).suffix.lower() in IMAGE_EXTENSIONS and not Path(out).is_dir()
    if single_file:
        if len(jobs) != 1:
            raise UsageError(f"-o {out} names one file but there are {len(jobs)} inputs; give a folder instead")
        for j in runnable:
            j.output = out
        return
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise UsageError(f"-o {out} exists and is not a folder; give a folder, or an image file name for one input")
    seen: dict[str, str] = {}
    for j in runnable:
        if j.source == STDIO:
            if out is None:
                j.output = STDIO
                continue
            rel = Path("stdin.png")
        else:
            rel = Path(j.key)
        suffix = naming.suffix if naming.suffix is not None else ("" if out else naming.default_suffix)
        ext = rel.suffix if rel.suffix.lower() in IMAGE_EXTENSIONS else ".png"
        try:
            name = naming.template.format(stem=rel.stem, ext=ext, suffix=suffix, **naming.fields)
        except (KeyError, IndexError, ValueError) as exc:
            raise UsageError(
                f"bad --name template {naming.template!r} ({exc}); fields: {{stem}} {{ext}} {{suffix}} "
                + " ".join(f"{{{k}}}" for k in naming.fields)
            ) from None
        if Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
            name += ext
        base = Path(out) / rel.parent if out is not None else Path(j.source).parent
        target = str(base / name)
        key = str(Path(target).resolve())
        if key in seen:
            j.error = (
                f"{j.source}: its output {target} is also the output of {seen[key]}; use --name to tell them apart"
            )
            continue
        seen[key] = j.source
        j.output = target


def check_existing(output: str, *, overwrite: bool, skip_existing: bool) -> str | None:
    """'skip' or None (go ahead); raises when an existing output may not be replaced."""
    if output == STDIO or not Path(output).exists():
        return None
    if Path(output).is_dir():
        raise SerpentError(f"output {output} is a folder")
    if skip_existing:
        return "skip"
    if not overwrite:
        raise SerpentError(_exists_message(output))
    return None


def _exists_message(output: str) -> str:
    return f"output {output} exists; pass --overwrite to replace it or --skip-existing to keep it"


@dataclass(frozen=True)
class OutputPolicy:
    """How outputs are written: replace or keep existing ones, and the JPEG quality."""

    overwrite: bool = False
    skip_existing: bool = False
    quality: int = 95


def check_batch_options(inputs: Sequence[str], output: str | None, policy: OutputPolicy, *, json_out: bool) -> None:
    """The option combinations every image command refuses, as one usage error each."""
    if not 1 <= policy.quality <= 100:
        raise UsageError(f"--quality {policy.quality}: use 1-100")
    if policy.skip_existing and policy.overwrite:
        raise UsageError("--skip-existing and --overwrite exclude each other; pick one")
    if json_out and output == STDIO:
        raise UsageError("--json and -o - both want stdout; write the image to a file")
    if list(inputs).count(STDIO) > 1:
        raise UsageError("- (stdin) can be given once")
    if (output == STDIO or (output is None and STDIO in inputs)) and sys.stdout.isatty():
        # As gzip does: image bytes on a terminal are garbage and can upset it.
        raise UsageError("image data not written to a terminal; redirect stdout (> out.png) or pass -o FILE")


Transform = Callable[["Picture"], tuple["Picture", dict[str, Any]]]


def process_image(job: Job, transform: Transform, policy: OutputPolicy, warn: Callable[[str], None]) -> Result:
    """Read one input (a file or stdin), transform it, write the output atomically (or to stdout).

    ``transform`` returns the new picture and extra fields for the job's result.  Existing outputs are
    skipped or refused per ``policy`` before anything is read.
    """
    from serpent_cli.io.imageio import EXTENSION_BY_FORMAT, OutputExistsError, format_for, read_picture, write_picture

    assert job.output is not None
    if check_existing(job.output, overwrite=policy.overwrite, skip_existing=policy.skip_existing) == "skip":
        return Result(path=job.source, output=job.output, status="skipped")
    if job.source == STDIO:
        pic = read_picture(sys.stdin.buffer.read(), name="<stdin>")
    else:
        pic = read_picture(job.source, name=job.source)
    out, extra = transform(pic)
    if job.output == STDIO:
        fmt = pic.format if pic.format in EXTENSION_BY_FORMAT else "PNG"
        notes = write_picture(out, sys.stdout.buffer, fmt=fmt, jpeg_quality=policy.quality)
    else:
        format_for(job.output)
        try:  # published only if the name is still free: a concurrent run may have written it meanwhile
            notes = write_picture(out, Path(job.output), jpeg_quality=policy.quality, overwrite=policy.overwrite)
        except OutputExistsError:
            if policy.skip_existing:
                return Result(path=job.source, output=job.output, status="skipped")
            raise SerpentError(_exists_message(job.output)) from None
    for note in notes:
        warn(f"{job.output}: {note}")
    return Result(path=job.source, output=job.output, size=[pic.width, pic.height], status="ok", extra=extra)


Work = Callable[[Job], Result]


def run_jobs(
    jobs: list[Job],
    work: Work,
    *,
    on_result: Callable[[Result], None],
    progress: Console | None,
    label: str = "images",
) -> list[Result]:
    """Run ``work`` on each job; a failing job becomes a failed result and the batch goes on.

    ``progress`` is the console to draw a progress bar on (the CLI's stderr console), or None for none:
    the caller decides where output goes, so this library module never imports the CLI.
    """
    results: list[Result] = []

    def one(job: Job) -> Result:
        start = time.perf_counter()
        if job.error is not None:
            res = Result(path=job.source, output=job.output, status="failed", error=job.error)
        else:
            try:
                res = work(job)
            except SerpentError as exc:
                res = Result(path=job.source, output=job.output, status="failed", error=str(exc))
            except (OSError, ValueError, RuntimeError, MemoryError) as exc:  # unexpected, but never a traceback
                first = str(exc).splitlines()[0] if str(exc) else ""
                res = Result(path=job.source, output=job.output, status="failed",
                             error=f"{job.source}: {type(exc).__name__}: {first}")
        res.seconds = round(time.perf_counter() - start, 4)
        res.index = job.index
        return res

    if progress and jobs:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[last]}"),
            console=progress,
            transient=False,
        ) as bar:
            task = bar.add_task(label, total=len(jobs), last="")
            for job in jobs:
                bar.update(task, last=Path(job.source).name)
                res = one(job)
                results.append(res)
                on_result(res)
                bar.update(task, advance=1, last=f"{Path(job.source).name} {res.seconds:.1f}s {res.status}")
    else:
        for job in jobs:
            res = one(job)
            results.append(res)
            on_result(res)
    return results


def exit_code(results: Sequence[Result]) -> int:
    """0 when nothing failed, else 1 (DESIGN.md section 5)."""
    return EXIT_SOME_FAILED if any(r.status == "failed" for r in results) else EXIT_OK


def summary(results: Sequence[Result], verb: str) -> str:
    """One closing line: counts and total time."""
    ok = sum(r.status == "ok" for r in results)
    skipped = sum(r.status == "skipped" for r in results)
    failed = sum(r.status == "failed" for r in results)
    total = sum(r.seconds for r in results)
    parts = [f"{verb} {ok} image{'s' if ok != 1 else ''}"]
    if skipped:
        parts.append(f"{skipped} skipped (output exists)")
    if failed:
        parts.append(f"{failed} failed")
    return ", ".join(parts) + f" in {total:.1f} s"


def print_json(result: Result, fields: Sequence[str] = ()) -> None:
    """One JSON object per input on stdout (flushed, so scripts can stream); see :meth:`Result.to_json`."""
    sys.stdout.write(result.to_json(fields) + "\n")
    sys.stdout.flush()
