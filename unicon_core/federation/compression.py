"""Skill updates on the wire: ``local - global`` deltas, optionally compressed per task.

A site encodes its update as a delta against the global skill it was sent
(:func:`encode_delta`); the server decodes it against the same skill (:func:`decode_delta`) and
aggregates the reconstructed local skills. Codecs (:class:`Codec`):

* ``none``: the delta in the skill's dtype (no compression; the round trip is exact whenever
  ``global + (local - global)`` is exact in that dtype, e.g. a factor that starts at zero, and
  within one rounding of ``local`` otherwise);
* ``fp16``: the delta in float16 (relative error <= 2**-11 per value, within fp16's range);
* ``int8``: symmetric int8 with a float32 scale per tensor, or per row (``per_row``);
  error <= scale / 2 per value;
* ``topk``: the ``topk_fraction`` largest-magnitude values of each tensor (flat indices as
  int32, values in float32).

For every lossy codec, what is not sent (values left out, rounding) is returned as the site's
new residual (error feedback): added to the next round's delta, nothing is lost for good.

Payload keys are the skill keys, plus ``<key>#scale`` (int8) or ``<key>#idx`` (top-k). All
functions are pure on ``{key: numpy array}`` mappings.

Packing (``Codec.packed``): the payload's arrays are concatenated into one flat array per dtype
(``#packed.<dtype>``). Every array on the wire pays its own framing (about 480 bytes in Flower
1.41: a ``.npy`` header, an object id, its key, dtype and shape), which for a small skill of many
small tensors is a fifth of its bytes. Keys, shapes and sizes need not travel: both sides derive
them from the skill they share (:func:`payload_layout`), and :func:`unpack` refuses a payload
whose groups or sizes differ from that layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from math import ceil

import numpy as np

Arrays = Mapping[str, np.ndarray]

CODECS = ("none", "fp16", "int8", "topk")
SCALE = "#scale"
INDEX = "#idx"
PACKED = "#packed."


@dataclass(frozen=True)
class Codec:
    """How a task's deltas are compressed (validated; ``kind`` one of :data:`CODECS`)."""

    kind: str = "none"
    per_row: bool = False
    topk_fraction: float = 0.1
    #: one flat array per dtype on the wire instead of one per tensor (see the module doc)
    packed: bool = False

    def __post_init__(self) -> None:
        if self.kind not in CODECS:
            raise ValueError(f"codec {self.kind!r} is not one of {CODECS}")
        if not 0.0 < self.topk_fraction <= 1.0:
            raise ValueError(f"topk_fraction must be in (0, 1], got {self.topk_fraction}")


def delta(local: Arrays, reference: Arrays) -> dict[str, np.ndarray]:
    """``local - reference`` per key, in each reference tensor's dtype."""
    return {
        k: (np.asarray(local[k]) - np.asarray(ref)).astype(np.asarray(ref).dtype, copy=False)
        for k, ref in reference.items()
    }


