"""LoRA vs full fine-tuning on a GPU: milliseconds per step and peak memory, through the
project's own training code (``train_task``), for the real CT foundation and a ViT-B-size
transformer. Writes ``simulations/results/gpu.md`` naming the machine.

Prepared for sessions that have a GPU (none is needed anywhere else; CI never runs it):

    python -m simulations.gpu_bench                       # on the GPU machine
    python -m simulations.gpu_bench --device cpu --quick  # a smoke run of the same code path

Reference measured outside the project on an H200 (bf16, random init, peft LoRA r=8 on the
bottleneck 1×1×1 convs): at 96×96×64, batch 4, LoRA 85 ms vs full 65 ms per step, peak 1.9 vs
2.8 GiB. Options that trade compute for memory (``gradient_checkpointing`` of the I3ResNet) are
measured beside the plain runs.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from unicon_core.config import BackboneConfig, TaskSpec, TrainConfig
from unicon_core.device import resolve_device
from unicon_core.model import UniconModel
from unicon_core.training import make_loader, train_task
from unicon_core.training.plans import Plan, plan_parameters

REPO = Path(__file__).resolve().parents[1]
OUT_MD = REPO / "simulations" / "results" / "gpu.md"


class _Random(Dataset):
    """Random inputs with labels (only time and memory are measured)."""

    def __init__(self, spec: TaskSpec, n: int) -> None:
        self.spec, self.n = spec, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(i)
        return {"input": torch.rand(self.spec.channels, *self.spec.input_size, generator=g),
                "label": torch.tensor(i % 2)}


def measure(cfg: BackboneConfig, spec: TaskSpec, mode: str, device: str, batch: int,
            steps: int) -> dict[str, Any]:
    """Mean ms per step (after one warm-up step) and peak GPU memory of one training mode."""
    model = UniconModel(cfg, seed=0)
    model.add_task(spec)
    params = None
    if mode == "full":
        params = list(plan_parameters(model, spec.name, Plan.FULL_FINETUNE).values())
    loader = make_loader(_Random(spec, batch * (steps + 1)), batch, shuffle=False)
    train = TrainConfig(max_steps=1, batch_size=batch, progress=False, device=device)
    dev = resolve_device(device)
    train_task(model, spec.name, loader, train, params=params)  # warm-up (cuDNN autotune etc.)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    start = time.perf_counter()
    train = TrainConfig(max_steps=steps, batch_size=batch, progress=False, device=device)
    train_task(model, spec.name, loader, train, params=params)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    ms = (time.perf_counter() - start) / steps * 1000
    peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else float("nan")
    trained = sum(p.numel() for p in (params or model.skill_parameters(spec.name).values()))
    return {"mode": mode, "ms_per_step": ms, "peak_gib": peak, "trained_params": trained}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny inputs and steps (smoke run)")
    p.add_argument("--out", type=Path, default=OUT_MD)
    args = p.parse_args(argv)
    dev = resolve_device(args.device)
    machine = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor()
    steps = 2 if args.quick else 20
    ct_size = [32, 32, 16] if args.quick else [96, 96, 64]
    vit_size = [32, 32] if args.quick else [224, 224]
    lora = {"rank": 8, "alpha": 16.0}
    ct = TaskSpec(name="ct", kind="classification", modality="ct", spatial_dims=3,
                  input_size=ct_size, patch_size=8, lora=lora)
    vit = TaskSpec(name="mri", kind="classification", modality="mri", spatial_dims=2,
                   input_size=vit_size, patch_size=16 if not args.quick else 8, lora=lora)
    fm = {"weights": "astra"}
    cases = [
        ("I3ResNet-152 (real CT FM)", BackboneConfig(name="i3resnet", options=fm), ct),
        ("I3ResNet-152 + gradient checkpointing",
         BackboneConfig(name="i3resnet", options={**fm, "gradient_checkpointing": True}), ct),
        ("transformer base (ViT-B size)",
         BackboneConfig(hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072), vit),
    ]
    rows = []
    for name, cfg, spec in cases:
        for mode in ("lora", "full"):
            row = {"backbone": name, "input": "×".join(map(str, spec.input_size)), "batch": 4,
                   **measure(cfg, spec, mode, args.device, 4, steps)}
            rows.append(row)
            print(row, flush=True)
    lines = [
        "## gpu",
        "",
        f"Written by `python -m simulations.gpu_bench --device {args.device}` on {machine} "
        f"(torch {torch.__version__}, bf16 autocast on CUDA). {steps} steps after a warm-up.",
        "",
        "| backbone | input | batch | mode | trained params | ms / step | peak GiB |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['backbone']} | {r['input']} | {r['batch']} | {r['mode']} | "
                     f"{r['trained_params'] / 1e6:.2f}M | {r['ms_per_step']:.0f} | "
                     f"{r['peak_gib']:.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
