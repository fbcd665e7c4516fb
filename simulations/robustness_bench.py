"""Poisoning robustness: one of five sites sends sign-flipped, x10 scaled updates (SYNTHETIC).

Five sites share one tabular classification task whose labels follow a fixed linear rule plus
noise (seeded, SYNTHETIC). One site is an attacker: every round it trains honestly, then returns
``global - 10 * (trained - global)`` instead of its trained skill (its update, sign-flipped and
scaled by 10). Each configuration runs the real ServerApp logic and ClientApp over the
in-process grid (the same code as a deployment, without processes) and reports the task metric
the run reports (test ROC AUC, example-weighted over the five sites, after the last round):

* clean FedAvg (no attacker) - the reference;
* FedAvg, median and trimmed mean (``trim_fraction=0.2``), each with the attacker;
* clean median and trimmed mean, to show what robustness costs without an attack.

No update-norm bound is set, so the aggregation rule alone has to cope. Writes
``simulations/results/robustness.md`` (the BENCHMARKS section). Usage::

    python -m simulations.robustness_bench [--rounds 8] [--seeds 0 1] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "robustness.md"
TASK = "synth_cls"
FEATURES = [f"x{i}" for i in range(6)]
SITES = 5
ATTACKER = 4  # index of the poisoned site
SCALE = -10.0  # sign flip and x10


@dataclass(frozen=True)
class Config:
    """One row of the table: aggregation rule and whether the attacker takes part."""

    label: str
    strategy: str  # hydra strategy group
    poisoned: bool
    sites: int = SITES  # 4: the attacker's site is absent altogether


CONFIGS = [
    Config("FedAvg, clean", "fedavg", False),
    Config("FedAvg, 1 poisoned site", "fedavg", True),
    Config("median, 1 poisoned site", "median", True),
    Config("trimmed mean (0.2), 1 poisoned site", "trimmed_mean", True),
    Config("median, clean", "median", False),
    Config("trimmed mean (0.2), clean", "trimmed_mean", False),
    Config("FedAvg, attacker's site absent (4 sites)", "fedavg", False, sites=SITES - 1),
]


def task_spec_dict() -> dict[str, Any]:
    """The synthetic task (clinical modality: one token per feature)."""
    return {
        "name": TASK, "kind": "classification", "modality": "clinical", "spatial_dims": 0,
        "input_size": [len(FEATURES)], "num_classes": 2, "feature_names": list(FEATURES),
        "lora": {"rank": 4, "alpha": 8.0, "dropout": 0.0, "targets": ["qkv", "linear1"]},
    }


def make_sites(root: Path, seed: int, rows: int = 120) -> list[Path]:
    """Five SYNTHETIC site folders: label = 1[x . w + noise > 0], w shared by all sites."""
    from unicon_core.config import TaskSpec
    from unicon_core.data.manifest import SiteMetadata, write_site_json

    rng = np.random.default_rng(seed)
    weights = rng.normal(size=len(FEATURES))
    spec = TaskSpec.from_dict(task_spec_dict())
    dirs = []
    for s in range(SITES):
        site = root / f"site_{s}"
        site.mkdir(parents=True)
        write_site_json(site, SiteMetadata(
            site=site.name, synthetic=True, source="simulations.robustness_bench",
            description="SYNTHETIC linear-rule classification", task=spec))
        x = rng.normal(loc=0.3 * (s - 2), size=(rows, len(FEATURES)))  # sites differ in mean
        y = (x @ weights + 0.5 * rng.normal(size=rows) > x.mean(0) @ weights).astype(int)
        splits = ["train"] * (rows // 2) + ["val"] * (rows // 4) + ["test"] * (rows - rows // 2
                                                                             - rows // 4)
        with (site / "manifest.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["id", "split", *FEATURES, "label"])
            writer.writeheader()
            for i in range(rows):
                writer.writerow({"id": f"{site.name}-{i}", "split": splits[i], "label": y[i],
                                 **{f: f"{x[i, j]:.5f}" for j, f in enumerate(FEATURES)}})
        dirs.append(site)
    return dirs


def poisoned(app: Callable[..., Any], attacker_node: int) -> Callable[..., Any]:
    """Wrap a ClientApp: the attacker's train replies carry ``global + SCALE * update``."""
    from flwr.app import Array, ArrayRecord

    def call(msg: Any, context: Any) -> Any:
        reply = app(msg, context)
        if (context.node_id != attacker_node or msg.metadata.message_type != "train"
                or reply.has_error() or "skill" not in reply.content.array_records):
            return reply
        sent = msg.content.array_records["skill"]
        trained = reply.content.array_records["skill"]
        bad = {}
        for key, arr in trained.items():
            start = sent[key].numpy()
            bad[key] = Array((start + SCALE * (arr.numpy() - start)).astype(start.dtype))
        reply.content["skill"] = ArrayRecord(bad)
        return reply

    return call


