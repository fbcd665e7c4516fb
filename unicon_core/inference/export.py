"""Turning a federated run folder into a bundle (``unicon export <run> <bundle>``).

The run folder's checkpoint (:mod:`unicon_core.federation.checkpoint`) holds the global
skills, the round, the foundation hash and the resolved config. From the config the foundation
is rebuilt (its hash must equal the checkpoint's) and the site list is read. Task specs come from
the config's ``tasks`` or, for tasks the sites declared themselves, from the sites'
``site.json``; which data each task was trained on (site, synthetic flag, source) from
``site.json`` and ``rounds.jsonl``.

Router prototypes and tabular feature statistics are federated summaries: each site computes
:func:`~unicon_core.inference.prototypes.site_prototype` (and, for tabular tasks,
:func:`~unicon_core.inference.prototypes.feature_moments`) over its train split and sends them
in its query reply; the server pools them by counts into the run's ``summaries.json``
(:mod:`unicon_core.inference.summaries`), which ``export`` uses. For a run folder without that
file (made before the query round carried summaries), ``export`` computes them with the same
functions from the site folders if reachable and says so in the manifest.

Out-of-distribution thresholds (:mod:`unicon_core.inference.ood`) are chosen at export on the
validation splits of the reachable site folders (never test), scored against the prototypes.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from unicon_core.config import TaskSpec
from unicon_core.inference.bundle import Bundle, BundleError, SiteRecord, TaskEntry, save_bundle
from unicon_core.inference.ood import OODCalibration, calibrate_ood
from unicon_core.inference.prototypes import (
    Prototype,
)

if TYPE_CHECKING:
    from unicon_core.data import Site
    from unicon_core.data.transforms import PreprocessConfig
    from unicon_core.model import UniconModel

ROUTER_FROM_SITES = "computed at export from the run's site folders with site_prototype"


def federated_summaries(
    model: UniconModel, sites: Sequence[Site]
) -> tuple[dict[str, Prototype], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Router prototypes and pooled clinical ``(mean, std)`` from reachable site folders.

    The same functions the federation's query round runs (each site's
    :func:`~unicon_core.inference.summaries.site_summary` over its train split, pooled by
    counts), for run folders made before that round carried summaries.
    """
    from unicon_core.inference.summaries import pool_summaries, site_summary

    return pool_summaries((site.task_spec.name, *site_summary(site, model)) for site in sites)


def bundle_from_model(
    model: UniconModel,
    trained_on: Mapping[str, Sequence[SiteRecord]],
    *,
    preprocess: PreprocessConfig | None = None,
    router: Mapping[str, Prototype] | None = None,
    feature_stats: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    source: dict[str, Any] | None = None,
    ood: Mapping[str, OODCalibration] | None = None,
) -> Bundle:
    """An in-memory bundle of ``model``'s tasks (save it with :func:`save_bundle`)."""
    from unicon_core.data.transforms import PreprocessConfig

    feature_stats = feature_stats or {}
    missing = sorted(set(model.tasks) - set(trained_on))
    if missing:
        raise ValueError(f"bundle_from_model: trained_on names no site for tasks {missing}")
    tasks = {
        name: TaskEntry(
            spec=model.spec(name),
            trained_on=list(trained_on[name]),
            feature_mean=feature_stats.get(name, (None, None))[0],
            feature_std=feature_stats.get(name, (None, None))[1],
            ood=(ood or {}).get(name),
        )
        for name in model.tasks
    }
    return Bundle(
        model=model,
        tasks=tasks,
        preprocess=preprocess or PreprocessConfig(),
        router=dict(router or {}),
        source=dict(source or {}),
    )


def _site_records(
    run_dir: Path, settings: Any
) -> tuple[dict[str, TaskSpec], dict[str, list[SiteRecord]], list[Any]]:
    """Specs declared by sites, provenance per task, and the sites that could be opened."""
    from unicon_core.data import open_site, read_site_json
    from unicon_core.federation.outputs import ROUNDS_FILE, read_jsonl

    examples: dict[str, int] = {}
    site_task: dict[str, str] = {}
    for row in read_jsonl(run_dir / ROUNDS_FILE):
        for site, entry in row.get("sites", {}).items():
            site_task[site] = str(entry.get("task", site_task.get(site, "")))
            train = entry.get("train") or {}
            if "num-examples" in train:
                examples[site] = int(train["num-examples"])
    specs: dict[str, TaskSpec] = {}
    records: dict[str, list[SiteRecord]] = {}
    opened = []
    fed = settings.federation
    for name in fed.sites:
        try:
            path = fed.site_path(name)
            meta = read_site_json(path)
        except (OSError, ValueError):
            continue  # not reachable from here (a real deployment): provenance from results.json
        task = meta.task.name
        specs.setdefault(task, meta.task)
        records.setdefault(task, []).append(
            SiteRecord(name, meta.synthetic, meta.source, meta.description, examples.get(name))
        )
        try:
            opened.append(open_site(path, spec=meta.task, seed=settings.seed))
        except (OSError, ValueError) as exc:  # invalid data: provenance kept, no prototype
            print(f"warning: site {name!r} left out of the router: {exc}", file=sys.stderr)
    return specs, records, opened


