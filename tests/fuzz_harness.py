"""Property-based fuzzing of the image reader and the weights loader (run by tests/test_fuzz.py).

Run as a child process so the memory bound can be a real ``RLIMIT_AS`` and stderr can be watched at
the file-descriptor level (C libraries write there directly):

    python tests/fuzz_harness.py images|weights      # SERPENT_FUZZ_EXAMPLES=20000 for a longer run

Seeds are small files made here from real photos in the shared data folder (``SERPENT_TEST_DATA``):
PNG 8/16-bit, gray, gray+alpha, RGBA, palette, JPEG with EXIF orientation and an ICC profile, TIFF
8/16-bit, WebP with alpha, BMP; and a real weights file of a tiny Serpent written by the project's own
writer.  Hypothesis draws mutations (bit flips, truncations, spliced headers, absurd integers in header
fields, format-aware size fields, absurd config values) and every case must either load into a valid
result or raise the project's one-line error: nothing else, nothing on stderr, no hang, and no
allocation past the bound.  Prints one JSON line of figures (cases, outcomes) on success.
"""

from __future__ import annotations

import collections
import faulthandler
import io
import json
import math
import os
import resource
import struct
import sys
import tempfile
import time
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import HypothesisWarning
from PIL import Image

# Every read allocates at most ~20 bytes per allowed pixel (uint16 RGBA + float32 RGB); with this limit a
# legal decode stays far below the address-space bound set in main().
FUZZ_MAX_PIXELS = 4_000_000
FUZZ_MAX_PARAMS = 20_000_000  # 80 MB of fp32 weights: the weights loader's refusal bound under fuzzing
MEMORY_BOUND = 1536 * 1024 * 1024  # address space a fuzz process may grow by over its start-up size
CASE_TIMEOUT_S = 60  # one case taking longer is a hang: dump every thread's stack and fail
ABSURD_INTS = [0, 1, 2, 3, 7, 8, 255, 256, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
               1 << 40, (1 << 63) - 1, (1 << 64) - 1]
EXAMPLES = int(os.environ.get("SERPENT_FUZZ_EXAMPLES", "0"))
outcomes: collections.Counter[str] = collections.Counter()


# ----------------------------------------------------------------------------- seeds


def _photo(data: Path, size: tuple[int, int] = (64, 48), index: int = 0) -> Image.Image:
    path = sorted((data / "kodak24").glob("*.png"))[index]
    with Image.open(path) as img:
        return img.convert("RGB").crop((200, 150, 200 + size[0], 150 + size[1]))


def image_seeds(data: Path) -> list[bytes]:
    """Small real-photo files covering every reader path (PNG, 16-bit, alpha, EXIF, ICC, TIFF, WebP)."""
    import imagecodecs
    import tifffile
    from PIL import ImageCms

    img = _photo(data)
    rgb16 = np.asarray(img, dtype=np.uint16) * 257 + (np.arange(64 * 48 * 3, dtype=np.uint16) % 199).reshape(48, 64, 3)
    y, x = np.mgrid[:48, :64]
    alpha8 = ((x * 7 + y * 3) % 256).astype(np.uint8)
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "FuzzCam"

    def pil(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
        buf = io.BytesIO()
        image.save(buf, format=fmt, **kwargs)
        return buf.getvalue()

    def tiff(arr: np.ndarray, **kwargs: object) -> bytes:
        buf = io.BytesIO()
        tifffile.imwrite(buf, arr, **kwargs)
        return buf.getvalue()

    rgba = img.copy()
    rgba.putalpha(Image.fromarray(alpha8))
    gray = img.convert("L")
    return [
        pil(img, "PNG"),
        bytes(imagecodecs.png_encode(np.dstack([rgb16, (alpha8.astype(np.uint16) * 257)]))),
        pil(gray, "PNG"),
        bytes(imagecodecs.png_encode(np.ascontiguousarray(rgb16[..., 0]))),
        pil(Image.merge("LA", (gray, Image.fromarray(alpha8))), "PNG"),
        pil(img.quantize(16), "PNG", transparency=0),
        pil(img, "JPEG", quality=90, exif=exif.tobytes(), icc_profile=icc),
        tiff(rgb16, photometric="rgb", compression="zlib", iccprofile=icc, description="fuzz", metadata=None),
        tiff(np.asarray(gray), photometric="minisblack", metadata=None),
        pil(rgba, "WEBP", quality=80),
        pil(img, "BMP"),
    ]


def weights_seed(folder: Path) -> bytes:
    """A real weights file of a tiny Serpent, written by the project's own writer."""
    import torch

    from serpent_cli.hub.weights import save_model
    from serpent_cli.models.config import SerpentConfig
    from serpent_cli.models.serpent import Serpent

    torch.manual_seed(0)
    config = SerpentConfig(name="serpent-fuzz", patch_size=2, embed_dim=4, num_scales=2, blocks_per_stage=1)
    return save_model(Serpent(config), folder / "tiny.safetensors").read_bytes()


# ----------------------------------------------------------------------------- mutations


def _header_offset(draw: st.DrawFn, size: int) -> int:
    """An offset, mostly in the first KiB where headers and tags live."""
    if size <= 1:
        return 0
    near = draw(st.booleans())
    return draw(st.integers(0, min(size, 1024) - 1 if near else size - 1))


def _put_int(data: bytearray, offset: int, value: int, width: int, big: bool) -> None:
    raw = (value % (1 << (8 * width))).to_bytes(width, "big" if big else "little")
    data[offset : offset + width] = raw[: max(0, len(data) - offset)]


def _png_chunks(data: bytes) -> list[tuple[int, bytes, int]]:
    """(offset of the length field, type, length) of each PNG chunk."""
    out, pos = [], 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        out.append((pos, data[pos + 4 : pos + 8], length))
        pos += 12 + length
    return out


def _tiff_entries(data: bytes) -> list[int]:
    """Offsets of the 12-byte entries of a classic TIFF's first IFD."""
    if len(data) < 8 or data[:2] not in (b"II", b"MM"):
        return []
    end = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack(end + "I", data[4:8])
    if ifd + 2 > len(data):
        return []
    (count,) = struct.unpack(end + "H", data[ifd : ifd + 2])
    return [ifd + 2 + 12 * i for i in range(count) if ifd + 14 + 12 * i <= len(data)]


def _jpeg_size_fields(data: bytes) -> list[int]:
    """Offsets of the height field of each SOFn segment (width follows it)."""
    return [i + 5 for i in range(len(data) - 9) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC1, 0xC2)]


