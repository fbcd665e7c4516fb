"""Server-side orchestration of one federated run (called by the thin ServerApp).

1. Resolve the run folder (new, or the one to resume) and write the resolved config.
2. Build the frozen foundation; its hash is the federation's identity.
3. Query round: every site validates its data and introduces itself (site, task spec,
   foundation hash). The server learns node -> site -> task from these replies, so the same
   code serves simulation and deployment.
4. Initialise every task's skill (or load the last checkpoint when resuming) and hand the
   rounds to :class:`~server.strategies.PerTaskFedAvg` through Flower's ``Strategy.start``.
5. After every round: checkpoint (atomic), one JSON line, wandb; at the end results.json and
   plots.
"""

from __future__ import annotations

import importlib
import json
import time
from collections import defaultdict
from logging import INFO
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from server.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from server.strategies.per_task_fedavg import SiteNode
from unicon_core.config import TaskSpec
from unicon_core.federation.config import STRATEGIES, ExperimentSettings
from unicon_core.federation.outputs import (
    CONFIG_FILE,
    LATEST,
    PLOTS_DIR,
    RESULTS_FILE,
    ROUNDS_FILE,
    TASKS_FILE,
    append_jsonl,
    build_results,
    new_run_dir,
    plot_rounds,
    point_latest,
    read_jsonl,
    truncate_rounds,
    write_atomic,
    write_json,
)
from unicon_core.federation.protocol import NUM_EXAMPLES, ConfigKey, InfoKey, RecordKey

if TYPE_CHECKING:
    from unicon_core.federation.tracking import Tracker
    from unicon_core.model import UniconModel


class SiteQueryError(RuntimeError):
    """A site could not join: its data are invalid, its foundation differs, or it is silent."""


