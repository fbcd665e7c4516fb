"""Running a bundle on inputs: preprocessing as in training, routing, outputs written to disk.

Images go through the same MONAI evaluation pipeline sites trained with (one builder,
:func:`~unicon_core.data.transforms.build_transforms`, with the preprocessing the task declares
in its spec, which travels in the bundle); CSV rows are standardised per site as the federation
did (a site's manifest: its train split) or else with the bundle's pooled statistics. Every
prediction carries an out-of-distribution flag (:mod:`unicon_core.inference.ood`).
Outputs per input: a segmentation mask as NIfTI in the input's space (affine
and header kept, resampled back to the input's shape), class probabilities or a risk score, and
a JSON summary naming the skill, why it ran, and whether it learned from synthetic data.

The model runs on one device (``--device``: auto, cpu, cuda or cuda:<index>; see
:func:`predict_device`), under bf16 autocast on CUDA; outputs come back to the CPU before
anything is written.

Outputs never leave the output folder and never replace a file: names are made safe
(:func:`~unicon_core.inference.inputs.safe_name`) and every file is created exclusively, so a
file already there (an earlier run's result, a planted symlink) is an error naming it.
"""

from __future__ import annotations

import gzip
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from unicon_core.config import Modality, TaskKind
from unicon_core.inference.inputs import InputError, LoadedInput, safe_name
from unicon_core.inference.routing import RouteDecision, route

if TYPE_CHECKING:
    import torch

    from unicon_core.data.transforms import PreprocessConfig
    from unicon_core.inference.bundle import Bundle

SYNTHETIC_WARNING = (
    "SYNTHETIC: this skill learned from synthetic data; its outputs demonstrate the software "
    "and are not clinical predictions"
)
MIXED_WARNING = "this skill learned partly from synthetic data"


#: The run summary ``predict`` writes next to the per-input files.
SUMMARY_FILE = "summary.json"


class OutputExistsError(ValueError):
    """An output file is already there; ``predict`` never overwrites (the message names it)."""


def output_files(name: str, segmentation: bool | None = None) -> list[str]:
    """File names an input called ``name`` gets: its JSON summary, and its mask for a
    segmentation (both when ``segmentation`` is unknown, i.e. before routing)."""
    safe = safe_name(name)
    files = [f"{safe}.json"]
    if segmentation is not False:
        files.append(f"{safe}_mask.nii.gz")
    return files


def existing_outputs(out_dir: Path, names: list[str]) -> list[Path]:
    """Files (or links, even dangling) under ``out_dir`` a run for ``names`` would write."""
    wanted = [SUMMARY_FILE] + [f for n in names for f in output_files(n)]
    return [out_dir / f for f in wanted if os.path.lexists(out_dir / f)]


