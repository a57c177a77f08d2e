"""A PNG encoder for large images: row filters compiled and parallel, the zlib stream cut across threads.

Pillow encodes a PNG on one core: 2.1 s of a 4000x3000 restored photo, a tenth of a `serpent deblur`
of it on a 2-core CPU.  Here the rows are filtered with the usual heuristic (per row, the filter with
the smallest sum of absolute signed bytes, as Pillow and libpng choose), in a numba kernel parallel
over rows; the filtered bytes are cut into one piece per thread, each compressed by its own zlib
stream ending in a sync flush (byte-aligned, not final), and the pieces joined into one zlib stream
with the Adler-32 of the whole (pigz's method).  Any decoder reads the result; the restarts cost a
few hundred bytes per piece.  8 and 16 bits per channel, gray / gray + alpha / RGB / RGBA, with the
ICC profile (iCCP) and EXIF (eXIf) chunks.
"""

from __future__ import annotations

import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

# isort: off
from serpent_cli import numba_setup  # first: numba's cache folder and CPU target
# isort: on
import numba
import numpy as np
from numba import prange

SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type (gray, gray+alpha, RGB, RGBA)
IDAT_BYTES = 1 << 20  # compressed bytes per IDAT chunk
MIN_PIECE_BYTES = 1 << 20  # below this, another thread's zlib stream costs more than it saves


@numba.njit(inline="always")
def _prediction(kind: int, a: int, b: int, c: int) -> int:  # pragma: no cover - compiled
    """What PNG filter ``kind`` (0 None, 1 Sub, 2 Up, 3 Average, 4 Paeth) predicts from left a, up b, up-left c."""
    if kind == 0:
        return 0
    if kind == 1:
        return a
    if kind == 2:
        return b
    if kind == 3:
        return (a + b) >> 1
    pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)  # Paeth: the one nearest to a + b - c
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


@numba.njit(inline="always")
def _neighbours(row: np.ndarray, above: np.ndarray, i: int, bpp: int) -> tuple[int, int, int, int]:  # pragma: no cover
    """Byte i of the row and its left, up and up-left neighbours (0 beyond the left edge)."""
    left = i >= bpp
    return (np.int32(row[i]), np.int32(row[i - bpp]) if left else np.int32(0), np.int32(above[i]),
            np.int32(above[i - bpp]) if left else np.int32(0))


@numba.njit(parallel=True, cache=True, nogil=True)
def filter_rows(rows: np.ndarray, bpp: int, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """out[y] = [filter type, filtered row y]: of None / Sub / Up / Average / Paeth, the one with the
    smallest sum of |signed byte| (the PNG spec's heuristic).  rows (H, W) uint8, out (H, W + 1)."""
    height, width = rows.shape
    zero = np.zeros(width, np.uint8)
    for y in prange(height):
        row = rows[y]
        above = rows[y - 1] if y > 0 else zero
        costs = np.zeros(5, np.int64)
        for i in range(width):
            x, a, b, c = _neighbours(row, above, i, bpp)
            for kind in range(5):
                v = (x - _prediction(kind, a, b, c)) & 0xFF
                costs[kind] += v if v < 128 else 256 - v  # |v| read as a signed byte
        best = np.argmin(costs)  # the first of equal costs, as in libpng
        out[y, 0] = best
        for i in range(width):
            x, a, b, c = _neighbours(row, above, i, bpp)
            out[y, i + 1] = (x - _prediction(best, a, b, c)) & 0xFF


def chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk: length, type, payload, CRC-32 of type + payload."""
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _deflate(piece: memoryview, level: int, last: bool) -> bytes:
    """One raw deflate stream; all but the last end in a sync flush, so the streams concatenate.

    Z_FILTERED, as libpng does for filtered rows: on a restored 4000x3000 photo at level 4, 12.1 MB
    in 1.3 s against 13.1 MB in 0.9 s with the default strategy (Pillow's writer: 12.3 MB in 2.1 s).
    """
    stream = zlib.compressobj(level, zlib.DEFLATED, -15, 8, zlib.Z_FILTERED)
    return stream.compress(piece) + stream.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


def zlib_parallel(data: np.ndarray, level: int, threads: int) -> bytes:
    """The zlib stream (RFC 1950) of ``data``'s bytes, compressed in up to ``threads`` pieces at once."""
    flat = memoryview(np.ascontiguousarray(data).reshape(-1))
    pieces = max(1, min(threads, flat.nbytes // MIN_PIECE_BYTES))
    bounds = [flat.nbytes * k // pieces for k in range(pieces + 1)]
    parts = [flat[bounds[k] : bounds[k + 1]] for k in range(pieces)]
    lasts = [k == pieces - 1 for k in range(pieces)]
    if pieces == 1:
        body = [_deflate(parts[0], level, True)]
    else:
        with ThreadPoolExecutor(pieces) as pool:  # zlib releases the GIL while it compresses
            body = list(pool.map(_deflate, parts, [level] * pieces, lasts))
    flevel = 0 if level < 2 else 1 if level < 6 else 2 if level == 6 else 3
    cmf, flg = 0x78, flevel << 6
    flg |= 31 - (cmf << 8 | flg) % 31  # FCHECK: the header is a multiple of 31
    return bytes((cmf, flg)) + b"".join(body) + struct.pack(">I", zlib.adler32(flat))


def encode_png(
    pixels: np.ndarray, *, level: int, threads: int = 1, icc_profile: bytes | None = None, exif: bytes | None = None
) -> bytes:
    """PNG bytes of ``pixels``: (H, W) or (H, W, 1-4) of uint8 or uint16 (stored as 8 or 16 bits)."""
    if pixels.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"PNG pixels must be uint8 or uint16, not {pixels.dtype}")
    arr = pixels if pixels.ndim == 3 else pixels[..., None]
    height, width, channels = arr.shape
    depth = 8 * arr.itemsize
    rows = np.ascontiguousarray(arr.astype(">u2", copy=False) if depth == 16 else arr).view(np.uint8)
    rows = rows.reshape(height, width * channels * arr.itemsize)
    filtered = np.empty((height, rows.shape[1] + 1), np.uint8)
    numba_setup.start_threads()
    previous = numba.get_num_threads()
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    try:
        filter_rows(rows, channels * arr.itemsize, filtered)
    finally:
        numba.set_num_threads(previous)
    data = zlib_parallel(filtered, level, threads)
    out = [SIGNATURE, chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, COLOR_TYPES[channels], 0, 0, 0))]
    if icc_profile:
        out.append(chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc_profile)))
    if exif:
        out.append(chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif))
    out += [chunk(b"IDAT", data[i : i + IDAT_BYTES]) for i in range(0, len(data), IDAT_BYTES)]
    out.append(chunk(b"IEND", b""))
    return b"".join(out)
