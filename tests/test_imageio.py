"""Full-fidelity image I/O on real photos: depth, alpha, EXIF, ICC, atomic writes, bad files."""

from __future__ import annotations

import functools
import io
import os
import struct
import zlib
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import Image, ImageCms, ImageOps

from serpent_cli.io import imageio as imageio
from serpent_cli.io.imageio import ImageReadError, ImageWriteError, read_picture, write_picture


def _photo(data_dir: Path, size: tuple[int, int] = (64, 48), index: int = 0) -> Image.Image:
    path = sorted((data_dir / "kodak24").glob("*.png"))[index]
    with Image.open(path) as img:
        return img.convert("RGB").crop((200, 150, 200 + size[0], 150 + size[1]))


def _photo16(data_dir: Path) -> np.ndarray:
    """A real photo crop at 16 bits with detail below the 8-bit step (so an 8-bit trip would show)."""
    rgb = np.asarray(_photo(data_dir), dtype=np.uint16) * 257
    fine = (np.arange(rgb.size, dtype=np.uint16) % 199).reshape(rgb.shape)
    return rgb + fine


def _alpha16(shape: tuple[int, int]) -> np.ndarray:
    y, x = np.mgrid[: shape[0], : shape[1]]
    return ((x * 977 + y * 331) % 65536).astype(np.uint16)


@functools.cache
def _srgb_icc() -> bytes:
    """One sRGB profile per test run: the profile's header carries its creation time, so two made a second
    apart differ (the cause of a once-in-a-while failure of the EXIF/ICC test when the clock ticked between)."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def test_rgb_png_round_trip_is_exact(data_dir: Path, tmp_path: Path) -> None:
    img = _photo(data_dir)
    img.save(tmp_path / "in.png")
    pic = read_picture(tmp_path / "in.png")
    assert (pic.mode, pic.bit_depth, pic.width, pic.height) == ("RGB", 8, 64, 48)
    write_picture(pic, tmp_path / "out.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), np.asarray(img))


@pytest.mark.parametrize("depth", [8, 16])
def test_out_of_range_and_nan_pixels_are_clipped_on_write(data_dir: Path, tmp_path: Path, depth: int) -> None:
    """A network's output may hold NaN, inf or values outside [0, 1]: they are written as 0 / the maximum, and
    in-range values are rounded to the nearest level."""
    if depth == 16:
        (tmp_path / "in.png").write_bytes(imagecodecs.png_encode(_photo16(data_dir)))
    else:
        _photo(data_dir).save(tmp_path / "in.png")
    pic = read_picture(tmp_path / "in.png")
    pixels = pic.pixels.copy()
    pixels[0, :6, 0] = [np.nan, np.inf, -np.inf, 1.7, -3.0, 0.5]
    write_picture(pic.with_pixels(pixels), tmp_path / "out.png")
    back = imagecodecs.png_decode((tmp_path / "out.png").read_bytes())
    top = 65535 if depth == 16 else 255
    assert back[0, :6, 0].tolist() == [0, top, 0, top, 0, (top + 1) // 2]  # 0.5 * top + 0.5, rounded down
    assert np.array_equal(back[1:], imagecodecs.png_decode((tmp_path / "in.png").read_bytes())[1:])


def test_png_outputs_are_as_small_as_pillows_default(data_dir: Path, tmp_path: Path) -> None:
    """Our faster zlib level costs no file size worth noticing against Pillow's default (level 6) on real photos."""
    for name in ("kodim03.png", "kodim23.png"):
        pic = read_picture(data_dir / "kodak24" / name)
        out = tmp_path / name
        write_picture(pic, out)
        reference = io.BytesIO()
        Image.open(data_dir / "kodak24" / name).save(reference, "PNG")  # Pillow's default level
        assert out.stat().st_size <= 1.05 * len(reference.getvalue()), name
        assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(data_dir / "kodak24" / name)))


