"""Named NumPy arrays <-> Flower ``ArrayRecord``: the one conversion for skills on the wire.

Flower converts a torch state dict (``ArrayRecord(torch_state_dict=...)``,
``.to_torch_state_dict()``) and a key-less list of arrays (``numpy_ndarrays=``); the server,
its aggregation rules and the codecs hold skills as ``{key: np.ndarray}``, so these two functions
carry them, keys and their order kept. Each array becomes ``Array.from_numpy_ndarray`` (NumPy's
``.npy`` bytes), exactly what ``ArrayRecord(torch_state_dict=...)`` sends for the same tensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord


def arrays_to_record(arrays: Mapping[str, Any]) -> ArrayRecord:
    """An ``ArrayRecord`` of ``arrays`` (NumPy arrays or array-likes), in their key order."""
    return ArrayRecord({key: Array(np.asarray(value)) for key, value in arrays.items()})


def record_to_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """The arrays of ``record`` by key, in its order (decoding raises on damaged bytes)."""
    return {key: array.numpy() for key, array in record.items()}
