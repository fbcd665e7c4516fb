"""Linear probes on a frozen backbone's features for the Br35H training sites (a diagnostic).

``python -m simulations.br35h_probe [--demo-dir demo_data] [--backbone demo]`` encodes every
train and test row of ``br35h_a``, ``br35h_b`` and ``br35h_c`` with the frozen backbone (no
skill trained: LoRA starts at zero), fits a logistic regression on one site's train split and
on all three pooled, and prints each probe's AUC on every site's test split. It asks whether a
site's frozen features already rank its test rows the wrong way (``br35h_b``, issue #14),
whether or not the sites are pooled. It prints, and writes nothing.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SITES = ("br35h_a", "br35h_b", "br35h_c")


def encode_sites(demo_dir: Path, overrides: Sequence[str], sites: Sequence[str] = SITES
                 ) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    """(site, split) -> (features, labels) of the frozen backbone, train and test splits: its
    last level, averaged over space or tokens (``unicon_core.continual.plugins.base.pooled``)."""
    import torch

    from unicon_core.continual.plugins.base import pooled
    from unicon_core.data.site import open_site
    from unicon_core.hydra_config import backbone_config, load_config
    from unicon_core.model.unicon import UniconModel
    from unicon_core.training import make_loader

    model = UniconModel(backbone_config(load_config(list(overrides))), seed=0).eval()
    out = {}
    for name in sites:
        site = open_site(demo_dir / name)
        task = site.task_spec.name
        if task not in model.tasks:
            model.add_task(site.task_spec)
        for split in ("train", "test"):
            loader = make_loader(site.dataset(split, train=False), 32, shuffle=False)
            feats, labels = [], []
            with torch.no_grad():
                for batch in loader:
                    feats.append(pooled(model.encode(batch["input"], task))[-1].numpy())
                    labels.append(batch["label"].numpy().astype(int))
            out[(name, split)] = (np.concatenate(feats), np.concatenate(labels))
    return out


def probe_aucs(feats: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]],
               train_sites: Sequence[str]) -> dict[str, float]:
    """Test AUC per site of a logistic probe fitted on ``train_sites``' train splits."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([feats[(s, "train")][0] for s in train_sites])
    y = np.concatenate([feats[(s, "train")][1] for s in train_sites])
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000)).fit(x, y)
    tests = sorted({s for s, split in feats if split == "test"})
    return {s: float(roc_auc_score(feats[(s, "test")][1],
                                   model.predict_proba(feats[(s, "test")][0])[:, 1]))
            for s in tests}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo-dir", type=Path, default=REPO / "demo_data")
    p.add_argument("--backbone", default="demo", help="hydra backbone group (default: demo)")
    args = p.parse_args(argv)
    feats = encode_sites(args.demo_dir, ["experiment=continual", f"backbone={args.backbone}"])
    for train in [[s] for s in SITES] + [list(SITES)]:
        aucs = probe_aucs(feats, train)
        print(f"fitted on {' + '.join(train)} -> test AUC " + ", ".join(
            f"{s} {v:.3f} (n {len(feats[(s, 'test')][1])})" for s, v in aucs.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
