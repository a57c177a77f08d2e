"""Image reading and writing with full fidelity: what goes in comes out the same kind of file.

A :class:`Picture` keeps everything a user expects to survive a restoration: the colour
planes as float in [0, 1] (what the network sees), the alpha plane untouched in its
original integer type, the bit depth (8 or 16), the ICC profile and the EXIF block.

Decisions (DESIGN.md section 5 is the contract):

- EXIF orientation is applied to the pixels on reading and the tag is reset to 1, so the
  output displays the same way everywhere.
- 16-bit PNG is read with imagecodecs (Pillow reduces 16-bit colour PNG to 8 bits); every PNG,
  8 or 16 bits, is written by :mod:`serpent_cli.io.png_writer` (parallel, 3x Pillow's speed on a
  large photo); TIFF, 8 or 16 bits, goes through tifffile (zlib compression). No path ever
  round-trips through 8 bits. Baseline TIFF text tags (description, make, model,
  software, date, artist, copyright) are carried for TIFF; a TIFF's EXIF sub-IFD is not.
- The decompression-bomb limit is checked from the header, before any pixel is decoded:
  :data:`MAX_PIXELS` (144 megapixels, override with ``SERPENT_MAX_PIXELS``). Images below
  :data:`MIN_SIDE` pixels on a side are refused: there is nothing to deblur.
- Writes are atomic: the file is encoded in memory, written to a temporary file in the
  target folder and renamed over the target, so an interrupted run never leaves a
  truncated image and a failed encode never touches an existing file.
- Palette and bilevel images are restored as RGB(A) / L; CMYK and other colour spaces as
  RGB (their ICC profile, which describes the old space, is dropped).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from serpent_cli import atomic
from serpent_cli.errors import SerpentError, first_line
from serpent_cli.io.formats import EXTENSION_BY_FORMAT, FORMAT_BY_EXTENSION, IMAGE_EXTENSIONS

if TYPE_CHECKING:
    import torch

MIN_SIDE = 8
ORIENTATION_TAG = 0x0112
_TIFF_TEXT_TAGS = (270, 271, 272, 305, 306, 315, 33432)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def max_pixels() -> int:
    """The decompression-bomb limit in pixels (``SERPENT_MAX_PIXELS`` overrides 144 megapixels)."""
    try:
        return int(os.environ.get("SERPENT_MAX_PIXELS", 144_000_000))
    except ValueError:
        return 144_000_000


MAX_PIXELS = max_pixels()


@contextlib.contextmanager
def pillow_limit_lifted() -> Iterator[None]:
    """Switch off Pillow's own decompression-bomb check while opening an image.

    Pillow refuses images over about 179 megapixels with its own error, which ``SERPENT_MAX_PIXELS``
    could not lift and which gave no hint; :func:`_check_size` is the one limit, checked from the
    header before any pixel is decoded, and its message says how to raise it.
    """
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


class ImageReadError(SerpentError):
    """An input is missing, not an image, truncated, too large or too small."""


class ImageWriteError(SerpentError):
    """An output cannot be encoded or written (nothing was left behind)."""


class OutputExistsError(ImageWriteError):
    """The output appeared while it was being made (another process wrote it); it was left alone."""


@dataclass
class Picture:
    """One image: colour planes for the network plus everything that must pass through untouched."""

    pixels: np.ndarray  # float32 (H, W, C), C = 1 (grayscale) or 3 (RGB), values in [0, 1]
    alpha: np.ndarray | None = None  # (H, W) in the original integer dtype, never sent through the network
    bit_depth: int = 8  # 8 or 16
    format: str = "PNG"  # the format it was read from
    icc_profile: bytes | None = None
    exif: bytes | None = None  # EXIF block (TIFF-structured), orientation already reset to 1

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def is_gray(self) -> bool:
        return self.pixels.shape[2] == 1

    @property
    def mode(self) -> str:
        """Pillow-style mode name: L, LA, RGB or RGBA."""
        base = "L" if self.is_gray else "RGB"
        return base + ("A" if self.alpha is not None else "")

    def to_tensor(self) -> torch.Tensor:
        """Colour planes as float32 (C, H, W); C = 1 or 3."""
        import torch

        return torch.from_numpy(np.ascontiguousarray(self.pixels)).permute(2, 0, 1).contiguous()

    def with_pixels(self, pixels: np.ndarray) -> Picture:
        """A copy with new colour planes (same shape), all metadata and alpha kept."""
        if pixels.shape != self.pixels.shape:
            raise ValueError(f"pixel shape {pixels.shape} differs from {self.pixels.shape}")
        return replace(self, pixels=np.ascontiguousarray(pixels, dtype=np.float32))


# ----------------------------------------------------------------------------- reading


def read_rgb(path: Path) -> torch.Tensor:
    """An image as float32 RGB in [0, 1], shape (3, H, W), EXIF orientation applied."""
    pic = read_picture(path)
    t = pic.to_tensor()
    return t.expand(3, -1, -1).contiguous() if pic.is_gray else t


def read_picture(source: Path | str | bytes, *, name: str | None = None) -> Picture:
    """Decode a file (or the bytes of one, e.g. stdin) into a :class:`Picture`.

    Every failure is an :class:`ImageReadError` whose message names the input and says why.
    """
    label = name or str(source if not isinstance(source, bytes) else "<stdin>")
    if isinstance(source, bytes):
        data = source
    else:
        path = Path(source)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ImageReadError(f"{label}: no such file") from None
        except IsADirectoryError:
            raise ImageReadError(f"{label}: is a directory, not an image") from None
        except PermissionError:
            raise ImageReadError(f"{label}: permission denied") from None
        except OSError as exc:
            raise ImageReadError(f"{label}: cannot read ({exc.strerror or exc})") from None
    if not data:
        raise ImageReadError(f"{label}: empty file, not an image")
    try:
        with _quiet_decoders():
            if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
                pic = _read_tiff(data, label)
            elif data[:8] == _PNG_SIGNATURE and _png_bit_depth(data) == 16:
                pic = _read_png16(data, label)
            else:
                pic = _read_pillow(data, label)
    except ImageReadError:
        raise
    except MemoryError:
        raise ImageReadError(f"{label}: not enough memory to decode this image") from None
    except Exception as exc:  # decoders fed corrupt bytes raise anything (tifffile: TypeError); all mean "unreadable"
        raise ImageReadError(
            f"{label}: cannot decode image ({_short(exc)}); the file may be truncated or corrupt"
        ) from None
    return pic


@contextlib.contextmanager
def _quiet_decoders() -> Iterator[None]:
    """Silence decoder chatter (tifffile's log lines, Pillow's warnings) while one file is read.

    A bad file gets exactly one line, ours; the libraries' own remarks about the same bytes would
    only interleave with it on stderr.
    """
    tiff_log = logging.getLogger("tifffile")
    was_disabled = tiff_log.disabled
    tiff_log.disabled = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        tiff_log.disabled = was_disabled


def _short(exc: BaseException) -> str:
    return first_line(exc)


def _check_size(label: str, width: int, height: int) -> None:
    limit = max_pixels()
    if width * height > limit:
        raise ImageReadError(
            f"{label}: {width}x{height} is {width * height / 1e6:.0f} megapixels, over the "
            f"{limit / 1e6:.0f} MP safety limit (possible decompression bomb); if the image is genuine, "
            f"raise the limit with SERPENT_MAX_PIXELS={_suggested_limit(width * height)}"
        )
    if min(width, height) < MIN_SIDE:
        raise ImageReadError(
            f"{label}: {width}x{height} is too small to deblur (at least {MIN_SIDE}x{MIN_SIDE} pixels)"
        )


def _suggested_limit(pixels: int) -> int:
    """A round limit just above ``pixels`` for the hint (the next 10 megapixels)."""
    return (pixels // 10_000_000 + 1) * 10_000_000


def _png_bit_depth(data: bytes) -> int:
    """Bit depth from a PNG's IHDR (byte 24), without decoding."""
    return data[24] if len(data) > 25 and data[12:16] == b"IHDR" else 8


