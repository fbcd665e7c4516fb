"""Settings of a federated experiment, read from the resolved hydra config.

Hydra (``configs/``) is the one source of configuration. Flower's run config only names the
experiment and carries hydra overrides (``[tool.flwr.app.config] experiment``/``overrides``);
:func:`overrides_from_run_config` turns it into an override list,
``unicon_core.hydra_config.load_settings`` composes it, and :func:`settings_from_config` validates
the federated part into the dataclasses below (each raises a ``ValueError`` naming the field).
"""

from __future__ import annotations

import math
import shlex
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from unicon_core.config import BackboneConfig, TaskSpec, TrainConfig
from unicon_core.data.manifest import SPLITS
from unicon_core.federation.compression import Codec
from unicon_core.federation.protocol import NUM_EXAMPLES
from unicon_core.federation.sampling import SamplingConfig
from unicon_core.federation.server_opt import ServerOptConfig

#: Node-config keys a SuperNode may set in a real deployment (``--node-config``).
NODE_SITE_DIR = "site-dir"
NODE_SITE_NAME = "site-name"
NODE_STATE_DIR = "state-dir"
#: Node-config key: the device this site trains on (overrides ``train.device``).
NODE_DEVICE = "device"
#: Node-config keys of the site's own privacy floor; a run config can only tighten them.
NODE_DP_MIN_NOISE = "dp-min-noise"  # smallest noise multiplier the site trains with (DP on)
NODE_DP_MAX_EPSILON = "dp-max-epsilon"  # largest epsilon the site ever spends (DP on)
NODE_DP_LEDGER_DIR = "dp-ledger-dir"  # where the site keeps its privacy ledger
#: Node-config keys of the router statistics a site sends in the query round.
NODE_ROUTER_MIN_COUNT = "router-min-count"  # fewest train examples (default ROUTER_MIN_COUNT)
NODE_ROUTER_NOISE = "router-noise"  # Gaussian noise std x (1 / count) added to each moment
NODE_ROUTER_WITH_DP = "router-stats-with-dp"  # send them even while DP-SGD is on
#: Default fewest train examples behind a site's router statistics.
ROUTER_MIN_COUNT = 20
#: Node-config key Flower's simulation sets on every virtual SuperNode.
NODE_PARTITION_ID = "partition-id"
#: Node-config key: the site runs research plans (``federation.plan`` other than ``skill``),
#: which move more than a skill off the site. Set by simulation runners, never by a run config.
NODE_ALLOW_RESEARCH_PLANS = "allow-research-plans"

WANDB_MODES = ("offline", "online", "disabled")


def _fail(fld: str, why: str) -> ValueError:
    return ValueError(f"federation config {fld}: {why}")


@dataclass
class SiteRef:
    """One hospital of the experiment: its name, data folder and (optionally) its task.

    ``path`` is absolute or relative to ``federation.data_root``. ``task``, when given, must agree
    with the task the site folder declares; the site folder is authoritative.
    """

    path: str = ""
    task: str | None = None
    name: str = field(default="", metadata={"help": "Filled from the key in federation.sites."})

    def check(self) -> None:
        """Raise a ``ValueError`` naming the site if it is incomplete."""
        if not self.name or "/" in self.name:
            raise _fail("sites", f"site name {self.name!r} must be non-empty without '/'")
        if not self.path:
            raise _fail(f"sites.{self.name}.path", "must be set")


