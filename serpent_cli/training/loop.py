"""Training loop for `serpent train` (DESIGN.md section 5).

One function, :func:`train`, runs the same way alone, under ``torchrun`` (DistributedDataParallel,
gloo on CPU / nccl on CUDA), and after ``--resume``.  Decisions where the paper and issue are silent:

* Optimiser: Adam with torch defaults (betas 0.9 / 0.999, no weight decay); defaults follow the paper:
  batch 1, 60 epochs, lr 5e-4 for crops up to 256 px, else 1e-3.  The learning rate warms up
  linearly (``--warmup``, default 2% of the steps) then follows a cosine down to 1% of its peak
  (``--lr-schedule cosine``, the default; ``constant`` keeps it flat after the warm-up): a short CPU
  budget gains most from a high rate early and a small one at the end.  Gradients are clipped to
  a global norm of ``--clip-grad`` (1.0; 0 disables) so one odd crop cannot throw a run off.
* Augmentation: the 8 symmetries of the square (flips and 90-degree rotations).
* ``--init NAME|FILE`` starts from existing weights (a registered model or a weights file of the
  same architecture): fine-tuning on one's own photos, or continuing a shipped model.
* Loss: L1 between the restoration and the clean crop (``--loss mse`` available).
* EMA of the weights with warm-up, decay_t = min(decay, (1 + t) / (10 + t)); the EMA weights are what
  ``model.safetensors`` and the checkpoint safetensors hold (``--ema 0`` saves the raw weights).
* A step is one optimiser update on ``batch_size`` crops per process; an epoch is one pass over the
  images by all processes together.  Samples are a pure function of (seed, global sample index),
  see :mod:`serpent_cli.training.data`, so a resumed run sees the same data an uninterrupted run would.
* Run folder: ``run.json`` (options), ``log.csv``, ``checkpoints/step-N.safetensors`` (EMA weights)
  + ``checkpoints/state-N.pt`` (raw weights, EMA, optimiser, step, RNG; loaded with
  ``weights_only=True``), ``model.safetensors`` (latest EMA) and ``best.safetensors`` (best
  validation PSNR).  Every file is written to a temporary name, fsynced, then renamed, so a kill
  at any moment leaves each file either old or new, never half-written.  The last ``keep`` pairs
  are kept.  ``--resume`` loads the newest state that reads back cleanly.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import re
import signal
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from serpent_cli import distributed as dist_util
from serpent_cli.atomic import write_atomic, write_json_atomic
from serpent_cli.degradation.benchmark import RegionDegradation
from serpent_cli.degradation.family import degradation_by_name
from serpent_cli.device import resolve_device, resolve_precision
from serpent_cli.errors import ReportedByAnotherRank, SerpentError, UsageError, first_line
from serpent_cli.evaluation.evaluate import BASELINE_NAME, EvalImage, evaluate, load_eval_set, model_restorer
from serpent_cli.evaluation.metrics import psnr
from serpent_cli.factory import create_model
from serpent_cli.hub.weights import save_model
from serpent_cli.io.folders import ImageFolderScan, scan_image_folder, scan_image_folders
from serpent_cli.models.registry import list_models, model_info, trainable_models
from serpent_cli.training.data import RandomCropDataset, SampleRange

STATE_FORMAT = "serpent-train-state"
STATE_VERSION = 1
SCHEDULES = ("cosine", "constant")
MIN_LR_RATIO = 0.01  # the cosine ends at this fraction of the peak learning rate
LOG_FIELDS = ("step", "epoch", "loss", "train_psnr", "lr", "grad_norm", "it_s", "val_psnr", "val_ssim",
              "val_psnr_degraded", "val_ssim_degraded", "elapsed_s")
_STATE_RE = re.compile(r"state-(\d+)\.pt$")
Say = Callable[[str], Any]  # a warning sink (the CLI's, or a no-op on ranks other than 0)


def paper_lr(crop: int) -> float:
    """The paper's learning rate: 5e-4 for 256 px training images, 1e-3 for 512 px."""
    return 5e-4 if crop <= 256 else 1e-3


