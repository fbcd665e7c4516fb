"""LoRA vs full fine-tuning on a GPU (#11): milliseconds per step and peak memory through the
project's own training code (``train_task``), for the I3ResNet-152 of the real CT foundation and
a ViT-B-size transformer, with the options that trade compute for memory beside the plain runs.

Prepared for sessions that have a GPU (none is needed anywhere else; CI never runs it). The run
writes a JSON file; ``--render`` turns it into BENCHMARKS.md's *gpu* section here::

    python -m simulations.gpu_bench --weights none --json gpu.json      # on the GPU machine
    python -m simulations.gpu_bench --render gpu.json --out BENCHMARKS.md
    python -m simulations.gpu_bench --device cpu --quick --json q.json  # smoke run (tests)

``--weights none`` builds the same I3ResNet-152 randomly initialised: the shipped weights
(235 MB) cannot travel to the GPU machine, and time and memory depend on shapes, not values.
Each row times ``steps`` optimiser steps after two warm-up steps (cuDNN picks its kernels
then), with the batch already on the device: the numbers are the model's step, not the
loader's (pinned memory and workers are tested in ``tests/unicon_core/test_cuda.py``).

Reference measured outside the project on an H200 (bf16, random init, peft LoRA r=8 on the
bottleneck 1×1×1 convs): at 96×96×64, batch 4, LoRA 85 ms vs full 65 ms per step, peak 1.9 vs
2.8 GiB; at 224×224×160, 205 vs 179 ms, 16.7 vs 16.2 GiB. The aim: a LoRA step no slower than
full fine-tuning, with less memory.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from simulations.report import cpu_name, insert_section
from unicon_core.config import BackboneConfig, TaskSpec, TrainConfig
from unicon_core.device import resolve_device
from unicon_core.model import UniconModel
from unicon_core.training import train_task
from unicon_core.training.plans import Plan, plan_parameters

REPO = Path(__file__).resolve().parents[1]
HEADING = "## gpu"
BATCH = 4
#: LoRA only on the last two stages: the backward pass stops at layer3 (no gradients into the
#: frozen early layers, whose activations need not be kept).
LATE_TARGETS = [r"re:layer[34]\.\d+\.conv[13]"]


@dataclass(frozen=True)
class Case:
    """One row: a backbone, an input size and what trains."""

    backbone: str
    cfg: BackboneConfig
    spec: TaskSpec
    mode: str  # "lora" or "full"
    option: str = ""  # what else differs, e.g. "gradient checkpointing"


class _Resident:
    """One random batch already on the device, served ``steps`` times (a loader for
    ``train_task`` whose cost is not in the timing)."""

    dataset = None

    def __init__(self, spec: TaskSpec, device: torch.device, steps: int) -> None:
        g = torch.Generator().manual_seed(0)
        x = torch.rand(BATCH, spec.channels, *spec.input_size, generator=g)
        self.batch = {"input": x.to(device), "label": (torch.arange(BATCH) % 2).to(device)}
        self.steps = steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return iter([self.batch] * self.steps)


def _spec(name: str, dims: int, size: Sequence[int], targets: list[str] | None) -> TaskSpec:
    lora: dict[str, Any] = {"rank": 8, "alpha": 16.0}
    if targets:
        lora["targets"] = targets
    return TaskSpec(name=name, kind="classification", modality="ct" if dims == 3 else "mri",
                    spatial_dims=dims, input_size=list(size), patch_size=8 if dims == 3 else 16,
                    lora=lora)


def cases(weights: str | None, quick: bool) -> list[Case]:
    """The rows: I3ResNet-152 at the reference's two 3D sizes (LoRA, full, each with gradient
    checkpointing, LoRA on the last two stages), the ViT-B-size transformer at 224×224."""
    fm: dict[str, Any] = {"weights": weights}
    if quick:  # tiny members of the same code paths
        fm.update(blocks=[1, 1, 1, 1], width=8)
        sizes, vit_size = [[32, 32, 16]], [32, 32]
        vit = BackboneConfig(hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64)
    else:
        sizes, vit_size = [[96, 96, 64], [224, 224, 160]], [224, 224]
        vit = BackboneConfig(hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072)
    name = "I3ResNet-152" + (" (tiny)" if quick else "")
    plain = BackboneConfig(name="i3resnet", options=fm)
    ckpt = BackboneConfig(name="i3resnet", options={**fm, "gradient_checkpointing": True})
    rows = []
    for size in sizes:
        spec, late = _spec("ct", 3, size, None), _spec("ct", 3, size, LATE_TARGETS)
        rows += [Case(name, plain, spec, "lora"), Case(name, plain, spec, "full"),
                 Case(name, ckpt, spec, "lora", "gradient checkpointing"),
                 Case(name, ckpt, spec, "full", "gradient checkpointing"),
                 Case(name, plain, late, "lora", "LoRA on layer3-4 only")]
    vit_spec = _spec("mri", 2, vit_size, None)
    vit_name = "transformer" + (" (tiny)" if quick else " base (ViT-B size)")
    return [*rows, Case(vit_name, vit, vit_spec, "lora"), Case(vit_name, vit, vit_spec, "full")]


def measure(case: Case, device: str, steps: int) -> dict[str, Any]:
    """Mean ms per step over ``steps`` steps after two warm-up steps, and the peak GPU memory
    of those steps (NaN on the CPU)."""
    dev = resolve_device(device)
    model = UniconModel(case.cfg, seed=0)
    model.add_task(case.spec)
    params = None
    if case.mode == "full":
        params = list(plan_parameters(model, case.spec.name, Plan.FULL_FINETUNE).values())
    cfg = TrainConfig(max_steps=2, batch_size=BATCH, progress=False, device=device)
    train_task(model, case.spec.name, _Resident(case.spec, dev, 2), cfg, params=params)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    loader = _Resident(case.spec, dev, steps)
    start = time.perf_counter()
    train_task(model, case.spec.name, loader, TrainConfig(
        max_steps=steps, batch_size=BATCH, progress=False, device=device), params=params)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    ms = (time.perf_counter() - start) / steps * 1000
    peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else math.nan
    trained = sum(p.numel() for p in (params or model.skill_parameters(case.spec.name).values()))
    total = sum(p.numel() for p in model.parameters())
    del model, loader
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return {"backbone": case.backbone, "input": "×".join(map(str, case.spec.input_size)),
            "batch": BATCH, "mode": case.mode, "option": case.option, "ms_per_step": ms,
            "peak_gib": peak, "trained_params": trained, "model_params": total}


def machine(device: str) -> dict[str, str]:
    """What ran the rows: the device's name, torch and CUDA versions, the commit."""
    dev = resolve_device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name()
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                                capture_output=True, check=True).stdout.strip()
        if subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                          text=True, capture_output=True, check=True).stdout.strip():
            commit += " with uncommitted changes"
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"device": name, "torch": torch.__version__,
            "cuda": str(torch.version.cuda), "commit": commit,
            "date": time.strftime("%Y-%m-%d")}