@dataclass
class FederationConfig:
    """Rounds, sites and where a run writes its outputs."""

    rounds: int = field(default=3, metadata={"help": "Total federated rounds (>= 1)."})
    data_root: str | None = field(
        default=None, metadata={"help": "Folder that relative site paths are resolved against."}
    )
    sites: dict[str, SiteRef] = field(default_factory=dict)
    site_dirs: list[str] = field(
        default_factory=list,
        metadata={"help": "Site folders; when set they replace `sites` (named by folder)."},
    )
    evaluate: bool = field(
        default=True, metadata={"help": "Evaluate the aggregated skills on each site every round."}
    )
    evaluate_every: int = field(
        default=1,
        metadata={"help": "With evaluate: evaluate every k-th round only, and always the last "
                  "(long runs of short rounds spend most of their time evaluating otherwise)."},
    )
    val_split: str | None = field(
        default="val",
        metadata={"help": "Split sites report after training (null: none, one pass fewer "
                  "per round; the evaluation rounds still report the test split)."},
    )
    eval_split: str = field(default="test", metadata={"help": "Split of the evaluation rounds."})
    round_timeout_s: float = field(default=3600.0, metadata={"help": "Wait for replies."})
    node_wait_s: float = field(default=300.0, metadata={"help": "Wait for all sites to connect."})
    min_sites: int = field(
        default=1,
        metadata={"help": "Fewest sites that must pass the query round for the run to start "
                  "(sites with invalid data or another foundation are excluded, not fatal)."},
    )
    min_sites_per_task: int = field(
        default=1, metadata={"help": "Fewest valid updates a task needs to change in a round."}
    )
    runs_dir: str | None = field(
        default=None, metadata={"help": "Absolute folder holding one sub-folder per run."}
    )
    run_dir: str | None = field(
        default=None, metadata={"help": "Absolute folder of this run (default: a new one)."}
    )
    gpus_per_site: float = field(
        default=0.25,
        metadata={"help": "Simulation: GPU fraction per ClientApp when CUDA is visible."},
    )
    wandb: str = field(default="offline", metadata={"help": "offline, online or disabled."})
    wandb_project: str = "unicon"
    init_skill: str | None = field(
        default=None,
        metadata={"help": "Bundle folder (`unicon train --bundle`, `unicon export`) whose skills "
                  "start the tasks they hold (absolute path); other tasks start fresh."},
    )
    plots: bool = True
    plan: str = field(
        default="skill",
        metadata={"help": "What trains and travels per task (unicon_core.training.plans); "
                  "any plan but 'skill' runs only at sites whose node config allows it."},
    )

    def __post_init__(self) -> None:
        if not isinstance(self.rounds, int) or self.rounds < 1:
            raise _fail("rounds", f"must be an integer >= 1, got {self.rounds!r}")
        sites: dict[str, SiteRef] = {}
        self.site_dirs = [str(p) for p in self.site_dirs]
        if self.site_dirs:
            names = [Path(p).name for p in self.site_dirs]
            if len(set(names)) != len(names):
                raise _fail("site_dirs", f"folder names must be unique, got {names}")
            self.sites = {n: SiteRef(path=p) for n, p in zip(names, self.site_dirs, strict=True)}
        for name, ref in dict(self.sites).items():
            data = {"path": ref.path, "task": ref.task} if isinstance(ref, SiteRef) else dict(ref)
            data["name"] = name
            sites[name] = SiteRef(**data)
            sites[name].check()
        self.sites = sites
        if self.wandb not in WANDB_MODES:
            raise _fail("wandb", f"{self.wandb!r} is not one of {WANDB_MODES}")
        for name in ("runs_dir", "run_dir", "data_root", "init_skill"):
            value = getattr(self, name)
            if value is not None and not Path(value).is_absolute():
                raise _fail(name, f"must be an absolute path (got {value!r}); outputs and data "
                            "never depend on the working directory")
        if self.round_timeout_s <= 0 or self.node_wait_s <= 0:
            raise _fail("round_timeout_s/node_wait_s", "must be > 0")
        if not 0.0 <= self.gpus_per_site <= 1.0:
            raise _fail("gpus_per_site", f"must be in [0, 1], got {self.gpus_per_site}")
        if isinstance(self.evaluate_every, bool) or not isinstance(self.evaluate_every, int) \
                or self.evaluate_every < 1:
            raise _fail("evaluate_every", f"must be an integer >= 1, got {self.evaluate_every!r}")
        if self.val_split is not None and self.val_split not in SPLITS:
            raise _fail("val_split", f"{self.val_split!r} is not null or one of {list(SPLITS)}")
        if self.eval_split not in SPLITS:
            raise _fail("eval_split", f"{self.eval_split!r} is not one of {list(SPLITS)}")
        if self.min_sites < 1:
            raise _fail("min_sites", f"must be >= 1, got {self.min_sites}")
        if self.min_sites_per_task < 1:
            raise _fail("min_sites_per_task", f"must be >= 1, got {self.min_sites_per_task}")
        from unicon_core.training.plans import PLAN_NAMES

        if self.plan not in PLAN_NAMES:
            raise _fail("plan", f"{self.plan!r} is not one of {list(PLAN_NAMES)}")

    def site_path(self, name: str) -> Path:
        """Absolute data folder of site ``name``."""
        if name not in self.sites:
            raise KeyError(f"unknown site {name!r}; sites: {list(self.sites)}")
        path = Path(self.sites[name].path)
        if path.is_absolute():
            return path
        if self.data_root is None:
            raise _fail(f"sites.{name}.path", f"{path} is relative but data_root is not set")
        return Path(self.data_root) / path


