"""The forgetting regime of issue #15: retention methods for a foundation refined across stages.

Usage::

    python -m simulations.forgetting_bench [--seeds 0 1 2] [--quick] [--methods NAME ...]
        [--data-root DIR] [--runs-dir DIR] [--out BENCHMARKS.md] [--report-only RESULTS_JSON]
        [--merge RESULTS_JSON ...] [--experiment NAME]

Runs the stages of ``configs/experiment/continual_forgetting_fm.yaml`` (``--experiment``: two
stages on the pretrained MRI foundation, tissue segmentation then tumour classification, at a
budget where naive sequential fine-tuning forgets; ``continual_forgetting`` is the earlier regime
on the tiny random transformer, which did not) with every method of :data:`METHODS`, each seed,
same data and budget, on the product's federation. Everything goes to
``<runs-dir>/<time>-forgetting/`` (stage runs, ``results.json``); the "Forgetting regime (#15)"
section of ``--out`` is the only file written outside it. ``--quick`` runs one round of two local
steps per stage (a smoke test, not a result).
Seeds can run in separate processes (``--seeds 0 --out /tmp/s0.md``, ...) and be joined with
``--merge`` (their ``results.json`` files, seed order kept), which writes the section.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from simulations.report import cpu_name, fmt, insert_section, mean_std

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "continual_forgetting_fm"
HEADING = "## Forgetting regime (#15)"
log = logging.getLogger(__name__)
#: The seeds' claim for MedSeqFT: +3.0 % Dice over naive sequential fine-tuning, read as +0.03
#: absolute Dice on each segmentation task.
CLAIM_DICE = 0.03
#: BWT below which a naive method "measurably forgets" (issue #15, item 1).
FORGETS_BELOW = -0.05


@dataclass(frozen=True)
class Method:
    """One row of the table: a continual strategy and its foundation-refinement plugins."""

    name: str
    label: str
    strategy: str
    plugins: tuple[str, ...] = ()
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: str = ""


#: Realign is attached to isolated (identity guaranteed: raises if any output moved) and to the
#: plain refined run with ``retune: false`` (re-validation only: its matrix is unchanged), so
#: both report without extra training; ``refined_realign`` re-tunes (an extra round per task).
METHODS: list[Method] = [
    Method("isolated", "isolated skills (frozen foundation)", "isolated", ("realign",),
           {"realign": {"guarantee_identical": True}}, "unicon"),
    Method("naive_sequential", "naive sequential: shared adapter", "naive_sequential"),
    Method("refined", "naive sequential: refined backbone, no plugin", "refined", ("realign",),
           {"realign": {"retune": False}}),
    Method("refined_lwf", "refined + LwF", "refined", ("lwf",), {},
           "Li & Hoiem, Learning without Forgetting, ECCV 2016"),
    Method("refined_ewc", "refined + EWC", "refined", ("ewc",), {},
           "Kirkpatrick et al., Overcoming catastrophic forgetting, PNAS 2017"),
    Method("medseqft", "refined + MedSeqFT (MDS + K&G RFT KD)", "refined", ("mds", "kd"),
           {"mds": {"stats_from_first_stage": True, "k": 16}, "kd": {"use_mds": True}},
           "MedSeqFT, arXiv 2509.06096"),
    Method("retrieval", "refined + retrieval-guided KD", "refined", ("retrieval",),
           {"retrieval": {"remember": True, "shared": True}},
           "retrieval-guided continual learning, arXiv 2512.13072"),
    Method("refined_realign", "refined + realign (re-validate, re-tune: +1 round per earlier "
           "task, outside the budget)", "refined",
           ("realign",), {"realign": {"tolerance": 0.0}}),
]
BY_NAME = {m.name: m for m in METHODS}
#: Reference for forward transfer (the frozen foundation) and the naive baselines.
REFERENCE, NAIVE_ADAPTER, NAIVE_BACKBONE = "isolated", "naive_sequential", "refined"
#: Not retention methods of the same budget: the reference, the naive baselines, and re-tuning
#: (extra training rounds); never "the best retention method".
NOT_RETENTION = (REFERENCE, NAIVE_ADAPTER, NAIVE_BACKBONE, "refined_realign")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--quick", action="store_true", help="1 round x 2 local steps per stage")
    p.add_argument("--methods", nargs="+", default=[m.name for m in METHODS],
                   choices=[m.name for m in METHODS])
    p.add_argument("--data-root", type=Path, default=REPO / "demo_data")
    p.add_argument("--runs-dir", type=Path, default=REPO / "runs")
    p.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    p.add_argument("--report-only", type=Path, default=None, metavar="RESULTS_JSON",
                   help="re-render the section from a finished run's results.json")
    p.add_argument("--merge", type=Path, nargs="+", default=None, metavar="RESULTS_JSON",
                   help="join finished runs of other seeds (same methods) and write the section")
    p.add_argument("--override", nargs="*", default=[], help="extra hydra overrides")
    p.add_argument("--experiment", default=EXPERIMENT,
                   help=f"the regime's experiment config (default {EXPERIMENT})")
    return p.parse_args(argv)


def regime(data_root: Path, overrides: Sequence[str] = (), quick: bool = False,
           seeds: Sequence[int] | None = None,
           experiment: str = EXPERIMENT) -> tuple[Any, Any, list[str]]:
    """The regime's validated ``ContinualConfig``, backbone and hydra overrides."""
    from omegaconf import OmegaConf

    from unicon_core.continual.stages import ContinualConfig
    from unicon_core.hydra_config import backbone_config, load_config

    hydra = [f"experiment={experiment}", f"federation.data_root='{data_root}'", *overrides]
    composed = load_config(hydra)
    section: dict[str, Any] = OmegaConf.to_container(composed.continual, resolve=True)  # type: ignore[assignment]
    section["data_root"] = str(data_root)
    if quick:
        section.update(rounds=1, local_steps=2)
    if seeds:
        section["seeds"] = list(seeds)
    return ContinualConfig.from_dict(section), backbone_config(composed), hydra