def _ratio_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Per backbone and input: LoRA against full fine-tuning, plain and with checkpointing."""
    lines = []
    for key in dict.fromkeys((r["backbone"], r.get("input")) for r in rows):
        got = {(r["mode"], r["option"]): r for r in rows
               if (r["backbone"], r["input"]) == key and "error" not in r}
        full = got.get(("full", ""))
        if full is None:
            continue
        parts = []
        for option in dict.fromkeys(o for m, o in got if m == "lora"):
            lora = got[("lora", option)]
            time_x = lora["ms_per_step"] / full["ms_per_step"]
            mem = (f", memory {lora['peak_gib'] / full['peak_gib']:.2f}×"
                   if math.isfinite(lora["peak_gib"]) and math.isfinite(full["peak_gib"]) else "")
            met = time_x <= 1.0 and (not mem or lora["peak_gib"] < full["peak_gib"])
            parts.append(f"LoRA{f' ({option})' if option else ''} time {time_x:.2f}×{mem}"
                         f"{' (aim met)' if met else ''}")
        lines.append(f"- {key[0]} at {key[1]}, against plain full fine-tuning: "
                     + "; ".join(parts) + ".")
    return lines


def render(result: dict[str, Any]) -> str:
    """BENCHMARKS.md's *gpu* section from a run's JSON."""
    m, rows = result["machine"], result["rows"]
    weights = result["weights"] or "none"
    lines = [
        HEADING, "",
        f"Written by `python -m simulations.gpu_bench{' --quick' if result['quick'] else ''} "
        f"--device {result['device']} --weights {weights}` on {m['device']} "
        f"({m['date']}, commit {m['commit']}, torch {m['torch']}, CUDA {m['cuda']}), then "
        "`--render` here. Each row: the project's `train_task`, bf16 autocast on CUDA, AdamW, "
        f"batch {BATCH}, {result['steps']} steps timed after 2 warm-up steps, the batch "
        "already on the device (the loader is not timed). Peak: `torch.cuda."
        "max_memory_allocated` over the timed steps (weights, gradients, optimiser state and "
        "activations).",
        "",
    ]
    if weights == "none":
        lines += ["The I3ResNet-152 is randomly initialised, the same architecture as the real CT "
                  "foundation: its shipped weights (235 MB) cannot travel to the GPU machine, and "
                  "time and memory depend on shapes, not values.", ""]
    if result["quick"]:
        lines += ["**Quick run:** tiny members of each family at tiny sizes; not a "
                  "measurement of the real models.", ""]
    lines += ["| backbone | input | mode | option | trained / all params | ms / step | peak GiB |",
              "|---|---|---|---|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['backbone']} | {r.get('input', '')} | {r['mode']} | "
                         f"{r['option'] or '—'} | | {r['error']} | |")
            continue
        peak = f"{r['peak_gib']:.2f}" if math.isfinite(r["peak_gib"]) else "—"
        lines.append(f"| {r['backbone']} | {r['input']} | {r['mode']} | {r['option'] or '—'} "
                     f"| {r['trained_params'] / 1e6:.2f}M / {r['model_params'] / 1e6:.2f}M | "
                     f"{r['ms_per_step']:.0f} | {peak} |")
    lines += ["", "The aim (#11): a LoRA step no slower than full fine-tuning, with less memory. "
              "Reference outside the project (H200, bf16, random init, peft LoRA r=8): at "
              "96×96×64 LoRA 85 ms vs full 65 ms, 1.9 vs 2.8 GiB; at 224×224×160 205 vs "
              "179 ms, 16.7 vs 16.2 GiB. \"Aim met\" below is against this project's own full "
              "fine-tuning, which keeps float32 weights under autocast and AdamW moments for "
              "every parameter; the reference's full step was measured another way.", "",
              *_ratio_lines(rows)]
    if result.get("note"):
        lines += ["", f"Note: {result['note']}"]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--weights", default="astra", help="'astra' (shipped) or 'none' (random)")
    p.add_argument("--quick", action="store_true", help="tiny models and inputs (smoke run)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (20; quick: 2)")
    p.add_argument("--json", type=Path, help="where the run's rows go")
    p.add_argument("--render", type=Path, help="a run's JSON: write its section to --out")
    p.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    p.add_argument("--note", help="with --render: a provenance sentence for the section")
    args = p.parse_args(argv)
    if args.render is not None:
        result = json.loads(args.render.read_text())
        if args.note:
            result["note"] = args.note
        insert_section(args.out, render(result))
        print(f"wrote the gpu section into {args.out}")
        return 0
    if args.json is None:
        p.error("--json is needed to run (or --render to write a section)")
    weights = None if args.weights == "none" else args.weights
    steps = args.steps or (2 if args.quick else 20)
    result: dict[str, Any] = {"machine": machine(args.device), "device": args.device,
                              "weights": weights, "quick": args.quick, "steps": steps,
                              "rows": []}
    for case in cases(weights, args.quick):
        try:
            row = measure(case, args.device, steps)
        except torch.OutOfMemoryError as exc:  # reported as such, never dropped
            row = {"backbone": case.backbone, "mode": case.mode, "option": case.option,
                   "input": "×".join(map(str, case.spec.input_size)),
                   "error": f"out of memory: {exc}".splitlines()[0]}
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
        args.json.write_text(json.dumps(result, indent=1))  # what finished survives a kill
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
