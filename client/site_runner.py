"""What a site does for each instruction: the task module behind the thin ClientApp.

Query: validate the site's data and say who it is (site, task spec, foundation hash).
Train: check the foundation, load the task's global skill, train locally (optionally DP-SGD),
report the held-out metrics on the site's own validation split and return the skill.
Evaluate: load the aggregated skill and report metrics on the site's own test split.

Every reply states the site, its task and the hash of its frozen foundation. A site whose
foundation differs from the federation's refuses with :class:`FoundationMismatchError`
instead of mixing skills trained on different backbones.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from logging import ERROR, INFO, WARNING
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.supercore import log

from unicon_core.federation.config import (
    NODE_ALLOW_RESEARCH_PLANS,
    NODE_DEVICE,
    NODE_DP_LEDGER_DIR,
    NODE_ROUTER_MIN_COUNT,
    NODE_ROUTER_NOISE,
    NODE_ROUTER_WITH_DP,
    NODE_STATE_DIR,
    ROUTER_MIN_COUNT,
    ExperimentSettings,
    is_simulation,
    overrides_from_run_config,
    research_allowed,
    settings_from_config,
    site_for_node,
    site_privacy,
)
from unicon_core.federation.outputs import SITES_DIR
from unicon_core.federation.protocol import (
    EVAL_EXAMPLES,
    NUM_EXAMPLES,
    ConfigKey,
    InfoKey,
    RecordKey,
    Status,
)
from unicon_core.hydra_config import load_settings
from unicon_core.seeds import round_seed
from unicon_flower.records import arrays_to_record, record_to_arrays

if TYPE_CHECKING:
    from unicon_core.config import TaskSpec
    from unicon_core.data import Site
    from unicon_core.model import UniconModel
    from unicon_core.privacy import PrivacyLedger
    from unicon_core.training.scaffold import ControlVariates

#: ``context.state`` key of the site's privacy ledger (JSON in a ConfigRecord).
LEDGER_STATE = "privacy-ledger"
#: ``context.state`` key of the resolved experiment config (JSON in a ConfigRecord).
SETTINGS_STATE = "settings"
#: ``context.state`` key of the site's error-feedback residual (lossy delta codecs). Like all
#: of ``context.state`` it lives for one Flower run: a resumed run starts it at zero.
RESIDUAL_STATE = "delta-residual"
#: ``context.state`` key of the skill the site holds under downlink compression (the base of
#: the server's next ``downlink`` delta; per run too: a resumed run sends the whole skill first).
DOWNLINK_STATE = "downlink-held"
#: ``context.state`` key of the site's optimiser moments (``train.keep_optimizer_state``): per
#: run, never sent.
OPTIMIZER_STATE = "optimizer-state"
#: ``context.state`` key of the site's SCAFFOLD control variate ``c_i``: per run, only its
#: change since the last round is sent.
CONTROL_STATE = "control-variate"


class FoundationMismatchError(ValueError):
    """The site's frozen foundation is not the federation's: its skills would not fit."""


class PlanRefusedError(ValueError):
    """The run asks for a research plan (more than a skill leaves the site) that the site's own
    node config does not allow."""


@dataclass(frozen=True)
class SiteHooks:
    """In-process research hooks of a simulated site (never set in a deployment: only code
    running the ClientApp in its own process can pass them, and they are honoured only where
    the node config allows research plans).

    ``site_view(site)`` replaces the opened site by a view of it (pooled data, a channel view);
    ``model(site)`` is the model the site loads the global state into and trains (a continual
    strategy's own, holding every task its plugins need; the site's foundation identity is
    still that of the model it builds itself); ``local_loss(site, model, task)`` returns an
    extra zero-argument loss for local training (a continual plugin's term; its ``close()`` is
    called after training); ``on_site(site)`` is called before the site trains;
    ``batches(dataset, batch_size, seed)`` returns a batch sampler that orders the site's
    training batches instead of the loader's seeded shuffle (site-homogeneous batches of a
    pooled site, :mod:`unicon_core.data.site_batches`; not with DP-SGD, whose accounting
    assumes its own Poisson sampling).
    """

    site_view: Callable[[Any], Any] | None = None
    model: Callable[[Any], Any] | None = None
    local_loss: Callable[[str, Any, str], Any] | None = None
    on_site: Callable[[str], None] | None = None
    batches: Callable[[Any, int, int], Any] | None = None


def check_plan(context: Context, settings: ExperimentSettings, hooks: SiteHooks | None) -> str:
    """The run's plan, refused (:class:`PlanRefusedError`) when it is a research plan or comes
    with research hooks and the site does not allow them."""
    plan = settings.federation.plan
    if (plan != "skill" or hooks is not None) and not research_allowed(context.node_config):
        raise PlanRefusedError(
            f"the run asks for plan {plan!r}{' with research hooks' if hooks else ''}, which "
            "sends more than a skill off this site; only a site started with node config "
            f"{NODE_ALLOW_RESEARCH_PLANS}=true runs it"
        )
    return plan


#: Resolved configs composed in this process, by override list (JSON): in simulation one
#: process serves many virtual sites of one run, which would otherwise compose the same config
#: once each (at 1,000 sites most of the query round). Only the resolved plain values are kept;
#: every call validates them into fresh settings.
_COMPOSED: dict[str, str] = {}
_COMPOSED_MAX = 8


def settings_for(context: Context, extra_overrides: list[str]) -> ExperimentSettings:
    """The experiment settings named by the run config (plus test/CLI overrides).

    Composing hydra takes most of a second, so the resolved config is kept in
    ``context.state`` (per node and run) and, for other nodes in the same process, in
    :data:`_COMPOSED`, and reused while the overrides stay the same.
    """
    overrides = overrides_from_run_config(context.run_config) + extra_overrides
    key = json.dumps(overrides)
    cached = context.state.config_records.get(SETTINGS_STATE)
    if cached is not None and cached["overrides"] == key:
        return settings_from_config(json.loads(str(cached["resolved"])))
    resolved = _COMPOSED.get(key)
    if resolved is not None:
        settings = settings_from_config(json.loads(resolved))
    else:
        settings = load_settings(overrides)
        resolved = json.dumps(settings.resolved)
        if len(_COMPOSED) >= _COMPOSED_MAX:
            _COMPOSED.pop(next(iter(_COMPOSED)))
        _COMPOSED[key] = resolved
    context.state[SETTINGS_STATE] = ConfigRecord({"overrides": key, "resolved": resolved})
    return settings


def open_cached(path: Path, spec: TaskSpec | None, seed: int) -> Site:
    """The node's site, validated once per process while its files stay the same
    (:func:`unicon_core.data.site.open_site_cached`; a site answers several messages per round,
    and in simulation and with the warm executor the process outlives a message)."""
    from unicon_core.data.site import open_site_cached

    return open_site_cached(path, spec, seed)


def open_node_site(
    context: Context, settings: ExperimentSettings, hooks: SiteHooks | None = None
) -> Site:
    """Validate and open this node's site folder (``SiteValidationError`` lists problems); a
    simulation's ``hooks.site_view`` may replace it by a view."""
    name, path = site_for_node(context.node_config, settings.federation)
    ref = settings.federation.sites.get(name)
    spec = settings.tasks.get(ref.task) if ref and ref.task else None
    site = open_cached(Path(path), spec, settings.seed)
    if ref is not None and ref.task and site.task_spec.name != ref.task:
        raise ValueError(
            f"site {name!r} at {path} serves task {site.task_spec.name!r}, but the experiment "
            f"lists it for task {ref.task!r}"
        )
    if hooks is not None and hooks.site_view is not None:
        return hooks.site_view(site)  # type: ignore[no-any-return]
    return site