class Case:
    """A mutated file with a short repr, so a failing case reads as what was done, not 50 kB of bytes."""

    def __init__(self, seed: int, data: bytes, done: list[str]) -> None:
        self.seed, self.data, self.done = seed, data, done

    def __repr__(self) -> str:
        import hashlib

        digest = hashlib.sha256(self.data).hexdigest()[:12]
        return f"Case(seed={self.seed}, mutations={self.done}, size={len(self.data)}, sha256={digest}...)"


@st.composite
def mutate(draw: st.DrawFn, seeds: list[bytes], absurd: st.SearchStrategy[int]) -> Case:
    """A seed file changed by one to three mutations."""
    index = draw(st.integers(0, len(seeds) - 1))
    data = bytearray(seeds[index])
    done: list[str] = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "truncate", "splice", "int", "format", "format"]))
        if not data:
            break
        if kind == "flip":
            for _ in range(draw(st.integers(1, 8))):
                off = _header_offset(draw, len(data))
                data[off] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            data = data[: draw(st.integers(0, len(data) - 1))]
        elif kind == "splice":
            other = seeds[draw(st.integers(0, len(seeds) - 1))]
            cut = draw(st.integers(1, min(512, len(other))))
            data = bytearray(other[:cut]) + data[cut:]
        elif kind == "int":
            off = _header_offset(draw, len(data))
            value, width = draw(absurd), draw(st.sampled_from([1, 2, 4, 8]))
            _put_int(data, off, value, width, draw(st.booleans()))
            kind = f"int@{off}={value:#x}/{width}"
        else:
            kind = _mutate_format_field(draw, data, absurd)
        done.append(kind)
    return Case(index, bytes(data), done)


