"""Federated LoRA (#14): where the federation's gap to its centralised bound comes from.

On ``tumour_cls`` (real Br35H, the pretrained foundation) the federation stays below its bound
under every rule. Two diagnostics train the bound again on the same pooled rows, seeds and
start, changing only its batches, beside the federation's own runs (reused from the federated
bench's cache):

1. **Batch order** (the kept-moments table: 5 rounds x 12 local steps, lr 0.002). A federated
   site's every step sees its own sources only; the bound shuffles every site's examples into
   each batch. Here it also trains on site-homogeneous batches
   (:mod:`unicon_core.data.site_batches`): one site per batch, sites in turn (``block`` 1),
   and a round's local steps of one site after another (``block`` = local steps), against
   the naive rule. Sites weigh equally in the site orders (the same steps each), as in the
   federation.
2. **Step count** (FedOpt's split: 60 rounds x 1 step, lr 0.001). FedOpt's server takes one
   Adam step a round on the sites' mean gradient, i.e. on their batches taken together (3 x 8
   = 24 examples); the bound takes ``sites`` steps of 8 a round. Here it also takes one step
   of 24 a round, against FedOpt's row chosen per seed on validation.
3. **FedOpt at the bound's step count** (:data:`MATCHED`, set from (2) before any run of it):
   one-step rounds on site batches of about ``batch / sites`` in as many more rounds as keep
   each site's examples, so the server takes about the bound's steps on about as many
   examples; on ``tumour_cls`` (the last row of table 2, also scored on validation) and on
   ``ct_seg`` (table 3, beside its FedOpt table's bound and row). One row each, no choice
   among rows: its reading is its fed / central against the #14 goal.
4. **Replication** (``--replicate-seeds``, :data:`REPLICATE_HEADING`): the setting of (3) and
   each task's bound again on seeds no table above used, read by the same goal on those
   seeds alone (fed / central of their means at least 0.98: met), a rule committed before
   any of their runs had a result; the ratio over every seed of both is shown beside it, not
   read.

How each is read, fixed before any of its runs: the share of the bound's lead over the
federation that the changed bound removes, (bound - changed) / (bound - federated) on the
means over seeds; at least 0.5 reads "most of the gap comes with" the change, at most 0.2
"little of it", between them "part of it".

``--work-dir`` is the federated bench's work folder: its ``foundation_kept``,
``foundation_fedopt`` and ``foundation_ctfedoptlong`` parts hold the bounds and federated runs
read here, with the same job keys and setups, so they are reused rather than rerun (and run
first where missing).
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

HEADING = "## Federated LoRA (#14): where the gap to the centralised bound comes from"
ORDER_HEADING = "### The bound's batch order (moments kept, 5 x 12)"
STEPS_HEADING = "### The bound at FedOpt's step count (60 x 1, lr 0.001)"
CT_HEADING = "### FedOpt at the bound's step count on {task} (3x the rounds' examples, one-step)"
REPLICATE_HEADING = "### The setting again on new seeds ({seeds}): a replication"
TASK = "tumour_cls"
#: Where the section goes when the file has none yet: just after the federated LoRA section.
BEFORE = "## Forgetting regime (#15)"
SHUFFLED = "shuffled across the pooled sites (the bound of every #14 table)"
FEDERATED = "federated, naive rule"
STEPS_BOUND = "centralised, its FedOpt table's bound (`sites` steps of {batch} a round)"
FEDOPT_CHOSEN = "FedOpt's split, the row chosen per seed on validation"
#: FedOpt's split at the bound's step count, set from the step-count table before any run of
#: it (not one of the fedopt table's rows, and no choice among rows: its one reading is its
#: ratio to the bound, goal >= 0.98): one step a round on site batches of
#: :func:`matched_batch` (the one-step cut's examples in more rounds: 160 x 1 of 3), eta =
#: lr (one server step as long as one of the bound's) and no round norm bound (it rejected
#: honest gradients in the fedopt table).
MATCHED = ("FedOpt's split at the bound's step count: one-step rounds on site batches of "
           "{batch} ({rounds} x 1), eta = lr, no round norm bound; set before any run of it")
#: The reading rule of the module docstring (share of the gap a change removes).
MOST, LITTLE = 0.5, 0.2
#: What each table's change stands for, and what the rest of the gap is put down to.
ORDER_CAUSE = ("how batches are made up", "averaging models trained apart")
STEPS_CAUSE = ("FedOpt's fewer, larger steps",
               "federating them (each site's gradient apart, the round norm bound, the "
               "server's own Adam)")
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


def steps_job(task: str, seed: int, setup: fl.Setup, n_sites: int) -> fl.Job:
    """The bound at FedOpt's step count: one step a round on ``n_sites`` batches as one."""
    return fl.Job("central", task, seed,
                  options=((fl.POOLED_BATCH, setup.budget.batch_size * n_sites),))


def matched_batch(budget: fl.Budget, n_sites: int) -> int:
    """The site batch whose one-step rounds give FedOpt's server about the bound's steps: the
    whole number nearest to ``batch_size / n_sites`` (the larger on a tie) that divides the
    examples per site (8 / 3 -> 3: 480 examples in 160 rounds)."""
    examples = budget.rounds * budget.local_steps * budget.batch_size
    target = budget.batch_size / n_sites
    fits = [b for b in range(1, budget.batch_size + 1) if examples % b == 0]
    return min(fits, key=lambda b: (abs(b - target), -b))


def matched_job(task: str, seed: int, setup: fl.Setup, n_sites: int) -> fl.Job:
    """The federated run of :data:`MATCHED` on the one-step cut ``setup``."""
    (opts,) = fl.unbounded(fl.fedopt_lr_variant(setup.budget.lr)).values()
    return fl.Job("fed", task, seed, fl.VARIANT_RULE,
                  options=(*opts, (fl.ONE_STEP_BATCH, matched_batch(setup.budget, n_sites))))


def share_removed(bound: float, changed: float, federated: float) -> float:
    """How much of the bound's lead over the federation a changed bound removes; NaN where
    the federation is not below the bound (no gap to split)."""
    gap = bound - federated
    if not (math.isfinite(gap) and math.isfinite(changed)) or gap <= 0:
        return math.nan
    return (bound - changed) / gap


def reading(share: float, cause: tuple[str, str] = ORDER_CAUSE) -> str:
    """The reading rule fixed before any run (see the module docstring), on the share as the
    table shows it (two decimals); ``cause``: what the change stands for, and the rest."""
    if not math.isfinite(share):
        return "no reading: the federation is not below the bound here"
    share = round(share, 2)
    if share >= MOST:
        return f"most of the gap comes with {cause[0]}"
    if share <= LITTLE:
        return f"little of it: the rest comes from {cause[1]}"
    return f"part of the gap comes with {cause[0]}"


def table_lines(rows: Mapping[str, Sequence[Mapping[str, Any]]], bound: str, federated: str,
                cause: tuple[str, str], shares: bool = True) -> list[str]:
    """One table: per row (label -> its runs, one per seed) the test metric (mean ± std, per
    seed), per training site and evaluation-only site, the ratio to row ``bound`` and, for
    every other centralised row, the share of ``bound``'s lead over row ``federated`` it
    removes, read by the rule fixed before the runs."""
    sites = sorted({site for rs in rows.values() for r in rs for site in r["per_site"]})
    ext = sorted({site for rs in rows.values() for r in rs for site in r.get("external", {})})
    first = rows[bound][0]
    n = {**first["per_site_n"], **{e: first["external"][e]["n"] for e in ext}}
    means = {label: mean_std([r["value"] for r in rs])[0] for label, rs in rows.items()}
    top, fed = means[bound], means[federated]
    lines = ["| training, batches | test (mean ± std) | per seed | "
             + " | ".join(f"`{s}` (n {n[s]})" for s in [*sites, *ext])
             + " | of the bound |" + (" share of its lead over the federation removed |"
                                      if shares else ""),
             "|---|---|---|" + "---|" * (len(sites) + len(ext)) + "---|" + "---|" * shares]
    for label, rs in rows.items():
        values = [r["value"] for r in rs]
        share = (share_removed(top, means[label], fed)
                 if label.startswith("centralised") and label != bound else math.nan)
        said = ("–" if not math.isfinite(share) else f"{share:.2f}: {reading(share, cause)}"
                + ("; below the federation itself" if share > 1 else ""))
        lines.append(" | ".join([
            f"| {label}", fmt(values), ", ".join(f"{v:.3f}" for v in values),
            *[fmt([r["per_site"].get(s, math.nan) for r in rs]) for s in sites],
            *[fmt([r["external"][e]["value"] for r in rs]) for e in ext],
            fl._f(means[label] / top if top else math.nan, 2), *([said] if shares else [])])
                     + " |")
    return lines