@dataclass
class PrivacyConfig:
    """DP-SGD in local training (opacus): noise, clipping, delta and a per-site epsilon budget."""

    enabled: bool = False
    noise_multiplier: float = field(default=1.0, metadata={"help": "Gaussian noise / clip norm."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Per-example clipping norm."})
    delta: float = field(default=1e-5, metadata={"help": "Target delta of (epsilon, delta)-DP."})
    epsilon_budget: float | None = field(
        default=None, metadata={"help": "A site stops before a round would exceed this."}
    )
    reproducible: bool = field(
        default=False,
        metadata={"help": "Simulation only: seed DP noise and sampling from (seed, site, round). "
                  "Ignored in a deployment, where noise always comes from OS entropy."},
    )

    def __post_init__(self) -> None:
        if self.noise_multiplier < 0:
            raise _fail("privacy.noise_multiplier", f"must be >= 0, got {self.noise_multiplier}")
        if self.max_grad_norm <= 0:
            raise _fail("privacy.max_grad_norm", f"must be > 0, got {self.max_grad_norm}")
        if not 0 < self.delta < 1:
            raise _fail("privacy.delta", f"must be in (0, 1), got {self.delta}")
        if self.epsilon_budget is not None and self.epsilon_budget <= 0:
            raise _fail("privacy.epsilon_budget", f"must be > 0 or null, got {self.epsilon_budget}")
        if self.enabled and self.noise_multiplier == 0:
            raise _fail("privacy.noise_multiplier", "DP-SGD needs noise (> 0) when enabled")


@dataclass(frozen=True)
class TaskFederation:
    """One task's federation options (issue #14, validated); defaults are today's behaviour."""

    delta: bool = False  # replies carry local - global (else the whole skill, as before)
    codec: str = "none"  # none, fp16, int8, topk (deltas only)
    per_row: bool = False  # int8: a scale per row instead of per tensor
    topk_fraction: float = 0.1  # topk: share of each tensor's values sent
    #: deltas travel as one flat array per dtype, without per-tensor framing (deltas only)
    pack: bool = False
    lora_rule: str = "naive"  # naive, ffa, fedsa, svd
    site_ranks: Mapping[str, int] = field(default_factory=dict)  # site -> its (lower) rank
    server_opt: str = "fedavg"  # fedavg, fedavgm, fedadam, fedyogi, fedexp
    server_lr: float = 1.0  # fedavgm
    server_momentum: float = 0.9  # fedavgm
    server_eta: float = 0.1  # fedadam, fedyogi
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-3
    fedexp_eps: float = 1e-3  # fedexp: keeps its server step finite when updates cancel
    fraction: float = 1.0  # share of the task's sites drawn per round
    min_sites: int = 1  # fewest of its sites a task draws per round
    prox_mu: float = 0.0  # FedProx at the sites (0: off)
    #: > 0: the sites take plain SGD steps at this lr (no momentum, no weight decay) instead
    #: of train.optimizer; with server_opt fedadam or fedyogi that is FedOpt (Reddi et al.
    #: 2021): the adaptive step is the server's, once a round, on the sites' mean delta
    site_sgd_lr: float = 0.0
    #: SCAFFOLD control variates: the server's c per task, each site's c_i kept at the site
    scaffold: bool = False
    #: logit adjustment at the sites (classification): each site trains on logits + its own
    #: train split's log class prior, against label skew between sites
    logit_adjust: bool = False
    #: server -> site: none (the whole skill, as before), fp16, int8, topk: the change since
    #: what the site holds, per_row and topk_fraction as above
    downlink_codec: str = "none"

    def __post_init__(self) -> None:
        from unicon_core.federation.compression import CODECS
        from unicon_core.federation.lora_rules import RULES

        if self.downlink_codec not in CODECS:
            raise _fail("strategy.lora.downlink_codec",
                        f"{self.downlink_codec!r} is not one of {CODECS}")
        try:
            self.codec_spec()
            self.server_opt_config()
            self.sampling()
            self.downlink_spec()
        except ValueError as err:
            raise _fail("strategy.lora", str(err)) from None
        if self.codec != "none" and not self.delta:
            raise _fail("strategy.lora.codec", f"{self.codec!r} compresses deltas: set delta=true")
        if self.pack and not self.delta:
            raise _fail("strategy.lora.pack", "packing applies to deltas: set delta=true")
        if self.lora_rule not in RULES:
            raise _fail("strategy.lora.lora_rule", f"{self.lora_rule!r} is not one of {RULES}")
        for site, rank in dict(self.site_ranks).items():
            if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
                raise _fail("strategy.lora.site_ranks", f"{site}: rank must be an integer >= 1")
        if self.site_ranks and self.lora_rule not in ("svd", "naive"):
            raise _fail("strategy.lora.site_ranks", "mixed ranks aggregate in product space: "
                        "use lora_rule svd")
        if not self.prox_mu >= 0:
            raise _fail("strategy.lora.prox_mu", f"must be >= 0, got {self.prox_mu}")
        if not (self.site_sgd_lr >= 0 and math.isfinite(self.site_sgd_lr)):
            raise _fail("strategy.lora.site_sgd_lr",
                        f"must be a finite lr >= 0 (0: off), got {self.site_sgd_lr}")
        for name in ("scaffold", "logit_adjust"):
            if not isinstance(getattr(self, name), bool):
                raise _fail(f"strategy.lora.{name}",
                            f"must be true or false, got {getattr(self, name)!r}")
        shared_space = self.lora_rule in ("naive", "ffa") and not self.site_ranks
        if self.server_opt == "fedexp" and not shared_space:
            raise _fail("strategy.lora.server_opt", "fedexp's step compares the sites' "
                        "updates with their mean in the trained parameters' space, shared by "
                        "every site: use lora_rule naive or ffa, without site_ranks")
        if self.scaffold and not shared_space:
            raise _fail("strategy.lora.scaffold", "control variates live in the trained "
                        "parameters' space, shared by every site: use lora_rule naive or ffa, "
                        "without site_ranks")

    def codec_spec(self) -> Codec:
        """The delta codec."""
        return Codec(self.codec, self.per_row, self.topk_fraction, self.pack)

    def downlink_spec(self) -> Codec:
        """The downlink codec (``none``: the whole skill every time, today's bytes)."""
        return Codec(self.downlink_codec, self.per_row, self.topk_fraction)

    def server_opt_config(self) -> ServerOptConfig:
        """The server optimiser's settings."""
        return ServerOptConfig(self.server_opt, self.server_lr, self.server_momentum,
                               self.server_eta, self.beta_1, self.beta_2, self.tau,
                               self.fedexp_eps)

    def sampling(self) -> SamplingConfig:
        """The per-round sampling of the task's sites."""
        return SamplingConfig(self.fraction, self.min_sites)

    @property
    def is_default(self) -> bool:
        """Whether every option is today's behaviour."""
        return self == TaskFederation()


#: Why the round's relative norm bound sits badly with FedOpt's split, and what to set.
_RAW_GRADIENT_BOUND = (
    "strategy.update_norm_factor={factor:g} with strategy.lora.site_sgd_lr > 0 ({tasks}): under "
    "FedOpt's split each update is a raw minibatch gradient, whose honest norms vary more "
    "than local runs' deltas, and the round's bound (on a task with 3 or more updates a "
    "round) rejected about 4 % of honest updates on tumour_cls (docs/security.md). To keep a "
    "bound that does not, set "
    "strategy.update_norm_factor=null with strategy.max_update_norm=<a fixed L2 bound>, or a "
    "larger factor.")


@dataclass
class StrategyConfig:
    """Which server strategy aggregates each task's skill."""

    name: str = "per_task_fedavg"
    weighted_by: str = NUM_EXAMPLES
    trim_fraction: float = field(
        default=0.2, metadata={"help": "per_task_trimmed_mean: fraction cut at each end."}
    )
    max_update_norm: float | None = field(
        default=None,
        metadata={"help": "Reject a site update farther than this (L2) from the skill sent."},
    )
    update_norm_factor: float | None = field(
        default=4.0,
        metadata={"help": "With >= 3 updates of a task, reject those whose norm exceeds this "
                  "factor x the round's median update norm of the task (null: off)."},
    )
    lora: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "Federation options of every task (issue #14: delta, codec, "
                  "lora_rule, site_ranks, server_opt, fraction, min_sites, prox_mu, "
                  "scaffold, logit_adjust, ...)."},
    )
    lora_tasks: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "Per task: options overriding `lora` for that task."},
    )

    def __post_init__(self) -> None:
        if self.name not in STRATEGIES:
            raise _fail("strategy.name", f"{self.name!r} is not one of {sorted(STRATEGIES)}")
        if not 0.0 <= self.trim_fraction < 0.5:
            raise _fail("strategy.trim_fraction", f"must be in [0, 0.5), got {self.trim_fraction}")
        if self.max_update_norm is not None and not self.max_update_norm > 0:
            raise _fail("strategy.max_update_norm", f"must be > 0 or null, got "
                        f"{self.max_update_norm}")

        if self.update_norm_factor is not None and not self.update_norm_factor >= 1:
            raise _fail("strategy.update_norm_factor", f"must be >= 1 or null, got "
                        f"{self.update_norm_factor}")

        self.lora = dict(self.lora or {})
        self.lora_tasks = {str(t): dict(v or {}) for t, v in dict(self.lora_tasks or {}).items()}
        for opts in [self.lora, *self.lora_tasks.values()]:
            known = {f.name for f in fields(TaskFederation)}
            if unknown := sorted(set(opts) - known):
                raise _fail("strategy.lora", f"unknown option(s) {unknown}; known: "
                            f"{sorted(known)}")
        raw: list[str] = []  # tasks under FedOpt's split (site_sgd_lr), for the warning below
        for task in ["", *self.lora_tasks]:
            opts = self.for_task(task)  # validates every task's options
            if opts.site_sgd_lr > 0:
                raw.append(task or "the default")
            # options that trust a plain statistic of every site's update, which a robust
            # strategy would still let one lying site set
            for key, used, why in (
                    ("scaffold", opts.scaffold,
                     "SCAFFOLD's control variate is a plain mean a lying site could move"),
                    ("server_opt", opts.server_opt == "fedexp",
                     "FedExP's step grows with the sites' spread, which one lying site sets")):
                if used and self.name != "per_task_fedavg":
                    raise _fail(f"strategy.lora.{key}", f"{self.name} is robust to a lying "
                                f"site; {why} (use per_task_fedavg)")
        if raw and self.update_norm_factor is not None:
            warnings.warn(_RAW_GRADIENT_BOUND.format(
                factor=self.update_norm_factor, tasks=", ".join(raw)), stacklevel=3)

    def for_task(self, task: str) -> TaskFederation:
        """``task``'s options: ``lora`` overridden by ``lora_tasks[task]``."""
        opts = {**self.lora, **self.lora_tasks.get(task, {})}
        if "site_ranks" in opts:
            opts["site_ranks"] = {str(k): v for k, v in dict(opts["site_ranks"] or {}).items()}
        return TaskFederation(**opts)

    def options(self) -> dict[str, Any]:
        """Keyword arguments of the chosen strategy class beyond the common ones."""
        return {name: getattr(self, name) for name in STRATEGY_OPTIONS.get(self.name, ())}


