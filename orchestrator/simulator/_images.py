"""Real, tiny PNG files, so the storage edge downloads and checks actual image bytes."""

from __future__ import annotations

import functools
import hashlib
import struct
import zlib
from typing import Final

PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
OUTPUT_SIZE: Final = 64
_RGB: Final = 2
_BIT_DEPTH: Final = 8


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def encode_png(width: int, height: int, rgb: bytes) -> bytes:
    """Encode 8-bit RGB pixels, row-major, as a PNG with no filtering.

    Raises:
        ValueError: ``rgb`` does not hold exactly ``width * height`` pixels.
    """
    stride = width * 3
    if width < 1 or height < 1 or len(rgb) != stride * height:
        raise ValueError("rgb must hold exactly width * height RGB pixels")
    raw = b"".join(b"\x00" + rgb[row * stride : (row + 1) * stride] for row in range(height))
    header = struct.pack(">IIBBBBB", width, height, _BIT_DEPTH, _RGB, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw))
        + _chunk(b"IEND", b"")
    )


def render_output(prediction_id: str, idx: int, size: int = OUTPUT_SIZE) -> bytes:
    """A gradient whose colours depend on the prediction and index.

    Distinct outputs get distinct bytes, so a test can tell a duplicated or swapped output
    from the right one by hashing files. The fixed gradient is shifted per channel with
    `bytes.translate`, so rendering costs microseconds, not a Python loop per pixel: the
    benchmarks measure the daemon, not the simulator's painting.
    """
    seed = hashlib.sha256(f"{prediction_id}/{idx}".encode()).digest()
    channels = _gradient(size)
    pixels = bytearray(3 * size * size)
    for offset, (base, shift) in enumerate(zip(channels, seed[:3], strict=True)):
        pixels[offset::3] = base.translate(bytes((i + shift) % 256 for i in range(256)))
    return encode_png(size, size, bytes(pixels))


@functools.cache
def _gradient(size: int) -> tuple[bytes, bytes, bytes]:
    """Per-channel base values of the gradient, row by row."""
    coords = [(x, y) for y in range(size) for x in range(size)]
    return (
        bytes((x * 4) % 256 for x, _ in coords),
        bytes((y * 4) % 256 for _, y in coords),
        bytes(((x + y) * 2) % 256 for x, y in coords),
    )