def goal_line(fed_runs: Sequence[Mapping[str, Any]], bound_runs: Sequence[Mapping[str, Any]],
              which: str = "The last row") -> str:
    """``which`` row's fed / central against the bound (ratio of the means, per seed), the
    #14 goal's verdict, and the same on each evaluation-only site."""
    fed = [r["value"] for r in fed_runs]
    per, of_means = fl.ratio_stats(fed, [r["value"] for r in bound_runs])
    ext = sorted(fed_runs[0].get("external", {}))
    ext_ratios = [fl.ratio_stats([r["external"][e]["value"] for r in fed_runs],
                                 [r["external"][e]["value"] for r in bound_runs])[1]
                  for e in ext]
    return (f"{which} against the bound: fed / central {fl._f(of_means)} (per seed "
            + ", ".join(fl._f(v) for v in per) + f"), goal >= {fl.GOAL_RATIO}: "
            + fl._goal(fed, of_means)
            + "".join(f"; on `{e}` {fl._f(v)}" for e, v in zip(ext, ext_ratios, strict=True))
            + ".")


def _setting(part: Mapping[str, Any]) -> str:
    """A part's budget and overrides, as a table's intro gives them."""
    b = part["budget"]
    steps = f"{b['local_steps']} local step{'s' if b['local_steps'] != 1 else ''}"
    return (f"{b['rounds']} rounds x {steps} of {b['batch_size']}, lr "
            f"{b['lr']:g}, `{' '.join(part['base'])}`")


def order_lines(res: Mapping[str, Any]) -> list[str]:
    """The batch-order table and its intro."""
    task, seeds, jobs = res["task"], res["seeds"], res["order"]["jobs"]
    rows = {f"centralised, {label}": [jobs[fl.Job("central", task, s, options=tuple(
        tuple(o) for o in opts)).key] for s in seeds]
        for label, opts in res["order"]["orders"].items()}
    rows[FEDERATED] = [jobs[fl.Job("fed", task, s, fl.VARIANT_RULE).key] for s in seeds]
    return [ORDER_HEADING, "",
            f"{_setting(res['order'])}. The bound trains the pooled train splits "
            f"(`local_steps x sites` steps a round) with its batches made up {len(rows) - 1} "
            "ways; the federation is the naive rule at the same budget (both the "
            "kept-moments table's runs). Site orders weigh the sites equally (the same steps "
            "each, as the federation's sites take); the shuffled bound weighs them by their "
            "rows.", "",
            *table_lines(rows, f"centralised, {SHUFFLED}", FEDERATED, ORDER_CAUSE), ""]


def bound_runs(part: Mapping[str, Any], task: str, seeds: Sequence[int]
               ) -> list[Mapping[str, Any]]:
    """A part's centralised bound on ``seeds`` (its plain central job)."""
    return [part["jobs"][fl.Job("central", task, s).key] for s in seeds]


def matched_runs(part: Mapping[str, Any], task: str, seeds: Sequence[int]
                 ) -> list[Mapping[str, Any]]:
    """A part's :data:`MATCHED` row on ``seeds``."""
    opts = tuple(tuple(o) for o in part["matched"]["options"])
    return [part["jobs"][fl.Job("fed", task, s, fl.VARIANT_RULE, options=opts).key]
            for s in seeds]


def _data_line(part: Mapping[str, Any], first: Mapping[str, Any]) -> str:
    """A 3D or replication table's intro: its data, setting, metric and test n."""
    data = "**SYNTHETIC** CT phantoms" if part["synthetic"] else "real data"
    return (f"{data}; {_setting(part)}; {first['metric']} on the training sites' test splits "
            f"(n {first['n']}).")


