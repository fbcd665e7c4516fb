"""Foundation checkpoints: the frozen backbone (+ foundation stems) as safetensors with a hash.

The content hash is stored in the file's metadata and checked on load, so a truncated or edited
file is refused, and the same hash identifies the backbone in every federation message.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from unicon_core.files import atomic_output
from unicon_core.model.stems import StemSpec

if TYPE_CHECKING:
    from unicon_core.model.unicon import UniconModel

META_KEY = "unicon_foundation"
_SIZE_FIELDS = ("hidden_size", "num_layers", "num_heads", "mlp_dim")
#: Backbone options that say where weights come from, not what the network is.
_WEIGHT_OPTIONS = ("weights", "checkpoint", "checkpoint_prefix", "random")


def _identity(model: UniconModel) -> dict[str, Any]:
    """What must agree between a checkpoint and the configured backbone(s)."""
    out = _network(model.cfg.name, model.cfg.__dict__)
    if model.cfg.modalities:
        out["modalities"] = {
            m: _network(entry.get("name", "transformer"), entry)
            for m, entry in sorted(model.cfg.modalities.items())
        }
    return out


def _network(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    """A backbone's architecture (sizes or options), without where its weights come from."""
    out: dict[str, Any] = {"name": name}
    if name == "transformer":
        out.update({f: settings[f] for f in _SIZE_FIELDS if f in settings})
    else:
        options = settings.get("options") or {}
        out["options"] = {k: v for k, v in options.items() if k not in _WEIGHT_OPTIONS}
    return out


def save_foundation(
    model: UniconModel, path: str | Path, extra: dict[str, Any] | None = None
) -> str:
    """Write the model's foundation (backbone + foundation stems) atomically; returns its hash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous().clone() for k, v in model.foundation_state_dict().items()}
    digest = tensor_hash(state)
    meta = {
        "hash": digest,
        "backbone": _identity(model),
        "stems": [
            model.stem_specs[key].to_dict()
            for key, owner in model.stem_owner.items()
            if owner is None
        ],
        "extra": extra or {},
    }
    with atomic_output(path, mode=0o644) as tmp:  # weights shared with sites: world-readable
        save_file(state, str(tmp), metadata={META_KEY: json.dumps(meta)})
    return digest


def read_foundation_meta(path: str | Path) -> dict[str, Any]:
    """The metadata block of a foundation checkpoint (clear error if it is not one)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
    except Exception as exc:  # safetensors raises several types for a corrupt header
        raise ValueError(
            f"backbone checkpoint {path} is not a readable safetensors file: {exc}"
        ) from exc
    if raw is None:
        raise ValueError(f"backbone checkpoint {path} has no {META_KEY!r} metadata")
    return json.loads(raw)


def load_foundation_into(model: UniconModel, path: str | Path) -> str:
    """Load a foundation into a model that has no tasks yet; returns the verified hash."""
    path = Path(path)
    if model.specs:
        raise ValueError("load the foundation before adding tasks")
    meta = read_foundation_meta(path)
    recorded = {"name": "transformer", **meta["backbone"]}  # older files: transformer sizes only
    for field, have in _identity(model).items():
        want = recorded.get(field)
        if want != have:
            raise ValueError(
                f"backbone.{field}={have} but checkpoint {path} was trained with {want}"
            )
    with safe_open(str(path), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    digest = tensor_hash(state)
    if digest != meta["hash"]:
        raise ValueError(
            f"backbone checkpoint {path} is corrupt: content hash {digest[:12]} "
            f"!= recorded {meta['hash'][:12]}"
        )
    for stem in meta["stems"]:
        spec = StemSpec.from_dict(stem)
        if spec.key not in model.stems:
            model.add_stem(spec, owner=None)
    own = model.foundation_state_dict()
    if set(own) != set(state):
        raise ValueError(
            f"backbone checkpoint {path} keys do not match the model: missing "
            f"{sorted(set(own) - set(state))[:5]}, unexpected {sorted(set(state) - set(own))[:5]}"
        )
    with torch.no_grad():
        for key, tensor in own.items():
            tensor.copy_(state[key])
    return digest


def tensor_hash(state: Mapping[str, torch.Tensor]) -> str:
    """Content hash of a tensor dict, independent of insertion order."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(key.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