def build_model(settings: ExperimentSettings, site: Site, rank: int | None = None) -> UniconModel:
    """The shared frozen foundation with this site's task added (deterministic init), its
    adapter at ``rank`` when the server sends this site a lower rank (mixed ranks)."""
    from unicon_core.model import UniconModel

    spec = site.task_spec
    if rank is not None and rank != spec.lora.rank:
        spec = replace(spec, lora=replace(spec.lora, rank=rank))
    model = UniconModel(settings.backbone, seed=settings.seed)
    model.add_task(spec)
    return model


def received_skill(msg: Message, context: Context) -> tuple[ArrayRecord | None,
                                                              ArrayRecord | None]:
    """``(the skill the instruction gives, the copy to keep once the reply is ready)``.

    Without downlink compression: the ``skill`` record, nothing kept. With it: a whole
    ``skill`` (first contact) is kept as is; a ``downlink`` delta is applied to the copy the
    site holds, after checking that copy's digest is the one the server encoded against (the
    same functions on the same bytes as the server's, so both copies stay equal bit for bit).
    """
    from unicon_core.federation.compression import Codec, apply_delta, decode_delta
    from unicon_core.federation.replies import digest

    config = msg.content.config_records.get(RecordKey.CONFIG.value, ConfigRecord())
    record = msg.content.array_records.get(RecordKey.SKILL.value)
    encoded = msg.content.array_records.get(RecordKey.DOWNLINK.value)
    kind = config.get(ConfigKey.DOWNLINK_CODEC.value)
    if encoded is None:
        return record, (record if kind is not None else None)
    stored = context.state.array_records.get(DOWNLINK_STATE)
    if stored is None:
        raise ValueError("the server sent a downlink delta but this site holds no skill to "
                         "apply it to (it restarted?); the server sends the whole skill next")
    base = record_to_arrays(stored)
    if digest(base) != config.get(ConfigKey.DOWNLINK_BASE.value):
        raise ValueError("the server's downlink delta was encoded against another copy of the "
                         "skill than this site holds; the server sends the whole skill next")
    skill = apply_delta(base, decode_delta(record_to_arrays(encoded), base, Codec(str(kind))))
    rebuilt = arrays_to_record(skill)
    return rebuilt, rebuilt


