"""A hospital's own model: any network of ``monai.networks.nets`` by name + a local checkpoint.

The site names the architecture and its constructor arguments and points at a checkpoint file it
trusts; the file is read without executing pickles and loaded strictly (keys and shapes). Nothing
is downloaded: a missing file is an error. Random weights need ``random: true`` explicitly, so a
forgotten checkpoint never silently becomes a random "foundation".

Multi-scale features come from forward hooks on ``feature_modules`` (defaults are found for
ResNet-, SwinUNETR- and ViT-shaped networks); token outputs ``(B, N, D)`` are reshaped to their
patch grid, so one segmentation decoder serves CNNs and transformers alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unicon_core.config import BackboneConfig, Modality, TaskSpec
from unicon_core.model.backbones.registry import (
    FoundationBackbone,
    adaptable_layers,
    load_state_strict,
    read_checkpoint,
    register_backbone,
)


@dataclass
class MonaiOptions:
    """Options of the ``monai`` family."""

    arch: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    checkpoint_prefix: str | None = None
    random: bool = False
    trunk: str | None = field(
        default=None, metadata={"help": "Submodule to call instead of the whole network."}
    )
    feature_modules: list[str] = field(default_factory=list)
    lora_targets: list[str] = field(default_factory=list)
    probe_size: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        import monai.networks.nets as nets

        if not self.arch or not callable(getattr(nets, self.arch, None)):
            raise ValueError(
                f"backbone.options.arch: {self.arch!r} is not a network of monai.networks.nets"
            )
        if self.checkpoint is None and not self.random:
            raise ValueError(
                "backbone.options.checkpoint: a hospital backbone needs a local checkpoint file "
                "(or random: true for an untrained network)"
            )
        self.kwargs = dict(self.kwargs)
        self.feature_modules = list(self.feature_modules)
        self.lora_targets = list(self.lora_targets)
        self.probe_size = [int(s) for s in self.probe_size]

    @property
    def spatial_dims(self) -> int:
        return int(self.kwargs.get("spatial_dims", 3))

    @property
    def in_channels(self) -> int:
        for key in ("in_channels", "n_input_channels", "in_chans"):
            if key in self.kwargs:
                return int(self.kwargs[key])
        return 1


class MonaiBackbone(FoundationBackbone):
    """A MONAI network whose intermediate outputs are the feature maps."""

    family = "monai"
    input_kind = "image"

    def __init__(self, options: MonaiOptions) -> None:
        super().__init__()
        import monai.networks.nets as nets

        self.options = options
        self.net = getattr(nets, options.arch)(**options.kwargs)
        self.dims = options.spatial_dims
        self.feature_modules = options.feature_modules or _default_feature_modules(self.net)
        self.trunk_name = options.trunk or ("swinViT" if hasattr(self.net, "swinViT") else None)
        if not self.feature_modules and self.trunk_name is None:
            raise ValueError(
                f"backbone.options.feature_modules: cannot find feature layers of "
                f"{options.arch}; name the submodules whose outputs are the features"
            )
        known = dict(self.net.named_modules())
        missing = [m for m in self.feature_modules if m not in known]
        if missing:
            raise ValueError(
                f"backbone.options.feature_modules: {missing} are not modules of {options.arch}"
            )
        self._channels: list[int] | None = None

    @property
    def in_channels(self) -> int:
        return self.options.in_channels

    def supports(self, spec: TaskSpec) -> str | None:
        if spec.modality is Modality.CLINICAL:
            return f"the {self.options.arch} backbone reads images, not clinical features"
        if spec.spatial_dims != self.dims:
            return f"{self.options.arch} is {self.dims}D, the task is {spec.spatial_dims}D"
        return None

    def default_lora_targets(self) -> list[str]:
        """``lora_targets`` if given, else every Linear and 1×1 convolution that computes the
        features (top-level parts after the last feature module, e.g. a classifier, excluded)."""
        layers = adaptable_layers(self)
        if self.options.lora_targets:
            wanted = self.options.lora_targets
            return [n for n in layers if any(n == w or n.endswith("." + w) for w in wanted)]
        used = self._feature_children()
        return [
            n for n, m in layers.items()
            if n.split(".")[1] in used
            and (isinstance(m, nn.Linear) or all(k == 1 for k in m.kernel_size))  # type: ignore[union-attr]
        ]

    def _feature_children(self) -> set[str]:
        """Top-level children of the network up to the one holding the last feature module."""
        children = [n for n, _ in self.net.named_children()]
        if not self.feature_modules:
            return {self.trunk_name} if self.trunk_name else set(children)
        last = self.feature_modules[-1].split(".")[0]
        return set(children[: children.index(last) + 1])

    def block_names(self) -> list[str]:
        """The feature modules' parents' children in order is network-specific; the feature
        modules themselves are the coarse blocks."""
        return [f"net.{m}" for m in self.feature_modules]

    def feature_channels(self) -> list[int]:
        """Channels of each map, from one probe forward (cached)."""
        if self._channels is None:
            size = self.options.probe_size or _probe_size(self.options)
            probe = torch.zeros(1, self.in_channels, *size)
            with torch.no_grad():
                self._channels = [int(f.shape[1]) for f in self.forward(probe)]
        return list(self._channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps ``(B, C_i, *S_i)`` of the hooked modules (or the trunk's own list)."""
        captured: list[torch.Tensor] = []
        modules = dict(self.net.named_modules())
        wanted = len(self.feature_modules)

        def keep(_m: nn.Module, _i: Any, out: Any) -> None:
            captured.append(_first(out))
            if len(captured) == wanted:  # nothing after the last feature is needed
                raise _FeaturesDone

        handles = [modules[name].register_forward_hook(keep) for name in self.feature_modules]
        out: Any = ()
        try:
            runner = modules[self.trunk_name] if self.trunk_name else self.net
            out = runner(x)
        except _FeaturesDone:
            pass
        finally:
            for handle in handles:
                handle.remove()
        if not self.feature_modules:
            captured = [t for t in out if isinstance(t, torch.Tensor)]
        return [_as_map(t, x, self.dims) for t in captured]