def backbone_label(backbone: Any) -> str:
    """The backbone in words, per modality where the config gives a modality its own."""
    def one(name: str, options: dict[str, Any], width: int, depth: int) -> str:
        if name == "transformer":
            return f"transformer {width}x{depth}"
        extra = ", ".join(f"{k} {v}" for k, v in sorted(options.items()))
        return f"{name} ({extra})" if extra else name

    base = one(backbone.name, dict(backbone.options), backbone.hidden_size, backbone.num_layers)
    own = [f"{m}: " + one(str(v.get("name", "transformer")), dict(v.get("options", {})),
                          int(v.get("hidden_size", backbone.hidden_size)),
                          int(v.get("num_layers", backbone.num_layers)))
           for m, v in sorted(backbone.modalities.items())]
    return "; ".join([*own, f"other modalities: {base}"]) if own else base


def run_method(method: Method, cfg: Any, backbone: Any, overrides: list[str], run_dir: Path,
               seed: int, sites: dict[str, Any]) -> dict[str, Any]:
    """One method through every stage with ``seed``; its result with the realign reports."""
    from unicon_core.continual.baselines import CONTINUAL_STRATEGIES
    from unicon_core.continual.plugins import RealignPlugin, build_plugins
    from unicon_core.continual.runner import run_continual
    from unicon_flower.continual import make_context

    mcfg = replace(cfg, plugins=list(method.plugins), plugin_options=dict(method.options))
    ctx = make_context(mcfg, seed, backbone, run_dir / f"{method.name}_seed{seed}", overrides,
                       sites)
    plugins = build_plugins(mcfg.plugins, mcfg.plugin_options)
    log.info("forgetting regime: %s, seed %d", method.name, seed)
    result = run_continual(CONTINUAL_STRATEGIES[method.strategy](), ctx, plugins).to_dict()  # type: ignore[arg-type]
    result["method"] = method.name
    result["side_bytes"] = side_bytes(plugins, mcfg)
    result["realign"] = [[asdict(r) for r in stage] for p in plugins
                         if isinstance(p, RealignPlugin) for stage in p.reports]
    (ctx.run_dir / "continual.json").write_text(json.dumps(result, indent=1))
    return result


