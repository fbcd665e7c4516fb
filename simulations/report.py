"""BENCHMARKS.md and the plots, from the suite's results (pure formatting, no training)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def shown_path(path: str | Path) -> str:
    """A path as committed reports show it, never a machine's absolute path: relative to the
    repository when inside it; outside it, only its last two parts after ``.../`` (a
    relative path that does not lead into the repository is kept as given)."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(REPO))
    except ValueError:
        if not p.is_absolute():
            return str(p)
        return "/".join(["...", *p.parts[-2:]])


def write_synthetic_site(folder: Path, spec: Any, source: str, description: str,
                         rows: Sequence[dict[str, Any]]) -> Path:
    """A SYNTHETIC benchmark site: ``site.json`` (``synthetic: true``, ``spec``'s task) and a
    ``manifest.csv`` of ``rows`` (columns in the first row's order)."""
    import csv

    from unicon_core.data.manifest import SiteMetadata, write_site_json

    folder.mkdir(parents=True)
    write_site_json(folder, SiteMetadata(site=folder.name, synthetic=True, source=source,
                                         description=description, task=spec))
    with (folder / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder


def shown_command(args: Sequence[str]) -> str:
    """A command line as committed reports show it: every absolute path in it, alone or as
    ``--opt=PATH`` / ``key=PATH``, through :func:`shown_path`."""
    out = []
    for arg in args:
        head, sep, tail = arg.rpartition("=")
        if sep and tail.startswith("/"):
            out.append(f"{head}={shown_path(tail)}")
        elif arg.startswith("/"):
            out.append(shown_path(arg))
        else:
            out.append(arg)
    return " ".join(out)

#: Goals of issue 5 (ratios).
GOAL_FED_VS_CENTRAL = 0.98
GOAL_BYTES_RATIO = 1 / 50
GOAL_WALL_RATIO = 1.3
#: The backbones section's held-out Br35H table (:mod:`simulations.backbones_bench`), which
#: other sections name rather than quote, so a rerun of it cannot leave them stale.
UNSEEN_SOURCES_TABLE = "Tumour classification on unseen sources"


def cpu_name() -> str:
    """The CPU's model and the vector instructions torch's kernels use, e.g. "AMD EPYC,
    AVX2": the same training gives other floats on another CPU (kernels differ by vector
    width and vendor), so runs made on different CPUs need not agree bit for bit."""
    import torch

    model = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {torch.backends.cpu.get_cpu_capability()}"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation of the finite values (NaN if none)."""
    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def fmt(values: Sequence[float] | float, digits: int = 3) -> str:
    """``mean ± std`` (or one value); ``n/a`` when undefined."""
    if isinstance(values, (int, float)):
        return "n/a" if not math.isfinite(values) else f"{values:.{digits}f}"
    m, s = mean_std(values)
    return "n/a" if not math.isfinite(m) else f"{m:.{digits}f} ± {s:.{digits}f}"


def mean_matrix(results: Sequence[dict[str, Any]]) -> np.ndarray:
    """Cell-wise mean over seeds of the ``matrix`` of each result (NaN where all are NaN)."""
    import warnings

    with warnings.catch_warnings():  # cells before a task joined are NaN for every seed
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.array([r["matrix"] for r in results], dtype=float), axis=0)