def resolve_run_dir(settings: ExperimentSettings) -> Path:
    """The run folder: ``federation.run_dir``, the latest run when resuming, or a new one."""
    fed = settings.federation
    if fed.run_dir:
        run_dir = Path(fed.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        point_latest(run_dir)
        return run_dir
    if not fed.runs_dir:
        raise ValueError(
            "set federation.runs_dir (or federation.run_dir) to an absolute folder; `unicon "
            "federate` and `make demo` do this for you"
        )
    runs_dir = Path(fed.runs_dir)
    if settings.resume:
        latest = runs_dir / LATEST
        if not latest.exists():
            raise FileNotFoundError(f"resume=true but {latest} does not exist")
        return latest.resolve()
    return new_run_dir(runs_dir, settings.experiment)


def query_sites(
    grid: Grid, settings: ExperimentSettings, foundation_hash: str, run_dir: Path
) -> tuple[list[SiteNode], dict[str, TaskSpec], dict[str, bool]]:
    """Ask every node which site and task it serves; fail loudly on any problem.

    The replies also carry each site's router statistics, pooled into ``summaries.json``.
    """
    site_of_summary: dict[str, list[str]] = {}
    expected = len(settings.federation.sites) or 1
    deadline = time.monotonic() + settings.federation.node_wait_s
    while len(node_ids := sorted(grid.get_node_ids())) < expected:
        if time.monotonic() > deadline:
            raise SiteQueryError(f"only {len(node_ids)} of {expected} sites connected")
        time.sleep(0.5)
    messages = [
        Message(
            content=RecordDict({RecordKey.CONFIG.value: ConfigRecord(
                {ConfigKey.FOUNDATION_HASH.value: foundation_hash}
            )}),
            message_type=MessageType.QUERY,
            dst_node_id=node_id,
        )
        for node_id in node_ids
    ]
    replies = list(grid.send_and_receive(messages, timeout=settings.federation.round_timeout_s))
    if len(replies) != len(messages):
        raise SiteQueryError(f"{len(messages) - len(replies)} site(s) did not answer the query")
    nodes: list[SiteNode] = []
    summaries: list[tuple[str, dict[str, Any], int]] = []
    specs: dict[str, TaskSpec] = {}
    synthetic: dict[str, bool] = defaultdict(bool)
    problems: list[str] = []
    for reply in sorted(replies, key=lambda m: m.metadata.src_node_id):
        node_id = reply.metadata.src_node_id
        if reply.has_error():
            problems.append(f"node {node_id}: {reply.error.reason}")
            continue
        info = reply.content.config_records[RecordKey.INFO.value]
        site, task = str(info[InfoKey.SITE.value]), str(info[InfoKey.TASK.value])
        if info[InfoKey.FOUNDATION_HASH.value] != foundation_hash:
            problems.append(f"site {site}: runs another foundation; its skills cannot be mixed")
            continue
        spec = TaskSpec.from_dict(json.loads(str(info[InfoKey.TASK_SPEC.value])))
        if task in specs and specs[task].to_dict() != spec.to_dict():
            problems.append(f"site {site}: task {task!r} differs from another site's definition")
        configured = settings.tasks.get(task)
        if configured is not None and configured.to_dict() != spec.to_dict():
            problems.append(
                f"site {site}: task {task!r} differs from the experiment's tasks.{task}"
            )
        specs.setdefault(task, spec)
        synthetic[task] |= bool(info[InfoKey.SYNTHETIC.value])
        nodes.append(SiteNode(node_id=node_id, site=site, task=task))
        if RecordKey.SUMMARY.value in reply.content.array_records:
            count = int(reply.content.metric_records[RecordKey.METRICS.value][NUM_EXAMPLES])
            arrays = reply.content.array_records[RecordKey.SUMMARY.value]
            summaries.append((task, {k: a.numpy() for k, a in arrays.items()}, count))
            site_of_summary.setdefault(task, []).append(site)
    names = [n.site for n in nodes]
    if len(set(names)) != len(names):
        problems.append(f"site names are not unique: {sorted(names)}")
    if problems:
        raise SiteQueryError("sites could not join the federation:\n  " + "\n  ".join(problems))
    for node in nodes:
        log(INFO, "site %s (node %s) serves task %s", node.site, node.node_id, node.task)
    if summaries:
        from unicon_core.federation.summaries import pool_summaries, write_summaries

        prototypes, stats = pool_summaries(summaries)
        write_summaries(run_dir, prototypes, stats, site_of_summary)
    return nodes, specs, dict(synthetic)


def initial_skills(model: UniconModel, specs: dict[str, TaskSpec]) -> dict[str, Any]:
    """Add every task (sorted by name) and return the union of their initial skills."""
    from unicon_core.federation.aggregation import prefix_task

    union: dict[str, Any] = {}
    for name in sorted(specs):
        model.add_task(specs[name])
        state = {k: v.numpy() for k, v in model.skill_state_dict(name).items()}
        union.update(prefix_task(name, state))
    return union


class RoundRecorder:
    """End-of-round hook: checkpoint, JSON line and wandb for every finished round."""

    def __init__(
        self,
        run_dir: Path,
        settings: ExperimentSettings,
        foundation_hash: str,
        tracker: Tracker,
        stopped: dict[str, str],
    ) -> None:
        self.run_dir = run_dir
        self.settings = settings
        self.foundation_hash = foundation_hash
        self.tracker = tracker
        self.stopped = stopped  # the strategy's dict, shared

    def __call__(self, record: dict[str, Any], arrays: ArrayRecord) -> None:
        """Persist one finished round."""
        from unicon_core.federation.tracking import flatten

        rnd = int(record["round"])
        save_checkpoint(self.run_dir, Checkpoint(
            round=rnd,
            arrays={k: a.numpy() for k, a in arrays.items()},
            foundation_hash=self.foundation_hash,
            config=self.settings.resolved,
            stopped=dict(self.stopped),
        ))
        append_jsonl(self.run_dir / ROUNDS_FILE, {**record, "time": time.time()})
        self.tracker.log(rnd, flatten("", {"tasks": record.get("tasks", {}),
                                           "sites": record.get("sites", {})}))
        log(INFO, "round %d recorded in %s", rnd, self.run_dir)


def run_federation(grid: Grid, settings: ExperimentSettings) -> Path:
    """Run (or resume) the federated experiment; returns the run folder."""
    from omegaconf import OmegaConf

    from unicon_core.federation.tracking import Tracker
    from unicon_core.metrics import PRIMARY_METRIC
    from unicon_core.model import UniconModel

    run_dir = resolve_run_dir(settings)
    write_atomic(run_dir / CONFIG_FILE, OmegaConf.to_yaml(OmegaConf.create(settings.resolved)))
    log(INFO, "run folder: %s", run_dir)

    model = UniconModel(settings.backbone, seed=settings.seed)
    foundation_hash = model.foundation_hash
    nodes, specs, synthetic = query_sites(grid, settings, foundation_hash, run_dir)
    write_json(
        run_dir / TASKS_FILE,
        {
            t: {
                "spec": s.to_dict(),
                "synthetic": synthetic[t],
                "sites": sorted(n.site for n in nodes if n.task == t),
            }
            for t, s in sorted(specs.items())
        },
    )
    arrays = initial_skills(model, specs)
    task_of_site = {n.site: n.task for n in nodes}
    full_bytes = {t: model.full_model_bytes(t) for t in specs}
    site_full = [full_bytes[t] for t in task_of_site.values()]
    full_model_bytes = round(sum(site_full) / len(site_full))

    offset, stopped = 0, {}
    rounds_path = run_dir / ROUNDS_FILE
    if settings.resume:
        ckpt = load_checkpoint(run_dir)
        if ckpt.foundation_hash != foundation_hash:
            raise ValueError(f"{run_dir}: checkpoint was made on another foundation")
        if set(ckpt.arrays) != set(arrays):
            raise ValueError(f"{run_dir}: checkpoint skills do not match the sites' tasks")
        arrays, offset, stopped = ckpt.arrays, ckpt.round, dict(ckpt.stopped)
        truncate_rounds(rounds_path, offset)
        log(INFO, "resuming after round %d of %d", offset, settings.federation.rounds)
    elif rounds_path.exists():
        rounds_path.unlink()

    tracker = Tracker(run_dir, mode=settings.federation.wandb,
                      project=settings.federation.wandb_project,
                      name=run_dir.name, config=settings.resolved)
    module_name, cls_name = STRATEGIES[settings.strategy.name].split(":")
    strategy_cls = getattr(importlib.import_module(module_name), cls_name)
    strategy = strategy_cls(
        nodes,
        foundation_hash=foundation_hash,
        evaluate=settings.federation.evaluate,
        round_offset=offset,
        weighted_by_key=settings.strategy.weighted_by,
    )
    strategy.stopped.update(stopped)
    strategy.on_round_end = RoundRecorder(run_dir, settings, foundation_hash, tracker,
                                          strategy.stopped)
    remaining = settings.federation.rounds - offset
    try:
        if remaining > 0:
            from flwr.app import Array

            strategy.start(
                grid=grid,
                initial_arrays=ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                num_rounds=remaining,
                timeout=settings.federation.round_timeout_s,
            )
        rows = read_jsonl(rounds_path)
        task_info = {
            t: {"kind": s.kind.value, "metric": PRIMARY_METRIC[s.kind], "synthetic": synthetic[t]}
            for t, s in sorted(specs.items())
        }
        results = build_results(
            experiment=settings.experiment,
            rounds=rows,
            task_info=task_info,
            full_model_bytes=full_model_bytes,
            privacy=privacy_summary(rows) if settings.privacy.enabled else {},
        )
        results["communication"]["full_model_bytes_per_task"] = full_bytes
        results["stopped"] = dict(strategy.stopped)
        write_json(run_dir / RESULTS_FILE, results)
        if settings.federation.plots and rows:
            plot_rounds(rows, task_info, full_model_bytes, run_dir / PLOTS_DIR, full_bytes)
        tracker.finish({"results": json.dumps(results, default=str)})
    finally:
        tracker.finish()
    log(INFO, "results: %s", run_dir / RESULTS_FILE)
    return run_dir


def privacy_summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each site's last reported (epsilon, delta)."""
    out: dict[str, dict[str, float]] = {}
    for row in rows:
        for site, entry in row.get("sites", {}).items():
            train = entry.get("train") or {}
            if "epsilon" in train:
                out[site] = {"epsilon": float(train["epsilon"]), "delta": float(train["delta"])}
    return out