def side_bytes(plugins: Sequence[Any], cfg: Any) -> dict[str, int]:
    """Bytes the plugins' site statistics would take as federated messages over the run (here
    they are handed over in process, outside Flower): float64 FeatureStats of each first-stage
    site up and the merged statistics down to every later joining site (MDS); each earlier
    site's prototypes up and the memory of earlier stages down to every later joining site
    (retrieval, shared); each site's diagonal Fisher up after every stage but the last, and the
    consolidated Fisher down to every later joining site (EWC)."""
    from unicon_core.continual.plugins.ewc import EWCPlugin
    from unicon_core.continual.plugins.mds import MDSPlugin
    from unicon_core.continual.plugins.retrieval import RetrievalKDPlugin

    def nbytes(tensors: Any) -> int:
        return sum(t.numel() * t.element_size() for t in tensors)

    stages = [list(stage.sites) for stage in cfg.stages]
    later = [sum(len(s) for s in stages[j + 1:]) for j in range(len(stages))]
    out: dict[str, int] = {}
    for plugin in plugins:
        if isinstance(plugin, MDSPlugin) and plugin.stats is not None:
            one = nbytes([plugin.stats.mean, plugin.stats.cov]) + 8
            out["mds"] = one * (len(stages[0]) + later[0])
        elif isinstance(plugin, RetrievalKDPlugin) and plugin.memory.items:
            up = down = 0
            for j, sites in enumerate(stages[:-1]):
                kept = nbytes(t for site in sites for levels in
                              plugin.memory.items.get(site, {}).values() for t in levels)
                up += kept
                down += kept * later[j]
            out["retrieval"] = up + down
        elif isinstance(plugin, EWCPlugin) and plugin.fisher:
            one = nbytes(plugin.fisher.values())
            out["ewc"] = one * (sum(len(s) for s in stages[:-1]) + later[0])
    return out


def test_sizes(cfg: Any, sites: dict[str, Any]) -> dict[str, Any]:
    """Held-out test rows per task and site, and which tasks are synthetic."""
    n: dict[str, dict[str, int]] = {}
    synthetic = set()
    for name, site in sites.items():
        task = site.task_spec.name
        n.setdefault(task, {})[name] = len(site.dataset("test", train=False))
        if site.synthetic:
            synthetic.add(task)
    kinds = {s.task_spec.name: str(getattr(s.task_spec.kind, "value", s.task_spec.kind))
             for s in sites.values()}
    return {"test_n": n, "synthetic": sorted(synthetic), "kinds": kinds}


def run(cfg: Any, backbone: Any, overrides: list[str], run_dir: Path, methods: Sequence[str],
        runner: Callable[..., dict[str, Any]] = run_method) -> dict[str, Any]:
    """Every method and seed; ``runner`` is :func:`run_method` (replaceable in tests)."""
    from unicon_core.continual.runner import open_sites

    out: dict[str, Any] = {"methods": list(methods), "seeds": list(cfg.seeds), "runs": {}}
    for seed in cfg.seeds:
        sites = open_sites(cfg, seed)
        out.update(test_sizes(cfg, sites))
        for name in methods:
            t0 = time.perf_counter()
            result = runner(BY_NAME[name], cfg, backbone, overrides, run_dir, seed, sites)
            result.setdefault("wall_s", time.perf_counter() - t0)
            out["runs"].setdefault(name, []).append(result)
            (run_dir / "partial.json").write_text(json.dumps(out, indent=1))
    return out