def final_per_task(results: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
    """Task -> final value per seed."""
    out: dict[str, list[float]] = {}
    for r in results:
        for task, row in zip(r["order"], r["matrix"], strict=True):
            out.setdefault(task, []).append(float(row[-1]))
    return out


def goal(ok: bool) -> str:
    """Met / MISSED."""
    return "met" if ok else "**MISSED**"


def plot_all(suite: dict[str, Any], out_dir: Path) -> list[Path]:
    """Heat maps of the matrix, per-task curves across stages, bytes per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    cont = suite["continual"]
    order, stages = suite["order"], suite["stages"]
    names = [n for n in ("isolated", "naive_sequential") if n in cont]
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        m = mean_matrix(cont[name])
        im = ax.imshow(np.ma.masked_invalid(m), vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(stages)), stages, rotation=30, ha="right")
        ax.set_yticks(range(len(order)), [_label(t, suite) for t in order])
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if math.isfinite(m[i, j]):
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", color="w",
                            fontsize=8)
        ax.set_title(f"{name}: task x stage (mean over seeds)")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    paths.append(out_dir / "matrix.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(order), figsize=(3.2 * len(order), 3), squeeze=False)
    for ax, (i, task) in zip(axes[0], enumerate(order), strict=True):
        for name in cont:
            m = mean_matrix(cont[name])
            ax.plot(range(len(stages)), m[i], marker="o", label=name)
        ax.set_title(_label(task, suite), fontsize=9)
        ax.set_xticks(range(len(stages)), [str(k) for k in range(len(stages))])
        ax.set_xlabel("after stage")
    axes[0][0].set_ylabel("held-out metric (test)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    paths.append(out_dir / "task_curves.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    rows = suite["bytes"]
    labels = [f"{r['task']}\n({r['backbone']})" for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows)), 3.5))
    ax.bar(x - 0.2, [r["skill_bytes"] for r in rows], 0.4, label="skill (unicon)")
    ax.bar(x + 0.2, [r["full_bytes"] for r in rows], 0.4, label="full model (FedAvg)")
    ax.set_yscale("log")
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel("bytes per site and round")
    ax.legend()
    fig.tight_layout()
    paths.append(out_dir / "bytes_per_round.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def _label(task: str, suite: dict[str, Any]) -> str:
    return f"{task} (SYNTHETIC)" if task in suite["synthetic"] else task


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows)]


def write_markdown(suite: dict[str, Any], path: Path, plot_paths: Sequence[Path]) -> str:
    """BENCHMARKS.md text (also written to ``path``)."""
    cont, order, stages = suite["continual"], suite["order"], suite["stages"]
    meta = suite["meta"]
    lines = [
        "# Benchmarks (issue 5: continual expansion)",
        "",
        "Written by `python -m simulations.run_benchmarks` (do not edit by hand).",
        "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']}; wall time of the suite: {meta['wall_s'] / 60:.1f} min "
        f"({meta.get('jobs', 1)} seed worker process(es))",
        f"- machine: {meta['machine']}",
        f"- seeds: {meta['seeds']}; budget: {meta['rounds']} federated rounds per stage, "
        f"{meta['local_steps']} local optimiser steps per site and round, batch "
        f"{meta['batch_size']}, lr {meta['lr']}, backbone `{meta['backbone']}` (random init, "
        "frozen, unless the foundation stage says otherwise)",
        "- every number is a held-out metric on the sites' **test** split (AUC for "
        "classification, Dice for segmentation, Harrell's C-index for survival); mean ± sample "
        "std over seeds",
        f"- **SYNTHETIC** data: {', '.join(suite['synthetic'])} (seeded phantoms: numbers on them "
        "show the mechanics, not clinical performance); the other tasks are real data",
        f"- run folder: `{shown_path(meta['run_dir'])}`",
        "",
        "Stages: " + "; ".join(
            f"{i}. {s['name']} ({', '.join(s['sites'])}"
            + (f"; expands {', '.join(f'{k} from {v}' for k, v in s['expand'].items())}"
               if s.get("expand") else "") + ")"
            for i, s in enumerate(meta["stages"])),
        "",
        "## Definitions",
        "",
        "`R[i][j]` = task i's test metric right after stage j. A task's reference value is "
        "`R[i][t_i]`, t_i the last stage that trained it (Avalanche: the value right after "
        "training, not the best). Forgetting_i = `R[i][t_i] - R[i][T-1]`; BWT_i = "
        "`R[i][T-1] - R[i][t_i]`; both averaged over tasks not trained at the last stage, so "
        "BWT = -forgetting. Average final metric = mean over tasks of `R[i][T-1]`.",
        "",
        "## Continual summary",
        "",
    ]
    rows = []
    for name, res in cont.items():
        rows.append([name, fmt([r["avg"] for r in res]), fmt([r["bwt"] for r in res]),
                     fmt([r["forgetting"] for r in res]),
                     fmt([r["wall_s"] for r in res], 0)])
    if suite.get("foundation"):
        res = suite["foundation"]
        rows.append(["isolated on federated foundation", fmt([r["avg"] for r in res]),
                     fmt([r["bwt"] for r in res]), fmt([r["forgetting"] for r in res]),
                     fmt([r["wall_s"] for r in res], 0)])
    lines += _table(["method", "avg final", "BWT", "forgetting", "wall s"], rows)
    iso_bwt = [r["bwt"] for r in cont.get("isolated", [])]
    naive_bwt = [r["bwt"] for r in cont.get("naive_sequential", [])]
    exact = bool(iso_bwt) and all(b == 0.0 for b in iso_bwt)
    lines += ["", f"- Isolated skills: BWT per seed = {iso_bwt} "
              f"({'exactly 0 for every seed' if exact else 'NOT exactly 0'}).",
              "- Naive sequential (one shared adapter): BWT per seed = "
              f"{[round(b, 4) for b in naive_bwt]} (expected < 0: "
              f"{'yes' if naive_bwt and mean_std(naive_bwt)[0] < 0 else 'no'}).", ""]
    if suite.get("before"):
        lines += before_after(suite["before"], suite)
    lines += ["### Task x stage matrix, isolated skills (mean ± std)", ""]
    lines += _matrix_table(cont.get("isolated", []), order, stages, suite)
    if "naive_sequential" in cont:
        lines += ["", "### Task x stage matrix, naive sequential (mean ± std)", ""]
        lines += _matrix_table(cont["naive_sequential"], order, stages, suite)

    lines += ["", "## Federated per task vs centralised and local-only (final values)", ""]
    finals = {n: final_per_task(r) for n, r in cont.items()}
    rows = []
    for task in order:
        fed = finals.get("isolated", {}).get(task, [])
        cen = finals.get("centralised", {}).get(task, [])
        loc = finals.get("local_only", {}).get(task, [])
        cen_mean = mean_std(cen)[0]
        r_mean = mean_std(fed)[0] / cen_mean if cen_mean else float("nan")
        per_seed = ", ".join(f"{f / c:.2f}" if c else "n/a"
                             for f, c in zip(fed, cen, strict=False))
        rows.append([_label(task, suite), fmt(fed), fmt(cen), fmt(loc),
                     f"{r_mean:.3f} ({per_seed})",
                     goal(math.isfinite(r_mean) and r_mean >= GOAL_FED_VS_CENTRAL),
                     fmt([f - lo for f, lo in zip(fed, loc, strict=False)])])
    lines += _table(["task", "federated (isolated)", "centralised", "local-only mean",
                     "fed / central: of the means (per seed)", f"goal ≥ {GOAL_FED_VS_CENTRAL}",
                     "fed − local"], rows)
    lines += ["", "Centralised pools each task's train splits and runs `local_steps × sites` "
              "steps per round (as many examples as the federation); local-only trains each "
              "site alone with the federation's per-site budget and tests it on its own test "
              "split. A task with one site (ctpet_seg) has no federation to gain from; there "
              "the federated and centralised skills start from the CT skill (expansion), "
              "local-only from scratch.", ""]

    lines += ["## Communication: bytes per site and round", ""]
    lines += ["Measured on Flower message content with "
              "`unicon_flower.accounting.content_bytes` (train + evaluate instruction "
              "down, both replies up). In the runs, the skill column is the real server's "
              "ledger; the full-model column is the full-model FedAvg baseline's messages of the "
              "same shape.", ""]
    rows = []
    for i, stage in enumerate(stages):
        iso = [r["logs"][i].get("bytes_down_per_site_round", 0)
               + r["logs"][i].get("bytes_up_per_site_round", 0) for r in cont.get("isolated", [])]
        full = [r["logs"][i].get("bytes_down_per_site_round", 0)
                + r["logs"][i].get("bytes_up_per_site_round", 0)
                for r in cont.get("full_fedavg", [])]
        if iso and full:
            ratio = mean_std(iso)[0] / mean_std(full)[0]
            rows.append([stage, f"{mean_std(iso)[0]:,.0f}", f"{mean_std(full)[0]:,.0f}",
                         f"1/{1 / ratio:.1f}", goal(ratio <= GOAL_BYTES_RATIO)])
    lines += _table(["stage (in the runs)", "skill bytes", "full-model bytes", "ratio",
                     "goal ≤ 1/50"], rows)
    lines += ["", "Same measurement per task and backbone (messages built from freshly "
              "initialised tensors of the real shapes):", ""]
    rows = [[r["backbone"], _label(r["task"], suite), f"{r['skill_params']:,}",
             f"{r['backbone_params']:,}", f"{r['skill_bytes']:,}", f"{r['full_bytes']:,}",
             f"1/{1 / r['ratio']:.1f}", goal(r["ratio"] <= GOAL_BYTES_RATIO)]
            for r in suite["bytes"]]
    lines += _table(["backbone", "task", "skill params", "backbone params", "skill bytes",
                     "full bytes", "ratio", "goal ≤ 1/50"], rows)
    lines += ["", "With the tiny default backbone (≈0.2M weights) the heads and private stems "
              "dominate a skill, so the ratio is far above 1/50; the goal is about large "
              "backbones, and the `small` rows show how the ratio moves with backbone size.", ""]

    mod = suite["modality"]
    lines += ["## Modality expansion: PET joins CT (**SYNTHETIC** CT+PET phantoms)", "",
              "Test Dice on the CT+PET site's patients, same budget, per seed mean ± std. "
              "The phantoms' lesions are clearly visible on CT but share it with benign mimics "
              "of the same density that take up no PET tracer (PET blurred, 6 mm FWHM), so "
              "CT+PET can beat CT-only only by learning to use PET. Synthetic data: this "
              "shows the expansion mechanism at work, not a clinical gain.",
              ""]
    rows = [[k, fmt([m[k] for m in mod]), ", ".join(f"{m[k]:.3f}" for m in mod)]
            for k in mod[0]] if mod else []
    lines += _table(["variant", "Dice (SYNTHETIC)", "per seed"], rows)
    if mod:
        gain = [m["ctpet_expanded"] - m["ct_only"] for m in mod]
        ct_mean = mean_std([m["ct_only"] for m in mod])[0]
        rel = mean_std([m["ctpet_expanded"] for m in mod])[0] / ct_mean - 1 if ct_mean else 0.0
        better = sum(g > 0 for g in gain)
        lines += ["", f"- CT+PET (expanded) − CT-only: {fmt(gain)} Dice, better in {better} of "
                  f"{len(gain)} seeds (relative, of the means: {100 * rel:+.0f} %; the seeds "
                  f"claim +5 %: {goal(ct_mean > 0 and rel >= 0.05)} on SYNTHETIC data).", ""]

    ada = suite["adaptation"]
    lines += [f"## Adaptation strategies on `{suite['meta']['adaptation_task']}` "
              "(FedAvg of what each trains, same budget)", ""]
    if ada:
        rows = [[k, fmt([a[k]["value"] for a in ada]),
                 f"{mean_std([a[k]['bytes_per_site_round'] for a in ada])[0]:,.0f}"]
                for k in ada[0]]
        lines += _table(["strategy", "test metric", "bytes per site and round"], rows)
        lines += ["", "linear probe: head only; full fine-tuning: stem + backbone + head; LoRA: "
                  "the skill; gradual unfreezing: top depth first, one more depth per round "
                  "(all by the last round); discriminative lr: full fine-tuning with lr × "
                  "(1/2.6)^(depth below the top).", ""]

    lines += overhead_section(suite.get("overhead"))
    lines += ["## Plots", ""] + [f"![{p.stem}]({p.as_posix()})" for p in plot_paths] + [""]
    text = "\n".join(lines)
    path.write_text(text)
    return text


#: What the one-engine refactor (issue #16) changed in how the baselines train, for the reader
#: of a before/after table (facts of the code, not of any run).
ENGINE_CHANGES = (
    "Before #16, every baseline but isolated skills and naive sequential ran on a second, "
    "plain FedAvg loop; after it, every method trains through the product's ServerApp "
    "strategy and ClientApp in process (same seeds per site and round, same local budget). "
    "On the product path each site builds its own model per message (same seeded "
    "initialisation) and reports validation metrics every round; every reply is checked by "
    "the server (update-norm bound of 4 x the round's median with >= 3 sites); aggregation is "
    "the strategy's, whose weight per site is the reply's example count clamped to the train "
    "count the site declared (the old loop weighted by examples seen, the same for every site "
    "at a fixed step budget, so sites with fewer train examples than steps x batch now weigh "
    "less); bytes are the strategy's ledger of real messages (more metrics per reply than the "
    "old loop's hand-made ones); under gradual unfreezing the whole plan set travels every "
    "round (the old loop sent only the round's unfrozen part), so its bytes grow."
)


def before_after(
    before: dict[str, Any], suite: dict[str, Any], after_label: str = "this run"
) -> list[str]:
    """The continual summary of a run before the one-engine refactor next to this run's.

    A method's average final metric is *identical* when every seed's value is the same,
    *within seed noise* when the means differ by at most the larger of the two seed standard
    deviations, else it *moved beyond seed noise* (said in the table and the text).
    """
    rows, moved = [], []
    methods = {**{n: r for n, r in suite["continual"].items()},
               **({"isolated on federated foundation": suite["foundation"]}
                  if suite.get("foundation") else {})}
    old_methods = {**before.get("continual", {}),
                   **({"isolated on federated foundation": before["foundation"]}
                      if before.get("foundation") else {})}
    for name, res in methods.items():
        old = old_methods.get(name)
        if not old:
            rows.append([name, "not run", fmt([r["avg"] for r in res]), "", "",
                         fmt([r["bwt"] for r in res]), "no before value"])
            continue
        a, b = [r["avg"] for r in res], [r["avg"] for r in old]
        (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
        noise = max(sa if math.isfinite(sa) else 0.0, sb if math.isfinite(sb) else 0.0)
        if len(a) == len(b) and all(x == y for x, y in zip(a, b, strict=True)):
            verdict = "identical per seed"
        elif abs(ma - mb) <= noise:
            verdict = "within seed noise"
        else:
            verdict = "**moved beyond seed noise**"
            moved.append(name)
        rows.append([name, fmt(b), fmt(a), f"{ma - mb:+.3f}", fmt([r["bwt"] for r in old]),
                     fmt([r["bwt"] for r in res]), verdict])
    meta = before.get("meta", {})
    lines = ["", "### Continual summary before/after the one-engine refactor (#16)", "",
             f"Before: `{meta.get('command', '?')}` at commit {meta.get('commit', '?')} "
             f"({meta.get('date', '?')}), seeds {meta.get('seeds', '?')}; after: "
             f"{after_label}. "
             "Seed noise = the larger of the two standard deviations over seeds.", ""]
    lines += _table(["method", "avg final before", "avg final after", "Δ mean", "BWT before",
                     "BWT after", "verdict"], rows)
    lines += ["", ENGINE_CHANGES, ""]
    if moved:
        lines += [f"Moved beyond seed noise: {', '.join(moved)}; see the reasons above "
                  "(the methods now run on the product's code, which is what is measured).", ""]
    else:
        lines += ["No method moved beyond seed noise.", ""]
    return lines


def per_seed_rows(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """One row per (method, seed) the after run finished: avg final and BWT before and after."""
    rows = []
    for name, res in after["continual"].items():
        old = {r["seed"]: r for r in before.get("continual", {}).get(name, [])}
        for r in sorted(res, key=lambda r: r["seed"]):
            b = old.get(r["seed"])
            if b is None:
                rows.append([name, str(r["seed"]), "not run", fmt(r["avg"]), "", ""])
                continue
            same = b["avg"] == r["avg"] and b["bwt"] == r["bwt"]
            rows.append([name, str(r["seed"]), fmt(b["avg"]), fmt(r["avg"]),
                         f"{r['avg'] - b['avg']:+.4f}", "yes" if same else "no"])
    return _table(["method", "seed", "avg final before", "avg final after", "Δ",
                   "identical"], rows)


def one_engine_section(
    before: dict[str, Any], after: dict[str, Any], note: str = "", after_label: str = "?"
) -> str:
    """The #16 section: the continual summary before/after the one-engine refactor over the
    (method, seed) pairs the after run finished (the before values restricted to them)."""
    seeds = {n: {r["seed"] for r in res} for n, res in after["continual"].items()}
    found = {r["seed"] for r in after.get("foundation", [])}
    restricted = {**before, "continual": {
        n: [r for r in res if r["seed"] in seeds.get(n, set())]
        for n, res in before.get("continual", {}).items()},
        "foundation": [r for r in before.get("foundation", []) if r.get("seed") in found]}
    lines = ["## One engine (#16): continual summary before/after", "",
             "Written by `python -m simulations.run_benchmarks --compare-after ...` from the "
             "per-strategy results (`continual.json`) of the after run and the before run's "
             "results.json. " + note, ""]
    lines += before_after(restricted, after, after_label)[3:]
    lines += ["Per seed:", "", *per_seed_rows(before, after), ""]
    lines += study_rows(before, after)
    return "\n".join(lines)


def study_rows(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The modality and adaptation studies before/after, over the seeds both finished."""
    rows = []
    for study in ("modality", "adaptation"):
        old = {r["seed"]: r for r in before.get(study, [])}
        new = {r["seed"]: r for r in after.get(study, [])}
        common = sorted(set(old) & set(new))
        if not common:
            continue
        for name in [k for k in new[common[0]] if k != "seed"]:
            def pick(runs: dict[int, Any], key: str, n: str = name,
                     seeds: list[int] = common) -> list[float]:
                return [float(runs[s][n][key] if isinstance(runs[s][n], dict) else runs[s][n])
                        for s in seeds]

            b, a = pick(old, "value"), pick(new, "value")
            cells = [f"{study}: {name}", str(common), fmt(b), fmt(a),
                     "yes" if a == b else "no"]
            if study == "adaptation":
                cells.append(f"{mean_std(pick(old, 'bytes_per_site_round'))[0]:,.0f} → "
                             f"{mean_std(pick(new, 'bytes_per_site_round'))[0]:,.0f}")
            else:
                cells.append("")
            rows.append(cells)
    if not rows:
        return []
    return ["Studies (seeds both runs finished):", "",
            *_table(["study", "seeds", "before", "after", "identical per seed",
                     "bytes per site and round"], rows), ""]


def overhead_section(ov: dict[str, Any] | None, meta: dict[str, Any] | None = None
                     ) -> list[str]:
    """The "Wall time" section: a cold ``flwr run`` and a warm one (on a kept SuperLink) vs
    the same federation in process (:mod:`simulations.overhead`); ``meta`` (command, date,
    machine) when the section is written on its own."""
    in_process = "comparator" in (ov or {})
    lines = ["## Wall time: Flower simulation vs " + ("the in-process federation"
                                                      if in_process else "plain loop"), ""]
    if not ov:
        return [*lines, "not measured in this run.", ""]
    if meta:
        lines += [f"Written by `{meta['command']}` on {meta['date']} ({meta['machine']}).", ""]
    against = ("the same federation in process (the product's strategy and ClientApp "
               "without Flower's runtime; since #16 there is no plain loop, and this "
               "comparator does more work than the old one: a query round and each "
               "site's validation every round, so the ratio is not comparable with "
               "earlier plain-loop ratios)" if in_process else "the same training in a "
               "plain loop")
    lines += [f"`flwr run` local simulation, cold (its own SuperLink started and stopped, as "
              f"one `unicon federate`), {ov['flwr_s']:.1f} s vs {against} "
              f"{ov['plain_s']:.1f} s ({ov['sites']} sites, {ov['rounds']} "
              f"rounds, {ov['local_steps']} local steps, evaluation every round; measured "
              f"side by side in this run): ratio **{ov['ratio']:.2f}×**, goal ≤ "
              f"{GOAL_WALL_RATIO}×: {goal(ov['ratio'] <= GOAL_WALL_RATIO)}. The flwr time "
              "includes starting the SuperLink, SuperExec and the simulation runtime.", ""]
    warm = ov.get("warm")
    if warm:
        lines += _kept_lines(
            "On a SuperLink kept for a whole suite (`unicon_flower.launcher.KeptSuperLink`: "
            "the first run starts it", "the next finds it running), the warm run takes",
            ov["kept_first"], warm, ov["warm_ratio"],
            f"Keeping the SuperLink saves {ov['startup_s'] - warm['startup_s']:.1f} s of "
            f"start-up and {ov['shutdown_s'] - warm['shutdown_s']:.1f} s of shut-down against "
            "the cold run: what remains of the start-up is the `flwr run` command itself "
            "(building and submitting the app) and the simulation runtime (its process, Ray, "
            "and the ServerApp's and ClientApps' imports), paid by every run.")
    engine = ov.get("engine")
    if engine:
        lines += [f"Flower's simulation engine in this process (`unicon federate --engine "
                  f"python-api`, `unicon_flower.engine`: the same ServerApp in a thread of the "
                  f"calling process, whose model stack is imported already, the same "
                  f"ClientApps in Ray actors; no SuperLink, SuperExec or `flwr run` command) "
                  f"takes {engine['total_s']:.1f} s: ratio **{ov['engine_ratio']:.2f}×**, "
                  f"goal ≤ {GOAL_WALL_RATIO}×: {goal(ov['engine_ratio'] <= GOAL_WALL_RATIO)}. "
                  f"It saves {ov['startup_s'] - engine['startup_s']:.1f} s of start-up and "
                  f"{ov['shutdown_s'] - engine['shutdown_s']:.1f} s of shut-down against the "
                  "cold `flwr run`; its query round still pays Ray and the actors' imports. "
                  "It runs on Flower's `run_simulation`, deprecated in Flower 1.41, so "
                  "`flwr run` stays the default.", ""]
    kept_warm = ov.get("engine_warm")
    if kept_warm:
        lines += _kept_lines(
            "The engine kept for a whole suite (`unicon_flower.engine.KeptEngine`: the first "
            "run starts Ray and the ClientApp actors", "the next reuses them, their imports "
            "done), the warm run takes", ov["engine_first"], kept_warm, ov["engine_warm_ratio"],
            "This is the ratio of the runs of a benchmark suite or a sweep after its first; "
            "the first pays what the engine run above pays, and a single `flwr run` the cold "
            "ratio.")
    runs = [("cold", {k: ov[k] for _, k in _PARTS} | {"total_s": ov["flwr_s"]})]
    if "rounds_s" in ov:
        if warm:
            runs += [("kept, first", ov["kept_first"]), ("kept, warm", warm)]
        if engine:
            runs += [("engine", engine)]
        if kept_warm:
            runs += [("engine kept, warm", kept_warm)]
        lines += _table(["part of the flwr run", *[f"{n} s" for n, _ in runs],
                         *[f"{n} share" for n, _ in runs]],
                        [[name, *[f"{r[key]:.1f}" for _, r in runs],
                          *[f"{r[key] / r['total_s']:.0%}" for _, r in runs]]
                         for name, key in _PARTS])
        lines += ["", f"The cold run's rounds alone take {ov['rounds_ratio']:.2f}× "
                  f"{'the in-process rounds' if in_process else 'the plain loop'} "
                  "(a secondary figure: the goal above is judged on the whole run, as a "
                  "user waits for it). The fixed start-up does not grow with the training "
                  "budget, so the whole-run ratio falls as rounds get longer"
                  + (" (measured below)." if ov.get("long") else "."), ""]
    if ov.get("long"):
        lines += _long_lines(ov)
    if ov.get("floor"):
        lines += _floor_lines(ov)
    return lines


def _kept_lines(what: str, warm_is: str, first: dict[str, float], warm: dict[str, float],
                ratio: float, after: str) -> list[str]:
    """A kept runtime's paragraph: ``what`` (its first run's seconds follow), ``warm_is``
    (the warm run's seconds follow), the warm ratio against the goal, then ``after``."""
    return [f"{what}, {first['total_s']:.1f} s; {warm_is} {warm['total_s']:.1f} s: ratio "
            f"**{ratio:.2f}×**, goal ≤ {GOAL_WALL_RATIO}×: {goal(ratio <= GOAL_WALL_RATIO)}. "
            f"{after}", ""]


def _long_lines(ov: dict[str, Any]) -> list[str]:
    """The cold flwr run and the in-process run again at a longer length, and where the ratio
    would reach the goal by a straight line through each side's two lengths."""
    from simulations.overhead import crossing_rounds

    long = ov["long"]
    at = crossing_rounds({"rounds": ov["rounds"], "flwr_s": ov["flwr_s"],
                          "plain_s": ov["plain_s"]}, long, GOAL_WALL_RATIO)
    where = _where_met(at, " of this federation")
    engine_line = []
    if "engine_s" in long and ov.get("engine"):
        at_engine = crossing_rounds(
            {"rounds": ov["rounds"], "flwr_s": ov["engine"]["total_s"],
             "plain_s": ov["plain_s"]},
            {"rounds": long["rounds"], "flwr_s": long["engine_s"], "plain_s": long["plain_s"]},
            GOAL_WALL_RATIO)
        where_engine = _where_met(at_engine)
        engine_line = [f"The engine in process at {long['rounds']} rounds: "
                       f"{long['engine_s']:.1f} s, ratio **{long['engine_ratio']:.2f}×**, "
                       f"goal ≤ {GOAL_WALL_RATIO}×: "
                       f"{goal(long['engine_ratio'] <= GOAL_WALL_RATIO)}; by the same two "
                       f"lengths its ratio is {where_engine}.", ""]
    return [f"The same federation with {long['rounds']} rounds instead of {ov['rounds']} "
            f"(same sites, local steps and evaluation; measured in this run after the runs "
            f"above): cold `flwr run` {long['flwr_s']:.1f} s vs in process "
            f"{long['plain_s']:.1f} s, ratio **{long['ratio']:.2f}×**, goal ≤ "
            f"{GOAL_WALL_RATIO}×: {goal(long['ratio'] <= GOAL_WALL_RATIO)}. Drawing each side "
            f"as a fixed start-up plus a cost per round through its two lengths, the cold "
            f"ratio is {where} (each round at {ov['local_steps']} local steps on "
            f"{ov['sites']} sites)." + (
                " A round costs Flower less than the in-process grid, which runs its sites one "
                "after another, where Flower runs one ClientApp actor per CPU "
                f"({ov.get('cpus', '?')} here)." if ov.get("rounds_ratio", 1.0) < 1 else ""),
            "", *engine_line]


def _where_met(at: float | None, of: str = "") -> str:
    """Where a ratio meets the wall-time goal, from :func:`simulations.overhead.crossing_rounds`
    (``of`` names the rounds, e.g. " of this federation")."""
    if at is None:
        return "not brought to the goal by longer runs"
    if at == 0:
        return f"≤ {GOAL_WALL_RATIO}× at every length"
    return f"≤ {GOAL_WALL_RATIO}× from about {at:.0f} rounds{of} on"


def _floor_lines(ov: dict[str, Any]) -> list[str]:
    """What every flwr run pays outside unicon's code, against what the goal leaves for it."""
    f = ov["floor"]
    allowed = (GOAL_WALL_RATIO - 1) * ov["plain_s"]
    floor = f["ray_s"] + f["stack_s"]
    return [f"What no change in unicon removes, each timed in a fresh process after the runs "
            f"above (a bare Python start: {f['python_s']:.2f} s): Flower 1.41's simulation "
            f"runtime is Ray only, and starting and stopping Ray takes {f['ray_s']:.1f} s; "
            f"importing torch, MONAI and peft takes {f['stack_s']:.1f} s, paid by the "
            f"ServerApp's process and again by each ClientApp actor (one per CPU, "
            f"{ov.get('cpus', '?')} here). Even with those imports overlapping perfectly, "
            f"that is {floor:.1f} s, against the {allowed:.1f} s of overhead that ≤ "
            f"{GOAL_WALL_RATIO}× leaves a federation that takes {ov['plain_s']:.1f} s in "
            "process (timed in a process that had the stack imported already; as a fresh "
            "command it would pay the imports once too, never Ray or the actors' second "
            "copy): " + ("out of reach at this run length on this machine, whatever the "
                           "launch does; the ratio falls as runs get longer."
                           if floor > allowed else "within reach.")
            + (" The engine in process removes the ServerApp process's copy of the imports, "
               "not Ray or the actors' copies, so the same floor holds for it."
               if ov.get("engine") else "")
            + (" The kept engine pays Ray and the actors' imports once for a whole suite, not "
               "once a run: its warm runs are the only ones here below the floor."
               if ov.get("engine_warm") else ""), ""]


#: Parts of a flwr run's wall time, as (label, key) (see :mod:`simulations.overhead`).
_PARTS = [("Flower start-up until the ServerApp runs", "startup_s"),
          ("query round (first ClientApp calls)", "query_s"),
          ("training + evaluation rounds", "rounds_s"),
          ("shut-down", "shutdown_s")]


def insert_section(path: Path, section: str, before: str | None = None) -> None:
    """Put ``section`` (its first line is its ``## `` heading) into ``path``, replacing a
    previous one, else just before the heading line ``before`` where the file has it, else
    at the end."""
    text = path.read_text()
    head = section.splitlines()[0] + "\n"
    anchor = f"\n{before}\n" if before else None
    if head in text:
        start = text.index(head)
        nxt = text.find("\n## ", start + len(head))
        text = text[:start] + section.rstrip() + "\n" + (text[nxt:] if nxt >= 0 else "")
    elif anchor is not None and anchor in text:
        at = text.index(anchor) + 1
        text = text[:at] + section.rstrip() + "\n\n" + text[at:]
    else:
        text = text.rstrip() + "\n\n" + section.rstrip() + "\n"
    path.write_text(text)


def insert_subsection(path: Path, subsection: str, before: str | None = None) -> None:
    """Replace the ``### `` subsection of ``path`` whose heading is ``subsection``'s first line
    (up to the next ``### `` or ``## `` heading). When it is not there yet, it goes in just
    before the heading line ``before`` (a table added since the file was written); raises
    when neither is there."""
    text = path.read_text()
    head = subsection.splitlines()[0] + "\n"
    if head not in text:
        anchor = f"{before}\n" if before else None
        if anchor is None or anchor not in text:
            raise ValueError(f"{path}: no subsection {head.strip()!r} to replace"
                             + (f", nor {before!r} to put it before" if before else ""))
        at = text.index(anchor)
        path.write_text(text[:at] + subsection.rstrip() + "\n\n" + text[at:])
        return
    start = text.index(head)
    ends = [i for h in ("\n### ", "\n## ") if (i := text.find(h, start + len(head))) >= 0]
    rest = text[min(ends):] if ends else ""
    path.write_text(text[:start] + subsection.rstrip() + "\n" + rest)


def _matrix_table(results: Sequence[dict[str, Any]], order: Sequence[str],
                  stages: Sequence[str], suite: dict[str, Any]) -> list[str]:
    rows = []
    for i, task in enumerate(order):
        cells = []
        for j in range(len(stages)):
            vals = [float(r["matrix"][i][j]) for r in results]
            cells.append("—" if all(not math.isfinite(v) for v in vals) else fmt(vals))
        rows.append([_label(task, suite), *cells])
    return _table(["task \\ after stage", *[f"{j}: {s}" for j, s in enumerate(stages)]], rows)
