"""Hostile files crafted byte by byte for the red-team tests (tiny on disk, whatever they claim).

A NIfTI header can claim gigabytes with a body of a few bytes, and a PNG header can claim
100000 x 100000 pixels with an IDAT chunk of ten bytes: readers must refuse them from the header,
so the tests never allocate what the files claim.
"""

from __future__ import annotations

import gzip
import struct
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def nifti_claiming(
    path: Path,
    shape: tuple[int, ...],
    dtype: type | str = np.float32,
    body: bytes = b"",
    extension: bytes = b"",
    slope: float | None = None,
) -> Path:
    """Write a single-file NIfTI-1 whose header claims ``shape``/``dtype`` but whose data part is
    only ``body``; ``extension`` (padded to 16 bytes) sits between header and data. A ``.gz``
    suffix gzips the whole (a gzipped run of zeros is a gzip bomb in miniature)."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    ext = b""
    if extension:
        size = 8 + len(extension)
        size += -size % 16
        ext = struct.pack("<ii", size, 6) + extension.ljust(size - 8, b"\0")
    header["vox_offset"] = 352 + len(ext)
    if slope is not None:
        header["scl_slope"] = slope
        header["scl_inter"] = 0.0
    flag = b"\1\0\0\0" if ext else b"\0\0\0\0"
    raw = header.binaryblock + flag + ext + body
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wb", compresslevel=1) as fh:
            fh.write(raw)
    else:
        path.write_bytes(raw)
    return path


def png_bytes(
    width: int, height: int, bit_depth: int = 8, colour_type: int = 0, rows: bytes | None = None
) -> bytes:
    """A PNG file with the given IHDR; ``rows`` (filter bytes included) is zlib-compressed into
    one IDAT chunk, ten zero bytes when not given (a 'bomb' header over a tiny body)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    idat = zlib.compress(rows if rows is not None else b"\0" * 10)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def png_rgb16(path: Path, pixels: np.ndarray) -> Path:
    """Write ``(H, W, 3)`` uint16 pixels as a 16-bit-per-channel colour PNG (Pillow cannot)."""
    data = pixels.astype(">u2")
    rows = b"".join(b"\0" + data[i].tobytes() for i in range(data.shape[0]))
    path.write_bytes(png_bytes(data.shape[1], data.shape[0], 16, 2, rows))
    return path


def peak_bytes(call: Callable[[], T]) -> tuple[T | BaseException, int]:
    """Run ``call`` under tracemalloc: (its result or the exception it raised, peak bytes)."""
    tracemalloc.start()
    try:
        try:
            result: T | BaseException = call()
        except Exception as exc:  # the caller inspects it
            result = exc
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak
