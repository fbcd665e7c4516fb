"""The benchmark suite of issue 5: one command, BENCHMARKS.md, plots and results.json.

Usage::

    python -m simulations.run_benchmarks [--quick] [--jobs N] [--data-root DIR]
        [--runs-dir DIR] [--out BENCHMARKS.md] [--seeds 0 1 2] [--no-overhead] [--no-foundation]

Everything a run writes goes to its own folder ``<runs-dir>/<time>-benchmarks`` (default
``<repo>/runs``): per-strategy stage runs, ``results.json`` (with the ``continual`` section of
the isolated-skills method) and ``plots/``. BENCHMARKS.md (``--out``, default
``<repo>/BENCHMARKS.md``) and a copy of the plots beside it (``simulations/results/benchmarks``)
are the only files written outside the run folder. ``--quick`` uses
``experiment=continual_quick`` (smaller budget) and skips the foundation stage.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger(__name__)
STRATEGIES = ["isolated", "naive_sequential", "local_only", "centralised", "full_fedavg"]
#: Sites of the wall-time comparison (two real tasks, five sites).
OVERHEAD_SITES = ["br35h_a", "br35h_b", "br35h_c", "gbsg2_a", "gbsg2_b"]
#: The wall-time comparison's longer run: this many times the suite's rounds.
LONG_RUN_FACTOR = 5


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small budget (about 10 min on 2 cores)")
    p.add_argument("--data-root", type=Path, default=REPO / "demo_data")
    p.add_argument("--runs-dir", type=Path, default=REPO / "runs")
    p.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    p.add_argument("--plots-dir", type=Path,
                   default=REPO / "simulations" / "results" / "benchmarks")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--jobs", type=int, default=1,
                   help="seeds run in this many worker processes at once (torch uses one thread "
                        "each; one per seed keeps both cores of a 2-core machine busy)")
    p.add_argument("--no-overhead", action="store_true", help="skip the flwr wall-time run")
    p.add_argument("--only-overhead", action="store_true",
                   help="only the flwr wall-time runs; rewrite their section of --out")
    p.add_argument("--overhead-long-rounds", type=int, default=None, metavar="N",
                   help="the wall-time comparison again at N rounds (default: 5x the suite's "
                        "rounds; 0: skip), to show how the ratio moves with the run's length")
    p.add_argument("--no-foundation", action="store_true", help="skip the foundation stage")
    p.add_argument("--override", action="append", default=[], help="extra hydra override")
    p.add_argument("--report-only", type=Path, default=None, metavar="RESULTS_JSON",
                   help="only re-render --out and the plots from a finished suite's results.json")
    p.add_argument("--assemble-only", type=Path, default=None, metavar="SUITE_MD",
                   help="only rebuild --out from a finished suite's BENCHMARKS.md + sections")
    p.add_argument("--before", type=Path, default=None, metavar="RESULTS_JSON",
                   help="a run before the one-engine refactor (#16): its results.json, or the "
                        "compact file --save-before wrote; adds a before/after continual table")
    p.add_argument("--before-commit", default="?", help="the commit the --before run ran on")
    p.add_argument("--save-before", type=Path, default=None, metavar="JSON",
                   help="with --before: also write its compact continual summary here")
    p.add_argument("--compare-after", type=Path, nargs="+", default=None, metavar="RUN_DIR",
                   help="with --before: only render the #16 before/after section from the "
                        "per-strategy continual.json files under these after-run folders "
                        "(into simulations/results/one_engine.md and --out)")
    p.add_argument("--note", default="", help="with --compare-after: a sentence on coverage")
    p.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                   help="continue a suite run in RUN_DIR: seeds saved in its partial.json are "
                        "not run again")
    return p.parse_args(argv)


def compact_before(path: Path, commit: str = "?") -> dict[str, Any]:
    """The continual summary of a suite's ``results.json`` (per method and seed: avg, BWT,
    forgetting), or a file already in that compact form, as ``suite["before"]``."""
    data = json.loads(path.read_text())
    if "suite" not in data:
        return _undefined_as_nan(data)  # type: ignore[no-any-return]
    suite = _undefined_as_nan(data["suite"])
    keep = ("seed", "avg", "bwt", "forgetting")
    seeds = suite["meta"]["seeds"]
    return {
        "meta": {"command": suite["meta"]["command"], "date": suite["meta"]["date"],
                 "seeds": seeds, "commit": commit},
        "continual": {n: [{k: r[k] for k in keep} for r in res]
                      for n, res in suite["continual"].items()},
        "foundation": [{k: r[k] for k in keep if k in r} for r in suite.get("foundation", [])],
        **studies(seeds, suite.get("modality", []), suite.get("adaptation", [])),
    }


def studies(seeds: Sequence[int], modality: Sequence[dict[str, Any]],
            adaptation: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The modality and adaptation studies per seed (values, and adaptation bytes)."""
    keep = ("value", "bytes_per_site_round")
    return {"modality": [{"seed": s, **m} for s, m in zip(seeds, modality, strict=False)],
            "adaptation": [{"seed": s, **{n: {k: v[k] for k in keep} for n, v in a.items()}}
                           for s, a in zip(seeds, adaptation, strict=False)]}