# ---------------------------------------------------------------- report (pure)
def per_seed_fwt(results: dict[str, Any]) -> dict[str, list[float]]:
    """FWT of every method against the isolated run of the same seed (frozen foundation)."""
    from unicon_core.continual.matrix import fwt_against

    ref = {r["seed"]: r["matrix"] for r in results["runs"].get(REFERENCE, [])}
    return {name: [fwt_against(r["matrix"], ref[r["seed"]]) if r["seed"] in ref else math.nan
                   for r in runs] for name, runs in results["runs"].items()}


def _cell(values: Sequence[float], signed: bool = False) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "n/a"
    m, s = mean_std(finite)
    sign = "+" if signed else ""
    return f"{m:{sign}.3f} ± {s:.3f}"


def _seeds(values: Sequence[float]) -> str:
    return ", ".join("n/a" if not math.isfinite(v) else f"{v:+.3f}" for v in values)


def _label(task: str, results: dict[str, Any]) -> str:
    return f"{task} (SYNTHETIC)" if task in results["synthetic"] else task


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows)]


def _matrix(runs: Sequence[dict[str, Any]], results: dict[str, Any]) -> list[str]:
    first = runs[0]
    rows = []
    for i, task in enumerate(first["order"]):
        cells = []
        for j in range(len(first["stages"])):
            vals = [float(r["matrix"][i][j]) for r in runs]
            cells.append("—" if not any(math.isfinite(v) for v in vals) else fmt(vals))
        rows.append([_label(task, results), *cells])
    return _table(["task \\ after stage", *[f"{j}: {s}" for j, s in
                                            enumerate(first["stages"])]], rows)


def final_of(runs: Sequence[dict[str, Any]], task: str) -> list[float]:
    """Final value of ``task`` per seed."""
    return [float(r["matrix"][r["order"].index(task)][-1]) for r in runs]


def best_method(results: dict[str, Any], fwt: dict[str, list[float]]) -> str | None:
    """The retention method (same budget: not :data:`NOT_RETENTION`) with the highest mean
    BWT."""
    scored = [(mean_std([r["bwt"] for r in rs])[0], n) for n, rs in results["runs"].items()
              if n not in NOT_RETENTION and all(math.isfinite(r["bwt"]) for r in rs)]
    return max(scored)[1] if scored else None


def claim_lines(results: dict[str, Any]) -> list[str]:
    """The seeds' claim (+3 % Dice over naive sequential fine-tuning on segmentation tasks)."""
    runs = results["runs"]
    seg = [t for t, k in results["kinds"].items() if k == "segmentation"
           and t in runs[next(iter(runs))][0]["order"]]
    lines = []
    if not seg:
        return ["No segmentation task in this regime: the +3 % Dice claim cannot be checked."]
    if "medseqft" in runs and NAIVE_BACKBONE in runs:
        diffs = {t: mean_std([a - b for a, b in zip(final_of(runs["medseqft"], t),
                                                    final_of(runs[NAIVE_BACKBONE], t),
                                                    strict=True)])[0] for t in seg}
        met = all(d >= CLAIM_DICE for d in diffs.values())
        lines.append("- **Claim (MedSeqFT vs naive sequential fine-tuning of the same backbone): "
                     + ("met" if met else "MISSED") + "** ("
                     + ", ".join(f"{_label(t, results)} {d:+.3f}" for t, d in diffs.items())
                     + "). Every comparison, the other methods for reference:")
    for naive in (NAIVE_BACKBONE, NAIVE_ADAPTER):
        if naive not in runs:
            continue
        for name in ("medseqft", "retrieval", "refined_lwf", "refined_ewc"):
            if name not in runs:
                continue
            for task in seg:
                diff = [a - b for a, b in zip(final_of(runs[name], task),
                                              final_of(runs[naive], task), strict=True)]
                m = mean_std(diff)[0]
                verdict = "met" if m >= CLAIM_DICE else "**MISSED**"
                lines.append(f"- {BY_NAME[name].label} vs {BY_NAME[naive].label}, "
                             f"{_label(task, results)} final Dice: {m:+.3f} (per seed "
                             f"{_seeds(diff)}); +{CLAIM_DICE:.2f}: {verdict}")
    synthetic = ", ".join(results["synthetic"]) or "none (every task here is real data)"
    lines.append(f"- Synthetic tasks in this regime: {synthetic}.")
    return lines


