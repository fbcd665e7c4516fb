"""Is the federation's gap on ``tumour_cls`` a matter of optimiser steps? (a diagnostic, #14)

``python -m simulations.br35h_steps --kind central --steps-per-site 1 [--rounds 60]
[--local-steps 1] [--batch-size 8] [--lr 0.002] [--restart-moments] [--split val|test]
[--override train.warmup_steps=4 ...] [--seed 0] [--option server_lr=3 ...] [--out F]``
trains the Br35H task on the pretrained foundation with kept moments (``--restart-moments``:
restarted every round, as the per-rule table), as the bench's 60 x 1 table does, either
federated (``--kind fed``, naive rule, ``--option`` adds ``strategy.lora`` settings) or
pooled in one node (``--kind central``). The bench's centralised bound takes ``local_steps x
sites`` steps a round, while FedAvg takes one averaged step per local step;
``--steps-per-site 1`` gives the pooled node the federation's number of steps instead (a
third of the examples with three sites). It then scores every test row (``--split val``:
every validation row, to compare settings without the test rows) of the task's sites with
the final skill and prints each site's AUC and, per source (the ``patient_id`` of a Br35H
row: images of one original size), the rows, the label and the mean score. It prints and
writes ``--out``; nothing here is part of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from simulations import federated_lora_bench as fl

REPO = Path(__file__).resolve().parents[1]
TASK = "tumour_cls"
SITES = ("br35h_a", "br35h_b", "br35h_c")
BASE = fl.FOUNDATION_BASE + fl.FOUNDATION_KEPT


def train(kind: str, site_dirs: Sequence[Path], budget: fl.Budget, seed: int, run_dir: Path,
          options: Sequence[tuple[str, str]] = (), steps_per_site: int | None = None,
          base: tuple[str, ...] = BASE, plan: str = "skill") -> dict[str, np.ndarray]:
    """The final skill of one run: ``fed`` (naive rule plus ``options``) or ``central`` (the
    train splits pooled, ``local_steps x steps_per_site`` steps a round; default: x sites, as
    the bench's bound). ``plan``: what trains and travels (``head``: a linear probe on the
    frozen foundation, its sites run as research sites)."""
    from unicon_flower.runner import run_in_process

    if kind not in ("fed", "central"):
        raise ValueError(f"--kind must be fed or central, got {kind!r}")
    evaluate = (f"federation.evaluate_every={max(1, budget.rounds)}", "federation.val_split=null")
    setup = fl.site_setup({TASK: site_dirs}, budget, base=base + evaluate, mixed_task="")
    if kind == "fed":
        extra = tuple(fl.lora_overrides(fl.VARIANT_RULE, {}, options))
        return run_in_process(site_dirs, run_dir,
                              fl._settings(setup, seed, extra=extra, plan=plan)).states[TASK]
    return fl.pooled_run(setup, site_dirs, seed, run_dir, steps_per_site or len(site_dirs),
                         plan=plan).states[TASK]


def score_rows(state: Mapping[str, np.ndarray], site_dirs: Sequence[Path],
               overrides: Sequence[str] = BASE, split: str = "test", head_only: bool = False,
               ) -> dict[str, dict[str, list[Any]]]:
    """Per site: the ``split`` rows' score (tumour logit minus not), label and source.
    ``head_only``: ``state`` is a head-only run's (no adapter), scored with the fresh adapter
    (B = 0: no change to the foundation); otherwise a missing key is an error."""
    import torch

    from unicon_core.data.site import open_site
    from unicon_core.hydra_config import backbone_config, load_config
    from unicon_core.model.unicon import UniconModel
    from unicon_core.training import make_loader

    model = UniconModel(backbone_config(load_config(list(overrides))), seed=0)
    out: dict[str, dict[str, list[Any]]] = {}
    for d in site_dirs:
        site = open_site(d)
        if TASK not in model.tasks:
            model.add_task(site.task_spec)
            fresh = model.skill_state_dict(TASK) if head_only else {}
            model.load_skill_state_dict(TASK, {**fresh, **state})
        model.eval()
        rows = [site.rows[i] for i in site.split_rows(split)]
        scores, labels = [], []
        with torch.no_grad():
            for batch in make_loader(site.dataset(split, train=False), 32, shuffle=False):
                logits = model(batch["input"], TASK).float()
                scores += (logits[:, 1] - logits[:, 0]).tolist()
                labels += batch["label"].int().tolist()
        out[d.name] = {"score": scores, "label": labels,
                       "source": [r["patient_id"] for r in rows]}
    return out


def by_source(rows: Mapping[str, list[Any]]) -> list[dict[str, Any]]:
    """One entry per source, largest first: rows, fraction of tumour labels, mean score."""
    groups: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for src, label, score in zip(rows["source"], rows["label"], rows["score"], strict=True):
        groups[src].append((int(label), float(score)))
    out = [{"source": s, "n": len(g), "tumour": sum(lab for lab, _ in g) / len(g),
            "mean_score": float(np.mean([x for _, x in g]))} for s, g in groups.items()]
    return sorted(out, key=lambda e: (-e["n"], e["source"]))


def auc(rows: Mapping[str, list[Any]]) -> float:
    """ROC AUC of the scores (NaN with one class)."""
    from sklearn.metrics import roc_auc_score

    return (float(roc_auc_score(rows["label"], rows["score"]))
            if len(set(rows["label"])) == 2 else math.nan)


def weighted_auc(scores: Mapping[str, Mapping[str, list[Any]]]) -> float:
    """The sites' AUCs weighted by their test rows, as the bench's federated metric."""
    n = {s: len(r["label"]) for s, r in scores.items()}
    return sum(auc(r) * n[s] for s, r in scores.items()) / sum(n.values())


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kind", choices=("fed", "central"), required=True)
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--local-steps", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=fl.Budget().batch_size)
    p.add_argument("--steps-per-site", type=int, default=None,
                   help="central: pooled steps a round per local step (default: the sites)")
    p.add_argument("--lr", type=float, default=fl.Budget().lr)
    p.add_argument("--restart-moments", action="store_true",
                   help="restart the AdamW moments every round (the rules table's setting)")
    p.add_argument("--split", choices=("val", "test"), default="test",
                   help="the rows scored: val to choose a setting, test to report it")
    p.add_argument("--plan", default="skill",
                   help="what trains and travels: skill (LoRA + head) or head (linear probe)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="a further hydra override of both sides, e.g. train.warmup_steps=4")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="fed: a strategy.lora setting, e.g. server_lr=3")
    p.add_argument("--demo-dir", type=Path, default=REPO / "demo_data")
    p.add_argument("--run-dir", type=Path, default=Path("runs/br35h_steps"))
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    options = [(key, value) for key, sep, value in (o.partition("=") for o in args.option)
               if key and sep]
    if len(options) != len(args.option):
        p.error(f"--option takes KEY=VALUE, got {args.option}")
    sites = [args.demo_dir / s for s in SITES]
    budget = fl.Budget(rounds=args.rounds, local_steps=args.local_steps,
                       batch_size=args.batch_size, lr=args.lr)
    base = (fl.FOUNDATION_BASE if args.restart_moments else BASE) + tuple(args.override)
    state = train(args.kind, sites, budget, args.seed, args.run_dir, options,
                  args.steps_per_site, base=base, plan=args.plan)
    scores = score_rows(state, sites, base, args.split, head_only=args.plan == "head")
    moments = "restarted" if args.restart_moments else "kept"
    print(f"{args.kind} {args.rounds} x {args.local_steps} of batch {args.batch_size}, lr "
          f"{args.lr:g}, plan {args.plan}, moments {moments}, seed {args.seed}: weighted "
          f"{args.split} "
          f"AUC {weighted_auc(scores):.3f}")
    for site, rows in scores.items():
        print(f"  {site}: AUC {auc(rows):.3f} (n {len(rows['label'])})")
        for e in by_source(rows):
            print(f"    {e['source']}: {e['n']} rows, tumour {e['tumour']:.2f}, "
                  f"mean score {e['mean_score']:+.2f}")
    if args.out:
        args.out.write_text(json.dumps({"args": vars(args), "scores": scores}, indent=1,
                                       default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
