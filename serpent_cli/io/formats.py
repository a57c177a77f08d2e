"""Image file extensions and formats: plain data, apart from :mod:`serpent_cli.io.imageio`.

Planning a batch (which inputs, which output names) needs only these tables; keeping them out of
the codec module means a typo'd path is reported without importing numpy, Pillow or torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"})
FORMAT_BY_EXTENSION = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
    ".webp": "WEBP",
}
EXTENSION_BY_FORMAT = {"PNG": ".png", "JPEG": ".jpg", "TIFF": ".tif", "BMP": ".bmp", "WEBP": ".webp"}


def walk_folder(folder: Path, recursive: bool = True) -> Iterator[tuple[Path, bool]]:
    """Every visible file under ``folder`` in sorted order, with whether its extension is an image's.

    The one folder walker: `deblur` / `degrade` inputs, training and evaluation sets all see the same
    files.  Hidden names (a part starting with '.') are skipped, in subfolders too: editor and OS
    droppings (.DS_Store, .thumbnails/) are never images a user meant.
    """
    pattern = "**/*" if recursive else "*"
    for path in sorted(folder.glob(pattern)):
        if any(part.startswith(".") for part in path.relative_to(folder).parts) or not path.is_file():
            continue
        yield path, path.suffix.lower() in IMAGE_EXTENSIONS
