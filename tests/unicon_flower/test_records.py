"""Named arrays <-> ArrayRecord: keys, order, dtypes and the bytes Flower's own conversion sends."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord

from unicon_flower.accounting import content_bytes
from unicon_flower.records import arrays_to_record, record_to_arrays


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"z.lora_B": rng.normal(size=(3, 4)).astype(np.float32),
            "a.bias": np.arange(5, dtype=np.int64),
            "m.scale": np.float16(2.5) * np.ones((2, 2), np.float16)}


def test_round_trip_keeps_keys_order_dtypes_and_values() -> None:
    # Prepare
    arrays = _arrays()

    # Execute
    back = record_to_arrays(arrays_to_record(arrays))

    # Assert
    assert list(back) == list(arrays)  # insertion order, not sorted
    for key, value in arrays.items():
        assert back[key].dtype == value.dtype
        np.testing.assert_array_equal(back[key], value)


def test_bytes_on_the_wire_equal_flowers_torch_state_dict_conversion() -> None:
    # Prepare
    arrays = _arrays()
    flowers = ArrayRecord(torch_state_dict={k: torch.from_numpy(v) for k, v in arrays.items()})

    # Execute
    ours = arrays_to_record(arrays)

    # Assert
    assert [ours[k].data for k in ours] == [flowers[k].data for k in flowers]
    assert ours.object_id == flowers.object_id
    assert content_bytes(ours) == content_bytes(flowers)