def keep_downlink(context: Context, keep: ArrayRecord | None) -> None:
    """Keep the skill the site now holds (downlink compression), as the reply leaves."""
    if keep is not None:
        context.state[DOWNLINK_STATE] = keep


def instruction_rank(
    msg: Message, site: Site, record: ArrayRecord | None = None
) -> int | None:
    """The LoRA rank of the skill the server sent (``record``, default the message's
    ``skill``), when it is below the task's (None: the task's own). A site never trains a
    larger rank than its task declares."""
    from unicon_core.federation.lora_rules import lora_pairs

    if record is None:
        record = msg.content.array_records.get(RecordKey.SKILL.value)
    pairs = lora_pairs(list(record.keys())) if record is not None else {}
    if not pairs:
        return None
    a_key = sorted(pairs.values())[0][0]
    rank = int(record[a_key].shape[0])  # type: ignore[index]
    if rank > site.task_spec.lora.rank:
        raise ValueError(f"site {site.name!r} was sent rank {rank}, above its task's "
                         f"{site.task_spec.lora.rank}")
    return None if rank == site.task_spec.lora.rank else rank


def info_record(
    site: Site, model: UniconModel, status: Status, reason: str = "",
    foundation_hash: str | None = None,
) -> ConfigRecord:
    """Who replies: site, task, foundation hash (``foundation_hash`` when given: the hash the
    site started from, under a plan that trains the backbone) and what it did."""
    record = ConfigRecord(
        {
            InfoKey.SITE.value: site.name,
            InfoKey.TASK.value: site.task_spec.name,
            InfoKey.FOUNDATION_HASH.value: foundation_hash or model.foundation_hash,
            InfoKey.SYNTHETIC.value: bool(site.synthetic),
            InfoKey.STATUS.value: status.value,
        }
    )
    if reason:
        record[InfoKey.REASON.value] = reason
    return record


def answering(info: ConfigRecord, rnd: int) -> ConfigRecord:
    """``info`` stating the round it answers (the server refuses a reply for another round)."""
    info[InfoKey.ROUND.value] = int(rnd)
    return info


def privacy_said(info: ConfigRecord, notes: list[str]) -> ConfigRecord:
    """``info`` saying what the site's privacy floor changed (nothing when it changed nothing)."""
    if notes:
        info[InfoKey.PRIVACY.value] = "; ".join(notes)[:1000]
    return info


def check_instruction(msg: Message, site: Site, model: UniconModel) -> None:
    """Refuse an instruction meant for another task or another foundation."""
    config = msg.content.config_records.get(RecordKey.CONFIG.value, ConfigRecord())
    task = config.get(ConfigKey.TASK.value)
    if task is not None and task != site.task_spec.name:
        raise ValueError(
            f"site {site.name!r} holds task {site.task_spec.name!r} but was sent task {task!r}"
        )
    expected = config.get(ConfigKey.FOUNDATION_HASH.value)
    if expected is not None and expected != model.foundation_hash:
        raise FoundationMismatchError(
            f"site {site.name!r} runs foundation {model.foundation_hash[:12]}..., the federation "
            f"runs {str(expected)[:12]}...: a skill only fits the backbone it was trained on. "
            "Use the same backbone config and checkpoint as the server."
        )


def load_global_skill(
    msg: Message, site: Site, model: UniconModel, plan: str = "skill",
    record: ArrayRecord | None = None,
) -> None:
    """Load the task's global skill (or what ``plan`` exchanges) from the instruction, or from
    ``record`` when given (a downlink-reconstructed skill); strict keys and shapes."""
    from unicon_core.training.plans import load_plan_state

    if record is None:
        record = msg.content.array_records.get(RecordKey.SKILL.value)
    if record is None:
        raise ValueError(f"instruction to site {site.name!r} carries no skill record")
    state = record.to_torch_state_dict()
    load_plan_state(model, site.task_spec.name, plan, state)