def steps_lines(res: Mapping[str, Any]) -> list[str]:
    """The step-count table and its intro."""
    task, seeds, part = res["task"], res["seeds"], res["steps"]
    jobs, batch = part["jobs"], part["budget"]["batch_size"]
    variants = fl._stored_variants(part)
    chosen = [jobs[fl.Job("fed", task, p["seed"], fl.VARIANT_RULE,
                          options=variants[p["chosen"]]).key] for p in part["chosen"][task]]
    pooled = part["pooled_batch"]
    rows = {STEPS_BOUND.format(batch=batch): bound_runs(part, task, seeds),
            f"centralised, one step of {pooled} a round (FedOpt's server steps)": [
                jobs[fl.Job("central", task, s, options=((fl.POOLED_BATCH, pooled),)).key]
                for s in seeds],
            FEDOPT_CHOSEN: chosen}
    matched = MATCHED.format(**part["matched"])
    rows[matched] = matched_runs(part, task, seeds)
    picks = part["chosen"][task]
    own = part["matched"]["val"]
    theirs = [p["val"][p["chosen"]] for p in picks]
    goal = (goal_line(rows[matched], rows[STEPS_BOUND.format(batch=batch)])
            + f" On the training sites' validation splits (n {picks[0].get('val_n')}) it "
            "scores " + ", ".join(fl._f(v) for v in own) + " against the chosen FedOpt "
            "row's " + ", ".join(fl._f(v) for v in theirs) + ": validation would choose it "
            f"over that row on {sum(a > b for a, b in zip(own, theirs, strict=True))} of "
            f"{len(own)} seeds.")
    return [STEPS_HEADING, "",
            f"{_setting(part)}. FedOpt's server takes one Adam step a round on the sites' "
            f"mean gradient, i.e. on their {batch}-example batches taken together; the "
            f"bound of its table takes `sites` steps of {batch} a round. The second row "
            f"takes one step of {pooled} a round on the shuffled pool (so {pooled} examples "
            "from any sites, not exactly each site's share) with the bound's own AdamW. "
            f"FedOpt: the row chosen per seed on the validation splits among its table's "
            f"{len(variants)} rows (chosen: "
            + ", ".join(f"seed {p['seed']} {p['chosen']!r}" for p in part["chosen"][task])
            + ").", "",
            *table_lines(rows, STEPS_BOUND.format(batch=batch), FEDOPT_CHOSEN, STEPS_CAUSE),
            "", goal, ""]


def ct_lines(res: Mapping[str, Any]) -> list[str]:
    """The matched row's rule on the 3D task, beside its table's bound and FedOpt row."""
    part, seeds = res["ct"], res["seeds"]
    task, jobs, b = part["task"], part["jobs"], part["budget"]
    (label, opts), = fl._stored_variants(part).items()
    matched = MATCHED.format(**part["matched"])
    bound = bound_runs(part, task, seeds)
    rows = {STEPS_BOUND.format(batch=b["batch_size"]): bound,
            label: [jobs[fl.Job("fed", task, s, fl.VARIANT_RULE, options=opts).key]
                    for s in seeds],
            matched: matched_runs(part, task, seeds)}
    return [CT_HEADING.format(task=task), "",
            f"{_data_line(part, bound[0])} The same rule as the row above, on the 3D task's "
            "FedOpt table "
            f"(its 3x-rounds examples cut into one-step rounds), set before any run of it: "
            f"one-step rounds on site batches of {part['matched']['batch']}, so the server "
            "takes as many steps, on as many volumes, as the bound. No validation choice: that "
            "table chose no row.", "",
            *table_lines(rows, STEPS_BOUND.format(batch=b["batch_size"]), label,
                         STEPS_CAUSE, shares=False), "",
            goal_line(rows[label], bound, "FedOpt's row") + " "
            + goal_line(rows[matched], bound), ""]


def replicate_lines(res: Mapping[str, Any]) -> list[str]:
    """The replication: per task the bound and the setting on the new seeds, the goal's
    verdict on those seeds alone, and the ratio over every seed beside it."""
    parts = res.get("replicate") or []
    if not parts:
        return []
    seeds = parts[0]["seeds"]
    lines = [REPLICATE_HEADING.format(seeds=", ".join(map(str, seeds))), "",
             "The last rows of tables 2 and 3, each beside its bound, again on seeds none of "
             "the tables above used (their seeds: " + ", ".join(map(str, res["seeds"]))
             + "), nothing else changed. How it is read was committed before any of these "
             "runs had a result: "
             f"the goal (fed / central of the means >= {fl.GOAL_RATIO}) on these seeds alone. "
             "The ratio over every seed of both runs is shown beside it, not read.", ""]
    for part in parts:
        task = part["task"]
        bound_label = STEPS_BOUND.format(batch=part["budget"]["batch_size"])
        matched = MATCHED.format(**part["matched"])
        rows = {bound_label: bound_runs(part, task, seeds),
                matched: matched_runs(part, task, seeds)}
        every = [*res["seeds"], *seeds]
        _, all_ratio = fl.ratio_stats([r["value"] for r in matched_runs(part, task, every)],
                                      [r["value"] for r in bound_runs(part, task, every)])
        lines += [f"`{task}`: {_data_line(part, rows[bound_label][0])}", "",
                  *table_lines(rows, bound_label, matched, STEPS_CAUSE, shares=False), "",
                  goal_line(rows[matched], rows[bound_label], "The setting")
                  + f" Over all {len(every)} seeds ({', '.join(map(str, every))}): fed / "
                  f"central {fl._f(all_ratio)}.", ""]
    return lines


