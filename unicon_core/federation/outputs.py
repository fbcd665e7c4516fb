"""Run folders and what a federated run leaves in them.

Layout of one run (every path absolute, nothing written elsewhere)::

    <runs_dir>/<timestamp>-<experiment>/
        config.yaml              resolved hydra config
        checkpoint.safetensors   global skills + round (rewritten atomically every round)
        rounds.jsonl             one JSON object per round (metrics, bytes, privacy)
        results.json             summary (schema: :func:`build_results`)
        plots/metrics.png, plots/bytes.png
        wandb/                   offline wandb run (unless disabled)
        sites/<site>/            a simulated site's own state (its privacy ledger)
    <runs_dir>/latest -> <timestamp>-<experiment>

Run state is owner-only: run folders are created 0700, files written here 0600 (atomic writes
through :func:`unicon_core.files.write_atomic`, appended logs created so), whatever the umask.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from unicon_core.data.manifest import SiteRole
from unicon_core.federation.protocol import Status
from unicon_core.files import PRIVATE_FILE_MODE, write_atomic

EVALUATION_ONLY = Status.EVALUATION_ONLY.value
EVALUATION_ROLE = SiteRole.EVALUATION.value

#: Permissions of run folders (owner only); files: ``unicon_core.files.PRIVATE_FILE_MODE``.
PRIVATE_DIR_MODE = 0o700
RESULTS_FILE = "results.json"
#: What the query round learnt of each task: spec, synthetic flag, sites (read by export).
TASKS_FILE = "tasks.json"
ROUNDS_FILE = "rounds.jsonl"
CONFIG_FILE = "config.yaml"
PLOTS_DIR = "plots"
SITES_DIR = "sites"
LATEST = "latest"


def new_run_dir(runs_dir: Path, experiment: str) -> Path:
    """Create ``<runs_dir>/<timestamp>-<experiment>`` (unique, owner-only) and point ``latest``
    at it."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        name = f"{stamp}-{experiment}" + (f"-{i}" if i else "")
        try:
            (runs_dir / name).mkdir(mode=PRIVATE_DIR_MODE)
        except FileExistsError:
            continue
        run_dir = runs_dir / name
        run_dir.chmod(PRIVATE_DIR_MODE)  # mkdir's mode is masked by the umask
        point_latest(run_dir)
        return run_dir
    raise RuntimeError(f"could not create a fresh run folder in {runs_dir}")


def point_latest(run_dir: Path) -> None:
    """Atomically make ``<parent>/latest`` a relative symlink to ``run_dir``."""
    link = run_dir.parent / LATEST
    tmp = run_dir.parent / f".{LATEST}-{os.getpid()}"
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(run_dir.name)
    os.replace(tmp, link)


def json_safe(value: Any) -> Any:
    """Replace NaN/inf by ``None`` (strict JSON) and numpy scalars by Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, obj: Any) -> None:
    """Atomic, strict-JSON write."""
    write_atomic(path, json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n")


def append_jsonl(path: Path, obj: Any) -> None:
    """Append one strict-JSON line (the file is created owner-only, 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(json_safe(obj), allow_nan=False) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE_MODE)
    with os.fdopen(fd, "a") as fh:
        fh.write(line)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """All objects of a JSON-lines file (empty list if it does not exist).

    A last line cut short by a crash during :func:`append_jsonl` is skipped (a resumed run then
    rewrites that round); a broken line anywhere else is an error.
    """
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise
    return rows


def truncate_rounds(path: Path, last_round: int) -> None:
    """Keep only records up to ``last_round`` (a resumed run rewrites later rounds)."""
    rows = [r for r in read_jsonl(path) if int(r["round"]) <= last_round]
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def mean_per_site_round(rounds: Iterable[Mapping[str, Mapping[str, int]]]) -> dict[str, float]:
    """Mean bytes down/up over every (site, round) pair of the given round summaries."""
    downs: list[int] = []
    ups: list[int] = []
    for summary in rounds:
        for entry in summary.values():
            downs.append(entry["bytes_down"])
            ups.append(entry["bytes_up"])
    return {
        "bytes_down_per_site_round": sum(downs) / len(downs) if downs else 0.0,
        "bytes_up_per_site_round": sum(ups) / len(ups) if ups else 0.0,
    }


def _bytes_per_site_round(
    rounds: Sequence[Mapping[str, Any]], *, evaluation_only: bool
) -> dict[str, float]:
    """Mean bytes per (site, round) over the training sites, or over the evaluation-only ones."""
    return mean_per_site_round(
        {s: {"bytes_down": e.get("bytes_down", 0), "bytes_up": e.get("bytes_up", 0)}
         for s, e in row.get("sites", {}).items() if _evaluation_only(e) == evaluation_only}
        for row in rounds
    )


