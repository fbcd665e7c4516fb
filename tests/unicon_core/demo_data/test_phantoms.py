"""SYNTHETIC phantoms: deterministic by seed; lesions visible on CT but mimicked by benign
look-alikes of the same density that only PET (blurred) tells apart."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import binary_dilation, binary_erosion, uniform_filter
from scipy.stats import spearmanr

from unicon_core.demo_data.phantoms import PhantomConfig, make_phantom


def _cases(seed: int, n: int = 12, **kwargs: object) -> list[dict]:
    rng = np.random.default_rng(seed)
    cfg = PhantomConfig(**kwargs)  # type: ignore[arg-type]
    return [make_phantom(rng, cfg) for _ in range(n)]


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(2 * (pred & truth).sum() / (pred.sum() + truth.sum()))


def test_deterministic_by_seed() -> None:
    first, again, other = _cases(7, 3), _cases(7, 3), _cases(8, 3)
    for a, b in zip(first, again, strict=True):
        for key in ("ct", "pet", "mask", "mimic"):
            np.testing.assert_array_equal(a[key], b[key])
        assert a["time"] == b["time"] and a["event"] == b["event"]
    assert not np.array_equal(first[0]["ct"], other[0]["ct"])


def test_lesions_and_mimics_share_the_documented_ct_contrast() -> None:
    cfg = PhantomConfig()
    low, high = cfg.lesion_delta_hu
    lesion_delta, mimic_delta = [], []
    for case in _cases(0, 30):
        body = case["ct"] > -500  # air is -1000 HU, tissue about 60
        lesion, mimic = case["mask"].astype(bool), case["mimic"].astype(bool)
        assert not (lesion & mimic).any()
        tissue = case["ct"][body & ~lesion & ~mimic]
        assert abs(tissue.mean() - cfg.tissue_hu) < 2 and abs(tissue.std() - cfg.noise_hu) < 1
        if lesion.sum() >= 20:
            lesion_delta.append(case["ct"][lesion].mean() - tissue.mean())
        if mimic.sum() >= 20:
            mimic_delta.append(case["ct"][mimic].mean() - tissue.mean())
    assert len(lesion_delta) >= 8 and len(mimic_delta) >= 8
    # clearly visible on CT (contrast-to-noise 7-12 per voxel), within the documented range
    assert all(low - 8 < d < high + 8 for d in lesion_delta + mimic_delta)
    assert 6 < np.mean(lesion_delta) / cfg.noise_hu < 13
    # benign mimics are as dense as the lesions: CT cannot tell them apart by intensity
    assert abs(np.mean(lesion_delta) - np.mean(mimic_delta)) < 8


def test_only_lesions_take_up_pet_tracer() -> None:
    cfg = PhantomConfig()
    lesion_pet, mimic_pet = [], []
    for case in _cases(1, 30):
        lesion, mimic = case["mask"].astype(bool), case["mimic"].astype(bool)
        far = ~binary_dilation(lesion, iterations=4)  # beyond the PSF's spill-over
        if lesion.sum() >= 20:
            lesion_pet.append(case["pet"][lesion].mean())
        if (mimic & far).sum() >= 20:
            mimic_pet.append(case["pet"][mimic & far].mean())
    assert len(lesion_pet) >= 8 and len(mimic_pet) >= 5
    assert min(lesion_pet) > 2 * cfg.pet_background_suv, lesion_pet
    assert max(abs(np.array(mimic_pet) - cfg.pet_background_suv)) < 0.2, mimic_pet


@pytest.mark.parametrize("fwhm", [0.0, 6.0])
def test_pet_is_blurred_by_its_point_spread_function(fwhm: float) -> None:
    spill = []
    for case in _cases(2, 20, pet_fwhm_mm=fwhm):
        lesion = case["mask"].astype(bool)
        shell = binary_dilation(lesion, iterations=2) & ~lesion & (case["ct"] > -500)
        shell &= ~case["mimic"].astype(bool)
        if shell.sum() >= 20:
            spill.append(case["pet"][shell].mean() - 1.0)
    assert len(spill) >= 8
    # a sharp PET has background just outside the lesions; a blurred one spills uptake there
    assert (np.mean(spill) > 0.5) == (fwhm > 0), spill


def test_pet_adds_information_to_ct() -> None:
    """Fixed rules (not a model): CT alone finds lesions and mimics, PET picks the lesions."""
    ct_only, ct_pet = [], []
    for case in _cases(3, 30):
        lesion = case["mask"].astype(bool)
        if lesion.sum() < 20:
            continue
        inside = binary_erosion(case["ct"] > -500, iterations=2)  # away from the air edge
        candidate = inside & (uniform_filter(case["ct"], 3) > PhantomConfig().tissue_hu + 45)
        ct_only.append(_dice(candidate, lesion))
        ct_pet.append(_dice(candidate & (case["pet"] > 2.0), lesion))
    assert len(ct_only) >= 10
    assert 0.3 < np.mean(ct_only) < 0.85, ct_only
    assert np.mean(ct_pet) > np.mean(ct_only) + 0.1, (ct_pet, ct_only)


def test_survival_falls_with_lesion_burden() -> None:
    cases = _cases(1, 80)
    burden = [c["burden"] for c in cases]
    times = [c["time"] for c in cases]
    assert spearmanr(burden, times).statistic < -0.3
    assert all(t > 0 for t in times) and {c["event"] for c in cases} == {0, 1}


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="max_mimics"):
        PhantomConfig(max_mimics=-1)
    with pytest.raises(ValueError, match="pet_fwhm_mm"):
        PhantomConfig(pet_fwhm_mm=-1.0)
    with pytest.raises(ValueError, match="lesion_delta_hu"):
        PhantomConfig(lesion_delta_hu=(-10.0, -40.0))
