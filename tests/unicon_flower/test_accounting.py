"""Communication accounting (Flower layer): serialized message sizes, the per-round ledger."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from unicon_core.federation.outputs import mean_per_site_round
from unicon_flower.accounting import CommLedger, content_bytes


def test_content_bytes_measures_serialized_content() -> None:
    # Prepare
    def content(n: int) -> RecordDict:
        return RecordDict({"skill": ArrayRecord({"w": Array(np.zeros(n, np.float32))}),
                           "config": ConfigRecord({"task": "t"}),
                           "metrics": MetricRecord({"num-examples": 3})})

    # Execute
    small, large = content_bytes(content(10)), content_bytes(content(10_000))

    # Assert: at least the tensor bytes, plus a small constant overhead
    assert large >= 40_000 > small > 40
    assert large - small == pytest.approx(4 * 9_990, rel=0.01)


def test_comm_ledger_sums_per_round_and_site() -> None:
    ledger = CommLedger()
    ledger.add(1, "a", down=10)
    ledger.add(1, "a", down=5, up=7)
    ledger.add(1, "b", up=3)
    summary = ledger.round_summary(1)
    assert summary == {
        "a": {"bytes_down": 15, "bytes_up": 7},
        "b": {"bytes_down": 0, "bytes_up": 3},
    }
    assert mean_per_site_round([summary]) == {"bytes_down_per_site_round": 7.5,
                                              "bytes_up_per_site_round": 5.0}
