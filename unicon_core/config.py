"""Validated configuration dataclasses shared by every part of unicon.

They double as hydra structured configs (see :mod:`unicon_core.hydra_config`), so a YAML file,
a command-line override and Python code all go through the same validation in ``__post_init__``.
An invalid value raises a ``ValueError`` naming the field and what is wrong with it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class TaskKind(str, Enum):
    """What a task predicts."""

    CLASSIFICATION = "classification"
    SEGMENTATION = "segmentation"
    SURVIVAL = "survival"


class Modality(str, Enum):
    """Input modalities a stem can turn into tokens.

    ``CT_PET`` is a two-channel 3D input (CT in channel 0, PET in channel 1).
    """

    MRI = "mri"
    CT = "ct"
    CT_PET = "ct+pet"
    CLINICAL = "clinical"


#: Channel count each imaging modality implies (``None``: any count is allowed).
MODALITY_CHANNELS: dict[Modality, int | None] = {
    Modality.MRI: None,
    Modality.CT: 1,
    Modality.CT_PET: 2,
    Modality.CLINICAL: None,
}

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
#: Segmentation decoders a task may ask for.
DECODERS = ("auto", "unetr", "fpn")
#: LoRA target meaning "the layers the backbone family declares" (see ``model.backbones``).
DEFAULT_TARGETS = "default"
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _fail(owner: str, fld: str, why: str) -> ValueError:
    return ValueError(f"{owner}.{fld}: {why}")


def check_device(owner: str, value: object) -> None:
    """``<owner>.device`` must be auto, cpu, cuda or cuda:<index> (whether a GPU is visible is
    checked where it is used)."""
    if not isinstance(value, str) or not _DEVICE_RE.match(value):
        raise _fail(owner, "device", f"{value!r} is not auto, cpu, cuda or cuda:<index>")


@dataclass
class LoRASpec:
    """LoRA settings of one task's adapter (peft ``LoraConfig`` is built from these)."""

    rank: int = field(default=4, metadata={"help": "LoRA rank r (> 0)."})
    alpha: float = field(default=8.0, metadata={"help": "LoRA scaling alpha (> 0)."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA path, in [0, 1)."})
    targets: list[str] = field(
        default_factory=lambda: [DEFAULT_TARGETS],
        metadata={
            "help": "Backbone layers to adapt: 'default' (what the backbone family declares), "
            "module-name suffixes (e.g. qkv, conv1) or 're:<regex>' on full module names."
        },
    )

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank <= 0:
            raise _fail("lora", "rank", f"must be a positive integer, got {self.rank!r}")
        if self.alpha <= 0:
            raise _fail("lora", "alpha", f"must be > 0, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise _fail("lora", "dropout", f"must be in [0, 1), got {self.dropout!r}")
        self.targets = list(self.targets)
        bad = [t for t in self.targets if not isinstance(t, str) or not t.strip()]
        if not self.targets or bad:
            raise _fail(
                "lora", "targets", f"must be a non-empty list of layer names, got {self.targets!r}"
            )
        for target in self.targets:
            if target.startswith("re:"):
                try:
                    re.compile(target[3:])
                except re.error as exc:
                    raise _fail("lora", "targets", f"{target!r} is no valid regex: {exc}") from None
        # Whether a name matches a layer is checked against the backbone when a task is added.


@dataclass
class TaskSpec:
    """Everything the model needs to know to add a task's skill.

    ``input_size`` is the spatial size an image is resized/cropped to (2 or 3 numbers), or for a
    tabular task a single number, the count of clinical features. ``num_classes`` counts classes
    for classification and labels including background for segmentation; survival ignores it.
    """

    name: str = field(default="task", metadata={"help": "Unique lower-case task name."})
    kind: TaskKind = field(default=TaskKind.CLASSIFICATION)
    modality: Modality = field(default=Modality.MRI)
    channels: int = field(default=1, metadata={"help": "Input channels (CT 1, CT+PET 2)."})
    spatial_dims: int = field(default=2, metadata={"help": "2 or 3 for images, 0 for tabular."})
    input_size: list[int] = field(default_factory=lambda: [32, 32])
    patch_size: int = field(default=8, metadata={"help": "Patch edge of the image stem."})
    num_classes: int = field(default=2)
    feature_names: list[str] = field(
        default_factory=list, metadata={"help": "Tabular feature columns (tabular tasks only)."}
    )
    own_stem: bool = field(
        default=False, metadata={"help": "Train a stem of its own instead of sharing one."}
    )
    lora: LoRASpec = field(default_factory=LoRASpec)
    decoder: str = field(
        default="auto",
        metadata={"help": "Segmentation decoder: unetr (token backbones), fpn (multi-scale, "
                  "small on any backbone) or auto (unetr on tokens, fpn on image backbones)."},
    )
    preprocess: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "The skill's file-to-tensor steps (data.transforms.PreprocessConfig "
                  "fields, e.g. crop_foreground, pad_square); empty: the run's defaults."},
    )
    stem_rank: int | None = field(
        default=None,
        metadata={"help": "Low-rank patch stem: each patch goes through Conv(C->r) then "
                  "Linear(r->hidden) instead of one Conv(C->hidden) (a much smaller skill on "
                  "wide transformers); null: the full patch embedding. Token backbones only."},
    )

    def __post_init__(self) -> None:
        owner = f"task {self.name!r}" if isinstance(self.name, str) else "task"
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise _fail(
                owner, "name", "must match [a-z][a-z0-9_]* (at most 48 characters, no dots)"
            )
        try:
            self.kind = TaskKind(self.kind)
        except ValueError:
            raise _fail(
                owner, "kind", f"{self.kind!r} is not one of {[k.value for k in TaskKind]}"
            ) from None
        try:
            self.modality = Modality(self.modality)
        except ValueError:
            raise _fail(
                owner, "modality", f"{self.modality!r} is not one of {[m.value for m in Modality]}"
            ) from None
        if isinstance(self.lora, dict):
            self.lora = LoRASpec(**self.lora)
        self.input_size = [int(s) for s in self.input_size]
        self.feature_names = [str(f) for f in self.feature_names]
        if self.modality is Modality.CLINICAL:
            self._validate_tabular(owner)
        else:
            self._validate_image(owner)
        if self.decoder not in DECODERS:
            raise _fail(owner, "decoder", f"{self.decoder!r} is not one of {list(DECODERS)}")
        if self.stem_rank is not None:
            self._validate_stem_rank(owner)
        if self.preprocess:
            self._validate_preprocess(owner)
        else:
            self.preprocess = {}  # None (older callers) means none declared too
        if self.kind is TaskKind.CLASSIFICATION and self.num_classes < 2:
            raise _fail(owner, "num_classes", f"classification needs >= 2, got {self.num_classes}")
        if self.kind is TaskKind.SEGMENTATION:
            if self.modality is Modality.CLINICAL:
                raise _fail(owner, "kind", "segmentation needs an image modality, not clinical")
            if self.num_classes < 2:
                raise _fail(
                    owner,
                    "num_classes",
                    f"segmentation counts background: needs >= 2, got {self.num_classes}",
                )

    def _validate_stem_rank(self, owner: str) -> None:
        """A low-rank stem needs an image task and a rank below the patch's input size
        (``channels * patch_size**spatial_dims``); at or above it nothing is factorised away."""
        rank = self.stem_rank
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise _fail(owner, "stem_rank", f"must be an integer >= 1 or null, got {rank!r}")
        if self.modality is Modality.CLINICAL:
            raise _fail(
                owner, "stem_rank", f"{rank} is set but a clinical task has no patch stem"
            )
        limit = self.channels * self.patch_size**self.spatial_dims
        if rank >= limit:
            raise _fail(
                owner,
                "stem_rank",
                f"{rank} must be < channels * patch_size**spatial_dims = {self.channels} * "
                f"{self.patch_size}**{self.spatial_dims} = {limit} (a patch's input size), "
                "otherwise the low-rank stem saves nothing",
            )

    def _validate_preprocess(self, owner: str) -> None:
        """Validate the declared steps and keep them in canonical (JSON-ready) form."""
        from unicon_core.data.preprocess import PreprocessConfig

        try:
            cfg = PreprocessConfig.from_mapping(dict(self.preprocess or {}))
        except (TypeError, ValueError) as exc:
            raise _fail(owner, "preprocess", str(exc)) from None
        if cfg.reshapes and (self.spatial_dims != 2 or self.kind is TaskKind.SEGMENTATION):
            raise _fail(
                owner,
                "preprocess",
                "crop_foreground/pad_square apply to 2D classification images only (a mask "
                "could not be written back onto the file's grid)",
            )
        self.preprocess = cfg.to_dict()

    def _validate_tabular(self, owner: str) -> None:
        if self.spatial_dims != 0:
            raise _fail(owner, "spatial_dims", "a clinical (tabular) task has spatial_dims 0")
        if not self.feature_names:
            raise _fail(owner, "feature_names", "a clinical task needs at least one feature")
        if len(set(self.feature_names)) != len(self.feature_names):
            raise _fail(owner, "feature_names", "contains duplicates")
        self.input_size = [len(self.feature_names)]
        self.channels = 1

    def _validate_image(self, owner: str) -> None:
        if self.spatial_dims not in (2, 3):
            raise _fail(
                owner, "spatial_dims", f"must be 2 or 3 for images, got {self.spatial_dims}"
            )
        if len(self.input_size) != self.spatial_dims:
            raise _fail(
                owner,
                "input_size",
                f"needs {self.spatial_dims} numbers for a {self.spatial_dims}D image, got "
                f"{self.input_size}",
            )
        if self.patch_size < 1 or any(s % self.patch_size for s in self.input_size):
            raise _fail(
                owner,
                "patch_size",
                f"{self.patch_size} must divide every input_size {self.input_size}",
            )
        if self.kind is TaskKind.SEGMENTATION and self.patch_size & (self.patch_size - 1):
            raise _fail(owner, "patch_size", "segmentation decoder needs a power of two")
        expected = MODALITY_CHANNELS[self.modality]
        if self.channels < 1 or (expected is not None and self.channels != expected):
            want = expected if expected is not None else ">= 1"
            raise _fail(
                owner,
                "channels",
                f"{self.modality.value} needs {want} channels, got {self.channels}",
            )
        if self.modality in (Modality.CT, Modality.CT_PET) and self.spatial_dims != 3:
            raise _fail(owner, "spatial_dims", f"{self.modality.value} volumes are 3D")
        if self.feature_names:
            raise _fail(owner, "feature_names", "only clinical (tabular) tasks have features")

    @property
    def stem_key(self) -> str:
        """Key of the stem this task uses; tasks with equal keys share a stem. A low-rank stem
        ends in ``_r<stem_rank>``, so stems of different ranks (or full ones) are never shared."""
        rank = "" if self.stem_rank is None else f"_r{self.stem_rank}"
        if self.own_stem:
            return f"task_{self.name}{rank}"
        if self.modality is Modality.CLINICAL:
            digest = hashlib.sha1("\n".join(self.feature_names).encode()).hexdigest()[:10]
            return f"clinical_f{len(self.feature_names)}_{digest}"
        size = "x".join(str(s) for s in self.input_size)
        modality = self.modality.value.replace("+", "_")
        return (
            f"{modality}_{self.spatial_dims}d_c{self.channels}_{size}_p{self.patch_size}{rank}"
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskSpec:
        """Build from a plain mapping, naming any unknown key."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"task {data.get('name', '?')!r}: unknown keys {unknown}")
        data = dict(data)
        if isinstance(data.get("lora"), dict):
            data["lora"] = LoRASpec(**data["lora"])
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping (enums as strings); ``preprocess`` and ``stem_rank`` only when
        declared, so specs (and site.json files, bundles) of tasks declaring none are unchanged."""
        out = {
            "name": self.name,
            "kind": self.kind.value,
            "modality": self.modality.value,
            "channels": self.channels,
            "spatial_dims": self.spatial_dims,
            "input_size": list(self.input_size),
            "patch_size": self.patch_size,
            "num_classes": self.num_classes,
            "feature_names": list(self.feature_names),
            "own_stem": self.own_stem,
            "decoder": self.decoder,
            "lora": {
                "rank": self.lora.rank,
                "alpha": self.lora.alpha,
                "dropout": self.lora.dropout,
                "targets": list(self.lora.targets),
            },
        }
        if self.preprocess:
            out["preprocess"] = dict(self.preprocess)
        if self.stem_rank is not None:
            out["stem_rank"] = self.stem_rank
        return out


@dataclass
class BackboneConfig:
    """Which backbone family, its size, and where its weights come from.

    ``name`` picks a family from :mod:`unicon_core.model.backbones` (``transformer``,
    ``i3resnet``, ``monai``); the transformer's sizes are top-level fields (as before), every
    other family reads ``options``, validated by that family's own config dataclass.

    ``modalities`` gives a modality a backbone of its own (e.g. the real CT foundation for
    ``ct`` and ``ct+pet``); modalities not listed use this one. Equal entries share one network.
    """

    name: str = field(
        default="transformer", metadata={"help": "Backbone family (model.backbones registry)."}
    )
    options: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Family-specific settings (validated by it)."}
    )
    hidden_size: int = 64
    num_layers: int = 4
    num_heads: int = 4
    mlp_dim: int = 128
    dropout: float = 0.0
    checkpoint: str | None = field(
        default=None, metadata={"help": "Path to a pretrained backbone (.safetensors)."}
    )
    modalities: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "modality -> backbone settings (name, options, sizes) for that one."},
    )

    def __post_init__(self) -> None:
        self.modalities = dict(self.modalities or {})
        for key, value in self.modalities.items():
            if key not in {m.value for m in Modality}:
                raise _fail("backbone", f"modalities.{key}", "is not a modality")
            if not isinstance(value, dict):
                raise _fail("backbone", f"modalities.{key}", "must be a mapping of settings")
            if "modalities" in value or "checkpoint" in value:
                raise _fail("backbone", f"modalities.{key}",
                            "cannot nest modalities or name a foundation checkpoint")
            BackboneConfig(**value)  # validates the entry, naming the field
        for name in ("hidden_size", "num_layers", "num_heads", "mlp_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise _fail("backbone", name, f"must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise _fail(
                "backbone",
                "hidden_size",
                f"{self.hidden_size} is not divisible by num_heads {self.num_heads}",
            )
        if not 0.0 <= self.dropout < 1.0:
            raise _fail("backbone", "dropout", f"must be in [0, 1), got {self.dropout}")
        self.options = dict(self.options or {})
        if not isinstance(self.name, str) or not self.name:
            raise _fail("backbone", "name", f"must name a backbone family, got {self.name!r}")

    def for_modality(self, modality: str) -> BackboneConfig:
        """The backbone settings a task of ``modality`` uses (this config without overrides,
        or the modality's own entry)."""
        entry = self.modalities.get(modality)
        if entry is None:
            return BackboneConfig(**{**self.__dict__, "modalities": {}})
        return BackboneConfig(**entry)


@dataclass
class TrainConfig:
    """Local training settings of one site for one round (or one local run)."""

    epochs: int = 1
    max_steps: int | None = field(default=None, metadata={"help": "Stop after this many steps."})
    batch_size: int = 8
    optimizer: str = "adamw"
    lr: float = 1e-3
    backbone_lr_scale: float = field(
        default=1.0,
        metadata={"help": "lr factor for backbone weights when a research plan trains them "
                          "(full, full_finetune, ...): a pretrained foundation wants a far "
                          "lower lr than a fresh skill; skills never train backbone weights."},
    )
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = field(default="constant", metadata={"help": "constant or cosine."})
    warmup_steps: int = 0
    keep_optimizer_state: bool = field(
        default=False,
        metadata={"help": "Federated: each site keeps its optimiser's moments between rounds "
                          "(in its node state, never sent) instead of restarting them."},
    )
    seed: int = 0
    progress: bool = True
    device: str = field(
        default="auto", metadata={"help": "auto (CUDA when present), cpu, cuda or cuda:<i>."}
    )
    amp: bool = field(default=True, metadata={"help": "bf16 autocast on CUDA (ignored on CPU)."})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes."})

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise _fail("train", "epochs", f"must be >= 1, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise _fail("train", "max_steps", f"must be >= 1 or null, got {self.max_steps}")
        if self.batch_size < 1:
            raise _fail("train", "batch_size", f"must be >= 1, got {self.batch_size}")
        if self.optimizer not in ("adamw", "adam", "sgd"):
            raise _fail("train", "optimizer", f"{self.optimizer!r} is not adamw, adam or sgd")
        if self.schedule not in ("constant", "cosine"):
            raise _fail("train", "schedule", f"{self.schedule!r} is not constant or cosine")
        if self.lr <= 0:
            raise _fail("train", "lr", f"must be > 0, got {self.lr}")
        if not 0 < self.backbone_lr_scale <= 1:
            raise _fail("train", "backbone_lr_scale",
                        f"must be in (0, 1], got {self.backbone_lr_scale}")
        if self.warmup_steps < 0:
            raise _fail("train", "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        check_device("train", self.device)
        if self.num_workers < 0:
            raise _fail("train", "num_workers", f"must be >= 0, got {self.num_workers}")