def learning_rate(step: int, total: int, peak: float, warmup: int, schedule: str) -> float:
    """Learning rate of optimiser step ``step`` (0-based): linear warm-up, then cosine or constant."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return peak
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress)))


def default_warmup(total: int) -> int:
    """2% of the run, at most 1000 steps."""
    return min(1000, max(1, total // 50))


@dataclass
class TrainOptions:
    """Everything `serpent train` accepts; stored in run.json."""

    data: str | list[str]
    out: str = "runs/serpent"
    model: str = "serpent-b"
    val: str | None = None
    epochs: float = 60.0
    steps: int | None = None
    lr: float | None = None
    batch_size: int = 1
    crop: int = 256
    loss: str = "l1"
    ema: float = 0.999
    val_every: int = 1000
    val_crop: int | None = 256
    val_limit: int | None = None
    save_every: int = 1000
    keep: int = 3
    log_every: int = 50
    seed: int = 0
    workers: int = 0
    device: str = "auto"
    precision: str = "auto"
    resume: bool = False
    lr_schedule: str = "cosine"
    warmup: int | None = None
    clip_grad: float = 1.0
    rotate: bool = True
    cache_mb: float = 2048.0
    init: str | None = None
    degradation: str | None = None  # None: the resumed run's, else what --model is for (ModelInfo.degradation)

    @property
    def data_folders(self) -> list[str]:
        """The training folders (one or several)."""
        return [self.data] if isinstance(self.data, str) else list(self.data)

    def check(self) -> None:
        """Reject impossible values with one clear line each (exit 2)."""
        if self.model not in trainable_models():
            known = ", ".join(trainable_models())
            raise UsageError(f"--model {self.model}: not trainable here; choose one of {known}")
        for name in ("batch_size", "crop", "val_every", "save_every", "keep", "log_every"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.steps is not None and self.steps < 1:
            raise UsageError(f"--steps must be >= 1, got {self.steps}")
        if self.epochs <= 0:
            raise UsageError(f"--epochs must be > 0, got {self.epochs}")
        if self.lr is not None and not (0 < self.lr < 1):
            raise UsageError(f"--lr must be in (0, 1), got {self.lr}")
        if not (0 <= self.ema < 1):
            raise UsageError(f"--ema must be in [0, 1) (0 disables it), got {self.ema}")
        if self.workers < 0:
            raise UsageError(f"--workers must be >= 0, got {self.workers}")
        if self.loss not in ("l1", "mse"):
            raise UsageError(f"--loss must be l1 or mse, got {self.loss}")
        if self.lr_schedule not in SCHEDULES:
            raise UsageError(f"--lr-schedule must be one of {', '.join(SCHEDULES)}, got {self.lr_schedule}")
        if self.warmup is not None and self.warmup < 0:
            raise UsageError(f"--warmup must be >= 0, got {self.warmup}")
        if not (self.clip_grad >= 0 and math.isfinite(self.clip_grad)):
            raise UsageError(f"--clip-grad must be >= 0 (0 disables clipping), got {self.clip_grad}")
        if not self.cache_mb >= 0:
            raise UsageError(f"--cache-mb must be >= 0, got {self.cache_mb}")
        if not self.data_folders:
            raise UsageError("give at least one folder of training images")
        if self.degradation is not None:
            degradation_by_name(self.degradation)


def resolve_degradation(opts: TrainOptions) -> TrainOptions:
    """``opts`` with its degradation decided: as given, else the resumed run's, else the one ``--model`` is for.

    So ``serpent train --model serpent-l-blind`` (fine-tuning the photo model on one's own pictures) learns the
    blind family without being told, and ``--resume`` never switches a run to another degradation halfway.
    """
    stored = _stored_degradation(Path(opts.out)) if opts.resume else None
    if opts.degradation is not None and stored is not None and opts.degradation != stored:
        raise UsageError(f"{opts.out} trains under the {stored} degradation, not {opts.degradation}; "
                         f"pass --degradation {stored} to resume it, or choose another --out")
    return replace(opts, degradation=opts.degradation or stored or model_info(opts.model).degradation)


def _stored_degradation(run_dir: Path) -> str | None:
    """The degradation in a run folder's run.json (None when there is no readable one)."""
    try:
        value = json.loads((run_dir / "run.json").read_text(encoding="utf-8")).get("degradation")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


@dataclass
class TrainResult:
    """What a finished (or resumed-and-finished) run produced."""

    run_dir: Path
    is_main: bool
    start_step: int
    final_step: int
    model_path: Path
    val_history: list[dict[str, float]] = field(default_factory=list)


class Reporter:
    """Receives progress; the CLI shows it with Rich.  The base class stays silent."""

    def start(self, total: int, start_step: int, note: str) -> None: ...

    def step(self, step: int, stats: dict[str, float]) -> None: ...

    def message(self, text: str) -> None: ...

    def close(self) -> None: ...


# ----------------------------------------------------------------------------- EMA


class EMA:
    """Exponential moving average of a model's floating-point parameters and buffers.

    The update is one fused ``torch._foreach_lerp_`` over all fp32 tensors (a Python loop over
    the state dict every step costs as much as a small model's forward on a CPU).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step)) if self.decay > 0 else 0.0
        state = model.state_dict()
        floats = [k for k, v in state.items() if v.is_floating_point()]
        same = [k for k in floats if state[k].dtype == torch.float32]
        if same:
            torch._foreach_lerp_([self.shadow[k] for k in same], [state[k].detach() for k in same], 1 - d)
        for k, v in state.items():
            if k in floats and v.dtype != torch.float32:
                self.shadow[k].lerp_(v.detach().float(), 1 - d)
            elif k not in floats:
                self.shadow[k].copy_(v)

    def copy_to(self, model: nn.Module) -> nn.Module:
        model.load_state_dict(self.shadow)
        return model


# ----------------------------------------------------------------------------- files


def save_weights(model: nn.Module, path: Path, metadata: dict[str, Any]) -> None:
    """Weights (fp32) + config via :func:`serpent_cli.hub.weights.save_model` (atomic), then fsync."""
    save_model(model, path, dtype=None, metadata=metadata)


def state_files(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of the resumable states in a run folder, newest first."""
    ckpt = Path(run_dir) / "checkpoints"
    found = []
    for p in ckpt.glob("state-*.pt") if ckpt.is_dir() else []:
        m = _STATE_RE.search(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def load_state(path: Path) -> dict[str, Any]:
    """A training state, read without unpickling code (``weights_only``); raises on a bad file.

    States carry a digest of their contents: ``torch.load`` does not check the zip's CRCs, so without
    it a flipped bit in a tensor would load silently and training would go on from damaged weights.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError("not a serpent training state")
    if "digest" in state and state["digest"] != state_digest(state):
        raise ValueError("contents do not match their digest")
    return state


class _WriteErrorKeeper(io.RawIOBase):
    """A file for torch.save that remembers the OSError of a failed write (torch reports only its own text)."""

    def __init__(self, fh: io.BufferedWriter) -> None:
        super().__init__()
        self.fh = fh
        self.error: OSError | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise


def _torch_save(payload: dict[str, Any], path: Path) -> None:
    """``torch.save``; a failed write raises its OSError (disk full, file too large), which says why."""
    with open(path, "wb") as fh:
        keeper = _WriteErrorKeeper(fh)
        try:
            torch.save(payload, keeper)
        except RuntimeError:
            if keeper.error is not None:
                raise keeper.error from None
            raise


def state_digest(state: dict[str, Any]) -> str:
    """sha256 over every value of a training state except the digest itself."""
    h = hashlib.sha256()

    def feed(obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{t.dtype}{tuple(obj.shape)}".encode())
            h.update(t.view(torch.uint8).numpy())
        elif isinstance(obj, dict):
            h.update(b"{")
            for key in sorted(obj, key=repr):
                feed(key)
                feed(obj[key])
            h.update(b"}")
        elif isinstance(obj, (list, tuple)):
            h.update(b"[")
            for item in obj:
                feed(item)
            h.update(b"]")
        else:
            h.update(repr(obj).encode())

    feed({k: v for k, v in state.items() if k != "digest"})
    return h.hexdigest()


def latest_state(run_dir: Path, warn: Any = None) -> dict[str, Any] | None:
    """The newest state in ``run_dir`` that loads cleanly (older ones are tried if one is damaged).

    A damaged state is renamed to ``*.corrupt``: left in place it would count as the newest one and
    pruning would delete the good states the run continues from.
    """
    for _, path in state_files(run_dir):
        try:
            return load_state(path) | {"_path": str(path)}
        except Exception as exc:  # damaged by something outside our control: fall back, say so
            aside = path.with_name(path.name + ".corrupt")
            with contextlib.suppress(OSError):
                path.replace(aside)
            if warn is not None:
                reason = first_line(exc, 120)
                warn(f"training state {path.name} is truncated or corrupt ({reason}); moved it to {aside.name} "
                     f"and trying an older one")
    return None


def _remove_stale_temporaries(run_dir: Path) -> None:
    """Temporary files a killed run left behind (never a finished checkpoint: those are renamed)."""
    for folder in (run_dir, run_dir / "checkpoints"):
        for tmp in folder.glob(".*.tmp") if folder.is_dir() else []:
            tmp.unlink(missing_ok=True)


def _prune(run_dir: Path, keep: int) -> None:
    for step, path in state_files(run_dir)[keep:]:
        path.unlink(missing_ok=True)
        (path.parent / f"step-{step:08d}.safetensors").unlink(missing_ok=True)


# ----------------------------------------------------------------------------- CSV log


class CsvLog:
    """log.csv with fixed columns; on resume rows after the resumed step are dropped first."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        rows: list[dict[str, str]] = []
        if resume_step is not None and path.is_file():
            with path.open(newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if r.get("step", "").isdigit() and int(r["step"]) <= resume_step]
        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=LOG_FIELDS, extrasaction="ignore")
                w.writeheader()
                w.writerows(rows)
        write_atomic(path, write)
        self.fh = path.open("a", newline="")
        self.writer = csv.DictWriter(self.fh, fieldnames=LOG_FIELDS, extrasaction="ignore")

    def write(self, row: dict[str, Any]) -> None:
        self.writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


def _tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed: CSV only
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


# ----------------------------------------------------------------------------- the loop


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class _StopRequest:
    """Ctrl-C / SIGTERM during a single-process run: finish the step, save a state, then stop.

    Not used under torchrun (ranks would stop at different steps and deadlock; torchrun handles
    signals itself).  A second signal gets the default behaviour.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}
        if enabled and threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        self.restore()

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


def load_initial_weights(model: nn.Module, spec: str) -> None:
    """Copy the weights of ``spec`` (a registered model name or a weights file) into ``model``.

    The architecture must match (for Serpent every config field but the name): a serpent-l
    file can start a serpent-l-blind run, a serpent-b file cannot start a serpent-l one.
    """
    from serpent_cli.hub.weights import load_model

    path = Path(spec)
    if path.suffix == ".safetensors" or path.exists():
        if not path.is_file():
            raise UsageError(f"--init {spec}: no such weights file")
        source = load_model(path)
    elif spec in list_models():
        source = create_model(spec, pretrained=True)
    else:
        raise UsageError(f"--init {spec}: neither a weights file nor a known model ({', '.join(list_models())})")
    mine, theirs = getattr(model, "config", None), getattr(source, "config", None)
    if mine is not None and theirs is not None:
        differ = [f.name for f in fields(mine)
                  if f.name != "name" and getattr(mine, f.name) != getattr(theirs, f.name)]
        if differ:
            detail = ", ".join(f"{f} {getattr(theirs, f)} vs {getattr(mine, f)}" for f in differ)
            raise UsageError(f"--init {spec}: a different architecture from {mine.name} ({detail})")
    try:
        model.load_state_dict(source.state_dict())
    except RuntimeError as exc:
        raise UsageError(f"--init {spec}: its weights do not fit the model being trained ({exc})") from None


def validate(model: nn.Module, items: list[EvalImage], device: torch.device,
             autocast_dtype: torch.dtype | None) -> dict[str, float]:
    """Mean PSNR/SSIM of ``model`` and of the degraded input on the fixed validation set."""
    was_training = model.training
    model.eval()
    report = evaluate(items, {"model": model_restorer(model, device, tile=0, autocast_dtype=autocast_dtype)},
                      use_lpips=False)
    model.train(was_training)
    by = {s["model"]: s for s in report.summary}
    return {
        "val_psnr": float(by["model"]["psnr"]), "val_ssim": float(by["model"]["ssim"]),  # type: ignore[arg-type]
        "val_psnr_degraded": float(by[BASELINE_NAME]["psnr"]),  # type: ignore[arg-type]
        "val_ssim_degraded": float(by[BASELINE_NAME]["ssim"]),  # type: ignore[arg-type]
    }


def train(opts: TrainOptions, reporter: Reporter | None = None, warn: Any = None) -> TrainResult:
    """Run (or resume) a training run; see the module docstring for the files it writes."""
    reporter = reporter or Reporter()
    warn = warn or (lambda _m: None)
    opts.check()
    opts = resolve_degradation(opts)
    run_dir = Path(opts.out)
    device = resolve_device(opts.device)
    ctx = dist_util.init_distributed(device.type)
    try:
        return _train(opts, run_dir, device, ctx, reporter, warn)
    finally:
        reporter.close()
        dist_util.shutdown()


@dataclass(frozen=True)
class _Plan:
    """The run's length and learning rate, fixed once from the options, the image count and the ranks."""

    total: int
    steps_per_epoch: int
    lr: float
    warmup: int

    @classmethod
    def of(cls, opts: TrainOptions, n_images: int, world_size: int) -> _Plan:
        """Steps from --steps or --epochs (an epoch: every image once, all ranks together), then lr and warm-up."""
        per_step = opts.batch_size * world_size
        steps_per_epoch = max(1, math.ceil(n_images / per_step))
        total = opts.steps if opts.steps is not None else max(1, math.ceil(opts.epochs * n_images / per_step))
        lr = opts.lr if opts.lr is not None else paper_lr(opts.crop)
        warmup = opts.warmup if opts.warmup is not None else default_warmup(total)
        return cls(total, steps_per_epoch, lr, warmup)


def _device_and_precision(opts: TrainOptions, device: torch.device,
                          ctx: dist_util.DistContext) -> tuple[torch.device, torch.dtype | None]:
    """This rank's device and autocast dtype (None: plain fp32); fp16 is refused, training has no loss scaling."""
    if ctx.is_distributed and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    precision = resolve_precision(opts.precision, device)
    if precision == torch.float16:
        raise UsageError("--precision fp16 is not supported for training (no loss scaling); use bf16 or fp32")
    return device, (precision if precision != torch.float32 else None)


def _load_data(opts: TrainOptions, main: bool,
               say: Say) -> tuple[ImageFolderScan, RegionDegradation, list[EvalImage]]:
    """The training images (warning about skipped and small ones) and, on rank 0, the fixed validation set."""
    scan = scan_image_folders(opts.data_folders)
    degradation = degradation_by_name(opts.degradation or "benchmark")  # decided by resolve_degradation
    if scan.skipped and main:
        names = ", ".join(p.name for p in scan.skipped[:5]) + (" ..." if len(scan.skipped) > 5 else "")
        say(f"skipped {len(scan.skipped)} file(s) in {scan.label} that are not readable images: {names}")
    small = sum(1 for w, h in scan.sizes if w < opts.crop or h < opts.crop)
    if small and main:
        say(f"{small} image(s) are smaller than --crop {opts.crop}; they are reflect-padded up to it")
    val_items: list[EvalImage] = []
    if opts.val and main:
        val_items, _ = load_eval_set(Path(opts.val), crop=opts.val_crop, limit=opts.val_limit,
                                     degradation=degradation)
    elif opts.val:
        scan_image_folder(Path(opts.val))  # fail on every rank alike, not only on rank 0
    return scan, degradation, val_items


def _resume_state(opts: TrainOptions, run_dir: Path, say: Say) -> dict[str, Any] | None:
    """The state ``--resume`` continues from (None: a fresh run); an existing run is never overwritten."""
    existing = state_files(run_dir)
    if existing and not opts.resume:
        raise UsageError(f"{run_dir} already holds a training run (step {existing[0][0]}); "
                         f"pass --resume to continue it or choose another --out")
    if not opts.resume:
        return None
    state = latest_state(run_dir, say)
    if state is None and existing:
        raise SerpentError(f"no readable training state in {run_dir / 'checkpoints'}; cannot resume")
    if state is not None and state["model_name"] != opts.model:
        raise UsageError(f"{run_dir} trains {state['model_name']}, not {opts.model}; "
                         f"pass --model {state['model_name']} to resume it")
    return state


def _build_model(opts: TrainOptions, state: dict[str, Any] | None, device: torch.device,
                 ctx: dist_util.DistContext, lr: float,
                 say: Say) -> tuple[nn.Module, nn.Module, EMA, torch.optim.Optimizer]:
    """(model, net, EMA, Adam): seeded, from --init or the resumed state; ``net`` is DDP-wrapped under torchrun."""
    torch.manual_seed(opts.seed)
    model = create_model(opts.model)
    if opts.init and state is None:
        load_initial_weights(model, opts.init)
        if ctx.is_main:
            say(f"starting from the weights of {opts.init}")
    model = model.to(device)
    ema = EMA(model, opts.ema)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    if state is not None:
        _restore(state, model, ema, optimizer, lr, device)
    ema.shadow = {k: v.to(device) for k, v in ema.shadow.items()}
    net: nn.Module = model
    if ctx.is_distributed:
        # Depthwise-conv grads come back channels-last: harmless for DDP, but it warns every run.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model, net, ema, optimizer


def _restore(state: dict[str, Any], model: nn.Module, ema: EMA, optimizer: torch.optim.Optimizer, lr: float,
             device: torch.device) -> None:
    """Weights, EMA, optimiser and RNG from a saved state, so a resumed run matches an uninterrupted one."""
    model.load_state_dict(state["model"])
    ema.shadow = {k: v.float() for k, v in state["ema"].items()}
    optimizer.load_state_dict(state["optimizer"])
    for group in optimizer.param_groups:
        group["lr"] = lr
    torch.set_rng_state(state["rng_cpu"])
    if device.type == "cuda" and state.get("rng_cuda") is not None:
        with contextlib.suppress(Exception):
            torch.cuda.set_rng_state(state["rng_cuda"], device)


def _make_loader(opts: TrainOptions, scan: ImageFolderScan, degradation: RegionDegradation, start_step: int,
                 total: int, ctx: dist_util.DistContext, device: torch.device) -> torch.utils.data.DataLoader:
    """This rank's batches for steps start_step..total (a sample depends on seed and index only, so resumes match)."""
    dataset = RandomCropDataset(scan.images, opts.crop, seed=opts.seed, degradation=degradation,
                                cache_mb=opts.cache_mb, rotate=opts.rotate)
    sampler = SampleRange(start_step, total, opts.batch_size, ctx.rank, ctx.world_size)
    return torch.utils.data.DataLoader(dataset, batch_size=opts.batch_size, sampler=sampler,
                                       num_workers=opts.workers, pin_memory=device.type == "cuda",
                                       persistent_workers=False)


def _weights_metadata(opts: TrainOptions, train_data: str) -> dict[str, str]:
    """What every saved weights file says about its training (the step is filled in at each save)."""
    meta = {"trained_steps": "0", "train_data": train_data, "crop": str(opts.crop),
            "degradation": opts.degradation or "benchmark"}
    if opts.init:
        meta["init"] = Path(opts.init).name
    return meta


def _val_line(step: int, stats: dict[str, Any]) -> str:
    """The progress line a validation gets, the same at step 0 and later."""
    return (f"step {step}: val PSNR {stats['val_psnr']:.2f} dB (degraded input "
            f"{stats['val_psnr_degraded']:.2f} dB), SSIM {stats['val_ssim']:.4f}")


@dataclass
class _Run:
    """One rank's run between set-up and finish: what the steps change and what saving and logging read."""

    opts: TrainOptions
    run_dir: Path
    device: torch.device
    ctx: dist_util.DistContext
    reporter: Reporter
    autocast_dtype: torch.dtype | None
    plan: _Plan
    model: nn.Module
    net: nn.Module
    ema: EMA
    optimizer: torch.optim.Optimizer
    ema_model: nn.Module
    val_items: list[EvalImage]
    meta: dict[str, str]
    start_step: int
    resumed: bool
    best: float
    prior_elapsed: float
    history: list[dict[str, float]] = field(default_factory=list)
    log: CsvLog | None = None
    tb: Any = None
    step: int = 0
    t0: float = 0.0
    t_last: float = 0.0
    n_last: int = 0
    # Running sums stay on the device: read back only when a log row is written (no host sync per step).
    loss_sum: torch.Tensor = field(init=False)
    psnr_sum: torch.Tensor = field(init=False)
    n_sum: int = 0
    grad_norm: torch.Tensor = field(init=False)

    def open_outputs(self) -> None:
        """Rank 0: the run folder, run.json, log.csv (cut back to the resumed step) and TensorBoard if installed."""
        if not self.ctx.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(self.run_dir)
        write_json_atomic(self.run_dir / "run.json",
                          asdict(self.opts) | {"world_size": self.ctx.world_size, "lr_used": self.plan.lr,
                                               "warmup_used": self.plan.warmup, "total_steps": self.plan.total},
                          sort_keys=True)
        self.log = CsvLog(self.run_dir / "log.csv", self.start_step if self.resumed else None)
        self.tb = _tensorboard(self.run_dir)

    def start_note(self, n_images: int) -> str:
        """The line that opens the progress display: what trains on what, for how long, where."""
        opts, plan = self.opts, self.plan
        return (f"{opts.model}: {n_images} images, {opts.degradation} degradation, crop {opts.crop}, "
                f"batch {opts.batch_size}x{self.ctx.world_size}, "
                f"lr {plan.lr:g} ({opts.lr_schedule}, warm-up {plan.warmup}), {plan.total} steps "
                f"({plan.total / plan.steps_per_epoch:.3g} epochs) on {self.device}"
                + (", bf16 autocast" if self.autocast_dtype is not None else "")
                + (f"; resuming at step {self.start_step}" if self.resumed else ""))

    def save(self, step: int) -> None:
        """Checkpoint (rank 0 only): EMA weights as safetensors, then the resumable state, then model."""
        self.ema.copy_to(self.ema_model)
        ckpt = self.run_dir / "checkpoints"
        m = self.meta | {"trained_steps": str(step)}
        save_weights(self.ema_model, ckpt / f"step-{step:08d}.safetensors", m)
        payload = {
            "format": STATE_FORMAT, "version": STATE_VERSION, "step": step, "model_name": self.opts.model,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "ema": {k: v.detach().cpu() for k, v in self.ema.shadow.items()},
            "optimizer": self.optimizer.state_dict(), "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "best_val_psnr": self.best, "options": json.dumps(asdict(self.opts)),
            "elapsed_s": self.prior_elapsed + time.perf_counter() - self.t0,
        }
        payload["digest"] = state_digest(payload)
        write_atomic(ckpt / f"state-{step:08d}.pt", lambda tmp: _torch_save(payload, tmp))
        save_weights(self.ema_model, self.run_dir / "model.safetensors", m)
        _prune(self.run_dir, self.opts.keep)

    def save_or_explain(self, step: int) -> None:
        """:meth:`save`, or one line saying the write failed; the previous checkpoint stays loadable."""
        run_dir = self.run_dir
        try:
            self.save(step)
        except (OSError, RuntimeError) as exc:  # torch.save reports a failed write as RuntimeError
            if not (run_dir / "checkpoints" / f"state-{step:08d}.pt").exists():
                (run_dir / "checkpoints" / f"step-{step:08d}.safetensors").unlink(missing_ok=True)
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else first_line(exc)
            older = [s for s, _ in state_files(run_dir) if s < step]
            kept = f"the checkpoint of step {older[0]} is intact" if older else "no earlier checkpoint exists"
            raise SerpentError(f"cannot write the checkpoint of step {step} in {run_dir} ({reason}); {kept}; "
                               f"free space and continue with --resume") from None

    def run_validation(self, step: int) -> dict[str, float]:
        """Validate the EMA weights (rank 0); a new best PSNR is saved as best.safetensors."""
        self.ema.copy_to(self.ema_model)
        stats = validate(self.ema_model, self.val_items, self.device, self.autocast_dtype)
        self.history.append({"step": float(step)} | stats)
        if stats["val_psnr"] > self.best:
            self.best = stats["val_psnr"]
            save_weights(self.ema_model, self.run_dir / "best.safetensors",
                         self.meta | {"trained_steps": str(step), "val_psnr": f"{self.best:.4f}"})
        return stats

    def run_steps(self, loader: torch.utils.data.DataLoader) -> None:
        """Every step to the end; in a single process Ctrl-C / SIGTERM finishes the step and saves it first."""
        self.net.train()
        self.step = self.start_step
        self.t_last, self.n_last, self.t0 = time.perf_counter(), self.step, time.perf_counter()
        self.loss_sum, self.psnr_sum, self.n_sum = (torch.zeros((), device=self.device),
                                                    torch.zeros((), device=self.device), 0)
        self.grad_norm = torch.zeros((), device=self.device)
        if self.ctx.is_main and self.val_items and self.start_step == 0:
            stats = self.run_validation(0)
            self.log.write({"step": 0, "epoch": 0.0, **stats})  # type: ignore[union-attr]
            self.reporter.message(_val_line(0, stats))
        stop = _StopRequest(enabled=not self.ctx.is_distributed)
        try:
            for degraded, clean in loader:
                step_lr = self.train_step(degraded, clean)
                self.after_step(step_lr, stop)
        finally:
            stop.restore()

    def train_step(self, degraded: torch.Tensor, clean: torch.Tensor) -> float:
        """One optimiser update (and EMA update) on this rank's batch; returns the learning rate it used."""
        degraded = degraded.to(self.device, non_blocking=True)
        clean = clean.to(self.device, non_blocking=True)
        out, loss = self.checked_forward(degraded, clean)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.opts.clip_grad > 0:
            self.grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.opts.clip_grad)
        step_lr = learning_rate(self.step, self.plan.total, self.plan.lr, self.plan.warmup, self.opts.lr_schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = step_lr
        self.optimizer.step()
        self.step += 1
        self.ema.update(self.model, self.step)
        with torch.no_grad():
            self.psnr_sum += psnr(out.detach().clamp(0, 1), clean, on_device=True).mean()
            self.loss_sum += loss.detach()
        self.n_sum += 1
        return step_lr

    def checked_forward(self, degraded: torch.Tensor, clean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Output and loss; the step's one host sync (isfinite) stops a bad step before the optimiser, on all ranks."""
        step = self.step
        try:
            with (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype
                  else contextlib.nullcontext()):
                out = self.net(degraded)
            out = out.float()
            loss = F.l1_loss(out, clean) if self.opts.loss == "l1" else F.mse_loss(out, clean)
            problem = None if torch.isfinite(loss) else (
                f"training diverged at step {step + 1} (loss {loss.item()}); lower --lr "
                f"or resume from the last checkpoint with --resume")
        except RuntimeError as exc:  # e.g. out of memory on this rank only
            problem = f"step {step + 1} failed: {first_line(exc, 200)}"
        # Every rank stops at the same step when any one has a problem, so none waits for the others forever.
        problem = dist_util.agree_on_problem(problem, self.ctx, self.device)
        if problem is not None:
            raise SerpentError(problem) if self.ctx.is_main else ReportedByAnotherRank(problem)
        return out, loss

    def after_step(self, step_lr: float, stop: _StopRequest) -> None:
        """Rank 0 logs, reports and saves when due; every rank meets at a barrier after a save or validation."""
        step, opts = self.step, self.opts
        due_save = step % opts.save_every == 0 or step == self.plan.total
        sync = due_save or (bool(opts.val) and step % opts.val_every == 0)
        if not self.ctx.is_main:
            if sync:
                dist_util.barrier(self.ctx)
            return
        self.record(step_lr)
        if due_save or stop.requested:
            self.save_or_explain(step)
        if sync:
            dist_util.barrier(self.ctx)
        if stop.requested:
            stop.restore()
            self.reporter.message(f"stopped at step {step}: state saved; continue with --resume")
            raise KeyboardInterrupt

    def record(self, step_lr: float) -> None:
        """Rank 0: a log row when due (training means, validation), then the progress line."""
        step, opts, total = self.step, self.opts, self.plan.total
        now = time.perf_counter()
        it_s = (step - self.n_last) / max(now - self.t_last, 1e-9)
        row: dict[str, Any] = {}
        if step % opts.log_every == 0 or step == total:
            row = self.take_means(step_lr, it_s)
            self.t_last, self.n_last = now, step
        if self.val_items and (step % opts.val_every == 0 or step == total):
            row |= self.run_validation(step)
            self.reporter.message(_val_line(step, row))
        if row:
            row |= {"step": step, "epoch": step / self.plan.steps_per_epoch,
                    "elapsed_s": self.prior_elapsed + now - self.t0}
            self.write_row(row)
        # The loss shown is the logged mean (every --log-every steps): reading it each step would sync.
        self.reporter.step(step, {"it_s": it_s} | {k: v for k, v in row.items()
                                                   if k in ("loss", "train_psnr", "val_psnr")})

    def take_means(self, step_lr: float, it_s: float) -> dict[str, Any]:
        """The training columns of a log row: the means since the last row, the only read-back of the sums."""
        row = {"loss": float(self.loss_sum) / self.n_sum, "train_psnr": float(self.psnr_sum) / self.n_sum,
               "lr": step_lr, "it_s": it_s, "grad_norm": float(self.grad_norm)}
        self.loss_sum.zero_()
        self.psnr_sum.zero_()
        self.n_sum = 0
        return row

    def write_row(self, row: dict[str, Any]) -> None:
        """One row into log.csv and, with TensorBoard installed, its numbers as scalars."""
        self.log.write(row)  # type: ignore[union-attr]
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("step", "epoch") and isinstance(v, float):
                    self.tb.add_scalar(k, v, self.step)

    def finish(self) -> TrainResult:
        """Close the log; a resumed run with nothing left to do still leaves a model.safetensors."""
        if self.ctx.is_main and self.step == self.start_step and self.resumed:
            self.reporter.message(f"already at step {self.step} of {self.plan.total}; "
                                  f"nothing to do (raise --steps to train longer)")
            if not (self.run_dir / "model.safetensors").is_file():
                self.save_or_explain(self.step)
        if self.log is not None:
            self.log.close()
        if self.tb is not None:
            self.tb.close()
        return TrainResult(self.run_dir, self.ctx.is_main, self.start_step, self.step,
                           self.run_dir / "model.safetensors", self.history)


def _train(opts: TrainOptions, run_dir: Path, device: torch.device, ctx: dist_util.DistContext,
           reporter: Reporter, warn: Say) -> TrainResult:
    """This rank's run inside the process group: set up, run the steps, finish (one named step each)."""
    device, autocast_dtype = _device_and_precision(opts, device, ctx)
    say: Say = warn if ctx.is_main else (lambda _m: None)
    scan, degradation, val_items = _load_data(opts, ctx.is_main, say)
    state = _resume_state(opts, run_dir, say)
    start_step = int(state["step"]) if state else 0
    plan = _Plan.of(opts, len(scan.images), ctx.world_size)
    model, net, ema, optimizer = _build_model(opts, state, device, ctx, plan.lr, say)
    loader = _make_loader(opts, scan, degradation, start_step, plan.total, ctx, device)
    run = _Run(opts=opts, run_dir=run_dir, device=device, ctx=ctx, reporter=reporter, autocast_dtype=autocast_dtype,
               plan=plan, model=model, net=net, ema=ema, optimizer=optimizer,
               ema_model=create_model(opts.model).to(device).eval(), val_items=val_items,
               meta=_weights_metadata(opts, scan.label), start_step=start_step, resumed=state is not None,
               best=float(state.get("best_val_psnr", float("-inf"))) if state else float("-inf"),
               prior_elapsed=float(state.get("elapsed_s", 0.0)) if state else 0.0)
    run.open_outputs()
    if ctx.is_main:
        reporter.start(plan.total, start_step, run.start_note(len(scan.images)))
    run.run_steps(loader)
    return run.finish()
