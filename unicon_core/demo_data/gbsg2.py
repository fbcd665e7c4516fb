"""GBSG2 breast-cancer cohort (real, 686 patients, from scikit-survival) as two clinical sites.

Categorical columns are numeric-encoded (``horth`` yes=1, ``menostat`` Post=1, ``tgrade`` I/II/III
=1/2/3). Patients go to site ``a`` with a probability rising with age, so the two sites differ in
case mix like two hospitals would.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from unicon_core.config import TaskSpec
from unicon_core.data.splits import assign_splits

FEATURES = ["age", "estrec", "horth", "menostat", "pnodes", "progrec", "tgrade", "tsize"]
SOURCE = "scikit-survival sksurv.datasets.load_gbsg2 (German Breast Cancer Study Group 2)"


def gbsg2_task() -> TaskSpec:
    """``gbsg2_surv`` as ``configs/task/gbsg2_surv.yaml`` declares it: survival from the 8
    clinical features of :data:`FEATURES`."""
    from unicon_core.hydra_config import task_file_spec

    spec = task_file_spec("gbsg2_surv")
    if spec.feature_names != FEATURES:
        raise ValueError(
            f"configs/task/gbsg2_surv.yaml: feature_names {spec.feature_names} differ from the "
            f"columns the GBSG2 builder writes {FEATURES}"
        )
    return spec


def gbsg2_rows(seed: int = 0, n_sites: int = 2) -> list[list[dict[str, Any]]]:
    """Manifest rows of each site (list per site), splits assigned per patient."""
    from sksurv.datasets import load_gbsg2

    x, y = load_gbsg2()
    encoded = {
        "age": x["age"].astype(float),
        "estrec": x["estrec"].astype(float),
        "horth": (x["horTh"].astype(str) == "yes").astype(float),
        "menostat": (x["menostat"].astype(str) == "Post").astype(float),
        "pnodes": x["pnodes"].astype(float),
        "progrec": x["progrec"].astype(float),
        "tgrade": x["tgrade"].astype(str).map({"I": 1.0, "II": 2.0, "III": 3.0}),
        "tsize": x["tsize"].astype(float),
    }
    rng = np.random.default_rng(seed)
    age = encoded["age"].to_numpy()
    p_first = 1 / (1 + np.exp(-(age - np.median(age)) / 8))
    site_of = np.where(rng.uniform(size=len(age)) < p_first, 0, 1 if n_sites > 1 else 0)
    sites: list[list[dict[str, Any]]] = [[] for _ in range(n_sites)]
    for i in range(len(age)):
        row: dict[str, Any] = {"id": f"gbsg2_{i:03d}", "patient_id": f"gbsg2_{i:03d}"}
        row.update({f: float(encoded[f].iloc[i]) for f in FEATURES})
        row["time"] = float(y["time"][i])
        row["event"] = int(y["cens"][i])
        sites[int(site_of[i])].append(row)
    for k, rows in enumerate(sites):
        splits = assign_splits([r["patient_id"] for r in rows], seed=seed + k)
        for row, split in zip(rows, splits, strict=True):
            row["split"] = split
    return sites
