"""UniconModel: one frozen backbone that grows through per-task skills.

A *skill* is what one task trains and what travels in federation: the task's LoRA adapter (a peft
named adapter on the layers the backbone family declares, or the task's own ``lora.targets``),
its head, and the stem it introduced (stems from the foundation checkpoint are shared and frozen;
any other stem is private to the task that introduced it, because a stem another task keeps
training would drift). Everything else is frozen, batch-norm running statistics included, so
adding and training task B cannot change the backbone or task A's outputs.

The backbone is a plug-in (:mod:`unicon_core.model.backbones`): a token transformer (stems make
tokens, heads read tokens) or an image network (a channel stem adapts the input, heads read its
multi-scale feature maps).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from unicon_core.config import BackboneConfig, TaskSpec
from unicon_core.keys import SkillPart, key_set_problems
from unicon_core.model.backbones import FoundationBackbone, create_backbone, resolve_lora_targets
from unicon_core.model.foundation import load_foundation_into, tensor_hash
from unicon_core.model.heads import build_feature_head, build_head
from unicon_core.model.stems import ChannelStem, StemSpec, build_stem, low_rank_stem_limit
from unicon_core.seeds import derived_seed


class SkillStateError(ValueError):
    """A skill state dict does not match the task's skill (keys, shapes or dtypes)."""


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator inside the block only (no global side effect)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class UniconModel(nn.Module):
    """Frozen backbone + modality stems + task heads + one LoRA adapter per task."""

    def __init__(self, cfg: BackboneConfig | None = None, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg or BackboneConfig()
        self.seed = seed
        with _seeded(seed):
            self.backbone: nn.Module = create_backbone(self.cfg.for_modality(""))
        #: slot -> a modality's own backbone (``backbone.modalities``); slot "" is ``backbone``
        self.modality_backbones = nn.ModuleDict()
        self.slot_of_modality: dict[str, str] = {}
        #: slot -> the settings its backbone was built from
        self.slot_cfg: dict[str, BackboneConfig] = {"": self.cfg.for_modality("")}
        for modality, entry in sorted(self.cfg.modalities.items()):
            same = [m for m, s in self.slot_of_modality.items() if self.cfg.modalities[m] == entry]
            if same:
                self.slot_of_modality[modality] = self.slot_of_modality[same[0]]
                continue
            slot = modality.replace("+", "_")
            self.slot_cfg[slot] = self.cfg.for_modality(modality)
            with _seeded(derived_seed(seed, "backbone:" + slot)):
                self.modality_backbones[slot] = create_backbone(self.slot_cfg[slot])
            self.slot_of_modality[modality] = slot
        self.modality_backbones.requires_grad_(False)
        #: task -> slot of the backbone it uses
        self.task_slot: dict[str, str] = {}
        self.stems = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        self.specs: dict[str, TaskSpec] = {}
        self.stem_specs: dict[str, StemSpec] = {}
        #: stem key -> the task that trains it, or None for a frozen foundation stem
        self.stem_owner: dict[str, str | None] = {}
        #: task -> key of the stem it uses
        self.task_stem: dict[str, str] = {}
        self._active: dict[str, str] = {}
        self.backbone.requires_grad_(False)
        self.train(self.training)  # backbone batch norms start (and stay) in eval mode
        if self.cfg.checkpoint:
            load_foundation_into(self, self.cfg.checkpoint)

    # ------------------------------------------------------------------ structure
    @property
    def core_backbone(self) -> FoundationBackbone:
        """The main backbone module itself (inside the peft wrapper once adapters exist)."""
        return self.core("")

    @property
    def reads_tokens(self) -> bool:
        """True for a token main backbone (transformer), False for an image backbone."""
        return self.core_backbone.input_kind == "tokens"

    @property
    def slots(self) -> list[str]:
        """Backbone slots: "" (the main backbone) and one per modality-specific network."""
        return ["", *self.modality_backbones]

    def _wrapped(self, slot: str) -> nn.Module:
        """A slot's backbone as it runs (the peft wrapper once it has adapters)."""
        return self.backbone if slot == "" else self.modality_backbones[slot]

    def core(self, slot: str = "") -> FoundationBackbone:
        """A slot's backbone module itself."""
        module = self._wrapped(slot)
        if isinstance(module, PeftModel):
            return module.base_model.model  # type: ignore[return-value]
        return module  # type: ignore[return-value]

    def slot_for(self, modality: str) -> str:
        """The slot whose backbone serves ``modality``."""
        return self.slot_of_modality.get(modality, "")

    def backbone_for(self, task: str) -> FoundationBackbone:
        """The backbone module ``task`` runs on."""
        return self.core(self.task_slot[self.spec(task).name])

    @property
    def tasks(self) -> list[str]:
        """Task names in the order they were added."""
        return list(self.specs)

    def spec(self, task: str) -> TaskSpec:
        """The spec of a known task (clear error otherwise)."""
        if task not in self.specs:
            raise KeyError(f"unknown task {task!r}; known tasks: {self.tasks}")
        return self.specs[task]

    def add_stem(self, stem_spec: StemSpec, owner: str | None) -> None:
        """Register a stem (``owner`` None: a frozen foundation stem)."""
        if stem_spec.key in self.stems:
            raise ValueError(f"stem {stem_spec.key!r} exists already")
        slot = self.slot_for(stem_spec.modality)
        core, sizes = self.core(slot), self.slot_cfg[slot]
        with _seeded(derived_seed(self.seed, "stem:" + stem_spec.key)):
            if core.input_kind == "tokens":
                stem = build_stem(stem_spec, sizes.hidden_size, sizes.num_heads)
            else:
                adapt = None if core.accepts_channels(stem_spec.channels) else core.in_channels
                stem = ChannelStem(stem_spec, adapt)
        stem.requires_grad_(False)
        self.stems[stem_spec.key] = stem
        self.stem_specs[stem_spec.key] = stem_spec
        self.stem_owner[stem_spec.key] = owner

    def add_task(self, spec: TaskSpec) -> None:
        """Add a task's skill: LoRA adapter named after the task, head, and stem if new.

        Initialisation depends only on the model seed and the task name, so every site and the
        server build identical initial skills.
        """
        if spec.name in self.specs:
            raise ValueError(f"task {spec.name!r} exists already")
        slot = self.slot_for(spec.modality.value)
        core = self.core(slot)
        reason = core.supports(spec)
        if reason is None and spec.decoder == "unetr" and core.input_kind != "tokens":
            reason = "the unetr decoder reads tokens; use decoder fpn (or auto)"
        if reason is None and spec.stem_rank is not None:
            reason = self._stem_rank_problem(spec, slot)
        if reason is not None:
            raise ValueError(f"task {spec.name!r} cannot use backbone {core.family!r}: {reason}")
        stem_spec = StemSpec.from_task(spec)
        if self.stem_owner.get(stem_spec.key, "") is None:
            # A frozen foundation stem of this modality: share it.
            if self.stem_specs[stem_spec.key] != stem_spec:
                raise ValueError(
                    f"task {spec.name!r}: foundation stem {stem_spec.key!r} has another definition"
                )
        else:
            # A stem some other task trains would drift under that task's training and degrade
            # this one, so a stem outside the foundation is private to the task introducing it.
            if stem_spec.key in self.stems:
                stem_spec = replace(stem_spec, key=f"{stem_spec.key}__{spec.name}")
            self.add_stem(stem_spec, owner=spec.name)
        self.task_stem[spec.name] = stem_spec.key
        self.task_slot[spec.name] = slot
        with _seeded(derived_seed(self.seed, "task:" + spec.name)):
            if core.input_kind == "tokens":
                head = build_head(spec, core.feature_channels()[0])
            else:
                head = build_feature_head(spec, core.feature_channels())
            self._add_adapter(spec, slot)
        head.requires_grad_(False)
        self.heads[spec.name] = head
        self.specs[spec.name] = spec
        self.freeze_all()

    def _stem_rank_problem(self, spec: TaskSpec, slot: str) -> str | None:
        """Why ``spec.stem_rank`` cannot apply on ``slot``'s backbone (None: it can)."""
        if self.core(slot).input_kind != "tokens":
            return (
                f"stem_rank={spec.stem_rank} sets a low-rank patch stem, but this image "
                "backbone reads the image through a channel stem, not patch tokens; remove "
                "stem_rank"
            )
        hidden = self.slot_cfg[slot].hidden_size
        limit = low_rank_stem_limit(spec.channels, spec.patch_size, spec.spatial_dims, hidden)
        if spec.stem_rank is not None and spec.stem_rank > limit:
            return (
                f"stem_rank={spec.stem_rank} makes the patch projection no smaller than the full "
                f"one at hidden_size {hidden}; use stem_rank <= {limit}"
            )
        return None

    def _add_adapter(self, spec: TaskSpec, slot: str) -> None:
        lora = LoraConfig(
            r=spec.lora.rank,
            lora_alpha=spec.lora.alpha,
            lora_dropout=spec.lora.dropout,
            target_modules=resolve_lora_targets(self.core(slot), spec.lora.targets),
            bias="none",
        )
        module = self._wrapped(slot)
        if isinstance(module, PeftModel):
            module.add_adapter(spec.name, lora)
        else:
            module = get_peft_model(module, lora, adapter_name=spec.name)
            if slot == "":
                self.backbone = module
            else:
                self.modality_backbones[slot] = module
        self._active.pop(slot, None)

    # ------------------------------------------------------------------ forward
    def _activate(self, task: str) -> None:
        slot = self.task_slot[task]
        if self._active.get(slot) != task:
            module = self._wrapped(slot)
            assert isinstance(module, PeftModel)
            trainable = {id(p) for p in self.parameters() if p.requires_grad}
            module.set_adapter(task)
            # peft's set_adapter toggles requires_grad; keep the caller's choice instead.
            for p in self.parameters():
                p.requires_grad_(id(p) in trainable)
            self._active[slot] = task

    def encode(self, x: torch.Tensor, task: str) -> torch.Tensor | list[torch.Tensor]:
        """The backbone's output with the task's adapter: tokens ``(B, N, D)`` (transformer) or
        feature maps from fine to coarse (image backbones)."""
        self.spec(task)
        tokens = self.stems[self.task_stem[task]](x)
        self._activate(task)
        return self._wrapped(self.task_slot[task])(tokens)

    def forward(self, x: torch.Tensor, task: str) -> torch.Tensor:  # type: ignore[override]
        """Run ``task`` on ``x``: class logits, segmentation logits or risk scores."""
        tokens = self.encode(x, task)
        return self.heads[task](tokens, x)

    # ------------------------------------------------------------------ skills
    def skill_parameters(self, task: str) -> dict[str, nn.Parameter]:
        """Exactly the parameters ``task`` trains, under portable keys.

        Keys: ``adapter.<module path>.lora_A.weight`` (adapter name removed, so a skill loads
        into a model where the task has the same name), ``head.<name>``, ``stem.<name>``.
        """
        stem_key = self.task_stem[self.spec(task).name]
        out: dict[str, nn.Parameter] = {}
        marks = (f".lora_A.{task}.", f".lora_B.{task}.")
        for name, param in self.backbone_for(task).named_parameters():
            for mark in marks:
                if mark in name:
                    key = name.replace(mark, mark.replace(f"{task}.", ""))
                    out[f"{SkillPart.ADAPTER.value}.{key}"] = param
        for name, param in self.heads[task].named_parameters():
            out[f"{SkillPart.HEAD.value}.{name}"] = param
        if self.stem_owner.get(stem_key) == task:
            for name, param in self.stems[stem_key].named_parameters():
                out[f"{SkillPart.STEM.value}.{name}"] = param
        return out

    def skill_keys(self, task: str) -> set[str]:
        """Keys of ``skill_state_dict(task)`` (for egress checks)."""
        return set(self.skill_parameters(task))

    def skill_state_dict(self, task: str) -> dict[str, torch.Tensor]:
        """Copies of the task's skill tensors: nothing of the backbone or other tasks."""
        return {k: p.detach().cpu().clone() for k, p in self.skill_parameters(task).items()}

    def load_skill_state_dict(
        self, task: str, state: Mapping[str, torch.Tensor | np.ndarray]
    ) -> None:
        """Load a skill, checking keys, shapes and dtypes strictly; nothing loads on error."""
        expected = self.skill_parameters(task)
        problems = key_set_problems(expected, state)
        tensors: dict[str, torch.Tensor] = {}
        for key in sorted(set(expected) & set(state)):
            value = state[key]
            tensor = torch.as_tensor(value) if isinstance(value, np.ndarray) else value
            if not isinstance(tensor, torch.Tensor):
                problems.append(f"{key}: expected a tensor, got {type(value).__name__}")
                continue
            if tuple(tensor.shape) != tuple(expected[key].shape):
                problems.append(
                    f"{key}: shape {tuple(tensor.shape)} != expected {tuple(expected[key].shape)}"
                )
            elif not tensor.is_floating_point():
                problems.append(f"{key}: dtype {tensor.dtype} is not floating point")
            else:
                tensors[key] = tensor
        if problems:
            raise SkillStateError(
                f"skill state for task {task!r} does not fit: " + "; ".join(problems)
            )
        with torch.no_grad():
            for key, tensor in tensors.items():
                expected[key].copy_(tensor.to(expected[key].dtype))

    # ------------------------------------------------------------------ training modes
    def train(self, mode: bool = True) -> UniconModel:
        """Set train/eval mode; the backbone's batch norms always stay in eval mode.

        Running statistics are state: updated while a skill trains, they would change the
        foundation (and task A's outputs) without being part of any skill.
        """
        super().train(mode)
        for slot in self.slots:
            for module in self.core(slot).modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def freeze_all(self) -> None:
        """Make every parameter non-trainable."""
        for p in self.parameters():
            p.requires_grad_(False)

    def train_skill(self, task: str) -> list[nn.Parameter]:
        """Make exactly ``task``'s skill trainable; returns those parameters."""
        return self.train_only(task, list(self.skill_parameters(task).values()))

    def train_only(self, task: str, params: list[nn.Parameter]) -> list[nn.Parameter]:
        """Route through ``task``'s adapter and make exactly ``params`` trainable (e.g. a
        baseline that also trains backbone weights); returns ``params``."""
        self.freeze_all()
        self._activate(task)
        for p in params:
            p.requires_grad_(True)
        return params

    # ------------------------------------------------------------------ foundation
    def backbone_state_dict(self, slot: str | None = None) -> dict[str, torch.Tensor]:
        """The frozen backbones' weights and buffers (batch-norm statistics) under their plain
        (un-wrapped) names; a modality's own backbone under ``<slot>@<name>``. ``slot`` limits
        it to one backbone."""
        out: dict[str, torch.Tensor] = {}
        for s in self.slots if slot is None else [slot]:
            core = self.core(s)
            prefix = f"{s}@" if s else ""
            for name, t in [*core.named_parameters(), *core.named_buffers()]:
                if ".lora_" not in name:
                    out[prefix + name.replace(".base_layer", "")] = t.detach()
        return out

    def load_backbone_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Copy backbone weights and buffers (plain names, as :meth:`backbone_state_dict`) in;
        keys must match exactly (nothing loads on error)."""
        own = self.backbone_state_dict()
        problems = key_set_problems(own, state)
        if problems:
            raise ValueError("backbone state does not fit: " + "; ".join(problems))
        with torch.no_grad():
            for name, tensor in own.items():
                tensor.copy_(state[name])

    def backbone_info(self) -> dict[str, object]:
        """What results.json records of the backbone: family, size, provenance, hash."""
        def describe(slot: str) -> dict[str, object]:
            core = self.core(slot)
            return {
                "name": core.family,
                "params": sum(p.numel() for n, p in core.named_parameters() if ".lora_" not in n),
                "pretrained": bool(core.pretrained or self.cfg.checkpoint),
                "source": self.cfg.checkpoint or core.source,
            }

        info = {**describe(""), "hash": self.foundation_hash}
        if self.slot_of_modality:
            info["modalities"] = {m: describe(s) for m, s in self.slot_of_modality.items()}
        return info

    def foundation_state_dict(self) -> dict[str, torch.Tensor]:
        """Backbone plus foundation stems: what the foundation hash identifies."""
        state = {f"backbone.{k}": v for k, v in self.backbone_state_dict().items()}
        for key, owner in self.stem_owner.items():
            if owner is None:
                for name, p in self.stems[key].named_parameters():
                    state[f"stem.{key}.{name}"] = p.detach()
        return state

    @property
    def foundation_hash(self) -> str:
        """sha256 over the foundation's names, dtypes, shapes and bytes (computed fresh)."""
        return tensor_hash(self.foundation_state_dict())

    def full_model_bytes(self, task: str | None = None) -> int:
        """Bytes of a full model: for ``task``, backbone + its stem + head + adapter."""
        if task is None:
            return sum(p.numel() * p.element_size() for p in self.parameters())
        self.spec(task)
        params = list(self.backbone_state_dict(self.task_slot[task]).values())
        params += list(self.stems[self.task_stem[task]].parameters())
        params += [p for k, p in self.skill_parameters(task).items() if not k.startswith("stem.")]
        return sum(p.numel() * p.element_size() for p in params)