def encode_delta(
    local: Arrays, reference: Arrays, codec: Codec, residual: Arrays | None = None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(payload, new residual)`` of ``local - reference`` (+ the residual kept at the site).

    The new residual is what the server will not see (``delta - decoded payload``), in float64;
    it is all zeros for lossless codecs. Keys of ``local`` and ``reference`` must match.
    """
    payload: dict[str, np.ndarray] = {}
    new_residual: dict[str, np.ndarray] = {}
    for key, ref in reference.items():
        ref = np.asarray(ref)
        d = np.asarray(local[key], np.float64) - ref.astype(np.float64)
        if residual is not None and key in residual:
            d = d + np.asarray(residual[key], np.float64)
        if codec.kind == "none":  # lossless: no residual is kept
            payload[key] = (np.asarray(local[key]) - ref).astype(ref.dtype, copy=False)
            new_residual[key] = np.zeros(ref.shape, np.float64)
            continue
        elif codec.kind == "fp16":
            payload[key] = d.astype(np.float16)
        elif codec.kind == "int8":
            payload[key], payload[key + SCALE] = _int8(d, codec.per_row)
        else:
            payload[key + INDEX], payload[key] = _topk(d, codec.topk_fraction)
        sent = _decode_one(payload, key, ref.shape, codec)
        new_residual[key] = d - sent
    return payload, new_residual


def decode_delta(payload: Arrays, reference: Arrays, codec: Codec) -> dict[str, np.ndarray]:
    """The deltas a payload carries, in float64, shaped like ``reference`` (raises on a
    malformed payload: missing or unknown keys, wrong sizes, non-finite values)."""
    expected = set(reference)
    if codec.kind == "int8":
        expected |= {k + SCALE for k in reference}
    elif codec.kind == "topk":
        expected |= {k + INDEX for k in reference}
    if set(payload) != expected:
        missing, extra = sorted(expected - set(payload)), sorted(set(payload) - expected)
        raise ValueError(f"delta payload keys: missing {missing}, unknown {extra}")
    out = {}
    for key, ref in reference.items():
        out[key] = _decode_one(payload, key, np.shape(ref), codec)
        if not np.all(np.isfinite(out[key])):
            raise ValueError(f"{key}: non-finite delta")
    return out


def apply_delta(reference: Arrays, deltas: Arrays) -> dict[str, np.ndarray]:
    """``reference + delta`` per key, computed in the reference dtype (the reconstructed
    local skill; for the ``none`` codec this is exactly what the site computed from)."""
    out = {}
    for key, ref in reference.items():
        ref = np.asarray(ref)
        out[key] = (ref + np.asarray(deltas[key]).astype(ref.dtype)).astype(ref.dtype,
                                                                             copy=False)
    return out


def _decode_one(payload: Arrays, key: str, shape: tuple[int, ...], codec: Codec) -> np.ndarray:
    values = np.asarray(payload[key])
    if codec.kind in ("none", "fp16"):
        if values.shape != tuple(shape):
            raise ValueError(f"{key}: shape {values.shape} != {tuple(shape)}")
        return values.astype(np.float64)
    if codec.kind == "int8":
        scale = np.asarray(payload[key + SCALE], np.float64)
        if values.dtype != np.int8 or values.shape != tuple(shape):
            raise ValueError(f"{key}: int8 payload of shape {values.shape} != {tuple(shape)}")
        rows = shape[0] if len(shape) >= 1 else 1
        if scale.size not in (1, rows) or not np.all(np.isfinite(scale)) or np.any(scale < 0):
            raise ValueError(f"{key}: bad int8 scale of size {scale.size}")
        scale = scale[0] if scale.size == 1 else scale.reshape((rows,) + (1,) * (len(shape) - 1))
        return values.astype(np.float64) * scale
    index = np.asarray(payload[key + INDEX])
    size = int(np.prod(shape, dtype=np.int64))
    if (index.ndim != 1 or values.shape != index.shape or index.dtype.kind not in "iu"
            or np.any(index < 0) or np.any(index >= size) or len(np.unique(index)) != index.size):
        raise ValueError(f"{key}: malformed top-k payload")
    flat = np.zeros(size, np.float64)
    flat[index] = values.astype(np.float64)
    return flat.reshape(shape)


def _int8(d: np.ndarray, per_row: bool) -> tuple[np.ndarray, np.ndarray]:
    if per_row and d.ndim >= 2:
        flat = np.abs(d.reshape(d.shape[0], int(np.prod(d.shape[1:]))))
        peak = flat.max(axis=1, initial=0.0)  # initial: rows of no values
        scale = (peak / 127.0).astype(np.float32)
        div = np.where(scale > 0, scale, 1.0).astype(np.float64)
        div = div.reshape((d.shape[0],) + (1,) * (d.ndim - 1))
    else:
        scale = np.asarray([np.max(np.abs(d)) / 127.0 if d.size else 0.0], np.float32)
        div = float(scale[0]) if scale[0] > 0 else 1.0
    q = np.clip(np.rint(d / div), -127, 127).astype(np.int8)
    return q, scale


def topk_count(size: int, fraction: float) -> int:
    """How many of a tensor's ``size`` values top-k sends: at least one, at most all."""
    return min(max(1, ceil(fraction * size)), size) if size else 0


def _topk(d: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    flat = d.reshape(-1)
    k = topk_count(flat.size, fraction)
    if k >= flat.size:
        index = np.arange(flat.size)
    else:
        index = np.sort(np.argpartition(-np.abs(flat), k - 1, kind="introselect")[:k])
    return index.astype(np.int32), flat[index].astype(np.float32)


def payload_layout(
    reference: Arrays, codec: Codec
) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
    """``(payload key, dtype, shape)`` of every array :func:`encode_delta` makes for
    ``reference`` under ``codec``, keys sorted (both sides derive the same list from the skill
    they share, whatever order their mappings hold)."""
    out: list[tuple[str, np.dtype, tuple[int, ...]]] = []
    for key in sorted(reference):
        ref = np.asarray(reference[key])
        if codec.kind == "none":
            out.append((key, ref.dtype, ref.shape))
        elif codec.kind == "fp16":
            out.append((key, np.dtype(np.float16), ref.shape))
        elif codec.kind == "int8":
            rows = ref.shape[0] if codec.per_row and ref.ndim >= 2 else 1
            out += [(key, np.dtype(np.int8), ref.shape),
                    (key + SCALE, np.dtype(np.float32), (rows,))]
        else:
            k = topk_count(ref.size, codec.topk_fraction)
            out += [(key + INDEX, np.dtype(np.int32), (k,)), (key, np.dtype(np.float32), (k,))]
    return out


def pack(payload: Arrays, reference: Arrays, codec: Codec) -> dict[str, np.ndarray]:
    """``payload`` as one flat array per dtype, in :func:`payload_layout` order (raises when
    the payload does not match the layout: a bug at the encoding side)."""
    groups: dict[str, list[np.ndarray]] = {}
    for key, dtype, shape in payload_layout(reference, codec):
        arr = np.asarray(payload[key])
        if arr.dtype != dtype or arr.shape != shape:
            raise ValueError(f"{key}: {arr.dtype} {arr.shape} is not the layout's {dtype} {shape}")
        groups.setdefault(PACKED + dtype.name, []).append(arr.reshape(-1))
    return {name: np.concatenate(parts) for name, parts in groups.items()}


def packed_sizes(reference: Arrays, codec: Codec) -> dict[str, int]:
    """``{#packed.<dtype>: number of values}`` a packed payload for ``reference`` holds (what
    a receiver checks on the arrays' headers before decoding any bytes)."""
    sizes: dict[str, int] = {}
    for _, dtype, shape in payload_layout(reference, codec):
        name = PACKED + dtype.name
        sizes[name] = sizes.get(name, 0) + int(np.prod(shape, dtype=np.int64))
    return sizes


def unpack(packed: Arrays, reference: Arrays, codec: Codec) -> dict[str, np.ndarray]:
    """The payload a :func:`pack` result carries, split by the layout both sides derive from
    ``reference`` (raises on unknown or missing groups, a wrong dtype or a wrong size)."""
    layout = payload_layout(reference, codec)
    sizes = packed_sizes(reference, codec)
    if set(packed) != set(sizes):
        missing, extra = sorted(set(sizes) - set(packed)), sorted(set(packed) - set(sizes))
        raise ValueError(f"packed payload groups: missing {missing}, unknown {extra}")
    for name, size in sizes.items():
        arr = np.asarray(packed[name])
        if arr.ndim != 1 or arr.size != size or PACKED + arr.dtype.name != name:
            raise ValueError(f"{name}: {arr.dtype} of shape {arr.shape}, the skill's layout "
                             f"needs {size} values")
    offsets = dict.fromkeys(sizes, 0)
    out = {}
    for key, dtype, shape in layout:
        name, n = PACKED + dtype.name, int(np.prod(shape, dtype=np.int64))
        out[key] = np.asarray(packed[name])[offsets[name]:offsets[name] + n].reshape(shape)
        offsets[name] += n
    return out


def to_wire(payload: Arrays, reference: Arrays, codec: Codec) -> dict[str, np.ndarray]:
    """What travels: the payload, packed when the codec says so."""
    return pack(payload, reference, codec) if codec.packed else dict(payload)


def from_wire(wire: Arrays, reference: Arrays, codec: Codec) -> dict[str, np.ndarray]:
    """The payload behind what travelled (:func:`to_wire`'s inverse; raises when malformed)."""
    return unpack(wire, reference, codec) if codec.packed else dict(wire)