def test_16bit_rgba_png_stays_16bit_and_alpha_is_bit_identical(data_dir: Path, tmp_path: Path) -> None:
    rgb = _photo16(data_dir)
    alpha = _alpha16(rgb.shape[:2])
    (tmp_path / "in.png").write_bytes(imagecodecs.png_encode(np.dstack([rgb, alpha])))
    pic = read_picture(tmp_path / "in.png")
    assert (pic.mode, pic.bit_depth) == ("RGBA", 16)
    pic.icc_profile = _srgb_icc()
    write_picture(pic, tmp_path / "out.png")
    data = (tmp_path / "out.png").read_bytes()
    back = imagecodecs.png_decode(data)
    assert back.dtype == np.uint16 and back.shape == (48, 64, 4)
    assert np.array_equal(back[..., :3], rgb)  # no 8-bit round trip anywhere
    assert np.array_equal(back[..., 3], alpha)
    assert Image.open(io.BytesIO(data)).info["icc_profile"] == _srgb_icc()


def test_16bit_tiff_rgb_and_gray_round_trip(data_dir: Path, tmp_path: Path) -> None:
    rgb = _photo16(data_dir)
    alpha = _alpha16(rgb.shape[:2])
    tifffile.imwrite(tmp_path / "rgba.tif", np.dstack([rgb, alpha]), photometric="rgb", extrasamples=[2],
                     iccprofile=_srgb_icc(), description="a kodak crop")
    pic = read_picture(tmp_path / "rgba.tif")
    assert (pic.mode, pic.bit_depth, pic.format, pic.icc_profile) == ("RGBA", 16, "TIFF", _srgb_icc())
    write_picture(pic, tmp_path / "out.tif")
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        back = tif.pages.first.asarray()
        assert tif.pages.first.tags[34675].value == _srgb_icc()
        assert tif.pages.first.tags[270].value == "a kodak crop"
    assert back.dtype == np.uint16 and np.array_equal(back[..., :3], rgb) and np.array_equal(back[..., 3], alpha)

    gray = np.ascontiguousarray(rgb[..., 1])
    tifffile.imwrite(tmp_path / "gray.tif", gray, photometric="minisblack")
    pic = read_picture(tmp_path / "gray.tif")
    assert (pic.mode, pic.bit_depth) == ("L", 16)
    write_picture(pic, tmp_path / "gray_out.tif")
    assert np.array_equal(tifffile.imread(tmp_path / "gray_out.tif"), gray)


def test_grayscale_and_16bit_gray_png(data_dir: Path, tmp_path: Path) -> None:
    _photo(data_dir).convert("L").save(tmp_path / "l.png")
    pic = read_picture(tmp_path / "l.png")
    assert pic.mode == "L" and pic.pixels.shape == (48, 64, 1)
    write_picture(pic, tmp_path / "l_out.png")
    assert Image.open(tmp_path / "l_out.png").mode == "L"
    gray16 = np.ascontiguousarray(_photo16(data_dir)[..., 0])
    (tmp_path / "g16.png").write_bytes(imagecodecs.png_encode(gray16))
    pic = read_picture(tmp_path / "g16.png")
    assert (pic.mode, pic.bit_depth) == ("L", 16)
    write_picture(pic, tmp_path / "g16_out.png")
    assert np.array_equal(imagecodecs.png_decode((tmp_path / "g16_out.png").read_bytes()), gray16)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied_and_reset_exif_and_icc_carried(
    data_dir: Path, tmp_path: Path, orientation: int
) -> None:
    img = _photo(data_dir, (64, 40))
    exif = Image.Exif()
    exif[imageio.ORIENTATION_TAG] = orientation
    exif[0x010F] = "KodakTestCam"  # Make
    img.save(tmp_path / "in.jpg", quality=95, exif=exif.tobytes(), icc_profile=_srgb_icc())
    pic = read_picture(tmp_path / "in.jpg")
    expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "in.jpg")), dtype=np.float32) / 255
    assert np.array_equal(pic.pixels, expected)
    write_picture(pic, tmp_path / "out.jpg")
    with Image.open(tmp_path / "out.jpg") as out:
        assert out.size == (expected.shape[1], expected.shape[0])
        assert out.getexif()[imageio.ORIENTATION_TAG] == 1
        assert out.getexif()[0x010F] == "KodakTestCam"
        assert out.info["icc_profile"] == _srgb_icc()