def instruction_options(msg: Message) -> dict[str, Any]:
    """The issue-#14 instruction keys the server sent (empty with today's defaults)."""
    config = msg.content.config_records.get(RecordKey.CONFIG.value, ConfigRecord())
    keys = (ConfigKey.DELTA_CODEC, ConfigKey.CODEC_PER_ROW, ConfigKey.TOPK_FRACTION,
            ConfigKey.DELTA_PACKED, ConfigKey.LORA_RULE, ConfigKey.PROX_MU, ConfigKey.SCAFFOLD,
            ConfigKey.LOGIT_ADJUST, ConfigKey.SITE_SGD_LR)
    return {k.value: config[k.value] for k in keys if k.value in config}


def delta_record(
    msg: Message, context: Context, model: UniconModel, task: str, options: dict[str, Any],
    record: ArrayRecord | None = None,
) -> ArrayRecord:
    """The trained skill as an encoded ``local - global`` against the skill the server sent
    (``record`` when given: the downlink-reconstructed one); a lossy codec's residual stays at
    the site (``context.state``) for the next round. Under FFA-LoRA the frozen A factors are
    left out (the server keeps its own)."""
    from unicon_core.federation.compression import Codec, encode_delta, to_wire

    codec = Codec(str(options[ConfigKey.DELTA_CODEC.value]),
                  bool(options.get(ConfigKey.CODEC_PER_ROW.value, False)),
                  float(options.get(ConfigKey.TOPK_FRACTION.value, 0.1)),
                  bool(options.get(ConfigKey.DELTA_PACKED.value, False)))
    if record is None:
        record = msg.content.array_records[RecordKey.SKILL.value]
    sent = record_to_arrays(record)
    sent = {k: v for k, v in sent.items() if k not in frozen_keys(sent, options)}
    local = {k: v.detach().cpu().numpy() for k, v in model.skill_state_dict(task).items()}
    stored = context.state.array_records.get(RESIDUAL_STATE)
    residual = None
    if stored is not None:
        residual = record_to_arrays(stored)
        if set(residual) != set(sent) or any(residual[k].shape != sent[k].shape for k in sent):
            residual = None  # the layout changed (e.g. another rank): start afresh
    payload, new_residual = encode_delta(local, sent, codec, residual)
    if codec.kind != "none":
        context.state[RESIDUAL_STATE] = arrays_to_record(new_residual)
    return arrays_to_record(to_wire(payload, sent, codec))


def frozen_keys(skill: Any, options: dict[str, Any]) -> set[str]:
    """Skill keys a reply leaves out: the A factors under FFA-LoRA (never trained)."""
    from unicon_core.federation.lora_rules import a_keys

    return a_keys(list(skill)) if options.get(ConfigKey.LORA_RULE.value) == "ffa" else set()


def skill_record(
    model: UniconModel, task: str, omit: set[str] | None = None, plan: str = "skill"
) -> ArrayRecord:
    """The task's skill tensors (less ``omit``), or what ``plan`` exchanges, and nothing else,
    as an ArrayRecord."""
    from unicon_core.training.plans import plan_state

    return ArrayRecord(torch_state_dict={
        k: v for k, v in plan_state(model, task, plan).items() if k not in (omit or set())
    })


def server_round(msg: Message) -> int:
    """Absolute round number of an instruction (0 if absent)."""
    config = msg.content.config_records.get(RecordKey.CONFIG.value, ConfigRecord())
    return int(config.get(ConfigKey.SERVER_ROUND.value, 0))


def metric_record(metrics: dict[str, float], num_examples: int, prefix: str = "") -> MetricRecord:
    """Scalar metrics plus ``num-examples`` (examples, not batches)."""
    out: dict[str, Any] = {NUM_EXAMPLES: int(num_examples)}
    for key, value in metrics.items():
        if key == "num_examples":
            continue
        out[f"{prefix}{key}"] = float(value)
    return MetricRecord(out)


