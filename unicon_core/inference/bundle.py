"""Bundles: one self-describing folder holding everything needed to use a grown model.

Layout::

    <bundle>/
        manifest.json           format, backbone config + seed + hash, tasks (spec with its
                                declared preprocessing, the data each task was trained on,
                                synthetic flag, OOD threshold), global preprocessing, router,
                                sha256 of every tensor file
        foundation.safetensors  frozen backbone + foundation stems (omitted when the manifest
                                references an external checkpoint by location and hash)
        skills.safetensors      every task's skill under ``<task>.<skill key>``
        router.safetensors      learned-router prototypes and tabular feature statistics

Loading rebuilds the model in a fresh process: foundation (hash verified), tasks added in the
recorded order, skills loaded strictly. Everything is plain safetensors + JSON: no pickles.
Every file the manifest names must lie inside the bundle folder once symlinks and ``..`` are
resolved; only an external foundation (``location``, an absolute path, hash-checked) may not.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from unicon_core.config import BackboneConfig, TaskSpec
from unicon_core.inference.ood import OODCalibration
from unicon_core.inference.prototypes import Prototype

if TYPE_CHECKING:
    from unicon_core.data.transforms import PreprocessConfig
    from unicon_core.model import UniconModel

FORMAT = "unicon-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FOUNDATION_FILE = "foundation.safetensors"
SKILLS_FILE = "skills.safetensors"
ROUTER_FILE = "router.safetensors"
_SEP = "."


class BundleError(ValueError):
    """A bundle is missing, incomplete, corrupt or does not fit the code reading it."""


@dataclass
class SiteRecord:
    """One site a task was trained on, as the bundle records it (no data, only provenance)."""

    site: str
    synthetic: bool
    source: str = ""
    description: str = ""
    num_examples: int | None = None

    def __post_init__(self) -> None:
        if not self.site:
            raise ValueError("site record: 'site' must be non-empty")
        if not isinstance(self.synthetic, bool):
            raise ValueError(f"site record {self.site!r}: synthetic must be true or false")


@dataclass
class TaskEntry:
    """A task in a bundle: its spec, where it was trained, and optional statistics.

    ``feature_mean``/``feature_std`` (tabular tasks, pooled) standardise CSV rows at prediction
    time when the rows do not come with their site's train split. ``ood`` is the skill's
    out-of-distribution threshold, chosen on validation data (``None``: not calibrated).
    """

    spec: TaskSpec
    trained_on: list[SiteRecord]
    feature_mean: np.ndarray | None = None
    feature_std: np.ndarray | None = None
    ood: OODCalibration | None = None

    def __post_init__(self) -> None:
        if not self.trained_on:
            raise ValueError(f"task {self.spec.name!r}: trained_on must name at least one site")
        if (self.feature_mean is None) != (self.feature_std is None):
            raise ValueError(f"task {self.spec.name!r}: give both feature_mean and feature_std")
        if self.feature_mean is not None and self.feature_std is not None:
            n = len(self.spec.feature_names)
            self.feature_mean = np.asarray(self.feature_mean, dtype=np.float64)
            self.feature_std = np.asarray(self.feature_std, dtype=np.float64)
            if self.feature_mean.shape != (n,) or self.feature_std.shape != (n,):
                raise ValueError(
                    f"task {self.spec.name!r}: feature statistics need {n} values each, got "
                    f"{self.feature_mean.shape} and {self.feature_std.shape}"
                )
            if not np.all(self.feature_std > 0):
                raise ValueError(f"task {self.spec.name!r}: feature_std must be > 0")

    @property
    def synthetic(self) -> bool:
        """True if any site this task learned from holds synthetic data."""
        return any(s.synthetic for s in self.trained_on)

    @property
    def provenance(self) -> str:
        """``synthetic``, ``real`` or ``mixed`` (real and synthetic sites)."""
        flags = {s.synthetic for s in self.trained_on}
        return "mixed" if len(flags) == 2 else ("synthetic" if True in flags else "real")


@dataclass
class Bundle:
    """A loaded (or about to be saved) bundle: the model plus what describes it."""

    model: UniconModel
    tasks: dict[str, TaskEntry]
    preprocess: PreprocessConfig
    router: dict[str, Prototype] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def __post_init__(self) -> None:
        if set(self.tasks) != set(self.model.tasks):
            raise ValueError(
                f"bundle: task entries {sorted(self.tasks)} != model tasks "
                f"{sorted(self.model.tasks)}"
            )
        for name, entry in self.tasks.items():
            if entry.spec.to_dict() != self.model.spec(name).to_dict():
                raise ValueError(f"bundle: task {name!r} spec differs from the model's")
        unknown = sorted(set(self.router) - set(self.tasks))
        if unknown:
            raise ValueError(f"bundle: router prototypes for unknown tasks {unknown}")

    def entry(self, task: str) -> TaskEntry:
        """The entry of a known task (error listing the known ones otherwise)."""
        if task not in self.tasks:
            raise KeyError(f"the bundle has no task {task!r}; it has {sorted(self.tasks)}")
        return self.tasks[task]


# ---------------------------------------------------------------------------------- saving
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _router_arrays(bundle: Bundle) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for task, proto in bundle.router.items():
        arrays[f"prototype{_SEP}{task}{_SEP}mean"] = proto.mean
        arrays[f"prototype{_SEP}{task}{_SEP}mean_sq"] = proto.mean_sq
    for task, entry in bundle.tasks.items():
        if entry.feature_mean is not None and entry.feature_std is not None:
            arrays[f"features{_SEP}{task}{_SEP}mean"] = entry.feature_mean
            arrays[f"features{_SEP}{task}{_SEP}std"] = entry.feature_std
    return arrays


def save_bundle(bundle: Bundle, bundle_dir: Path | str, *, embed_foundation: bool = True) -> Path:
    """Write ``bundle`` into ``bundle_dir`` (created; must be empty or absent); returns it.

    ``embed_foundation=False`` stores only the location and hash of the model's backbone
    checkpoint (``model.cfg.checkpoint``), for large foundations kept elsewhere.
    """
    from safetensors.numpy import save_file

    from unicon_core.model.foundation import save_foundation

    out = Path(bundle_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(f"{out} exists and is not an empty folder; choose a new bundle path")
    model = bundle.model
    digest = model.foundation_hash
    location = model.cfg.checkpoint
    if not embed_foundation and not location:
        raise BundleError("embed_foundation=False needs a model built from a backbone checkpoint")
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    if embed_foundation:
        save_foundation(model, out / FOUNDATION_FILE)
        files[FOUNDATION_FILE] = _sha256(out / FOUNDATION_FILE)
    skills = {
        f"{task}{_SEP}{key}": tensor.cpu().numpy()
        for task in model.tasks
        for key, tensor in model.skill_state_dict(task).items()
    }
    save_file(skills, str(out / SKILLS_FILE))
    files[SKILLS_FILE] = _sha256(out / SKILLS_FILE)
    router = _router_arrays(bundle)
    if router:
        save_file(router, str(out / ROUTER_FILE))
        files[ROUTER_FILE] = _sha256(out / ROUTER_FILE)
    backbone = asdict(replace(model.cfg, checkpoint=None))
    backbone.pop("checkpoint")
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "backbone": {
            "config": backbone,
            "seed": model.seed,
            "hash": digest,
            "file": FOUNDATION_FILE if embed_foundation else None,
            "location": None if embed_foundation else str(Path(str(location)).resolve()),
        },
        "task_order": model.tasks,
        "tasks": {
            name: {
                "spec": entry.spec.to_dict(),
                "synthetic": entry.synthetic,
                "provenance": entry.provenance,
                "trained_on": [asdict(s) for s in entry.trained_on],
                "feature_statistics": entry.feature_mean is not None,
                "ood": entry.ood.to_dict() if entry.ood is not None else None,
            }
            for name, entry in bundle.tasks.items()
        },
        "preprocess": asdict(bundle.preprocess),
        "router": {
            name: {"count": p.count, "length": len(p.mean)} for name, p in bundle.router.items()
        },
        "source": bundle.source,
        "files": files,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    bundle.path = out
    return out


# ---------------------------------------------------------------------------------- loading
def read_manifest(bundle_dir: Path | str) -> dict[str, Any]:
    """The manifest of a bundle, checked for format and version."""
    root = Path(bundle_dir)
    path = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"bundle {root} is not a folder")
    if not path.is_file():
        raise BundleError(f"bundle {root} has no {MANIFEST}")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path} is not a {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{path}: format_version {manifest.get('format_version')!r} is not {FORMAT_VERSION}"
        )
    for key in ("backbone", "task_order", "tasks", "preprocess", "files"):
        if key not in manifest:
            raise BundleError(f"{path}: missing key {key!r}")
    return manifest


def _inside(root: Path, name: object, what: str) -> Path:
    """``root / name`` for a relative ``name`` that stays inside the bundle folder once every
    symlink and ``..`` is resolved; anything else is a :class:`BundleError` naming it."""
    from unicon_core.data.readers import resolves_inside

    if not isinstance(name, str) or not name:
        raise BundleError(f"bundle {root}: {what} {name!r} is not a file name")
    path = root / name
    if Path(name).is_absolute() or ".." in Path(name).parts or not resolves_inside(root, path):
        raise BundleError(
            f"bundle {root}: {what} {name!r} resolves to {path.resolve()}, outside the bundle "
            "folder; a bundle may only name its own files"
        )
    return path


def _verified(root: Path, name: str, files: dict[str, str]) -> Path:
    path = _inside(root, name, "file")
    if not path.is_file():
        raise BundleError(f"bundle {root} is missing {name}")
    if name not in files:
        raise BundleError(f"bundle {root}: {name} is not listed in the manifest")
    digest = _sha256(path)
    if digest != files[name]:
        raise BundleError(
            f"bundle {root}: {name} is corrupt or was changed (sha256 {digest[:12]} != "
            f"recorded {files[name][:12]})"
        )
    return path


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises several types for a corrupt file
        raise BundleError(f"{path} is not a readable safetensors file: {exc}") from exc


def load_bundle(bundle_dir: Path | str) -> Bundle:
    """Rebuild the model and its description from a bundle folder, verifying every file."""
    import torch

    from unicon_core.data.transforms import PreprocessConfig
    from unicon_core.model import UniconModel
    from unicon_core.model.unicon import SkillStateError

    root = Path(bundle_dir)
    manifest = read_manifest(root)
    files = dict(manifest["files"])
    bb = manifest["backbone"]
    if bb.get("file"):
        _inside(root, bb["file"], "backbone.file")
        foundation = _verified(root, bb["file"], files)
    elif bb.get("location"):
        foundation = Path(str(bb["location"]))
        if not foundation.is_absolute():
            raise BundleError(
                f"bundle {root}: backbone location {bb['location']!r} is not an absolute path; "
                "a foundation kept outside the bundle must be named by its absolute path "
                "(export the bundle again)"
            )
        if not foundation.is_file():
            raise BundleError(
                f"bundle {root} references backbone checkpoint {foundation}, which does not "
                f"exist here (expected hash {bb['hash'][:12]}...)"
            )
    else:
        raise BundleError(f"bundle {root}: backbone has neither 'file' nor 'location'")
    cfg = BackboneConfig(**bb["config"], checkpoint=str(foundation))
    try:
        model = UniconModel(cfg, seed=int(bb["seed"]))
    except ValueError as exc:
        raise BundleError(f"bundle {root}: backbone does not load: {exc}") from exc
    if model.foundation_hash != bb["hash"]:
        raise BundleError(
            f"bundle {root}: backbone {foundation} has hash {model.foundation_hash[:12]}..., "
            f"the skills were trained on {bb['hash'][:12]}..."
        )
    order = list(manifest["task_order"])
    if sorted(order) != sorted(manifest["tasks"]):
        raise BundleError(f"bundle {root}: task_order {order} != tasks {sorted(manifest['tasks'])}")
    skills = _read_arrays(_verified(root, SKILLS_FILE, files))
    router_arrays = (
        _read_arrays(_verified(root, ROUTER_FILE, files)) if ROUTER_FILE in files else {}
    )
    extra = sorted({k.split(_SEP, 1)[0] for k in skills} - set(order))
    if extra:
        raise BundleError(f"bundle {root}: {SKILLS_FILE} holds skills of unlisted tasks {extra}")
    tasks: dict[str, TaskEntry] = {}
    for name in order:
        info = manifest["tasks"][name]
        spec = TaskSpec.from_dict(info["spec"])
        model.add_task(spec)
        prefix = f"{name}{_SEP}"
        state = {
            k[len(prefix) :]: torch.from_numpy(v) for k, v in skills.items() if k.startswith(prefix)
        }
        try:
            model.load_skill_state_dict(name, state)
        except SkillStateError as exc:
            raise BundleError(f"bundle {root}: {exc}") from exc
        mean = router_arrays.get(f"features{_SEP}{name}{_SEP}mean")
        std = router_arrays.get(f"features{_SEP}{name}{_SEP}std")
        try:
            ood = OODCalibration.from_dict(info["ood"]) if info.get("ood") else None
        except (TypeError, ValueError) as exc:
            raise BundleError(f"bundle {root}: task {name!r} ood calibration: {exc}") from None
        tasks[name] = TaskEntry(
            spec=spec,
            trained_on=[SiteRecord(**s) for s in info["trained_on"]],
            feature_mean=mean,
            feature_std=std,
            ood=ood,
        )
    router: dict[str, Prototype] = {}
    for name, info in (manifest.get("router") or {}).items():
        keys = [f"prototype{_SEP}{name}{_SEP}{part}" for part in ("mean", "mean_sq")]
        missing = [k for k in keys if k not in router_arrays]
        if missing:
            raise BundleError(f"bundle {root}: {ROUTER_FILE} lacks {missing}")
        router[name] = Prototype(*(router_arrays[k] for k in keys), int(info["count"]))
    model.eval()
    return Bundle(
        model=model,
        tasks=tasks,
        preprocess=PreprocessConfig(**_preprocess_fields(manifest["preprocess"])),
        router=router,
        source=dict(manifest.get("source") or {}),
        path=root,
    )


def _preprocess_fields(data: dict[str, Any]) -> dict[str, Any]:
    """The manifest's global section (older bundles lack the newer fields: defaults)."""
    out = dict(data)
    if "ct_window" in out:
        out["ct_window"] = tuple(out["ct_window"])
    return out