def build_results(
    *,
    experiment: str,
    rounds: Sequence[Mapping[str, Any]],
    task_info: Mapping[str, Mapping[str, Any]],
    full_model_bytes: int,
    privacy: Mapping[str, Mapping[str, float]],
) -> dict[str, Any]:
    """The ``results.json`` summary from the per-round records.

    ``task_info[task]`` holds ``kind``, ``metric`` (primary metric name) and ``synthetic``.
    A task's value is the example-weighted mean over its sites of the last evaluation of the
    aggregated skill; ``per_site`` lists each site's own value. Bytes per site and round are
    the training sites'; evaluation-only sites (which get no train instruction) are averaged
    apart under ``communication.evaluation_only_bytes``.
    """
    tasks: dict[str, Any] = {}
    last_eval: dict[str, dict[str, Any]] = {}
    for row in rounds:  # the last round in which a site reported wins
        for site, entry in row.get("sites", {}).items():
            if entry.get("eval"):
                last_eval[site] = {"task": entry["task"], **entry["eval"]}
    for task, info in task_info.items():
        metric = str(info["metric"])
        per_site = {
            s: e.get(metric) for s, e in sorted(last_eval.items()) if e["task"] == task
        }
        weights = {s: float(last_eval[s].get("num-examples", 0)) for s in per_site}
        finite = {s: v for s, v in per_site.items() if v is not None and math.isfinite(v)}
        total = sum(weights[s] for s in finite)
        value = sum(v * weights[s] for s, v in finite.items()) / total if total else float("nan")
        tasks[task] = {"kind": info["kind"], "metric": metric, "value": value,
                       "per_site": per_site}
    comm = _bytes_per_site_round(rounds, evaluation_only=False)
    external = _bytes_per_site_round(rounds, evaluation_only=True)
    if any(external.values()):
        comm["evaluation_only_bytes"] = external
    return {
        "experiment": experiment,
        "synthetic": sorted(t for t, info in task_info.items() if info.get("synthetic")),
        "rounds": max((int(r["round"]) for r in rounds), default=0),
        "tasks": tasks,
        "communication": {**comm, "full_model_bytes": int(full_model_bytes)},
        "privacy": {site: dict(v) for site, v in sorted(privacy.items())},
    }


def plot_rounds(
    rounds: Sequence[Mapping[str, Any]],
    task_info: Mapping[str, Mapping[str, Any]],
    full_model_bytes: int,
    out_dir: Path,
    full_model_bytes_per_task: Mapping[str, int] | None = None,
) -> list[Path]:
    """Per-task metric and loss per round, and bytes per site and round against the full model.

    Bytes are averaged over each task's training sites (not evaluation-only ones); "down"
    counts the training and the evaluation instruction of the round, "up" both replies.

    Returns the PNG paths. Uses matplotlib's Agg backend explicitly (no display needed).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_dir.mkdir(parents=True, exist_ok=True)
    xs = [int(r["round"]) for r in rounds]
    paths: list[Path] = []

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    ax_metric, ax_loss = fig.subplots(1, 2)
    for task, info in task_info.items():
        metric = str(info["metric"])
        label = f"{task} ({'synthetic' if info.get('synthetic') else 'real'})"
        values = [r.get("tasks", {}).get(task, {}).get(metric) for r in rounds]
        losses = [r.get("tasks", {}).get(task, {}).get("train_loss") for r in rounds]
        ax_metric.plot(xs, [_nan(v) for v in values], marker="o", label=f"{label}: {metric}")
        ax_loss.plot(xs, [_nan(v) for v in losses], marker="o", label=label)
    ax_metric.set(xlabel="round", ylabel="held-out metric of the aggregated skill",
                  title="Per-task metric")
    ax_loss.set(xlabel="round", ylabel="mean local training loss", title="Per-task loss")
    for ax in (ax_metric, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out_dir / "metrics.png")
    fig.savefig(paths[-1], dpi=120)

    fig = Figure(figsize=(10, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    colors = [f"C{i}" for i in range(10)]
    for i, task in enumerate(task_info):
        color = colors[i % len(colors)]
        for direction, style in (("bytes_up", "-"), ("bytes_down", "--")):
            ys = []
            for r in rounds:
                vals = [e.get(direction) for e in r.get("sites", {}).values()
                        if e.get("task") == task and e.get(direction)
                        and not _evaluation_only(e)]
                ys.append(sum(vals) / len(vals) if vals else float("nan"))
            ax.plot(xs, ys, style, marker="o", color=color,
                    label=f"{task} {direction.split('_')[1]}")
        full = (full_model_bytes_per_task or {}).get(task)
        if full:
            ax.axhline(full, color=color, lw=1, ls=":")
    ax.axhline(full_model_bytes, color="black", lw=1, label="full model, mean over sites")
    ax.set_yscale("log")
    ax.set(xlabel="round", ylabel="bytes per site and round (serialized)",
           title="Per site and round: skill up (solid) / down (dashed) vs full model (dotted)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    paths.append(out_dir / "bytes.png")
    fig.savefig(paths[-1], dpi=120)
    return paths


def _evaluation_only(entry: Mapping[str, Any]) -> bool:
    """A round record's site entry of an evaluation-only site (no train instruction): its
    ``role``, kept when a failed evaluate reply overwrites its status (records written
    before the role was recorded say so by their status only)."""
    return entry.get("role") == EVALUATION_ROLE or entry.get("status") == EVALUATION_ONLY


def _nan(value: Any) -> float:
    return float("nan") if value is None else float(value)
