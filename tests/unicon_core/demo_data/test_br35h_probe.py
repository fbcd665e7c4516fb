"""The Br35H probe diagnostic: features per site and split, one AUC per test split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from simulations.br35h_probe import probe_aucs


def _feats(flip_b: bool) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    """Feature 0 carries the label; on br35h_b's test split optionally in reverse."""
    rng = np.random.default_rng(0)
    out = {}
    for site in ("br35h_a", "br35h_b"):
        for split in ("train", "test"):
            y = np.array([0, 1] * 20)
            sign = -1.0 if flip_b and (site, split) == ("br35h_b", "test") else 1.0
            x = np.c_[sign * (2 * y - 1) + 0.1 * rng.standard_normal(40),
                      rng.standard_normal((40, 3))]
            out[(site, split)] = (x, y)
    return out


def test_probe_reads_a_reversed_split_as_auc_below_half() -> None:
    plain = probe_aucs(_feats(False), ["br35h_a"])
    assert plain == {"br35h_a": pytest.approx(1.0), "br35h_b": pytest.approx(1.0)}
    flipped = probe_aucs(_feats(True), ["br35h_a", "br35h_b"])
    assert flipped["br35h_a"] == pytest.approx(1.0) and flipped["br35h_b"] < 0.05


@pytest.mark.slow
def test_encode_sites_gives_features_for_every_split(demo_dir: Path) -> None:
    from simulations.br35h_probe import encode_sites

    feats = encode_sites(demo_dir, ["experiment=continual", "backbone=tiny"], ["br35h_b"])
    assert set(feats) == {("br35h_b", "train"), ("br35h_b", "test")}
    x, y = feats[("br35h_b", "test")]
    assert x.shape == (len(y), 64) and set(y) == {0, 1}  # the tiny transformer's width
    # a row is the mean over the image's tokens (64 tokens of width 64: the shape alone
    # would not tell a mean over tokens from one over channels)
    import torch

    from unicon_core.data.site import open_site
    from unicon_core.hydra_config import backbone_config, load_config
    from unicon_core.model.unicon import UniconModel

    site = open_site(demo_dir / "br35h_b")
    model = UniconModel(backbone_config(load_config(["experiment=continual", "backbone=tiny"])),
                        seed=0).eval()
    model.add_task(site.task_spec)
    first = site.dataset("test", train=False)[0]["input"][None]
    with torch.no_grad():
        tokens = model.encode(first, site.task_spec.name)
    np.testing.assert_allclose(x[0], tokens.mean(1)[0].numpy(), rtol=1e-5, atol=1e-6)
