"""Readers for the files a manifest names: NIfTI (nibabel), PNG/JPEG (PIL), CSV (pandas).

Every image reader returns an :class:`ImageData`: a channel-first float array plus the affine
and voxel spacing, so predictions can be written back in the input's space. DICOM is not read
(convert series to NIfTI first with ``dcm2niix``); :func:`looks_like_dicom` lets callers say so.

The same rules hold for every caller (``validate``, training, ``predict``), because they live
here rather than in the callers (see ``docs/security.md``, "Files and outputs"):

* **sizes from headers first**: a NIfTI header or a PNG/JPEG header is read and its size
  checked against :class:`ImageLimits` before any pixel is decoded or any buffer allocated;
  ``.nii.gz`` is decompressed only up to the size its header implies (a gzip bomb stops there);
* **site confinement**: a file below a folder holding ``manifest.csv`` is a site file and must
  resolve inside that folder (symlinks or ``..`` leaving the site are refused); its limits
  follow the site's task (``site.json``);
* **values kept**: 16-bit PNGs keep their range, values a float32 cannot hold are refused (not
  turned into inf), transparency, extra frames and 16-bit colour are refused rather than
  silently dropped; a grey image saved as RGB (three equal channels) is one channel, losslessly.

Refusals raise :class:`ImageRefusedError` (a ``ValueError``) whose message starts with the file.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import struct
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from unicon_core.config import TaskSpec

NIFTI_SUFFIXES = (".nii", ".nii.gz")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg")
DICOM_SUFFIXES = (".dcm", ".dicom")
#: What to do with DICOM, in every message that meets it.
DICOM_ADVICE = "DICOM is not read: convert DICOM to NIfTI first, e.g. `dcm2niix -z y -o OUT DIR`"
#: How to turn a colour PNG/JPEG into the one channel a greyscale task takes.
GREYSCALE_ADVICE = (
    "convert it to greyscale first, e.g. "
    "`python -c \"from PIL import Image; Image.open('IN.png').convert('L').save('OUT.png')\"`"
)

#: Environment variable that sets the cap on the voxels (times channels) of one image file.
MAX_VOXELS_ENV = "UNICON_MAX_IMAGE_VOXELS"
#: Default cap: 2**28 values, i.e. 1 GiB as float32 (e.g. 512 x 512 x 1024).
DEFAULT_MAX_VOXELS = 2**28
#: Bytes a NIfTI file may hold between its header and its data (header extensions).
DEFAULT_MAX_HEADER_BYTES = 16 * 2**20
#: A site's images may hold this many times the voxels of its task's input size ...
TASK_SIZE_FACTOR = 4096
#: ... but never fewer than this (4096 x 4096, 256 x 256 x 256), nor more than the cap.
MIN_TASK_VOXELS = 2**24
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_CHUNK = 2**20  # values converted at a time (bounds the float64 temporaries)


class ImageRefusedError(ValueError):
    """A file is refused before (or instead of) being read: too large for its limits, outside
    its site folder, or holding what the reader would otherwise lose. The message starts with
    the file and says what is wrong and what to do."""


# ---------------------------------------------------------------------------------- limits
def default_max_voxels() -> int:
    """The cap from ``UNICON_MAX_IMAGE_VOXELS`` (a positive integer), else the default."""
    text = os.environ.get(MAX_VOXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_VOXELS
    try:
        value = int(float(text))
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(f"{MAX_VOXELS_ENV}={text!r} must be a positive number of voxels")
    return value


@dataclass(frozen=True)
class ImageLimits:
    """How large one image file may be, checked from its header before anything is allocated.

    ``max_voxels`` counts every value (voxels times channels); ``max_header_bytes`` bounds a
    NIfTI file's header extensions; ``reason`` says in messages where the limit comes from.
    """

    max_voxels: int = field(default_factory=default_max_voxels)
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    reason: str = f"the default cap; set {MAX_VOXELS_ENV} to change it"

    @classmethod
    def for_task(cls, spec: TaskSpec) -> ImageLimits:
        """Limits for a task's images: ``TASK_SIZE_FACTOR`` times its input size (times its
        channels), at least ``MIN_TASK_VOXELS``, at most the cap. Clinical tasks get the cap."""
        cap = default_max_voxels()
        if not spec.spatial_dims:
            return cls(max_voxels=cap)
        size = math.prod(int(s) for s in spec.input_size) * max(1, int(spec.channels))
        value = min(cap, max(MIN_TASK_VOXELS, TASK_SIZE_FACTOR * size))
        reason = (
            f"task {spec.name!r}: {TASK_SIZE_FACTOR} x its input size "
            f"{tuple(spec.input_size)} x {spec.channels} channel(s), at least "
            f"{MIN_TASK_VOXELS:,}, at most {cap:,} ({MAX_VOXELS_ENV})"
        )
        return cls(max_voxels=value, reason=reason)

    @classmethod
    def for_tasks(cls, specs: Iterable[TaskSpec]) -> ImageLimits:
        """The most generous of several tasks' limits (an input is read before it is routed)."""
        image_specs = [s for s in specs if s.spatial_dims]
        if not image_specs:
            return cls()
        per_task = [cls.for_task(s) for s in image_specs]
        best = max(per_task, key=lambda lim: lim.max_voxels)
        names = sorted(s.name for s in image_specs)
        return cls(max_voxels=best.max_voxels, reason=f"largest of the tasks {names}: "
                   f"{best.reason}")

    def check(self, path: Path | str, what: str, values: int) -> None:
        """Refuse ``values`` (described as ``what``) over ``max_voxels``."""
        if values > self.max_voxels:
            raise ImageRefusedError(
                f"{path}: {what} = {values:,} values, over the limit of {self.max_voxels:,} "
                f"({self.reason}); the file is refused before its data is read"
            )