def export_run(
    run_dir: Path | str, bundle_dir: Path | str, *, embed_foundation: bool = True
) -> Path:
    """Write the bundle of a run folder's latest checkpoint; returns the bundle folder."""
    import torch

    from unicon_core.data.transforms import PreprocessConfig
    from unicon_core.federation.aggregation import slice_task, tasks_of
    from unicon_core.federation.checkpoint import load_checkpoint
    from unicon_core.federation.config import settings_from_config
    from unicon_core.federation.outputs import RESULTS_FILE, TASKS_FILE
    from unicon_core.inference.summaries import read_summaries
    from unicon_core.model import UniconModel

    run = Path(run_dir).resolve()
    ckpt = load_checkpoint(run)
    settings = settings_from_config(ckpt.config)
    model = UniconModel(settings.backbone, seed=settings.seed)
    if model.foundation_hash != ckpt.foundation_hash:
        raise BundleError(
            f"{run}: the backbone built from the run's config has hash "
            f"{model.foundation_hash[:12]}..., the checkpoint's skills were trained on "
            f"{ckpt.foundation_hash[:12]}... (is backbone.checkpoint still the same file?)"
        )
    site_specs, records, sites = _site_records(run, settings)
    results = json.loads((run / RESULTS_FILE).read_text()) if (run / RESULTS_FILE).is_file() else {}
    # what the federation's query round recorded (spec, synthetic flag, sites per task)
    run_tasks = json.loads((run / TASKS_FILE).read_text()) if (run / TASKS_FILE).is_file() else {}
    synthetic_tasks = set(results.get("synthetic", [])) | {
        t for t, info in run_tasks.items() if info.get("synthetic")
    }
    problems = []
    for task in sorted(tasks_of(ckpt.arrays)):
        spec = settings.tasks.get(task) or site_specs.get(task)
        if spec is None and task in run_tasks:
            spec = TaskSpec.from_dict(run_tasks[task]["spec"])
        if spec is None:
            problems.append(
                f"task {task!r}: no spec in the config's tasks, in {TASKS_FILE} or a reachable site"
            )
            continue
        model.add_task(spec)
        state = {k: torch.from_numpy(np.array(v)) for k, v in slice_task(ckpt.arrays, task).items()}
        model.load_skill_state_dict(task, state)
        if task not in records and task in run_tasks:
            records[task] = [
                SiteRecord(site, bool(run_tasks[task]["synthetic"]), "recorded by the query round")
                for site in run_tasks[task]["sites"]
            ]
        if task not in records:
            if not results:
                problems.append(
                    f"task {task!r}: no reachable site.json and no {RESULTS_FILE} to say whether "
                    "its data are synthetic"
                )
                continue
            records[task] = [
                SiteRecord(
                    "unknown-sites", task in synthetic_tasks, "site folders not reachable at export"
                )
            ]
    if problems:
        raise BundleError(f"cannot export {run}:\n  " + "\n  ".join(problems))
    router: dict[str, Prototype] = {}
    feature_stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    reachable = [s for s in sites if s.task_spec.name in model.specs]
    federated = read_summaries(run)
    if federated is not None:  # gathered by the federation itself (query round)
        router, feature_stats, raw = federated
        router_source, router_sites = (
            raw["source"],
            sorted({s for names in raw["sites"].values() for s in names}),
        )
    elif reachable:
        router, feature_stats = federated_summaries(model, reachable)
        router_source, router_sites = ROUTER_FROM_SITES, sorted(s.name for s in reachable)
    else:
        router_source, router_sites = (
            "none (no summaries in the run, site folders not reachable)",
            [],
        )
    preprocess = PreprocessConfig.from_mapping(dict(settings.resolved.get("preprocess") or {}))
    # OOD thresholds: the reachable sites' validation splits (never test), scored against the
    # federated prototypes; without reachable sites the bundle carries none
    ood = calibrate_ood(router, reachable) if router and reachable else {}
    bundle = bundle_from_model(
        model,
        {t: records[t] for t in model.tasks},
        preprocess=preprocess,
        router=router,
        feature_stats=feature_stats,
        source={
            "run_dir": str(run),
            "round": ckpt.round,
            "experiment": settings.experiment,
            "router": router_source,
            "router_sites": router_sites,
            "stopped_sites": ckpt.stopped,
            "ood": (
                "thresholds from the validation splits of " + ", ".join(
                    sorted({s for c in ood.values() for s in c.sites})
                )
                if ood
                else "none (no reachable site with a validation split)"
            ),
        },
        ood=ood,
    )
    return save_bundle(bundle, bundle_dir, embed_foundation=embed_foundation)