def _mutate_format_field(draw: st.DrawFn, data: bytearray, absurd: st.SearchStrategy[int]) -> str:
    """Absurd values in the fields that say how big things are: PNG chunks, TIFF tags, JPEG SOF, RIFF, BMP."""
    value = draw(absurd)
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        chunks = _png_chunks(bytes(data))
        if not chunks:
            return "png:none"
        pos, kind, length = chunks[draw(st.integers(0, len(chunks) - 1))]
        if draw(st.booleans()) or length == 0:
            _put_int(data, pos, value, 4, True)
            return f"png:{kind!r}.length={value:#x}"
        at = pos + 8 + draw(st.integers(0, max(0, min(length, 32) - 1)))
        width = draw(st.sampled_from([1, 2, 4]))
        _put_int(data, at, value, width, True)
        end = pos + 8 + length
        fixed = draw(st.booleans()) and end + 4 <= len(data)
        if fixed:  # a matching CRC lets the reader look deeper
            data[end : end + 4] = struct.pack(">I", zlib.crc32(bytes(data[pos + 4 : end])) & 0xFFFFFFFF)
        return f"png:{kind!r}+{at - pos - 8}={value:#x}/{width}" + (" crc fixed" if fixed else "")
    if data[:2] in (b"II", b"MM"):
        entries = _tiff_entries(bytes(data))
        if not entries:
            return "tiff:none"
        entry = entries[draw(st.integers(0, len(entries) - 1))]
        at, width = draw(st.sampled_from([(2, 2), (4, 4), (8, 4), (8, 2)]))  # type, count, value/offset
        _put_int(data, entry + at, value, width, data[:2] == b"MM")
        tag = int.from_bytes(data[entry : entry + 2], "little" if data[:2] == b"II" else "big")
        return f"tiff:tag{tag}+{at}={value:#x}/{width}"
    if data[:2] == b"\xff\xd8":
        fields = _jpeg_size_fields(bytes(data))
        if not fields:
            return "jpeg:none"
        at = fields[draw(st.integers(0, len(fields) - 1))] + draw(st.sampled_from([0, 2]))
        _put_int(data, at, value, 2, True)
        return f"jpeg:sof@{at}={value & 0xFFFF:#x}"
    if data[:4] == b"RIFF":
        at = draw(st.sampled_from([4, 16, 24, 26, 28]))
        _put_int(data, at, value, 4, False)
        return f"riff@{at}={value:#x}"
    if data[:2] == b"BM":
        at = draw(st.sampled_from([2, 10, 14, 18, 22, 28, 34]))
        _put_int(data, at, value, 4, False)
        return f"bmp@{at}={value:#x}"
    return "format:unknown"


ABSURD = st.one_of(st.sampled_from(ABSURD_INTS), st.integers(0, (1 << 64) - 1))


# ----------------------------------------------------------------------------- stderr and limits


class StderrWatch:
    """fd 2 goes to a file, so any write (Python, logging, warnings, C libraries) can be noticed per case."""

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile()
        self.saved = os.dup(2)
        sys.stderr.flush()
        os.dup2(self.file.fileno(), 2)

    def new_output(self) -> str:
        sys.stderr.flush()
        end = os.lseek(self.file.fileno(), 0, os.SEEK_END)
        if not end:
            return ""
        os.lseek(self.file.fileno(), 0, os.SEEK_SET)
        text = os.read(self.file.fileno(), end).decode(errors="replace")
        os.ftruncate(self.file.fileno(), 0)
        os.lseek(self.file.fileno(), 0, os.SEEK_SET)
        return text

    def close(self) -> None:
        sys.stderr.flush()
        os.dup2(self.saved, 2)


def limit_memory(bound: int) -> None:
    """Cap the address space at today's size plus ``bound``: a blow-up becomes a MemoryError, not a swap storm."""
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[0])
    now = pages * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (now + bound, resource.RLIM_INFINITY))


def _one_line(message: str) -> None:
    assert message and "\n" not in message.strip(), f"error message is not one line: {message!r}"
    assert "not enough memory" not in message, f"allocation past the bound: {message}"


def _run_case(watch: StderrWatch, case: Callable[[], str]) -> None:
    faulthandler.dump_traceback_later(CASE_TIMEOUT_S, exit=True)
    try:
        outcomes[case()] += 1
    finally:
        faulthandler.cancel_dump_traceback_later()
    leaked = watch.new_output()
    assert not leaked, f"something wrote to stderr: {leaked[:500]!r}"


# ----------------------------------------------------------------------------- properties


def fuzz_images(seeds: list[bytes], watch: StderrWatch, examples: int) -> None:
    from serpent_cli.io.imageio import MIN_SIDE, ImageReadError, read_picture

    @settings(max_examples=examples, derandomize=True, deadline=None, database=None, print_blob=False,
              suppress_health_check=list(HealthCheck))
    @given(mutate(seeds, ABSURD))
    def prop(case: Case) -> None:
        data = case.data

        def read() -> str:
            try:
                pic = read_picture(data, name="fuzz.img")
            except ImageReadError as exc:
                _one_line(str(exc))
                return "refused"
            h, w, c = pic.pixels.shape
            assert c in (1, 3) and pic.pixels.dtype == np.float32 and min(h, w) >= MIN_SIDE
            assert h * w <= FUZZ_MAX_PIXELS and np.isfinite(pic.pixels).all()
            assert 0.0 <= float(pic.pixels.min()) and float(pic.pixels.max()) <= 1.0
            assert pic.alpha is None or pic.alpha.shape == (h, w)
            return "loaded"

        _run_case(watch, read)

    prop()


