"""Held-out numbers in ``results.json``: n and 95 % bootstrap intervals, and evaluation-only
sites reported apart as external validation.

Every site's held-out metric comes with its n and the bootstrap interval the site computed on
its own predictions (:func:`unicon_core.metrics.bootstrap_ci`). A task's value is the
example-weighted mean over its sites; predictions are never pooled across sites, so that value
has an n but no interval of its own (the per-site intervals are next to it).

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
                "ci95": _interval(last.get(site, {}), metric),
            }
            entry.get("per_site_n", {}).pop(site, None)
            entry.get("per_site_ci95", {}).pop(site, None)
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


def _interval(evaluation: Mapping[str, Any], metric: str) -> list[float] | None:
    """``[low, high]`` of the site's bootstrap interval, None when it reported none."""
    from unicon_core.metrics import CI_HIGH, CI_LOW

    low, high = evaluation.get(f"{metric}{CI_LOW}"), evaluation.get(f"{metric}{CI_HIGH}")
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return None
    return [float(low), float(high)]


def add_uncertainty(results: dict[str, Any], rounds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Add each task's ``n`` and, per site, ``per_site_n`` and ``per_site_ci95`` (``[low,
    high]`` or None) from the sites' last evaluations. Returns ``results``."""
    last = last_evaluations(rounds)
    for entry in results.get("tasks", {}).values():
        sites = list(entry.get("per_site", {}))
        entry["per_site_n"] = {
            s: int(last.get(s, {}).get(NUM_EXAMPLES_KEY, 0)) for s in sites
        }
        entry["per_site_ci95"] = {s: _interval(last.get(s, {}), entry["metric"]) for s in sites}
        entry["n"] = sum(entry["per_site_n"].values())
        entry["ci95"] = None  # predictions are not pooled across sites: see per_site_ci95
    return results


def site_cell(value: float | None, n: int | None, ci: Sequence[float] | None) -> str:
    """``0.812 [0.701, 0.902] n=120`` for a results table (``n/a`` for an undefined value)."""
    if value is None or not math.isfinite(value):
        text = "n/a"
    else:
        text = f"{value:.3f}"
        if ci is not None:
            text += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    return f"{text} n={n}" if n is not None else text