def test_jpeg_quality_option(data_dir: Path, tmp_path: Path) -> None:
    _photo(data_dir, (128, 96)).save(tmp_path / "in.png")
    pic = read_picture(tmp_path / "in.png")
    write_picture(pic, tmp_path / "q30.jpg", jpeg_quality=30)
    write_picture(pic, tmp_path / "q95.jpg", jpeg_quality=95)
    assert (tmp_path / "q30.jpg").stat().st_size < (tmp_path / "q95.jpg").stat().st_size


def _png_with_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_bad_files_are_one_clear_error(data_dir: Path, tmp_path: Path) -> None:
    _photo(data_dir).save(tmp_path / "good.png")
    full = (tmp_path / "good.png").read_bytes()
    cases = {
        "truncated.png": (full[: len(full) // 2], "truncated"),
        "text.png": (b"these are notes, not pixels\n", "not an image"),
        "empty.png": (b"", "empty file"),
        "bomb.png": (_png_with_header(20000, 20000), "decompression bomb"),
        "tiny.png": (_png_with_header(1, 1), "too small"),
    }
    for name, (payload, phrase) in cases.items():
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(ImageReadError) as info:
            read_picture(tmp_path / name)
        message = str(info.value)
        assert phrase in message and name in message and "\n" not in message
    with pytest.raises(ImageReadError, match="no such file"):
        read_picture(tmp_path / "missing.png")
    with pytest.raises(ImageReadError, match="directory"):
        read_picture(tmp_path)


def test_failed_write_leaves_existing_file_and_no_temp(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    img = _photo(data_dir).convert("RGBA")
    img.save(tmp_path / "in.png")
    target = tmp_path / "out.jpg"
    target.write_bytes(b"precious")
    pic = read_picture(tmp_path / "in.png")
    with pytest.raises(ImageWriteError, match="alpha"):
        write_picture(pic, target)  # JPEG cannot hold alpha: refused before anything is written
    assert target.read_bytes() == b"precious"

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(ImageWriteError, match="No space left"):
        write_picture(pic, tmp_path / "out.png")
    assert not (tmp_path / "out.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "out.jpg"]  # no temporary left behind


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_is_one_clear_error(data_dir: Path, tmp_path: Path) -> None:
    _photo(data_dir).save(tmp_path / "locked.png")
    (tmp_path / "locked.png").chmod(0)
    with pytest.raises(ImageReadError, match="permission denied"):
        read_picture(tmp_path / "locked.png")


def test_atomic_writes_get_the_users_usual_file_mode(tmp_path) -> None:
    """Outputs are readable as a plain open() would make them (mkstemp alone would leave 0600)."""
    from serpent_cli.atomic import user_file_mode, write_bytes_atomic

    target = tmp_path / "out.bin"
    write_bytes_atomic(target, b"abc")
    assert target.read_bytes() == b"abc"
    assert target.stat().st_mode & 0o777 == user_file_mode()
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]  # no temporary file left behind


def test_one_pixel_limit_ours_with_the_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """200 MP is over Pillow's own bomb limit (~179 MP): SERPENT_MAX_PIXELS alone decides, both ways."""
    path = tmp_path / "huge.png"
    Image.new("L", (20000, 10000), 128).save(path, compress_level=1)  # flat: a few hundred KB on disk
    assert path.stat().st_size < 2_000_000
    monkeypatch.delenv("SERPENT_MAX_PIXELS", raising=False)
    with pytest.raises(ImageReadError, match=r"200 megapixels, over the 144 MP safety limit .*SERPENT_MAX_PIXELS="):
        read_picture(path)
    monkeypatch.setenv("SERPENT_MAX_PIXELS", "1000000000")
    pic = read_picture(path)
    assert (pic.width, pic.height, pic.mode) == (20000, 10000, "L")
    assert Image.MAX_IMAGE_PIXELS is not None  # Pillow's own setting is left as it was for other code
