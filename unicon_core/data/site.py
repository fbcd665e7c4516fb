"""A validated site: its metadata, its rows per split, and datasets over them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from unicon_core.config import Modality, TaskSpec
from unicon_core.data.dataset import ImageSiteDataset, ItemMemo, TabularSiteDataset, standardisation
from unicon_core.data.manifest import SPLITS, SiteMetadata, read_site_json
from unicon_core.data.problems import SiteValidationError
from unicon_core.data.readers import ImageData
from unicon_core.data.transforms import PreprocessConfig, build_transforms, task_preprocess
from unicon_core.data.validate import DEFAULT_CACHE_BYTES, check_site


@dataclass
class Site:
    """One hospital's data, as read from a site folder by :func:`open_site`."""

    root: Path
    metadata: SiteMetadata
    rows: list[dict[str, str]]
    splits: list[str]
    #: The run's global preprocessing; a task declaring its own (``TaskSpec.preprocess``) uses
    #: that instead (see :func:`~unicon_core.data.transforms.task_preprocess`).
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    seed: int = 0
    cache: dict[str, ImageData] = field(default_factory=dict, repr=False)
    #: Evaluation items already through the (deterministic) pipeline, per split.
    memo: dict[str, ItemMemo] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        """The site's name (``site.json`` ``site``)."""
        return self.metadata.site

    @property
    def task_spec(self) -> TaskSpec:
        """The task the site's rows serve."""
        return self.metadata.task

    @property
    def synthetic(self) -> bool:
        """Whether the data are synthetic (every result computed on them must say so)."""
        return self.metadata.synthetic

    def split_rows(self, split: str) -> list[int]:
        """0-based indices of the rows in ``split``."""
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {SPLITS}")
        return [i for i, s in enumerate(self.splits) if s == split]

    def class_counts(self, split: str) -> list[int]:
        """Rows of each class in ``split`` (classification tasks; labels are validated)."""
        spec = self.task_spec
        if spec.kind.value != "classification":
            raise ValueError(f"site {self.name}: task {spec.name!r} is {spec.kind.value}, "
                             "class counts need a classification task")
        counts = [0] * spec.num_classes
        for i in self.split_rows(split):
            counts[int(self.rows[i]["label"])] += 1
        return counts

    def split_sizes(self) -> dict[str, int]:
        """Number of samples per split."""
        return {s: len(self.split_rows(s)) for s in SPLITS}

    def feature_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean/std of the clinical features over the *train* split (used for every split).

        Standardisation is per site: the federation trains and evaluates each site on its own
        train-split statistics, and ``predict`` given the site's rows (a CSV with a ``split``
        column) uses the same ones (:func:`~unicon_core.data.dataset.standardisation`).
        """
        train = [self.rows[i] for i in self.split_rows("train")]
        return standardisation(train, self.task_spec.feature_names)

    def dataset(self, split: str, train: bool = False, with_meta: bool = False) -> Dataset:
        """A dataset over ``split``; ``train=True`` adds augmentation (images only)."""
        index = self.split_rows(split)
        rows = [self.rows[i] for i in index]
        numbers = [i + 1 for i in index]
        spec = self.task_spec
        if spec.modality is Modality.CLINICAL:
            mean, std = self.feature_stats()
            return TabularSiteDataset(self.name, rows, numbers, spec, mean, std, with_meta)
        train_tf, eval_tf = build_transforms(
            spec, task_preprocess(spec, self.preprocess), seed=self.seed
        )
        return ImageSiteDataset(
            self.root,
            self.name,
            rows,
            numbers,
            spec,
            train_tf if train else eval_tf,
            train=train,
            seed=self.seed,
            cache=self.cache,
            with_meta=with_meta,
            memo=None if train or with_meta
            else self.memo.setdefault(split, ItemMemo(DEFAULT_CACHE_BYTES)),
        )


def open_site(
    site_dir: Path | str,
    spec: TaskSpec | None = None,
    preprocess: PreprocessConfig | None = None,
    seed: int = 0,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> Site:
    """Validate a site folder and open it; raise :class:`SiteValidationError` listing every
    problem. ``spec`` (optional) must match the task in ``site.json``; images read during
    validation are kept in memory (up to ``cache_bytes``) so training does not read them again.
    """
    root = Path(site_dir)
    result = check_site(root, spec, cache_bytes=cache_bytes)
    if result.problems:
        raise SiteValidationError(str(root), result.problems)
    return Site(
        root=root,
        metadata=read_site_json(root),
        rows=result.rows,
        splits=result.splits,
        preprocess=preprocess or PreprocessConfig(),
        seed=seed,
        cache=result.cache,
    )


#: Validated sites of this process: folder -> (files fingerprint, Site).
_VALIDATED: dict[str, tuple[tuple[Any, ...], Site]] = {}
#: The Site handed out per (folder, seed): it keeps its evaluation memo between calls.
_BY_SEED: dict[tuple[str, int], Site] = {}


def site_files(root: Path, site: Site | None) -> list[Path]:
    """The files a site's validity depends on: its manifest, site.json and every named file."""
    files = [root / "manifest.csv", root / "site.json"]
    if site is not None:
        from unicon_core.data.manifest import Column, image_columns

        columns = [*image_columns(site.task_spec), Column.MASK.value]
        files += [root / row[c] for row in site.rows for c in columns if row.get(c)]
    return files


def fingerprint(files: list[Path]) -> tuple[Any, ...]:
    """Size and modification time of each file (a missing file counts too)."""
    out = []
    for f in files:
        try:
            st = f.stat()
            out.append((str(f), st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((str(f), None, None))
    return tuple(out)


def open_site_cached(site_dir: Path | str, spec: TaskSpec | None = None, seed: int = 0) -> Site:
    """:func:`open_site` once per process and folder while none of the site's files changes.

    Validation reads every image of every split, and a process (a simulation, a site's warm
    executor, the benchmark suite) opens the same sites for every message, stage and seed. A
    changed, added or removed file (size or mtime) means the folder is validated again. The
    seed (augmentation only) does not change validity: each seed gets its own ``Site`` sharing
    the validated rows and image cache. A ``spec`` other than the site's own goes through
    :func:`open_site`, which reports the mismatch.
    """
    from unicon_core import data  # module lookup: tests count real opens

    key = str(Path(site_dir).resolve())
    hit = _VALIDATED.get(key)
    if hit is None or fingerprint(site_files(Path(key), hit[1])) != hit[0]:
        site = data.open_site(site_dir, spec=spec, seed=seed)
        _VALIDATED[key] = (fingerprint(site_files(Path(key), site)), site)
        for stale in [k for k in _BY_SEED if k[0] == key]:
            del _BY_SEED[stale]
        _BY_SEED[(key, seed)] = site
        return site
    base = hit[1]
    if spec is not None and spec != base.task_spec:
        return data.open_site(site_dir, spec=spec, seed=seed)
    return _BY_SEED.setdefault((key, seed), dataclasses.replace(base, seed=seed, memo={}))
