"""A run over one's own site folders: no demo experiment, named after what it runs.

``unicon federate 'federation.site_dirs=[/data/a,/data/b]'`` without an ``experiment=`` choice
would otherwise compose the default experiment (the demo: its name, its ten sites, its tasks).
:func:`own_sites_overrides` drops that experiment and names the run after the tasks the
folders' ``site.json`` files declare and the number of sites, e.g. ``tumour_2sites``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

_SITE_DIRS = "federation.site_dirs="
_EXPERIMENT = re.compile(r"^[~+]{0,2}experiment(=|$)")
_NAME = re.compile(r"^[~+]{0,2}experiment_name(=|$)")


def _paths(value: str) -> list[str]:
    """The folders of a ``[a,b]`` (or ``a``) override value, quotes removed."""
    text = value.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return [p.strip().strip("'\"") for p in text.split(",") if p.strip()]


def run_name(site_dirs: Sequence[str]) -> str:
    """``<task>[_<task>...]_<n>sites`` from the folders' ``site.json`` (a folder whose
    ``site.json`` cannot be read counts as a site of task ``unknown``; the query round then
    reports why it cannot join)."""
    from unicon_core.data.manifest import read_site_json

    tasks: set[str] = set()
    for folder in site_dirs:
        try:
            tasks.add(read_site_json(Path(folder)).task.name)
        except (OSError, ValueError, TypeError):
            tasks.add("unknown")
    return f"{'_'.join(sorted(tasks))}_{len(site_dirs)}sites"


def own_sites_overrides(overrides: Sequence[str]) -> list[str]:
    """``overrides`` plus, when they set ``federation.site_dirs`` and choose no experiment,
    ``~experiment`` (no demo sites, tasks or name) and an ``experiment_name`` from
    :func:`run_name` (unless one is given)."""
    out = list(overrides)
    dirs = [o[len(_SITE_DIRS):] for o in out if o.startswith(_SITE_DIRS)]
    if not dirs or any(_EXPERIMENT.match(o) for o in out):
        return out
    out.insert(0, "~experiment")
    if not any(_NAME.match(o) for o in out):
        out.append(f"+experiment_name={run_name(_paths(dirs[-1]))}")
    return out