# ---------------------------------------------------------------------------------- sites
_SITE_LIMITS: dict[str, tuple[int, ImageLimits]] = {}


def site_root_of(path: Path | str) -> Path | None:
    """The site folder ``path`` lies in as written: the nearest folder above it holding
    ``manifest.csv`` (parents reached through ``..`` do not count), else ``None``."""
    from unicon_core.data.manifest import MANIFEST_NAME

    absolute = Path(path) if Path(path).is_absolute() else Path.cwd() / path
    for parent in absolute.parents:
        if ".." in parent.parts:
            continue
        if (parent / MANIFEST_NAME).is_file():
            return parent
    return None


def resolves_inside(root: Path | str, path: Path | str) -> bool:
    """Whether ``path``, with every symlink and ``..`` resolved, lies inside ``root``."""
    real, base = Path(path).resolve(), Path(root).resolve()
    return real == base or base in real.parents


def check_inside_site(root: Path | str, path: Path | str) -> None:
    """Refuse a site file that resolves outside its site folder (symlink or ``..``)."""
    if not resolves_inside(root, path):
        raise ImageRefusedError(
            f"{path}: resolves to {Path(path).resolve()}, outside the site folder "
            f"{Path(root).resolve()}; a symlink or '..' path leaving the site is refused (copy "
            "the file into the site folder)"
        )


def site_limits(root: Path | str) -> ImageLimits:
    """Limits for the files of the site at ``root``: its task's (``site.json``), or the cap
    when ``site.json`` is missing or invalid (the validator reports that on its own)."""
    from unicon_core.data.manifest import SITE_JSON_NAME, read_site_json

    key = str(Path(root).resolve())
    try:
        stamp = (Path(root) / SITE_JSON_NAME).stat().st_mtime_ns
    except OSError:
        return ImageLimits()
    hit = _SITE_LIMITS.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    try:
        limits = ImageLimits.for_task(read_site_json(Path(root)).task)
    except (ValueError, TypeError, OSError):
        limits = ImageLimits()
    _SITE_LIMITS[key] = (stamp, limits)
    return limits


# ---------------------------------------------------------------------------------- images
@dataclass
class ImageData:
    """A loaded image: ``array`` is ``(C, *spatial)`` float32, ``affine`` 4x4 voxel-to-world,
    ``header`` the NIfTI header (with extensions) for NIfTI files, else ``None``."""

    array: np.ndarray
    affine: np.ndarray
    path: str
    header: Any = field(default=None, repr=False)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape without the channel axis."""
        return tuple(int(s) for s in self.array.shape[1:])

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size along each spatial axis (from the affine's column norms)."""
        dims = len(self.spatial_shape)
        return np.linalg.norm(self.affine[:3, :dims], axis=0)