# ---------------------------------------------------------------------------- handlers
def handle_query(
    msg: Message, context: Context, settings: ExperimentSettings, hooks: SiteHooks | None = None
) -> Message:
    """Validate the site and introduce it: site, task (with spec), foundation hash, sizes.

    A site whose data or task do not fit says its name and a short, value-free reason
    (``Status.INVALID_DATA``) instead of failing, so the server excludes it by name.
    """
    from unicon_core.data.problems import SiteValidationError
    from unicon_core.federation.exclusions import exclusion_info

    check_plan(context, settings, hooks)
    try:
        site = open_node_site(context, settings, hooks)
    except (SiteValidationError, ValueError) as err:
        name, _ = site_for_node(context.node_config, settings.federation)
        # The site's own log gets the whole error (its folder, the command that lists every
        # problem); the server receives only exclusion_info's reason, without paths.
        log(ERROR, "site %s cannot join the run: %s", name, err)
        info = ConfigRecord(exclusion_info(name, err))
        return Message(RecordDict({RecordKey.INFO.value: info}), reply_to=msg)
    model = build_model(settings, site)
    check_instruction(msg, site, model)
    info = info_record(site, model, Status.READY)
    info[InfoKey.TASK_SPEC.value] = json.dumps(site.task_spec.to_dict(), sort_keys=True)
    from unicon_core.device import resolve_device

    info[InfoKey.DEVICE.value] = str(resolve_device(site_device(context, settings)))
    summary, count = router_statistics(context, settings, site, model)
    metrics = MetricRecord({
        NUM_EXAMPLES: int(count),  # bounds the weight of this site's train replies
        EVAL_EXAMPLES: len(site.split_rows(settings.federation.eval_split)),
    })
    content = RecordDict({RecordKey.INFO.value: info, RecordKey.METRICS.value: metrics})
    if summary:  # router statistics: moments over the train split, never rows
        content[RecordKey.SUMMARY.value] = arrays_to_record(summary)
    return Message(content, reply_to=msg)


def router_statistics(
    context: Context, settings: ExperimentSettings, site: Site, model: UniconModel
) -> tuple[dict[str, Any], int]:
    """The router statistics this site agrees to send, and its train count.

    Only over at least ``router-min-count`` train examples (default ``ROUTER_MIN_COUNT``, 20),
    noised when the node config sets ``router-noise``, and not at all while DP-SGD is on unless
    the node config sets ``router-stats-with-dp`` (moments are not covered by DP's accounting).
    """
    from unicon_core.inference.summaries import MIN_SUMMARY_COUNT, site_summary

    node = context.node_config
    privacy, _ = site_privacy(settings.privacy, node)
    if privacy.enabled and not bool(node.get(NODE_ROUTER_WITH_DP, False)):
        return {}, len(site.split_rows("train"))
    min_count = int(node.get(NODE_ROUTER_MIN_COUNT, ROUTER_MIN_COUNT))
    noise = float(node.get(NODE_ROUTER_NOISE, 0.0))
    if min_count < MIN_SUMMARY_COUNT or not noise >= 0:
        raise ValueError(f"node config {NODE_ROUTER_MIN_COUNT!r} must be >= {MIN_SUMMARY_COUNT} "
                         f"and {NODE_ROUTER_NOISE!r} >= 0")
    return site_summary(site, model, min_count=min_count, noise=noise)


