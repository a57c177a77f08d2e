"""Training data: a folder of clean photos -> (degraded, clean) crops, made on the fly.

Decisions (the issue is silent on these):

* The folder is read recursively; files that are not images by extension, or that PIL cannot
  open, are skipped with one warning naming them.  An empty folder is a clear error.
* Images smaller than the crop are reflect-padded up to it (kept, not skipped: small sets are
  precious) and counted in a warning.
* Several folders train as one set (``serpent train natural-train faces-train``): their images
  are concatenated in the order given, each folder sorted.
* Every sample is a pure function of ``(seed, global sample index)``: which image (a fresh
  permutation per epoch), where the crop is, the flips (and, with ``rotate``, a 90-degree
  rotation: the 8 symmetries of the square in all), and the noise all come from a generator
  seeded with :func:`serpent_cli.degradation.stable_seed`.  So a resumed or multi-process run
  sees exactly the samples an uninterrupted single run would, without saving data-loader state.
* Decoded images are cached as uint8 up to ``cache_mb`` (least recently used first out), so a
  large set (60k FFHQ faces) streams from disk instead of filling the memory.
* The blur is applied to the crop plus the degradation's ``margin`` (half the kernel) on each side,
  then the margin is cut away: the crop is blurred as part of the whole photo, with no artificial
  border.  The degradation is the benchmark or the blind family
  (:class:`serpent_cli.degradation.RegionDegradation`); the benchmark's samples are bit-identical to
  what they were before the family existed (a test pins them).
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from serpent_cli.degradation import BENCHMARK, RegionDegradation, stable_seed
from serpent_cli.errors import SerpentError, UsageError, require_folder
from serpent_cli.imageio import IMAGE_EXTENSIONS, ImageReadError, pillow_limit_lifted, read_rgb


@dataclass
class ImageFolderScan:
    """The usable images of a folder and what was skipped (for warnings)."""

    root: Path
    images: list[Path]
    sizes: list[tuple[int, int]]  # (width, height) per image
    skipped: list[Path]
    roots: list[Path] = field(default_factory=list)

    @property
    def label(self) -> str:
        """The folder name(s), joined with '+', for logs and weights metadata."""
        return "+".join(r.name for r in (self.roots or [self.root]))


def scan_image_folder(root: Path) -> ImageFolderScan:
    """Images under ``root`` (recursive, sorted); stray or unreadable files are listed in ``skipped``."""
    root = require_folder(root)
    images: list[Path] = []
    sizes: list[tuple[int, int]] = []
    skipped: list[Path] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.name.startswith("."):
            continue
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            skipped.append(path)
            continue
        try:
            with pillow_limit_lifted(), Image.open(path) as img:  # header only; decoded (and size-checked) at load
                sizes.append(img.size)
            images.append(path)
        except (UnidentifiedImageError, OSError, ValueError):
            skipped.append(path)
    if not images:
        raise UsageError(f"no readable images in {root} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return ImageFolderScan(root, images, sizes, skipped, [root])


def scan_image_folders(roots: str | Path | list[str] | list[Path]) -> ImageFolderScan:
    """Several training folders as one scan: each folder's images in order; a file listed twice counts once."""
    paths = [Path(r) for r in ([roots] if isinstance(roots, (str, Path)) else roots)]
    if not paths:
        raise UsageError("no data folder given")
    scans = [scan_image_folder(p) for p in paths]
    seen: set[Path] = set()
    images: list[Path] = []
    sizes: list[tuple[int, int]] = []
    for scan in scans:
        for path, size in zip(scan.images, scan.sizes):
            if path.resolve() not in seen:
                seen.add(path.resolve())
                images.append(path)
                sizes.append(size)
    return ImageFolderScan(paths[0], images, sizes, [p for s in scans for p in s.skipped], paths)


