"""External validation in ``results.json``: evaluation-only sites reported apart.

An evaluation-only site (``site.json`` ``role: evaluation``, a manifest of test rows only) gets
every task skill it serves and reports test metrics, but never trains. Its numbers answer
another question than the federation's own held-out splits (how the skill does at a hospital
whose data no training step saw), so they are listed under ``external_validation`` with their
n and left out of the task's federated value.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: The key of the per-site example count in a site's evaluation record.
NUM_EXAMPLES_KEY = "num-examples"


def last_evaluations(rounds: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each site's last evaluation record (``task`` plus its metrics), over all rounds."""
    last: dict[str, dict[str, Any]] = {}
    for row in rounds:
        for site, entry in row.get("sites", {}).items():
            if entry.get("eval"):
                last[site] = {"task": entry["task"], **entry["eval"]}
    return last


def split_external(
    results: dict[str, Any], rounds: Sequence[Mapping[str, Any]], external: Iterable[str]
) -> dict[str, Any]:
    """Move the sites in ``external`` out of ``results["tasks"]`` into
    ``results["external_validation"]`` (``site -> task, metric, value, n``) and recompute each
    task's value (example-weighted) and ``n`` over its training sites only. Returns ``results``.
    """
    external = set(external)
    last = last_evaluations(rounds)
    out: dict[str, Any] = {}
    for task, entry in results.get("tasks", {}).items():
        metric = entry["metric"]
        for site in sorted(s for s in entry.get("per_site", {}) if s in external):
            value = entry["per_site"].pop(site)
            out[site] = {
                "task": task,
                "metric": metric,
                "value": value,
                "n": int(last.get(site, {}).get(NUM_EXAMPLES_KEY, 0)),
            }
        weights = {s: float(last.get(s, {}).get(NUM_EXAMPLES_KEY, 0)) for s in entry["per_site"]}
        finite = {
            s: v for s, v in entry["per_site"].items() if v is not None and math.isfinite(v)
        }
        total = sum(weights[s] for s in finite)
        entry["value"] = (
            sum(v * weights[s] for s, v in finite.items()) / total if total else float("nan")
        )
        entry["n"] = int(sum(weights.values()))
    results["external_validation"] = out
    return results
