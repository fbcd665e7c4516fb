"""OOD detection at inference: AUROC of held-out vs foreign inputs (issue #13, item 2).

The score is :func:`~unicon_core.inference.ood.ood_score` (distance of an input's raw
descriptor to the skill's prototype, built from the sites' *train* splits as the federation
builds it); the threshold is :func:`~unicon_core.inference.ood.calibrate_ood` on the sites'
*validation* splits; AUROC and flag rates are measured on the *test* splits vs foreign inputs:

* ``tumour_cls`` (Br35H sites): foreign = MNI152 template axial slices shipped with nilearn
  (no download) at their own size and resized to the task's 64x64, the demo's brain-tissue
  slices (another MRI source), and uniform-noise 64x64 images;
* ``gbsg2_surv`` (GBSG2 sites): foreign = the test rows with each feature column permuted
  independently (marginals kept, joint structure broken) and the test rows with every feature
  in other units (x10).

Usage::

    python -m simulations.ood_bench --data-root demo_data [--out simulations/results/ood.md]

Needs only the demo's site folders (``unicon prepare-demo``); no model is trained (the score
does not depend on the skills' weights).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_SITES = ("br35h_a", "br35h_b", "br35h_c")
TISSUE_SITES = ("brain_axial",)
CLINICAL_SITES = ("gbsg2_a", "gbsg2_b")


def _descriptors(dataset: Any) -> np.ndarray:
    from unicon_core.inference.prototypes import input_descriptor, raw_inputs

    return np.stack([input_descriptor(a, s) for a, s in raw_inputs(dataset)])


def _prototype(sites: Sequence[Any]) -> Any:
    """Pooled train-split moments (what the federation's aggregated site prototypes give)."""
    from unicon_core.inference.prototypes import Prototype

    f = np.concatenate([_descriptors(s.dataset("train")) for s in sites])
    return Prototype(f.mean(0), (f**2).mean(0), len(f))


def _scores(proto: Any, arrays: list[tuple[np.ndarray, Any]]) -> np.ndarray:
    from unicon_core.inference.ood import ood_score
    from unicon_core.inference.prototypes import input_descriptor

    return np.array([ood_score(proto, input_descriptor(a, s)) for a, s in arrays])


def _mni_slices(size: int | None) -> list[tuple[np.ndarray, Any]]:
    """Axial MNI152 slices through the brain, scaled to 0-255 as a PNG export would be."""
    from nilearn.datasets import load_mni152_template
    from PIL import Image

    vol = np.asarray(load_mni152_template().get_fdata(), dtype=np.float64)
    out = []
    for z in range(vol.shape[2] // 3, 2 * vol.shape[2] // 3, 2):
        sl = vol[:, :, z]
        img = np.round(255 * sl / max(float(sl.max()), 1e-6)).astype(np.uint8)
        if size is not None:
            img = np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR))
        out.append((img[None].astype(np.float32), None))
    return out


def _row(name: str, held: np.ndarray, foreign: np.ndarray, threshold: float) -> str:
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.zeros(len(held)), np.ones(len(foreign))]
    auc = roc_auc_score(y, np.r_[held, foreign])
    flagged = float(np.mean(foreign > threshold))
    return f"| {name} | {len(foreign)} | {auc:.3f} | {100 * flagged:.0f} % |"


