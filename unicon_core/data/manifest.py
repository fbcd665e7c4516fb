"""The site format: column names, the columns a task needs, and ``site.json`` metadata.

A site folder holds ``manifest.csv`` (one row per sample) and ``site.json`` (who the site is and
which :class:`~unicon_core.config.TaskSpec` its rows serve). Everything here is plain Python and
pandas-free so that it stays cheap to import.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from unicon_core.config import Modality, TaskKind, TaskSpec

MANIFEST_NAME = "manifest.csv"
SITE_JSON_NAME = "site.json"
#: Columns whose name starts with this prefix are provenance (original size, source file, ...):
#: kept in the manifest for audits, never fed to a model.
META_PREFIX = "meta_"


class Column(str, Enum):
    """Reserved manifest column names (image columns are listed by :func:`image_columns`)."""

    IMAGE = "image"
    CT = "ct"
    PET = "pet"
    LABEL = "label"
    MASK = "mask"
    TIME = "time"
    EVENT = "event"
    PATIENT_ID = "patient_id"
    SPLIT = "split"
    ID = "id"


class Split(str, Enum):
    """The three splits a site's rows are divided into."""

    TRAIN = "train"
    VAL = "val"
    TEST = "test"


SPLITS: tuple[str, ...] = tuple(s.value for s in Split)
#: Columns any site may carry, whatever its task (a CT segmentation site may keep survival
#: columns for a later prognosis task).
OPTIONAL_COLUMNS: tuple[str, ...] = (
    Column.PATIENT_ID.value,
    Column.SPLIT.value,
    Column.ID.value,
    Column.LABEL.value,
    Column.MASK.value,
    Column.TIME.value,
    Column.EVENT.value,
)


def image_columns(spec: TaskSpec) -> list[str]:
    """Manifest columns holding image paths, one per input channel, in channel order.

    CT: ``ct``; CT+PET: ``ct``, ``pet``; MRI: ``image`` (1 channel) or ``image_0`` ...
    ``image_{C-1}`` (one file per channel); clinical: none.
    """
    if spec.modality is Modality.CLINICAL:
        return []
    if spec.modality is Modality.CT:
        return [Column.CT.value]
    if spec.modality is Modality.CT_PET:
        return [Column.CT.value, Column.PET.value]
    if spec.channels == 1:
        return [Column.IMAGE.value]
    return [f"{Column.IMAGE.value}_{i}" for i in range(spec.channels)]


def target_columns(spec: TaskSpec) -> list[str]:
    """Columns holding what the task predicts."""
    if spec.kind is TaskKind.CLASSIFICATION:
        return [Column.LABEL.value]
    if spec.kind is TaskKind.SEGMENTATION:
        return [Column.MASK.value]
    return [Column.TIME.value, Column.EVENT.value]


def required_columns(spec: TaskSpec) -> list[str]:
    """Columns a manifest for ``spec`` must have: inputs (images or features) and targets."""
    inputs = list(spec.feature_names) if spec.modality is Modality.CLINICAL else image_columns(spec)
    return inputs + target_columns(spec)


def is_known_column(name: str, spec: TaskSpec) -> bool:
    """Whether ``name`` belongs in a manifest of ``spec`` (required, optional or ``meta_*``)."""
    return (
        name in required_columns(spec) or name in OPTIONAL_COLUMNS or name.startswith(META_PREFIX)
    )


class SiteRole(str, Enum):
    """What a site does in a federation: train (and evaluate), or only evaluate."""

    TRAIN = "train"
    #: an external validation hospital: receives the task's skill, reports test metrics, never
    #: trains (its manifest holds only a test split)
    EVALUATION = "evaluation"


@dataclass
class SiteMetadata:
    """Contents of ``site.json``: a site describes itself and the task its rows serve.

    ``role`` and ``labels`` are optional keys (written only when not the default): an
    evaluation-only site, and the class names of label values 0, 1, ... (``unicon init-site``).
    """

    site: str
    synthetic: bool
    source: str
    description: str
    task: TaskSpec
    role: SiteRole = SiteRole.TRAIN
    labels: list[str] | None = None

    def __post_init__(self) -> None:
        try:
            self.role = SiteRole(self.role)
        except ValueError:
            raise ValueError(
                f"site.json: 'role' must be one of {[r.value for r in SiteRole]}, got "
                f"{self.role!r}"
            ) from None
        if self.labels is not None and (
            not isinstance(self.labels, list) or not all(isinstance(x, str) for x in self.labels)
        ):
            raise ValueError("site.json: 'labels' must be a list of class names (strings)")
        if not isinstance(self.site, str) or not self.site:
            raise ValueError(f"site.json: 'site' must be a non-empty string, got {self.site!r}")
        if not isinstance(self.synthetic, bool):
            raise ValueError(
                f"site.json: 'synthetic' must be true or false, got {self.synthetic!r}"
            )
        for name in ("source", "description"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"site.json: {name!r} must be a string")
        if isinstance(self.task, dict):
            self.task = TaskSpec.from_dict(self.task)
        if not isinstance(self.task, TaskSpec):
            raise ValueError("site.json: 'task' must be a task spec mapping")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping."""
        return {
            "site": self.site,
            "synthetic": self.synthetic,
            "source": self.source,
            "description": self.description,
            "task": self.task.to_dict(),
            **({"role": self.role.value} if self.role is not SiteRole.TRAIN else {}),
            **({"labels": list(self.labels)} if self.labels is not None else {}),
        }

    @property
    def evaluation_only(self) -> bool:
        """Whether the site only evaluates (``role: evaluation``)."""
        return self.role is SiteRole.EVALUATION

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SiteMetadata:
        """Build from a mapping, naming missing or unknown keys."""
        if not isinstance(data, dict):
            raise ValueError("site.json: must hold a JSON object")
        keys = {"site", "synthetic", "source", "description", "task"}
        optional = {"role", "labels"}
        missing, unknown = sorted(keys - set(data)), sorted(set(data) - keys - optional)
        if missing or unknown:
            raise ValueError(f"site.json: missing keys {missing}, unknown keys {unknown}")
        return cls(**data)


def read_site_json(site_dir: Path) -> SiteMetadata:
    """Read and validate ``site_dir/site.json`` (``ValueError``/``OSError`` when it is bad)."""
    path = Path(site_dir) / SITE_JSON_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"site.json: not valid JSON ({err})") from None
    return SiteMetadata.from_dict(data)


def write_site_json(site_dir: Path, metadata: SiteMetadata) -> Path:
    """Write ``site.json`` into ``site_dir`` and return its path."""
    path = Path(site_dir) / SITE_JSON_NAME
    path.write_text(json.dumps(metadata.to_dict(), indent=2) + "\n", encoding="utf-8")
    return path