def handle_train(
    msg: Message, context: Context, settings: ExperimentSettings, hooks: SiteHooks | None = None
) -> Message:
    """Train the task's skill (or the run's plan) locally for one round and return it with
    metrics."""
    from unicon_core.privacy import DPSGD, entropy_seed, sample_rate, steps_per_round
    from unicon_core.training import evaluate_task, make_loader, train_task

    plan = check_plan(context, settings, hooks)
    site = open_node_site(context, settings, hooks)
    skill, keep = received_skill(msg, context)
    model = build_model(settings, site, instruction_rank(msg, site, skill))
    check_instruction(msg, site, model)
    identity = model.foundation_hash  # a plan may train the backbone: say where it started
    if hooks is not None and hooks.model is not None:
        model = hooks.model(site)
    if not site.split_rows("train"):  # an evaluation-only site never trains
        raise ValueError(f"site {site.name} is evaluation-only (no train rows): it does not "
                         "train; the server sends it evaluation instructions only")
    load_global_skill(msg, site, model, plan, skill)
    task, rnd = site.task_spec.name, server_round(msg)
    options = instruction_options(msg)
    privacy, notes = site_privacy(settings.privacy, context.node_config)
    if privacy.enabled and hooks is not None and hooks.batches is not None:
        raise ValueError(f"site {site.name}: a research batch order is not combined with "
                         "DP-SGD, whose privacy accounting assumes its own Poisson sampling")
    for note in notes:
        log(WARNING, "site %s, privacy: %s", site.name, note)
    # Under DP the seed of noise, sampling and shuffling comes from OS entropy unless a
    # simulation asks for reproducible DP: (config seed, site, round) are known to the server.
    reproducible = not privacy.enabled or privacy.reproducible
    seed = round_seed(settings.seed, site.name, rnd) if reproducible else entropy_seed() % 2**31
    train_set = site.dataset("train", train=True)
    cfg = site_train_config(
        replace(settings.train, seed=seed, progress=False, device=site_device(context, settings)),
        options)

    dp, ledger = None, None
    extra: dict[str, float] = {}
    if privacy.enabled:
        ledger = load_ledger(context, settings, site.name)
        planned = [(
            privacy.noise_multiplier,
            sample_rate(len(train_set), cfg.batch_size),
            steps_per_round(len(train_set), cfg.batch_size, cfg.epochs, cfg.max_steps),
        )]
        reason = ""
        if ledger_dir(context, settings, site.name) is None and not is_simulation(
            context.node_config
        ):
            # An in-memory ledger restarts at epsilon 0 with the SuperNode: no budget holds.
            reason = (
                f"site {site.name!r} does not train under DP without a ledger folder that "
                "survives restarts: start it with --state-dir (or node config dp-ledger-dir)"
            )
        elif ledger.would_exceed(privacy.epsilon_budget, planned):
            reason = (
                f"site {site.name!r} stops training: one more round would raise epsilon from "
                f"{ledger.epsilon:.3f} to {ledger.epsilon_after(planned):.3f}, above its budget "
                f"{privacy.epsilon_budget} (delta={privacy.delta})"
            )
        if reason:
            metrics = MetricRecord(
                {NUM_EXAMPLES: 0, "epsilon": ledger.epsilon, "delta": privacy.delta}
            )
            content = RecordDict({
                RecordKey.METRICS.value: metrics,
                RecordKey.INFO.value: privacy_said(answering(
                    info_record(site, model, Status.BUDGET_EXHAUSTED, reason, identity), rnd),
                    notes),
            })
            keep_downlink(context, keep)
            return Message(content, reply_to=msg)
        dp = DPSGD(privacy, seed=seed if reproducible else None)
    params, regulariser = local_objective(model, task, options, dp is not None)
    if plan != "skill":
        params = research_parameters(model, task, plan, options, rnd, settings, dp is not None)
    extra_loss = None
    if hooks is not None and hooks.on_site is not None:
        hooks.on_site(site.name)
    if hooks is not None and hooks.local_loss is not None:
        extra_loss = hooks.local_loss(site.name, model, task)
        regulariser = combined(regulariser, extra_loss)

    control = site_control(msg, context, model, task, options, params, dp is not None)
    batches = (None if hooks is None or hooks.batches is None
               else hooks.batches(train_set, cfg.batch_size, seed))
    loader = make_loader(train_set, cfg.batch_size, shuffle=True, seed=seed,
                         num_workers=cfg.num_workers, pin_memory=cfg.device != "cpu",
                         batch_sampler=batches)
    try:
        result = train_task(model, task, loader, cfg, make_private=dp, params=params,
                            regulariser=regulariser, optimizer_state=kept_optimizer(context, cfg),
                            control=control, logit_shift=site_logit_shift(site, options),
                            first_epoch=augmentation_epoch(rnd, cfg.epochs))
    finally:
        if dp is not None:
            dp.close()
        if extra_loss is not None and hasattr(extra_loss, "close"):
            extra_loss.close()
    if dp is not None and ledger is not None:
        ledger.record(rnd, dp.history)
        save_ledger(context, settings, site.name, ledger)
        extra = {"epsilon": ledger.epsilon, "delta": privacy.delta}

    keep_optimizer(context, cfg, result, site.name)
    val_split = settings.federation.val_split
    held_out = ({} if val_split is None
                else evaluate_task(model, task, _eval_loader(site, val_split, cfg)))
    metrics = metric_record(held_out, result.num_examples, prefix="val_")
    metrics["train_loss"] = float(result.loss)
    metrics["steps"] = int(result.steps)
    for key, value in extra.items():
        metrics[key] = float(value)
    update = (
        {RecordKey.DELTA.value: delta_record(msg, context, model, task, options, skill)}
        if ConfigKey.DELTA_CODEC.value in options
        else {RecordKey.SKILL.value: skill_record(
            model, task, frozen_keys(model.skill_keys(task), options), plan)}
    )
    if control is not None:
        update[RecordKey.CONTROL.value] = keep_control(context, control)
    content = RecordDict({
        **update,
        RecordKey.METRICS.value: metrics,
        RecordKey.INFO.value: privacy_said(
            answering(info_record(site, model, Status.TRAINED, foundation_hash=identity), rnd),
            notes),
    })
    keep_downlink(context, keep)
    return Message(content, reply_to=msg)


def site_train_config(cfg: Any, options: Mapping[str, Any]) -> Any:
    """The round's train config: the site's own, or plain SGD at the instruction's
    ``site-sgd-lr`` (checked: a finite lr > 0, else the instruction is refused)."""
    if ConfigKey.SITE_SGD_LR.value not in options:
        return cfg
    lr = options[ConfigKey.SITE_SGD_LR.value]
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (
            math.isfinite(lr) and lr > 0):
        raise ValueError(f"instruction key {ConfigKey.SITE_SGD_LR.value!r} must be a finite lr "
                         f"> 0, got {lr!r}")
    return replace(cfg, optimizer="sgd", lr=float(lr), momentum=0.0, weight_decay=0.0)