def _png_size(data: bytes) -> tuple[int, int]:
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _read_pillow(data: bytes, label: str) -> Picture:
    with pillow_limit_lifted():
        try:
            img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise ImageReadError(f"{label}: not an image, or a format serpent cannot read") from None
        fmt = (img.format or "PNG").upper()
        _check_size(label, *img.size)
        exif_obj = img.getexif()
        orientation = int(exif_obj.get(ORIENTATION_TAG, 1) or 1)
        icc = img.info.get("icc_profile") or None
        img.load()
    mode = img.mode
    if mode in ("I", "F"):
        raise ImageReadError(f"{label}: 32-bit {mode} images are not supported; convert to 8- or 16-bit first")
    bit_depth = 8
    alpha: np.ndarray | None = None
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        color = np.asarray(img, dtype=np.uint16)[..., None]
        bit_depth = 16
    elif mode in ("1", "L"):
        color = np.asarray(img.convert("L"))[..., None]
    elif mode == "LA":
        arr = np.asarray(img)
        color, alpha = arr[..., :1], arr[..., 1]
    elif mode == "RGBA" or (mode in ("P", "PA") and ("transparency" in img.info or mode == "PA")):
        arr = np.asarray(img.convert("RGBA"))
        color, alpha = arr[..., :3], arr[..., 3]
    elif mode == "RGB" or mode == "P":
        color = np.asarray(img.convert("RGB"))
    else:  # CMYK, YCbCr, LAB, HSV, La, RGBa ...: restore as RGB; the old ICC profile no longer applies
        if mode in ("CMYK", "LAB", "HSV"):
            icc = None
        color = np.asarray(img.convert("RGB"))
    exif = _reset_orientation(exif_obj) if len(exif_obj) else None
    color, alpha = _orient(color, orientation), (_orient(alpha, orientation) if alpha is not None else None)
    return _make_picture(color, alpha, bit_depth, fmt, icc, exif)