def run_one(cfg: Config, site_dirs: Sequence[Path], run_dir: Path, rounds: int,
            seed: int) -> dict[str, Any]:
    """One federated run; returns the task's final metric and per-round values."""
    from client.client_app import make_client_app
    from server.federation import run_federation
    from unicon_core.federation.config import load_settings, site_dirs_override
    from unicon_core.federation.inprocess import InProcessGrid
    from unicon_core.federation.outputs import read_jsonl

    overrides = [
        "experiment=demo", site_dirs_override(site_dirs), f"federation.rounds={rounds}",
        f"federation.run_dir='{run_dir}'", "federation.wandb=disabled", "federation.plots=false",
        f"strategy={cfg.strategy}", f"seed={seed}",
        "train.max_steps=10", "train.batch_size=16", "train.lr=0.005",
    ]
    app = make_client_app(overrides)
    grid = InProcessGrid(app, len(site_dirs))  # type: ignore[arg-type]
    if cfg.poisoned:
        grid.client_app = poisoned(app, grid.node_ids[ATTACKER])  # type: ignore[assignment]
    start = time.perf_counter()
    run_federation(grid, load_settings(overrides))
    results = json.loads((run_dir / "results.json").read_text())
    curve = [r["tasks"][TASK].get("auc") for r in read_jsonl(run_dir / "rounds.jsonl")]
    per_site = results["tasks"][TASK]["per_site"]
    honest = [v for site, v in per_site.items() if site != f"site_{ATTACKER}"]
    return {"value": results["tasks"][TASK]["value"], "curve": curve,
            "honest": statistics.mean(honest), "seconds": time.perf_counter() - start}


def table(rows: dict[str, list[dict[str, Any]]], rounds: int, seeds: Sequence[int]) -> str:
    """The markdown section."""
    clean = statistics.mean(r["value"] for r in rows[CONFIGS[0].label])
    clean_honest = statistics.mean(r["honest"] for r in rows[CONFIGS[0].label])
    lines = [
        "## Robustness to a poisoned site (SYNTHETIC)",
        "",
        f"`python -m simulations.robustness_bench` - 5 sites, one task (SYNTHETIC linear-rule "
        f"tabular classification, 60 train rows per site, site means shifted apart), {rounds} "
        f"rounds, seeds {list(seeds)}. The attacker (site_{ATTACKER}) trains honestly, then "
        "returns `global - 10 x (its update)` every round; no update-norm bound is set, so the "
        "aggregation rule alone copes. Metric: test ROC AUC after the last round (x100, mean "
        "over seeds), over all 5 sites' test splits (example-weighted, as `results.json`) and "
        "over the 4 honest sites only; deltas vs clean FedAvg in points.",
        "",
        "| configuration | AUC, 5 sites | delta | AUC, 4 honest sites | delta | AUC per round, "
        f"5 sites (seed {seeds[0]}) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for cfg in CONFIGS:
        runs = rows[cfg.label]
        honest = statistics.mean(r["honest"] for r in runs)
        curve = " ".join("n/a" if v is None else f"{100 * v:.0f}" for v in runs[0]["curve"])
        if cfg.sites == SITES:
            value = statistics.mean(r["value"] for r in runs)
            first = f"{100 * value:.1f} | {100 * (value - clean):+.1f}"
        else:
            first, curve = "n/a | n/a", f"({curve}: 4 sites)"
        lines.append(f"| {cfg.label} | {first} | {100 * honest:.1f} | "
                     f"{100 * (honest - clean_honest):+.1f} | {curve} |")
    lines += [
        "",
        "Reading: FedAvg collapses under the attack; median and trimmed mean stay within a "
        "few points of clean training. Their remaining gap is not explained by the attacker's "
        "missing data (FedAvg without the attacker's site loses much less); a likely cause: "
        "the poisoned value sits on the same side of every coordinate each round, so median "
        "and trimmed mean pick an off-centre honest value. Numbers come from the runs above on "
        "SYNTHETIC data; nothing is hard-coded.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Run every configuration for every seed and write the markdown section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="absolute folder for sites and runs (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="unicon-robustness-") as tmp:
        work = (args.work_dir or Path(tmp)).resolve()
        rows: dict[str, list[dict[str, Any]]] = {c.label: [] for c in CONFIGS}
        for seed in args.seeds:
            dirs = make_sites(work / f"seed{seed}" / "sites", seed)
            for i, cfg in enumerate(CONFIGS):
                out = run_one(cfg, dirs[:cfg.sites], work / f"seed{seed}" / f"run{i}",
                              args.rounds, seed)
                rows[cfg.label].append(out)
                print(f"seed {seed} {cfg.label}: AUC {out['value']:.3f} "
                      f"({out['seconds']:.0f} s)", flush=True)
        text = table(rows, args.rounds, args.seeds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
