"""A federated run whose sites train on a real GPU: skipped where none is visible (CI)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from tests.devices import needs_cuda
from tests.server.fedtools import THREE_SITES, make_sites, run_in_process, tiny_overrides
from unicon_core.federation.checkpoint import load_checkpoint

pytestmark = needs_cuda


def test_sites_train_on_the_gpu_and_only_cpu_tensors_travel(tmp_path: Path) -> None:
    # Prepare
    dirs = make_sites(tmp_path / "sites", THREE_SITES)
    # Execute: every site trains and evaluates on the GPU
    run_in_process(tiny_overrides(dirs, tmp_path / "run", 2, "train.device=cuda"), 3)
    # Assert: each site says where it computed; the aggregated skills are finite float32
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    sites = results["device"]["sites"]
    assert sorted(sites) == sorted(name for name, _, _ in THREE_SITES)
    assert all(str(d).startswith("cuda") for d in sites.values()), sites
    assert results["device"]["train.device"] == "cuda"
    arrays = load_checkpoint(tmp_path / "run").arrays
    assert arrays and all(a.dtype == np.float32 and np.isfinite(a).all() for a in arrays.values())
    assert {t: (math.isfinite(r["value"]), r["n"]) for t, r in results["tasks"].items()} == {
        "tab_cls": (True, 15), "tab_surv": (True, 6)}
