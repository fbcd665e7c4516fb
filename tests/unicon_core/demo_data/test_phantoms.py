"""SYNTHETIC phantoms: deterministic by seed, lesions faint on CT and bright on PET."""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr

from unicon_core.demo_data.phantoms import PhantomConfig, make_phantom


def _cases(seed: int, n: int = 12) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [make_phantom(rng, PhantomConfig()) for _ in range(n)]


def test_deterministic_by_seed() -> None:
    first, again, other = _cases(7, 3), _cases(7, 3), _cases(8, 3)
    for a, b in zip(first, again, strict=True):
        for key in ("ct", "pet", "mask"):
            np.testing.assert_array_equal(a[key], b[key])
        assert a["time"] == b["time"] and a["event"] == b["event"]
    assert not np.array_equal(first[0]["ct"], other[0]["ct"])


def _cnr(volume: np.ndarray, lesion: np.ndarray, body: np.ndarray) -> float:
    background = volume[body & ~lesion]
    return float((volume[lesion].mean() - background.mean()) / background.std())


def test_lesions_fainter_on_ct_than_on_pet() -> None:
    ct_cnr, pet_cnr = [], []
    for case in _cases(0, 20):
        lesion = case["mask"].astype(bool)
        if lesion.sum() < 10:
            continue
        body = case["ct"] > -500  # air is -1000 HU, tissue about 40
        ct_cnr.append(_cnr(case["ct"], lesion, body))
        pet_cnr.append(_cnr(case["pet"], lesion, body))
    assert len(ct_cnr) >= 5
    assert 0 < np.mean(ct_cnr) < 1, ct_cnr
    assert min(pet_cnr) > 3, pet_cnr


def test_survival_falls_with_lesion_burden() -> None:
    cases = _cases(1, 80)
    burden = [c["burden"] for c in cases]
    times = [c["time"] for c in cases]
    assert spearmanr(burden, times).statistic < -0.3
    assert all(t > 0 for t in times) and {c["event"] for c in cases} == {0, 1}
