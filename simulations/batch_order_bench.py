"""Federated LoRA (#14): is the federation's gap to its bound how batches are made up?

On ``tumour_cls`` (real Br35H, the pretrained foundation, sites keeping their AdamW moments,
5 rounds x 12 local steps) the federation stays at 0.57-0.64 of its centralised bound under
every aggregation rule. A federated site's every step sees only its own sources; the bound's
pooled node shuffles every site's examples into each batch. This trains the bound again on
the same pooled data, budget and seeds with site-homogeneous batches
(:mod:`unicon_core.data.site_batches`): one site per batch, sites in turn (``block`` 1), and
a federated round's local steps of one site after another (``block`` = local steps), beside
the shuffled bound and the federation (naive rule). Sites weigh equally in the site orders
(the same steps each), as in the federation.

How the result is read, fixed before any run: the share of the shuffled bound's lead over the
federation that a site order removes, (shuffled - ordered) / (shuffled - federated) on the
means over seeds; at least 0.5 reads "most of the gap comes with how batches are made up",
at most 0.2 "little of it: the rest comes from averaging models trained apart", between them
"part of it".

``--work-dir`` may be the federated bench's ``foundation_kept`` folder: its shuffled bound and
naive runs have the same job keys and setup, so they are reused rather than rerun.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from simulations import federated_lora_bench as fl
from simulations.report import REPO, fmt, insert_section, mean_std, shown_path

HEADING = "## Federated LoRA (#14): the centralised bound's batch order"
TASK = "tumour_cls"
#: Where the section goes when the file has none yet: just after the federated LoRA section.
BEFORE = "## Forgetting regime (#15)"
SHUFFLED = "shuffled across the pooled sites (the bound of every #14 table)"
#: The reading rule of the module docstring (share of the gap a site order removes).
MOST, LITTLE = 0.5, 0.2


#: A block length between 1 and a round's local steps: the shorter rounds' local steps
#: (the 15 x 4 table), added after the block 1 and block 12 runs had been seen, to show how
#: the bound moves with the length of its single-site stretches.
MIDDLE_BLOCK = fl.FOUNDATION_SHORT_STEPS


def orders(local_steps: int) -> dict[str, tuple[tuple[str, str | float], ...]]:
    """The bound's batch orders: label -> the centralised job's options (the middle block
    only where it is shorter than a round's local steps)."""
    middle = ({f"one site per batch, {MIDDLE_BLOCK} batches a site in turn (block "
               f"{MIDDLE_BLOCK}: the shorter rounds' local steps; added after the block 1 "
               f"and block {local_steps} rows had been seen)": ((fl.SITE_BLOCK, MIDDLE_BLOCK),)}
              if 1 < MIDDLE_BLOCK < local_steps else {})
    return {SHUFFLED: (),
            "one site per batch, sites in turn (block 1)": ((fl.SITE_BLOCK, 1),), **middle,
            f"one site per batch, {local_steps} batches a site in turn (block {local_steps}: "
            "a round's local steps, sites one after another, no averaging)":
                ((fl.SITE_BLOCK, local_steps),)}


def plan(task: str, seeds: Sequence[int], local_steps: int) -> list[fl.Job]:
    """Each order's centralised runs and the federation's (naive rule), per seed."""
    jobs = [fl.Job("central", task, s, options=o) for o in orders(local_steps).values()
            for s in seeds]
    return jobs + [fl.Job("fed", task, s, fl.VARIANT_RULE) for s in seeds]


def share_removed(shuffled: float, ordered: float, federated: float) -> float:
    """How much of the shuffled bound's lead over the federation a site order removes; NaN
    where the federation is not below the bound (no gap to split)."""
    gap = shuffled - federated
    if not (math.isfinite(gap) and math.isfinite(ordered)) or gap <= 0:
        return math.nan
    return (shuffled - ordered) / gap


def reading(share: float) -> str:
    """The reading rule fixed before any run (see the module docstring), on the share as the
    table shows it (two decimals)."""
    if not math.isfinite(share):
        return "no reading: the federation is not below the shuffled bound here"
    share = round(share, 2)
    if share >= MOST:
        return "most of the gap comes with how batches are made up"
    if share <= LITTLE:
        return "little of it: the rest comes from averaging models trained apart"
    return "part of the gap comes with how batches are made up"


def render(res: Mapping[str, Any]) -> str:
    """The section: per order and the federation, the test metric (mean over seeds, per seed),
    per training site, on the evaluation-only sites, and the share of the gap removed."""
    jobs, seeds, task = res["jobs"], res["seeds"], res["task"]
    rows = {**{f"centralised, {label}": [fl.Job("central", task, s, options=tuple(
        tuple(o) for o in opts)) for s in seeds] for label, opts in res["orders"].items()},
        "federated, naive rule": [fl.Job("fed", task, s, fl.VARIANT_RULE) for s in seeds]}
    runs = {label: [jobs[j.key] for j in wanted] for label, wanted in rows.items()}
    sites = sorted({site for rs in runs.values() for r in rs for site in r["per_site"]})
    ext = sorted({site for rs in runs.values() for r in rs for site in r.get("external", {})})
    first = next(iter(runs.values()))[0]
    n = {**first["per_site_n"], **{e: first["external"][e]["n"] for e in ext}}
    data = "**SYNTHETIC** sites" if res["synthetic"] else "real data"
    b = res["budget"]
    means = {label: mean_std([r["value"] for r in rs])[0] for label, rs in runs.items()}
    shuffled, fed = means[f"centralised, {SHUFFLED}"], means["federated, naive rule"]
    lines = [
        HEADING, "",
        f"Written by `{res['command']}` on {res['date']}; {data}; "
        f"`{task}`, {b['rounds']} rounds x {b['local_steps']} local steps of {b['batch_size']}, "
        f"lr {b['lr']:g}, `{' '.join(res['base'])}`, seeds {', '.join(map(str, seeds))}. The "
        "centralised bound trains the pooled train splits (`local_steps x sites` steps a "
        "round) with its batches made up "
        f"{len(res['orders'])} ways; the federation is the naive rule at the "
        "same budget. Metric: "
        f"{first['metric']} on the training sites' test splits (n {first['n']}), per training "
        "site and on the evaluation-only sites (never trained or pooled).",
        fl._made_line([r for rs in runs.values() for r in rs]).strip(), "",
        "| training, batches | test (mean ± std) | per seed | "
        + " | ".join(f"`{s}` (n {n[s]})" for s in [*sites, *ext])
        + " | of the shuffled bound | share of its lead over the federation removed |",
        "|---|---|---|" + "---|" * (len(sites) + len(ext)) + "---|---|"]
    for label, rs in runs.items():
        values = [r["value"] for r in rs]
        per_site = [fmt([r["per_site"].get(s, math.nan) for r in rs]) for s in sites]
        per_ext = [fmt([r["external"][e]["value"] for r in rs]) for e in ext]
        share = (share_removed(shuffled, means[label], fed)
                 if label.startswith("centralised") and SHUFFLED not in label else math.nan)
        lines.append(f"| {label} | {fmt(values)} | "
                     + ", ".join(f"{v:.3f}" for v in values) + " | "
                     + " | ".join([*per_site, *per_ext])
                     + f" | {fl._f(means[label] / shuffled if shuffled else math.nan, 2)} | "
                     + ("–" if not math.isfinite(share) else f"{share:.2f}: {reading(share)}"
                        + ("; this order falls below the federation itself" if share > 1
                           else ""))
                     + " |")
    lines += ["", "How the share is read was fixed in `simulations/batch_order_bench.py` before "
              f"any run: at least {MOST} reads \"most of the gap comes with how batches are "
              f"made up\"; at most {LITTLE}, \"little of it\" (the rest from averaging models "
              "trained apart); between, \"part of it\". Site orders weigh the sites equally "
              "(the same steps each, as the federation's sites take); the shuffled bound "
              "weighs them by their rows.", "", fl._cpu_note(jobs), ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run (or reuse) the runs and write the section into ``--out``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--quick", action="store_true",
                   help="two tiny SYNTHETIC tabular sites, 1 round, the tiny backbone")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--data-root", type=Path, default=REPO / "demo_data")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="run cache; the federated bench's foundation_kept folder reuses its "
                        "shuffled bound and naive runs")
    p.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    args = p.parse_args(argv)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="batch_order_"))
    work.mkdir(parents=True, exist_ok=True)
    if args.quick:
        quick = work / "quick_sites"
        sites = ({fl.QUICK_TASK: sorted(quick.glob(f"{fl.QUICK_TASK}_*"))} if quick.exists()
                 else fl.make_quick_sites(quick))
        task = fl.QUICK_TASK
        setup = fl.site_setup(sites, fl.Budget(rounds=1, local_steps=2), mixed_task="")
    else:
        task = TASK
        setup = fl.site_setup(
            {task: [args.data_root / n for n in fl.FOUNDATION_TASKS[task]]}, fl.Budget(),
            base=fl.FOUNDATION_BASE + fl.FOUNDATION_KEPT, mixed_task="",
            external={task: [args.data_root / n for n in fl.FOUNDATION_EXTERNAL[task]]})
    steps = setup.budget.local_steps
    jobs = fl.run_jobs(setup, plan(task, args.seeds, steps), work, args.jobs)
    cmd = ["python -m simulations.batch_order_bench", "--seeds", *map(str, args.seeds)]
    cmd += ["--quick"] if args.quick else []
    cmd += [f"--jobs {args.jobs}"] if args.jobs > 1 else []
    res: dict[str, Any] = {
        "task": task, "seeds": list(args.seeds), "jobs": jobs, "base": list(setup.base),
        "budget": asdict(setup.budget), "synthetic": setup.synthetic[task],
        "orders": {label: [list(o) for o in opts] for label, opts in orders(steps).items()},
        "command": " ".join([*cmd, f"--out {shown_path(args.out)}"]),
        "date": time.strftime("%Y-%m-%d")}
    insert_section(args.out, render(res), before=BEFORE)
    print(f"wrote the section {HEADING!r} into {args.out}")
    return res


if __name__ == "__main__":
    main()