def finished_strategies(run_dirs: Sequence[Path]) -> dict[str, Any]:
    """``{"continual": {strategy: [result per seed]}}`` of every ``continual.json`` a
    strategy run wrote under ``run_dirs`` (``<name>_seed<k>/continual.json``), seeds in order.
    A (strategy, seed) found twice counts once if both runs agree, else it is an error."""
    out: dict[str, dict[int, tuple[Path, dict[str, Any]]]] = {}
    for run_dir in run_dirs:
        for path in sorted(run_dir.glob("*_seed*/continual.json")):
            result = _undefined_as_nan(json.loads(path.read_text()))
            seen = out.setdefault(result["strategy"], {})
            earlier = seen.get(result["seed"])
            if earlier is not None and (earlier[1]["avg"], earlier[1]["bwt"]) != (
                    result["avg"], result["bwt"]):
                raise ValueError(f"{earlier[0]} and {path} differ for the same strategy and seed")
            seen.setdefault(result["seed"], (path, result))
    if not out:
        raise FileNotFoundError(f"no <strategy>_seed<k>/continual.json under {run_dirs}")
    order = [n for n in STRATEGIES if n in out] + sorted(set(out) - set(STRATEGIES))
    finished = [r for d in run_dirs if (d / "partial.json").is_file()
                for r in _undefined_as_nan(json.loads((d / "partial.json").read_text()))]
    finished.sort(key=lambda r: r["seed"])
    return {"continual": {n: [out[n][s][1] for s in sorted(out[n])] for n in order},
            "foundation": [r["foundation"] for r in finished if r.get("foundation")],
            **studies([r["seed"] for r in finished], [r["modality"] for r in finished],
                      [r["adaptation"] for r in finished])}


def compare_after(args: argparse.Namespace) -> None:
    """The #16 before/after section from finished strategy runs (no training)."""
    from simulations.report import insert_section, one_engine_section

    if args.before is None:
        raise ValueError("--compare-after needs --before RESULTS_JSON")
    suite: dict[str, Any] = {}
    attach_before(suite, args)
    from simulations.report import shown_path

    text = one_engine_section(suite["before"], finished_strategies(args.compare_after),
                              args.note, ", ".join(f"`{shown_path(d)}`"
                                                   for d in args.compare_after))
    section = REPO / "simulations" / "results" / "one_engine.md"
    section.write_text(text)
    insert_section(args.out, text)