def _reset_orientation(exif_obj: Image.Exif) -> bytes:
    if ORIENTATION_TAG in exif_obj:
        exif_obj[ORIENTATION_TAG] = 1
    return exif_obj.tobytes()


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1..8) to an (H, W, ...) array, as Pillow's exif_transpose does."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
        8: lambda a: np.rot90(a, 1),
    }
    op = ops.get(orientation)
    return np.ascontiguousarray(op(arr)) if op else arr


def _make_picture(
    color: np.ndarray, alpha: np.ndarray | None, bit_depth: int, fmt: str, icc: bytes | None, exif: bytes | None
) -> Picture:
    pixels = np.array(color, dtype=np.float32, order="C")  # a new array, converted in one pass
    np.divide(pixels, np.float32(65535.0 if bit_depth == 16 else 255.0), out=pixels)
    return Picture(pixels=pixels, alpha=alpha, bit_depth=bit_depth, format=fmt, icc_profile=icc, exif=exif)


def _read_png16(data: bytes, label: str) -> Picture:
    import imagecodecs

    _check_size(label, *_png_size(data))
    with pillow_limit_lifted(), Image.open(io.BytesIO(data)) as img:  # metadata only; pixels: imagecodecs
        exif_obj = img.getexif()
        icc = img.info.get("icc_profile") or None
    try:
        with _c_stderr_silenced():
            arr = imagecodecs.png_decode(data)
    except Exception as exc:  # imagecodecs raises its own PngError types
        raise ImageReadError(f"{label}: cannot decode 16-bit PNG ({_short(exc)}); the file may be truncated") from None
    if arr.dtype != np.uint16:
        arr = arr.astype(np.uint16) * 257
    return _split_channels(arr, label, 16, "PNG", icc, exif_obj)


