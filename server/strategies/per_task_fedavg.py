"""Per-task FedAvg: one FedAvg per task over the sites that hold it.

The global state is the union of every task's skill in one ``ArrayRecord`` whose keys carry the
task as a prefix (``"<task>.<skill key>"``). Each round every site receives only its own task's
slice (prefix removed), replies with that slice trained, and the replies are grouped by task and
averaged weighted by their number of training examples. A task's slice is only ever replaced by
the average of its own sites, so sites of one task never change another task's skill; a task
with one site simply keeps that site's update (federated = local there).

Faults and bad updates: every reply is decoded (:mod:`server.strategies.update_decoding`:
deltas or whole skills, headers before bytes) and checked in one guarded step
(:mod:`unicon_core.federation.replies`: identity bound to the query round's node, the round it
answers, status, example counts bounded by the query round's declared counts, metric ranges;
the skill against the skill sent: foundation hash, keys, shapes, dtypes, finite values, optional
fixed norm bound), then the round's own norm bound (k x the task's median update norm) and
replays (byte-identical to an earlier round's update) are applied; a rejected reply, a site
error, an undecodable reply or a site that never answers is
logged with the site and the reason and left out, and the round is aggregated from the rest. A
task whose valid replies are fewer than ``min_sites_per_task`` keeps its skill for that round.
Failed sites are asked again next round, so a site that comes back rejoins.

Per-task LoRA options (issue #14, :class:`~unicon_core.federation.config.TaskFederation`; all
off by default, which is today's behaviour bit for bit): replies as encoded deltas
(:mod:`unicon_core.federation.compression`), the LoRA aggregation rule and mixed site ranks
(:mod:`unicon_core.federation.lora_rules`), a server optimiser on the aggregated delta
(:mod:`unicon_core.federation.server_opt`), per-round sampling of each task's sites
(:mod:`unicon_core.federation.sampling`; sites not drawn get no message, neither train nor
evaluate, until the last round evaluates every site), downlink compression (each site is sent
the change since the copy it holds, :meth:`PerTaskFedAvg.downlink`) and FedProx at the sites.
The hooks are :meth:`PerTaskFedAvg.configure_train` (sampling, each site's skill and
instructions) and :meth:`PerTaskFedAvg.aggregate_task` (rule, ranks, server optimiser); the
state a resumed run needs is :meth:`PerTaskFedAvg.server_state`.

Only ``configure_*``/``aggregate_*`` are overridden; the round loop is Flower's
``Strategy.start``. Subclasses change the aggregation rule by overriding one hook,
:meth:`PerTaskFedAvg.aggregate_skills` (see ``per_task_median.py``,
``per_task_trimmed_mean.py``). ``round_offset`` lets a resumed run continue the round count,
and ``on_round_end`` receives each finished round's record and arrays (checkpoints, logs).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from logging import ERROR, INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result
from flwr.supercore import log

from server.strategies.server_state import dump_state, restore_state
from server.strategies.update_decoding import decode_control, decode_update
from unicon_core.data.manifest import SiteRole
from unicon_core.federation.aggregation import (
    replace_task,
    slice_task,
    weighted_average,
    weighted_metrics,
)
from unicon_core.federation.compression import apply_delta, decode_delta, encode_delta
from unicon_core.federation.config import TaskFederation
from unicon_core.federation.lora_rules import a_keys, aggregate_lora, pad_rank, project_rank
from unicon_core.federation.protocol import (
    NUM_EXAMPLES,
    ConfigKey,
    InfoKey,
    RecordKey,
    Status,
)
from unicon_core.federation.replies import (
    DEFAULT_NORM_FACTOR,
    Accepted,
    NodeClaim,
    Rejected,
    check_reply,
    digest,
    norm_outliers,
)
from unicon_core.federation.sampling import sample_sites
from unicon_core.federation.scaffold import control_problem, server_update, zero_control
from unicon_core.federation.server_opt import ServerOptimizer, site_sq_norm
from unicon_core.federation.validation import ValidationPolicy, update_norm
from unicon_flower.accounting import CommLedger, content_bytes
from unicon_flower.records import arrays_to_record, record_to_arrays

RoundCallback = Callable[[dict[str, Any], ArrayRecord], None]


@dataclass(frozen=True)
class SiteNode:
    """A connected SuperNode, the site it serves and that site's task."""

    node_id: int
    site: str
    task: str
    #: Train / evaluation examples the site declared in the query round (None: not declared;
    #: then only the sanity cap ``MAX_EXAMPLES`` bounds its claims).
    train_examples: int | None = None
    eval_examples: int | None = None

    @property
    def evaluation_only(self) -> bool:
        """An external validation site (no train rows declared): evaluated, never trained."""
        return self.train_examples == 0

    @property
    def claim(self) -> NodeClaim:
        """What this node declared, which every reply is held to."""
        return NodeClaim(self.site, self.task, self.train_examples, self.eval_examples)