def render(res: Mapping[str, Any]) -> str:
    """The section: the batch-order, step-count and 3D tables, and the replication when
    ``res`` has one."""
    data = "**SYNTHETIC** sites" if res["synthetic"] else "real data"
    every = {**res["order"]["jobs"], **res["steps"]["jobs"], **res["ct"]["jobs"],
             **{k: v for part in res.get("replicate") or [] for k, v in part["jobs"].items()}}
    made = fl._made_line(list(every.values())).strip()
    return "\n".join([
        HEADING, "",
        f"Written by `{res['command']}` on {res['date']}; tables 1 and 2: {data}, "
        f"`{res['task']}` (table 3 says its own); seeds "
        f"{', '.join(map(str, res['seeds']))}. Tables 1 and 2 train the centralised bound again "
        "on the same pooled train splits, seeds and start with only its batches changed, "
        "beside the federation's own runs; table 3 sets FedOpt at the bound's step count on "
        "the 3D task. Metric of tables 1 and 2: "
        f"{res['metric']} on the training sites' test splits (n {res['n']}), per training "
        f"site and on the evaluation-only sites (never trained or pooled). {made}", "",
        "How each share is read was fixed in `simulations/batch_order_bench.py` before any "
        f"run of its table: at least {MOST} reads \"most of the gap comes with\" the change; "
        f"at most {LITTLE}, \"little of it\"; between, \"part of it\".", "",
        *order_lines(res), *steps_lines(res), *ct_lines(res), *replicate_lines(res),
        fl._cpu_note(every), ""])


def _matched(setup: fl.Setup, job: fl.Job) -> dict[str, Any]:
    """What the matched row's label and table read of its job: site batch, rounds, options."""
    return {"batch": dict(job.options)[fl.ONE_STEP_BATCH], "options": [list(o) for o in
                                                                       job.options],
            "rounds": fl.job_budget(setup, job).rounds}


def ct_setup(quick: Mapping[str, Sequence[Path]] | None, data_root: Path, budget: fl.Budget
             ) -> tuple[str, int, fl.Setup]:
    """The 3D task's FedOpt setup (the quick sites with ``--quick``): task, sites, setup."""
    sites = ({t: list(d) for t, d in quick.items()} if quick is not None
             else {t: [data_root / n for n in names]
                   for t, names in fl.FOUNDATION_CT_TASKS.items()})
    (task,) = sites
    return task, len(sites[task]), fl.ct_fedopt_long_setup(sites, budget)


def replicate_part(setup: fl.Setup, task: str, n_sites: int, seeds: Sequence[int],
                   earlier: Sequence[int], work: Path, n_jobs: int) -> dict[str, Any]:
    """The bound and the matched row of ``setup`` on the new ``seeds`` and on the tables'
    ``earlier`` ones (run where not cached in ``work``, the part's own folder, so the
    tables' runs are reused, not rerun)."""
    wanted = [job for s in [*seeds, *earlier] for job in (
        fl.Job("central", task, s), matched_job(task, s, setup, n_sites))]
    return {"task": task, "seeds": list(seeds), "synthetic": setup.synthetic[task],
            "jobs": fl.run_jobs(setup, wanted, work, n_jobs), "base": list(setup.base),
            "budget": asdict(setup.budget), "matched": _matched(setup, wanted[1])}


