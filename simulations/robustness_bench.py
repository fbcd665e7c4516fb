"""Poisoning robustness: one of five sites sends poisoned updates (SYNTHETIC).

Five sites share one tabular classification task (SYNTHETIC, seeded): each site's label follows
one shared linear direction plus noise, with its own feature mean and decision threshold, so the
sites are heterogeneous (covariate and label shift), as hospitals are. One site is an attacker:
every round it trains honestly, then returns ``global + FACTOR * (trained - global)`` instead of
its trained skill. The three attacks the issue names are measured separately:

* ``sign flip``:       FACTOR = -1  (update reversed, same norm as an honest one);
* ``x10 scaled``:      FACTOR = +10 (update in the honest direction, ten times too long);
* ``sign flip, x10``:  FACTOR = -10 (both).

Each attack is run with FedAvg, coordinate-wise median and trimmed mean (``trim_fraction=0.2``),
each without and with the server's update-norm bound (``strategy.max_update_norm``). Clean runs
(no attacker) of the three rules and FedAvg without the attacker's site at all are the
references. Every run is the real ServerApp logic and ClientApp over the in-process grid (the
same code as a deployment, without processes).

The norm bound is not tuned on the test metric: per seed it is ``BOUND_MULTIPLE`` times the
median L2 norm of the (all honest) site updates seen in that seed's clean FedAvg run, i.e. what an
operator would set from a pilot run's training traffic. Its rejections (site and reason) are read
back from the run's ``rounds.jsonl``.

Metric: the run's task metric, test ROC AUC after the last round (each site's held-out test
split, which no training or validation step reads; example-weighted over the five sites as in
``results.json``), mean over seeds, with per-seed deltas against clean FedAvg on the same data.
A diagnostic that does not use test data is added: how far each round's aggregated step lies from
the mean of the four honest sites' updates (relative L2 error, and the step's length along the
honest mean direction).

Writes ``simulations/results/robustness.md`` (the BENCHMARKS section). Usage::

    python -m simulations.robustness_bench [--rounds 8] [--seeds 0 1 2] [--jobs 2] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import statistics
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simulations.report import mean_std, write_synthetic_site
from unicon_core.federation.validation import update_norm
from unicon_flower.inprocess import FIRST_NODE

RESULTS = Path(__file__).resolve().parent / "results" / "robustness.md"
TASK = "synth_cls"
FEATURES = [f"x{i}" for i in range(6)]
SITES = 5
ATTACKER = 4  # index of the poisoned site
TRAIN_ROWS, VAL_ROWS, TEST_ROWS = 60, 30, 120  # per site
GOAL_POINTS = 2.0  # the goal: robust rules within 2 AUC points of clean training
TRIM_FRACTION = 0.2  # configs/strategy/trimmed_mean.yaml's default, which the runs use
BOUND_MULTIPLE = 3.0  # norm bound = this x the median honest update norm of the clean run
RULES = {"fedavg": "FedAvg", "median": "median", "trimmed_mean": "trimmed mean (0.2)"}
#: attack name -> FACTOR in ``global + FACTOR * update``
ATTACKS = {"sign flip": -1.0, "x10 scaled": 10.0, "sign flip, x10": -10.0}

Arrays = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Config:
    """One run: aggregation rule, attack (None: clean), norm bound, number of sites."""

    strategy: str  # hydra strategy group
    attack: str | None = None  # key of ATTACKS
    bounded: bool = False  # set strategy.max_update_norm from the clean run's update norms
    sites: int = SITES  # 4: the attacker's site is absent altogether

    @property
    def label(self) -> str:
        """Row label."""
        if self.sites != SITES:
            return f"{RULES[self.strategy]}, attacker's site absent ({self.sites} sites)"
        what = "clean" if self.attack is None else self.attack
        return f"{RULES[self.strategy]}, {what}" + (", norm bound" if self.bounded else "")


REFERENCE = Config("fedavg")  # clean FedAvg: the reference of every delta; calibrates the bound
CLEAN = [REFERENCE, Config("median"), Config("trimmed_mean"), Config("fedavg", sites=SITES - 1)]
ATTACKED = [Config(rule, attack, bounded) for attack in ATTACKS for bounded in (False, True)
            for rule in RULES]
CONFIGS = CLEAN + ATTACKED


# ------------------------------------------------------------------------------ pure functions
def norm_bound(norms: Iterable[float], multiple: float = BOUND_MULTIPLE) -> float:
    """The update-norm bound: ``multiple`` x the median of honest update norms."""
    values = [float(v) for v in norms]
    if not values or multiple <= 0:
        raise ValueError(f"need honest update norms and a positive multiple, got {values}, "
                         f"{multiple}")
    return multiple * statistics.median(values)


def step_error(start: Arrays, aggregate: Arrays, honest: Sequence[Arrays]) -> tuple[float, float]:
    """How the aggregated step compares with the mean honest update.

    Returns ``(relative error, projection)``: ``|step - h| / |h|`` and ``<step, h> / |h|^2``,
    where ``step = aggregate - start`` and ``h`` the mean of ``honest - start`` (flattened over
    keys). 0 and 1 for an aggregate equal to the honest mean; a projection below 1 is a shorter
    step along the honest direction, a negative one a step against it.
    """
    keys = sorted(start)

    def flat(state: Arrays) -> np.ndarray:
        return np.concatenate([np.asarray(state[k], np.float64).ravel()
                               - np.asarray(start[k], np.float64).ravel() for k in keys])

    h = np.mean([flat(s) for s in honest], axis=0)
    step = flat(aggregate)
    hh = float(h @ h)
    if not hh > 0:
        return math.nan, math.nan
    return float(np.linalg.norm(step - h) / math.sqrt(hh)), float(step @ h / hh)


# ------------------------------------------------------------------------------ data and runs
def task_spec_dict() -> dict[str, Any]:
    """The synthetic task (clinical modality: one token per feature)."""
    return {
        "name": TASK, "kind": "classification", "modality": "clinical", "spatial_dims": 0,
        "input_size": [len(FEATURES)], "num_classes": 2, "feature_names": list(FEATURES),
        "lora": {"rank": 4, "alpha": 8.0, "dropout": 0.0, "targets": ["qkv", "linear1"]},
    }


def make_sites(root: Path, seed: int) -> list[Path]:
    """Five SYNTHETIC site folders: label = 1[(x - site mean) . w + noise > 0], w shared.

    Sites differ in feature mean (covariate shift) and hence in decision threshold; rows are
    split ``TRAIN_ROWS`` / ``VAL_ROWS`` / ``TEST_ROWS`` (test only ever read by evaluation).
    """
    from unicon_core.config import TaskSpec

    rng = np.random.default_rng(seed)
    weights = rng.normal(size=len(FEATURES))
    spec = TaskSpec.from_dict(task_spec_dict())
    rows = TRAIN_ROWS + VAL_ROWS + TEST_ROWS
    splits = ["train"] * TRAIN_ROWS + ["val"] * VAL_ROWS + ["test"] * TEST_ROWS
    dirs = []
    for s in range(SITES):
        name = f"site_{s}"
        x = rng.normal(loc=0.3 * (s - 2), size=(rows, len(FEATURES)))  # sites differ in mean
        y = (x @ weights + 0.5 * rng.normal(size=rows) > x.mean(0) @ weights).astype(int)
        table = [{"id": f"{name}-{i}", "split": splits[i],
                  **{f: f"{x[i, j]:.5f}" for j, f in enumerate(FEATURES)}, "label": y[i]}
                 for i in range(rows)]
        dirs.append(write_synthetic_site(root / name, spec, "simulations.robustness_bench",
                                         "SYNTHETIC linear-rule classification", table))
    return dirs


def _arrays(msg: Any) -> dict[str, np.ndarray]:
    from unicon_flower.records import record_to_arrays

    return record_to_arrays(msg.content.array_records["skill"])


def step_diagnostics(exchanges: Sequence[Any], attacker_node: int) -> list[tuple[float, float]]:
    """Per round: :func:`step_error` of the aggregate (the next evaluate instruction's skill)
    against the honest (non-attacker) sites' train replies."""
    train: dict[int, list[Any]] = {}
    after: dict[int, dict[str, np.ndarray]] = {}
    for ex in exchanges:
        kind = ex.instruction.metadata.message_type
        if kind not in ("train", "evaluate") or "skill" not in ex.instruction.content.array_records:
            continue
        rnd = int(ex.instruction.content.config_records["config"]["server-round"])
        if kind == "evaluate":
            after.setdefault(rnd, _arrays(ex.instruction))
        else:
            train.setdefault(rnd, []).append(ex)
    out = []
    for rnd, exs in sorted(train.items()):
        honest = [_arrays(ex.reply) for ex in exs if ex.node_id != attacker_node
                  and not ex.reply.has_error() and "skill" in ex.reply.content.array_records]
        if rnd in after and honest:
            out.append(step_error(_arrays(exs[0].instruction), after[rnd], honest))
    return out


def run_one(cfg: Config, site_dirs: Sequence[Path], run_dir: Path, rounds: int, seed: int,
            bound: float | None = None) -> dict[str, Any]:
    """One federated run: final metric, update norms, rejections, step diagnostics."""
    import torch

    from client.mods.attack import UpdateAttack
    from unicon_core.federation.outputs import read_jsonl
    from unicon_flower.runner import RunSettings, node_configs, run_overrides

    torch.set_num_threads(1)
    logging.getLogger("flwr").setLevel(logging.WARNING)  # keeps rejections (ERROR) visible
    bound_override = () if bound is None else (f"strategy.max_update_norm={bound!r}",)
    settings = RunSettings(base=("experiment=demo", f"strategy={cfg.strategy}", *bound_override,
                                 "train.max_steps=10"),
                           seed=seed, rounds=rounds, batch_size=16, lr=0.005)
    overrides = settings.overrides(site_dirs, run_dir)
    attacker = FIRST_NODE + ATTACKER if len(site_dirs) > ATTACKER else -1
    norms: list[tuple[int, int, float]] = []
    factor = ATTACKS[cfg.attack] if cfg.attack is not None else None
    attack = UpdateAttack(factor, [attacker], observe=lambda rnd, node, sent, trained:
                          norms.append((rnd, node, update_norm(sent, trained))))
    start, cpu = time.perf_counter(), time.process_time()
    grid = run_overrides(overrides, len(site_dirs), mods=[attack],
                         configs=node_configs(len(site_dirs)))
    seconds, cpu_s = time.perf_counter() - start, time.process_time() - cpu
    results = json.loads((run_dir / "results.json").read_text())
    rows = read_jsonl(run_dir / "rounds.jsonl")
    curve = [r["tasks"][TASK].get("auc") for r in rows]
    attacker_site = f"site_{ATTACKER}"
    rejected = [(r["round"], site, e.get("reason", "")) for r in rows
                for site, e in r.get("sites", {}).items() if e.get("status") == "rejected"]
    per_site = results["tasks"][TASK]["per_site"]
    honest = [v for site, v in per_site.items() if site != attacker_site]
    steps = step_diagnostics(grid.exchanges, attacker)
    return {
        "value": results["tasks"][TASK]["value"], "honest": statistics.mean(honest),
        "curve": curve, "seconds": seconds, "cpu_s": cpu_s, "bound": bound,
        "norms": [n for _, node, n in norms if node != attacker or factor is None],
        "attacker_rejected": sum(site == attacker_site for _, site, _ in rejected),
        "honest_rejected": sum(site != attacker_site for _, site, _ in rejected),
        "reasons": sorted({f"{site}: {why}" for _, site, why in rejected})[:1],
        "step_error": [e for e, _ in steps], "projection": [p for _, p in steps],
    }


def _job(cfg: Config, seed: int, work: Path, rounds: int, index: int,
         bound: float | None) -> tuple[Config, int, dict[str, Any]]:
    sites = work / f"seed{seed}" / "sites"
    dirs = sorted(sites.glob("site_*"))[:cfg.sites]
    out = run_one(cfg, dirs, work / f"seed{seed}" / f"run{index}", rounds, seed, bound)
    return cfg, seed, out


def run_all(seeds: Sequence[int], rounds: int, work: Path, jobs: int
            ) -> tuple[dict[tuple[Config, int], dict[str, Any]], dict[int, float]]:
    """Every configuration for every seed, ``jobs`` runs at a time; bounded runs start once
    their seed's clean FedAvg run has given the honest update norms."""
    for seed in seeds:
        make_sites(work / f"seed{seed}" / "sites", seed)
    index = {cfg: i for i, cfg in enumerate(CONFIGS)}
    unbounded = [(cfg, seed) for cfg in CONFIGS if not cfg.bounded for seed in seeds]
    bounded = {seed: [cfg for cfg in CONFIGS if cfg.bounded] for seed in seeds}
    out: dict[tuple[Config, int], dict[str, Any]] = {}
    bounds: dict[int, float] = {}
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        pending: set[Future[Any]] = {
            pool.submit(_job, cfg, seed, work, rounds, index[cfg], None)
            for cfg, seed in unbounded
        }
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                cfg, seed, res = fut.result()
                out[(cfg, seed)] = res
                print(f"seed {seed} {cfg.label}: AUC {res['value']:.3f} "
                      f"({res['seconds']:.0f} s)", flush=True)
                if cfg == REFERENCE:
                    bounds[seed] = norm_bound(res["norms"])
                    pending |= {pool.submit(_job, c, seed, work, rounds, index[c], bounds[seed])
                                for c in bounded[seed]}
    return out, bounds


# ------------------------------------------------------------------------------ report
def _pts(value: float) -> str:
    return f"{100 * value:+.1f}"


def _median_of(out: Mapping[tuple[Config, int], Mapping[str, Any]], cfg: Config,
               seeds: Sequence[int], key: str) -> float:
    values = [v for s in seeds for v in out[(cfg, s)][key] if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def report(out: Mapping[tuple[Config, int], Mapping[str, Any]], bounds: Mapping[int, float],
           rounds: int, seeds: Sequence[int], wall_s: float, jobs: int) -> str:
    """The markdown section; every number and verdict is computed from ``out``."""
    def vals(cfg: Config, key: str) -> list[float]:
        return [out[(cfg, s)][key] for s in seeds]

    def deltas(cfg: Config, key: str = "value") -> list[float]:
        return [out[(cfg, s)][key] - out[(REFERENCE, s)][key] for s in seeds]

    def diag(cfg: Config) -> str:
        return (f"{_median_of(out, cfg, seeds, 'step_error'):.2f} | "
                f"{_median_of(out, cfg, seeds, 'projection'):.2f}")

    clean_norms = [n for s in seeds for n in out[(REFERENCE, s)]["norms"]]
    cpu = [r["cpu_s"] for r in out.values() if "cpu_s" in r]
    cpu_note = (f" ({sum(cpu) / 60:.1f} CPU-min in the runs themselves, on a machine shared "
                "with other jobs)") if len(cpu) == len(out) else ""
    lines = [
        "## Robustness to a poisoned site (SYNTHETIC)",
        "",
        f"`python -m simulations.robustness_bench` - 5 sites, one task (SYNTHETIC linear-rule "
        f"tabular classification; per site {TRAIN_ROWS} train / {VAL_ROWS} val / {TEST_ROWS} "
        f"test rows, site feature means and decision thresholds shifted apart), {rounds} rounds, "
        f"seeds {list(seeds)}; {len(out)} federated runs (real ServerApp logic and ClientApp "
        f"over the in-process grid) took {wall_s / 60:.1f} min with {jobs} parallel run(s)"
        f"{cpu_note}. The attacker (site_{ATTACKER}) trains honestly, then returns "
        "`global + FACTOR x (its update)` every round: sign flip (FACTOR -1), x10 scaled "
        "(+10) or both (-10). Metric: test ROC AUC after the last round on the sites' held-out "
        "test splits (x100), example-weighted over all 5 sites as in `results.json`; "
        "delta = paired difference to clean FedAvg on the same seed's data, mean over seeds "
        "(min..max over seeds in brackets).",
        "",
        f"Norm bound (`strategy.max_update_norm`): per seed, {BOUND_MULTIPLE:g} x the median L2 "
        "norm of the site updates in that seed's clean FedAvg run (training traffic only, never "
        "the test metric): "
        + ", ".join(f"seed {s}: {bounds[s]:.3g}" for s in seeds)
        + f". Honest update norms in the clean runs: median {statistics.median(clean_norms):.3g}, "
        f"max {max(clean_norms):.3g}.",
        "",
        "Step error / projection (diagnostic from the training traffic, not the test set): "
        "medians over rounds and seeds of |aggregated step - mean honest update| / |mean "
        "honest update| and of the aggregated step's length along the mean honest update "
        "(0 and 1: the aggregate is the mean of the four honest sites' updates).",
        "",
        "Clean references (no attacker):",
        "",
        "| configuration | AUC, 5 sites (mean ± sd over seeds) | delta [min..max] | "
        f"AUC, 4 honest sites | step error | projection | AUC per round, 5 sites (seed "
        f"{seeds[0]}) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for cfg in CLEAN:
        m, sd = mean_std(vals(cfg, "value"))
        hon = statistics.mean(vals(cfg, "honest"))
        curve = " ".join("n/a" if v is None else f"{100 * v:.0f}"
                         for v in out[(cfg, seeds[0])]["curve"])
        if cfg.sites == SITES:
            d = deltas(cfg)
            first = (f"{100 * m:.1f} ± {100 * sd:.1f} | {_pts(statistics.mean(d))} "
                     f"[{_pts(min(d))}..{_pts(max(d))}]")
        else:
            first, curve = "n/a (4 sites) | n/a", f"({curve}: 4 sites)"
        lines.append(f"| {cfg.label} | {first} | {100 * hon:.1f} | {diag(cfg)} | {curve} |")
    lines += [
        "",
        "With one attacker. Rejected: the server's rejections over all rounds and seeds (of "
        f"{rounds * len(seeds)} attacker and {rounds * len(seeds) * (SITES - 1)} honest "
        f"updates per row). Within {GOAL_POINTS:g}: mean delta >= -{GOAL_POINTS:g}.",
        "",
        "| attack | rule | bound | AUC, 5 sites | delta [min..max] | delta, 4 honest sites | "
        f"within {GOAL_POINTS:g} | rejected: attacker, honest | step error | projection |",
        "|---|---|---|---:|---:|---:|---|---|---:|---:|",
    ]
    verdicts: dict[Config, bool] = {}
    for cfg in ATTACKED:
        d = deltas(cfg)
        dh = statistics.mean(deltas(cfg, "honest"))
        ok = statistics.mean(d) >= -GOAL_POINTS / 100
        verdicts[cfg] = ok
        rej_a = sum(vals(cfg, "attacker_rejected"))
        rej_h = sum(vals(cfg, "honest_rejected"))
        lines.append(
            f"| {cfg.attack} | {RULES[cfg.strategy]} | {'yes' if cfg.bounded else 'no'} | "
            f"{100 * statistics.mean(vals(cfg, 'value')):.1f} | {_pts(statistics.mean(d))} "
            f"[{_pts(min(d))}..{_pts(max(d))}] | {_pts(dh)} | {'yes' if ok else 'no'} | "
            f"{rej_a}, {rej_h} | {diag(cfg)} |")
    reasons = sorted({r for cfg in ATTACKED for s in seeds for r in out[(cfg, s)]["reasons"]})
    lines += ["", _reading(out, verdicts, seeds, rounds, reasons), ""]
    return "\n".join(lines)


def _reading(out: Mapping[tuple[Config, int], Mapping[str, Any]], verdicts: Mapping[Config, bool],
             seeds: Sequence[int], rounds: int, reasons: Sequence[str]) -> str:
    """The 'Reading' paragraph, built from the numbers (no fixed conclusions)."""
    def d(cfg: Config) -> list[float]:
        return [out[(cfg, s)]["value"] - out[(REFERENCE, s)]["value"] for s in seeds]

    def names(cfgs: Iterable[Config]) -> str:
        items = []
        for c in cfgs:
            below = sum(v < -GOAL_POINTS / 100 for v in d(c))
            items.append(f"{RULES[c.strategy]} ({_pts(statistics.mean(d(c)))}, below "
                         f"-{GOAL_POINTS:g} in {below} of {len(seeds)} seeds)")
        return "; ".join(items) if items else "none"

    parts = ["Reading (generated from the numbers above):"]
    for attack in ATTACKS:
        for bounded in (False, True):
            cfgs = [c for c in ATTACKED if c.attack == attack and c.bounded == bounded]
            robust = [c for c in cfgs if c.strategy != "fedavg"]
            fedavg = next(c for c in cfgs if c.strategy == "fedavg")
            rej = sum(out[(c, s)]["attacker_rejected"] for c in cfgs for s in seeds)
            parts.append(
                f"*{attack}, {'with' if bounded else 'without'} the norm bound*: FedAvg "
                f"{_pts(statistics.mean(d(fedavg)))}; within {GOAL_POINTS:g} points: "
                f"{names(c for c in robust if verdicts[c])}; missed: "
                f"{names(c for c in robust if not verdicts[c])}"
                + (f"; attacker's updates rejected {rej} of {len(cfgs) * len(seeds) * rounds}"
                   if bounded else "") + ".")
    honest_rej = sum(out[(c, s)]["honest_rejected"] for c in ATTACKED for s in seeds)
    parts.append(f"Honest updates rejected by the bound: {honest_rej}.")
    if reasons:
        parts.append(f"Example of the logged rejection: `{reasons[0]}`.")
    clean_robust = [c for c in CLEAN if c.strategy != "fedavg"]
    floor = [v for c in clean_robust for v in d(c)]
    parts.append(
        f"Noise: clean FedAvg's AUC sd across seeds is "
        f"{100 * mean_std([out[(REFERENCE, s)]['value'] for s in seeds])[1]:.1f} points; "
        f"without any attack, median and trimmed mean differ from FedAvg by {_pts(min(floor))} "
        f"to {_pts(max(floor))} points per seed.")
    for rule in ("median", "trimmed_mean"):
        proj = {c.attack: _median_of(out, c, seeds, "projection") for c in ATTACKED
                if c.strategy == rule and not c.bounded}
        clean = _median_of(out, next(c for c in CLEAN if c.strategy == rule), seeds,
                           "projection")
        parts.append(
            f"{RULES[rule]}'s step along the honest mean: clean {clean:.2f}, "
            + ", ".join(f"{a} {p:.2f}" for a, p in proj.items()) + ".")
    if int(TRIM_FRACTION * (SITES - 1)) == 0:
        parts.append(
            f"Once the bound rejects the attacker, trimmed mean ({TRIM_FRACTION:g}) over the "
            f"{SITES - 1} remaining sites trims nothing (floor({TRIM_FRACTION:g} x "
            f"{SITES - 1}) = 0) and equals their mean.")
    parts.append(
        "Median and trimmed mean use only the order of each coordinate's values: an attacker "
        "whose value sits at one end of a coordinate shifts the chosen value to an off-centre "
        "honest one whatever its magnitude, and a sign-flipped update has an honest norm, so "
        "the norm bound cannot reject it; the bound only removes updates longer than honest "
        "ones. SYNTHETIC data, one attacker of five, non-adaptive attacks.")
    return " ".join(parts)


def main(argv: Sequence[str] | None = None) -> None:
    """Run every configuration for every seed and write the markdown section."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (processes)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="absolute folder for sites and runs (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--report-only", type=Path, default=None, metavar="RAW_JSON",
                        help="only render the section from a --work-dir's raw.json")
    args = parser.parse_args(argv)
    if args.report_only is not None:  # re-render a saved run (raw.json) without training
        raw = json.loads(args.report_only.read_text())
        out = {(Config(**r["config"]), r["seed"]): r["result"] for r in raw["runs"]}
        bounds = {int(k): v for k, v in raw["bounds"].items()}
        text = report(out, bounds, raw["rounds"], raw["seeds"], raw["wall_s"], raw["jobs"])
    else:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="unicon-robustness-") as tmp:
            work = (args.work_dir or Path(tmp)).resolve()
            out, bounds = run_all(args.seeds, args.rounds, work, args.jobs)
            wall_s = time.perf_counter() - start
            (work / "raw.json").write_text(json.dumps({
                "rounds": args.rounds, "seeds": args.seeds, "jobs": args.jobs, "wall_s": wall_s,
                "bounds": bounds, "runs": [{"config": asdict(c), "seed": s, "result": r}
                                           for (c, s), r in out.items()]}))
        text = report(out, bounds, args.rounds, args.seeds, wall_s, args.jobs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