def write_new(path: Path, data: bytes | str) -> Path:
    """Create ``path`` exclusively (never following a link) and write ``data``; an existing
    file or link is left as it is and raises :class:`OutputExistsError`."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except FileExistsError:
        raise OutputExistsError(
            f"{path}: already exists; predict never overwrites a file: choose a new --out "
            "folder or move the old outputs away"
        ) from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
    return path


def predict_device(name: str | torch.device = "auto") -> torch.device:
    """The device ``--device`` names: ``auto`` (CUDA when a GPU is visible, else the CPU),
    ``cpu``, ``cuda`` or ``cuda:<index>``. Any other value, or a GPU that is not visible here,
    raises ``ValueError`` saying so."""
    from unicon_core.config import check_device
    from unicon_core.device import resolve_device

    text = str(name)
    try:
        check_device("predict", text)
    except ValueError:
        raise ValueError(f"--device {text!r} is not auto, cpu, cuda or cuda:<index>") from None
    try:
        return resolve_device(text, setting="--device")
    except ValueError as exc:
        raise ValueError(f"{exc}; use --device cpu (or auto)") from None


@dataclass
class Prediction:
    """What one skill computed for one input (tensors already on the CPU)."""

    item: LoadedInput
    decision: RouteDecision
    output: torch.Tensor
    extra: dict[str, Any] = field(default_factory=dict)


class Predictor:
    """Runs a loaded bundle on inputs; transforms are built once per task.

    ``device`` (see :func:`predict_device`) is where the model runs: the bundle's model is
    moved there once, here; each input follows it, and outputs come back to the CPU.
    """

    def __init__(self, bundle: Bundle, device: str | torch.device = "auto") -> None:
        self.device = predict_device(device)
        self.bundle = bundle
        self.bundle.model.to(self.device)
        self._transforms: dict[str, Any] = {}
        self._site_stats: dict[tuple[str, str], tuple[np.ndarray, np.ndarray] | None] = {}

    # -------------------------------------------------------------------- preprocessing
    def preprocess_of(self, task: str) -> PreprocessConfig:
        """The task's declared pipeline (it travels in the bundle inside the task's spec); a
        task declaring none (older bundles) uses the bundle's global section."""
        from unicon_core.data.transforms import task_preprocess

        return task_preprocess(self.bundle.entry(task).spec, self.bundle.preprocess)

    def prepare(self, task: str, item: LoadedInput) -> torch.Tensor:
        """The model input for ``task``: ``(1, C, *input_size)`` or ``(1, F)``."""
        return self.prepare_with_geometry(task, item)[0]

    def prepare_with_geometry(
        self, task: str, item: LoadedInput
    ) -> tuple[torch.Tensor, dict[str, Any] | None]:
        """:meth:`prepare` plus the grid 3D inputs were reoriented/resampled to (``None`` when
        the pipeline kept the file's grid), which :meth:`mask_in_input_space` inverts.

        Inputs are handed to the pipeline as the site datasets hand them: 3D volumes as
        ``MetaTensor`` carrying the file's affine, 2D images as plain arrays.
        """
        import torch

        from unicon_core.data.manifest import image_columns
        from unicon_core.data.transforms import (
            GEOMETRY_KEY,
            build_transforms,
            to_meta_tensor,
        )
        from unicon_core.keys import BatchKey

        spec = self.bundle.entry(task).spec
        if spec.modality is Modality.CLINICAL:
            return self._features(task, item), None
        if task not in self._transforms:
            self._transforms[task] = build_transforms(spec, self.preprocess_of(task))[1]
        assert item.array is not None and item.affine is not None
        data: dict[str, Any] = {}
        columns = image_columns(spec)
        for i, column in enumerate(columns):
            # one column takes every channel (a colour file its pipeline turns grey: to_gray)
            channel = item.array if len(columns) == 1 else item.array[i : i + 1]
            data[column] = (
                to_meta_tensor(channel, item.affine) if spec.spatial_dims == 3 else (channel)
            )
        out = self._transforms[task](data)
        x = torch.as_tensor(out[BatchKey.INPUT.value], dtype=torch.float32)
        return x.as_subclass(torch.Tensor).unsqueeze(0), out.get(GEOMETRY_KEY)

    def feature_row(self, task: str, item: LoadedInput) -> np.ndarray:
        """The raw values of ``task``'s feature columns in ``item``'s row (float64)."""
        entry = self.bundle.entry(task)
        assert item.row is not None
        values = []
        for name in entry.spec.feature_names:
            cell = item.row.get(name, "")
            try:
                value = float(cell)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise InputError(f"{item.ref.label}: column {name!r} is {cell!r}, not a number")
            values.append(value)
        return np.asarray(values, dtype=np.float64)

    def standardisation(self, task: str, item: LoadedInput) -> tuple[np.ndarray, np.ndarray, str]:
        """``(mean, std, source)`` that z-score ``item``'s row for ``task``.

        Per site, as the federation trains and evaluates: rows of a CSV with a ``split`` column
        holding train rows (a site's ``manifest.csv``) use that CSV's train-split statistics
        (``source`` ``"site train split"``), exactly what the site's evaluation used. Other
        rows fall back to the bundle's pooled statistics over the federation's train splits
        (``"pooled (bundle)"``), which the summary states.
        """
        from unicon_core.data.dataset import standardisation

        entry = self.bundle.entry(task)
        key = (task, str(item.ref.paths[0]) if item.ref.paths else "")
        if key not in self._site_stats:
            self._site_stats[key] = None
            path = item.ref.paths[0] if item.ref.paths else None
            if path is not None and path.suffix.lower() == ".csv" and path.is_file():
                import pandas as pd

                try:
                    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
                except Exception:  # unreadable now: fall back to the pooled statistics
                    frame = pd.DataFrame()
                if "split" in frame.columns:
                    train = frame[frame["split"].str.strip().str.lower() == "train"]
                    if len(train):
                        try:
                            rows = train.to_dict(orient="records")
                            self._site_stats[key] = standardisation(rows, entry.spec.feature_names)
                        except (KeyError, ValueError):
                            self._site_stats[key] = None
        site = self._site_stats[key]
        if site is not None:
            return site[0], site[1], "site train split"
        if entry.feature_mean is None or entry.feature_std is None:
            raise InputError(
                f"{item.ref.label}: the bundle holds no feature statistics for tabular task "
                f"{task!r}, so rows cannot be standardised as in training"
            )
        return entry.feature_mean, entry.feature_std, "pooled (bundle)"

    def _features(self, task: str, item: LoadedInput) -> torch.Tensor:
        import torch

        mean, std, _ = self.standardisation(task, item)
        z = (self.feature_row(task, item) - mean) / std
        return torch.as_tensor(z, dtype=torch.float32).unsqueeze(0)

    # -------------------------------------------------------------------- routing + running
    def router_scores(self, item: LoadedInput, candidates: list[str]) -> dict[str, float]:
        """Learned-router score of each candidate (lower: nearer its federated prototype)."""
        from unicon_core.inference.prototypes import input_descriptor, nearest_prototype_scores

        missing = [t for t in candidates if t not in self.bundle.router]
        if missing:
            raise InputError(
                f"{item.ref.label}: skills {candidates} all fit, but the bundle's router has no "
                f"prototype for {missing}; pass --task or a question"
            )
        if item.is_tabular:
            assert item.row is not None
            try:
                values = np.array([float(v) for v in item.row.values()], dtype=np.float64)
            except ValueError:
                raise InputError(f"{item.ref.label}: the row holds non-numeric cells") from None
            feats = input_descriptor(values)
        else:
            assert item.array is not None and item.affine is not None
            dims = item.spatial_dims
            feats = input_descriptor(item.array, np.linalg.norm(item.affine[:3, :dims], axis=0))
        return nearest_prototype_scores(self.bundle.router, feats, candidates)

    def decide(
        self, item: LoadedInput, task: str | None = None, question: str | None = None
    ) -> RouteDecision:
        """Which skill answers ``item`` (see :func:`~unicon_core.inference.routing.route`)."""
        specs = {name: entry.spec for name, entry in self.bundle.tasks.items()}
        scorer = (lambda c: self.router_scores(item, c)) if self.bundle.router else None
        return route(specs, item, task=task, question=question, scorer=scorer)

    def predict(
        self, item: LoadedInput, task: str | None = None, question: str | None = None
    ) -> Prediction:
        """Route ``item`` and run the chosen skill on :attr:`device` (bf16 autocast on CUDA);
        the output comes back to the CPU as float32."""
        import torch

        from unicon_core.device import autocast

        decision = self.decide(item, task, question)
        x, geometry = self.prepare_with_geometry(decision.task, item)
        model = self.bundle.model
        model.eval()
        with torch.no_grad(), autocast(self.device):
            output = model(x.to(self.device), decision.task)
        extra: dict[str, Any] = {"geometry": geometry, "ood": self.ood(decision.task, item)}
        if item.is_tabular:
            extra["standardisation"] = self.standardisation(decision.task, item)[2]
        return Prediction(
            item=item, decision=decision, output=output.detach().float().cpu(), extra=extra
        )

    def ood(self, task: str, item: LoadedInput) -> dict[str, Any]:
        """The input's out-of-distribution flag for ``task``
        (:func:`~unicon_core.inference.ood.ood_flag`): its raw descriptor's distance to the
        skill's prototype against the threshold chosen on validation data."""
        from unicon_core.inference.ood import ood_flag
        from unicon_core.inference.prototypes import input_descriptor

        if item.is_tabular:
            descriptor = input_descriptor(self.feature_row(task, item))
        else:
            assert item.array is not None and item.affine is not None
            dims = item.spatial_dims
            descriptor = input_descriptor(
                item.array, np.linalg.norm(item.affine[:3, :dims], axis=0)
            )
        return ood_flag(self.bundle.router.get(task), self.bundle.entry(task).ood, descriptor)

    # -------------------------------------------------------------------- outputs
    def write(self, pred: Prediction, out_dir: Path) -> dict[str, Any]:
        """Write the prediction's files and JSON summary under ``out_dir``; returns the summary.

        Files are named from the input's :func:`safe_name` and created exclusively: if one is
        already there, :class:`OutputExistsError` names it and nothing is written.
        """
        entry = self.bundle.entry(pred.decision.task)
        spec = entry.spec
        name = safe_name(pred.item.ref.name)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        segmentation = spec.kind is TaskKind.SEGMENTATION
        there = [
            out_dir / f
            for f in output_files(name, segmentation)
            if os.path.lexists(out_dir / f)
        ]
        if there:
            write_new(there[0], b"")  # raises, naming the file
        result: dict[str, Any] = {"kind": spec.kind.value}
        if segmentation:
            mask = self.mask_in_input_space(pred)
            path = out_dir / f"{name}_mask.nii.gz"
            write_mask(path, mask, pred.item)
            labels, counts = np.unique(mask, return_counts=True)
            result.update(
                mask=str(path),
                voxels_per_label={int(k): int(v) for k, v in zip(labels, counts, strict=True)},
            )
        elif spec.kind is TaskKind.CLASSIFICATION:
            probs = pred.output.softmax(dim=1)[0].double().numpy()
            result.update(probabilities=probs.tolist(), predicted_class=int(probs.argmax()))
        else:
            result.update(risk_score=float(pred.output.reshape(-1)[0]))
        if "standardisation" in pred.extra:
            result["standardisation"] = pred.extra["standardisation"]
        ood = pred.extra.get("ood") or {"in_distribution": None}
        summary = {
            "name": name,
            "input": [str(p) for p in pred.item.ref.paths],
            "csv_row": pred.item.ref.row_number,
            "input_description": pred.item.describe(),
            "task": spec.name,
            "kind": spec.kind.value,
            "modality": spec.modality.value,
            "routing": {
                "method": pred.decision.method.value,
                "reason": pred.decision.reason,
                "question_kind": (
                    pred.decision.kind_from_question.value
                    if pred.decision.kind_from_question
                    else None
                ),
                "candidates": pred.decision.candidates,
                "scores": pred.decision.scores,
            },
            "trained_on_synthetic_data": entry.synthetic,
            "provenance": entry.provenance,
            "trained_on": [{"site": s.site, "synthetic": s.synthetic} for s in entry.trained_on],
            "warning": (
                SYNTHETIC_WARNING
                if entry.provenance == "synthetic"
                else MIXED_WARNING
                if entry.provenance == "mixed"
                else None
            ),
            "in_distribution": ood["in_distribution"],
            "ood": ood,
            "result": result,
            "bundle": str(self.bundle.path) if self.bundle.path else None,
        }
        write_new(out_dir / f"{name}.json", json.dumps(summary, indent=2) + "\n")
        return summary

    def mask_in_input_space(self, pred: Prediction) -> np.ndarray:
        """Label map on the input file's grid: class probabilities are brought back (resize or
        crop/pad undone, reorientation/resampling inverted) before the argmax, with the data
        layer's own inverse of the training pipeline."""
        from unicon_core.data.transforms import to_input_space

        probs = pred.output.softmax(dim=1)[0]  # (C, *input_size)
        assert pred.item.affine is not None
        back = to_input_space(
            probs,
            pred.item.affine,
            pred.item.spatial_shape,
            geometry=pred.extra.get("geometry"),
            spatial=self.preprocess_of(pred.decision.task).spatial,
            mode="linear",
        )
        labels = back.argmax(dim=0).numpy()
        return labels.astype(np.uint8 if probs.shape[0] <= 256 else np.int16)


def write_mask(path: Path, mask: np.ndarray, item: LoadedInput) -> Path:
    """Write a label map as gzipped NIfTI with the input's affine (and its header, for NIfTI
    inputs), creating ``path`` exclusively (:func:`write_new`)."""
    import nibabel as nib

    affine = np.eye(4) if item.affine is None else item.affine
    header = item.header.copy() if item.header is not None else None
    img = nib.Nifti1Image(mask, affine, header=header)
    img.set_data_dtype(mask.dtype)
    img.header.set_slope_inter(1.0, 0.0)
    img.header["descrip"] = b"unicon segmentation mask"
    return write_new(Path(path), gzip.compress(img.to_bytes(), compresslevel=1))