def attach_before(suite: dict[str, Any], args: argparse.Namespace) -> None:
    """``suite["before"]`` from ``--before`` (and its compact copy to ``--save-before``)."""
    if args.before is None:
        return
    suite["before"] = compact_before(args.before, args.before_commit)
    if args.save_before is not None:
        args.save_before.parent.mkdir(parents=True, exist_ok=True)
        args.save_before.write_text(json.dumps(suite["before"], indent=1, allow_nan=True) + "\n")


def machine() -> str:
    """CPU model, vector kernels, cores and threads this run used (floats differ across
    CPUs)."""
    import torch

    from simulations.report import cpu_name

    return (f"{cpu_name()}, {os.cpu_count()} CPU cores visible, torch threads "
            f"{torch.get_num_threads()}, "
            f"{platform.machine()} {platform.system()}, Python {platform.python_version()}, "
            f"torch {torch.__version__}")


def _overhead(cfg: Any, backbone: Any, overrides: list[str], sites: dict[str, Any],
              run_dir: Path, long_rounds: int | None = None) -> dict[str, Any]:
    """The wall-time comparison (:mod:`simulations.overhead`) on :data:`OVERHEAD_SITES`, also
    at ``long_rounds`` (default 5x the suite's rounds; 0: only the suite's length)."""
    from simulations.overhead import measure_overhead
    from unicon_flower.continual import make_context

    ctx = make_context(cfg, cfg.seeds[0], backbone, run_dir / "overhead", overrides, sites)
    members = [sites[s] for s in OVERHEAD_SITES if s in sites]
    long = LONG_RUN_FACTOR * cfg.rounds if long_rounds is None else long_rounds or None
    return measure_overhead(members, [cfg.site_dir(s.name) for s in members], overrides,
                            backbone, cfg.rounds, ctx.train, run_dir / "overhead", long)


