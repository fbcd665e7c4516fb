"""The CUDA paths on a real GPU: skipped where none is visible (CI, this project's CPU machines).

They run on a GPU machine (``simulations/gpu_session.sh``; the session that ran them is named in
BENCHMARKS.md's *gpu* section), with the GPU cases of the tests parametrized by
``tests.devices.DEVICES`` (the skill contract and DP-SGD in ``model/test_backbones.py``). On a
CPU they would only repeat the CPU tests, so they skip rather than pass vacuously.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tests.devices import needs_cuda
from tests.unicon_core.inference._tiny import tiny_model, trained_on, write_nifti
from tests.unicon_core.model.test_backbones import CASES, _image_tasks, _Images, _input
from unicon_core.config import TrainConfig
from unicon_core.device import module_device
from unicon_core.inference.bundle import load_bundle, save_bundle
from unicon_core.inference.export import bundle_from_model
from unicon_core.inference.inputs import collect_inputs, load_input
from unicon_core.inference.predict import Predictor
from unicon_core.model import UniconModel
from unicon_core.training import evaluate_task, make_loader, train_task

pytestmark = needs_cuda


def _cuda(**kw: object) -> TrainConfig:
    """A short training config on the GPU (``kw`` overrides)."""
    return TrainConfig(**{"max_steps": 2, "lr": 0.05, "progress": False, "device": "cuda", **kw})


def test_training_runs_under_bf16_autocast_and_loss_is_float32() -> None:
    # Prepare: record the dtype the adapted layers compute in
    cfg, dims = CASES["transformer"]
    model = UniconModel(cfg, seed=0)
    task_a, _ = _image_tasks(dims)
    model.add_task(task_a)
    seen: set[torch.dtype] = set()
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
             for m in model.modules() if isinstance(m, nn.Linear)]
    loader = make_loader(_Images(task_a), 2, shuffle=False)
    # Execute
    try:
        result = train_task(model, "task_a", loader, _cuda())
        seen_on = set(seen)
        seen.clear()
        train_task(model, "task_a", loader, _cuda(amp=False))
        off = set(seen)
    finally:
        for h in hooks:
            h.remove()
    # Assert: bf16 with amp (the default), float32 without; the reported loss is a float
    assert torch.bfloat16 in seen_on and np.isfinite(result.loss)
    assert off == {torch.float32}


def test_gpu_and_cpu_give_the_same_outputs_within_bf16_precision() -> None:
    cfg, dims = CASES["i3resnet_3d"]
    model = UniconModel(cfg, seed=0)
    task_a, _ = _image_tasks(dims)
    model.add_task(task_a)
    model.eval()
    x = _input(task_a)
    on_cpu = model(x, "task_a").detach()
    model.to("cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        on_gpu = model(x.cuda(), "task_a").float().cpu()
    assert torch.allclose(on_gpu, on_cpu, rtol=0.05, atol=0.05 * float(on_cpu.abs().max()))
    metrics = evaluate_task(model, "task_a", make_loader(_Images(task_a, n=8), 4, shuffle=False))
    assert metrics["num_examples"] == 8 and all(np.isfinite(v) for v in metrics.values())


def test_pinned_memory_and_workers_feed_the_gpu() -> None:
    cfg, dims = CASES["i3resnet_3d"]
    model = UniconModel(cfg, seed=0)
    task_a, _ = _image_tasks(dims)
    model.add_task(task_a)
    loader = make_loader(_Images(task_a, n=8), 2, shuffle=True, num_workers=2, pin_memory=True)
    assert loader.pin_memory and next(iter(loader))["input"].is_pinned()
    result = train_task(model, "task_a", loader, _cuda(max_steps=4))
    assert result.steps == 4 and np.isfinite(result.loss)


def test_pretraining_runs_on_the_gpu() -> None:
    from tests.unicon_core.test_pretrain import SPEC, TINY, Images
    from unicon_core.model.stems import StemSpec
    from unicon_core.pretrain import PretrainConfig, pretrain

    model = UniconModel(TINY, seed=0)
    stem = StemSpec.from_task(SPEC)
    model.add_stem(stem, owner=None)
    images = Images(64, seed=0)
    losses = pretrain(model, {stem.key: images},
                      PretrainConfig(steps=60, batch_size=16, lr=2e-3, mask_ratio=0.4,
                                     progress=False, device="cuda"))
    assert np.mean(losses[-10:]) < np.mean(losses[:10])  # it learns on the GPU too
    assert not any(p.requires_grad for p in model.parameters())


def test_predictor_on_the_gpu_matches_the_cpu(tmp_path) -> None:
    model = tiny_model()
    bundle_dir = save_bundle(bundle_from_model(model, trained_on(model)), tmp_path / "b")
    ct = write_nifti(tmp_path / "v.nii.gz", np.random.default_rng(8).normal(0, 80, (8, 8, 8)))
    (ref,) = collect_inputs([ct])
    on_gpu = Predictor(load_bundle(bundle_dir), device="cuda")
    on_cpu = Predictor(load_bundle(bundle_dir), device="cpu")
    gpu, cpu = on_gpu.predict(load_input(ref)), on_cpu.predict(load_input(ref))
    assert module_device(on_gpu.bundle.model).type == "cuda"
    assert gpu.output.device.type == "cpu" and gpu.output.dtype == torch.float32
    # the logits, computed in bf16 on the GPU, match the CPU's float32 within bf16 precision
    scale = float(cpu.output.abs().max())
    assert gpu.output.shape == cpu.output.shape
    assert torch.allclose(gpu.output, cpu.output, rtol=0.05, atol=0.05 * scale)
