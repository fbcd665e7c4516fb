"""Backbone families as plug-ins: one module per family, a validated options class, one
registration line (in the spirit of timm's ``@register_model`` and peft's tuner folders).

A family is built by :func:`create_backbone` from a :class:`~unicon_core.config.BackboneConfig`;
its ``options`` mapping is validated by the family's own dataclass, so a misspelt key or a bad
value fails with the family and the field named. Loading weights is the family's explicit step
(a local file or a package's shipped file): nothing is downloaded at run time.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from unicon_core.config import DEFAULT_TARGETS, BackboneConfig, TaskSpec

ModuleT = TypeVar("ModuleT", bound=nn.Module)

#: Layer types peft's LoRA can adapt.
ADAPTABLE = (nn.Linear, nn.Conv2d, nn.Conv3d)


class FoundationBackbone(nn.Module):
    """What every family provides.

    ``input_kind`` says what the backbone consumes: ``"tokens"`` (a stem turns the input into a
    token sequence, the backbone returns tokens of the same shape) or ``"image"`` (the backbone
    takes the image and returns feature maps ``(B, C_i, *S_i)`` from fine to coarse, the
    multi-scale features every segmentation decoder reads).
    """

    family: ClassVar[str] = ""
    input_kind: ClassVar[str] = "image"
    #: Whether the weights came from a pretrained file (set by the family's loader).
    pretrained: bool = False
    #: Where the weights came from (a file, a package), for results.json.
    source: str | None = None

    def default_lora_targets(self) -> list[str]:
        """Full module names LoRA adapts when a task asks for ``default``."""
        raise NotImplementedError

    def feature_channels(self) -> list[int]:
        """Channels of each feature map (image backbones) or ``[hidden size]`` (tokens)."""
        raise NotImplementedError

    def block_names(self) -> list[str]:
        """Module names of the backbone's blocks, input to output (for layer-wise strategies
        such as gradual unfreezing and discriminative learning rates)."""
        return []

    def supports(self, spec: TaskSpec) -> str | None:
        """Why this backbone cannot serve ``spec`` (None: it can)."""
        return None

    @property
    def in_channels(self) -> int:
        """Channels an image backbone takes (a stem adapts a task's channels to these)."""
        return 1

    def accepts_channels(self, channels: int) -> bool:
        """Whether an input with ``channels`` channels needs no adapting stem."""
        return channels == self.in_channels


@dataclass(frozen=True)
class BackboneFamily:
    """A registered family: its options dataclass and its builder."""

    name: str
    options: type
    build: Callable[[BackboneConfig, Any], FoundationBackbone]


_REGISTRY: dict[str, BackboneFamily] = {}


def register_backbone(
    name: str, options: type
) -> Callable[[Callable[[BackboneConfig, Any], FoundationBackbone]], Any]:
    """Decorator: register ``build(cfg, options) -> FoundationBackbone`` under ``name``."""

    def wrap(build: Callable[[BackboneConfig, Any], FoundationBackbone]) -> Any:
        if name in _REGISTRY and _REGISTRY[name].build is not build:
            raise ValueError(f"backbone family {name!r} is registered twice")
        _REGISTRY[name] = BackboneFamily(name, options, build)
        return build

    return wrap


def backbone_families() -> list[str]:
    """Names of the registered families."""
    return sorted(_REGISTRY)


def family_options(cfg: BackboneConfig) -> Any:
    """``cfg.options`` validated by the family's dataclass (unknown keys named)."""
    family = _family(cfg.name)
    known = {f.name for f in dataclasses.fields(family.options)}
    unknown = sorted(set(cfg.options) - known)
    if unknown:
        raise ValueError(
            f"backbone.options: unknown keys {unknown} for family {cfg.name!r}; "
            f"known: {sorted(known)}"
        )
    return family.options(**cfg.options)


def create_backbone(cfg: BackboneConfig) -> FoundationBackbone:
    """Build (and, where the options say so, load) the backbone ``cfg`` names."""
    family = _family(cfg.name)
    return family.build(cfg, family_options(cfg))


def _family(name: str) -> BackboneFamily:
    # The built-in families are registered: importing this module runs the package's
    # __init__ first, which imports every family module.
    if name not in _REGISTRY:
        raise ValueError(f"backbone.name: unknown family {name!r}; known: {backbone_families()}")
    return _REGISTRY[name]


# ---------------------------------------------------------------------- LoRA targets
def adaptable_layers(module: nn.Module) -> dict[str, nn.Module]:
    """Original layers peft can adapt, by full name (peft's own wrappers skipped)."""
    out: dict[str, nn.Module] = {}
    for name, sub in module.named_modules():
        if not name or ".base_layer" in name or "lora_" in name:
            continue
        base = getattr(sub, "base_layer", sub)
        if isinstance(base, ADAPTABLE):
            out[name] = base
    return out


def resolve_lora_targets(backbone: nn.Module, targets: Iterable[str]) -> list[str]:
    """Full module names for a task's ``lora.targets``.

    Entries: ``default`` (the family's declared layers), a name suffix (``qkv`` matches
    ``blocks.0.attn.qkv``) or ``re:<regex>`` (full match on the module name). Every entry must
    match at least one adaptable layer (Linear, Conv2d, Conv3d); otherwise a clear error.
    """
    core = backbone
    layers = adaptable_layers(core)
    chosen: list[str] = []
    for target in targets:
        if target == DEFAULT_TARGETS:
            assert isinstance(core, FoundationBackbone)
            names = core.default_lora_targets()
        elif target.startswith("re:"):
            pattern = re.compile(target[3:])
            names = [n for n in layers if pattern.fullmatch(n)]
        else:
            names = [n for n in layers if n == target or n.endswith("." + target)]
        if not names:
            family = getattr(core, "family", type(core).__name__)
            raise ValueError(
                f"lora.targets: {target!r} matches no adaptable layer (Linear/Conv2d/Conv3d) of "
                f"backbone {family!r}; its default targets are "
                f"{_preview(core.default_lora_targets())}"  # type: ignore[operator]
            )
        chosen.extend(n for n in names if n not in chosen)
    return chosen


def _preview(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return f"[{shown}{', …' if len(names) > limit else ''}] ({len(names)} layers)"


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (weights only, not buffers)."""
    return sum(p.numel() for p in module.parameters())


def built_to_load(build: Callable[[], ModuleT]) -> ModuleT:
    """``build()`` without its random initialisation, for a module whose every value is then
    loaded by :func:`load_state_strict`: built on the meta device, then given empty storage on
    the ambient default device. Filling a 117M-parameter backbone with random numbers only to
    overwrite them costs about a second, paid by every site message. A module with a buffer
    outside its state dict (which no load fills) is built normally. Under an ambient
    ``torch.device("meta")`` (a shapes-only build, as the site guard does) it stays on meta."""
    ambient = torch.get_default_device()
    with torch.device("meta"):
        module = build()
    if {name for name, _ in module.named_buffers()} - set(module.state_dict()):
        return build()
    return module if ambient.type == "meta" else module.to_empty(device=ambient)


def load_state_strict(
    module: nn.Module, state: dict[str, torch.Tensor], source: str
) -> None:
    """Load ``state`` into ``module`` strictly, shapes checked, naming ``source`` on error.

    Tensors are cast to the module's dtype (shipped weights may be bf16).
    """
    own = module.state_dict()
    problems: list[str] = []
    if missing := sorted(set(own) - set(state)):
        problems.append(f"missing keys {_preview(missing)}")
    if surplus := sorted(set(state) - set(own)):
        problems.append(f"unexpected keys {_preview(surplus)}")
    for key in sorted(set(own) & set(state)):
        if tuple(state[key].shape) != tuple(own[key].shape):
            problems.append(
                f"{key}: shape {tuple(state[key].shape)} != expected {tuple(own[key].shape)}"
            )
    if problems:
        raise ValueError(f"weights {source} do not fit the backbone: " + "; ".join(problems[:8]))
    with torch.no_grad():
        for key, tensor in own.items():
            tensor.copy_(state[key].to(tensor.dtype))


def read_checkpoint(path: Path, prefixes: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """Tensors of a local checkpoint without executing pickled code; the first of ``prefixes``
    found on the keys is stripped (and keys without it dropped).

    ``.safetensors`` is read by safetensors, anything else by ``torch.load(weights_only=True)``;
    a ``{"state_dict": ...}`` wrapper is unwrapped. A missing, corrupt or non-tensor file is a
    clear error naming the file.
    """
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights {path} do not exist (nothing is downloaded)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, or pickled objects beyond tensors
        raise ValueError(f"backbone weights {path} cannot be read safely: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ValueError(f"backbone weights {path} hold no flat state dict of tensors")
    for prefix in prefixes:
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return dict(state)