def main(argv: Sequence[str] | None = None) -> Path:
    """Run the suite; returns the run folder."""
    import torch
    from omegaconf import OmegaConf

    from simulations.communication import bytes_table
    from simulations.report import shown_command
    from unicon_core.config import TaskKind
    from unicon_core.continual.runner import open_sites
    from unicon_core.continual.stages import ContinualConfig
    from unicon_core.demo_data.prepare import prepare_demo
    from unicon_core.federation.outputs import new_run_dir, write_json
    from unicon_core.hydra_config import backbone_config, load_config

    args = parse_args(argv)
    if args.compare_after is not None:
        compare_after(args)
        return args.out.parent
    if args.assemble_only is not None:
        assemble(args.assemble_only, args.out)
        return args.out.parent
    if args.report_only is not None:
        suite = _undefined_as_nan(json.loads(args.report_only.read_text())["suite"])
        attach_before(suite, args)
        render(suite, Path(suite["meta"]["run_dir"]), args)
        return Path(suite["meta"]["run_dir"])
    _log_to_stderr()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    start = time.perf_counter()
    data_root = args.data_root.resolve()
    prepare_demo(data_root)  # reuses sites that are already there
    experiment = "continual_quick" if args.quick else "continual"
    overrides = [f"experiment={experiment}", f"federation.data_root='{data_root}'",
                 *args.override]
    composed = load_config(overrides)
    section: dict[str, Any] = OmegaConf.to_container(composed.continual, resolve=True)  # type: ignore[assignment]
    section["data_root"] = str(data_root)
    if args.seeds:
        section["seeds"] = args.seeds
    cfg = ContinualConfig.from_dict(section)
    backbone = backbone_config(composed)
    run_dir = (args.resume.resolve() if args.resume is not None
               else new_run_dir(args.runs_dir.resolve(),
                                "overhead" if args.only_overhead else "benchmarks"))
    log.info("benchmark run folder: %s", run_dir)
    if args.only_overhead:
        from simulations.report import insert_section, overhead_section

        sites = open_sites(cfg, cfg.seeds[0])
        overhead = _overhead(cfg, backbone, overrides, sites, run_dir,
                             args.overhead_long_rounds)
        meta = {"command": shown_command(["python -m simulations.run_benchmarks",
                                          *(sys.argv[1:] if argv is None else argv)]),
                "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "machine": machine()}
        insert_section(args.out, "\n".join(overhead_section(overhead, meta)))
        write_json(run_dir / "overhead.json", overhead)
        return run_dir

    with_foundation = cfg.foundation_stage or not (args.quick or args.no_foundation)
    per_seed = run_seeds(cfg, backbone, overrides, run_dir, with_foundation, args.jobs)
    continual: dict[str, list[dict[str, Any]]] = {
        n: [r["continual"][n] for r in per_seed] for n in STRATEGIES}
    modality = [r["modality"] for r in per_seed if r["modality"] is not None]
    adaptation = [r["adaptation"] for r in per_seed]
    foundation = [r["foundation"] for r in per_seed if r["foundation"] is not None]

    sites = open_sites(cfg, cfg.seeds[0])
    specs = {s.task_spec.name: s.task_spec for s in sites.values()}
    small = backbone_config(load_config([*overrides, "backbone=small"]))
    comm = bytes_table(specs, {"tiny": backbone, "small": small})
    overhead = None if args.no_overhead else _overhead(cfg, backbone, overrides, sites, run_dir,
                                                       args.overhead_long_rounds)

    first = continual["isolated"][0]
    synthetic = sorted({s.task_spec.name for s in sites.values() if s.synthetic})
    iso = continual["isolated"]
    import numpy as np

    from simulations.report import mean_matrix, mean_std

    suite: dict[str, Any] = {
        "order": first["order"], "stages": first["stages"], "synthetic": synthetic,
        "continual": continual, "foundation": foundation, "modality": modality,
        "adaptation": adaptation, "bytes": comm, "overhead": overhead,
        "meta": {
            "command": shown_command(["python -m simulations.run_benchmarks",
                                      *(sys.argv[1:] if argv is None else argv)]),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(), "seeds": cfg.seeds, "rounds": cfg.rounds,
            "local_steps": cfg.local_steps, "batch_size": cfg.batch_size, "lr": cfg.lr,
            "backbone": f"tiny ({backbone.num_layers} layers, width {backbone.hidden_size})",
            "run_dir": str(run_dir), "adaptation_task": cfg.adaptation_task,
            "jobs": args.jobs,
            "stages": [{"name": s.name, "sites": s.sites, "expand": s.expand}
                       for s in cfg.stages],
            "metrics": {t: _metric(specs[t].kind, TaskKind) for t in specs},
        },
    }
    suite["meta"]["wall_s"] = time.perf_counter() - start
    suite["continual_summary"] = {
        "order": first["order"],
        "matrix": [[None if not np.isfinite(v) else float(v) for v in row]
                   for row in mean_matrix(iso)],
        "avg": mean_std([r["avg"] for r in iso])[0],
        "bwt": mean_std([r["bwt"] for r in iso])[0],
        "forgetting": mean_std([r["forgetting"] for r in iso])[0],
    }
    attach_before(suite, args)
    results = {"experiment": experiment, "synthetic": synthetic,
               "continual": suite["continual_summary"], "suite": suite}
    write_json(run_dir / "results.json", results)
    render(suite, run_dir, args)
    log.info("wrote %s and %s in %.1f min", args.out, run_dir / "results.json",
                 (time.perf_counter() - start) / 60)
    return run_dir


def render(suite: dict[str, Any], run_dir: Path, args: argparse.Namespace) -> None:
    """Plots, BENCHMARKS.md (``--out``) and, for ``--quick``, its timing section, from the
    suite's measured results (also used alone by ``--report-only``)."""
    from simulations.report import plot_all, write_markdown

    plots = plot_all(suite, run_dir / "plots")
    args.plots_dir.mkdir(parents=True, exist_ok=True)
    shown = []
    for p in plots:
        shutil.copy2(p, args.plots_dir / p.name)
        shown.append(Path(os.path.relpath(args.plots_dir / p.name, args.out.parent.resolve())))
    write_markdown(suite, args.out, shown)
    shutil.copy2(args.out, run_dir / "BENCHMARKS.md")
    if "--quick" in suite["meta"]["command"].split():
        write_quick_section(suite, REPO / "simulations" / "results" / "quick.md")
    append_sections(args.out)


def _undefined_as_nan(obj: Any) -> Any:
    """JSON stores undefined metric cells (NaN) as null: numeric lists get NaN back."""
    if isinstance(obj, dict):
        return {k: _undefined_as_nan(v) for k, v in obj.items()}
    if isinstance(obj, list):
        if obj and all(v is None or isinstance(v, (int, float)) for v in obj):
            return [float("nan") if v is None else v for v in obj]
        return [_undefined_as_nan(v) for v in obj]
    return obj


def run_seed(cfg: Any, backbone: Any, overrides: list[str], run_dir: Path, seed: int,
             with_foundation: bool, strategies: Sequence[str] = tuple(STRATEGIES),
             adaptation: Sequence[str] | None = None) -> dict[str, Any]:
    """Everything the suite measures with one seed: the continual ``strategies``, the modality
    study, the ``adaptation`` strategies (both all of them unless a caller, e.g. a test, names
    fewer) and (optionally) the foundation stage."""
    from simulations.adaptation import run_adaptation
    from simulations.continual_suite import run_on_foundation, run_strategies
    from simulations.modality import run_modality
    from unicon_flower.continual import make_context

    ct_task, ctpet_task = _expansion(cfg)
    if ct_task and ctpet_task and "isolated" not in strategies:
        raise ValueError("the modality study builds on the isolated strategy's CT skill: "
                         f"strategies {list(strategies)} must include 'isolated'")
    results, skills = run_strategies(cfg, backbone, overrides, run_dir, seed, list(strategies))
    ctx = make_context(cfg, seed, backbone, run_dir / f"studies_seed{seed}", overrides)
    return {
        "seed": seed,
        "continual": results,
        "modality": run_modality(ctx, ct_task, ctpet_task, skills[ct_task], backbone)
        if ct_task and ctpet_task else None,
        "adaptation": run_adaptation(ctx, cfg.adaptation_task, backbone, adaptation),
        "foundation": run_on_foundation(cfg, backbone, overrides, run_dir, seed)
        if with_foundation else None,
    }


def run_seeds(cfg: Any, backbone: Any, overrides: list[str], run_dir: Path,
              with_foundation: bool, jobs: int,
              strategies: Sequence[str] = tuple(STRATEGIES),
              adaptation: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """:func:`run_seed` for every seed, in seed order; ``jobs > 1`` runs seeds in that many
    spawned worker processes at once (each seed's work is independent and seeded, so the
    numbers do not depend on ``jobs``). Finished seeds are saved to ``partial.json``."""
    from unicon_core.federation.outputs import write_json

    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    done: dict[int, dict[str, Any]] = {}
    saved = run_dir / "partial.json"
    if saved.is_file():  # a resumed run: its finished seeds stay as they are
        done = {r["seed"]: r for r in _undefined_as_nan(json.loads(saved.read_text()))
                if r["seed"] in cfg.seeds}
    todo = [s for s in cfg.seeds if s not in done]

    def keep(result: dict[str, Any]) -> None:
        done[result["seed"]] = result
        write_json(run_dir / "partial.json", [done[s] for s in sorted(done)])

    if jobs == 1 or len(todo) <= 1:
        for seed in todo:
            keep(run_seed(cfg, backbone, overrides, run_dir, seed, with_foundation, strategies,
                          adaptation))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(min(jobs, len(todo)),
                                 mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_worker_init) as pool:
            futures = [pool.submit(run_seed, cfg, backbone, overrides, run_dir, seed,
                                   with_foundation, strategies, adaptation)
                       for seed in todo]
            for future in as_completed(futures):
                keep(future.result())
    return [done[s] for s in cfg.seeds]


def _worker_init() -> None:
    """A seed worker: one torch thread, progress lines like the parent's."""
    import torch

    _log_to_stderr()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))