def run(data_root: Path) -> str:
    """The markdown report."""
    from unicon_core.data import open_site
    from unicon_core.inference.ood import calibrate_ood

    rng = np.random.default_rng(0)
    lines = [
        "# OOD detection at inference (simulations/ood_bench.py)",
        "",
        "Score: distance of the raw input's descriptor to the skill's prototype (train splits); "
        "threshold: calibrate_ood on the validation splits (q=0.99 x 1.5); AUROC and rates on the "
        "test splits vs foreign inputs. Real data (Br35H, GBSG2) and the MNI152 template shipped "
        "with nilearn; brain-tissue slices are the demo's phantom-derived slices.",
        "",
    ]
    # ---------------------------------------------------------------- images
    brs = [open_site(data_root / n) for n in IMAGE_SITES]
    proto = _prototype(brs)
    cal = calibrate_ood({"tumour_cls": proto}, brs)["tumour_cls"]
    test = [(a, s) for site in brs for a, s in _raw(site, "test")]
    held = _scores(proto, test)
    tissue = [(a, s) for n in TISSUE_SITES for a, s in _raw(open_site(data_root / n), None)]
    noise = [(rng.integers(0, 256, (1, 64, 64)).astype(np.float32), None) for _ in range(100)]
    lines += [
        f"## tumour_cls (Br35H sites {', '.join(IMAGE_SITES)})",
        "",
        f"Threshold {cal.threshold:.3g} from {cal.count} validation images; held-out test "
        f"images: n = {len(held)}, flagged out of distribution: "
        f"{100 * float(np.mean(held > cal.threshold)):.1f} %.",
        "",
        "| foreign inputs | n | AUROC (test vs foreign) | flagged at the val threshold |",
        "|---|---:|---:|---:|",
        _row("MNI152 axial slices, own size", held, _scores(proto, _mni_slices(None)),
             cal.threshold),
        _row("MNI152 axial slices, resized 64x64", held, _scores(proto, _mni_slices(64)),
             cal.threshold),
        _row("demo brain-tissue slices (brain_axial)", held, _scores(proto, tissue),
             cal.threshold),
        _row("uniform noise 64x64", held, _scores(proto, noise), cal.threshold),
        "",
    ]
    # ---------------------------------------------------------------- clinical
    gb = [open_site(data_root / n) for n in CLINICAL_SITES]
    proto = _prototype(gb)
    cal = calibrate_ood({"gbsg2_surv": proto}, gb)["gbsg2_surv"]
    rows = np.concatenate([r for site in gb for r, _ in [(_matrix(site, "test"), None)]])
    held = _scores(proto, [(r, None) for r in rows])
    shuffled = np.column_stack([rng.permutation(c) for c in rows.T])
    lines += [
        f"## gbsg2_surv (GBSG2 sites {', '.join(CLINICAL_SITES)})",
        "",
        f"Threshold {cal.threshold:.3g} from {cal.count} validation rows; held-out test rows: "
        f"n = {len(held)}, flagged out of distribution: "
        f"{100 * float(np.mean(held > cal.threshold)):.1f} %.",
        "",
        "| foreign inputs | n | AUROC (test vs foreign) | flagged at the val threshold |",
        "|---|---:|---:|---:|",
        _row("test rows, columns permuted", held, _scores(proto, [(r, None) for r in shuffled]),
             cal.threshold),
        _row("test rows, features x10", held, _scores(proto, [(10 * r, None) for r in rows]),
             cal.threshold),
        "",
        "The descriptor summarises a row's values (quantiles, mean, spread), not each feature "
        "against its own distribution, so permuted columns (same values, other rows) are hard "
        "for it; unit errors are not.",
        "",
    ]
    return "\n".join(lines)


def _raw(site: Any, split: str | None) -> list[tuple[np.ndarray, Any]]:
    from unicon_core.inference.prototypes import raw_inputs

    splits = [split] if split else ["train", "val", "test"]
    return [x for s in splits if site.split_rows(s) for x in raw_inputs(site.dataset(s))]


def _matrix(site: Any, split: str) -> np.ndarray:
    from unicon_core.data.dataset import feature_matrix

    rows = [site.rows[i] for i in site.split_rows(split)]
    return feature_matrix(rows, site.task_spec.feature_names)


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", type=Path, default=Path("demo_data"))
    parser.add_argument("--out", type=Path, default=Path("simulations/results/ood.md"))
    args = parser.parse_args(argv)
    report = run(args.data_root)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