@contextlib.contextmanager
def _c_stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for one C call: libpng prints its warnings there itself."""
    try:
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:  # no stderr to protect, or no descriptors left: decode without silencing
        yield
        return
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _split_channels(
    arr: np.ndarray, label: str, bit_depth: int, fmt: str, icc: bytes | None, exif_obj: Image.Exif | None
) -> Picture:
    if arr.ndim == 2:
        arr = arr[..., None]
    channels = arr.shape[2]
    if channels == 1:
        color, alpha = arr, None
    elif channels == 2:
        color, alpha = arr[..., :1], arr[..., 1]
    elif channels == 3:
        color, alpha = arr, None
    elif channels == 4:
        color, alpha = arr[..., :3], arr[..., 3]
    else:
        raise ImageReadError(f"{label}: {channels} channels per pixel are not supported (1-4 are)")
    orientation = int(exif_obj.get(ORIENTATION_TAG, 1) or 1) if exif_obj is not None else 1
    exif = _reset_orientation(exif_obj) if exif_obj is not None and len(exif_obj) else None
    color = _orient(color, orientation)
    alpha = _orient(alpha, orientation) if alpha is not None else None
    return _make_picture(color, alpha, bit_depth, fmt, icc, exif)


def _read_tiff(data: bytes, label: str) -> Picture:
    import tifffile

    try:
        tif = tifffile.TiffFile(io.BytesIO(data))
    except tifffile.TiffFileError as exc:
        raise ImageReadError(f"{label}: not a readable TIFF ({_short(exc)})") from None
    with tif:
        page = tif.pages.first
        width, height = int(page.imagewidth), int(page.imagelength)
        _check_size(label, width, height)
        dtype = np.dtype(page.dtype) if page.dtype is not None else None
        if dtype not in (np.dtype(np.uint8), np.dtype(np.uint16)):
            raise ImageReadError(f"{label}: TIFF sample type {dtype} is not supported (8- or 16-bit unsigned are)")
        if page.photometric not in (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.RGB):
            raise ImageReadError(f"{label}: TIFF colour space {page.photometric.name} is not supported (gray or RGB)")
        arr = page.asarray()
        if page.planarconfig == tifffile.PLANARCONFIG.SEPARATE and arr.ndim == 3:
            arr = np.moveaxis(arr, 0, -1)
        icc_tag = page.tags.get(34675)
        icc = bytes(icc_tag.value) if icc_tag is not None else None
        orient_tag = page.tags.get(274)
        exif_obj = Image.Exif()
        for code in _TIFF_TEXT_TAGS:
            tag = page.tags.get(code)
            if tag is not None and isinstance(tag.value, str):
                exif_obj[code] = tag.value
        if orient_tag is not None:
            exif_obj[ORIENTATION_TAG] = int(orient_tag.value)
    return _split_channels(arr, label, 16 if arr.dtype == np.uint16 else 8, "TIFF", icc, exif_obj)


# ----------------------------------------------------------------------------- writing


def format_for(path: Path | str) -> str:
    """The output format for a file name, from its extension."""
    ext = Path(path).suffix.lower()
    if ext not in FORMAT_BY_EXTENSION:
        raise ImageWriteError(
            f"{path}: unknown image extension {ext or '(none)'!r}; use one of {', '.join(sorted(IMAGE_EXTENSIONS))}"
        )
    return FORMAT_BY_EXTENSION[ext]


def encode_picture(pic: Picture, fmt: str, *, jpeg_quality: int = 95) -> tuple[bytes, list[str]]:
    """Encode ``pic`` as ``fmt`` in memory; returns the bytes and any fidelity warnings."""
    notes: list[str] = []
    fmt = fmt.upper()
    if pic.alpha is not None and fmt in ("JPEG", "BMP"):
        raise ImageWriteError(f"{fmt} cannot hold an alpha channel; write PNG, TIFF or WEBP to keep it")
    depth = pic.bit_depth
    if depth == 16 and fmt not in ("PNG", "TIFF"):
        notes.append(f"{fmt} holds 8 bits per channel; the 16-bit image was reduced to 8 bits")
        depth = 8
    color = _quantise(pic.pixels, depth)
    alpha = pic.alpha
    if alpha is not None and alpha.dtype != color.dtype:  # only when 16-bit went to 8-bit formats
        alpha = (alpha.astype(np.float32) / 65535.0 * 255.0 + 0.5).astype(np.uint8) if depth == 8 else alpha
    arr = color if alpha is None else np.concatenate([color, alpha[..., None]], axis=-1)
    if arr.shape[2] == 1:
        arr = arr[..., 0]
    if fmt == "TIFF":
        return _encode_tiff(arr, pic), notes
    if fmt == "PNG":
        from serpent_cli.io.png_writer import encode_png
        from serpent_cli.threads import worker_threads

        return encode_png(arr, level=PNG_COMPRESS_LEVEL, threads=worker_threads(), icc_profile=pic.icc_profile,
                          exif=pic.exif), notes
    return _encode_pillow(arr, pic, fmt, jpeg_quality), notes


def _quantise(pixels: np.ndarray, depth: int) -> np.ndarray:
    """Float [0, 1] -> rounded integers; NaN -> 0, out of range clipped.  In place after one copy: fmax maps
    NaN to 0 by itself, so no nan_to_num pass (3x faster than nan_to_num + clip on a 4000x3000 picture)."""
    out = np.fmax(pixels, np.float32(0.0))
    np.fmin(out, np.float32(1.0), out=out)
    out *= np.float32(65535.0 if depth == 16 else 255.0)
    out += np.float32(0.5)
    return out.astype(np.uint16 if depth == 16 else np.uint8)


# zlib level of PNG outputs.  Pillow's default, 6, spent 7 of the 26 s of a 4000x3000 `serpent deblur`
# on the CPU; level 4 gave the same sizes on restored photos (12.39 vs 12.55 MB there, 32 vs 32 kB on
# the Kodak examples) in a third of the time (2.2 vs 6.6 s), and 0-4% larger on raw, unrestored photos.
# serpent_cli.io.png_writer at level 4 (Z_FILTERED, two threads): 12.13 MB in 0.9 s there.
PNG_COMPRESS_LEVEL = 4


def _encode_pillow(arr: np.ndarray, pic: Picture, fmt: str, jpeg_quality: int) -> bytes:
    img = Image.fromarray(arr)
    kwargs: dict[str, object] = {}
    if pic.icc_profile and fmt in ("PNG", "JPEG", "WEBP"):
        kwargs["icc_profile"] = pic.icc_profile
    if pic.exif and fmt in ("PNG", "JPEG", "WEBP"):
        kwargs["exif"] = pic.exif
    if fmt == "JPEG":
        kwargs.update(quality=int(jpeg_quality), subsampling=0 if jpeg_quality >= 90 else 2, optimize=True)
    elif fmt == "WEBP":
        kwargs.update(lossless=True)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _encode_tiff(arr: np.ndarray, pic: Picture) -> bytes:
    import tifffile

    gray = arr.ndim == 2 or arr.shape[2] in (1, 2)
    kwargs: dict[str, object] = {"photometric": "minisblack" if gray else "rgb", "compression": "zlib"}
    if pic.alpha is not None:
        kwargs["extrasamples"] = [2]  # unassociated alpha
    if pic.icc_profile:
        kwargs["iccprofile"] = pic.icc_profile
    extratags = []
    kwargs["metadata"] = None  # no tifffile JSON in ImageDescription; the user's own text goes there
    if pic.exif:
        exif_obj = Image.Exif()
        exif_obj.load(pic.exif)
        for code in _TIFF_TEXT_TAGS:
            value = exif_obj.get(code)
            if not (isinstance(value, str) and value):
                continue
            if code == 270:
                kwargs["description"] = value
            elif code == 305:
                kwargs["software"] = value
            elif code == 306:
                kwargs["datetime"] = value
            else:
                extratags.append((code, "s", 0, value, True))
    if extratags:
        kwargs["extratags"] = extratags
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, **kwargs)
    return buf.getvalue()


def write_bytes_atomic(path: Path, data: bytes, *, overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` atomically; an OS error becomes one clear :class:`ImageWriteError`.

    ``overwrite=False``: an existing ``path`` is kept and :class:`OutputExistsError` raised.
    """
    path = Path(path)
    try:
        atomic.write_bytes_atomic(path, data, replace=overwrite)
    except FileExistsError:
        raise OutputExistsError(f"output {path} exists (written by another process meanwhile)") from None
    except OSError as exc:
        raise ImageWriteError(f"{path}: cannot write ({exc.strerror or exc})") from None


