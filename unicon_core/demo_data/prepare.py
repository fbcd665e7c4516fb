"""``prepare_demo``: build every demo site from installed packages into one folder.

Sites (task -> sites):

* ``tumour_cls`` (real Br35H MRI, 2D 64x64): ``br35h_a``, ``br35h_b``, ``br35h_c`` train;
  ``br35h_ext`` (whole sources none of them has) only evaluates (external validation);
* ``tissue_seg`` (real MNI152 template, 2D 64x64): ``brain_axial``, ``brain_coronal``;
* ``gbsg2_surv`` (real GBSG2 clinical cohort): ``gbsg2_a``, ``gbsg2_b``;
* ``ct_seg`` (synthetic CT phantoms, 32^3): ``ct_a``, ``ct_b``;
* ``ctpet_seg`` (synthetic CT+PET phantoms, 32^3): ``ctpet_a``.

Task specs come from ``configs/task/<task>.yaml`` (the files the experiments compose), so a
site's ``site.json`` holds what the run configuration expects. A site folder that is already
complete is reused unless ``force=True``; one that is *stale* is rebuilt: written by an older
generator version (its ``site.json`` ``source`` differs) or for another task spec (its
``site.json`` task differs from the task file, e.g. after a ``preprocess`` step was declared),
which the query round would otherwise exclude. Br35H and GBSG2 sites are dealt from one pool,
so one stale or missing site rebuilds its whole group.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from unicon_core.config import TaskSpec
from unicon_core.data.manifest import SiteRole
from unicon_core.demo_data.writer import build_site, site_is_complete


def _phantom_sites(out_dir: Path, seed: int, force: bool, report: dict[str, Any]) -> None:
    from unicon_core.demo_data import phantoms as ph

    plans: dict[str, tuple[dict[str, float], bool, int]] = {
        "ct_a": ({}, False, 60),
        # another scanner: noisier, calibrated 10 HU higher
        "ct_b": ({"noise_hu": 16.0, "hu_offset": 10.0}, False, 60),
        "ctpet_a": ({}, True, 60),
    }
    for k, (name, (scanner, with_pet, n)) in enumerate(plans.items()):
        task = ph.phantom_task(with_pet)
        # the volume's edge is the task file's input size (configs/task), not a second copy
        cfg = ph.PhantomConfig(size=task.input_size[0], **scanner)
        what = "CT+PET" if with_pet else "CT"
        _build(
            report, out_dir, name, task, True, ph.SOURCE,
            f"SYNTHETIC {what} lesion phantoms ({n} cases, {cfg.size}^3 voxels of "
            f"{cfg.spacing_mm} mm): enhancing lesions on CT next to benign mimics "
            "of the same CT density; only lesions take up PET tracer (PET blurred, "
            f"{cfg.pet_fwhm_mm:g} mm FWHM); survival time falls with lesion burden. "
            "time/event columns serve a later prognosis task.",
            lambda d, cfg=cfg, with_pet=with_pet, n=n, name=name, k=k: ph.write_phantom_cases(
                d, name, n, cfg, with_pet, seed=seed * 1000 + k
            ),
            force or _stale(out_dir / name, ph.SOURCE, task),
        )


def _stale(site_dir: Path, source: str, task: TaskSpec) -> bool:
    """A complete site folder written by another generator version (``source`` differs) or for
    another task spec than ``task`` (the task file changed since it was built)."""
    from unicon_core.data.manifest import read_site_json

    if not site_is_complete(site_dir):
        return False
    try:
        meta = read_site_json(site_dir)
    except (OSError, ValueError, TypeError):
        return True
    return meta.source != source or meta.task.to_dict() != task.to_dict()


def _reusable(out_dir: Path, names: list[str], source: str, task: TaskSpec) -> bool:
    """Every site of a group is complete and none is stale."""
    return all(
        site_is_complete(out_dir / n) and not _stale(out_dir / n, source, task) for n in names
    )


def _gbsg2_sites(out_dir: Path, seed: int, force: bool, report: dict[str, Any]) -> None:
    from unicon_core.demo_data import gbsg2

    names = ["gbsg2_a", "gbsg2_b"]
    task = gbsg2.gbsg2_task()
    if not force and _reusable(out_dir, names, gbsg2.SOURCE, task):
        for n in names:
            _record(report, n, out_dir / n, False)
        return
    per_site = gbsg2.gbsg2_rows(seed=seed, n_sites=len(names))
    for name, rows in zip(names, per_site, strict=True):
        _build(
            report, out_dir, name, task, False, gbsg2.SOURCE,
            f"Real GBSG2 breast-cancer patients ({len(rows)} of 686), recurrence-free "
            "survival in days; patients dealt to sites by age (site a older).",
            lambda d, rows=rows: rows,
            True,
        )


def _brain_sites(out_dir: Path, seed: int, force: bool, report: dict[str, Any]) -> None:
    from unicon_core.demo_data import brain_tissue as bt

    task = bt.tissue_task()
    size = task.input_size[-1]  # from the task file (configs/task/tissue_seg.yaml)
    for k, (name, axis) in enumerate(bt.PLANES.items()):
        plane = {0: "sagittal", 1: "coronal", 2: "axial"}[axis]
        _build(
            report, out_dir, name, task, False, bt.SOURCE,
            f"Real MNI152 2009a T1 template, {plane} slices at {size}x{size} with GM/WM "
            "labels (0 background, 1 GM, 2 WM). Both brain sites come from the same template.",
            lambda d, name=name, axis=axis, k=k: bt.write_tissue_slices(
                d, name, axis, size=size, seed=seed + k
            ),
            force or _stale(out_dir / name, bt.SOURCE, task),
        )


def _br35h_sites(out_dir: Path, seed: int, force: bool, report: dict[str, Any]) -> None:
    from unicon_core.demo_data import br35h

    names = [*br35h.SITE_TUMOUR_FRACTION, br35h.EXTERNAL_SITE]
    task = br35h.tumour_task()
    crop, floor = br35h.baked_step(task)
    if not force and _reusable(out_dir, names, br35h.SOURCE, task):
        for n in names:
            _record(report, n, out_dir / n, False)
        return
    images = br35h.scan_br35h(task.input_size[-1], crop=crop, floor=floor)
    chosen = br35h.select_sites(images, seed=seed)
    for name in names:
        external = name == br35h.EXTERNAL_SITE
        share = 0.5 if external else br35h.SITE_TUMOUR_FRACTION[name]
        what = (
            "external validation site: whole web sources no training site holds, every row a "
            "test row, never trains" if external else
            "sources above 6 % of the site train, val/test are many smaller sources"
        )
        _build(
            report, out_dir, name, task, False, br35h.SOURCE,
            f"Real Br35H brain MRI (web-collected JPEGs), {len(chosen[name])} images, "
            f"~{share:.0%} tumour; grayscale 64x64, size shortcut removed, near-duplicate "
            f"and same-source images grouped in one split; {what}.",
            lambda d, name=name: br35h.write_br35h_site(d, images, chosen[name]),
            True,
            role=SiteRole.EVALUATION if external else SiteRole.TRAIN,
        )


def _record(report: dict[str, Any], name: str, path: Path, built: bool) -> None:
    report[name] = {"path": str(path), "built": built}


def _build(
    report: dict[str, Any], out_dir: Path, name: str, task: TaskSpec, synthetic: bool,
    source: str, description: str, fill: Callable[[Path], list[dict[str, Any]]],
    force: bool, role: SiteRole | None = None,
) -> None:
    """Build (or reuse) one site with :func:`build_site` and record it in ``report``."""
    extra = {} if role is None else {"role": role}
    _record(report, name, *build_site(out_dir, name, task, synthetic, source, description,
                                      fill, force=force, **extra))


#: Builder groups ``prepare_demo(only=...)`` accepts, in build order.
GROUPS = ("phantoms", "gbsg2", "brain", "br35h")


def prepare_demo(
    out_dir: Path | str,
    seed: int = 0,
    force: bool = False,
    only: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Build (or reuse) every demo site under ``out_dir`` (or the groups named in ``only``).

    Returns ``{site: {"path", "built", "task", "synthetic", "rows"}}`` plus ``"_seconds"``.
    """
    from unicon_core.data.manifest import read_site_json
    from unicon_core.data.readers import read_manifest

    wanted = list(GROUPS if only is None else only)
    unknown = sorted(set(wanted) - set(GROUPS))
    if unknown:
        raise ValueError(f"only: unknown demo groups {unknown}, choose from {list(GROUPS)}")
    builders = {
        "phantoms": _phantom_sites,
        "gbsg2": _gbsg2_sites,
        "brain": _brain_sites,
        "br35h": _br35h_sites,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report: dict[str, Any] = {}
    for group in GROUPS:
        if group in wanted:
            builders[group](out, seed, force, report)
    for entry in report.values():
        meta = read_site_json(Path(entry["path"]))
        entry.update(
            task=meta.task.name,
            synthetic=meta.synthetic,
            rows=len(read_manifest(Path(entry["path"]) / "manifest.csv")),
        )
    report["_seconds"] = round(time.perf_counter() - start, 2)
    return report