def realign_lines(results: dict[str, Any]) -> list[str]:
    """What the realign plugin found, per method that ran it (mean over seeds)."""
    lines = []
    for name, runs in results["runs"].items():
        reports = [(r["seed"], stage, rep) for r in runs
                   for stage, reps in enumerate(r.get("realign", [])) for rep in reps]
        if not reports:
            continue
        by: dict[tuple[int, str], list[dict[str, Any]]] = {}
        for _, stage, rep in reports:
            by.setdefault((stage, rep["task"]), []).append(rep)
        rows = []
        for (stage, task), reps in sorted(by.items()):
            identical = sum(bool(r["identical"]) for r in reps)
            retuned = [r for r in reps if r["retuned"]]
            rows.append([str(stage), _label(task, results), f"{identical}/{len(reps)}",
                         fmt([r["before"] for r in reps]), fmt([r["after"] for r in reps]),
                         f"{len(retuned)}/{len(reps)}",
                         fmt([r["after_retune"] for r in retuned]) if retuned else "—"])
        lines += [f"*{BY_NAME[name].label}* (validation split of each earlier task's sites):",
                  "", *_table(["after stage", "earlier task", "outputs bit-identical (seeds)",
                               "val before", "val after", "re-tuned", "val after re-tune"],
                              rows), ""]
    return lines


