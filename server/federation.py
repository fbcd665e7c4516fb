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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from logging import ERROR, INFO, WARNING
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from server.strategies.per_task_fedavg import SiteNode
from unicon_core.config import TaskKind, TaskSpec
from unicon_core.federation.checkpoint import (
    CHECKPOINT_FILE,
    Checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from unicon_core.federation.config import STRATEGIES, ExperimentSettings, FederationConfig
from unicon_core.federation.exclusions import short_reason
from unicon_core.federation.external import add_uncertainty, split_external
from unicon_core.federation.outputs import (
    CONFIG_FILE,
    LATEST,
    PLOTS_DIR,
    PRIVATE_DIR_MODE,
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
from unicon_core.federation.protocol import (
    EVAL_EXAMPLES,
    NUM_EXAMPLES,
    ConfigKey,
    InfoKey,
    RecordKey,
    Status,
)
from unicon_core.federation.replies import MAX_EXAMPLES, declared_count
from unicon_flower.records import arrays_to_record, record_to_arrays

if TYPE_CHECKING:
    import numpy as np

    from unicon_core.federation.tracking import Tracker
    from unicon_core.model import UniconModel


class SiteQueryError(RuntimeError):
    """A site could not join: its data are invalid, its foundation differs, or it is silent."""


def resolve_run_dir(settings: ExperimentSettings) -> Path:
    """The run folder: ``federation.run_dir``, the latest run when resuming, or a new one."""
    fed = settings.federation
    if fed.run_dir:
        run_dir = Path(fed.run_dir)
        created = not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        if created:  # a folder the run creates is owner-only, as new_run_dir's
            run_dir.chmod(PRIVATE_DIR_MODE)
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


@dataclass
class QueryResult:
    """What the query round learnt: joined sites, task specs, synthetic flags, exclusions."""

    nodes: list[SiteNode]
    specs: dict[str, TaskSpec]
    synthetic: dict[str, bool]
    #: site name (or ``node <id>`` when the site could not even say its name) -> reason
    excluded: dict[str, str] = field(default_factory=dict)
    #: site name -> the device it computes on, as the site reported it
    devices: dict[str, str] = field(default_factory=dict)


def wait_for_nodes(grid: Grid, fed: FederationConfig) -> list[int]:
    """Node ids once every configured site is connected, or whoever is there at ``node_wait_s``.

    Raises :class:`SiteQueryError` if fewer than ``min_sites`` nodes connected by then.
    """
    expected = max(len(fed.sites), fed.min_sites)
    deadline = time.monotonic() + fed.node_wait_s
    node_ids = sorted(grid.get_node_ids())
    while len(node_ids) < expected and time.monotonic() < deadline:
        time.sleep(0.5)
        node_ids = sorted(grid.get_node_ids())
    if len(node_ids) < fed.min_sites:
        raise SiteQueryError(
            f"only {len(node_ids)} site(s) connected within {fed.node_wait_s:g} s; the run needs "
            f"federation.min_sites={fed.min_sites}"
        )
    if len(node_ids) < expected:
        log(WARNING, "%d of %d configured sites connected within %g s; going on without the "
            "others", len(node_ids), expected, fed.node_wait_s)
    return node_ids


def query_sites(
    grid: Grid, settings: ExperimentSettings, foundation_hash: str, run_dir: Path
) -> QueryResult:
    """Ask every node which site and task it serves; exclude (and log) sites that cannot join.

    A site is excluded, not fatal, when it fails (invalid data: the error lists the problems),
    does not answer, runs another foundation, defines its task differently, or repeats another
    site's name; a task left with fewer than ``min_sites_per_task`` sites is excluded too. The
    run stops only if fewer than ``min_sites`` sites remain. The replies also carry each site's
    router statistics, pooled into ``summaries.json``.
    """
    fed = settings.federation
    node_ids = wait_for_nodes(grid, fed)
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
    replies = list(grid.send_and_receive(messages, timeout=fed.round_timeout_s))
    excluded: dict[str, str] = {}
    answered = {m.metadata.src_node_id for m in replies}
    for node_id in node_ids:
        if node_id not in answered:
            excluded[f"node {node_id}"] = "no reply to the query before the timeout"
    joined: list[tuple[SiteNode, TaskSpec, bool, Message]] = []
    specs: dict[str, TaskSpec] = {
        t: spec for t, spec in settings.tasks.items()
    }
    claimed: dict[str, list[int]] = defaultdict(list)
    for reply in sorted(replies, key=lambda m: m.metadata.src_node_id):
        node_id = reply.metadata.src_node_id
        if node_id not in node_ids:
            log(WARNING, "query: reply from node %s, which was not asked, ignored", node_id)
            continue
        try:  # one guarded step per reply: a hostile reply excludes its node, never the run
            outcome = _query_reply(reply, foundation_hash, settings, specs)
        except Exception as err:  # a reply that cannot be decoded
            outcome = f"undecodable query reply ({type(err).__name__}: {str(err)[:200]})"
        if isinstance(outcome, str):
            excluded[f"node {node_id}"] = outcome
            continue
        if not isinstance(outcome[0], SiteNode):
            excluded[str(outcome[0])] = str(outcome[1])
            continue
        node, spec, is_synthetic = outcome
        claimed[node.site].append(node_id)
        specs[node.task] = spec
        joined.append((node, spec, is_synthetic, reply))
    for site, ids in claimed.items():  # a name claimed twice: neither node can be trusted
        if len(ids) > 1:
            joined = [j for j in joined if j[0].site != site]
            excluded[site] = (f"site name {site!r} is claimed by nodes "
                              f"{', '.join(map(str, ids))}; none of them joins")
    counts: dict[str, int] = defaultdict(int)
    for node, *_ in joined:
        counts[node.task] += 1
    small = {t for t, n in counts.items() if n < fed.min_sites_per_task}
    for node, *_ in joined:
        if node.task in small:
            excluded[node.site] = (f"task {node.task!r} has {counts[node.task]} site(s), fewer "
                                   f"than federation.min_sites_per_task={fed.min_sites_per_task}")
    joined = [j for j in joined if j[0].task not in small]
    for who, reason in sorted(excluded.items()):
        log(ERROR, "site %s excluded from the run: %s", who, reason)
    if len(joined) < fed.min_sites:
        detail = "\n  ".join(f"{w}: {r}" for w, r in sorted(excluded.items()))
        raise SiteQueryError(
            f"{len(joined)} site(s) could join the federation, federation.min_sites="
            f"{fed.min_sites}; sites could not join:\n  {detail}"
        )
    synthetic: dict[str, bool] = defaultdict(bool)
    summaries: list[tuple[str, dict[str, Any], int]] = []
    site_of_summary: dict[str, list[str]] = {}
    for node, _, is_synthetic, reply in joined:
        synthetic[node.task] |= is_synthetic
        log(INFO, "site %s (node %s) serves task %s", node.site, node.node_id, node.task)
        arrays = _summary(reply, node)
        if arrays is not None:
            summaries.append((node.task, arrays, int(node.train_examples or 0)))
            site_of_summary.setdefault(node.task, []).append(node.site)
    if summaries:
        from unicon_core.inference.summaries import pool_summaries, write_summaries

        try:
            prototypes, stats = pool_summaries(summaries)
        except ValueError as err:  # e.g. two sites of a task sent vectors of different lengths
            log(ERROR, "router statistics not pooled (%s); the bundle will have no router "
                "prototypes", err)
        else:
            write_summaries(run_dir, prototypes, stats, site_of_summary)
    tasks = {n.task for n, *_ in joined}
    return QueryResult(
        nodes=[n for n, *_ in joined],
        specs={t: s for t, s in specs.items() if t in tasks},
        synthetic=dict(synthetic),
        excluded=excluded,
        devices={n.site: str(r.content.config_records[RecordKey.INFO.value].get(
            InfoKey.DEVICE.value, "unknown")) for n, _, _, r in joined},
    )


def _query_reply(
    reply: Message, foundation_hash: str, settings: ExperimentSettings,
    specs: Mapping[str, TaskSpec],
) -> tuple[SiteNode, TaskSpec, bool] | tuple[str, str] | str:
    """One query reply: ``(node, spec, synthetic)`` when the site may join, else why not.

    Why not is ``(site, reason)`` when the site could say its name, else a reason for its node.
    May raise on a reply whose records cannot be decoded (the caller excludes that node).
    """
    node_id = reply.metadata.src_node_id
    if reply.has_error():
        return short_reason(reply.error.reason)
    info = reply.content.config_records.get(RecordKey.INFO.value)
    if info is None:
        return "query reply carries no info record"
    site = info.get(InfoKey.SITE.value)
    if not isinstance(site, str) or not site or len(site) > 128 or "/" in site:
        return f"query reply names no usable site ({str(site)[:64]!r})"
    if info.get(InfoKey.STATUS.value) == Status.INVALID_DATA.value:
        return site, short_reason(str(info.get(InfoKey.REASON.value, "")))
    if info.get(InfoKey.STATUS.value) != Status.READY.value:
        return site, f"query status {str(info.get(InfoKey.STATUS.value))[:32]!r} is not 'ready'"
    if info.get(InfoKey.FOUNDATION_HASH.value) != foundation_hash:
        return site, "runs another foundation; its skills cannot be mixed"
    task = info.get(InfoKey.TASK.value)
    spec = TaskSpec.from_dict(json.loads(str(info.get(InfoKey.TASK_SPEC.value))))
    if task != spec.name:
        return site, f"task {str(task)[:64]!r} is not the task its spec defines"
    if task in specs and specs[task].to_dict() != spec.to_dict():
        where = "the experiment's" if task in settings.tasks else "another site's"
        return site, f"task {task!r} differs from {where} definition of it"
    metrics = reply.content.metric_records.get(RecordKey.METRICS.value) or {}
    train_n = declared_count(metrics.get(NUM_EXAMPLES))
    if train_n is None:
        return site, (f"declared {NUM_EXAMPLES} {str(metrics.get(NUM_EXAMPLES))[:32]} is not a "
                      f"count in [0, {MAX_EXAMPLES}]")
    eval_n = declared_count(metrics.get(EVAL_EXAMPLES, MAX_EXAMPLES))
    if eval_n is None:
        return site, f"declared {EVAL_EXAMPLES} is not a count in [0, {MAX_EXAMPLES}]"
    node = SiteNode(node_id=node_id, site=site, task=task, train_examples=train_n,
                    eval_examples=eval_n if EVAL_EXAMPLES in metrics else None)
    return node, spec, bool(info.get(InfoKey.SYNTHETIC.value, False))


def _summary(reply: Message, node: SiteNode) -> dict[str, Any] | None:
    """A joined site's router statistics, or None when absent or malformed (logged)."""
    from unicon_core.inference.summaries import summary_problems

    record = reply.content.array_records.get(RecordKey.SUMMARY.value)
    if record is None:
        return None
    try:
        arrays = record_to_arrays(record)
    except Exception as err:  # damaged bytes or an unknown stype: drop the summary only
        log(WARNING, "site %s: router statistics undecodable (%s), left out", node.site,
            type(err).__name__)
        return None
    problems = summary_problems(arrays, node.train_examples or 0)
    if problems:
        log(WARNING, "site %s: router statistics left out: %s", node.site, "; ".join(problems))
        return None
    return arrays


def check_task_options(settings: ExperimentSettings, specs: Mapping[str, TaskSpec]) -> None:
    """Refuse at start what a task's sites would refuse every round: logit adjustment on a
    task that is not a classification (``lora:`` applies to every task; ``lora_tasks`` names
    the classification tasks)."""
    wrong = sorted(t for t, spec in specs.items() if settings.strategy.for_task(t).logit_adjust
                   and spec.kind != TaskKind.CLASSIFICATION)
    if wrong:
        raise ValueError(
            f"strategy.lora.logit_adjust is set for task(s) {wrong}, which are not "
            f"classifications ({', '.join(f'{t}: {specs[t].kind.value}' for t in wrong)}); set "
            "it per task under strategy.lora_tasks")


def initial_skills(
    model: UniconModel, specs: dict[str, TaskSpec], plan: str = "skill"
) -> dict[str, Any]:
    """Add every task (sorted by name) and return the union of their initial skills (or of
    what the run's ``plan`` exchanges per task, :mod:`unicon_core.training.plans`)."""
    from unicon_core.federation.aggregation import prefix_task
    from unicon_core.training.plans import plan_state

    union: dict[str, Any] = {}
    for name in sorted(specs):
        model.add_task(specs[name])
        state = {k: v.numpy() for k, v in plan_state(model, name, plan).items()}
        union.update(prefix_task(name, state))
    return union


def skills_from_bundle(
    bundle_dir: Path, specs: Mapping[str, TaskSpec], foundation_hash: str
) -> dict[str, dict[str, Any]]:
    """Starting skills from a bundle (``unicon train --bundle`` or ``unicon export``) for the
    tasks of this run it holds (``federation.init_skill``); a bundle on another foundation or
    defining a task differently is an error."""
    from unicon_core.inference.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    if bundle.model.foundation_hash != foundation_hash:
        raise ValueError(f"federation.init_skill: {bundle_dir} was trained on another "
                         "foundation (backbone); its skills cannot start this run")
    out: dict[str, dict[str, Any]] = {}
    for task, spec in specs.items():
        if task not in bundle.tasks:
            log(WARNING, "federation.init_skill: %s has no skill for task %s; it starts fresh",
                bundle_dir, task)
            continue
        entry = bundle.entry(task)
        if entry.spec.to_dict() != spec.to_dict():
            raise ValueError(f"federation.init_skill: task {task!r} in {bundle_dir} is defined "
                             "differently from this run's sites; its skill cannot start it")
        out[task] = {k: v.numpy() for k, v in bundle.model.skill_state_dict(task).items()}
        log(INFO, "task %s starts from the skill in %s", task, bundle_dir)
    return out


def merge_resumed(initial: dict[str, Any], saved: dict[str, Any]) -> dict[str, Any]:
    """Skills to resume from: the checkpoint's, plus fresh ones for tasks it does not have.

    A task whose sites are all absent now keeps its saved skill untouched (it travels in the
    checkpoint, no site is asked); a task that joined since starts from its initial skill. A
    saved tensor whose shape differs from the task's current definition is an error.
    """
    merged = dict(initial)
    for key, value in saved.items():
        if key in initial and initial[key].shape != value.shape:
            raise ValueError(f"checkpoint tensor {key} has shape {value.shape}, the task now "
                             f"defines {initial[key].shape}")
        merged[key] = value
    return merged


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Delete temp files a killed server left behind (``write_atomic``'s ``.<name>-*.tmp``)."""
    stale = sorted(run_dir.glob(".*.tmp"))
    for path in stale:
        log(WARNING, "removing %s, left half-written by an interrupted run", path.name)
        path.unlink(missing_ok=True)
    return stale


class RoundRecorder:
    """End-of-round hook: checkpoint, JSON line and wandb for every finished round."""

    def __init__(
        self,
        run_dir: Path,
        settings: ExperimentSettings,
        foundation_hash: str,
        tracker: Tracker,
        stopped: dict[str, str],
        state: Callable[[], dict[str, np.ndarray]] | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.settings = settings
        self.foundation_hash = foundation_hash
        self.tracker = tracker
        self.stopped = stopped  # the strategy's dict, shared
        self.state = state  # the strategy's server_state (optimiser moments, FedSA B)

    def __call__(self, record: dict[str, Any], arrays: ArrayRecord) -> None:
        """Persist one finished round."""
        from unicon_core.federation.tracking import flatten

        rnd = int(record["round"])
        # The log line first, the checkpoint last: a crash in between leaves a line for a round
        # the checkpoint does not have, which a resume drops and redoes (never a lost round).
        append_jsonl(self.run_dir / ROUNDS_FILE, {**record, "time": time.time()})
        save_checkpoint(self.run_dir, Checkpoint(
            round=rnd,
            arrays=record_to_arrays(arrays),
            foundation_hash=self.foundation_hash,
            config=self.settings.resolved,
            stopped=dict(self.stopped),
            state=self.state() if self.state is not None else {},
        ))
        self.tracker.log(rnd, flatten("", {"tasks": record.get("tasks", {}),
                                           "sites": record.get("sites", {})}))
        log(INFO, "round %d recorded in %s", rnd, self.run_dir)


def run_federation(
    grid: Grid,
    settings: ExperimentSettings,
    initial: Mapping[str, Mapping[str, np.ndarray]] | None = None,
) -> Path:
    """Run (or resume) the federated experiment; returns the run folder.

    ``initial`` gives starting skills for some tasks (``task -> portable skill arrays``, e.g. a
    task continuing from an earlier stage or expanded from another task) in place of fresh ones;
    keys and shapes must match the task's skill. A resumed run takes its checkpoint instead.
    """
    from omegaconf import OmegaConf

    from unicon_core.federation.tracking import Tracker
    from unicon_core.metrics import PRIMARY_METRIC
    from unicon_core.model import UniconModel

    started = time.time()
    run_dir = resolve_run_dir(settings)
    write_atomic(run_dir / CONFIG_FILE, OmegaConf.to_yaml(OmegaConf.create(settings.resolved)))
    log(INFO, "run folder: %s", run_dir)

    model = UniconModel(settings.backbone, seed=settings.seed)
    foundation_hash = model.foundation_hash
    query = query_sites(grid, settings, foundation_hash, run_dir)
    queried = time.time()
    nodes, specs, synthetic = query.nodes, query.specs, query.synthetic
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
    check_task_options(settings, specs)
    arrays = initial_skills(model, specs, settings.federation.plan)
    if initial is None and settings.federation.init_skill:
        initial = skills_from_bundle(Path(settings.federation.init_skill), specs,
                                     foundation_hash)
    unknown = sorted(set(initial or {}) - set(specs))
    if unknown:
        raise ValueError(f"initial skills given for tasks no site of this run serves: {unknown}")
    if initial:
        import numpy

        from unicon_core.federation.aggregation import replace_task

        for task, skill in initial.items():
            arrays = replace_task(arrays, task, {k: numpy.asarray(v) for k, v in skill.items()})
    task_of_site = {n.site: n.task for n in nodes}
    full_bytes = {t: model.full_model_bytes(t) for t in specs}
    site_full = [full_bytes[t] for t in task_of_site.values()]
    full_model_bytes = round(sum(site_full) / len(site_full))

    offset, stopped, saved_state = 0, {}, {}
    rounds_path = run_dir / ROUNDS_FILE
    if settings.resume and (run_dir / CHECKPOINT_FILE).is_file():
        ckpt = load_checkpoint(run_dir)
        if ckpt.foundation_hash != foundation_hash:
            raise ValueError(f"{run_dir}: checkpoint was made on another foundation")
        arrays, offset, stopped = merge_resumed(arrays, ckpt.arrays), ckpt.round, ckpt.stopped
        saved_state = ckpt.state
        truncate_rounds(rounds_path, offset)
        remove_stale_temp_files(run_dir)
        log(INFO, "resuming after round %d of %d", offset, settings.federation.rounds)
    else:
        if settings.resume:
            log(WARNING, "resume=true but %s has no checkpoint yet: starting at round 1",
                run_dir)
        rounds_path.unlink(missing_ok=True)

    tracker = Tracker(run_dir, mode=settings.federation.wandb,
                      project=settings.federation.wandb_project,
                      name=run_dir.name, config=settings.resolved)
    module_name, cls_name = STRATEGIES[settings.strategy.name].split(":")
    strategy_cls = getattr(importlib.import_module(module_name), cls_name)
    strategy = strategy_cls(
        nodes,
        foundation_hash=foundation_hash,
        evaluate=settings.federation.evaluate,
        evaluate_every=settings.federation.evaluate_every,
        round_offset=offset,
        weighted_by_key=settings.strategy.weighted_by,
        min_sites_per_task=settings.federation.min_sites_per_task,
        max_update_norm=settings.strategy.max_update_norm,
        update_norm_factor=settings.strategy.update_norm_factor,
        message_ttl_s=settings.federation.round_timeout_s,
        lora={t: settings.strategy.for_task(t) for t in specs},
        seed=settings.seed,
        **settings.strategy.options(),
    )
    strategy.stopped.update(stopped)
    server_state = getattr(strategy, "server_state", None)
    if saved_state:
        strategy.load_server_state(saved_state)
    elif offset and (stateful := sorted(t for t in specs if (o := settings.strategy.for_task(
            t)).server_opt != "fedavg" or o.lora_rule == "fedsa")):
        log(WARNING, "resume: the checkpoint holds no server state; tasks %s restart their "
            "server optimiser state and FedSA B factors empty", stateful)
    restarted = sorted(t for t in specs if (o := settings.strategy.for_task(t)).codec
                       in ("int8", "topk", "fp16") or o.downlink_codec != "none")
    if offset and restarted:
        log(WARNING, "resume: tasks %s restart the sites' error-feedback residuals at zero and "
            "send each site the whole skill first (both live in the sites' per-run state); "
            "skills, server optimiser state, FedSA B factors, round and seeds are restored",
            restarted)
    scaffold = sorted(t for t in specs if settings.strategy.for_task(t).scaffold)
    if offset and scaffold:
        log(INFO, "resume: tasks %s restart SCAFFOLD's c at zero with the sites' own c_i "
            "(the c_i live in the sites' per-run state, c is their mean)", scaffold)
    strategy.on_round_end = RoundRecorder(run_dir, settings, foundation_hash, tracker,
                                          strategy.stopped, server_state)
    remaining = settings.federation.rounds - offset
    try:
        if remaining > 0:

            strategy.start(
                grid=grid,
                initial_arrays=arrays_to_record(arrays),
                num_rounds=remaining,
                timeout=settings.federation.round_timeout_s,
            )
        rounds_done = time.time()
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
        split_external(add_uncertainty(results, rows), rows,
                       {n.site for n in nodes if n.evaluation_only})
        results["stopped"] = dict(strategy.stopped)
        results["excluded"] = dict(query.excluded)
        results["backbone"] = model.backbone_info()
        results["device"] = {"train.device": settings.train.device, "sites": query.devices}
        results["timing"] = {  # this server process's wall clock (Unix seconds, seconds)
            "started": started, "query_s": queried - started,
            "rounds_s": rounds_done - queried, "rounds_run": max(remaining, 0),
        }
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
