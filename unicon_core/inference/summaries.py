"""Federated summary statistics for the learned router (issue 7), gathered in the query round.

Each site sends, besides its task, the first and second moments of an input descriptor over its
train split (:func:`unicon_core.inference.prototypes.site_prototype`) and, for clinical sites,
of its raw features; never an image, mask, label or feature row. The server pools them by
example counts, which gives the pooled moments exactly, and writes ``summaries.json`` into the
run folder, where ``unicon export`` finds them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from unicon_core.config import Modality
from unicon_core.federation.protocol import SummaryKey
from unicon_core.files import write_atomic

if TYPE_CHECKING:
    from unicon_core.data import Site
    from unicon_core.inference.prototypes import Prototype
    from unicon_core.model import UniconModel

SUMMARIES_FILE = "summaries.json"
#: Longest summary vector a site may send (2 x descriptor or 2 x feature count).
MAX_SUMMARY_LENGTH = 512
#: Fewest train examples a summary may average over (a mean of one row would be that row).
MIN_SUMMARY_COUNT = 5


def site_summary(
    site: Site, model: UniconModel, min_count: int = MIN_SUMMARY_COUNT, noise: float = 0.0
) -> tuple[dict[str, np.ndarray], int]:
    """A site's summary arrays over its train split and the number of examples behind them.

    No arrays below ``min_count`` examples (a federated site uses ``ROUTER_MIN_COUNT``, 20, or
    its node config's). ``noise`` > 0 adds Gaussian noise of std ``noise / count`` to every
    moment, drawn from OS entropy (a mean over ``count`` rows moves by ``range / count`` when
    one row changes; this is a blur, not a DP guarantee unless values are bounded by ``noise``).
    """
    from unicon_core.inference.prototypes import feature_moments, site_prototype

    train = site.dataset("train", train=False)
    count = len(train)
    if count < max(min_count, MIN_SUMMARY_COUNT):
        return {}, count
    vector, count = site_prototype(model, train, site.task_spec.name)
    arrays = {SummaryKey.PROTOTYPE.value: vector.astype(np.float64)}
    if site.task_spec.modality is Modality.CLINICAL:
        rows = [site.rows[i] for i in site.split_rows("train")]
        moments, _ = feature_moments(rows, site.task_spec.feature_names)
        arrays[SummaryKey.FEATURE_MOMENTS.value] = moments.astype(np.float64)
    if noise > 0:
        rng = np.random.default_rng()  # seeded from OS entropy: not reproducible on purpose
        arrays = {k: v + rng.normal(0.0, noise / count, v.shape) for k, v in arrays.items()}
    return arrays, count


def summary_problems(arrays: Mapping[str, np.ndarray], count: int) -> list[str]:
    """Server side: why a site's router statistics cannot be pooled (empty: they can).

    Only the known keys, as finite 1-D float vectors of at most ``MAX_SUMMARY_LENGTH``, over at
    least ``MIN_SUMMARY_COUNT`` declared train examples.
    """
    known = {k.value for k in SummaryKey}
    out = []
    if count < MIN_SUMMARY_COUNT:
        out.append(f"{count} train examples declared, a summary needs >= {MIN_SUMMARY_COUNT}")
    for key, arr in arrays.items():
        if key not in known:
            out.append(f"{str(key)[:64]!r} is not a summary key")
        elif arr.ndim != 1 or arr.shape[0] > MAX_SUMMARY_LENGTH or arr.dtype.kind != "f":
            out.append(f"{key}: {arr.dtype} {arr.shape} is not a float vector of at most "
                       f"{MAX_SUMMARY_LENGTH}")
        elif not np.all(np.isfinite(arr)):
            out.append(f"{key}: non-finite values")
    return out


def pool_summaries(
    reports: Iterable[tuple[str, Mapping[str, np.ndarray], int]],
) -> tuple[dict[str, Prototype], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Server side: router prototypes per task and pooled ``(mean, std)`` of clinical features."""
    from unicon_core.inference.prototypes import aggregate_prototypes

    reports = list(reports)
    prototypes = aggregate_prototypes(
        (task, arrays[SummaryKey.PROTOTYPE.value], n)
        for task, arrays, n in reports
        if SummaryKey.PROTOTYPE.value in arrays
    )
    moments = aggregate_prototypes(
        (task, arrays[SummaryKey.FEATURE_MOMENTS.value], n)
        for task, arrays, n in reports
        if SummaryKey.FEATURE_MOMENTS.value in arrays
    )
    return prototypes, feature_stats(moments)


def feature_stats(pooled: Mapping[str, Prototype]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``(mean, std)`` per task from pooled feature moments (a zero std becomes 1)."""
    out = {}
    for task, proto in pooled.items():
        std = np.sqrt(proto.variance)
        out[task] = (proto.mean, np.where(std > 0, std, 1.0))
    return out


def write_summaries(
    run_dir: Path,
    prototypes: Mapping[str, Prototype],
    stats: Mapping[str, tuple[np.ndarray, np.ndarray]],
    sites: Mapping[str, list[str]],
) -> Path:
    """Write ``summaries.json`` atomically; ``sites`` names the sites behind each task."""
    data: dict[str, Any] = {
        "source": "federated: sites' query replies (moments over each site's train split)",
        "prototypes": {
            t: {"mean": p.mean.tolist(), "mean_sq": p.mean_sq.tolist(), "count": p.count}
            for t, p in prototypes.items()
        },
        "feature_stats": {
            t: {"mean": m.tolist(), "std": s.tolist()} for t, (m, s) in stats.items()
        },
        "sites": {t: sorted(v) for t, v in sites.items()},
    }
    path = run_dir / SUMMARIES_FILE
    write_atomic(path, json.dumps(data, indent=1))
    return path


def read_summaries(
    run_dir: Path,
) -> tuple[dict[str, Prototype], dict[str, tuple[np.ndarray, np.ndarray]], dict[str, Any]] | None:
    """``(prototypes, feature stats, raw JSON)`` from a run folder, or None if it has none."""
    from unicon_core.inference.prototypes import Prototype

    path = run_dir / SUMMARIES_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    prototypes = {
        t: Prototype(np.array(p["mean"]), np.array(p["mean_sq"]), int(p["count"]))
        for t, p in data["prototypes"].items()
    }
    stats = {t: (np.array(s["mean"]), np.array(s["std"])) for t, s in data["feature_stats"].items()}
    return prototypes, stats, data