def is_supported(path: Path | str) -> bool:
    """Whether :func:`read_image` can read this file (judged by its suffix)."""
    name = str(path).lower()
    return name.endswith(NIFTI_SUFFIXES + PIL_SUFFIXES)


def looks_like_dicom(path: Path | str) -> bool:
    """Whether ``path`` is a DICOM file (``.dcm`` suffix or the ``DICM`` preamble marker) or a
    folder holding one (a DICOM series)."""
    path = Path(path)
    if path.is_dir():
        return any(looks_like_dicom(p) for p in sorted(path.iterdir())[:20] if p.is_file())
    if path.name.lower().endswith(DICOM_SUFFIXES):
        return True
    try:
        with path.open("rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _nifti_header(path: Path, head: bytes) -> Any:
    """The NIfTI-1 or NIfTI-2 header at the start of ``head`` (extensions not read)."""
    import nibabel as nib

    for endian in "<>":
        size = struct.unpack(f"{endian}i", head[:4])[0] if len(head) >= 4 else 0
        klass = {348: nib.Nifti1Header, 540: nib.Nifti2Header}.get(size)
        if klass is not None and len(head) >= size:
            try:
                return klass.from_fileobj(io.BytesIO(head[:size] + b"\0\0\0\0"))
            except Exception as exc:  # nibabel raises several types for a broken header
                raise ValueError(f"{path}: corrupt NIfTI header ({exc})") from exc
    raise ValueError(f"{path}: not a NIfTI file (no NIfTI-1/2 header in its first bytes)")


def _read_exactly(stream: BinaryIO, buf: bytearray, start: int) -> int:
    """Fill ``buf[start:]`` from ``stream``; returns the bytes now in ``buf`` (short at EOF)."""
    view = memoryview(buf)
    filled = start
    while filled < len(buf):
        got = stream.readinto(view[filled:])  # type: ignore[attr-defined]
        if not got:
            break
        filled += got
    return filled


def _float32_values(path: Path, raw: np.ndarray, slope: float, inter: float) -> np.ndarray:
    """``raw * slope + inter`` as a C-contiguous float32 ``(C, *spatial)`` array (a 4D image's
    last axis is the channels), computed as nibabel does in float64 but a slab at a time.
    Values a float32 cannot hold are refused; NaN/inf stored in the file are kept for the
    caller to count."""
    channels_last = raw.ndim == 4
    out = np.empty((raw.shape[-1], *raw.shape[:-1]) if channels_last else (1, *raw.shape),
                   np.float32)
    view = np.moveaxis(out, 0, -1) if channels_last else out[0]  # raw's layout
    scaled = (slope, inter) != (1.0, 0.0)
    step = max(1, _CHUNK // max(1, math.prod(raw.shape[1:])))
    overflow, example = 0, 0.0
    for i in range(0, raw.shape[0], step):
        seg = raw[i : i + step]
        vals = seg.astype(np.float64) * slope + inter if scaled else seg
        with np.errstate(over="ignore", invalid="ignore"):
            view[i : i + step] = vals
        done = view[i : i + step]
        if not np.isfinite(done).all():
            wide = np.asarray(vals, dtype=np.float64)
            lost = ~np.isfinite(done) & np.isfinite(wide)
            if lost.any():
                example = example if overflow else float(wide[lost][0])
                overflow += int(lost.sum())
    if overflow:
        scaling = f" after scl_slope={slope:g}, scl_inter={inter:g}" if scaled else ""
        raise ImageRefusedError(
            f"{path}: {overflow} voxel(s) hold values beyond the float32 range "
            f"(+-{_FLOAT32_MAX:.3g}){scaling}, e.g. {example:.3g}; they would become infinite: "
            "rescale or clip the image (and its scl_slope/scl_inter) before use"
        )
    return out


def read_nifti(path: Path | str, limits: ImageLimits | None = None) -> ImageData:
    """Read a NIfTI file fully (a truncated ``.nii.gz`` raises here, not later in training).

    The header is read and checked first (size against ``limits``, extensions, file size);
    then exactly the bytes it implies are read (decompressed), never more. A 2D or 3D image
    gets a channel axis of 1; a 4D image's last axis is taken as channels.
    """
    path = Path(path)
    limits = limits or ImageLimits()
    compressed = path.name.lower().endswith(".gz")
    with (gzip.open(path, "rb") if compressed else path.open("rb")) as stream:
        head = stream.read(544)
        header = _nifti_header(path, head)
        shape = tuple(int(s) for s in header.get_data_shape())
        if len(shape) not in (2, 3, 4):
            raise ValueError(f"{path}: NIfTI with {len(shape)} dimensions is not supported")
        dtype = header.get_data_dtype()
        if dtype.kind not in "biuf" or dtype.fields is not None:
            raise ImageRefusedError(f"{path}: NIfTI data type {dtype} is not a real number type")
        limits.check(path, f"header claims shape {shape}", math.prod(shape))
        offset = int(header.get_data_offset())
        start = int(header["sizeof_hdr"]) + 4
        if offset < start:
            raise ValueError(f"{path}: vox_offset {offset} lies inside the {start}-byte header")
        if offset - start > limits.max_header_bytes:
            raise ImageRefusedError(
                f"{path}: {offset - start:,} bytes of header extensions (vox_offset {offset}), "
                f"over the limit of {limits.max_header_bytes:,}; the file is refused before "
                "they are read"
            )
        total = offset + math.prod(shape) * dtype.itemsize
        if not compressed and path.stat().st_size < total:
            raise ValueError(
                f"{path}: truncated: its header promises {total:,} bytes, the file holds "
                f"{path.stat().st_size:,}"
            )
        buf = bytearray(total)
        kept = min(len(head), total)
        buf[:kept] = head[:kept]
        filled = _read_exactly(stream, buf, kept)
    if filled < total:
        raise ValueError(
            f"{path}: truncated or corrupt: its header promises {total:,} bytes, the "
            f"{'decompressed ' if compressed else ''}stream ends after {filled:,}"
        )
    try:  # the full header, extensions included, from bytes already bounded above
        header = type(header).from_fileobj(io.BytesIO(bytes(buf[:offset])))
        slope, inter = header.get_slope_inter()
    except Exception as exc:  # nibabel raises several types for broken extensions/scaling
        raise ValueError(f"{path}: corrupt NIfTI header ({exc})") from exc
    raw = np.frombuffer(buf, dtype=dtype, count=math.prod(shape), offset=offset)
    raw = raw.reshape(shape, order="F")
    data = _float32_values(
        path, raw, 1.0 if slope is None else float(slope), 0.0 if inter is None else float(inter)
    )
    affine = np.asarray(header.get_best_affine(), dtype=np.float64)
    return ImageData(data, affine, str(path), header)


def _open_pil(path: Path) -> Any:
    """``Image.open`` with PIL's decompression-bomb warning kept from passing silently."""
    from PIL import Image

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            img = Image.open(path)
        except Image.DecompressionBombError as exc:
            raise ImageRefusedError(
                f"{path}: over the limit of PIL's MAX_IMAGE_PIXELS: {exc}"
            ) from exc
    for w in caught:  # the bomb warning is acted on below; others pass on
        if not issubclass(w.category, Image.DecompressionBombWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return img


def _without_alpha(path: Path, img: Any) -> Any:
    """Drop an alpha channel only if every pixel is opaque; transparency is refused."""
    alpha = np.asarray(img.getchannel("A"))
    seen = int((alpha != 255).sum())
    if seen:
        raise ImageRefusedError(
            f"{path}: {seen} pixel(s) are transparent (alpha < 255) and the alpha channel "
            "cannot be used; flatten the image onto a background first, e.g. "
            "`python -c \"from PIL import Image; Image.open('IN.png').convert('RGB')"
            ".save('OUT.png')\"`"
        )
    return img.convert("L" if img.mode in ("LA", "La") else "RGB")


def read_pil(path: Path | str, limits: ImageLimits | None = None) -> ImageData:
    """Read a PNG/JPEG as ``(C, H, W)`` (rows first): grayscale gives 1 channel, colour 3.

    The size is checked from the header before any pixel is decoded (against ``limits`` and
    PIL's ``MAX_IMAGE_PIXELS``, both as hard limits). 16-bit greyscale keeps its full range; an
    opaque alpha channel is dropped, transparency, animation and 16-bit colour (which PIL would
    cut to 8 bits) are refused. A colour image whose three channels are equal is one channel.
    The affine is the identity (one pixel = one unit, row axis first).
    """
    from PIL import Image

    path = Path(path)
    limits = limits or ImageLimits()
    with _open_pil(path) as img:
        width, height = img.size
        frames = int(getattr(img, "n_frames", 1))
        if frames > 1:
            raise ImageRefusedError(
                f"{path}: animated or multi-frame image with {frames} frames; only single "
                "images are read (save the frame you mean as its own file)"
            )
        bands = len(img.getbands())
        limits.check(path, f"{width} x {height} pixels x {bands} band(s)", width * height * bands)
        pil_cap = Image.MAX_IMAGE_PIXELS
        if pil_cap is not None and width * height > pil_cap:
            raise ImageRefusedError(
                f"{path}: {width} x {height} pixels, over the limit of PIL's MAX_IMAGE_PIXELS "
                f"({pil_cap:,}); the file is refused before its data is read"
            )
        rawmodes = " ".join(str(tile[3]) for tile in getattr(img, "tile", []) or [])
        if img.mode in ("RGB", "RGBA") and ";16" in rawmodes:
            raise ImageRefusedError(
                f"{path}: 16-bit colour PNG; PIL reads only 8 bits of each channel, which would "
                "lose precision: convert it to 16-bit greyscale PNG or to NIfTI first"
            )
        img.load()
        if img.mode in ("RGBA", "RGBa", "LA", "La", "PA") or (
            img.mode == "P" and "transparency" in img.info
        ):
            img = _without_alpha(path, img if img.mode not in ("P", "PA") else img.convert("RGBA"))
        elif img.mode in ("1", "P", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
            img = img.convert("L" if img.mode == "1" else "RGB")
        if img.mode not in ("L", "RGB", "I", "I;16", "I;16B", "I;16L", "F"):
            raise ImageRefusedError(f"{path}: PIL image mode {img.mode!r} is not supported")
        arr = np.asarray(img).astype(np.float32)
    arr = arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)
    if arr.shape[0] == 3 and np.array_equal(arr[0], arr[1]) and np.array_equal(arr[0], arr[2]):
        arr = arr[:1]  # a grey image saved as RGB: one channel, losslessly
    return ImageData(np.ascontiguousarray(arr), np.eye(4), str(path))


def read_image(
    path: Path | str, limits: ImageLimits | None = None, root: Path | str | None = None
) -> ImageData:
    """Read any supported image; ``ValueError`` names an unsupported suffix.

    ``root`` is the site folder the file belongs to (found from ``manifest.csv`` above it when
    not given): the file must resolve inside it. ``limits`` default to the site's task limits,
    or the cap for a file outside any site.
    """
    site = Path(root) if root is not None else site_root_of(path)
    if site is not None:
        check_inside_site(site, path)
    if limits is None:
        limits = site_limits(site) if site is not None else ImageLimits()
    name = str(path).lower()
    if name.endswith(NIFTI_SUFFIXES):
        return read_nifti(path, limits)
    if name.endswith(PIL_SUFFIXES):
        return read_pil(path, limits)
    if looks_like_dicom(path):
        raise ValueError(f"{path}: {DICOM_ADVICE}")
    raise ValueError(
        f"{path}: unsupported file type (use one of {NIFTI_SUFFIXES + PIL_SUFFIXES}; "
        "convert DICOM to NIfTI first)"
    )


def write_nifti(
    path: Path | str, array: np.ndarray, affine: np.ndarray | None = None, dtype: str = "float32"
) -> Path:
    """Write a spatial array (no channel axis) as NIfTI with the given affine (identity if None)."""
    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    aff = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    img = nib.Nifti1Image(np.asarray(array).astype(dtype), aff)
    img.header.set_data_dtype(dtype)
    nib.save(img, str(path))
    return path


def read_manifest(path: Path | str) -> pd.DataFrame:
    """Read ``manifest.csv`` as strings (no type guessing), empty cells as ``""``."""
    import pandas as pd

    return pd.read_csv(path, dtype=str, keep_default_na=False)
