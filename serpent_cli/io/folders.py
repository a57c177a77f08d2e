"""A folder of photos as a set: training and evaluation read their images through :func:`scan_image_folder`.

Files are found by :func:`serpent_cli.io.formats.walk_folder` (the walker `deblur` uses too); each image's
header is read once here for its size, pixels are decoded later by whoever needs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from serpent_cli.errors import UsageError, require_folder
from serpent_cli.io.formats import IMAGE_EXTENSIONS, walk_folder
from serpent_cli.io.imageio import pillow_limit_lifted


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
    for path, is_image in walk_folder(root):
        if not is_image:
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