#: Strategy names -> "module:Class" under ``server.strategies`` (imported lazily by the server).
STRATEGIES: dict[str, str] = {
    "per_task_fedavg": "server.strategies.per_task_fedavg:PerTaskFedAvg",
    "per_task_median": "server.strategies.per_task_median:PerTaskMedian",
    "per_task_trimmed_mean": "server.strategies.per_task_trimmed_mean:PerTaskTrimmedMean",
}
#: Strategy-specific options (StrategyConfig fields) passed to the strategy's constructor.
STRATEGY_OPTIONS: dict[str, tuple[str, ...]] = {"per_task_trimmed_mean": ("trim_fraction",)}


@dataclass
class ExperimentSettings:
    """Everything the ServerApp and ClientApp read from one resolved config."""

    experiment: str
    seed: int
    resume: bool
    backbone: BackboneConfig
    train: TrainConfig
    federation: FederationConfig
    privacy: PrivacyConfig
    strategy: StrategyConfig
    tasks: dict[str, TaskSpec]
    resolved: dict[str, Any]


def site_dirs_override(paths: Sequence[Path | str]) -> str:
    """A hydra override listing site folders (quoted, so any absolute path survives)."""
    quoted = ",".join("'" + str(p).replace("'", "\\'") + "'" for p in paths)
    return f"federation.site_dirs=[{quoted}]"