def _reflect_pad_to(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pad (C, H, W) up to at least height x width, reflecting (repeatedly for tiny images)."""
    while x.shape[1] < height or x.shape[2] < width:
        ph = min(height - x.shape[1], x.shape[1] - 1) if x.shape[1] < height else 0
        pw = min(width - x.shape[2], x.shape[2] - 1) if x.shape[2] < width else 0
        if ph <= 0 and pw <= 0:
            return F.pad(x.unsqueeze(0), (0, max(0, width - x.shape[2]), 0, max(0, height - x.shape[1])),
                         mode="replicate").squeeze(0)
        x = F.pad(x.unsqueeze(0), (0, max(pw, 0), 0, max(ph, 0)), mode="reflect").squeeze(0)
    return x


class RandomCropDataset(torch.utils.data.Dataset):
    """Map-style dataset indexed by the *global sample index*; item k is always the same pair.

    ``len()`` is one epoch (the number of images); indices beyond it address later epochs.
    Decoded images are cached as uint8 per process, at most ``cache_mb`` MiB (LRU).
    ``rotate`` adds a random 90-degree rotation to the flips (drawn after the noise, so the
    other draws of a sample are the same with and without it).
    """

    def __init__(self, images: list[Path], crop: int, *, seed: int = 0,
                 degradation: RegionDegradation = BENCHMARK, cache: bool = True, cache_mb: float = 2048.0,
                 rotate: bool = False) -> None:
        if crop < 8:
            raise UsageError(f"--crop must be at least 8 pixels, got {crop}")
        self.images = list(images)
        self.crop = crop
        self.seed = seed
        self.degradation = degradation
        self.margin = degradation.margin
        self._cache: OrderedDict[int, torch.Tensor] | None = OrderedDict() if cache else None
        self._cache_limit = int(cache_mb * 2**20)
        self._cache_bytes = 0
        self.rotate = rotate
        self._perm: dict[int, list[int]] = {}
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.images)

    def _load(self, i: int) -> torch.Tensor:
        """Image i in [0, 1]; an image whose pixel data turns out corrupt is replaced by the next good one."""
        n = len(self.images)
        for j in (i + d for d in range(n)):
            j %= n
            if j in self._bad:
                continue
            try:
                return self._decode(j)
            except (ImageReadError, OSError, ValueError, SyntaxError):
                self._bad.add(j)
                sys.stderr.write(f"warning: skipping unreadable image {self.images[j]}\n")
        raise SerpentError("none of the training images could be decoded")

    def _decode(self, i: int) -> torch.Tensor:
        if self._cache is not None and i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i].float() / 255.0
        img = read_rgb(self.images[i])
        if self._cache is None:
            return img
        stored = (img * 255.0).round().to(torch.uint8)
        self._cache[i] = stored
        self._cache_bytes += stored.numel()
        while self._cache_bytes > self._cache_limit and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= old.numel()
        return stored.float() / 255.0

    @property
    def cached_bytes(self) -> int:
        """Bytes of decoded images held in the cache (bounded by ``cache_mb``)."""
        return self._cache_bytes

    def image_index(self, k: int) -> int:
        """Which image sample k uses: epoch k // n walks a fresh seeded permutation."""
        n = len(self.images)
        epoch, pos = divmod(k, n)
        if epoch not in self._perm:
            g = torch.Generator().manual_seed(stable_seed(f"epoch:{epoch}", self.seed))
            self._perm = {epoch: torch.randperm(n, generator=g).tolist()}
        return self._perm[epoch][pos]

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(stable_seed(f"sample:{k}", self.seed))
        img = self._load(self.image_index(k))
        crop, m = self.crop, self.margin
        img = _reflect_pad_to(img, crop, crop)
        _, h, w = img.shape
        top = int(torch.randint(0, h - crop + 1, (1,), generator=g))
        left = int(torch.randint(0, w - crop + 1, (1,), generator=g))
        flips = torch.rand(2, generator=g)
        # Blur the crop with its real surroundings (as far as the photo reaches), then cut the margin.
        t0, l0 = max(0, top - m), max(0, left - m)
        region = img[:, t0 : min(h, top + crop + m), l0 : min(w, left + crop + m)]
        degraded = self.degradation.degrade_region(region, top - t0, left - l0, crop, g)
        clean = img[:, top : top + crop, left : left + crop]
        if flips[0] < 0.5:
            clean, degraded = clean.flip(-1), degraded.flip(-1)
        if flips[1] < 0.5:
            clean, degraded = clean.flip(-2), degraded.flip(-2)
        if self.rotate:
            quarter = int(torch.randint(0, 4, (1,), generator=g))
            clean, degraded = clean.rot90(quarter, (-2, -1)), degraded.rot90(quarter, (-2, -1))
        return degraded.contiguous(), clean.contiguous()


class SampleRange(torch.utils.data.Sampler[int]):
    """Global sample indices of one rank from a start step on: step s, rank r -> a block of ``batch``."""

    def __init__(self, start_step: int, total_steps: int, batch: int, rank: int = 0, world: int = 1) -> None:
        self.start_step, self.total_steps = start_step, total_steps
        self.batch, self.rank, self.world = batch, rank, world

    def __iter__(self):  # type: ignore[no-untyped-def]
        for step in range(self.start_step, self.total_steps):
            base = (step * self.world + self.rank) * self.batch
            yield from range(base, base + self.batch)

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step) * self.batch


def center_crop(img: torch.Tensor, size: int | None) -> torch.Tensor:
    """Center crop of (C, H, W) to at most size x size (None or 0: the whole image)."""
    if not size:
        return img
    _, h, w = img.shape
    ch, cw = min(size, h), min(size, w)
    top, left = (h - ch) // 2, (w - cw) // 2
    return img[:, top : top + ch, left : left + cw]


def relative_key(path: Path, root: Path) -> str:
    """The relative path (POSIX form) used to seed an image's evaluation noise."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).name

