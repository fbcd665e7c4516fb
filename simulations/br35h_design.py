"""The Br35H demo's evaluation design, measured on the prepared sites (section of BENCHMARKS.md).

``python -m simulations.br35h_design [--demo-dir demo_data] [--into BENCHMARKS.md]`` reads the
prepared ``br35h_*`` site folders (``unicon prepare-demo``) and reports, per site and split, n,
tumour share and number of web sources; then the leakage checks: near-duplicate groups (16x16
average hash of the original and of the prepared image) and sources shared by two splits or by
the external site and a training site, and how well the original image size alone predicts the
label on the external site (a model fitted on the training sites' train splits). Every number
is computed here from the files, none is typed in.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from simulations.report import insert_section

REPO = Path(__file__).resolve().parents[1]
HEAD = "## Br35H evaluation design (tumour_cls)\n"


def load(demo_dir: Path) -> pd.DataFrame:
    """Every Br35H site's manifest, with a ``site`` column."""
    from unicon_core.demo_data.br35h import EXTERNAL_SITE, SITE_TUMOUR_FRACTION

    frames = []
    for site in [*SITE_TUMOUR_FRACTION, EXTERNAL_SITE]:
        path = demo_dir / site / "manifest.csv"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: run `unicon prepare-demo {demo_dir}` first")
        frames.append(pd.read_csv(path).assign(site=site))
    return pd.concat(frames, ignore_index=True)


def crossing(frame: pd.DataFrame, key: str, by: str) -> int:
    """Groups of ``key`` found in more than one value of ``by``."""
    return int((frame.groupby(key)[by].nunique() > 1).sum())


def size_only_auc(frame: pd.DataFrame) -> float:
    """AUC on the external site of a logistic model of original size fitted on the training
    sites' train splits (near 0.5: size tells nothing across sources)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from unicon_core.demo_data.br35h import EXTERNAL_SITE

    def features(f: pd.DataFrame) -> np.ndarray:
        w, h = f["meta_orig_width"].to_numpy(float), f["meta_orig_height"].to_numpy(float)
        return np.c_[w, h, w / h, np.log(w * h)]

    train = frame[(frame["site"] != EXTERNAL_SITE) & (frame["split"] == "train")]
    ext = frame[frame["site"] == EXTERNAL_SITE]
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(features(train),
                                                                      train["label"])
    return float(roc_auc_score(ext["label"], model.predict_proba(features(ext))[:, 1]))


def width_auc(part: pd.DataFrame) -> float:
    """AUC of the original image width alone for the label within one site's split (NaN with
    one class): a source property that tells the label there, in either direction."""
    from sklearn.metrics import roc_auc_score

    if part["label"].nunique() < 2:
        return float("nan")
    return float(roc_auc_score(part["label"], part["meta_orig_width"].astype(float)))


def render(frame: pd.DataFrame) -> str:
    """The markdown section."""
    from unicon_core.demo_data.br35h import EXTERNAL_SITE

    lines = [HEAD, "Written by `python -m simulations.br35h_design` from the prepared sites "
             "(`unicon prepare-demo`, seed 0). `br35h_ext` is an evaluation-only site: whole web "
             "sources that no training site holds; its AUC (`external_validation` in "
             "results.json) is the headline tumour number. Within a training site, sources "
             "above 6 % of its rows train, and val/test are many smaller sources, stratified "
             "by label. Every metric in results.json carries its n and a 95 % bootstrap "
             "interval.", "",
             "| site | split | n | tumour | sources | sources of one label | original width "
             "alone, AUC |", "|---|---|---|---|---|---|---|"]
    for (site, split), part in frame.groupby(["site", "split"], sort=True):
        pure = int((part.groupby("patient_id")["label"].nunique() == 1).sum())
        lines.append(f"| {site} | {split} | {len(part)} | {part['label'].mean():.0%} | "
                     f"{part['patient_id'].nunique()} | {pure} | {width_auc(part):.2f} |")
    training = frame[frame["site"] != EXTERNAL_SITE]
    ext = frame[frame["site"] == EXTERNAL_SITE]
    shared_sources = len(set(ext["patient_id"]) & set(training["patient_id"]))
    frame = frame.assign(where=frame["site"] + "/" + frame["split"])
    lines += [
        "",
        f"- near-duplicate groups across splits or sites: original-image hash "
        f"{crossing(frame, 'meta_dup_hash', 'where')}, prepared-image hash "
        f"{crossing(frame, 'meta_prepared_hash', 'where')}; source groups "
        f"{crossing(frame, 'patient_id', 'where')}",
        f"- sources of `{EXTERNAL_SITE}` also held by a training site: {shared_sources}",
        f"- original image size alone, fitted on the training splits, on `{EXTERNAL_SITE}`: "
        f"AUC {size_only_auc(frame):.3f} (0.5 = no information; the prepared pixels carry no "
        "size as such: every image is cropped, padded square and resized to 64x64, though "
        "resizing leaves traces such as sharpness)",
        "- within a split, sources are whole and most hold one label, so a split's AUC ranks "
        "sources as much as images (its effective n is nearer its sources than its rows), and "
        "a source property such as the original width can tell the label in one split and "
        "its reverse in another (the last column: 0.5 = no information, 0 or 1 = it alone "
        "separates the labels)",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo-dir", type=Path, default=REPO / "demo_data")
    p.add_argument("--into", type=Path, default=None, metavar="BENCHMARKS_MD",
                   help="put the section into this BENCHMARKS.md (replacing its old one)")
    args = p.parse_args(argv)
    section = render(load(args.demo_dir))
    print(section)
    if args.into is not None:
        insert_section(args.into, section)
        print(f"wrote the section into {args.into}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