def write_picture(
    pic: Picture, dest: Path | BinaryIO, *, fmt: str | None = None, jpeg_quality: int = 95, overwrite: bool = True
) -> list[str]:
    """Encode and write ``pic`` atomically to a path (format from its extension) or to a stream.

    Returns fidelity warnings (e.g. 16-bit written to an 8-bit format).  ``overwrite=False`` never
    replaces an existing file (:class:`OutputExistsError`), even one another process has just written.
    """
    if isinstance(dest, (str, Path)):
        fmt = fmt or format_for(dest)
        data, notes = encode_picture(pic, fmt, jpeg_quality=jpeg_quality)
        write_bytes_atomic(Path(dest), data, overwrite=overwrite)
        return notes
    data, notes = encode_picture(pic, fmt or pic.format, jpeg_quality=jpeg_quality)
    dest.write(data)
    dest.flush()
    return notes


__all__ = [
    "EXTENSION_BY_FORMAT",
    "FORMAT_BY_EXTENSION",
    "IMAGE_EXTENSIONS",
    "MIN_SIDE",
    "ImageReadError",
    "ImageWriteError",
    "OutputExistsError",
    "Picture",
    "encode_picture",
    "format_for",
    "pillow_limit_lifted",
    "read_picture",
    "read_rgb",
    "write_bytes_atomic",
    "write_picture",
]
