"""The demo's backbone config (``configs/backbone/demo.yaml``) routes each demo task to the
network meant for it: MRI (2D) to the CT foundation collapsed to 2D, CT and CT+PET to the 3D CT
foundation, clinical data to the transformer (issue #11, item 4).

The real 117M weights are not loaded here: each I3ResNet entry keeps its family and
``spatial_dims`` but becomes a tiny random member of the same code path, so the routing and one
forward pass per task are checked in about a second.
"""

from __future__ import annotations

import torch

from unicon_core.config import BackboneConfig, TaskKind, TaskSpec
from unicon_core.hydra_config import backbone_config, load_config, task_specs
from unicon_core.model import UniconModel

#: Family and input dimensionality each demo modality must run on.
EXPECTED = {"mri": ("i3resnet", 2), "ct": ("i3resnet", 3), "ct+pet": ("i3resnet", 3),
            "clinical": ("transformer", 0)}


def _tiny(cfg: BackboneConfig) -> BackboneConfig:
    """``cfg`` with every I3ResNet entry shrunk to random [1, 1, 1, 1] blocks of width 8 and
    the transformer to hidden 32, each entry's family and ``spatial_dims`` kept."""
    modalities = {}
    for modality, entry in cfg.modalities.items():
        options = {k: v for k, v in entry.get("options", {}).items() if k != "weights"}
        modalities[modality] = {**entry, "options": {**options, "blocks": [1, 1, 1, 1],
                                                     "width": 8}}
    return BackboneConfig(**{**cfg.__dict__, "hidden_size": 32, "num_layers": 1,
                             "num_heads": 2, "mlp_dim": 32, "modalities": modalities})


def _input(spec: TaskSpec) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    if spec.spatial_dims == 0:
        return torch.rand(2, len(spec.feature_names), generator=generator)
    return torch.rand(2, spec.channels, *spec.input_size, generator=generator)


def test_demo_tasks_run_on_the_backbone_meant_for_their_modality() -> None:
    # Prepare
    composed = load_config(["experiment=demo"])
    cfg = backbone_config(composed)
    specs = task_specs(composed)

    # Execute
    model = UniconModel(_tiny(cfg), seed=0)
    for spec in specs.values():
        model.add_task(spec)

    # Assert: the real weights are named for every image modality, MRI in 2D
    assert {s.modality.value for s in specs.values()} == set(EXPECTED)
    for modality in ("mri", "ct", "ct+pet"):
        assert cfg.for_modality(modality).options["weights"] == "astra", modality
    assert cfg.for_modality("mri").options["spatial_dims"] == 2
    assert cfg.for_modality("clinical").name == "transformer"
    model.eval()
    for name, spec in specs.items():
        family, dims = EXPECTED[spec.modality.value]
        core = model.backbone_for(name)
        assert core.family == family, name
        assert spec.spatial_dims == dims, name
        with torch.no_grad():
            out = model(_input(spec), name)
        assert out.shape[0] == 2 and torch.isfinite(out).all(), name
        if spec.kind is TaskKind.SEGMENTATION:
            assert tuple(out.shape[2:]) == tuple(spec.input_size), name
    # MRI is served by a network of its own, not the 3D one CT and CT+PET share
    assert model.task_slot["tumour_cls"] == model.task_slot["tissue_seg"] != \
        model.task_slot["ct_seg"] == model.task_slot["ctpet_seg"]
