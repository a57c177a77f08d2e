"""Image reading and writing (the deblur command extends this with full-fidelity I/O)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"})


def list_images(folder: Path, recursive: bool = True) -> list[Path]:
    """Image files under ``folder`` (by extension), sorted for a stable order."""
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in Path(folder).glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def read_rgb(path: Path) -> torch.Tensor:
    """An image as float32 RGB in [0, 1], shape (3, H, W), EXIF orientation applied."""
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img, dtype=np.float32) / 65535.0
            arr = np.repeat(arr[..., None], 3, axis=-1)
        else:
            arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()