def render(results: dict[str, Any]) -> str:
    """The BENCHMARKS.md section, built from the runs in ``results`` only."""
    meta, runs = results["meta"], results["runs"]
    fwt = per_seed_fwt(results)
    some = runs[next(iter(runs))][0]
    sizes = "; ".join(f"{_label(t, results)}: {sum(n.values())} ("
                      + ", ".join(f"{s} {k}" for s, k in n.items()) + ")"
                      for t, n in results["test_n"].items())
    lines = [HEADING, "",
             f"Written by `{meta['command']}` on {meta['date']} ({meta['machine']}); run folder "
             f"`{meta['run_dir']}`, {meta['minutes']:.1f} min. "
             + ("**QUICK smoke run (1 round x 2 steps): not a result.** " if meta["quick"]
                else ""),
             "",
             f"Stages: {' → '.join(some['stages'])} (tasks {', '.join(some['order'])}); "
             f"{meta['rounds']} rounds x {meta['local_steps']} local steps of {meta['batch_size']}"
             f" at lr {meta['lr']} per stage for every method, {meta['backbone']} backbone; "
             f"seeds {', '.join(map(str, results['seeds']))}. The regime was chosen by a short "
             "search on seed 0 (docs/continual.md); seeds 1 and 2 were not looked at before. "
             "Every value is the held-out **test** split's primary metric (AUC, Dice, C-index), "
             f"the sites' values weighted by their test n; test n: {sizes}.",
             "",
             "BWT = mean over tasks not trained last of R[i][T-1] − R[i][t_i]; forgetting = −BWT "
             "(Avalanche); FWT = R[i][j_i] − the isolated skill's R[i][j_i] on the frozen "
             "foundation, same seed (the isolated row's FWT is 0 by definition).", ""]
    rows = []
    for name in results["methods"]:
        if name not in runs:
            continue
        rs = runs[name]
        method = BY_NAME[name]
        rows.append([method.label + (f" ({', '.join(method.plugins)})" if method.plugins else ""),
                     _cell([r["avg"] for r in rs]), _cell([r["bwt"] for r in rs], True),
                     _cell([r["forgetting"] for r in rs], True), _cell(fwt[name], True),
                     _seeds([r["bwt"] for r in rs]), _seeds(fwt[name]),
                     f"{mean_std([r['wall_s'] for r in rs])[0] / 60:.1f}"])
    lines += _table(["method", "avg final", "BWT", "forgetting", "FWT", "BWT per seed",
                     "FWT per seed", "min/run"], rows)
    side = [f"{BY_NAME[name].label}: " + ", ".join(
        f"{kind} {mean_std([r['side_bytes'][kind] for r in rs])[0] / 1e6:.2f} MB"
        for kind in sorted(rs[0]["side_bytes"]))
        for name, rs in runs.items() if rs and rs[0].get("side_bytes")]
    if side:
        lines += ["", "Site statistics the plugins need beyond the stage's federated messages "
                  "(bytes they would take as messages over the run, mean over seeds; handed over "
                  "in process here, see `side_bytes`): " + "; ".join(side) + "."]
    lines += ["", "Per task, final value (mean ± sd over seeds):", ""]
    order = some["order"]
    lines += _table(["method", *[_label(t, results) for t in order]],
                    [[BY_NAME[n].label, *[fmt(final_of(runs[n], t)) for t in order]]
                     for n in results["methods"] if n in runs])
    lines += ["", "**Does the regime forget?** (BWT < "
              f"{FORGETS_BELOW} averaged over seeds, issue #15 item 1)", ""]
    forgets = []
    for naive in (NAIVE_ADAPTER, NAIVE_BACKBONE):
        if naive in runs:
            m = mean_std([r["bwt"] for r in runs[naive]])[0]
            forgets.append(m < FORGETS_BELOW)
            lines.append(f"- {BY_NAME[naive].label}: BWT {m:+.3f}: "
                         + ("met" if m < FORGETS_BELOW else "**MISSED**"))
    if forgets and not any(forgets):
        lines.append("- Neither naive method forgets in this regime, so this table cannot show "
                     "retention: differences between the methods' final values are adaptation "
                     "and seed-to-seed spread, not knowledge kept.")
    best = best_method(results, fwt)
    for name in dict.fromkeys([NAIVE_BACKBONE, NAIVE_ADAPTER, *([best] if best else [])]):
        if name in runs:
            lines += ["", f"Task × stage matrix, {BY_NAME[name].label} (mean ± sd over seeds)"
                      + (" — the best retention method by BWT" if name == best else "") + ":",
                      "", *_matrix(runs[name], results)]
    lines += ["", "**The seeds' claim** (MedSeqFT: +3.0 % Dice over naive sequential fine-tuning "
              "on the segmentation tasks, read as +0.03 absolute final Dice, mean over seeds):",
              "", *claim_lines(results), "",
              "**Skill re-alignment** (`realign` plugin): isolated skills promise bit-identical "
              "outputs (the plugin raises otherwise); on the refined backbone earlier skills are "
              "re-validated (and, in `refined_realign`, re-tuned by one round of skill-only FedAvg "
              "when they lost anything on validation; that round is outside the stage budget).",
              "", *realign_lines(results),
              "Methods and sources: " + "; ".join(
                  f"{m.label}: {m.source}" for m in METHODS if m.source and m.name in runs)
              + ". Deviations from the papers: docs/continual.md (MDS reference statistics from "
              "the first stage's sites, a consortium-shared prototype memory for retrieval).", ""]
    return "\n".join(lines)