class PerTaskFedAvg(FedAvg):
    """FedAvg applied separately to each task's skill.

    Parameters
    ----------
    nodes : Sequence[SiteNode]
        Which node serves which site and task (learnt by the ServerApp's query round).
    foundation_hash : str
        Hash of the federation's frozen foundation; sent with every instruction and checked in
        every reply.
    evaluate : bool (default: True)
        Evaluate the aggregated skills on every site's test split after each round.
    evaluate_every : int (default: 1)
        With ``evaluate``: only every k-th round (counted with ``round_offset``) and the last.
    round_offset : int (default: 0)
        Rounds already done before this ``start`` (a resumed run).
    on_round_end : callable, optional
        Called with ``(round record, global arrays)`` when a round is complete.
    min_sites_per_task : int (default: 1)
        Fewest valid updates a task needs in a round for its skill to change.
    max_update_norm : float, optional
        Reject an update whose L2 distance to the skill sent exceeds this (None: no bound).
    update_norm_factor : float, optional (default: ``DEFAULT_NORM_FACTOR``)
        The round's own bound: with >= 3 updates of a task, reject those whose norm exceeds this
        factor x the median of the task's update norms this round (None: off).
    message_ttl_s : float, optional
        Lifetime of each instruction (None: Flower's default, 12 h). Set to the round timeout,
        a site that was down does not answer the instructions of rounds already closed when
        it comes back; it joins the current round instead.
    lora : mapping, optional
        Task -> its :class:`TaskFederation` options (issue #14); a task not named, or None,
        keeps today's behaviour.
    seed : int (default: 0)
        Seed of the per-round sampling of sites.
    """

    def __init__(
        self,
        nodes: Sequence[SiteNode],
        *,
        foundation_hash: str,
        evaluate: bool = True,
        evaluate_every: int = 1,
        round_offset: int = 0,
        weighted_by_key: str = NUM_EXAMPLES,
        on_round_end: RoundCallback | None = None,
        min_sites_per_task: int = 1,
        max_update_norm: float | None = None,
        message_ttl_s: float | None = None,
        update_norm_factor: float | None = DEFAULT_NORM_FACTOR,
        lora: Mapping[str, TaskFederation] | None = None,
        seed: int = 0,
    ) -> None:
        if min_sites_per_task < 1:
            raise ValueError(f"min_sites_per_task must be >= 1, got {min_sites_per_task}")
        if not nodes:
            raise ValueError("PerTaskFedAvg needs at least one site node")
        sites = [n.site for n in nodes]
        if len(set(sites)) != len(sites):
            raise ValueError(f"each site must be served by one node, got {sites}")
        if round_offset < 0:
            raise ValueError(f"round_offset must be >= 0, got {round_offset}")
        if evaluate_every < 1:
            raise ValueError(f"evaluate_every must be >= 1, got {evaluate_every}")
        if message_ttl_s is not None and message_ttl_s <= 0:
            raise ValueError(f"message_ttl_s must be > 0, got {message_ttl_s}")
        if update_norm_factor is not None and not update_norm_factor >= 1:
            raise ValueError(f"update_norm_factor must be >= 1 or None, got {update_norm_factor}")
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=1.0 if evaluate else 0.0,
            min_train_nodes=1,
            min_evaluate_nodes=1,
            min_available_nodes=1,
            weighted_by_key=weighted_by_key,
            arrayrecord_key=RecordKey.SKILL.value,
            configrecord_key=RecordKey.CONFIG.value,
        )
        self.nodes = {n.node_id: n for n in sorted(nodes, key=lambda n: n.site)}
        self.foundation_hash = foundation_hash
        self.round_offset = round_offset
        self.evaluate_every = evaluate_every
        self.on_round_end = on_round_end
        self.min_sites_per_task = min_sites_per_task
        self.message_ttl_s = message_ttl_s
        self.policy = ValidationPolicy(foundation_hash, max_update_norm)
        self.update_norm_factor = update_norm_factor
        #: digest of every accepted update -> (site, round): a byte-identical repeat is a replay
        self._digests: dict[str, tuple[str, int]] = {}
        self.comm = CommLedger()
        #: site -> why it no longer trains (e.g. its privacy budget is spent)
        self.stopped: dict[str, str] = {}
        self._record: dict[str, Any] = {}
        self._arrays: ArrayRecord | None = None
        self._asked: dict[str, list[SiteNode]] = {}
        self.lora = dict(lora or {})
        self.seed = int(seed)
        #: task -> its server optimiser state (only for tasks with a server optimiser)
        self.server_opts: dict[str, ServerOptimizer] = {}
        #: task -> its SCAFFOLD control variate c (tasks with ``scaffold`` only)
        self.controls: dict[str, dict[str, np.ndarray]] = {}
        #: site -> its checked control-variate change this round (SCAFFOLD)
        self._control_changes: dict[str, dict[str, np.ndarray]] = {}
        #: site -> its own B factors (FedSA-LoRA), sent back to it instead of the shared ones
        self.personal: dict[str, dict[str, np.ndarray]] = {}
        #: site -> the skill it was sent for training this round (reference of its update)
        self._sent: dict[str, dict[str, np.ndarray]] = {}
        #: site -> digest of the encoded delta it sent this round (replays are refused)
        self._delta_digests: dict[str, str] = {}
        #: rounds of this ``start`` (the last one evaluates every site); None before ``start``
        self._num_rounds: int | None = None
        #: sites drawn this round (None: no task samples, everyone trains)
        self._drawn: set[str] | None = None
        #: downlink compression: site -> the skill it holds (as it reconstructed it, bit for
        #: bit), and what it will hold once it answers the message in flight
        self.held: dict[str, dict[str, np.ndarray]] = {}
        self._pending: dict[str, dict[str, np.ndarray]] = {}
        #: site -> the exact skill meant for it this round, when its copy differs (lossy
        #: downlink): its update is moved onto it before aggregation
        self._targets: dict[str, dict[str, np.ndarray]] = {}

    def start(
        self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3,
        timeout: float = 3600, **kwargs: Any,
    ) -> Result:
        """Flower's round loop, knowing its last round (evaluated on every site)."""
        self._num_rounds = num_rounds
        return super().start(grid, initial_arrays, num_rounds, timeout, **kwargs)

    def server_state(self) -> dict[str, np.ndarray]:
        """What a resumed run needs beyond the skills, as named arrays
        (:func:`~server.strategies.server_state.dump_state`: server optimiser state per task,
        FedSA B factors per site; not SCAFFOLD's ``c`` nor downlink copies, which restart)."""
        return dump_state(self.server_opts, self.personal)

    def load_server_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore :meth:`server_state`'s arrays; state of a task that no longer uses a server
        optimiser (or FedSA), or of a site no longer in the run, is left out with a warning.
        A SCAFFOLD ``c`` in a checkpoint written before it was left out is not restored
        either (see :mod:`server.strategies.server_state`)."""
        restored = restore_state(state, {n.site: n.task for n in self.nodes.values()},
                                 self.options)
        if restored.dropped:
            log(WARNING, "resume: saved state %s left out (its task no longer uses it or its "
                "site is not in this run)", sorted(restored.dropped))
        if restored.restarted:
            log(WARNING, "resume: SCAFFOLD's c of %s restarts at zero with the sites' own c_i "
                "(they lived in the previous run)", sorted(restored.restarted))
        self.server_opts.update(restored.server_opts)
        self.personal.update(restored.personal)

    def options(self, task: str) -> TaskFederation:
        """The task's issue-#14 options (today's defaults when not configured)."""
        return self.lora.get(task) or TaskFederation()

    def summary(self) -> None:
        """Log which sites serve which task."""
        tasks: dict[str, list[str]] = defaultdict(list)
        for node in self.nodes.values():
            tasks[node.task].append(node.site)
        log(INFO, "\t├──> Per-task FedAvg over %d sites:", len(self.nodes))
        for task, sites in sorted(tasks.items()):
            log(INFO, "\t│\t├── %s: %s", task, ", ".join(sites))
        log(INFO, "\t├──> Validation: update norm bound %s, round bound %s x median, >= %d "
            "valid site(s) per task", self.policy.max_update_norm, self.update_norm_factor,
            self.min_sites_per_task)
        for task in sorted(tasks):
            opts = self.options(task)
            if not opts.is_default:
                log(INFO, "\t├──> %s: delta=%s codec=%s rule=%s ranks=%s server_opt=%s "
                    "fraction=%s min_sites=%s prox_mu=%s scaffold=%s logit_adjust=%s "
                    "site_sgd_lr=%s downlink=%s", task, opts.delta, opts.codec, opts.lora_rule,
                    dict(opts.site_ranks) or "-", opts.server_opt, opts.fraction,
                    opts.min_sites, opts.prox_mu, opts.scaffold, opts.logit_adjust,
                    opts.site_sgd_lr, opts.downlink_codec)
            unknown = sorted(set(opts.site_ranks) - set(tasks[task]))
            if unknown:
                log(WARNING, "\t├──> %s: site_ranks name sites outside the task: %s", task,
                    unknown)
        log(INFO, "\t└──> Weighted by: '%s'", self.weighted_by_key)

    # ------------------------------------------------------------------ train
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send each active site only its task's current global skill."""
        rnd = server_round + self.round_offset
        self._record = {"round": rnd, "sites": {}, "tasks": {}}
        self._arrays = arrays
        self._sent, self._targets = {}, {}
        nodes = [n for n in self.nodes.values()
                 if n.site not in self.stopped and not n.evaluation_only]
        for node in self.nodes.values():
            if node.site in self.stopped:
                self._site_entry(node)["status"] = Status.BUDGET_EXHAUSTED.value
            elif node.evaluation_only:  # external validation: no train instruction, ever
                # role outlives a status that its evaluate reply may overwrite (error, ...)
                self._site_entry(node).update(status=Status.EVALUATION_ONLY.value,
                                              role=SiteRole.EVALUATION.value)
        nodes = self.sample(rnd, nodes)
        log(INFO, "configure_train: round %d, %d of %d sites train", rnd, len(nodes),
            len(self.nodes))
        return self._messages(rnd, arrays, config, nodes, MessageType.TRAIN)

    def sample(self, rnd: int, nodes: Sequence[SiteNode]) -> list[SiteNode]:
        """The nodes drawn this round (each task: its fraction, never below its minimum nor
        ``min_sites_per_task``); the others are marked ``not-sampled`` and get no message."""
        by_task: dict[str, list[str]] = defaultdict(list)
        for node in nodes:
            by_task[node.task].append(node.site)
        configs = {}
        for task in by_task:
            opts = self.options(task)
            if not opts.sampling().everyone:
                configs[task] = replace(opts.sampling(),
                                        min_sites=max(opts.min_sites, self.min_sites_per_task))
        if not configs:
            self._drawn = None
            return list(nodes)
        drawn = {s for sites in sample_sites(by_task, configs, seed=self.seed,
                                             server_round=rnd).values() for s in sites}
        for node in nodes:
            if node.site not in drawn:
                self._site_entry(node)["status"] = "not-sampled"
        self._drawn = drawn
        return [n for n in nodes if n.site in drawn]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate each reply, group by task and aggregate each task over its own sites."""
        rnd = server_round + self.round_offset
        assert self._arrays is not None
        current = record_to_arrays(self._arrays)
        grouped: dict[str, list[tuple[str, dict[str, np.ndarray], dict[str, Any], float]]] = (
            defaultdict(list)
        )
        replies = list(replies)
        self._delta_digests, self._control_changes = {}, {}
        accepted: list[tuple[SiteNode, Accepted]] = []
        for node, result in self._checked_replies(rnd, replies, "train", current):
            entry = self._site_entry(node)
            entry.update(status=result.status, train=result.metrics)
            if result.status == Status.BUDGET_EXHAUSTED.value:
                self.stopped[node.site] = result.reason
                entry["reason"] = result.reason
                log(WARNING, "site %s stopped training: %s", node.site, result.reason)
                continue
            accepted.append((node, result))
        for node, result in self._screen_updates(rnd, accepted, current):
            assert result.state is not None
            state = self._rebased(node.site, result.state)
            grouped[node.task].append((node.site, state, result.metrics, result.weight))
        self._log_silent(rnd, replies, "train")
        summary = MetricRecord()
        for task in sorted({n.task for n in self.nodes.values()}):
            items = sorted(grouped.get(task, []), key=lambda item: item[0])  # deterministic
            if len(items) < self.min_sites_per_task:
                log(WARNING, "task %s: %d valid update(s), fewer than the minimum %d; skill "
                    "unchanged this round", task, len(items), self.min_sites_per_task)
                self._record["tasks"].setdefault(task, {})["sites_aggregated"] = 0
                continue
            weights = [w for *_, w in items]  # bounded by the query round's declared counts
            if not sum(weights) > 0:
                log(WARNING, "task %s: no training examples this round; skill unchanged", task)
                continue
            try:
                aggregate, report = self.aggregate_task(
                    task, [site for site, *_ in items], [s for _, s, _, _ in items], weights,
                    slice_task(current, task))
                current = replace_task(current, task, aggregate)
            except ValueError as err:
                log(ERROR, "task %s: replies do not fit its skill (%s); skill unchanged",
                    task, err)
                # in the round's record too, so a caller (a benchmark) can tell a round that
                # trained from one whose replies were all thrown away
                self._record["tasks"].setdefault(task, {}).update(
                    sites_aggregated=0, aggregation_error=str(err))
                continue
            task_metrics = weighted_metrics([m for _, _, m, _ in items], weights)
            task_metrics[self.weighted_by_key] = sum(weights)
            task_metrics["sites_aggregated"] = len(items)
            task_metrics.update(report)
            self._record["tasks"].setdefault(task, {}).update(task_metrics)
            for key, value in task_metrics.items():
                summary[f"{task}/{key}"] = value
        self._arrays = arrays_to_record(current)
        return self._arrays, summary

    def aggregate_task(
        self,
        task: str,
        sites: Sequence[str],
        states: Sequence[dict[str, np.ndarray]],
        weights: Sequence[float],
        reference: dict[str, np.ndarray],
    ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """The task's new skill from its sites' validated skills, and what to report.

        Lower-rank skills are zero-padded to the task's rank (products kept); the task's LoRA
        rule combines them (``naive``, ``ffa`` and ``fedsa`` through :meth:`aggregate_skills`,
        so a robust subclass stays robust; ``svd`` in product space); then the task's server
        optimiser steps from ``reference`` (the current global) towards the aggregate.
        """
        opts = self.options(task)
        if opts.is_default:
            return self.aggregate_skills(task, states, weights), {}
        rank = _rank(reference)
        if opts.site_ranks and rank:
            states = [pad_rank(s, rank, 1.0) for s in states]  # alpha cancels: ranks matter
        report: dict[str, float] = {}
        if opts.lora_rule == "svd":
            result = aggregate_lora(states, weights, "svd", reference=reference, alpha=1.0,
                                    rank=rank)
            aggregate, report = result.skill, result.report
        else:
            aggregate = self.aggregate_skills(task, states, weights)
            if opts.lora_rule == "ffa":  # A stays at its shared initialisation
                aggregate.update({k: reference[k].copy() for k in a_keys(reference)})
            elif opts.lora_rule == "fedsa":  # B stays with each site
                b_set = set(reference) - set(a_keys(reference))
                for site, state in zip(sites, states, strict=True):
                    self.personal[site] = {k: state[k].copy() for k in b_set
                                           if k.startswith("adapter.")}
        if opts.server_opt != "fedavg":
            opt = self.server_opts.setdefault(task, ServerOptimizer(opts.server_opt_config()))
            spread = (site_sq_norm(states, weights, reference) if opts.server_opt == "fedexp"
                      else None)
            aggregate = opt.step(reference, aggregate, spread)
            if spread is not None:
                report["server_lr"] = opt.last_lr
        if opts.scaffold:
            report["control_norm"] = self.update_control(task, sites, reference)
        return aggregate, report

    def update_control(self, task: str, sites: Sequence[str],
                       reference: dict[str, np.ndarray]) -> float:
        """Add the aggregated sites' control changes to the task's ``c``; its new norm."""
        training = [n for n in self.nodes.values() if n.task == task and not n.evaluation_only]
        changes = [self._control_changes[s] for s in sites if s in self._control_changes]
        control = self.controls[task] = server_update(self.control(task, reference), changes,
                                                      len(training))
        return float(np.sqrt(sum(float((v.astype(np.float64) ** 2).sum())
                                 for v in control.values())))

    def aggregate_skills(
        self, task: str, states: Sequence[dict[str, np.ndarray]], weights: Sequence[float]
    ) -> dict[str, np.ndarray]:
        """Combine one task's validated site skills (FedAvg: weighted by examples).

        The one hook a robust strategy overrides; ``states`` are sorted by site.
        """
        return weighted_average(states, weights)

    # ------------------------------------------------------------------ evaluate
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send every site its task's aggregated skill for evaluation on its test split (a
        task that samples: only the sites drawn this round, every site in the last round)."""
        rnd = server_round + self.round_offset
        if self.fraction_evaluate == 0.0 or (
                not self._is_last(server_round) and rnd % self.evaluate_every):
            self._asked[MessageType.EVALUATE] = []  # nobody asked: nobody is silent
            return []
        nodes = self.evaluated(server_round)
        if len(nodes) < len(self.nodes):
            log(INFO, "configure_evaluate: round %d, %d of %d sites evaluate (the others were "
                "not drawn)", rnd, len(nodes), len(self.nodes))
        return self._messages(rnd, arrays, config, nodes, MessageType.EVALUATE)

    def _is_last(self, server_round: int) -> bool:
        """Whether ``server_round`` is this ``start``'s last (False before ``start``)."""
        return self._num_rounds is not None and server_round >= self._num_rounds

    def evaluated(self, server_round: int) -> list[SiteNode]:
        """The sites evaluated this round: every site of a task that does not sample, the
        drawn sites of one that does; every site in the last round, so results cover all."""
        everyone = list(self.nodes.values())
        if self._drawn is None or self._is_last(server_round):
            return everyone
        return [n for n in everyone if n.site in self._drawn
                or self.options(n.task).sampling().everyone]

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Per-task example-weighted test metrics; then close the round."""
        rnd = server_round + self.round_offset
        grouped: dict[str, list[tuple[dict[str, Any], float]]] = defaultdict(list)
        replies = list(replies)
        for node, result in self._checked_replies(rnd, replies, "evaluate", None):
            entry = self._site_entry(node)
            entry["eval"] = result.metrics
            if result.notes:
                entry.setdefault("flags", []).extend(result.notes)
            grouped[node.task].append((result.metrics, result.weight))
        self._log_silent(rnd, replies, "evaluate")
        summary = MetricRecord()
        for task in sorted(grouped):
            weights = [w for _, w in grouped[task]]
            task_metrics = weighted_metrics([m for m, _ in grouped[task]], weights)
            task_metrics.pop(self.weighted_by_key, None)
            task_metrics["eval_examples"] = sum(weights)
            self._record["tasks"].setdefault(task, {}).update(task_metrics)
            for key, value in task_metrics.items():
                summary[f"{task}/{key}"] = value
        self._finish_round(rnd)
        return summary if grouped else None

    # ------------------------------------------------------------------ helpers
    def _messages(
        self,
        rnd: int,
        arrays: ArrayRecord,
        config: ConfigRecord,
        nodes: Sequence[SiteNode],
        message_type: str,
    ) -> list[Message]:
        union = record_to_arrays(arrays)
        self._asked[message_type] = list(nodes)
        messages = []
        for node in nodes:
            instruction = ConfigRecord(dict(config))
            instruction[ConfigKey.SERVER_ROUND.value] = rnd
            instruction[ConfigKey.TASK.value] = node.task
            instruction[ConfigKey.FOUNDATION_HASH.value] = self.foundation_hash
            target = self.site_skill(node, slice_task(union, node.task))
            record_key, record, sent = self.downlink(node, target, instruction)
            extra = {}
            if message_type == MessageType.TRAIN:
                self._sent[node.site] = sent
                if sent is not target:
                    self._targets[node.site] = target
                instruction.update(self.instructions(node.task))
                if self.options(node.task).scaffold:
                    extra[RecordKey.CONTROL.value] = arrays_to_record(
                        self.control(node.task, target))
            content = RecordDict({record_key: record, self.configrecord_key: instruction,
                                  **extra})
            self.comm.add(rnd, node.site, down=content_bytes(content))
            messages.append(
                Message(content=content, message_type=message_type, dst_node_id=node.node_id,
                        ttl=self.message_ttl_s)
            )
        return messages

    def control(self, task: str, skill: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The task's SCAFFOLD ``c`` (zeros over the trained part of ``skill`` at first, or
        when the layout it covers changed)."""
        trained = self.trained(task, skill)
        control = self.controls.get(task)
        if control is None or control_problem(control, trained):
            control = self.controls[task] = zero_control(trained)
        return control

    def trained(self, task: str, skill: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The part of ``skill`` a site trains (all but the A factors under FFA-LoRA)."""
        frozen = a_keys(skill) if self.options(task).lora_rule == "ffa" else set()
        return {k: v for k, v in skill.items() if k not in frozen}

    def site_skill(self, node: SiteNode, skill: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """What ``node`` is sent: the task's skill with its own B (FedSA) at its own rank."""
        opts = self.options(node.task)
        if opts.lora_rule == "fedsa" and node.site in self.personal:
            skill = {**skill, **self.personal[node.site]}
        site_rank = opts.site_ranks.get(node.site)
        rank = _rank(skill)
        if site_rank is not None and rank and site_rank < rank:
            skill, _ = project_rank(skill, rank, 1.0, site_rank)
        return skill

    def downlink(
        self, node: SiteNode, target: dict[str, np.ndarray], instruction: ConfigRecord
    ) -> tuple[str, ArrayRecord, dict[str, np.ndarray]]:
        """``(record key, record, what the site will hold)`` for sending ``target`` to ``node``.

        Downlink compression off (today): the whole skill, which the site holds exactly. On:
        the whole skill on first contact (or when its layout changed), then the encoded change
        from the copy the site holds, which both sides reconstruct with the same functions on
        the same bytes, so their copies stay equal bit for bit (checked by its digest at the
        site). The copy is committed when the site answers (:meth:`_delivered`); a site that
        fails or stays silent gets the whole skill again next time.
        """
        opts = self.options(node.task)
        if opts.downlink_codec == "none":
            return self.arrayrecord_key, arrays_to_record(target), target
        codec = opts.downlink_spec()
        instruction[ConfigKey.DOWNLINK_CODEC.value] = codec.kind
        held = self.held.get(node.site)
        if held is None or set(held) != set(target) or any(
                held[k].shape != target[k].shape or held[k].dtype != target[k].dtype
                for k in target):
            self._pending[node.site] = {k: np.array(v, copy=True) for k, v in target.items()}
            return self.arrayrecord_key, arrays_to_record(target), target
        payload, _ = encode_delta(target, held, codec)
        rebuilt = apply_delta(held, decode_delta(payload, held, codec))
        instruction[ConfigKey.DOWNLINK_BASE.value] = digest(held)
        self._pending[node.site] = rebuilt
        return RecordKey.DOWNLINK.value, arrays_to_record(payload), rebuilt

    def _delivered(self, node: SiteNode, answered: bool) -> None:
        """Commit (the site answered) or forget (it failed or stayed silent) the downlink copy
        of the message in flight; without a copy the next message carries the whole skill."""
        pending = self._pending.pop(node.site, None)
        if answered and pending is not None:
            self.held[node.site] = pending
        elif not answered:
            self.held.pop(node.site, None)

    def _rebased(self, site: str, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A site's update moved from the copy it held onto the exact skill meant for it
        (``state + target - held``; a lossy downlink's error does not enter the aggregate)."""
        target, held = self._targets.get(site), self._sent.get(site)
        if target is None or held is None:
            return state
        return {k: (v.astype(np.float64) + target[k].astype(np.float64)
                    - held[k].astype(np.float64)).astype(v.dtype) if k in target else v
                for k, v in state.items()}

    def instructions(self, task: str) -> dict[str, Any]:
        """The task's issue-#14 instruction keys (none with today's defaults)."""
        opts, out = self.options(task), {}
        if opts.delta:
            out[ConfigKey.DELTA_CODEC.value] = opts.codec
            out[ConfigKey.CODEC_PER_ROW.value] = bool(opts.per_row)
            out[ConfigKey.TOPK_FRACTION.value] = float(opts.topk_fraction)
            if opts.pack:
                out[ConfigKey.DELTA_PACKED.value] = True
        if opts.lora_rule != "naive":
            out[ConfigKey.LORA_RULE.value] = opts.lora_rule
        if opts.prox_mu > 0:
            out[ConfigKey.PROX_MU.value] = float(opts.prox_mu)
        if opts.scaffold:
            out[ConfigKey.SCAFFOLD.value] = True
        if opts.site_sgd_lr > 0:
            out[ConfigKey.SITE_SGD_LR.value] = float(opts.site_sgd_lr)
        if opts.logit_adjust:
            out[ConfigKey.LOGIT_ADJUST.value] = True
        return out

    def _checked_replies(
        self, rnd: int, replies: Iterable[Message], phase: str,
        current: dict[str, np.ndarray] | None,
    ) -> Iterable[tuple[SiteNode, Accepted]]:
        """Every reply decoded and checked in one guarded step; the accepted ones.

        A reply that cannot be decoded (unknown ``stype``, damaged bytes, missing records) or
        fails a check (:func:`~unicon_core.federation.replies.check_reply`) is rejected with a
        logged reason; nothing a site sends can abort the round.
        """
        for msg in replies:
            node = self.nodes.get(msg.metadata.src_node_id)
            if node is None:
                log(WARNING, "%s: reply from unknown node %s ignored", phase,
                    msg.metadata.src_node_id)
                continue
            entry = self._site_entry(node)
            self._delivered(node, answered=not msg.has_error())
            if msg.has_error():
                entry.update(status="error", reason=str(msg.error.reason)[:2000])
                log(ERROR, "%s: site %s failed (left out this round): %s", phase, node.site,
                    str(msg.error.reason)[:2000])
                continue
            try:
                self.comm.add(rnd, node.site, up=content_bytes(msg.content))
                result = self._check_one(rnd, node, msg.content, phase, current)
            except Exception as err:  # a hostile reply must never abort the run
                result = Rejected(f"undecodable reply ({type(err).__name__}: {str(err)[:200]})")
            if isinstance(result, Rejected):
                self._reject(entry, node, phase, result.reason)
                continue
            for note in result.notes:
                log(WARNING, "%s: site %s: %s", phase, node.site, note)
            yield node, result

    def _check_one(
        self, rnd: int, node: SiteNode, content: RecordDict, phase: str,
        current: dict[str, np.ndarray] | None,
    ) -> Accepted | Rejected:
        """Decode one reply into plain mappings and check it (may raise on damaged bytes)."""
        info_record = content.config_records.get(RecordKey.INFO.value)
        if info_record is None:
            return Rejected("reply carries no info record")
        metric_record = content.metric_records.get(RecordKey.METRICS.value)
        metrics = dict(metric_record) if metric_record is not None else {}
        reference = None
        if current is not None:
            reference = self._sent.get(node.site, slice_task(current, node.task))
        state = None
        if phase == "train" and reference is not None:
            decoded = decode_update(content, info_record.get(InfoKey.STATUS.value), reference,
                                    self.options(node.task), node.task)
            if isinstance(decoded, Rejected):
                return decoded
            state = decoded.state
            if decoded.delta_digest:
                self._delta_digests[node.site] = decoded.delta_digest
        result = check_reply(
            phase, info=dict(info_record), metrics=metrics, state=state, reference=reference,
            claim=node.claim, server_round=rnd, policy=self.policy,
            weighted_by=self.weighted_by_key,
        )
        if phase == "train" and isinstance(result, Accepted):
            problem = self._check_control(node, content, reference, result.state is not None)
            if problem:
                return Rejected(problem)
        return result

    def _check_control(self, node: SiteNode, content: RecordDict,
                       reference: dict[str, np.ndarray] | None, trained: bool) -> str:
        """A train reply's SCAFFOLD ``control`` record (:func:`decode_control`), kept for
        aggregation when fine. Returns why it is refused ('' when fine)."""
        layout = self.trained(node.task, reference) if reference is not None else {}
        change, problem = decode_control(
            content, layout, scaffold=self.options(node.task).scaffold,
            updated=trained and reference is not None, task=node.task)
        if change is not None:
            self._control_changes[node.site] = change
        return problem

    def _screen_updates(
        self, rnd: int, accepted: Sequence[tuple[SiteNode, Accepted]],
        current: dict[str, np.ndarray],
    ) -> list[tuple[SiteNode, Accepted]]:
        """Drop replays and norm outliers among the round's valid updates; flag duplicates.

        A replay is an update byte-identical to one accepted in an earlier round (it carries
        no new training and would rewind the skill). Updates byte-identical to another site's
        of this round are kept but flagged. The norm bound is the round's own statistic
        (:func:`~unicon_core.federation.replies.norm_outliers`), per task.
        """
        kept: list[tuple[SiteNode, Accepted]] = []
        seen: dict[str, str] = {}
        for node, result in accepted:
            assert result.state is not None
            entry = self._site_entry(node)
            entry.setdefault("flags", []).extend(result.notes)
            fingerprint = self._fingerprint(node, result.state)
            earlier = self._digests.get(fingerprint)
            if earlier is not None and earlier[1] < rnd:
                self._reject(entry, node, "train", f"replay: byte-identical to the update site "
                             f"{earlier[0]} sent in round {earlier[1]}")
                entry.setdefault("flags", []).append("replay")
                continue
            if fingerprint in seen:
                entry["flags"].append(f"update byte-identical to site {seen[fingerprint]}'s")
            seen.setdefault(fingerprint, node.site)
            kept.append((node, result))
        by_task: dict[str, dict[str, float]] = defaultdict(dict)
        for node, result in kept:
            assert result.state is not None
            reference = self._sent.get(node.site, slice_task(current, node.task))
            by_task[node.task][node.site] = update_norm(reference, result.state)
        outliers: dict[str, str] = {}
        for norms in by_task.values():
            outliers.update(norm_outliers(norms, self.update_norm_factor))
        out = []
        for node, result in kept:
            entry = self._site_entry(node)
            if not entry.get("flags"):
                entry.pop("flags", None)
            if node.site in outliers:
                self._reject(entry, node, "train", outliers[node.site])
                continue
            assert result.state is not None
            self._digests.setdefault(self._fingerprint(node, result.state), (node.site, rnd))
            out.append((node, result))
        return out

    def _fingerprint(self, node: SiteNode, state: dict[str, np.ndarray]) -> str:
        """Digest of what the site sent: its encoded delta when it sent one (a replayed delta
        would be applied twice to a newer skill), else its skill."""
        return self._delta_digests.get(node.site) or digest(state)

    def _reject(self, entry: dict[str, Any], node: SiteNode, phase: str, reason: str) -> None:
        entry.update(status="rejected", reason=reason)
        log(ERROR, "%s: update of site %s rejected: %s", phase, node.site, reason)

    def _log_silent(self, rnd: int, replies: Sequence[Message], phase: str) -> None:
        """Mark and log the sites asked this round that sent no reply at all (timed out)."""
        answered = {m.metadata.src_node_id for m in replies}
        for node in self._asked.get(phase, []):
            if node.node_id not in answered:
                self._delivered(node, answered=False)
                entry = self._site_entry(node)
                entry.update(status="no-reply", reason=f"no {phase} reply before the timeout")
                log(ERROR, "%s: site %s sent no reply in round %d (left out; asked again "
                    "next round)", phase, node.site, rnd)

    def _site_entry(self, node: SiteNode) -> dict[str, Any]:
        return self._record.setdefault("sites", {}).setdefault(node.site, {"task": node.task})

    def _finish_round(self, rnd: int) -> None:
        for site, sizes in self.comm.round_summary(rnd).items():
            self._record["sites"].setdefault(site, {}).update(sizes)
        if self.on_round_end is not None and self._arrays is not None:
            self.on_round_end(self._record, self._arrays)


def _rank(skill: Mapping[str, np.ndarray]) -> int:
    """The LoRA rank of a skill (rows of its first A factor; 0 without an adapter)."""
    keys = sorted(a_keys(skill))
    return int(np.shape(skill[keys[0]])[0]) if keys else 0