class _FeaturesDone(Exception):  # noqa: N818 (a control-flow signal, not an error)
    """Raised by the last feature hook to skip the rest of the network (e.g. its classifier)."""


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _as_map(t: torch.Tensor, x: torch.Tensor, dims: int) -> torch.Tensor:
    """Token sequences ``(B, N, D)`` become maps on their patch grid; maps pass through."""
    if t.ndim == dims + 2:
        return t
    if t.ndim != 3:
        raise ValueError(f"feature of shape {tuple(t.shape)} is neither a map nor tokens")
    n = t.shape[1]
    spatial = x.shape[2:]
    for tokens in (n, n - 1):  # with or without a class token
        side = round((math.prod(spatial) / tokens) ** (1 / dims))
        grid = [s // side for s in spatial] if side else []
        if grid and math.prod(grid) == tokens:
            body = t[:, n - tokens:]
            return body.transpose(1, 2).reshape(t.shape[0], t.shape[2], *grid)
    raise ValueError(f"cannot place {n} tokens on a grid for input {tuple(spatial)}")


def _default_feature_modules(net: nn.Module) -> list[str]:
    names = {n for n, _ in net.named_children()}
    if {"layer1", "layer2", "layer3", "layer4"} <= names:
        return ["layer1", "layer2", "layer3", "layer4"]
    blocks = getattr(net, "blocks", None)
    if isinstance(blocks, nn.ModuleList) and len(blocks) >= 4:
        n = len(blocks)
        return [f"blocks.{round(n * k / 4) - 1}" for k in (1, 2, 3, 4)]
    return []


def _probe_size(options: MonaiOptions) -> list[int]:
    img = options.kwargs.get("img_size")
    if img is not None:
        return [int(img)] * options.spatial_dims if isinstance(img, int) else [int(s) for s in img]
    return [64] * options.spatial_dims


@register_backbone("monai", MonaiOptions)
def build_monai(cfg: BackboneConfig, options: MonaiOptions) -> MonaiBackbone:
    """Build the named network and load the hospital's checkpoint strictly."""
    model = MonaiBackbone(options)
    if options.checkpoint is not None and not cfg.checkpoint:  # a unicon foundation file wins
        path = Path(options.checkpoint).expanduser()
        prefixes = (options.checkpoint_prefix,) if options.checkpoint_prefix else ()
        state = read_checkpoint(path, prefixes)
        load_state_strict(model.net, state, str(path))
        model.pretrained, model.source = True, str(path)
    return model