CONFIG_VALUES = st.one_of(
    st.sampled_from([0, -1, 1, 2, 3, 10**6, 10**4, 2**31, 2**63, -(2**63), 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["32", "", "x" * 300, None, True, False, [], {}, [4, 4], {"a": 1}]),
    st.integers(-(10**20), 10**20),
)


@st.composite
def mutate_weights(draw: st.DrawFn, seed: bytes) -> Case:
    """The seed weights file with its header, metadata or config made hostile, or its bytes damaged."""
    (size,) = struct.unpack("<Q", seed[:8])
    header = json.loads(seed[8 : 8 + size])
    body = seed[8 + size :]
    kind = draw(st.sampled_from(["config", "config", "config", "meta", "tensor", "length", "bytes", "bytes"]))
    if kind == "bytes":
        return draw(mutate([seed], ABSURD))
    if kind == "length":
        value = draw(ABSURD)
        return Case(0, struct.pack("<Q", value) + seed[8:], [f"header length={value:#x}"])
    meta = header["__metadata__"]
    if kind == "config":
        config = json.loads(meta["config"])
        for _ in range(draw(st.integers(1, 3))):
            field = draw(st.sampled_from([*sorted(config), "unknown_field"]))
            config[field] = draw(CONFIG_VALUES)
        try:
            meta["config"] = json.dumps(config)
        except ValueError:
            meta["config"] = str(config)
        if draw(st.booleans()):
            meta["config"] = draw(st.sampled_from(["[]", "null", "3", '"x"', "{", "{}"]))
    elif kind == "meta":
        key = draw(st.sampled_from(["format", "format_version", "config", "__metadata__", "arch"]))
        value = draw(st.sampled_from(["", "unet", "2", "serpent-weights", "1", '{"channels": 1e9, "depth": 99}']))
        if key == "__metadata__":
            header["__metadata__"] = draw(st.sampled_from([[], "x", 1, None, {"a": [1]}]))
        elif key == "arch" and draw(st.booleans()):
            meta.update(arch="unet", unet_config=json.dumps(
                {"channels": draw(CONFIG_VALUES), "depth": draw(CONFIG_VALUES), "in_chans": 3}))
        else:
            meta[key] = value
    else:  # tensor entry: absurd shapes, dtypes, offsets
        name = draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
        entry = header[name]
        field = draw(st.sampled_from(["shape", "dtype", "data_offsets"]))
        if field == "dtype":
            entry["dtype"] = draw(st.sampled_from(["F64", "I8", "BOOL", "F8_E4M3", "U64", "XX", ""]))
        else:
            entry[field] = draw(st.lists(st.one_of(st.sampled_from(ABSURD_INTS), st.integers(-5, 5)),
                                         max_size=4))
    text = json.dumps(header).encode()
    return Case(0, struct.pack("<Q", len(text)) + text + body, [kind, json.dumps(meta)[:600]])


def fuzz_weights(seed: bytes, folder: Path, watch: StderrWatch, examples: int) -> None:
    import torch

    from serpent_cli.errors import WeightsError
    from serpent_cli.hub.weights import load_model

    path = folder / "case.safetensors"

    @settings(max_examples=examples, derandomize=True, deadline=None, database=None, print_blob=False,
              suppress_health_check=list(HealthCheck))
    @given(mutate_weights(seed))
    def prop(case: Case) -> None:
        path.write_bytes(case.data)

        def load() -> str:
            try:
                model = load_model(path)
            except WeightsError as exc:
                _one_line(str(exc))
                return "refused"
            assert sum(p.numel() for p in model.parameters()) <= FUZZ_MAX_PARAMS
            with torch.no_grad():
                out = model(torch.rand(1, model.config.in_chans if hasattr(model, "config") else 3, 16, 16))
            assert out.shape[-2:] == (16, 16)
            return "loaded"

        _run_case(watch, load)

    prop()


def main(target: str) -> int:
    data = Path(os.environ.get("SERPENT_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    os.environ["SERPENT_MAX_PIXELS"] = str(FUZZ_MAX_PIXELS)
    os.environ["SERPENT_MAX_PARAMS"] = str(FUZZ_MAX_PARAMS)
    import torch

    warnings.filterwarnings("ignore", category=HypothesisWarning)  # its own notes, not the reader's output
    torch.set_num_threads(1)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if target == "images":
            seeds = image_seeds(data)
            run: Callable[[StderrWatch], None] = lambda w: fuzz_images(seeds, w, EXAMPLES or 3000)  # noqa: E731
        else:
            seed = weights_seed(folder)
            run = lambda w: fuzz_weights(seed, folder, w, EXAMPLES or 600)  # noqa: E731
        limit_memory(MEMORY_BOUND)
        watch = StderrWatch()
        try:
            run(watch)
        finally:
            watch.close()
    figures = {"target": target, "cases": sum(outcomes.values()), **outcomes,
               "seconds": round(time.perf_counter() - start, 1), "memory_bound_mib": MEMORY_BOUND >> 20}
    assert math.isfinite(figures["seconds"])
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