def _log_to_stderr() -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    logging.getLogger("simulations").addHandler(handler)
    logging.getLogger("simulations").setLevel(logging.INFO)


#: Sections other benchmark scripts write (each with its own command and provenance).
SECTIONS = {
    "quick.md": "python -m simulations.run_benchmarks --quick --jobs 3",
    "routing.md": "python -m simulations.routing_accuracy --data-root DEMO_DATA",
    "robustness.md": "python -m simulations.robustness_bench",
    "cold_start.md": "python -m simulations.cold_start_bench",
    "backbones.md": "python -m simulations.backbones_bench",
    "one_engine.md": "python -m simulations.run_benchmarks --compare-after RUN_DIR --before "
                     "RESULTS_JSON",
}


def append_sections(out: Path, results_dir: Path = REPO / "simulations" / "results") -> None:
    """Append the other scripts' sections (routing, robustness, cold start) to ``out``.

    They are not re-run here (they take their own machine set-up, e.g. a TLS deployment);
    a missing one is listed as not measured, never filled in.
    """
    parts = [out.read_text().rstrip(), "", "# Other benchmarks", "",
             "Each section below is written by its own script (command given) and copied in "
             "verbatim by `simulations.run_benchmarks`.", ""]
    for name, command in SECTIONS.items():
        path = results_dir / name
        if path.is_file():
            parts += [path.read_text().rstrip(), ""]
        else:
            parts += [f"## {name[:-3]}", "", f"not measured: run `{command}`.", ""]
    out.write_text("\n".join(parts) + "\n")