def register_schemas(store: Any) -> None:
    """Register the federated schemas with hydra's ``ConfigStore`` (group files extend them)."""
    store.store(group="federation", name="federation_schema", node=FederationConfig)
    store.store(group="privacy", name="privacy_schema", node=PrivacyConfig)
    store.store(group="strategy", name="strategy_schema", node=StrategyConfig)


def overrides_from_run_config(run_config: Mapping[str, Any]) -> list[str]:
    """Hydra overrides from Flower's run config: ``experiment=<name>`` then ``overrides``.

    ``overrides`` is one string of whitespace-separated hydra overrides (shell quoting allowed),
    e.g. ``"federation.rounds=2 privacy=dp"``.
    """
    out: list[str] = []
    experiment = str(run_config.get("experiment", "") or "").strip()
    if experiment:
        out.append(f"experiment={experiment}")
    out += shlex.split(str(run_config.get("overrides", "") or ""))
    return out


def settings_from_config(cfg: Any) -> ExperimentSettings:
    """Validate a composed config (``DictConfig`` or plain mapping) into settings."""
    from omegaconf import DictConfig, OmegaConf

    data: dict[str, Any] = (
        OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
        if isinstance(cfg, DictConfig)
        else dict(cfg)
    )
    tasks_raw = data.get("tasks") or {}
    tasks = {
        name: TaskSpec.from_dict({"name": name, **dict(spec)}) for name, spec in tasks_raw.items()
    }
    return ExperimentSettings(
        experiment=str(data.get("experiment_name") or data.get("experiment") or "experiment"),
        seed=int(data.get("seed", 0)),
        resume=bool(data.get("resume", False)),
        backbone=BackboneConfig(**dict(data.get("backbone") or {})),
        train=TrainConfig(**dict(data.get("train") or {})),
        federation=FederationConfig(**dict(data.get("federation") or {})),
        privacy=PrivacyConfig(**dict(data.get("privacy") or {})),
        strategy=StrategyConfig(**dict(data.get("strategy") or {})),
        tasks=tasks,
        resolved=data,
    )


