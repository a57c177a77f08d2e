"""The parallel PNG encoder: every mode and depth decodes bit-exactly with other decoders, pieces join
into one valid zlib stream, metadata survives, and files are no larger than Pillow's."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
from numba_cache import NumbaCache
from PIL import Image

from serpent_cli.io import png_writer
from serpent_cli.io.png_writer import encode_png, zlib_parallel


def _photo(data_dir: Path, name: str = "kodim23.png") -> np.ndarray:
    return np.asarray(Image.open(data_dir / "kodak24" / name).convert("RGB"))


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == png_writer.SIGNATURE
    pos, out = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, payload = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + payload), kind
        out.append((kind, payload))
        pos += 12 + length
    return out


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("depth", [8, 16])
def test_every_mode_and_depth_round_trips(data_dir: Path, monkeypatch: pytest.MonkeyPatch, channels: int,
                                          depth: int) -> None:
    """Gray, gray + alpha, RGB, RGBA at 8 and 16 bits, in three pieces: libpng (imagecodecs) and Pillow agree."""
    monkeypatch.setattr(png_writer, "MIN_PIECE_BYTES", 1000)  # several zlib pieces even on a small crop
    rgb = _photo(data_dir)[100:260, 200:437]  # odd width: rows of every filter's edge cases
    gray = rgb.mean(axis=2, keepdims=True).astype(np.uint8)
    alpha = rgb[..., 1:2][::-1]
    planes = {1: gray, 2: np.concatenate([gray, alpha], 2), 3: rgb, 4: np.concatenate([rgb, alpha], 2)}[channels]
    pixels = planes.astype(np.uint16) * 257 + np.arange(planes.shape[1], dtype=np.uint16)[None, :, None] % 7 \
        if depth == 16 else planes
    data = encode_png(pixels if channels > 1 else pixels[..., 0], level=4, threads=3)
    expected = pixels if channels > 1 else pixels[..., 0]
    assert np.array_equal(imagecodecs.png_decode(data), expected)
    if depth == 8:
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), expected)
    ihdr = dict(_chunks(data))[b"IHDR"]
    height, width = pixels.shape[:2]
    assert struct.unpack(">IIBB", ihdr[:10]) == (width, height, depth, png_writer.COLOR_TYPES[channels])


def test_pieces_join_into_one_zlib_stream(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Any number of pieces: zlib itself inflates the joined stream and checks its Adler-32."""
    monkeypatch.setattr(png_writer, "MIN_PIECE_BYTES", 1)
    raw = _photo(data_dir)[:64].copy()
    for threads in (1, 2, 5):
        for level in (1, 4, 6, 9):
            stream = zlib_parallel(raw, level, threads)
            assert zlib.decompress(stream) == raw.tobytes(), (threads, level)


def test_rows_use_the_filter_that_suits_them(data_dir: Path) -> None:
    """The heuristic picks per row: a photo uses several filter types, a flat image None or Sub."""
    rows = _photo(data_dir).reshape(512, -1)
    out = np.empty((rows.shape[0], rows.shape[1] + 1), np.uint8)
    png_writer.filter_rows(rows, 3, out)
    assert len(set(out[:, 0].tolist())) >= 3
    flat = np.full((8, 30), 77, np.uint8)
    out = np.empty((8, 31), np.uint8)
    png_writer.filter_rows(flat, 3, out)
    assert out[0, 0] in (1, 4) and (out[1:, 1:] == 0).all()  # first row: left neighbour; then: nothing changes


def test_icc_profile_and_exif_survive(data_dir: Path) -> None:
    exif = Image.Exif()
    exif[0x010F] = "serpent test camera"
    icc = bytes(range(256)) * 3
    data = encode_png(_photo(data_dir)[:40, :50], level=4, icc_profile=icc, exif=b"Exif\x00\x00" + exif.tobytes())
    with Image.open(io.BytesIO(data)) as img:
        assert img.info["icc_profile"] == icc
        assert img.getexif()[0x010F] == "serpent test camera"


def test_no_larger_than_pillows_png(data_dir: Path) -> None:
    """Same zlib level as Pillow's writer at our level, and no worse filters: files as small or smaller."""
    for name in ("kodim03.png", "kodim05.png", "kodim23.png"):
        photo = _photo(data_dir, name)
        pillow = io.BytesIO()
        Image.fromarray(photo).save(pillow, "PNG", compress_level=4)
        assert len(encode_png(photo, level=4, threads=2)) <= 1.01 * len(pillow.getvalue()), name


def test_bad_pixels_are_refused() -> None:
    with pytest.raises(TypeError, match="uint8 or uint16"):
        encode_png(np.zeros((4, 4, 3), np.float32), level=4)


def test_writer_first_in_a_process_caches_per_user_and_keeps_torchs_threads(empty_numba_cache: NumbaCache) -> None:
    """Loaded before the scan (as in `serpent degrade`), the writer still sets numba's per-user cache up, and its
    thread pool starting does not change the thread count torch was given."""
    code = (
        "import numpy as np, torch\ntorch.set_num_threads(1)\n"
        "from serpent_cli.io.png_writer import encode_png\n"
        "data = encode_png(np.arange(3 * 40 * 50, dtype=np.uint8).reshape(40, 50, 3), level=4, threads=2)\n"
        "print(len(data), torch.get_num_threads())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=empty_numba_cache.env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[1] == "1"
    assert list(empty_numba_cache.folder.rglob("*filter_rows*.nbc")), "no compiled filter in the user cache"


def test_tiny_images_and_many_idat_chunks(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One-pixel rows and columns decode; a stream split over many IDAT chunks is read back whole."""
    photo = _photo(data_dir)
    for shape in ((1, 1), (1, 9), (9, 1), (8, 8)):
        part = np.ascontiguousarray(photo[: shape[0], : shape[1]])
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_png(part, level=4)))), part), shape
    monkeypatch.setattr(png_writer, "IDAT_BYTES", 4096)
    data = encode_png(photo[:200], level=4, threads=2)
    assert sum(kind == b"IDAT" for kind, _ in _chunks(data)) > 10
    assert np.array_equal(imagecodecs.png_decode(data), photo[:200])