def augmentation_epoch(rnd: int, epochs: int) -> int:
    """The augmentation epoch of round ``rnd``'s first local pass: rounds never share one
    (a round makes at most ``epochs`` passes), so an item seen in two rounds is augmented
    afresh, as it would be in two epochs of centralised training."""
    return rnd * epochs


def kept_optimizer(context: Context, cfg: Any) -> dict[str, Any] | None:
    """The optimiser state this site kept from its last round (``train.keep_optimizer_state``)."""
    stored = context.state.array_records.get(OPTIMIZER_STATE)
    if not cfg.keep_optimizer_state or stored is None:
        return None
    return record_to_arrays(stored)


def keep_optimizer(context: Context, cfg: Any, result: Any, site: str) -> bool:
    """Store the round's optimiser state in the node's state (it never leaves the site);
    returns whether this round resumed a kept one. A state that no longer fits (another rank)
    is logged and replaced."""
    if not cfg.keep_optimizer_state:
        return False
    had = OPTIMIZER_STATE in context.state.array_records
    if result.state_refused:
        log(INFO, "site %s: kept optimiser state not resumed (%s); it starts afresh",
            site, result.state_refused)
    context.state[OPTIMIZER_STATE] = arrays_to_record(result.optimizer_state)
    return had and not result.state_refused


def site_control(
    msg: Message, context: Context, model: UniconModel, task: str, options: dict[str, Any],
    params: list[Any] | None, private: bool,
) -> ControlVariates | None:
    """SCAFFOLD's correction for this round when the instruction asks for it: the server's
    ``c`` (its ``control`` record) and the site's own ``c_i`` (``context.state``; zeros in its
    first round, or when the trained layout changed), over the parameters the site trains."""
    from unicon_core.federation.scaffold import control_problem
    from unicon_core.training.scaffold import ControlVariates

    if not options.get(ConfigKey.SCAFFOLD.value):
        return None
    if private:
        raise ValueError("SCAFFOLD is not combined with DP-SGD: the mean of unclipped, "
                         "un-noised gradients would leave the site")
    record = msg.content.array_records.get(RecordKey.CONTROL.value)
    if record is None:
        raise ValueError("the instruction asks for SCAFFOLD but carries no control variate")
    skill = model.skill_parameters(task)
    trained = {id(p) for p in params} if params is not None else None
    chosen = {k: p for k, p in skill.items() if trained is None or id(p) in trained}
    stored = context.state.array_records.get(CONTROL_STATE)
    kept = record_to_arrays(stored) if stored is not None else None
    if kept is not None and control_problem(kept, chosen):
        log(INFO, "SCAFFOLD: the kept control variate no longer fits the trained parameters; "
            "it starts at zero")
        kept = None
    return ControlVariates(chosen, record_to_arrays(record), kept)


def site_logit_shift(site: Site, options: dict[str, Any]) -> Any:
    """The log class prior of the site's own train split when the instruction asks for logit
    adjustment (``None`` otherwise); a site whose task is not a classification refuses."""
    from unicon_core.training.losses import logit_prior_shift

    if not options.get(ConfigKey.LOGIT_ADJUST.value):
        return None
    return logit_prior_shift(site.class_counts("train"))


def keep_control(context: Context, control: ControlVariates) -> ArrayRecord:
    """Keep the site's new ``c_i`` (``context.state``) and return its change for the reply."""
    new, change = control.site_update()
    context.state[CONTROL_STATE] = arrays_to_record(new)
    return arrays_to_record(change)


def local_objective(
    model: UniconModel, task: str, options: dict[str, Any], private: bool
) -> tuple[list[Any] | None, Any]:
    """What the site trains and its extra loss: FFA-LoRA freezes every A factor (trains the
    rest of the skill), FedProx adds ``mu/2 ||w - w_global||^2`` over the trained parameters.
    ``(None, None)`` is today's: the whole skill, the task's loss alone."""
    from unicon_core.federation.lora_rules import a_keys

    params = None
    if options.get(ConfigKey.LORA_RULE.value) == "ffa":
        skill = model.skill_parameters(task)
        frozen = a_keys(list(skill))
        params = [p for k, p in skill.items() if k not in frozen]
    mu = float(options.get(ConfigKey.PROX_MU.value, 0.0))
    if not mu > 0:
        return params, None
    if private:
        raise ValueError("FedProx (prox_mu > 0) is not combined with DP-SGD: its proximal "
                         "gradient is not clipped per example")
    trained = params if params is not None else list(model.skill_parameters(task).values())
    start = [p.detach().clone() for p in trained]

    def proximal() -> Any:
        return 0.5 * mu * sum(((p - p0.to(p.device)) ** 2).sum()
                              for p, p0 in zip(trained, start, strict=True))

    return params, proximal


