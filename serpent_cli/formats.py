"""Image file extensions and formats: plain data, apart from :mod:`serpent_cli.imageio`.

Planning a batch (which inputs, which output names) needs only these tables; keeping them out of
the codec module means a typo'd path is reported without importing numpy, Pillow or torch.
"""

from __future__ import annotations

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