def merge(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Results of the same regime run apart (one process per seed, or per group of methods of
    a seed), as one: runs in seed order, the wall time of the slowest part, every part's run
    folder. A part without ``meta`` is a stopped process's ``partial.json``: its finished
    methods join, its budget being that of the other parts (checked equal among them). Every
    method must end with one run per seed; a (method, seed) run given twice is refused."""
    if not parts:
        raise ValueError("nothing to merge")
    metas = [p["meta"] for p in parts if "meta" in p]
    if not metas:
        raise ValueError("no finished run among the merged parts (every one is a partial.json)")
    keys = ("quick", "rounds", "local_steps", "batch_size", "lr", "backbone")
    for meta in metas[1:]:
        differ = [k for k in keys if meta[k] != metas[0][k]]
        if differ:
            raise ValueError(f"cannot merge runs of different budgets: {differ} differ")
    runs: dict[str, list[dict[str, Any]]] = {}
    for part in parts:
        for name, rs in part["runs"].items():
            runs.setdefault(name, []).extend(rs)
    seeds = sorted({r["seed"] for rs in runs.values() for r in rs})
    for name, rs in runs.items():
        got = [r["seed"] for r in rs]
        if len(set(got)) != len(got):
            raise ValueError(f"seeds repeat across the merged runs: {name} has {sorted(got)}")
        if sorted(got) != seeds:
            raise ValueError(f"{name} ran for seeds {sorted(got)}, the merged runs hold {seeds}")
    order = [m.name for m in METHODS]
    methods = sorted(runs, key=lambda n: order.index(n) if n in order else len(order))
    base = next(p for p in parts if "meta" in p)
    out = {**base, "seeds": seeds, "methods": methods,
           "runs": {n: sorted(runs[n], key=lambda r: r["seed"]) for n in methods}}
    stopped = sum("meta" not in p for p in parts)
    out["meta"] = {**metas[0], "minutes": max(m["minutes"] for m in metas),
                   "run_dir": ", ".join(f"`{m['run_dir']}`" for m in metas).strip("`"),
                   "command": " + ".join(_shown(m["command"]) for m in metas)
                   + (f" + the finished methods of {stopped} stopped process(es) "
                      "(their partial.json)" if stopped else "")
                   + " (one process per seed or group of methods, joined by --merge)"}
    return out


def write_section(out: Path, section: str) -> None:
    """Insert (or replace) the section in ``out``, creating the file if it is new."""
    if not out.exists():
        out.write_text("")
    insert_section(out, section)


def _shown(command: str) -> str:
    """A recorded command line without this machine's absolute paths."""
    from simulations.report import shown_command

    return shown_command(command.split())


def machine() -> str:
    """One line about the machine, its CPU model and vector kernels included (floats differ
    across CPUs)."""
    import platform

    return (f"{os.cpu_count()} CPU cores ({cpu_name()}), {platform.machine()}, "
            f"Python {platform.python_version()}")


def main(argv: Sequence[str] | None = None) -> Path:
    """Run the regime (or re-render a finished run); returns the run folder."""
    from datetime import datetime, timezone

    import torch

    from unicon_core.federation.outputs import new_run_dir

    args = parse_args(argv)
    if args.merge is not None:
        merged = merge([json.loads(p.read_text()) for p in args.merge])
        write_section(args.out, render(merged))
        return args.merge[0].parent
    if args.report_only is not None:
        results = json.loads(args.report_only.read_text())
        write_section(args.out, render(results))
        return args.report_only.parent
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    start = time.perf_counter()
    data_root = args.data_root.resolve()
    from unicon_core.demo_data.prepare import prepare_demo

    prepare_demo(data_root)
    cfg, backbone, overrides = regime(data_root, args.override, args.quick, args.seeds,
                                      args.experiment)
    run_dir = new_run_dir(args.runs_dir.resolve(), "forgetting")
    results = run(cfg, backbone, overrides, run_dir, args.methods)
    from simulations.report import shown_command, shown_path

    given = list(argv) if argv is not None else sys.argv[1:]
    results["meta"] = {
        "command": "python -m simulations.forgetting_bench " + shown_command(given),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
        "run_dir": shown_path(run_dir), "minutes": (time.perf_counter() - start) / 60,
        "quick": args.quick, "rounds": cfg.rounds, "local_steps": cfg.local_steps,
        "batch_size": cfg.batch_size, "lr": cfg.lr, "backbone": backbone_label(backbone)}
    (run_dir / "results.json").write_text(json.dumps(results, indent=1))
    write_section(args.out, render(results))
    log.info("forgetting regime: %s, section in %s", run_dir, args.out)
    return run_dir


if __name__ == "__main__":
    main()