def _positive(node_config: Mapping[str, Any], key: str) -> float | None:
    if key not in node_config:
        return None
    value = node_config[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"node config {key!r} must be a number > 0, got {value!r}")
    return float(value)


def research_allowed(node_config: Mapping[str, Any]) -> bool:
    """Whether a site's node config allows research plans (``allow-research-plans``)."""
    value = node_config.get(NODE_ALLOW_RESEARCH_PLANS, False)
    return value is True or str(value).lower() in {"true", "1", "yes"}


def is_simulation(node_config: Mapping[str, Any]) -> bool:
    """Whether this node is a simulated one (Flower sets ``partition-id``, no ``site-dir``)."""
    return NODE_PARTITION_ID in node_config and NODE_SITE_DIR not in node_config


def site_privacy(
    run: PrivacyConfig, node_config: Mapping[str, Any]
) -> tuple[PrivacyConfig, list[str]]:
    """The privacy a site applies: the run's, tightened by the site's own floor; and notes.

    A floor (``dp-min-noise``, ``dp-max-epsilon``) turns DP-SGD on; the noise is the larger of
    the run's and the floor's, the budget the smaller. A run config can only tighten the floor,
    never loosen it; each note says what the floor changed. ``reproducible`` holds only on a
    simulated node. Raises a ``ValueError`` naming a malformed node-config value.
    """
    from dataclasses import replace

    notes: list[str] = []
    min_noise = _positive(node_config, NODE_DP_MIN_NOISE)
    max_eps = _positive(node_config, NODE_DP_MAX_EPSILON)
    out = run
    if (min_noise is not None or max_eps is not None) and not run.enabled:
        notes.append("the run config has DP off; the site's floor turns DP-SGD on")
        out = replace(out, enabled=True)
    if min_noise is not None and out.noise_multiplier < min_noise:
        if run.enabled:
            notes.append(f"noise multiplier {run.noise_multiplier:g} is below the site's floor "
                         f"{min_noise:g}; the floor applies")
        out = replace(out, noise_multiplier=min_noise)
    if max_eps is not None and (out.epsilon_budget is None or out.epsilon_budget > max_eps):
        if run.enabled:
            notes.append(f"epsilon budget {run.epsilon_budget} is above the site's maximum "
                         f"{max_eps:g}; the maximum applies")
        out = replace(out, epsilon_budget=max_eps)
    if out.reproducible and not is_simulation(node_config):
        notes.append("privacy.reproducible is ignored outside a simulation (noise from OS "
                     "entropy)")
        out = replace(out, reproducible=False)
    return out, notes


def site_for_node(node_config: Mapping[str, Any], fed: FederationConfig) -> tuple[str, Path]:
    """Which site a node serves: ``site-dir`` from its node config, else its simulation slot.

    In a deployment each SuperNode is started with ``--node-config "site-dir='/data/site'"``;
    in simulation the i-th virtual node (``partition-id`` i) serves the i-th configured site.
    """
    if NODE_SITE_DIR in node_config:
        path = Path(str(node_config[NODE_SITE_DIR]))
        name = str(node_config.get(NODE_SITE_NAME, "") or path.name)
        return name, path
    if NODE_PARTITION_ID not in node_config:
        raise ValueError(
            f"node config has neither {NODE_SITE_DIR!r} nor {NODE_PARTITION_ID!r}: cannot tell "
            "which site this node serves"
        )
    index = int(node_config[NODE_PARTITION_ID])
    names = list(fed.sites)
    if not 0 <= index < len(names):
        raise ValueError(
            f"simulation node {index} has no site: the experiment lists {len(names)} sites "
            f"({names}); set the federation's num-supernodes to {len(names)}"
        )
    return names[index], fed.site_path(names[index])
