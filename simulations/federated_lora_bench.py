"""Federated LoRA (#14): rules vs centralised, bytes per codec, mixed ranks, scaling.

Four measurements, each written into the "Federated LoRA (#14)" section of BENCHMARKS.md:

1. **Rules vs centralised.** Per LoRA aggregation rule (naive, FFA, FedSA, SVD) and per
   multi-site task, the federated test metric after the last round (each site's held-out test
   split, example-weighted over the task's sites, as ``results.json``; FedSA sites are
   evaluated with their own B, which the server sends each site), against the centralised
   upper bound of the continual baselines (:class:`~unicon_core.continual.baselines.
   centralised.Centralised`'s recipe: the task's train splits pooled in one node, ``local_steps
   x sites`` steps per round, same rounds, seed and start). The centralised skill is then
   evaluated on the same per-site test splits through a one-round run with learning rate
   1e-12 (the skill's largest change is reported), so both sides use one measure.
2. **Bytes per site and round per codec**, on the product's serialized messages
   (:func:`unicon_flower.accounting.content_bytes`, as :mod:`simulations.communication`): the
   strategy's train and evaluate instructions down, a training reply (its skill or encoded
   delta, metrics, info) and an evaluation reply up; the site's "trained" skill is the sent
   one plus seeded noise (std 1e-3), which only matters for top-k and the int8 scales. Done
   for the tiny demo backbone and the ViT-B-size ``base`` transformer (85M parameters,
   freshly initialised: the shapes are real, the values are not, and bytes depend only on
   shapes).
3. **Mixed ranks vs uniform rank** (SVD rule) on one task: one site trains a lower rank.
4. **Scaling**: 10, 100 and 1,000 simulated sites of a tabular survival task (rows of the
   real GBSG2 demo sites dealt out, repeated across sites when there are more slots than
   rows), 10 sites sampled per round; seconds per round and peak RSS of the run's process
   tree (psutil), plus every message a non-sampled site got.

Every federated run is the real ServerApp strategy and ClientApp over the in-process grid
(:func:`unicon_flower.runner.run_in_process`). Per-run results are cached as JSON in the work
folder, so a rerun resumes. ``--part rules|kept|short|one|ct|ctlong|lr|clslong|clsx3|clsdrop``
reruns one table of ``--foundation`` alone (the per-rule table with its mixed ranks, kept
moments, 15 x 4, 60 x 1, the 3D task at its own budget and at 3x its rounds, tumour_cls at
another lr, at 2x and 3x its rounds and without one site; each with its variants; the
foundation's part tables list each training site too) and replaces only that
table, saying so, where the cache of the others is gone. Usage::

    python -m simulations.federated_lora_bench [--seeds 0 1 2] [--quick] [--jobs 2] \
        [--foundation] [--part ct] [--out BENCHMARKS.md] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import fcntl
import json
import logging
import math
import multiprocessing
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from simulations.report import (
    UNSEEN_SOURCES_TABLE,
    cpu_name,
    insert_section,
    insert_subsection,
    mean_std,
    shown_path,
    write_synthetic_site,
)

if TYPE_CHECKING:
    from unicon_flower.runner import RunResult

REPO = Path(__file__).resolve().parent.parent
HEADING = "## Federated LoRA (#14)"
RULES_HEADING = "### Federated / centralised per LoRA rule"
#: ``--part`` of the tiny backbone's own tables (not a part of ``--foundation``)
TINY_PART = "tiny"
RULES = ("naive", "ffa", "fedsa", "svd")
GOAL_RATIO = 0.98  # federated / centralised, every multi-site task
#: Recorded in every run made since the fixes of e5364ea (a site's rounds) and 82ea3e7 (the
#: pooled node of the centralised bound): before them, every training item kept the
#: augmentation of its first draw for the whole run, in the federation and its bound alike.
AUGMENTATION = "fresh every pass"
AUGMENTATION_FIX = "82ea3e7"
GOAL_INT8 = 1 / 200  # int8 deltas vs the full model, on a >= 80M-parameter backbone
GOAL_LOSSLESS = 1.05  # lossless delta vs the raw skill bytes
NEAR_CHANCE = 0.6  # a centralised AUC / C-index below this: the task is barely learnt
#: The multi-site demo tasks measured, and their training sites.
TASKS: dict[str, tuple[str, ...]] = {
    "tumour_cls": ("br35h_a", "br35h_b", "br35h_c"),
    "gbsg2_surv": ("gbsg2_a", "gbsg2_b"),
}
#: Multi-site demo tasks not measured on the tiny backbone, and why.
LEFT_OUT = {
    "tissue_seg": "measured on the pretrained foundation, its backbone in the demo",
    "ct_seg": "its backbone in the demo is the pretrained 3D CT foundation",
}
#: Server optimisers and FedProx, each on every task with the naive rule (today's default; its
#: row of the rules table is the plain-FedAvg reference): label -> ``strategy.lora`` settings.
#: Flower's default step sizes and FedProx's mu = 0.01, fixed before any run (not tuned).
VARIANT_RULE = "naive"
VARIANTS: dict[str, tuple[tuple[str, str | float], ...]] = {
    "FedAvgM (server lr 1, momentum 0.9)": (("server_opt", "fedavgm"),),
    "FedAdam (eta 0.1, tau 1e-3)": (("server_opt", "fedadam"),),
    "FedYogi (eta 0.1, tau 1e-3)": (("server_opt", "fedyogi"),),
    "FedProx at the sites (mu 0.01)": (("prox_mu", 0.01),),
}
#: The rules again on the pretrained foundation (``backbone=demo``: the CT foundation's
#: I3ResNet-152, 3D for CT, collapsed to 2D for MRI), on the image tasks of the demo.
FOUNDATION_BASE = ("experiment=continual", "backbone=demo")
FOUNDATION_TASKS: dict[str, tuple[str, ...]] = {
    "tissue_seg": ("brain_axial", "brain_coronal"),
    "tumour_cls": ("br35h_a", "br35h_b", "br35h_c"),
}
#: Evaluation-only sites joined to a foundation task's runs: whole web sources no training
#: site holds (``role: evaluation``, every row a test row, never trains), the held-out set the
#: demo quotes for Br35H. Reported beside the training sites' test splits, never mixed in.
FOUNDATION_EXTERNAL: dict[str, tuple[str, ...]] = {"tumour_cls": ("br35h_ext",)}
#: Mixed ranks on the foundation's convolutional LoRA factors (its last site at half rank).
FOUNDATION_MIXED_TASK = "tissue_seg"
FOUNDATION_LEFT_OUT = {
    "ct_seg": "SYNTHETIC CT phantoms on the 3D CT foundation: one round at this budget (24 "
              "steps of 8 volumes of 32³) took 228 s for the centralised bound, so it has its "
              "own table below, at a smaller budget",
}
#: The kept-moments runs with one local step a round (60 x 1 on the full budget: the same
#: examples per site, 12x the rounds, see :func:`same_examples`), evaluated every 20th round
#: and without the val pass after training (a round is then one step per site); naive rule.
FOUNDATION_ONE_STEPS = 1
FOUNDATION_ONE_EVALUATE_EVERY = 20
FOUNDATION_ONE_BASE = ("federation.val_split=null",
                       f"federation.evaluate_every={FOUNDATION_ONE_EVALUATE_EVERY}")
FOUNDATION_ONE_RULES = ("naive",)
#: ct_seg on the 3D CT foundation at its own budget: 4 local steps of 2 volumes (a 3D step of
#: 8 volumes takes about 10 s on this CPU), the rules' rounds and lr.
FOUNDATION_CT_TASKS: dict[str, tuple[str, ...]] = {"ct_seg": ("ct_a", "ct_b")}
FOUNDATION_CT_BUDGET = {"local_steps": 4, "batch_size": 2}
#: The same at 3x its rounds (more examples for both sides, not the same examples cut finer):
#: whether the 3D task's gap is one of a short budget. Naive rule and the bound only.
FOUNDATION_CT_LONG_ROUNDS_X = 3
FOUNDATION_CT_LONG_RULES = ("naive",)
#: tumour_cls on the foundation at half the rules table's lr, moments restarted as there: the
#: lr the backbones table trained LoRA on this foundation with (AUC 0.957 on unseen sources);
#: the rules table's 2e-3 is the continual suite's default, set on the tiny transformer. Set
#: before the runs; naive rule and the bound only.
FOUNDATION_LR = 1e-3
#: The rules of the parts at that lr that lengthen it or leave a site out (clslong, clsx3,
#: clsdrop): the naive rule and the bound.
FOUNDATION_LR_RULES = ("naive",)
#: The lr table's rules: FedSA (B kept per site, each site evaluated with its own) was added
#: after the 3x runs put the gap at one site (br35h_b), which one global skill does not serve.
FOUNDATION_LR_PART_RULES = ("naive", "fedsa")
#: The same at 2x its rounds (more examples for both sides): whether the federation, whose
#: global skill stays at chance balanced accuracy through 5 rounds, starts to learn later.
FOUNDATION_CLS_LONG_ROUNDS_X = 2
#: And at 3x (the 2x federation was still rising in its last round on every seed): whether
#: the gap keeps closing with the budget. Naive rule and the bound only.
FOUNDATION_CLS_LONGER_ROUNDS_X = 3
#: The lr table's runs (naive rule and the bound) without one site on both sides, added after
#: FedSA's own B scored below chance at br35h_b, whose source trait reverses between its train
#: and test splits: whether that site is what keeps the federation from its bound (task, site).
FOUNDATION_CLS_DROP = ("tumour_cls", "br35h_b")
#: FedOpt's split (one plain SGD step at each site, one Adam step at the server on their mean:
#: Adam on a batch that mixes every site's examples) at the lr table's lr, on the 60 x 1 cut
#: with the bound's moments kept, after the site-alone runs read the gap as each site's
#: steps fitting its own few sources. Its settings are the 60 x 1 table's rule (eta = lr x
#: sites), set there before any run; only the lr is the lr table's. Then at eta = lr, after
#: those runs (:func:`fedopt_lr_variant`). No rule of its own: the FedOpt rows stand in the
#: main table.
FOUNDATION_FEDOPT_RULES: tuple[str, ...] = ()
#: The foundation's tasks rerun with every site (and the pooled node) keeping its optimiser's
#: moments between rounds (``train.keep_optimizer_state``), against a restart every round.
FOUNDATION_KEPT = ("train.keep_optimizer_state=true",)
FOUNDATION_KEPT_TASKS = ("tumour_cls",)
#: Against client drift and label skew, on top of the kept moments (the naive rule):
#: label -> options.
FOUNDATION_KEPT_VARIANTS: dict[str, tuple[tuple[str, str | float], ...]] = {
    "SCAFFOLD (server c per task, c_i kept at each site)": (("scaffold", "true"),),
    "logit adjustment (each site's own train prior)": (("logit_adjust", "true"),),
}
#: The kept-moments table's examples cut into more, shorter rounds (15 x 4 local steps instead
#: of 5 x 12 on the full budget: the same examples per site, 3x the rounds), naive rule,
#: SCAFFOLD and FedAvgM (the server-optimiser table's settings, fixed there before any run).
FOUNDATION_SHORT_STEPS = 4
FOUNDATION_SHORT_RULES = ("naive",)
FEDAVGM = "FedAvgM (server lr 1, momentum 0.9)"
#: Momentum 0.5 (the step grows towards 2x the mean delta, not 10x): chosen after every seed
#: of momentum 0.9 diverged on 15 x 4, the only other value tried.
FEDAVGM_HALF_MOMENTUM = 0.5
FEDAVGM_HALF = f"FedAvgM (server lr 1, momentum {FEDAVGM_HALF_MOMENTUM:g})"
#: FedExP's adaptive server step (``server_opt=fedexp``, its eps at the default 1e-3, set
#: before any run): extrapolates the mean delta by how much the sites' deltas disagree.
FEDEXP = "FedExP (adaptive server step, eps 1e-3)"
#: A bench option, not a ``strategy.lora`` one: the federated sites train on batches of this
#: size with as many more local steps as keep their examples per round (the centralised bound
#: is unchanged). An AdamW step moves about as far whatever its batch, so each site's round
#: covers about ``local_steps x sites`` steps' length, as the bound's does, without summing
#: the site deltas in one server step.
SITE_BATCH = "site_batch"
#: A bench option, not a ``strategy.lora`` one: the server's round norm bound
#: (``strategy.update_norm_factor``), "null" to switch it off for a run.
NORM_FACTOR = "update_norm_factor"
#: A bench option, not a ``strategy.lora`` one: the federated sites take one step a round on
#: batches of this size, in as many more rounds as keep their examples (the one-step cut's
#: 60 x 1 of 8 -> 160 x 1 of 3); the centralised bound is unchanged. Under FedOpt's split the
#: server then takes about as many steps on about as many examples as the bound does (160 of
#: 3 sites x 3 = 9, against 180 of 8).
ONE_STEP_BATCH = "one_step_batch"
#: The option of a local-only job naming the one site it trains.
LOCAL_SITE = "site"
#: The option of a centralised job whose pooled node trains on site-homogeneous batches,
#: this many consecutive batches of one site before the next
#: (:mod:`unicon_core.data.site_batches`; :mod:`simulations.batch_order_bench`).
SITE_BLOCK = "site_block"
#: The option of a centralised job whose pooled node takes one step a round on batches of this
#: size (``local_steps`` steps a round, not ``local_steps x sites``): on the one-step cut,
#: the steps of FedOpt's server, each on every site's batch taken together.
POOLED_BATCH = "pooled_batch"
SMALL_SITE_BATCH = 2
SMALL_BATCH = (f"FedAvg, site batches of {SMALL_SITE_BATCH} (more local steps, the same "
               "examples)")
FOUNDATION_SHORT_VARIANTS = {**dict(list(FOUNDATION_KEPT_VARIANTS.items())[:1]),
                             FEDAVGM: VARIANTS[FEDAVGM],
                             FEDAVGM_HALF: (*VARIANTS[FEDAVGM],
                                            ("server_momentum", FEDAVGM_HALF_MOMENTUM)),
                             FEDEXP: (("server_opt", "fedexp"),),
                             SMALL_BATCH: ((SITE_BATCH, SMALL_SITE_BATCH),)}


def summed_variant(n_sites: int) -> dict[str, tuple[tuple[str, str | float], ...]]:
    """FedAvg with server lr = the task's number of sites (FedAvgM without momentum): the
    sum of the site deltas, to first order the sites' steps run one after the other, as the
    centralised bound runs ``local_steps x sites`` steps a round (the mean moves about as far
    as one site's steps)."""
    return {f"FedAvg, server lr {n_sites} (= sites: the sum of the site deltas)": (
        ("server_opt", "fedavgm"), ("server_lr", n_sites), ("server_momentum", 0))}


def fedopt_variant(n_sites: int, lr: float) -> dict[str, tuple[tuple[str, str | float], ...]]:
    """FedOpt's split (``site_sgd_lr``): one plain SGD step of lr 1 at each site (its delta
    is minus its minibatch gradient), then one Adam step a round at the server on the mean:
    eta = lr x sites (the pooled node takes ``sites`` Adam steps of lr a round, each about lr
    long), tau 1e-8 and beta_2 0.999 (Adam's own epsilon and beta_2). Set before any run."""
    return _fedopt(round(lr * n_sites, 12), "lr x sites")


def fedopt_lr_variant(lr: float) -> dict[str, tuple[tuple[str, str | float], ...]]:
    """FedOpt's split with eta = lr: one server Adam step a round as long as one of the
    pooled node's (a third of its path a round on three sites), the shorter step tried after
    eta = lr x sites ended at chance on one seed of three and spiked the loss on all."""
    return _fedopt(lr, "lr")


def unbounded(variants: Mapping[str, tuple[tuple[str, str | float], ...]]
              ) -> dict[str, tuple[tuple[str, str | float], ...]]:
    """``variants`` without the server's round norm bound: under FedOpt's split an update is a
    raw gradient, and the bound (4 x the round's median norm) rejected about 4 % of the
    sites' honest gradients in the fedopt table's first runs; the pooled bound has no such
    filter."""
    return {f"{label}, without the round norm bound": (*opts, (NORM_FACTOR, "null"))
            for label, opts in variants.items()}


def _fedopt(eta: float, why: str) -> dict[str, tuple[tuple[str, str | float], ...]]:
    """FedOpt's split at server step ``eta`` (``why``: how it follows from the lr)."""
    return {f"FedOpt: SGD at the sites (lr 1), FedAdam at the server (eta {eta:g} = {why}, "
            "tau 1e-8, beta_2 0.999)": (
                ("site_sgd_lr", 1.0), ("server_opt", "fedadam"), ("server_eta", eta),
                ("tau", 1e-8), ("beta_2", 0.999))}


MIXED_TASK = "gbsg2_surv"
SCALE_TASK = "gbsg2_surv"
SCALE_SIZES = (10, 100, 1000)
SCALE_SAMPLED = 10  # sites drawn per round
SCALE_ROWS = 10  # rows per simulated site: 6 train, 2 val, 2 test
SCALE_SPLITS = ("train",) * 6 + ("val",) * 2 + ("test",) * 2
SCALE_ROUNDS = 2
QUICK_TASK = "synth_surv"  # --quick: one SYNTHETIC task of two tiny tabular sites
#: Codec variants of the bytes table: label -> TaskFederation options.
CODECS: dict[str, dict[str, Any]] = {
    "full skill (today)": {},  # TODAY
    "delta, lossless": {"delta": True},
    "delta, lossless, packed": {"delta": True, "pack": True},
    "delta, lossless, FFA (A stays home)": {"delta": True, "lora_rule": "ffa"},
    "delta, fp16": {"delta": True, "codec": "fp16"},
    "delta, int8 per tensor": {"delta": True, "codec": "int8"},
    "delta, int8 per row": {"delta": True, "codec": "int8", "per_row": True},
    "delta, int8 per tensor, packed": {"delta": True, "codec": "int8", "pack": True},
    "delta, top-k 10%": {"delta": True, "codec": "topk", "topk_fraction": 0.1},
    "delta int8 + downlink int8, per tensor": {"delta": True, "codec": "int8",
                                               "downlink_codec": "int8"},
    "delta int8 + downlink int8, per row": {"delta": True, "codec": "int8", "per_row": True,
                                            "downlink_codec": "int8"},
}
LOSSLESS = "delta, lossless"
LOSSLESS_PACKED = "delta, lossless, packed"
TODAY = "full skill (today)"
INT8 = ("delta, int8 per tensor", "delta, int8 per row", "delta int8 + downlink int8, per tensor",
        "delta int8 + downlink int8, per row")
#: Backbones of the bytes table: label -> (BackboneConfig keywords, task).
BYTE_BACKBONES: dict[str, tuple[dict[str, Any], str]] = {
    "tiny transformer (demo clinical)": ({}, "tumour_cls"),
    "base transformer (ViT-B size)": (
        {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "mlp_dim": 3072}, "tumour_cls"),
    "i3resnet (the demo's CT foundation, shapes only)": (
        {"name": "i3resnet", "options": {}}, "ct_seg"),
}
BIG_PARAMS = 80_000_000

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Budget:
    """Training budget of every run (same for every rule and the centralised bound)."""

    rounds: int = 5
    local_steps: int = 12
    batch_size: int = 8
    lr: float = 0.002


def site_batch_budget(budget: Budget, batch_size: int) -> Budget:
    """``budget`` with site batches of ``batch_size`` and the local steps that keep the
    examples per site and round (8 x 4 -> 2 x 16)."""
    examples = budget.local_steps * budget.batch_size
    if batch_size < 1 or examples % batch_size:
        raise ValueError(f"{examples} examples per site and round do not cut into batches of "
                         f"{batch_size}")
    return replace(budget, local_steps=examples // batch_size, batch_size=batch_size)


def one_step_budget(budget: Budget, batch_size: int) -> Budget:
    """``budget``'s examples per site in rounds of one step on batches of ``batch_size``
    (60 x 1 of 8 -> 160 x 1 of 3)."""
    examples = budget.rounds * budget.local_steps * budget.batch_size
    if batch_size < 1 or examples % batch_size:
        raise ValueError(f"{examples} examples per site do not cut into one-step rounds of "
                         f"{batch_size}")
    return replace(budget, rounds=examples // batch_size, local_steps=1, batch_size=batch_size)


def same_examples(budget: Budget, local_steps: int) -> Budget:
    """``budget``'s local steps per site cut into rounds of ``local_steps`` (at most the
    budget's own): as many examples per site, more rounds. 5 x 12 -> 15 x 4 or 60 x 1; the
    quick suite's 1 x 2 -> 1 x 2 or 2 x 1, so ``--quick`` stays quick."""
    steps = min(local_steps, budget.local_steps)
    total = budget.rounds * budget.local_steps
    if steps < 1 or total % steps:
        raise ValueError(f"{total} local steps per site do not cut into rounds of {steps}")
    return replace(budget, rounds=total // steps, local_steps=steps)


@dataclass(frozen=True)
class Job:
    """One measured run: ``kind`` fed (a rule), central (pooled) or mixed (SVD, lower rank);
    ``options``: further ``strategy.lora`` settings (a server optimiser, FedProx)."""

    kind: str
    task: str
    seed: int
    rule: str = "naive"
    site_ranks: tuple[tuple[str, int], ...] = ()
    options: tuple[tuple[str, str | float], ...] = ()

    @property
    def key(self) -> str:
        """File-safe name of the job."""
        ranks = "".join(f"_{s}-r{r}" for s, r in self.site_ranks)
        opts = "".join(f"_{k}-{v}" for k, v in self.options)
        return f"{self.kind}_{self.task}_{self.rule}{ranks}{opts}_seed{self.seed}"


@dataclass
class Setup:
    """What the runs read: site folders per task, the budget, the experiment's overrides."""

    sites: dict[str, list[Path]]
    budget: Budget
    base: tuple[str, ...] = ("experiment=continual",)
    synthetic: dict[str, bool] = field(default_factory=dict)
    mixed_task: str = MIXED_TASK
    external: dict[str, list[Path]] = field(default_factory=dict)


def site_setup(sites: Mapping[str, Sequence[Path]], budget: Budget,
               base: tuple[str, ...] = ("experiment=continual",), mixed_task: str = MIXED_TASK,
               external: Mapping[str, Sequence[Path]] | None = None) -> Setup:
    """The :class:`Setup` of prepared site folders: each must exist; a task is SYNTHETIC
    when its first site's ``site.json`` says so. ``external``: evaluation-only sites per task
    (each must say ``role: evaluation``), evaluated in every run of the task, never trained or
    pooled."""
    external = {t: [Path(d) for d in ds] for t, ds in (external or {}).items() if t in sites}
    missing = [str(d) for ds in [*sites.values(), *external.values()] for d in ds
               if not Path(d).is_dir()]
    if missing:
        raise SystemExit(f"site folder(s) {missing} missing: run `unicon prepare-demo` first")
    training = [str(d) for ds in external.values() for d in ds
                if json.loads((d / "site.json").read_text()).get("role") != "evaluation"]
    if training:
        raise SystemExit(f"external site(s) {training}: site.json does not say "
                         "'role: evaluation'; an external site must never train")
    synthetic = {t: bool(json.loads((Path(d[0]) / "site.json").read_text()).get("synthetic"))
                 for t, d in sites.items()}
    return Setup({t: [Path(d) for d in ds] for t, ds in sites.items()}, budget, base=base,
                 synthetic=synthetic, mixed_task=mixed_task, external=external)


# ------------------------------------------------------------------------------ runs
def lora_overrides(rule: str, site_ranks: Mapping[str, int] | None = None,
                   options: Sequence[tuple[str, str | float]] = ()) -> list[str]:
    """Hydra overrides of a run's LoRA options: lossless deltas, ``rule``, site ranks, and
    further ``strategy.lora`` settings (``options``)."""
    out = ["+strategy.lora.delta=true", f"+strategy.lora.lora_rule={rule}"]
    if site_ranks:
        ranks = ",".join(f"{s}:{r}" for s, r in site_ranks.items())
        out.append(f"+strategy.lora.site_ranks={{{ranks}}}")
    out += [f"+strategy.lora.{k}={v}" for k, v in options]
    return out


def _settings(setup: Setup, seed: int, budget: Budget | None = None, **kw: Any) -> Any:
    from unicon_flower.runner import RunSettings

    b = budget or setup.budget
    args: dict[str, Any] = {"base": setup.base, "seed": seed, "rounds": b.rounds,
                            "local_steps": b.local_steps, "batch_size": b.batch_size,
                            "lr": b.lr}
    args.update(kw)
    return RunSettings(**args)


def task_outcome(results: Mapping[str, Any], task: str) -> dict[str, Any]:
    """A task's final test metric in ``results.json``: value, per site, n."""
    entry = results["tasks"][task]
    return {"metric": entry["metric"], "value": _num(entry.get("value")),
            "per_site": {s: _num(v) for s, v in entry.get("per_site", {}).items()},
            "per_site_n": dict(entry.get("per_site_n", {})), "n": entry.get("n")}


def external_outcome(results: Mapping[str, Any], expected: Sequence[Path] = (),
                     label: str = "") -> dict[str, dict[str, float]]:
    """The evaluation-only sites' final test metric in ``results.json``: site -> value, n.
    Fails when a site of ``expected`` has none (the run excluded it, e.g. a tabular site
    without train rows to standardise by), rather than report the run without it."""
    out = {site: {"value": _num(e.get("value")), "n": int(e.get("n", 0))}
           for site, e in sorted(results.get("external_validation", {}).items())}
    lost = [d.name for d in expected if d.name not in out]
    if lost:
        excluded = results.get("excluded") or {}
        raise RuntimeError(f"{label}: external site(s) {lost} not evaluated" + (
            "; the run excluded " + "; ".join(f"{k}: {v}" for k, v in excluded.items())
            if excluded else ""))
    return out


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


def run_fed(setup: Setup, job: Job, run_dir: Path) -> dict[str, Any]:
    """One federated run of ``job`` (its rule, ranks, seed): final metric, bytes, SVD error."""
    from unicon_flower.runner import run_in_process

    sites = [*setup.sites[job.task], *setup.external.get(job.task, [])]
    budget = job_budget(setup, job)
    lora = {k: v for k, v in job.options if k not in BENCH_OPTIONS}
    norm = dict(job.options).get(NORM_FACTOR)  # the strategy's own norm bound
    extra = (*lora_overrides(job.rule, dict(job.site_ranks), list(lora.items())),
             *([f"strategy.{NORM_FACTOR}={norm}"] if norm is not None else []))
    result = run_in_process(sites, run_dir, _settings(setup, job.seed, budget, extra=extra))
    check_aggregated(result.rounds, job.task, job.key)
    comm = result.results["communication"]
    trunc = [r["tasks"][job.task]["svd_truncation_error"] for r in result.rounds
             if "svd_truncation_error" in r.get("tasks", {}).get(job.task, {})]
    return {**task_outcome(result.results, job.task), "wall_s": result.wall_s,
            "rejected_updates": rejected_updates(result.rounds, job.task),
            "bytes_down": float(comm["bytes_down_per_site_round"]),
            "bytes_up": float(comm["bytes_up_per_site_round"]),
            "svd_truncation_error": float(np.mean(trunc)) if trunc else None,
            "external": external_outcome(result.results, setup.external.get(job.task, []),
                                         job.key)}


#: A federated job's options that the bench reads itself (not ``strategy.lora`` settings).
BENCH_OPTIONS = (SITE_BATCH, ONE_STEP_BATCH, NORM_FACTOR)


def job_budget(setup: Setup, job: Job) -> Budget:
    """The budget a federated ``job`` trains under: ``setup``'s, or its site batches'
    (:data:`SITE_BATCH`, :data:`ONE_STEP_BATCH`: one of them at most)."""
    opts = dict(job.options)
    batch, one = opts.get(SITE_BATCH), opts.get(ONE_STEP_BATCH)
    if batch is not None and one is not None:
        raise ValueError(f"{job.key}: {SITE_BATCH} and {ONE_STEP_BATCH} are not combined")
    if batch is not None:
        return site_batch_budget(setup.budget, int(batch))
    if one is not None:
        return one_step_budget(setup.budget, int(one))
    return setup.budget


def rejected_updates(rounds: Sequence[Mapping[str, Any]], task: str) -> list[int]:
    """[rejected, trained]: of ``task``'s train replies over the run's rounds, how many the
    server rejected (its norm bounds or any other check) rather than aggregated."""
    replies = [site for r in rounds for site in r.get("sites", {}).values()
               if site.get("task") == task and "train" in site]
    return [sum(site.get("status") == "rejected" for site in replies), len(replies)]


def _with_rejections(result: dict[str, Any], job: Job, run_dir: Path, n_rounds: int
                     ) -> dict[str, Any]:
    """A cached federated run made before runs recorded ``rejected_updates``: counted from
    the run's own ``rounds.jsonl`` where its folder still holds exactly rounds 1 to
    ``n_rounds`` in order (else left unknown: a folder another, unfinished run of the same
    job wrote into says nothing reliable of the cached one)."""
    path = run_dir / "rounds.jsonl"
    if job.kind != "fed" or "rejected_updates" in result or not path.is_file():
        return result
    rounds = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    if [r.get("round") for r in rounds] == list(range(1, n_rounds + 1)):
        result["rejected_updates"] = rejected_updates(rounds, job.task)
    return result


def check_aggregated(rounds: Sequence[Mapping[str, Any]], task: str, label: str) -> None:
    """Fail where the server threw a round's replies away (``aggregation_error`` in its
    record): the run would otherwise "succeed" with the skill it started from."""
    errors = [f"round {r.get('round', i)}: {r['tasks'][task]['aggregation_error']}"
              for i, r in enumerate(rounds, 1)
              if "aggregation_error" in r.get("tasks", {}).get(task, {})]
    if errors:
        raise RuntimeError(f"{label}: the server could not aggregate task {task}'s replies "
                           f"({'; '.join(errors)}); its skill did not move")


def run_central(setup: Setup, job: Job, run_dir: Path) -> dict[str, Any]:
    """The centralised bound: pooled train splits in one node (``local_steps x sites`` steps a
    round), then its skill evaluated on every site's test split (one round at lr 1e-12)."""
    sites = setup.sites[job.task]
    block, batch = dict(job.options).get(SITE_BLOCK), dict(job.options).get(POOLED_BATCH)
    if block is not None and batch is not None:
        raise ValueError(f"{job.key}: {SITE_BLOCK} and {POOLED_BATCH} are not combined")
    kw = {} if batch is None else {"batch_size": int(batch)}
    pooled = pooled_run(setup, sites, job.seed, run_dir / "pooled",
                        len(sites) if batch is None else 1,
                        block=None if block is None else int(block), **kw)
    return _evaluated(setup, job, pooled, run_dir)


def run_local(setup: Setup, job: Job, run_dir: Path) -> dict[str, Any]:
    """Local-only: one site (``job.options``' ``site``) trains alone on its own train split
    at the federation's per-site budget (``local_steps`` a round, no other site's data),
    then its skill is evaluated as the bound's: on every site's test split and the
    evaluation-only sites."""
    name = dict(job.options).get(LOCAL_SITE)
    alone = [d for d in setup.sites[job.task] if d.name == name]
    if not alone:
        raise ValueError(f"{job.key}: no site {name!r} in task {job.task!r}")
    return _evaluated(setup, job, pooled_run(setup, alone, job.seed, run_dir / "local", 1),
                      run_dir)


def _evaluated(setup: Setup, job: Job, trained: RunResult, run_dir: Path) -> dict[str, Any]:
    """The final skill of one node's run (``trained``) evaluated on every site's test split
    of ``job.task`` and its evaluation-only sites (one round at lr 1e-12); the largest change
    that round made to any skill value, to show it evaluated rather than trained.
    ``pooled_value`` is the trained run's own test metric: the pooled test split for the
    bound, the lone site's own test split for a local run (no table reads it for those)."""
    from unicon_flower.runner import run_in_process

    check_aggregated(trained.rounds, job.task, job.key)
    state = trained.states[job.task]
    check = run_in_process([*setup.sites[job.task], *setup.external.get(job.task, [])],
                           run_dir / "evaluate",
                           _settings(setup, job.seed, rounds=1, local_steps=1, lr=1e-12),
                           initial={job.task: state})
    after = check.states[job.task]
    change = max(float(np.max(np.abs(after[k].astype(np.float64) - state[k])))
                 for k in state if state[k].size)
    return {**task_outcome(check.results, job.task), "wall_s": trained.wall_s + check.wall_s,
            "pooled_value": task_outcome(trained.results, job.task)["value"],
            "max_change": change,
            "external": external_outcome(check.results, setup.external.get(job.task, []),
                                         job.key)}


def pooled_run(setup: Setup, sites: Sequence[Path], seed: int, run_dir: Path,
               steps_per_site: int, block: int | None = None, **kw: Any) -> RunResult:
    """The train splits of ``sites`` pooled in one node (the first site's folder, its data
    replaced by the pool), ``local_steps x steps_per_site`` steps a round; batches shuffled
    across the pool, or with ``block`` each from one site, ``block`` batches a site in turn
    (``kw``: further :class:`RunSettings` fields)."""
    from client.site_runner import SiteHooks
    from unicon_core.continual.sites import pooled_site
    from unicon_core.data.site import open_site_cached
    from unicon_core.data.site_batches import site_blocks
    from unicon_flower.runner import run_in_process

    members = [open_site_cached(p, seed=seed) for p in sites]
    hooks = SiteHooks(site_view=lambda _site: pooled_site(members), batches=None
                      if block is None else lambda data, size, s: site_blocks(data, size, block, s))
    return run_in_process([sites[0]], run_dir, _settings(
        setup, seed, local_steps=setup.budget.local_steps * steps_per_site, **kw), hooks=hooks)


#: The split a part's rows are chosen on: each training site's own validation split, never
#: the test split the chosen row is reported on.
CHOICE_SPLIT = "val"
#: How far a checkpoint's test score may be from its cached run's: an AUC counts pairs, and a
#: run that ended at chance scores many images alike, so a few near-tied pairs can flip
#: between two evaluations (seen: 0.0026 on one such run; equal to 1e-16 on the others).
#: Another run's skill is caught by the round check, or by a larger difference.
TEST_AGAIN_TOL = 0.01


def val_scores(setup: Setup, jobs: Mapping[str, Mapping[str, Any]], wanted: Sequence[Job],
               work: Path) -> dict[str, dict[str, Any]]:
    """Each ``wanted`` federated run's final global skill scored on its task's training sites'
    validation splits (:func:`val_score`), cached in ``work/val/<key>.json``; job key -> score.
    ``jobs``: the runs' cached results (the test value each checkpoint must give again). A
    cached score whose test value is not its run's (the job was rerun since) is made again."""
    cache = work / CHOICE_SPLIT
    cache.mkdir(parents=True, exist_ok=True)
    out: dict[str, dict[str, Any]] = {}
    for job in wanted:
        path, test_value = cache / f"{job.key}.json", jobs[job.key]["value"]
        made_with = setup_key(setup, job.task)
        score = json.loads(path.read_text()) if path.is_file() else {}
        if not abs(score.get("test_again", math.inf) - test_value) <= TEST_AGAIN_TOL:
            score = {**val_score(setup, job, work / "runs" / job.key, test_value,
                                 cache / "runs"), "setup": made_with}
            path.write_text(json.dumps(score, indent=1))
        out[job.key] = same_setup(path, score, made_with)
    return out


def val_score(setup: Setup, job: Job, run_dir: Path, test_value: float, scratch: Path
              ) -> dict[str, Any]:
    """One federated run's final global skill (``run_dir``'s checkpoint) on its task's training
    sites' validation splits (one round at lr 1e-12, as the bound is evaluated, in a folder
    under ``scratch`` that is removed afterwards: the returned scores are all it keeps).
    First the checkpoint must be of the run's last round and give the run's cached
    ``test_value`` again on the test splits (to :data:`TEST_AGAIN_TOL`): a folder that a
    later, unfinished run of the same job wrote into holds that run's skill, not the cached
    one's."""
    from unicon_core.federation.aggregation import slice_task
    from unicon_core.federation.checkpoint import load_checkpoint
    from unicon_flower.runner import run_in_process

    ckpt = load_checkpoint(run_dir)
    last = job_budget(setup, job).rounds
    if ckpt.round != last:
        raise RuntimeError(f"{run_dir}: its checkpoint is of round {ckpt.round}, not the run's "
                           f"last ({last}); another run of {job.key} wrote into "
                           "the folder: delete the job's cached result and folder and rerun it")
    initial = {job.task: slice_task(ckpt.arrays, job.task)}

    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch, prefix=f"{job.key}_") as tmp:

        def scored(split: str) -> dict[str, Any]:
            run = run_in_process(setup.sites[job.task], Path(tmp) / split,
                                 _settings(setup, job.seed, rounds=1, local_steps=1, lr=1e-12,
                                           eval_split=split), initial=initial)
            return task_outcome(run.results, job.task)

        again = scored("test")["value"]
        if not abs(again - test_value) <= TEST_AGAIN_TOL:
            raise RuntimeError(f"{run_dir}: its checkpoint scores {again!r} on the test "
                               f"splits, not the cached run's {test_value!r} (to "
                               f"{TEST_AGAIN_TOL}): it is not that run's final skill; delete "
                               "the job's cached result and folder and rerun it")
        val = scored(CHOICE_SPLIT)
    return {"value": val["value"], "n": val["n"], "per_site": val["per_site"],
            "per_site_n": val["per_site_n"], "test_again": again}


def chosen_on_val(jobs: Mapping[str, Mapping[str, Any]],
                  scores: Mapping[str, Mapping[str, Any]], task: str, seeds: Sequence[int],
                  rows: Mapping[str, tuple[tuple[str, str | float], ...]]
                  ) -> list[dict[str, Any]]:
    """Per seed, the row of ``rows`` (label -> naive-rule options) whose run scored best on
    the validation splits (the first such row on a tie; a run without a finite score is never
    chosen), with every row's score and the chosen run's test and external values."""
    out = []
    for seed in seeds:
        keys = {label: Job("fed", task, seed, VARIANT_RULE, options=opts).key
                for label, opts in rows.items()}
        val = {label: _num(scores[k].get("value")) for label, k in keys.items()}
        finite = [label for label in keys if math.isfinite(val[label])]
        if not finite:
            raise RuntimeError(f"{task} seed {seed}: no row scored on {CHOICE_SPLIT}: {val}")
        best = max(finite, key=lambda label: val[label])
        run = jobs[keys[best]]
        out.append({"seed": seed, "val": val, "val_n": scores[keys[best]].get("n"),
                    "chosen": best, "value": run["value"],
                    "external": run.get("external", {})})
    return out


def with_val_choice(part: dict[str, Any], setup: Setup, work: Path, seeds: Sequence[int]
                    ) -> dict[str, Any]:
    """``part`` (a part that ran no rule, only variants of the naive rule) with, per task,
    the row chosen per seed on the validation splits (``chosen``) and the largest difference
    between a checkpoint's test score and its cached run's (``test_again_max``)."""
    rows = _stored_variants(part)
    wanted = [Job("fed", t, s, VARIANT_RULE, options=o) for t in part["tasks"]
              for o in rows.values() for s in seeds]
    scores = val_scores(setup, part["jobs"], wanted, work)
    return {**part, "chosen": {t: chosen_on_val(part["jobs"], scores, t, seeds, rows)
                               for t in part["tasks"]},
            "test_again_max": max(abs(scores[j.key]["test_again"] - part["jobs"][j.key]["value"])
                                  for j in wanted)}


RUNNERS: dict[str, Callable[[Setup, Job, Path], dict[str, Any]]] = {
    "fed": run_fed, "mixed": run_fed, "central": run_central, "local": run_local}


@contextlib.contextmanager
def _job_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock while a job runs, so a second process (say a render started
    before every job was cached) cannot train the same job into the same folder at once,
    which mixes two runs' round records; the OS drops the lock when its process ends."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(run_dir.parent / f"{run_dir.name}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"{run_dir}: another process is running this job in the same "
                             "work folder; wait for it to finish (its result is cached) or "
                             "use another --work-dir") from None
        yield


def _run_job(setup: Setup, job: Job, work: Path) -> tuple[Job, dict[str, Any]]:
    import torch

    torch.set_num_threads(1)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    cpu = time.process_time()
    run_dir = work / "runs" / job.key
    with _job_lock(run_dir):
        out = RUNNERS[job.kind](setup, job, run_dir)
    out["cpu_s"] = time.process_time() - cpu
    out["made"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    out["augmentation"] = AUGMENTATION
    out["cpu"] = cpu_name()
    out["torch_threads"] = torch.get_num_threads()  # other thread counts give other floats
    return job, out


def setup_key(setup: Setup, task: str) -> dict[str, Any]:
    """What a cached run of ``task`` depends on beyond its job key: the overrides, the budget
    and the task's evaluation-only sites (named only where it has any)."""
    key: dict[str, Any] = {"base": list(setup.base), "budget": asdict(setup.budget)}
    if setup.external.get(task):
        key["external"] = {task: [d.name for d in setup.external[task]]}
    return key


def cached_job(path: Path, made_with: Mapping[str, Any]) -> dict[str, Any]:
    """A cached run's result; fails when it was made under another setup (or before runs
    recorded theirs), rather than report it as this setup's."""
    return same_setup(path, json.loads(path.read_text()), made_with)


def same_setup(path: Path, result: dict[str, Any], made_with: Mapping[str, Any]
               ) -> dict[str, Any]:
    """``result`` (read from ``path``) if it was made under the setup ``made_with``; else
    a clear error naming the file."""
    if result.get("setup") != made_with:
        raise SystemExit(f"{path}: made with {result.get('setup', 'an unrecorded setup')}, "
                         f"not this run's {dict(made_with)}: use another --work-dir or delete "
                         "the file")
    return result


def plan_jobs(setup: Setup, seeds: Sequence[int],
              variants: Mapping[str, tuple[tuple[str, str | float], ...]] = VARIANTS,
              rules: Sequence[str] = RULES, local: bool = False) -> list[Job]:
    """Every run of sections 1 and 3: ``rules`` and centralised per task, the ``variants`` of
    the naive rule (server optimisers and FedProx), mixed ranks; with ``local``, each site of
    each task alone (local-only)."""
    jobs = [Job("central", t, s) for t in setup.sites for s in seeds]
    jobs += [Job("fed", t, s, rule) for t in setup.sites for rule in rules for s in seeds]
    jobs += [Job("fed", t, s, VARIANT_RULE, options=opts) for t in setup.sites
             for opts in variants.values() for s in seeds]
    jobs += [Job("mixed", setup.mixed_task, s, "svd", mixed_ranks(setup)) for s in seeds
             if setup.mixed_task in setup.sites]
    jobs += [local_job(t, d.name, s) for t, ds in setup.sites.items() for d in ds
             for s in seeds] if local else []
    return jobs


def local_job(task: str, site: str, seed: int) -> Job:
    """The local-only run of ``site`` alone."""
    return Job("local", task, seed, options=((LOCAL_SITE, site),))


def mixed_ranks(setup: Setup) -> tuple[tuple[str, int], ...]:
    """The mixed-rank case: the last site of the mixed task at half the task's rank."""
    rank = task_rank(setup.sites[setup.mixed_task][0])
    return ((setup.sites[setup.mixed_task][-1].name, max(1, rank // 2)),)


def task_rank(site_dir: Path) -> int:
    """The LoRA rank a site folder's task declares."""
    return int(json.loads((site_dir / "site.json").read_text())["task"]["lora"]["rank"])


def run_jobs(setup: Setup, jobs: Sequence[Job], work: Path, n_jobs: int
             ) -> dict[str, dict[str, Any]]:
    """Run every job not cached in ``work/jobs`` (``n_jobs`` at a time); job key -> result."""
    cache = work / "jobs"
    cache.mkdir(parents=True, exist_ok=True)
    out = {j.key: _with_rejections(cached_job(cache / f"{j.key}.json",
                                              setup_key(setup, j.task)),
                                   j, work / "runs" / j.key, job_budget(setup, j).rounds)
           for j in jobs if (cache / f"{j.key}.json").is_file()}
    todo = [j for j in jobs if j.key not in out]

    def keep(job: Job, res: dict[str, Any]) -> None:
        res["setup"] = setup_key(setup, job.task)
        out[job.key] = res
        (cache / f"{job.key}.json").write_text(json.dumps(res, indent=1))
        print(f"{job.key}: {res.get('value', math.nan):.3f} ({res['wall_s']:.0f} s)", flush=True)

    if n_jobs <= 1:
        for job in todo:
            keep(*_run_job(setup, job, work))
        return out
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=n_jobs, mp_context=ctx) as pool:
        pending: set[Future[Any]] = {pool.submit(_run_job, setup, j, work) for j in todo}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                keep(*fut.result())
    return out


def run_tiny(setup: Setup, seeds: Sequence[int], work: Path, n_jobs: int) -> dict[str, Any]:
    """The tiny backbone's runs (the rules, the bound, the variants, mixed ranks) and what the
    section reads of them beside the jobs: the mixed ranks, the bound's largest change."""
    jobs = run_jobs(setup, plan_jobs(setup, seeds), work, n_jobs)
    return {"jobs": jobs, "mixed_ranks": [list(r) for r in mixed_ranks(setup)],
            "max_change": largest_change(jobs)}


def largest_change(jobs: Mapping[str, Mapping[str, Any]]) -> float | None:
    """The largest change of any skill value in the evaluation rounds (lr 1e-12) of the
    centralised and site-alone runs among ``jobs``; None where there are none."""
    changes = [r["max_change"] for k, r in jobs.items() if k.startswith(("central", "local"))]
    return max(changes) if changes else None


def run_foundation(sites: Mapping[str, Sequence[Path]], budget: Budget, seeds: Sequence[int],
                   work: Path, n_jobs: int, mixed_task: str = FOUNDATION_MIXED_TASK,
                   base: tuple[str, ...] = FOUNDATION_BASE,
                   variants: Mapping[str, tuple[tuple[str, str | float], ...]] | None = None,
                   rules: Sequence[str] = RULES,
                   external: Mapping[str, Sequence[Path]] | None = None,
                   say_left_out: bool = False, local: bool = False) -> dict[str, Any]:
    """The rules, the centralised bound, ``variants`` of the naive rule and mixed ranks (on
    ``mixed_task``, "" for none) on the pretrained foundation (``base``: ``FOUNDATION_BASE``,
    or it plus ``FOUNDATION_KEPT``); ``left_out``: the foundation's tasks not among ``sites``,
    said only where ``say_left_out`` (the per-rule table, whose sites are the full set; a part
    on fewer tasks leaves them out by design); with ``local``, each site alone as well."""
    setup = site_setup(sites, budget, base=base,
                       mixed_task=mixed_task if mixed_task in sites else "", external=external)
    return run_setup(setup, seeds, work, n_jobs, variants, rules, say_left_out, local)


def run_setup(setup: Setup, seeds: Sequence[int], work: Path, n_jobs: int,
              variants: Mapping[str, tuple[tuple[str, str | float], ...]] | None = None,
              rules: Sequence[str] = RULES, say_left_out: bool = False, local: bool = False
              ) -> dict[str, Any]:
    """:func:`run_foundation` on a ready :class:`Setup` (a part that needs its setup again
    afterwards builds it once)."""
    sites = setup.sites
    variants = dict(variants or {})
    jobs = run_jobs(setup, plan_jobs(setup, seeds, variants, rules, local), work, n_jobs)
    return {"base": list(setup.base), "tasks": list(sites), "synthetic": setup.synthetic,
            "sites": {t: [d.name for d in ds] for t, ds in setup.sites.items()},
            "jobs": jobs, "max_change": largest_change(jobs),
            "mixed_task": setup.mixed_task,
            "external": {t: [d.name for d in ds] for t, ds in setup.external.items()},
            "variants": {label: [list(o) for o in opts] for label, opts in variants.items()},
            "rules": list(rules), "budget": asdict(setup.budget),
            "mixed_ranks": [list(r) for r in mixed_ranks(setup)] if setup.mixed_task else [],
            "left_out": {t: why for t, why in FOUNDATION_LEFT_OUT.items() if t not in sites}
            if say_left_out else {}}


#: The foundation's parts that ``--part`` reruns alone (its name -> the key of its results);
#: ``rules`` is the per-rule table on the foundation with its mixed-ranks table.
PARTS = {"rules": "foundation", "kept": "foundation_kept", "short": "foundation_short",
         "one": "foundation_one", "ct": "foundation_ct", "ctlong": "foundation_ctlong",
         "lr": "foundation_lr", "clslong": "foundation_clslong",
         "clsx3": "foundation_clsx3", "clsdrop": "foundation_clsdrop",
         "fedopt": "foundation_fedopt", "ctfedopt": "foundation_ctfedopt",
         "ctfedoptlong": "foundation_ctfedoptlong"}


def foundation_runs(quick_sites: Mapping[str, Sequence[Path]] | None, data_root: Path,
                    budget: Budget, seeds: Sequence[int], work: Path, n_jobs: int
                    ) -> dict[str, Callable[[], dict[str, Any]]]:
    """Each part of ``--foundation`` (results key -> a call that runs it, or reads its cached
    runs): on ``quick_sites`` where given (``--quick``), else on the demo's sites in
    ``data_root``."""
    quick = quick_sites is not None

    def demo(tasks: Mapping[str, Sequence[str]]) -> dict[str, list[Path]]:
        if quick_sites is not None:
            return {t: list(d) for t, d in quick_sites.items()}
        return {t: [data_root / n for n in names] for t, names in tasks.items()}

    fm_sites, ct_sites = demo(FOUNDATION_TASKS), demo(FOUNDATION_CT_TASKS)
    ext = {} if quick else {t: [data_root / n for n in names]
                            for t, names in FOUNDATION_EXTERNAL.items()}
    kept_sites = kept_tasks(fm_sites, quick)
    kept_base = FOUNDATION_BASE + FOUNDATION_KEPT
    drop_task, drop_site = ((QUICK_TASK, quick_sites[QUICK_TASK][-1].name)
                            if quick_sites is not None else FOUNDATION_CLS_DROP)

    def fedopt() -> dict[str, Any]:
        """FedOpt's split at the lr table's lr, its rows, then the row chosen per seed on
        the validation splits (the rows came one after another, each after seeing test
        results; the choice among them reads no test split)."""
        n_sites = _site_count(kept_sites)
        rows = {**fedopt_variant(n_sites, FOUNDATION_LR), **fedopt_lr_variant(FOUNDATION_LR)}
        setup = fedopt_setup(kept_sites, budget, ext)
        part = run_setup(setup, seeds, work / "foundation_fedopt", n_jobs,
                         rules=FOUNDATION_FEDOPT_RULES, variants={**rows, **unbounded(rows)})
        return with_val_choice(part, setup, work / "foundation_fedopt", seeds)

    return {
        "foundation": lambda: run_foundation(
            fm_sites, budget, seeds, work / "foundation", n_jobs,
            mixed_task=QUICK_TASK if quick else FOUNDATION_MIXED_TASK, external=ext,
            say_left_out=True),
        "foundation_kept": lambda: run_foundation(
            kept_sites, budget, seeds, work / "foundation_kept", n_jobs, mixed_task="",
            base=kept_base, variants=FOUNDATION_KEPT_VARIANTS, external=ext),
        "foundation_short": lambda: run_foundation(
            kept_sites, same_examples(budget, FOUNDATION_SHORT_STEPS), seeds,
            work / "foundation_short", n_jobs, mixed_task="", base=kept_base,
            variants=FOUNDATION_SHORT_VARIANTS, rules=FOUNDATION_SHORT_RULES, external=ext),
        "foundation_one": lambda: run_foundation(
            kept_sites, same_examples(budget, FOUNDATION_ONE_STEPS), seeds,
            work / "foundation_one", n_jobs, mixed_task="",
            base=kept_base + FOUNDATION_ONE_BASE, rules=FOUNDATION_ONE_RULES,
            variants=fedopt_variant(_site_count(kept_sites), budget.lr), external=ext),
        "foundation_ct": lambda: run_foundation(
            ct_sites, replace(budget, **FOUNDATION_CT_BUDGET), seeds, work / "foundation_ct",
            n_jobs, mixed_task="", variants=summed_variant(_site_count(ct_sites))),
        "foundation_ctlong": lambda: run_foundation(
            ct_sites, ct_long_budget(budget), seeds, work / "foundation_ctlong", n_jobs,
            mixed_task="", rules=FOUNDATION_CT_LONG_RULES),
        "foundation_lr": lambda: run_foundation(
            kept_sites, replace(budget, lr=FOUNDATION_LR), seeds, work / "foundation_lr",
            n_jobs, mixed_task="", rules=FOUNDATION_LR_PART_RULES, external=ext, local=True),
        "foundation_clslong": lambda: run_foundation(
            kept_sites, cls_long_budget(budget), seeds, work / "foundation_clslong", n_jobs,
            mixed_task="", rules=FOUNDATION_LR_RULES, external=ext),
        "foundation_clsx3": lambda: run_foundation(
            kept_sites, cls_long_budget(budget, FOUNDATION_CLS_LONGER_ROUNDS_X), seeds,
            work / "foundation_clsx3", n_jobs, mixed_task="", rules=FOUNDATION_LR_RULES,
            external=ext, local=True),
        "foundation_clsdrop": lambda: {**run_foundation(
            without_site(kept_sites, drop_task, drop_site), replace(budget, lr=FOUNDATION_LR),
            seeds, work / "foundation_clsdrop", n_jobs, mixed_task="",
            rules=FOUNDATION_LR_RULES, external=ext), "dropped": {drop_task: drop_site}},
        "foundation_fedopt": fedopt,
        # the same split on ct_seg (its own budget, 5 x 4 of 2, cut to 20 x 1), its own lr and
        # the same eta rule: set after FedOpt's first tumour_cls seed beat its bound, before
        # any ct_seg run of it; whether one mixed server step closes the 3D task's gap
        "foundation_ctfedopt": lambda: run_foundation(
            ct_sites, same_examples(replace(budget, **FOUNDATION_CT_BUDGET), FOUNDATION_ONE_STEPS),
            seeds, work / "foundation_ctfedopt", n_jobs, mixed_task="",
            base=kept_base + FOUNDATION_ONE_BASE, rules=FOUNDATION_FEDOPT_RULES,
            variants=fedopt_variant(_site_count(ct_sites), budget.lr)),
        # the same on the 3x-rounds table's examples (15 x 4 of 2 cut to 60 x 1), after the
        # 20 x 1 bound segmented nothing on one seed and FedOpt on two: whether the split
        # closes the 3D task's gap where both sides have the budget to learn
        "foundation_ctfedoptlong": lambda: run_setup(
            ct_fedopt_long_setup(ct_sites, budget), seeds, work / "foundation_ctfedoptlong",
            n_jobs, rules=FOUNDATION_FEDOPT_RULES,
            variants=fedopt_variant(_site_count(ct_sites), budget.lr)),
    }


def kept_tasks(sites: Mapping[str, Sequence[Path]], quick: bool) -> dict[str, list[Path]]:
    """The tasks of the kept-moments parts among ``sites`` (every quick task)."""
    return {t: list(d) for t, d in sites.items() if quick or t in FOUNDATION_KEPT_TASKS}


def fedopt_setup(sites: Mapping[str, Sequence[Path]], budget: Budget,
                 external: Mapping[str, Sequence[Path]]) -> Setup:
    """The setup of FedOpt's split on ``sites`` (``--part fedopt``): ``budget``'s examples at
    the lr table's lr cut into one-step rounds, moments kept, no validation split."""
    cut = same_examples(replace(budget, lr=FOUNDATION_LR), FOUNDATION_ONE_STEPS)
    return site_setup(sites, cut, base=FOUNDATION_BASE + FOUNDATION_KEPT + FOUNDATION_ONE_BASE,
                      mixed_task="", external=external)


def ct_fedopt_long_setup(sites: Mapping[str, Sequence[Path]], budget: Budget) -> Setup:
    """The setup of FedOpt's split on the 3D task at 3x the rounds' examples (``--part
    ctfedoptlong``): ``budget``'s 3D cut at 3x its rounds, cut into one-step rounds, moments
    kept, no validation split."""
    cut = same_examples(ct_long_budget(budget), FOUNDATION_ONE_STEPS)
    return site_setup(sites, cut, base=FOUNDATION_BASE + FOUNDATION_KEPT + FOUNDATION_ONE_BASE,
                      mixed_task="")


def without_site(sites: Mapping[str, Sequence[Path]], task: str, name: str
                 ) -> dict[str, list[Path]]:
    """``sites`` with site ``name`` left out of ``task``: neither side of a run trains on it
    or is tested on its test split. Fails where ``task`` has no such site, or no other."""
    if task not in sites or name not in [d.name for d in sites[task]]:
        raise ValueError(f"no site {name!r} in task {task!r} to leave out (sites: "
                         f"{ {t: [d.name for d in ds] for t, ds in sites.items()} })")
    kept = [d for d in sites[task] if d.name != name]
    if not kept:
        raise ValueError(f"leaving {name!r} out leaves task {task!r} no site")
    return {**{t: list(ds) for t, ds in sites.items()}, task: kept}


def cls_long_budget(budget: Budget, times: int = FOUNDATION_CLS_LONG_ROUNDS_X) -> Budget:
    """``budget`` at :data:`FOUNDATION_LR` and ``times`` its rounds."""
    return replace(budget, lr=FOUNDATION_LR, rounds=budget.rounds * times)


def ct_long_budget(budget: Budget) -> Budget:
    """The 3D task's budget (:data:`FOUNDATION_CT_BUDGET`) at
    :data:`FOUNDATION_CT_LONG_ROUNDS_X` times ``budget``'s rounds."""
    return replace(budget, **FOUNDATION_CT_BUDGET,
                   rounds=budget.rounds * FOUNDATION_CT_LONG_ROUNDS_X)


# ------------------------------------------------------------------------------ bytes
def codec_bytes(model: Any, task: str, options: Mapping[str, Any], seed: int = 0
                ) -> dict[str, int]:
    """Bytes one site receives and sends in one round with a task's codec ``options``.

    Steady state, with seeded noise (std 1e-3) standing for training: the global skill is the
    fresh one moved (no zero B factors left, which Flower's content-addressed serialization
    would send once), the site's trained skill the global one moved again. Down: the
    strategy's train and evaluate instructions (with a downlink codec the site holds last
    round's copy, so they carry the encoded change, not a first contact's whole skill); up: a
    training reply (the skill, or the encoded ``trained - sent`` delta, FFA leaving A out) and
    an evaluation reply. ``payload`` is the training reply's tensors alone, serialized.
    """
    from flwr.app import RecordDict

    from client.site_runner import answering, info_record, metric_record
    from server.strategies.per_task_fedavg import PerTaskFedAvg, SiteNode
    from unicon_core.federation.aggregation import prefix_task
    from unicon_core.federation.compression import encode_delta, to_wire
    from unicon_core.federation.config import TaskFederation
    from unicon_core.federation.lora_rules import a_keys
    from unicon_core.federation.protocol import RecordKey, Status
    from unicon_core.metrics import PRIMARY_METRIC
    from unicon_core.training.plans import plan_state
    from unicon_flower.accounting import content_bytes
    from unicon_flower.inprocess import act_as_server_app
    from unicon_flower.records import arrays_to_record

    act_as_server_app()
    opts = TaskFederation(**dict(options))
    rng = np.random.default_rng(seed)

    def moved(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: (v + rng.normal(0.0, 1e-3, v.shape)).astype(v.dtype) for k, v in state.items()}

    fresh = {k: v.detach().numpy() for k, v in plan_state(model, task, "skill").items()}
    sent = moved(fresh)  # a global skill after some rounds (B no longer zero)
    trained = moved(sent)
    strategy = PerTaskFedAvg([SiteNode(1, "site", task)], foundation_hash=model.foundation_hash,
                             lora={task: opts})
    if getattr(opts, "downlink_codec", "none") != "none":
        strategy.held["site"] = moved(sent)  # the copy the site kept from the last round
    arrays = arrays_to_record(prefix_task(task, sent))
    down = sum(content_bytes(m.content) for m in [
        *strategy.configure_train(1, arrays, _config(), None),  # type: ignore[arg-type]
        *strategy.configure_evaluate(1, arrays, _config(), None)])  # type: ignore[arg-type]
    if opts.delta:
        omit = a_keys(list(sent)) if opts.lora_rule == "ffa" else set()
        ref = {k: v for k, v in sent.items() if k not in omit}
        payload, _ = encode_delta(trained, ref, opts.codec_spec(), None)
        payload = to_wire(payload, ref, opts.codec_spec())
    else:
        payload = trained
    record = arrays_to_record(payload)
    site: Any = _Site(model.spec(task))
    metric = PRIMARY_METRIC[model.spec(task).kind]
    held_out = {metric: 0.5, "loss": 0.5}
    train_metrics = metric_record(held_out, 100, prefix="val_")
    train_metrics["train_loss"], train_metrics["steps"] = 0.5, 10
    reply = RecordDict({RecordKey.SKILL.value: record,
                        RecordKey.METRICS.value: train_metrics,
                        RecordKey.INFO.value: answering(info_record(site, model, Status.TRAINED),
                                                        1)})
    evaluated = RecordDict({
        RecordKey.METRICS.value: metric_record(held_out, 10),
        RecordKey.INFO.value: answering(info_record(site, model, Status.EVALUATED), 1)})
    return {"down": int(down), "up": int(content_bytes(reply) + content_bytes(evaluated)),
            "payload": int(content_bytes(RecordDict({RecordKey.SKILL.value: record}))),
            "raw_skill": int(sum(v.nbytes for v in sent.values()))}


@dataclass
class _Site:
    """The little of a site :func:`client.site_runner.info_record` reads."""

    task_spec: Any
    name: str = "site"
    synthetic: bool = False


def _config() -> Any:
    from flwr.app import ConfigRecord

    return ConfigRecord()


def available_codecs() -> dict[str, dict[str, Any]]:
    """The :data:`CODECS` whose options this tree's ``TaskFederation`` has."""
    from dataclasses import fields

    from unicon_core.federation.config import TaskFederation

    known = {f.name for f in fields(TaskFederation)}
    return {name: opts for name, opts in CODECS.items() if set(opts) <= known}


def bytes_rows(backbones: Mapping[str, tuple[dict[str, Any], str]]) -> list[dict[str, Any]]:
    """Per backbone: every codec's bytes per site and round, and the full model's."""
    from simulations.communication import round_bytes
    from unicon_core.config import BackboneConfig
    from unicon_core.hydra_config import task_file_spec
    from unicon_core.model import UniconModel

    rows = []
    for label, (cfg, task) in backbones.items():
        model = UniconModel(BackboneConfig(**cfg), seed=0)
        model.add_task(task_file_spec(task))
        full = round_bytes(model, task, "full")
        params = sum(t.numel() for t in model.backbone_state_dict().values())
        skill_params = sum(p.numel() for p in model.skill_parameters(task).values())
        codecs = {name: codec_bytes(model, task, opts) for name, opts in available_codecs().items()}
        rows.append({"backbone": label, "task": task, "backbone_params": int(params),
                     "skill_params": int(skill_params),
                     "full_round": int(full["bytes_down"] + full["bytes_up"]),
                     "codecs": codecs})
        del model
    return rows


# ------------------------------------------------------------------------------ scaling
def read_rows(site_dirs: Sequence[Path]) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """The manifest rows of ``site_dirs`` (one task) and the first one's site.json."""
    rows: list[dict[str, str]] = []
    for d in site_dirs:
        with (d / "manifest.csv").open(newline="") as fh:
            rows += list(csv.DictReader(fh))
    return rows, json.loads((site_dirs[0] / "site.json").read_text())


def make_scale_sites(root: Path, n: int, rows: Sequence[Mapping[str, str]],
                     site_json: Mapping[str, Any], seed: int = 0) -> list[Path]:
    """``n`` site folders of :data:`SCALE_ROWS` rows each, dealt from ``rows`` in a seeded
    order (cycling, so a row appears in several sites when ``n x SCALE_ROWS > len(rows)``);
    splits 6 train / 2 val / 2 test per site."""
    if not rows:
        raise ValueError("no rows to deal to the scaling sites")
    order = np.random.default_rng(seed).permutation(len(rows))
    fields = [k for k in rows[0] if k not in ("split",)]
    dirs = []
    for s in range(n):
        site = root / f"s{s:04d}"
        site.mkdir(parents=True)
        meta = dict(site_json)
        meta.update(site=site.name, description=(
            f"{SCALE_ROWS} rows of {meta.get('site', '?')}'s task dealt to simulated site "
            f"{s} of {n} (rows repeat across sites; a scaling benchmark, not a cohort)"))
        meta.pop("role", None)
        (site / "site.json").write_text(json.dumps(meta, indent=1))
        with (site / "manifest.csv").open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=[*fields, "split"])
            w.writeheader()
            for i, split in enumerate(SCALE_SPLITS):
                row = dict(rows[int(order[(s * SCALE_ROWS + i) % len(rows)])])
                row.update({k: f"{site.name}-{i}" for k in ("id", "patient_id") if k in row})
                w.writerow({**{k: row[k] for k in fields}, "split": split})
        dirs.append(site)
    return dirs


def scale_worker(sites_root: Path, run_dir: Path, setup_json: Path, out: Path) -> None:
    """Inside its own process: the scaling run over every site folder of ``sites_root``."""
    import resource

    import torch

    from unicon_flower.runner import run_in_process

    torch.set_num_threads(1)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    cfg = json.loads(setup_json.read_text())
    sites = sorted(p for p in sites_root.iterdir() if p.is_dir())
    n = len(sites)
    setup = Setup({}, Budget(**cfg["budget"]), tuple(cfg["base"]))
    sampled = int(cfg["sampled"])
    extra = (f"+strategy.lora.fraction={min(1.0, sampled / n)!r}",
             f"+strategy.lora.min_sites={min(sampled, n)}")
    start = time.perf_counter()
    result = run_in_process(sites, run_dir, _settings(
        setup, int(cfg["seed"]), rounds=SCALE_ROUNDS, evaluate=False, extra=extra))
    wall = time.perf_counter() - start
    kinds: dict[str, int] = {}
    to_unsampled = 0
    status = {r["round"]: {s: e.get("status") for s, e in r.get("sites", {}).items()}
              for r in result.rounds}
    names = {1000 + i: p.name for i, p in enumerate(sites)}
    for ex in result.grid.exchanges:
        kind = ex.instruction.metadata.message_type
        kinds[kind] = kinds.get(kind, 0) + 1
        cfgrec = ex.instruction.content.config_records.get("config")
        rnd = int(cfgrec.get("server-round", 0)) if cfgrec is not None else 0
        if status.get(rnd, {}).get(names.get(ex.node_id, "")) == "not-sampled":
            to_unsampled += 1
    trained = [sum(1 for st in r.values() if st == "trained") for r in status.values()]
    timing = result.results.get("timing", {})
    out.write_text(json.dumps({
        "sites": n, "wall_s": wall, "query_s": timing.get("query_s"),
        "round_s": timing["rounds_s"] / max(1, timing["rounds_run"]),
        "rounds": timing["rounds_run"], "trained_per_round": trained, "messages": kinds,
        "to_unsampled": to_unsampled,
        "self_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run_scale(n: int, rows: Sequence[Mapping[str, str]], site_json: Mapping[str, Any],
              setup: Setup, seed: int, work: Path, sampled: int = SCALE_SAMPLED
              ) -> dict[str, Any]:
    """The scaling run with ``n`` sites in a child process; its peak RSS (process tree)."""
    import psutil

    root = work / f"scale{n}"
    cached = root / "result.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    sites_root = root / "sites"
    if sites_root.exists():
        import shutil

        shutil.rmtree(sites_root)
    make_scale_sites(sites_root, n, rows, site_json, seed)
    setup_json = root / "setup.json"
    setup_json.write_text(json.dumps({"budget": asdict(setup.budget), "base": setup.base,
                                      "seed": seed, "sampled": sampled}))
    out = root / "worker.json"
    cmd = [sys.executable, "-m", "simulations.federated_lora_bench", "--scale-worker",
           str(sites_root), str(root / "run"), str(setup_json), str(out)]
    peak = 0
    with open(root / "worker.log", "w") as logf:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=logf, stderr=subprocess.STDOUT)
        ps = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                tree = [ps, *ps.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree))
            except psutil.Error:
                pass
            time.sleep(0.1)
    if proc.returncode != 0:
        raise RuntimeError(f"scaling run with {n} sites failed (exit {proc.returncode}); "
                           f"see {root / 'worker.log'}")
    res = json.loads(out.read_text())
    res["peak_rss_mib"] = peak / 2**20
    cached.write_text(json.dumps(res))
    return res


# ------------------------------------------------------------------------------ report
def _f(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _verdict(ok: bool) -> str:
    return "met" if ok else "**MISSED**"


def ratio_stats(fed: Sequence[float], central: Sequence[float]) -> tuple[list[float], float]:
    """Per-seed fed / central and the ratio of the means (NaN where undefined)."""
    per = [f / c if c and math.isfinite(f) and math.isfinite(c) else math.nan
           for f, c in zip(fed, central, strict=True)]
    mf, mc = mean_std(fed)[0], mean_std(central)[0]
    return per, (mf / mc if mc and math.isfinite(mf) and math.isfinite(mc) else math.nan)


def _diverged(values: Sequence[float], ran: Sequence[bool] | None) -> list[bool]:
    """Per seed: its run exists (``ran``) but ended without a finite metric."""
    if ran is None:
        return [False] * len(values)
    return [r and not math.isfinite(v) for v, r in zip(values, ran, strict=True)]


def _seed_cells(shown: Sequence[float], fed: Sequence[float], ran: Sequence[bool]) -> str:
    """Per seed, ``shown`` (a fed value or its ratio), or "diverged" where the federated run
    exists but ended without a finite metric."""
    return ", ".join("diverged" if gone else _f(v)
                     for v, gone in zip(shown, _diverged(fed, ran), strict=True))


def _ms(values: Sequence[float], ran: Sequence[bool] | None = None) -> str:
    """Mean ± std of the finite values; with ``ran``, says how many runs ended without a
    metric (diverged) and so are not in the mean."""
    m, s = mean_std(values)
    cell = "n/a" if not math.isfinite(m) else f"{m:.3f} ± {s:.3f}"
    diverged = sum(_diverged(values, ran))
    return cell + (f" (without {diverged} diverged)" if diverged else "")


def render(res: Mapping[str, Any]) -> str:
    """The BENCHMARKS.md section; every number comes from ``res`` (the runs' results)."""
    seeds = list(res["seeds"])
    b = res["budget"]
    runs = [*res["jobs"].values(),
            *(j for key in PARTS.values() for j in res.get(key, {}).get("jobs", {}).values())]
    lines = [HEADING, "",
             f"Made by `{res['command']}` ({res['date']}; the runs of the tables below took "
             f"{sum(j.get('cpu_s', 0.0) for j in runs) / 60:.0f} "
             "CPU-min, on a 2-core CPU shared with other jobs, so seconds below include "
             "waiting for a core). Every run is the product's ServerApp "
             "strategy and ClientApp over the in-process grid "
             "(`unicon_flower.runner.run_in_process`), tiny random transformer backbone "
             f"(`experiment=continual`) unless a table names another, seeds {seeds}."
             f"{_made_line(runs)}", ""]
    lines += _rules_lines(RULES_HEADING, res, seeds, b)
    lines += _variant_lines(res, seeds)
    for key in PARTS.values():
        if res.get(key):
            lines += [line for sub in _part_subsections(res[key], key, seeds, b) for line in sub]
    lines.append("")
    lines += _bytes_lines(res["bytes"])
    lines += _mixed_lines(res, seeds)
    lines += _scale_lines(res)
    return "\n".join(lines).rstrip() + "\n"


def _times(part: Mapping[str, Any], base: Mapping[str, Any]) -> str:
    """How many times the base budget's rounds a cut part has, e.g. "3x"."""
    return f"{part['budget']['rounds'] / base['rounds']:g}x"


def _kept_texts(part: Mapping[str, Any], base: Mapping[str, Any]
                ) -> tuple[str, str, str, str]:
    """Heading, intro, variants heading and intro of the kept-moments table (at the base
    budget: ``base`` is not used)."""
    return ("### The same on the foundation, sites keeping their optimiser state",
            "As the per-rule table on the pretrained foundation above, with "
            "`train.keep_optimizer_state=true`: each site (and the "
            "centralised bound's pooled node) keeps its AdamW moments between rounds in its "
            "node state (never sent) instead of restarting them every round. Same budget, "
            f"seeds and start (`{' '.join(part['base'])}`).",
            "#### Against client drift on the foundation, moments kept",
            "On the naive rule with kept moments (the naive row above), same budget and "
            "measures; the centralised bound is the plain one. Logit adjustment "
            "(`strategy.lora.logit_adjust=true`): each site trains on its logits plus the log "
            "class prior of its own train split, so sites with different label mixes aim for "
            "the same (prior-free) logits; evaluation is unchanged. SCAFFOLD "
            "(`strategy.lora.scaffold=true`): each local gradient is "
            "corrected by `c - c_i`, the server's control variate of the task minus the "
            "site's own (kept at the site); a site's new `c_i` is the mean of its raw "
            "minibatch gradients of the round, and it sends `c_i_new - c_i`, checked like an "
            "update: a train message and its reply each carry a second skill-sized record "
            "(down also counts the evaluate instructions, which carry none).")


def _short_texts(part: Mapping[str, Any], base: Mapping[str, Any]
                 ) -> tuple[str, str, str, str]:
    """Heading, intro, variants heading and intro of the 15 x 4 table (``base``: the budget
    it is cut from)."""
    b, times = part["budget"], _times(part, base)
    small = site_batch_budget(Budget(**b), SMALL_SITE_BATCH)
    return (f"### Shorter rounds on the foundation, moments kept ({b['rounds']} x "
            f"{b['local_steps']})",
            "The kept-moments runs again with the same examples per site cut into "
            f"{b['rounds']} rounds of {b['local_steps']} local steps ({times} the rounds, "
            f"{b['local_steps']} of {base['local_steps']} local steps: less drift within a "
            f"round, {times} the messages); centralised cut alike. Naive rule, then SCAFFOLD, "
            "FedAvgM, FedExP and smaller site batches below.",
            f"#### SCAFFOLD, FedAvgM, FedExP and smaller site batches with {b['rounds']} x "
            f"{b['local_steps']}",
            "SCAFFOLD as the row under the kept-moments table, on these shorter rounds. "
            "FedAvgM with the settings of the server-optimiser table (server lr 1, momentum "
            "0.9, fixed there before any run, not tuned here): the server's step is the mean "
            "delta plus 0.9 times its previous step, so it grows towards 10x the mean delta "
            "while the sites' deltas agree from round to round. It is a way to take more of "
            "the centralised bound's `local_steps x sites` steps a round without summing the "
            "deltas in one step (which diverged in a diagnostic on the 60 x 1 runs, "
            f"docs/federated.md). FedAvgM with momentum {FEDAVGM_HALF_MOMENTUM:g} (the step "
            f"grows towards {1 / (1 - FEDAVGM_HALF_MOMENTUM):g}x the mean delta) was added "
            "after every seed of momentum 0.9 diverged on these rounds; it is the only other "
            "momentum tried. FedExP (Jhunjhunwala et al. 2023) sizes the server's step from "
            "the round itself: the mean delta times max(1, mean |d_i|^2 / (2 (|mean d|^2 + "
            "eps))), 1 while the sites' deltas agree, towards sites / 2 as they turn "
            "orthogonal (where averaging shortens the step most). Smaller site batches are "
            "another way: each site trains on "
            f"batches of {small.batch_size} with {small.local_steps // b['local_steps']}x the "
            f"local steps ({small.local_steps} of {small.batch_size} instead of "
            f"{b['local_steps']} of {b['batch_size']}: the same examples a "
            "round), and as an AdamW step moves about as far whatever its batch, a site's "
            "round covers about as much ground as the bound's `local_steps x sites` steps; "
            "the bound is not changed. Its batch size was set before the run, not tuned.")


def _one_texts(part: Mapping[str, Any], base: Mapping[str, Any]
               ) -> tuple[str, str, str, str]:
    """Heading and intro of the 60 x 1 table (no variants; ``base``: the budget it is cut
    from)."""
    b = part["budget"]
    return (f"### One local step a round on the foundation, moments kept "
            f"({b['rounds']} x {b['local_steps']})",
            "The kept-moments runs again with the same examples per site cut into "
            f"{b['rounds']} rounds of {b['local_steps']} local step (little room for a site "
            f"to drift within a round, {_times(part, base)} the messages); centralised cut "
            "alike "
            f"(`{' '.join(part['base'])}`: the skill is evaluated every "
            f"{FOUNDATION_ONE_EVALUATE_EVERY}th round and the "
            "sites send no val metric, which changes no update). Naive rule, then FedOpt "
            "below.", f"#### FedOpt's split with {b['rounds']} x {b['local_steps']}",
            FEDOPT_INTRO.format(batch=b["batch_size"]))


def _ct_texts(part: Mapping[str, Any], base: Mapping[str, Any]
              ) -> tuple[str, str, str, str]:
    """Heading, intro, variants heading and intro of the 3D task's own table (at its own
    budget: ``base`` is not used)."""
    b, tasks = part["budget"], ", ".join(part["tasks"])
    return (f"### {tasks} on the 3D CT foundation, smaller steps ({b['local_steps']} local "
            f"steps of {b['batch_size']})",
            "The rules on the 3D task, on the demo's CT foundation (I3ResNet-152 with the "
            f"astra weights, 3D, frozen; `{' '.join(part['base'])}`), at its own budget: a 3D "
            f"step of 8 volumes of 32³ takes about 10 s on this CPU, so {b['local_steps']} "
            f"local steps of {b['batch_size']} volumes.",
            f"#### Summing the site deltas on {tasks}", SUMMED_INTRO)


def _longer_intro(part: Mapping[str, Any], base: Mapping[str, Any],
                  table: str = "The table above") -> str:
    """Intro of a table that reruns ``table`` (the one above it by default) at more rounds."""
    return (f"{table} at {_times(part, base)} its rounds, the same local steps, batch "
            "and lr: more examples for the federation and its centralised bound alike (not "
            "the same examples cut finer), to tell a gap that a short budget leaves from one "
            "that stays. Naive rule and the bound only, set before the runs.")


def _ct_long_texts(part: Mapping[str, Any], base: Mapping[str, Any]
                   ) -> tuple[str, str, str, str]:
    """Heading and intro of the 3D task's table at more rounds (no variants; ``base``: the
    budget whose rounds it multiplies)."""
    b, tasks = part["budget"], ", ".join(part["tasks"])
    return (f"### {tasks} on the 3D CT foundation, {_times(part, base)} the rounds "
            f"({b['rounds']} x {b['local_steps']} of {b['batch_size']})",
            _longer_intro(part, base), "", "")


def _lr_texts(part: Mapping[str, Any], base: Mapping[str, Any]
              ) -> tuple[str, str, str, str]:
    """Heading and intro of the table at another lr (no variants; ``base``: the budget whose
    lr it changes)."""
    b, tasks = part["budget"], ", ".join(part["tasks"])
    return (f"### {tasks} on the foundation at lr {b['lr']:g}, moments restarted",
            f"The per-rule table on the pretrained foundation again on {tasks}, at lr "
            f"{b['lr']:g} instead of {base['lr']:g}, all else alike (moments restarted every "
            f"round, `{' '.join(part['base'])}`). {b['lr']:g} is the lr of the LoRA runs on "
            f"this foundation in \"{UNSEEN_SOURCES_TABLE}\" (the backbones section); "
            f"{base['lr']:g} is the continual suite's default, set on the tiny transformer. "
            "Set before the runs, not tuned on them. Naive rule and the bound; FedSA "
            "(added after the 3x table below put the gap at one site) and each site alone "
            "(added after the table without that site, below) came later.", "", "")


def _cls_long_texts(part: Mapping[str, Any], base: Mapping[str, Any]
                    ) -> tuple[str, str, str, str]:
    """Heading and intro of the lr table at more rounds (no variants; ``base``: the budget
    whose rounds it multiplies)."""
    b, tasks = part["budget"], ", ".join(part["tasks"])
    return (f"### {tasks} on the foundation at lr {b['lr']:g}, {_times(part, base)} the "
            f"rounds ({b['rounds']} x {b['local_steps']})",
            _longer_intro(part, base, f"The table at lr {b['lr']:g}, moments restarted,")
            + (" Each site alone (local-only) came later, as in that table."
               if any(k.startswith("local_") for k in part["jobs"]) else ""), "", "")


def _drop_texts(part: Mapping[str, Any], base: Mapping[str, Any]
                ) -> tuple[str, str, str, str]:
    """Heading and intro of the lr table without one site (``part["dropped"]``: task ->
    site)."""
    b = part["budget"]
    (task, site), = part["dropped"].items()
    return (f"### {task} on the foundation at lr {b['lr']:g}, without {site}",
            f"The table at lr {b['lr']:g}, moments restarted, with {site} left out of both "
            f"sides: neither trains on it and neither is tested on its test split, all else "
            "alike. Added after FedSA's own B scored below chance at that site, whose "
            "source trait reverses between its train and test splits (see the Br35H design "
            "table): whether that site is what keeps the federation from its bound. Naive "
            "rule and the bound only.", "", "")


def _fedopt_texts(part: Mapping[str, Any], base: Mapping[str, Any]
                  ) -> tuple[str, str, str, str]:
    """Heading and intro of FedOpt's split at the lr table's lr (its rows in the main table:
    the part runs no rule; ``base``: the budget it is cut from)."""
    b, tasks = part["budget"], ", ".join(part["tasks"])
    return (f"### {tasks} on the foundation at lr {b['lr']:g}, FedOpt's split "
            f"({b['rounds']} x {b['local_steps']})",
            "Added after the site-alone runs (the lr table) read the gap as each site's "
            "local steps fitting its own few sources, which only a batch that mixes the "
            "sites' sources makes harder than the tumour. "
            + FEDOPT_SPLIT.format(batch=b["batch_size"])
            + " No example leaves a site, yet the server steps on a batch that mixes them. "
            f"Its settings are the 60 x 1 table's (eta = lr x sites, fixed there before "
            f"any run); only the lr is the lr table's ({b['lr']:g}), so eta is half the 60 x "
            "1 table's, where FedOpt diverged on two seeds of three: a second try after that "
            "result, not a setting fixed before it. The examples per site "
            f"are the lr table's cut into {b['rounds']} rounds of {b['local_steps']} "
            f"({_times(part, base)} the rounds); the bound keeps its AdamW moments across "
            f"rounds as in the 60 x 1 table (`{' '.join(part['base'])}`). FedOpt and the "
            "bound only: the naive rule was not rerun at this lr."
            + (" The row at eta = lr (one server step as long as one of the pooled node's) "
               "came after the first row's runs, which ended at chance on one seed of three "
               "and spiked the training loss on all: a shorter step chosen after seeing them."
               if len(part.get("variants", {})) > 1 else "")
            + (" The row at eta = lr x sites without the round norm bound "
               "(`strategy.update_norm_factor=null`) came next: under FedOpt's split an "
               "update is a raw gradient, and the bound rejected about 4 % of the sites' "
               "honest gradients in the first two rows (each time the largest of the "
               "round), where the pooled bound has no such filter."
               if any(NORM_FACTOR in dict(map(tuple, o)) for o in
                      part.get("variants", {}).values()) else "")
            + (" The row without the bound at eta = lr came after that row's runs, which "
               "came closest (and steadiest across seeds) of the FedOpt rows: whether "
               "eta = lr, steadier than eta = lr x sites with the bound, closes the rest "
               "without it. Also chosen after seeing results."
               if sum(NORM_FACTOR in dict(map(tuple, o)) for o in
                      part.get("variants", {}).values()) > 1 else ""), "", "")


def _ct_fedopt_texts(part: Mapping[str, Any], base: Mapping[str, Any]
                     ) -> tuple[str, str, str, str]:
    """Heading and intro of FedOpt's split on the 3D task (its rows in the main table)."""
    b, tasks = part["budget"], ", ".join(part["tasks"])
    return (f"### {tasks} on the 3D CT foundation, FedOpt's split ({b['rounds']} x "
            f"{b['local_steps']} of {b['batch_size']})",
            "Added after FedOpt's split beat its bound on `tumour_cls`'s first seed (the "
            "table above), and set before that table's other two seeds (which did not) and "
            f"before any {tasks} run of it: the 3D task's own examples per site (its smaller "
            f"steps table) cut into {b['rounds']} rounds of {b['local_steps']} step, at its "
            f"own lr ({b['lr']:g}) and the same eta rule (lr x sites); the bound keeps its "
            f"AdamW moments across rounds (`{' '.join(part['base'])}`). "
            + FEDOPT_SPLIT.format(batch=b["batch_size"])
            + " FedOpt and the bound only.", "", "")


def _ct_fedopt_long_texts(part: Mapping[str, Any], base: Mapping[str, Any]
                          ) -> tuple[str, str, str, str]:
    """Heading and intro of FedOpt's split on the 3D task's 3x-rounds examples."""
    b, tasks = part["budget"], ", ".join(part["tasks"])
    return (f"### {tasks} on the 3D CT foundation, FedOpt's split on 3x the rounds' examples "
            f"({b['rounds']} x {b['local_steps']} of {b['batch_size']})",
            "Added after the table above, where the bound segmented nothing on one seed of "
            "three and FedOpt on two, so that cut said nothing for or against the split: the "
            f"3x-rounds table's examples per site cut into {b['rounds']} rounds of "
            f"{b['local_steps']} step, at the same lr ({b['lr']:g}) and eta rule (lr x "
            "sites), set before any run of it; the bound keeps its AdamW moments across "
            f"rounds (`{' '.join(part['base'])}`). With 2 sites the round norm bound (3 "
            "sites or more) does not apply. FedOpt and the bound only.", "", "")


PART_TEXTS: dict[str, Callable[[Mapping[str, Any], Mapping[str, Any]],
                               tuple[str, str, str, str]]] = {
    "foundation_kept": _kept_texts, "foundation_short": _short_texts,
    "foundation_one": _one_texts,
    "foundation_ct": _ct_texts, "foundation_ctlong": _ct_long_texts,
    "foundation_lr": _lr_texts, "foundation_clslong": _cls_long_texts,
    "foundation_clsx3": _cls_long_texts, "foundation_clsdrop": _drop_texts,
    "foundation_fedopt": _fedopt_texts, "foundation_ctfedopt": _ct_fedopt_texts,
    "foundation_ctfedoptlong": _ct_fedopt_long_texts}


def _part_subsections(part: Mapping[str, Any], key: str, seeds: Sequence[int],
                      base: Mapping[str, Any]) -> list[list[str]]:
    """The ``###`` subsections of one foundation part (``key``: its results key; ``base``:
    the budget the cut parts are cut from): the per-rule table (with its rows per training
    site, as every foundation table) and its mixed ranks, or a part's table with its
    variants."""
    if key != PARTS["rules"]:
        return [_part_lines(part, seeds, *PART_TEXTS[key](part, base))]
    return [_rules_lines(
        "### Federated / centralised per LoRA rule on the pretrained foundation", part, seeds,
        base, f"The rules again on a backbone that learns: `{' '.join(part['base'])}` (the "
        "demo's foundation: the CT foundation's I3ResNet-152 with the astra weights, 3D for "
        "CT, its kernels summed over depth for the 2D MRI tasks, frozen; LoRA on its "
        "bottleneck convolutions). Same budget and measures as above.", per_site=True),
        _mixed_lines(part, seeds, " on the pretrained foundation")]


def tiny_alone(res: Mapping[str, Any], seeds: Sequence[int], budget: Mapping[str, Any],
               note: str) -> list[str]:
    """The tiny backbone's subsections (the rules table, its server optimisers and FedProx,
    its mixed ranks) rerun alone, each with ``note`` under its heading."""
    subs = [_rules_lines(RULES_HEADING, res, seeds, budget), _variant_lines(res, seeds),
            _mixed_lines(res, seeds)]
    return ["\n".join([*lines[:2], note, "", *lines[2:]]) for lines in subs if lines]


def part_alone(part: Mapping[str, Any], key: str, seeds: Sequence[int],
               base: Mapping[str, Any], note: str) -> list[str]:
    """The subsections of one foundation part (``key``: its results key) rerun alone, each
    with ``note`` saying so under its heading: each replaces its own subsection and keeps the
    rest."""
    return ["\n".join([*lines[:2], note, "", *lines[2:]])
            for lines in _part_subsections(part, key, seeds, base) if lines]


def _part_lines(part: Mapping[str, Any], seeds: Sequence[int], heading: str, intro: str,
                variants_heading: str, variants_intro: str) -> list[str]:
    """A foundation part's rules table at its own budget, then its variants of the naive rule
    (none where it ran none, or where they stand in the rules table: a part with no rule)."""
    return [*_rules_lines(heading, part, seeds, part["budget"], intro, per_site=True),
            *(_variant_lines(part, seeds, _stored_variants(part), variants_heading,
                             variants_intro) if part.get("rules", RULES) else []),
            *_chosen_lines(part, seeds)]


#: Metrics that count pairs of cases (a near-tie can flip when a score is recomputed).
PAIR_METRICS = {"auc", "c_index"}


def _chosen_lines(part: Mapping[str, Any], seeds: Sequence[int]) -> list[str]:
    """The row chosen per seed on the validation splits (:func:`with_val_choice`), against
    the bound, and on the evaluation-only sites ([] where the part chose none)."""
    chosen = part.get("chosen")
    if not chosen:
        return []
    jobs, labels = part["jobs"], list(_stored_variants(part))
    number = {label: i for i, label in enumerate(labels, 1)}
    val_n = next((c["val_n"] for picks in chosen.values() for c in picks), None)
    metrics = {_first_metric(jobs, task, seeds) for task in chosen}
    why = ("a rank metric (AUC, c-index) counts pairs, and a run near chance scores many "
           "cases alike, so a few near-tied pairs can flip" if metrics <= PAIR_METRICS else
           "the evaluation sums floats in another order than the run did")
    lines = [f"#### The row chosen on validation ({len(labels)} rows above)", "",
             "Per seed, of the rows above, the one whose final global skill scored best on "
             f"the training sites' validation splits (n {val_n}: each site's own held-out "
             "sources, none in its train or test split; the same metric, example-weighted "
             "over the sites), and that run's test value. No test split is read in the "
             "choice, but the rows themselves came one after another, each after seeing the "
             "earlier rows' test values: the set the choice is made from is not blind to "
             "them. Before its score, each run's checkpoint was evaluated on the test splits "
             f"again and gave the run's cached test value to within {TEST_AGAIN_TOL} (largest "
             f"difference {part.get('test_again_max', math.nan):.1e}; {why}): the skill "
             "scored is the one reported. Rows: "
             + "; ".join(f"{i} = {label}" for label, i in number.items()) + ".", "",
             "| task | seed | validation score of rows " + ", ".join(map(str, number.values()))
             + " | chosen row | federated (test) | centralised (test) | fed / central |",
             "|---|---|---|---|---|---|---|"]
    summary = []
    for task, picks in chosen.items():
        central = _values(jobs, [Job("central", task, p["seed"]) for p in picks])
        fed = [p["value"] for p in picks]
        for p, c in zip(picks, central, strict=True):
            lines.append(f"| {task} | {p['seed']} | "
                         + ", ".join(_f(p["val"].get(label)) for label in labels)
                         + f" | {number[p['chosen']]} | {_f(p['value'])} | {_f(c)} | "
                         f"{_f(ratio_stats([p['value']], [c])[0][0])} |")
        _, of_means = ratio_stats(fed, central)
        summary.append(f"{task}: the chosen rows {_ms(fed)} against the bound's "
                       f"{_ms(central)}, fed / central of the means {_f(of_means)}, goal >= "
                       f"{GOAL_RATIO}: {_goal(fed, of_means)}")
        for site in part.get("external", {}).get(task, []):
            ext = [_num(p["external"].get(site, {}).get("value")) for p in picks]
            ext_c = _external_values(jobs, [Job("central", task, p["seed"]) for p in picks],
                                     site)
            n = next((p["external"][site]["n"] for p in picks if site in p["external"]), None)
            ext_ratio = ratio_stats(ext, ext_c)[1]
            summary.append(f"on {site} (n {n}): {_ms(ext)} against {_ms(ext_c)}, "
                           f"{_f(ext_ratio)}: {_goal(ext, ext_ratio)}")
    return [*lines, "", "Chosen on validation: " + "; ".join(summary) + ".", ""]


def _fed_rows(part: Mapping[str, Any]
              ) -> list[tuple[str, str, tuple[tuple[str, str | float], ...]]]:
    """The federated rows of a part's rules and per-site tables, as (label, rule, options):
    its rules; a part that ran no rule, its variants of the naive rule instead (there is no
    naive row for a variants table to compare them with)."""
    rules = part.get("rules", RULES)
    if rules:
        return [(rule, rule, ()) for rule in rules]
    return [(label, VARIANT_RULE, opts) for label, opts in _stored_variants(part).items()]


def _rejected_lines(part: Mapping[str, Any], seeds: Sequence[int]) -> list[str]:
    """A note per task whose federated runs (rules and variants) had updates rejected by the
    server: per row and seed, rejected of the task's train replies ("?" where the run did
    not record it); [] where none was rejected."""
    jobs, rows = part["jobs"], _fed_rows(part)
    if part.get("rules", RULES):
        rows += [(label, VARIANT_RULE, opts) for label, opts in _stored_variants(part).items()]
    lines = []
    for task in part["tasks"]:
        counts = {label: [jobs.get(Job("fed", task, s, rule, options=opts).key, {}).get(
            "rejected_updates") for s in seeds] for label, rule, opts in rows}
        if not any(c and c[0] for row in counts.values() for c in row):
            continue
        lines += [f"Updates of {task} the server rejected rather than aggregated (its norm "
                  "bounds or any other check), per seed, of the sites' train replies: "
                  + "; ".join(f"{label}: " + ", ".join(f"{c[0]} of {c[1]}" if c else "?"
                                                       for c in row)
                              for label, row in counts.items()) + "."]
    return lines


def _stored_variants(part: Mapping[str, Any]
                     ) -> dict[str, tuple[tuple[str, str | float], ...]]:
    """The variants a foundation part ran (stored as JSON lists), as :class:`Job` options."""
    return {label: tuple(tuple(o) for o in opts)
            for label, opts in part.get("variants", {}).items()}


def _made_line(runs: Sequence[Mapping[str, Any]]) -> str:
    """When the runs were made: the script reuses a run already in its work folder's cache
    (``jobs/<key>.json``), so one section can join runs of several invocations."""
    dates = sorted({r["made"][:10] for r in runs if "made" in r})
    undated = sum("made" not in r for r in runs)
    if not dates:
        return ""
    return (f" Runs reused from the work folder's cache are not rerun: these runs were made "
            f"on {', '.join(dates)}" + (f" ({undated} earlier, undated)" if undated else "")
            + ".")


def _rules_lines(heading: str, part: Mapping[str, Any], seeds: Sequence[int],
                 b: Mapping[str, Any], intro: str = "", per_site: bool = False) -> list[str]:
    """One fed / centralised table: per task and rule, from ``part``'s jobs; with
    ``per_site``, each training site's own numbers under it."""
    jobs = part["jobs"]
    syn = part.get("synthetic", {})
    lines = [heading, "", *([intro, ""] if intro else []),
             f"Budget (every rule and the centralised bound): {b['rounds']} rounds x "
             f"{b['local_steps']} local steps of batch {b['batch_size']} per site, lr "
             f"{b['lr']}, deltas on the wire (lossless). Federated: test metric after the "
             "last round on each site's held-out test split, example-weighted over the "
             "task's sites (FedSA: each site evaluated with its own B). Centralised: the "
             "task's train splits pooled in one node, `local_steps x sites` steps a round "
             "(as many examples as the federation), same rounds, seed and start; its final "
             "skill evaluated on the same per-site test splits (one round at lr 1e-12; "
             f"largest change of any skill value{_also_local(jobs)}: "
             f"{part.get('max_change') or 0:.1e}). "
             f"Goal: fed / central >= {GOAL_RATIO} (ratio of the means).", "",
             "| task (data) | n test | rule | federated | centralised | fed / central per "
             "seed | fed / central of the means | goal |",
             "|---|---|---|---|---|---|---|---|"]
    centrals = {t: _values(jobs, [Job("central", t, s) for s in seeds]) for t in part["tasks"]}
    for task, central in centrals.items():
        n = next((jobs[k]["n"] for k in jobs if k.startswith(f"fed_{task}_")
                  and jobs[k].get("n")), None)
        metric = next((jobs[k]["metric"] for k in jobs if f"_{task}_" in k), "?")
        data = "SYNTHETIC" if syn.get(task) else "real"
        for label, rule, opts in _fed_rows(part):
            wanted = [Job("fed", task, s, rule, options=opts) for s in seeds]
            fed, ran = _values(jobs, wanted), [j.key in jobs for j in wanted]
            per, of_means = ratio_stats(fed, central)
            lines.append(
                f"| {task} ({data}, {metric}) | {n} | {label} | {_ms(fed, ran)} | "
                f"{_ms(central)} | {_seed_cells(per, fed, ran)} | {_f(of_means)} | "
                f"{_goal(fed, of_means, ran)} |")
    weak = [t for t, central in centrals.items()
            if mean_std(central)[0] < NEAR_CHANCE and _chance_is_half(jobs, t, seeds)]
    if weak:
        lines += ["", f"Centralised itself stays below {NEAR_CHANCE} (0.5 = chance) on "
                  f"{', '.join(weak)}: at this budget neither side learns much there, and "
                  "its ratios compare two weak models."]
    lines += _weak_seed_lines({t: central for t, central in centrals.items() if t not in weak
                               and _chance_is_half(jobs, t, seeds)}, seeds, "")
    lines += _empty_bound_lines({t: central for t, central in centrals.items()
                                 if _first_metric(jobs, t, seeds) == "dice"}, seeds)
    pooled = {t: _values(jobs, [Job("central", t, s) for s in seeds], "pooled_value")
              for t in part["tasks"]}
    lines += ["", "Centralised on its own pooled test split (all sites' test rows as one set, "
              "as the continual suite reports it): " + "; ".join(
                  f"{t} {_ms(v)}" for t, v in pooled.items()) + ".", ""]
    lines += [*_per_site_lines(part, seeds), *_local_lines(part, seeds)] if per_site else []
    lines += _external_lines(part, seeds)
    for note in _rejected_lines(part, seeds):
        lines += [*([""] if lines[-1] else []), note]
    svd = [jobs[k]["svd_truncation_error"] for k in jobs if k.startswith("fed_")
           and "_svd_" in k and jobs[k].get("svd_truncation_error") is not None]
    if svd:
        lines.append(f"SVD rule: relative truncation error `||dW - s B A||_F / ||dW||_F`, "
                     f"mean over rounds, {min(svd):.3f} to {max(svd):.3f} over tasks and "
                     "seeds.")
    for note in (_augmentation_note(jobs), _cpu_note(jobs)):
        if note:
            lines += [*([""] if lines[-1] else []), note]
    if part.get("left_out"):
        lines += ["", "Not in this table: " + "; ".join(f"`{t}`: {why}"
                                                  for t, why in part["left_out"].items()) + "."]
    return [*lines, ""]


def _also_local(jobs: Mapping[str, Any]) -> str:
    """Where a part trained sites alone, the budget line's largest change covers their
    evaluation rounds too (each is evaluated as the bound is); "" where it did not."""
    return (", in this and the site-alone runs' evaluation rounds"
            if any(k.startswith("local_") for k in jobs) else "")


PER_SITE_INTRO = (
    "The same runs per training site, each on its own test split (n as there): where a "
    "task's gap sits. Federated: the final global skill (FedSA: the site's own B); "
    "centralised: the pooled skill. Not a goal of its own.")


def _per_site_lines(part: Mapping[str, Any], seeds: Sequence[int]) -> list[str]:
    """Per training site of a task with more than one: each rule and the bound on that
    site's test split (nothing where the runs kept no per-site values)."""
    jobs, rows = part["jobs"], []
    for task in part["tasks"]:
        central = [jobs.get(Job("central", task, s).key, {}) for s in seeds]
        sites = sorted({site for r in central for site in r.get("per_site", {})})
        if len(sites) < 2:
            continue
        for site in sites:
            c = [_num(r.get("per_site", {}).get(site)) for r in central]
            n = next((r["per_site_n"][site] for r in central
                      if site in r.get("per_site_n", {})), None)
            for label, rule, opts in _fed_rows(part):
                wanted = [Job("fed", task, s, rule, options=opts) for s in seeds]
                fed = [_num(jobs.get(j.key, {}).get("per_site", {}).get(site))
                       for j in wanted]
                ran = [j.key in jobs for j in wanted]
                per, of_means = ratio_stats(fed, c)
                rows.append(f"| {task} | {site} | {n} | {label} | {_ms(fed, ran)} | {_ms(c)} "
                            f"| {_seed_cells(per, fed, ran)} | {_f(of_means)} |")
    if not rows:
        return []
    return [PER_SITE_INTRO, "",
            "| task | training site | n test | rule | federated | centralised | fed / central "
            "per seed | fed / central of the means |", "|---|---|---|---|---|---|---|---|",
            *rows, ""]


LOCAL_INTRO = (
    "Each training site alone (local-only): its own train split only, at the federation's "
    "per-site budget (the same rounds, local steps, batch and lr, no other site's data), its "
    "final skill evaluated as the bound's: on its own test split, on every training site's "
    "test split (example-weighted, as the tables above) and on the evaluation-only sites. "
    "The federation (naive) and the bound of the same table beside it. Not a goal of its "
    "own: what each site's data carries alone.")


def _local_lines(part: Mapping[str, Any], seeds: Sequence[int]) -> list[str]:
    """Per task, each site alone (its local-only runs) beside the federation and the bound
    (nothing where the part ran none)."""
    jobs, lines = part["jobs"], []

    def cells(wanted: Sequence[Job], own: str | None, ext: Sequence[str]) -> str:
        got, ran = [jobs.get(j.key, {}) for j in wanted], [j.key in jobs for j in wanted]
        mine = (_ms([_num(r.get("per_site", {}).get(own)) for r in got], ran) if own
                else "–")
        outs = [_ms(_external_values(jobs, wanted, e), ran) for e in ext]
        return " | ".join([mine, _ms([_num(r.get("value")) for r in got], ran), *outs])

    for task in part["tasks"]:
        runs = {k: r for k, r in jobs.items() if k.startswith(f"local_{task}_")}
        if not runs:
            continue
        ext = list(part.get("external", {}).get(task, []))
        trained = [s for s in part.get("sites", {}).get(task, [])
                   if any(local_job(task, s, i).key in jobs for i in seeds)]
        n = next((r["n"] for r in runs.values() if r.get("n")), None)
        ext_n = [next((r["external"][e]["n"] for r in runs.values()
                       if e in r.get("external", {})), None) for e in ext]
        head = ["task", "trained on", "own test split",
                f"every training site's test split (n {n})",
                *[f"{e} (n {k})" for e, k in zip(ext, ext_n, strict=True)]]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += [f"| {task} | {site} alone | "
                  f"{cells([local_job(task, site, i) for i in seeds], site, ext)} |"
                  for site in trained]
        lines += [f"| {task} | all, federated (naive) | "
                  f"{cells([Job('fed', task, i) for i in seeds], None, ext)} |",
                  f"| {task} | all pooled, centralised | "
                  f"{cells([Job('central', task, i) for i in seeds], None, ext)} |", ""]
    return [LOCAL_INTRO, "", *lines] if lines else []


EXTERNAL_INTRO = (
    "The same runs on the evaluation-only site: whole web sources that no training site "
    "holds, every row a test row, never trained on or pooled (the Br35H number the demo "
    "quotes, and more sources than any training site's test split). Federated: the final "
    "global skill (FedSA: its averaged B, as the site has none of its own); centralised: "
    "the pooled skill. Same goal.")


def _external_values(jobs: Mapping[str, Any], wanted: Sequence[Job], site: str
                     ) -> list[float]:
    """``site``'s external test metric of each wanted run (NaN where missing)."""
    return [float(jobs.get(j.key, {}).get("external", {}).get(site, {}).get("value", math.nan))
            for j in wanted]


def _external_lines(part: Mapping[str, Any], seeds: Sequence[int]) -> list[str]:
    """Per evaluation-only site of a task: the rules and variants, fed / central on it
    (nothing where the part had no such site)."""
    jobs, rows, weak = part["jobs"], [], []
    variants = {rule: ((), rule) for rule in part.get("rules", RULES)}
    variants |= {label: (opts, VARIANT_RULE) for label, opts in _stored_variants(part).items()}
    for task, sites in part.get("external", {}).items():
        for site in sites:
            central = _external_values(jobs, [Job("central", task, s) for s in seeds], site)
            if _chance_is_half(jobs, task, seeds):
                weak += _weak_seed_lines({task: central}, seeds, f" on {site}")
            n = next((jobs[k]["external"][site]["n"] for k in jobs
                      if site in jobs[k].get("external", {})), None)
            for label, (opts, rule) in variants.items():
                wanted = [Job("fed", task, s, rule, options=opts) for s in seeds]
                fed, ran = _external_values(jobs, wanted, site), [j.key in jobs for j in wanted]
                if not any(ran):
                    continue
                per, of_means = ratio_stats(fed, central)
                rows.append(f"| {task} | {site} | {n} | {label} | {_ms(fed, ran)} | "
                            f"{_ms(central)} | {_seed_cells(per, fed, ran)} | {_f(of_means)} | "
                            f"{_goal(fed, of_means, ran)} |")
    if not rows:
        return []
    return [EXTERNAL_INTRO, "",
            "| task | evaluation-only site | n test | rule or variant | federated | "
            "centralised | fed / central per seed | fed / central of the means | goal |",
            "|---|---|---|---|---|---|---|---|---|", *rows, *weak, ""]


def _augmentation_note(jobs: Mapping[str, Mapping[str, Any]]) -> str:
    """How many of a table's runs predate the augmentation fix ("" for none): they are
    reused, not rerun."""
    before = sum(j.get("augmentation") != AUGMENTATION for j in jobs.values())
    if not before:
        return ""
    return (f"**Made before {AUGMENTATION_FIX}**: {before} of the {len(jobs)} runs of this "
            "table and of any variants' table under it come from before the fixes of e5364ea "
            f"and {AUGMENTATION_FIX}, when every training item kept the augmentation of its "
            "first draw (flips and jitter) for the whole run, in the federation and in its "
            "centralised bound alike (image tasks only: a tabular task has no augmentation, "
            "and the fix changes none of its runs). They are reused from the cache, not "
            "rerun.")


def _cpu_note(jobs: Mapping[str, Mapping[str, Any]]) -> str:
    """Which CPUs a table's runs (and its variants') were made on ("" where none says): the
    same run gives other floats on a CPU with other vector kernels, so a rerun elsewhere
    need not agree bit for bit."""
    cpus = sorted({str(j["cpu"]) for j in jobs.values() if "cpu" in j})
    if not cpus:
        return ""
    unrecorded = sum("cpu" not in j for j in jobs.values())
    threads = sorted({int(j["torch_threads"]) for j in jobs.values() if "torch_threads" in j})
    untold = sum("torch_threads" not in j for j in jobs.values())
    told = ("" if not threads else
            f", torch threads {', '.join(map(str, threads))}"
            + (f" ({untold} runs from before the thread count was recorded)" if untold else ""))
    return ("Made on " + "; ".join(f"`{c}`" for c in cpus)
            + (f" ({unrecorded} runs from before the CPU was recorded)" if unrecorded else "")
            + told + ": a run on a CPU with other vector kernels, or with another number of "
            "torch threads, gives other floats, so a rerun elsewhere need not agree bit for "
            "bit.")


def _goal(fed: Sequence[float], of_means: float, ran: Sequence[bool] | None = None) -> str:
    """The fed / central verdict; "not run" where no seed of the row ran (not a miss), and no
    verdict where only some seeds ran. ``ran``: which seeds' runs exist (default: those with
    a finite metric); a run that ended without one (diverged) is a miss, not a gap."""
    present = list(ran) if ran is not None else [math.isfinite(v) for v in fed]
    done = sum(present)
    if not done:
        return "not run"
    if done < len(fed):
        return f"incomplete ({done} of {len(fed)} seeds)"
    diverged = sum(_diverged(fed, present))
    if diverged:
        return f"**MISSED** ({diverged} of {len(fed)} seeds diverged)"
    return _verdict(math.isfinite(of_means) and of_means >= GOAL_RATIO)


def _values(jobs: Mapping[str, Any], wanted: Sequence[Job], key: str = "value") -> list[float]:
    """``key`` of each wanted job's result, NaN where it did not run."""
    return [jobs.get(j.key, {}).get(key, math.nan) for j in wanted]


def _weak_seed_lines(central: Mapping[str, Sequence[float]], seeds: Sequence[int],
                     where: str) -> list[str]:
    """A line naming each seed whose centralised bound ended below :data:`NEAR_CHANCE` (on a
    metric with chance at 0.5; ``where``: e.g. " on br35h_ext"): a ratio of the means, and
    its verdict, then lean on a bound that did not learn ([] where none)."""
    low = [f"{t} seed {s} ({v:.3f})" for t, vals in central.items()
           for s, v in zip(seeds, vals, strict=True) if math.isfinite(v) and v < NEAR_CHANCE]
    if not low:
        return []
    return ["", f"Centralised bound below {NEAR_CHANCE} (0.5 = chance){where} on "
            f"{', '.join(low)}: that seed's pooled run did not learn, which pulls the bound's "
            "mean down and the ratio of the means (and its verdict) up; read the other seeds' "
            "ratios."]


def _empty_bound_lines(central: Mapping[str, Sequence[float]], seeds: Sequence[int]
                       ) -> list[str]:
    """A line naming each seed whose centralised bound ended at Dice 0 (it segments nothing):
    that seed's ratio is undefined and the mean leans on the other seeds ([] where none)."""
    empty = [f"{t} seed {s}" for t, vals in central.items()
             for s, v in zip(seeds, vals, strict=True) if v == 0.0]
    if not empty:
        return []
    return ["", f"Centralised bound at Dice 0.000 on {', '.join(empty)}: that seed's pooled "
            "run segments nothing at this budget, so its ratio is undefined (n/a) and the "
            "bound's mean is pulled down by a run that did not learn; read the other seeds."]


def _first_metric(jobs: Mapping[str, Any], task: str, seeds: Sequence[int]) -> str:
    """The task's metric, read from its centralised runs ("" where none ran)."""
    central = [Job("central", task, s).key for s in seeds]
    return str(next((jobs[k]["metric"] for k in central if k in jobs), ""))


def _chance_is_half(jobs: Mapping[str, Any], task: str, seeds: Sequence[int]) -> bool:
    """Whether the task's metric has chance at 0.5 (AUC, C-index), so "near chance" applies
    (read from the task's centralised runs)."""
    return _first_metric(jobs, task, seeds) in ("auc", "c_index")


VARIANTS_INTRO = (
    f"Each on the `{VARIANT_RULE}` rule, same budget and measures as the rules table (whose "
    "naive row is plain FedAvg); the server optimiser steps on the aggregated delta of the "
    "task's skill. Flower's default step sizes and FedProx's mu = 0.01 were fixed before any "
    "run, not tuned.")


#: Heading of the bytes table, which follows the foundation's parts in the section.
BYTES_HEADING = "### Bytes per site and round per codec"
SUMMED_INTRO = (
    "The centralised bound takes `local_steps x sites` steps a round; FedAvg's mean of the "
    "site deltas moves about as far as one site's `local_steps` (each site's AdamW step has "
    "about the same size whatever its batch), so at an equal number of examples the "
    "federation covers a fraction of the bound's path. With server lr = sites (FedAvgM, "
    "momentum 0) the server applies the sum of the deltas: to first order, the sites' steps "
    "one after the other, as the pooled node takes them. The server lr was set to the number "
    "of sites before any run, not tuned.")


FEDOPT_SPLIT = (
    "With AdamW at the sites, each site scales its own gradients coordinate by coordinate "
    "before the server averages them; the pooled node's AdamW scales the gradients of batches "
    "that mix the sites. With `strategy.lora.site_sgd_lr=1` each site's one local step is a "
    "plain SGD step, so its delta is minus its minibatch gradient, and the server's FedAdam "
    "takes one Adam step a round on their mean: Adam on a batch of {batch} from every site.")
FEDOPT_INTRO = FEDOPT_SPLIT + " Its settings were fixed before any run, not tuned."


def _variant_lines(res: Mapping[str, Any], seeds: Sequence[int],
                   variants: Mapping[str, tuple[tuple[str, str | float], ...]] = VARIANTS,
                   heading: str = "### Server optimisers and FedProx",
                   intro: str = VARIANTS_INTRO) -> list[str]:
    """``variants`` of the naive rule (server optimisers, FedProx, SCAFFOLD) against plain
    FedAvg (the naive rule's row of ``res``'s rules table)."""
    jobs = res["jobs"]
    planned = [Job("fed", t, s, VARIANT_RULE, options=opts) for t in res["tasks"]
               for opts in variants.values() for s in seeds]
    if not any(j.key in jobs for j in planned):
        return []
    out = [heading, "", intro, "",
           "| task | server / site update | federated | per seed | fed / central of the "
           "means | goal | bytes up / down per site and round |", "|---|---|---|---|---|---|---|"]
    for task in res["tasks"]:
        central = _values(jobs, [Job("central", task, s) for s in seeds])
        rows = {"FedAvg (the naive row above)": ()} | dict(variants)
        for label, opts in rows.items():
            keys = [Job("fed", task, s, VARIANT_RULE, options=opts).key for s in seeds]
            runs, ran = [jobs.get(k, {}) for k in keys], [k in jobs for k in keys]
            fed = [r.get("value", math.nan) for r in runs]
            of_means = ratio_stats(fed, central)[1]
            out.append(f"| {task} | {label} | {_ms(fed, ran)} | {_seed_cells(fed, fed, ran)} | "
                       f"{_f(of_means)} | {_goal(fed, of_means, ran)} | "
                       f"{_traffic(runs, fed, ran)} |")
    return [*out, ""]


def _traffic(runs: Sequence[Mapping[str, Any]], fed: Sequence[float], ran: Sequence[bool]
             ) -> str:
    """Mean bytes up / down per site and round over the runs that did not diverge: once a
    run's skill is no longer finite, its sites' egress guards refuse each update and send only
    the refusal, which would pull its bytes up down."""
    kept = [r for r, gone in zip(runs, _diverged(fed, ran), strict=True) if not gone]
    up = mean_std([r.get("bytes_up", math.nan) for r in kept])[0]
    down = mean_std([r.get("bytes_down", math.nan) for r in kept])[0]
    if math.isfinite(up + down):
        return f"{up:,.0f} / {down:,.0f}" + (" (diverged runs left out)"
                                             if len(kept) < len(runs) else "")
    return "n/a (diverged)" if runs and not kept else "n/a"


def _bytes_lines(rows: Sequence[Mapping[str, Any]], provenance: str = "") -> list[str]:
    out = [BYTES_HEADING, "",
           *([provenance, ""] if provenance else []),
           "Serialized messages of one round (`unicon_flower.accounting.content_bytes`): down "
           "= the strategy's train and evaluate instructions (the task's skill in float32; "
           "with a downlink codec its encoded change in the steady state, the site holding an "
           "earlier copy), up = a training reply (skill or encoded delta, metrics, info) and "
           "an evaluation reply. No training: seeded noise (std 1e-3) moves the fresh skill to a "
           "global one (no zero B factors, which the content-addressed serialization sends "
           "once) and that to the trained one; backbones freshly initialised (bytes depend "
           "on shapes only). Full "
           "model = plan `full` (backbone + skill both ways). Raw skill = the skill tensors' "
           "own bytes.", "",
           "| backbone (params) | task | codec | payload up | payload / raw skill | up | "
           "down | round (up + down) | round / full model | up / full model |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    goals = []
    for row in rows:
        full = row["full_round"]
        for name, c in row["codecs"].items():
            rnd = c["up"] + c["down"]
            out.append(
                f"| {row['backbone']} ({row['backbone_params'] / 1e6:.1f}M; skill "
                f"{row['skill_params']:,}) | {row['task']} | {name} | {c['payload']:,} | "
                f"{c['payload'] / c['raw_skill']:.3f} | {c['up']:,} | {c['down']:,} | "
                f"{rnd:,} | 1/{full / rnd:.0f} | 1/{full / c['up']:.0f} |")
        lossless = row["codecs"][LOSSLESS]
        ratio = lossless["payload"] / lossless["raw_skill"]
        today = lossless["up"] / row["codecs"][TODAY]["up"]
        goals.append(f"{row['backbone']}: lossless delta payload = {ratio:.3f} x raw skill "
                     f"bytes (goal <= {GOAL_LOSSLESS}: {_verdict(ratio <= GOAL_LOSSLESS)}; "
                     "the excess is the serialization's per-tensor framing, which today's "
                     f"full-skill reply pays alike: lossless delta up / full skill up = "
                     f"{today:.4f})")
        packed = row["codecs"].get(LOSSLESS_PACKED)
        if packed is not None:
            ratio = packed["payload"] / packed["raw_skill"]
            goals.append(f"{row['backbone']}: packed lossless delta payload (`pack: true`, one "
                         f"array per dtype) = {ratio:.3f} x raw skill bytes (goal <= "
                         f"{GOAL_LOSSLESS}: {_verdict(ratio <= GOAL_LOSSLESS)})")
        if row["backbone_params"] >= BIG_PARAMS:
            for name in INT8:
                c = row["codecs"][name]
                rnd, up = (c["up"] + c["down"]) / full, c["up"] / full
                goals.append(
                    f"{row['backbone']}, {name}: a round is 1/{1 / rnd:.0f} of the full "
                    f"model's (goal <= 1/{1 / GOAL_INT8:.0f}: {_verdict(rnd <= GOAL_INT8)}); "
                    f"the upload alone 1/{1 / up:.0f} ({_verdict(up <= GOAL_INT8)})")
    out += ["", *[f"- {g}" for g in goals], ""]
    return out


def _mixed_lines(res: Mapping[str, Any], seeds: Sequence[int], where: str = "") -> list[str]:
    """Mixed ranks vs the uniform rank, both on the SVD rule (``where``: the heading's end)."""
    jobs = res["jobs"]
    ranks = res.get("mixed_ranks")
    if not ranks:
        return []
    task = res["mixed_task"]
    pairs = tuple((str(s), int(r)) for s, r in ranks)
    uni = [jobs.get(Job("fed", task, s, "svd").key, {}) for s in seeds]
    mix = [jobs.get(Job("mixed", task, s, "svd", pairs).key, {}) for s in seeds]
    who = ", ".join(f"{s} at rank {r}" for s, r in ranks)

    def row(label: str, runs: Sequence[Mapping[str, Any]]) -> str:
        vals = [r.get("value", math.nan) for r in runs]
        per = ", ".join(_f(v) for v in vals)
        up = [r.get("bytes_up", math.nan) for r in runs]
        down = [r.get("bytes_down", math.nan) for r in runs]
        trunc = [r.get("svd_truncation_error") or math.nan for r in runs]
        return (f"| {label} | {_ms(vals)} | {per} | {mean_std(up)[0]:,.0f} | "
                f"{mean_std(down)[0]:,.0f} | {_f(mean_std(trunc)[0])} |")

    n = next((r.get("n") for r in uni if r.get("n")), None)
    return [f"### Mixed ranks vs uniform rank (SVD rule){where}", "",
            f"`{task}` ({'SYNTHETIC' if res.get('synthetic', {}).get(task) else 'real'}"
            f", n test {n}), seeds {list(seeds)}, same budget as above; mixed: {who} (the "
            "server pads its factors to the task's rank and sends it its rank back by "
            "truncated SVD). Bytes: mean per site and round, measured by the run.", "",
            "| ranks | test metric | per seed | bytes up | bytes down | SVD truncation error |",
            "|---|---|---|---|---|---|",
            row("uniform (task rank)", uni), row(f"mixed ({who})", mix), ""]


def _scale_lines(res: Mapping[str, Any]) -> list[str]:
    rows = res.get("scale")
    if not rows:
        return []
    out = ["### Scaling: sampled sites per round", "",
           f"`{res['scale_task']}` rows ({res['scale_data']}, {SCALE_ROWS} per simulated site: 6 "
           "train / 2 val / 2 test, rows repeated across sites once the cohort is used up; "
           f"the metric means nothing here) dealt to N site folders; {res['scale_sampled']} "
           f"sites sampled per round (`strategy.lora.fraction` = {res['scale_sampled']} / N, "
           f"`min_sites` = {res['scale_sampled']}), {SCALE_ROUNDS} rounds, per-round "
           "evaluation off (the table measures training rounds), seed "
           f"{res['scale_seed']}. One child process per size; peak RSS = the largest sum over "
           "its process tree (psutil, every 0.1 s). The query round asks every site once "
           "(validation, task, size); the simulation process composes the run's config "
           "once and each site validates it (the config lists all N site folders).", "",
           "| sites | query round s (per site) | seconds per round | sites trained per round | "
           "messages (query / train / evaluate) | messages to non-sampled sites | peak RSS "
           "MiB |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["messages"]
        per_site = (r.get("query_s") or math.nan) / r["sites"]
        out.append(f"| {r['sites']:,} | {_f(r.get('query_s'), 1)} ({_f(per_site, 3)}) | "
                   f"{r['round_s']:.2f} | "
                   f"{', '.join(map(str, r['trained_per_round']))} | {m.get('query', 0)} / "
                   f"{m.get('train', 0)} / {m.get('evaluate', 0)} | {r['to_unsampled']} | "
                   f"{r['peak_rss_mib']:,.0f} |")
    out.append("")
    return out


# ------------------------------------------------------------------------------ quick data
def make_quick_sites(root: Path, seed: int = 0, n_sites: int = 2) -> dict[str, list[Path]]:
    """Tiny SYNTHETIC tabular survival sites for ``--quick`` (task ``synth_surv``)."""
    from unicon_core.config import TaskSpec

    rng = np.random.default_rng(seed)
    feats = [f"x{i}" for i in range(4)]
    spec = TaskSpec.from_dict({
        "name": QUICK_TASK, "kind": "survival", "modality": "clinical", "spatial_dims": 0,
        "input_size": [len(feats)], "feature_names": feats,
        "lora": {"rank": 4, "alpha": 8.0, "dropout": 0.0, "targets": ["default"]}})
    splits = ["train"] * 24 + ["val"] * 8 + ["test"] * 16
    dirs = []
    for s in range(n_sites):
        name = f"{QUICK_TASK}_{s}"
        x = rng.normal(size=(len(splits), len(feats)))
        risk = x @ np.array([1.0, -0.5, 0.5, 0.0])
        rows = [{"id": f"{name}-{i}", "split": split,
                 **{f: f"{x[i, j]:.4f}" for j, f in enumerate(feats)},
                 "time": f"{float(np.exp(-risk[i]) * 100 + 1):.1f}",
                 "event": int(rng.random() < 0.7)} for i, split in enumerate(splits)]
        dirs.append(write_synthetic_site(root / name, spec, "simulations.federated_lora_bench",
                                         "SYNTHETIC tiny tabular survival site (--quick)", rows))
    return {QUICK_TASK: dirs}


# ------------------------------------------------------------------------------ main
def _site_count(sites: Mapping[str, Sequence[Path]]) -> int:
    """The one number of sites of every task in ``sites`` (a summed variant's server lr)."""
    counts = {len(d) for d in sites.values()}
    if len(counts) != 1:
        raise ValueError(f"tasks with different numbers of sites: {dict(sites)}")
    return counts.pop()


def _rel(path: Path) -> str:
    return shown_path(path)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run (or resume) every measurement and write the section; returns the results."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--quick", action="store_true",
                   help="tiny SYNTHETIC sites, 1 round, small scaling sizes, tiny backbone")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--data-root", type=Path, default=REPO / "demo_data")
    p.add_argument("--work-dir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    p.add_argument("--skip", nargs="*", default=[], choices=["rules", "bytes", "scale"])
    p.add_argument("--foundation", action="store_true",
                   help="also the rules on the pretrained foundation (backbone=demo)")
    p.add_argument("--part", choices=sorted([*PARTS, TINY_PART]), default=None,
                   help="rerun one part of --foundation alone and replace only its table; "
                        f"{TINY_PART!r}: the tiny backbone's rules, server optimisers and "
                        "mixed ranks tables")
    p.add_argument("--new-table", action="store_true",
                   help="with --part: the file has no table of this part yet (added since the "
                        "file was written); put it just before the bytes table. Without it, "
                        "only the last part's table may be missing")
    p.add_argument("--scale-worker", nargs=4, type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    # the sites' paths travel into run configs, which refuse a relative one
    args.data_root = args.data_root.resolve()
    if args.scale_worker is not None:
        scale_worker(*args.scale_worker)
        return {}
    start = time.perf_counter()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="federated_lora_"))
    work.mkdir(parents=True, exist_ok=True)
    if args.quick:
        quick = work / "quick_sites"
        sites = ({QUICK_TASK: sorted(quick.glob(f"{QUICK_TASK}_*"))} if quick.exists()
                 else make_quick_sites(quick))
        budget = Budget(rounds=args.rounds or 1, local_steps=2, batch_size=8)
        mixed_task = scale_task = QUICK_TASK
        sizes: Sequence[int] = (3, 6)
        sampled = 2
        backbones = dict(list(BYTE_BACKBONES.items())[:1])
        synthetic = {t: True for t in sites}
        left_out: dict[str, str] = {}
        setup = Setup({t: list(d) for t, d in sites.items()}, budget, synthetic=synthetic,
                      mixed_task=mixed_task)
    else:
        budget = Budget(rounds=args.rounds or Budget().rounds)
        setup = site_setup({t: [args.data_root / s for s in names]
                            for t, names in TASKS.items()}, budget)
        sites, synthetic = setup.sites, setup.synthetic
        mixed_task, scale_task = MIXED_TASK, SCALE_TASK
        sizes, sampled, backbones = SCALE_SIZES, SCALE_SAMPLED, BYTE_BACKBONES
        # --part tiny leaves the foundation's tables in the file as they are
        where = ("the table below" if args.foundation or args.part
                 else "run with `--foundation`")
        left_out = {t: f"{why} ({where})" for t, why in LEFT_OUT.items()}
    res: dict[str, Any] = {"seeds": list(args.seeds), "budget": asdict(budget),
                           "tasks": list(sites), "synthetic": synthetic, "left_out": left_out,
                           "jobs": {}, "bytes": [], "scale": [], "mixed_task": mixed_task,
                           "scale_task": scale_task}
    cmd = ["python -m simulations.federated_lora_bench", "--seeds",
           *map(str, args.seeds)]
    cmd += ["--quick"] if args.quick else []
    cmd += [f"--rounds {args.rounds}"] if args.rounds else []
    cmd += [f"--jobs {args.jobs}"] if args.jobs > 1 else []
    cmd += ["--foundation"] if args.foundation or args.part not in (None, TINY_PART) else []
    cmd += [f"--part {args.part}"] if args.part else []
    cmd += [f"--out {_rel(args.out)}"]
    res.update(command=" ".join(cmd), date=time.strftime("%Y-%m-%d"))
    note = (f"This table alone was rerun by `{res['command']}` on {res['date']}; the "
            "section's other tables are from the run named above.")
    if args.part == TINY_PART:
        res.update(run_tiny(setup, args.seeds, work, args.jobs))
        for sub in tiny_alone(res, args.seeds, asdict(budget), note):
            insert_subsection(args.out, sub)
        print(f"replaced the tiny backbone's tables in {args.out}")
        return res
    if args.part:
        key = PARTS[args.part]
        part = foundation_runs(sites if args.quick else None, args.data_root, budget,
                               args.seeds, work, args.jobs)[key]()
        # render puts the last part just before the bytes table, so a file written before
        # that part existed takes its table there; any other part's table must be in the
        # file (a changed heading is an error, not a second table) unless --new-table says
        # it is new (parts are added at the end of PARTS: add several in that order)
        new = args.new_table or key == list(PARTS.values())[-1]
        for sub in part_alone(part, key, args.seeds, asdict(budget), note):
            insert_subsection(args.out, sub, before=BYTES_HEADING if new else None)
        print(f"replaced the table of part {args.part!r} in {args.out}")
        return {**res, key: part}
    if "rules" not in args.skip:
        res.update(run_tiny(setup, args.seeds, work, args.jobs))
        if args.foundation:
            runs = foundation_runs(sites if args.quick else None, args.data_root, budget,
                                   args.seeds, work, args.jobs)
            for name, run in runs.items():
                res[name] = run()
    if "bytes" not in args.skip:
        cached = work / "bytes.json"
        if not cached.is_file():
            cached.write_text(json.dumps(bytes_rows(backbones)))
        res["bytes"] = json.loads(cached.read_text())
    if "scale" not in args.skip:
        rows, site_json = read_rows(setup.sites[scale_task])
        res["scale"] = [run_scale(n, rows, site_json, setup, args.seeds[0], work, sampled)
                        for n in sizes]
        res["scale_data"] = ("SYNTHETIC" if synthetic.get(scale_task)
                             else f"real rows of {', '.join(d.name for d in sites[scale_task])}")
        res["scale_sampled"], res["scale_seed"] = sampled, args.seeds[0]
    res["wall_min"] = (time.perf_counter() - start) / 60
    (work / "results.json").write_text(json.dumps(res, indent=1, default=str))
    if "rules" not in args.skip and "bytes" not in args.skip and "scale" not in args.skip:
        insert_section(args.out, render(res))
        print(f"wrote the section {HEADING!r} into {args.out}")
    elif set(args.skip) == {"rules", "scale"}:  # the bytes table alone: it needs no training
        note = (f"This table alone was rerun by `{res['command']} --skip rules scale` on "
                f"{res['date']}; the section's other tables are from the run named above.")
        insert_subsection(args.out, "\n".join(_bytes_lines(res["bytes"], note)))
        print(f"replaced the bytes table in {args.out}")
    return res


if __name__ == "__main__":
    main()