#: The --quick suite's wall-time goal (minutes, on 2 cores).
QUICK_GOAL_MIN = 10.0


def write_quick_section(suite: dict[str, Any], path: Path) -> str:
    """The quick suite's timing as a section of BENCHMARKS.md (its tables stay in its run)."""
    from simulations.report import goal, shown_path

    meta = suite["meta"]
    minutes = meta["wall_s"] / 60
    iso = suite["continual"]["isolated"]
    text = "\n".join([
        "## Quick suite (`--quick`)", "",
        f"`{meta['command']}` - {meta['date']}, {meta['machine']}; seeds {meta['seeds']}, "
        f"{meta['rounds']} rounds x {meta['local_steps']} local steps of {meta['batch_size']} "
        f"per stage, every strategy and study of the full suite except the foundation stage, "
        f"{meta.get('jobs', 1)} seed worker process(es).", "",
        f"Wall time **{minutes:.1f} min**, goal <= {QUICK_GOAL_MIN:g} min: "
        f"{goal(minutes <= QUICK_GOAL_MIN)}. Isolated skills' BWT per seed: "
        f"{[round(r['bwt'], 4) for r in iso]}. Its tables are in `{shown_path(meta['run_dir'])}` "
        "(not committed; at this budget most skills barely learn).", "",
    ])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def assemble(suite_md: Path, out: Path) -> None:
    """BENCHMARKS.md from a finished suite's markdown plus the other sections (no training)."""
    out.write_text(suite_md.read_text())
    append_sections(out)


def _expansion(cfg: Any) -> tuple[str | None, str | None]:
    """The (source, target) of the first modality expansion, if any."""
    for stage in cfg.stages:
        for target, source in stage.expand.items():
            return source, target
    return None, None


def _metric(kind: Any, task_kind: Any) -> str:
    from unicon_core.metrics import PRIMARY_METRIC

    return PRIMARY_METRIC[task_kind(kind)]


if __name__ == "__main__":
    main()