def ct_part(quick: Mapping[str, Sequence[Path]] | None, args: argparse.Namespace,
            budget: fl.Budget, work: Path) -> dict[str, Any]:
    """The 3D task's FedOpt part (its bound and row, reused from the cache) with the matched
    row's runs; on the quick sites with ``--quick``."""
    task, n_sites, setup = ct_setup(quick, args.data_root, budget)
    part = fl.foundation_runs(quick, args.data_root, budget, args.seeds, work,
                              args.jobs)["foundation_ctfedoptlong"]()
    wanted = [matched_job(task, s, setup, n_sites) for s in args.seeds]
    extra = fl.run_jobs(setup, wanted, work / "foundation_ctfedoptlong", args.jobs)
    return {**part, "task": task, "jobs": {**part["jobs"], **extra},
            "synthetic": setup.synthetic[task], "matched": _matched(setup, wanted[0])}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run (or reuse) the runs and write the section into ``--out``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--quick", action="store_true",
                   help="two tiny SYNTHETIC tabular sites, 1 round of 2 steps")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--data-root", type=Path, default=REPO / "demo_data")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="the federated bench's work folder: its kept-moments and FedOpt "
                        "parts' runs are reused")
    p.add_argument("--replicate-seeds", type=int, nargs="*", default=[],
                   help="seeds none of --seeds: the matched rows and their bounds again "
                        "(table 4)")
    p.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    args = p.parse_args(argv)
    if reused := sorted(set(args.replicate_seeds) & set(args.seeds)):
        p.error(f"--replicate-seeds {reused} are among --seeds: a replication needs new seeds")
    # the sites' paths travel into run configs, which refuse a relative one
    args.data_root = args.data_root.resolve()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="batch_order_"))
    work.mkdir(parents=True, exist_ok=True)
    quick: dict[str, list[Path]] | None = None
    if args.quick:
        folder = work / "quick_sites"
        sites = ({fl.QUICK_TASK: sorted(folder.glob(f"{fl.QUICK_TASK}_*"))} if folder.exists()
                 else fl.make_quick_sites(folder))
        quick, task, budget = sites, fl.QUICK_TASK, fl.Budget(rounds=1, local_steps=2)
        ext: dict[str, list[Path]] = {}
    else:
        task, budget = TASK, fl.Budget()
        sites = {task: [args.data_root / n for n in fl.FOUNDATION_TASKS[task]]}
        ext = {task: [args.data_root / n for n in fl.FOUNDATION_EXTERNAL[task]]}
    kept = fl.site_setup(sites, budget, base=fl.FOUNDATION_BASE + fl.FOUNDATION_KEPT,
                         mixed_task="", external=ext)
    steps = kept.budget.local_steps
    order_jobs = fl.run_jobs(kept, plan(task, args.seeds, steps), work / "foundation_kept",
                             args.jobs)
    one = fl.fedopt_setup(fl.kept_tasks(sites, quick is not None), budget, ext)
    n_sites = len(sites[task])
    extra = fl.run_jobs(one, [job(task, s, one, n_sites) for s in args.seeds
                              for job in (steps_job, matched_job)],
                        work / "foundation_fedopt", args.jobs)
    fedopt = fl.foundation_runs(quick, args.data_root, budget, args.seeds, work,
                                args.jobs)["foundation_fedopt"]()
    wanted = [matched_job(task, s, one, n_sites) for s in args.seeds]
    val = fl.val_scores(one, extra, wanted, work / "foundation_fedopt")
    replicate = []
    if args.replicate_seeds:
        ct_task, ct_sites, ct_one = ct_setup(quick, args.data_root, budget)
        replicate = [
            replicate_part(one, task, n_sites, args.replicate_seeds, args.seeds,
                           work / "foundation_fedopt", args.jobs),
            replicate_part(ct_one, ct_task, ct_sites, args.replicate_seeds, args.seeds,
                           work / "foundation_ctfedoptlong", args.jobs)]
    first = next(iter(order_jobs.values()))
    cmd = ["python -m simulations.batch_order_bench", "--seeds", *map(str, args.seeds)]
    cmd += ["--quick"] if args.quick else []
    cmd += [f"--jobs {args.jobs}"] if args.jobs > 1 else []
    cmd += (["--replicate-seeds", *map(str, args.replicate_seeds)] if args.replicate_seeds
            else [])
    res: dict[str, Any] = {
        "task": task, "seeds": list(args.seeds), "synthetic": kept.synthetic[task],
        "metric": first["metric"], "n": first["n"],
        "order": {"jobs": order_jobs, "base": list(kept.base), "budget": asdict(kept.budget),
                  "orders": {label: [list(o) for o in opts]
                             for label, opts in orders(steps).items()}},
        "steps": {**fedopt, "jobs": {**fedopt["jobs"], **extra},
                  "pooled_batch": one.budget.batch_size * n_sites,
                  "matched": {**_matched(one, wanted[0]),
                              "val": [fl._num(val[j.key].get("value")) for j in wanted]}},
        "ct": ct_part(quick, args, budget, work), "replicate": replicate,
        "command": " ".join([*cmd, f"--out {shown_path(args.out)}"]),
        "date": time.strftime("%Y-%m-%d")}
    insert_section(args.out, render(res), before=BEFORE)
    print(f"wrote the section {HEADING!r} into {args.out}")
    return res


if __name__ == "__main__":
    main()
