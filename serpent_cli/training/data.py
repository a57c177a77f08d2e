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
  seeded with :func:`serpent_cli.degradation.benchmark.stable_seed`.  So a resumed or multi-process run
  sees exactly the samples an uninterrupted single run would, without saving data-loader state.
* Decoded images are cached as uint8 up to ``cache_mb`` (least recently used first out), so a
  large set (60k FFHQ faces) streams from disk instead of filling the memory.
* The blur is applied to the crop plus the degradation's ``margin`` (half the kernel) on each side,
  then the margin is cut away: the crop is blurred as part of the whole photo, with no artificial
  border.  The degradation is the benchmark or the blind family
  (:class:`serpent_cli.degradation.benchmark.RegionDegradation`); the benchmark's samples are bit-identical to
  what they were before the family existed (a test pins them).
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from pathlib import Path

import torch

from serpent_cli.degradation.benchmark import BENCHMARK, RegionDegradation, stable_seed
from serpent_cli.errors import SerpentError, UsageError
from serpent_cli.io.imageio import ImageReadError, read_rgb
from serpent_cli.models.padding import pad_to_size


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
        img = pad_to_size(img, crop, crop)
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