def research_parameters(
    model: UniconModel, task: str, plan: str, options: dict[str, Any], rnd: int,
    settings: ExperimentSettings, private: bool,
) -> list[Any]:
    """What a research plan trains in round ``rnd`` (parameters or lr groups); the issue-#14
    options and DP-SGD apply to skills only and are refused with another plan."""
    from unicon_core.training.plans import trained_parameters

    if options or private:
        raise ValueError(f"plan {plan!r} trains more than a skill: delta codecs, LoRA rules, "
                         "FedProx and DP-SGD are only offered with plan 'skill'")
    return trained_parameters(model, task, plan, rnd - 1, settings.federation.rounds,
                              settings.train.lr, settings.train.backbone_lr_scale)


def combined(first: Any, second: Any) -> Any:
    """Two zero-argument regularisers as one (either may be ``None``)."""
    if first is None or second is None:
        return second if first is None else first
    return lambda: first() + second()


def handle_evaluate(
    msg: Message, context: Context, settings: ExperimentSettings, hooks: SiteHooks | None = None
) -> Message:
    """Evaluate the aggregated skill (or the run's plan) on the site's own test split."""
    from unicon_core.training import evaluate_task

    plan = check_plan(context, settings, hooks)
    site = open_node_site(context, settings, hooks)
    skill, keep = received_skill(msg, context)
    model = build_model(settings, site, instruction_rank(msg, site, skill))
    check_instruction(msg, site, model)
    identity = model.foundation_hash
    if hooks is not None and hooks.model is not None:
        model = hooks.model(site)
    load_global_skill(msg, site, model, plan, skill)
    from unicon_core.device import resolve_device

    model.to(resolve_device(site_device(context, settings)))
    loader = _eval_loader(site, settings.federation.eval_split, settings.train)
    result = evaluate_task(model, site.task_spec.name, loader)
    metrics = metric_record(result, int(result.get("num_examples", 0)))
    content = RecordDict({
        RecordKey.METRICS.value: metrics,
        RecordKey.INFO.value: answering(
            info_record(site, model, Status.EVALUATED, foundation_hash=identity),
            server_round(msg)),
    })
    keep_downlink(context, keep)
    return Message(content, reply_to=msg)


def _eval_loader(site: Site, split: str, cfg: Any) -> Any:
    from unicon_core.training import make_loader

    return make_loader(site.dataset(split, train=False), cfg.batch_size, shuffle=False,
                       num_workers=cfg.num_workers)


def site_device(context: Context, settings: ExperimentSettings) -> str:
    """The site's own ``device`` node config if it set one, else the run's ``train.device``."""
    device = str(context.node_config.get(NODE_DEVICE, settings.train.device))
    replace(settings.train, device=device)  # validates the value (clear error naming it)
    return device


# ---------------------------------------------------------------------------- privacy ledger
def ledger_dir(context: Context, settings: ExperimentSettings, site: str) -> Path | None:
    """Where the site keeps its ledger: ``dp-ledger-dir``, else ``state-dir`` (node config).

    Only a simulated node falls back to ``<run_dir>/sites/<site>``: in a deployment the run
    config is the researcher's, who must not choose (or reset) where a site counts its epsilon.
    """
    for key in (NODE_DP_LEDGER_DIR, NODE_STATE_DIR):
        if key in context.node_config:
            return Path(str(context.node_config[key]))
    if settings.federation.run_dir and is_simulation(context.node_config):
        return Path(settings.federation.run_dir) / SITES_DIR / site
    return None


def load_ledger(context: Context, settings: ExperimentSettings, site: str) -> PrivacyLedger:
    """The site's ledger: from ``context.state`` within a run, else from its folder."""
    from unicon_core.privacy import PrivacyLedger

    record = context.state.config_records.get(LEDGER_STATE)
    if record is not None:
        return PrivacyLedger.from_json(str(record["json"]))
    folder = ledger_dir(context, settings, site)
    if folder is None:
        return PrivacyLedger(delta=settings.privacy.delta)
    return PrivacyLedger.load(folder, settings.privacy.delta)


def save_ledger(
    context: Context, settings: ExperimentSettings, site: str, ledger: PrivacyLedger
) -> None:
    """Keep the ledger in ``context.state`` and, when the site has a folder, on disk."""
    context.state[LEDGER_STATE] = ConfigRecord({"json": ledger.to_json()})
    folder = ledger_dir(context, settings, site)
    if folder is not None:
        ledger.save(folder)
