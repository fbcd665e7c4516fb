"""Backbones side by side, on this CPU (section ``backbones.md`` of BENCHMARKS.md).

1. Skill vs full-model bytes and seconds per local step, per backbone and task kind.
2. Br35H tumour classification on **sources no training image came from**: the same LoRA skill
   budget on a random tiny transformer, a random I3ResNet-152 (2D) and the real CT foundation's
   weights collapsed to 2D; a logistic regression on 32×32 pixels as the reference the issue
   names. AUC with a 95 % bootstrap interval and n.
3. The adaptation survey (linear probe, full fine-tuning, LoRA, gradual unfreezing,
   discriminative learning rates) on the real CT foundation, CT lesion segmentation on SYNTHETIC
   phantoms, held-out phantoms.

Every number is measured here by this script; raw values go to ``<run dir>/results.json``.

    python -m simulations.backbones_bench [--seeds 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from simulations.report import UNSEEN_SOURCES_TABLE, insert_section
from unicon_core.config import BackboneConfig, TaskSpec, TrainConfig
from unicon_core.model import UniconModel
from unicon_core.training import evaluate_task, make_loader, train_task

REPO = Path(__file__).resolve().parents[1]
OUT_MD = REPO / "simulations" / "results" / "backbones.md"
BENCHMARKS_MD = REPO / "BENCHMARKS.md"

TINY = BackboneConfig()
BASE = BackboneConfig(hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072)
#: Rank of the factorised patch stem (``TaskSpec.stem_rank``) of the 3D tasks on ViT-B rows.
LOW_RANK = 64
CT_FM = BackboneConfig(name="i3resnet", options={"weights": "astra"})
CT_FM_2D = BackboneConfig(name="i3resnet", options={"weights": "astra", "spatial_dims": 2})
RANDOM_2D = BackboneConfig(name="i3resnet", options={"spatial_dims": 2})
SMALL = BackboneConfig(hidden_size=192, num_layers=6, num_heads=6, mlp_dim=768)

LORA = {"rank": 8, "alpha": 16.0}


def _task(name: str, kind: str, modality: str, dims: int, size: list[int], channels: int = 1,
          **extra: Any) -> TaskSpec:
    return TaskSpec(name=name, kind=kind, modality=modality, channels=channels, spatial_dims=dims,
                    input_size=size, patch_size=8, num_classes=2, lora=LORA, **extra)


TASKS = {
    "classification 2D (64²)": _task("cls2d", "classification", "mri", 2, [64, 64]),
    "classification 3D CT (32³)": _task("cls3d", "classification", "ct", 3, [32, 32, 32]),
    "segmentation 2D (64²), unetr decoder": _task("seg2du", "segmentation", "mri", 2, [64, 64],
                                                  decoder="unetr"),
    "segmentation 3D CT (32³), unetr decoder": _task("seg3du", "segmentation", "ct", 3,
                                                     [32, 32, 32], decoder="unetr"),
    "segmentation 2D (64²)": _task("seg2d", "segmentation", "mri", 2, [64, 64], decoder="fpn"),
    "segmentation 3D CT (32³)": _task("seg3d", "segmentation", "ct", 3, [32, 32, 32],
                                      decoder="fpn"),
    "segmentation 3D CT+PET (32³)": _task("segpet", "segmentation", "ct+pet", 3, [32, 32, 32],
                                           channels=2, decoder="fpn"),
    "survival (clinical, 8 features)": TaskSpec(
        name="surv", kind="survival", modality="clinical", spatial_dims=0,
        feature_names=[f"f{i}" for i in range(8)], lora=LORA),
}


class Tensors(Dataset):
    """Items ``{"input", <target>}`` from stacked tensors."""

    def __init__(self, x: torch.Tensor, **targets: torch.Tensor) -> None:
        self.x, self.targets = x, targets

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input": self.x[i], **{k: v[i] for k, v in self.targets.items()}}


def _random_items(spec: TaskSpec, n: int) -> Tensors:
    g = torch.Generator().manual_seed(0)
    if spec.spatial_dims == 0:
        x = torch.randn(n, len(spec.feature_names), generator=g)
        return Tensors(x, time=torch.rand(n, generator=g) + 0.1, event=torch.ones(n))
    x = torch.rand(n, spec.channels, *spec.input_size, generator=g)
    return Tensors(x, mask=(x[:, :1] > 0.5).long(), label=torch.arange(n) % 2)


# ---------------------------------------------------------------------------- 1. sizes, speed
def sizes_and_speed(steps: int) -> list[dict[str, Any]]:
    """Skill/full bytes and seconds per local step (batch 4) for every backbone × task kind."""
    rows = []
    backbones = {"transformer tiny (random)": (TINY, None),
                 "transformer base (ViT-B size, random)": (BASE, None),
                 f"transformer base (ViT-B size, random), low-rank 3D stems (r={LOW_RANK})":
                     (BASE, LOW_RANK),
                 "I3ResNet-152 3D (real CT FM)": (CT_FM, None),
                 "I3ResNet-152 2D (CT FM, kernels summed over depth)": (CT_FM_2D, None)}
    for bname, (cfg, rank) in backbones.items():
        model = UniconModel(cfg, seed=0)
        for kind, spec in TASKS.items():
            if rank is not None and spec.spatial_dims == 3:
                spec = replace(spec, stem_rank=rank)
            if model.core_backbone.supports(spec) is not None or (
                spec.decoder == "unetr" and not model.reads_tokens
            ):
                continue
            model.add_task(spec)
            tensors = model.skill_state_dict(spec.name).values()
            skill = sum(t.numel() * t.element_size() for t in tensors)
            full = model.full_model_bytes(spec.name)
            data = _random_items(spec, 4 * (steps + 1))
            loader = make_loader(data, 4, shuffle=False)
            cfg_t = TrainConfig(max_steps=1, progress=False, device="cpu")
            train_task(model, spec.name, loader, cfg_t)  # warm-up
            start = time.perf_counter()
            train_task(model, spec.name, loader, replace(cfg_t, max_steps=steps))
            per_step = (time.perf_counter() - start) / steps
            rows.append({"backbone": bname, "task": kind, "backbone_params":
                         model.backbone_info()["params"], "skill_bytes": skill,
                         "full_bytes": full, "full_over_skill": full / skill,
                         "s_per_step": per_step})
            print(f"  {bname} / {kind}: 1/{full / skill:.0f}, {per_step:.2f} s/step", flush=True)
    return rows


# ---------------------------------------------------------------------------- 2. tumour AUC
def tumour_split(test_fraction: float = 0.3, val_fraction: float = 0.15,
                 seed: int = 0) -> dict[str, Any]:
    """Br35H as 64×64 grayscale (cropped to foreground, padded square: no geometry), split by
    source group: every test image comes from a source no training image came from, and the
    validation images (model selection only) from training sources held out of training."""
    from unicon_core.demo_data.br35h import scan_br35h, source_groups

    images = scan_br35h(64)
    groups = np.array(source_groups(images))
    labels = np.array([im.label for im in images])
    pixels = np.stack([im.pixels for im in images]).astype(np.float32) / 255.0
    rng = np.random.default_rng(seed)
    test = _hold_out_sources(groups, labels, np.ones(len(images), dtype=bool), test_fraction, rng)
    val = _hold_out_sources(groups, labels, ~test, val_fraction, rng)
    assert not set(groups[test]) & set(groups[~test])
    assert not set(groups[val]) & set(groups[~(val | test)])
    return {"x": pixels, "y": labels, "test": test, "val": val, "groups": groups}


def _hold_out_sources(groups: np.ndarray, labels: np.ndarray, pool: np.ndarray, fraction: float,
                      rng: np.random.Generator) -> np.ndarray:
    """Whole sources of ``pool``, drawn until each class has ``fraction`` of its pool images."""
    held = np.zeros(len(groups), dtype=bool)
    for label in (0, 1):
        mine = pool & (labels == label)
        for g in rng.permutation(sorted(set(groups[mine].tolist()))):
            if held[mine].mean() >= fraction:
                break
            held |= pool & (groups == g)
    return held


def bootstrap_auc(y: np.ndarray, score: np.ndarray, reps: int = 1000) -> tuple[float, float, float]:
    """AUC and its 95 % percentile bootstrap interval (resampling images)."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    values = []
    for _ in range(reps):
        idx = rng.integers(0, len(y), len(y))
        if len(set(y[idx].tolist())) == 2:
            values.append(roc_auc_score(y[idx], score[idx]))
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(roc_auc_score(y, score)), float(lo), float(hi)


def ssl_foundation(train: Tensors, groups: np.ndarray, spec: TaskSpec, seed: int,
                   rounds: int, steps: int) -> UniconModel:
    """The small transformer pretrained by federated masked-image modelling: the training
    sources dealt to 3 sites (whole sources), FedAvg of the full foundation, no images pooled."""
    from unicon_core.model.stems import StemSpec
    from unicon_core.pretrain import PretrainConfig, federated_pretrain

    model = UniconModel(SMALL, seed=seed)
    stem = StemSpec.from_task(spec)
    model.add_stem(stem, owner=None)
    site_of = {g: i % 3 for i, g in enumerate(sorted(set(groups.tolist())))}
    sites = {}
    for k in range(3):
        idx = np.flatnonzero([site_of[g] == k for g in groups]).tolist()
        sites[f"site{k}"] = {stem.key: torch.utils.data.Subset(train, idx)}
    federated_pretrain(model, sites, PretrainConfig(steps=steps, batch_size=32, lr=1e-3,
                                                    mask_ratio=0.5, seed=seed, progress=False,
                                                    device="cpu"), rounds)
    return model


#: The tumour table's deep models (the logistic regression on pixels is always fitted).
TUMOUR_MODELS = {"transformer tiny, random": TINY, "transformer small, random": SMALL,
                 "transformer small, federated SSL (3 sites)": SMALL,
                 "I3ResNet-152 2D, random": RANDOM_2D,
                 "I3ResNet-152 2D, CT FM weights": CT_FM_2D}


def tumour_auc(split: dict[str, Any], seeds: Sequence[int], epochs: int,
               ssl: tuple[int, int], max_steps: int | None = None,
               only: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Same LoRA skill budget per backbone (the epoch with the best validation AUC kept);
    AUC on the held-out sources. ``only``: these deep models (default every one)."""
    from sklearn.linear_model import LogisticRegression

    x, y, test, val = split["x"], split["y"], split["test"], split["val"]
    fit = ~(test | val)
    rows = []
    small = torch.nn.functional.avg_pool2d(torch.from_numpy(x)[:, None], 2).flatten(1).numpy()
    clf = LogisticRegression(max_iter=2000, C=0.1).fit(small[fit], y[fit])
    auc, lo, hi = bootstrap_auc(y[test], clf.predict_proba(small[test])[:, 1])
    rows.append({"model": PIXEL_BASELINE, "seed": 0, "auc": auc,
                 "lo": lo, "hi": hi})
    spec = _task("tumour", "classification", "mri", 2, [64, 64])

    def part(mask: np.ndarray) -> Tensors:
        return Tensors(torch.from_numpy(x[mask])[:, None], label=torch.from_numpy(y[mask]))

    train, held_val, held = part(fit), part(val), part(test)
    for name, cfg in TUMOUR_MODELS.items():
        if only is not None and name not in only:
            continue
        for seed in seeds:
            if "SSL" in name:
                model = ssl_foundation(train, split["groups"][fit], spec, seed, *ssl)
            else:
                model = UniconModel(cfg, seed=seed)
            model.add_task(spec)
            lr = 2e-3 if cfg.name == "transformer" else 1e-3
            chosen = train_select(model, "tumour", train, held_val, epochs, lr, seed,
                                  max_steps=max_steps)
            scores = _scores(model, "tumour", held)
            auc, lo, hi = bootstrap_auc(y[test], scores)
            rows.append({"model": name, "seed": seed, "auc": auc, "lo": lo, "hi": hi, **chosen})
            print(f"  tumour {name} seed {seed}: AUC {auc:.3f} [{lo:.3f}, {hi:.3f}] "
                  f"(epoch {chosen['epoch']} of {epochs}, val AUC {chosen['val_auc']:.3f})",
                  flush=True)
    return rows


PIXEL_BASELINE = "logistic regression on 32×32 pixels"


def tumour_row_order(row: Mapping[str, Any]) -> tuple[int, bool, int]:
    """Where a row goes in the tumour table: the pixel baseline, then the models in
    ``TUMOUR_MODELS`` order (an earlier protocol's row before this one's), then by seed."""
    order = [PIXEL_BASELINE, *TUMOUR_MODELS]
    base = row.get("base", row["model"])
    return (order.index(base) if base in order else len(order), "epoch" in row,
            int(row.get("seed") or 0))


def merge_tumour_rows(old: Sequence[dict[str, Any]], new: Sequence[dict[str, Any]],
                      only: Sequence[str] | None, steps: int | None) -> list[dict[str, Any]]:
    """The tumour table after running ``only`` these models (``new``: the pixel baseline first,
    then their rows): every deep-model row of the merged run trained for its fixed ``steps``
    stays, renamed when this run has a row of the same model; rows of this protocol (best
    validation epoch; the caller checks the split is the same) stay for the models not rerun;
    nothing is kept for a full run."""
    kept = [] if only is None else [dict(r) for r in old
                                    if r.get("base", r["model"]) in TUMOUR_MODELS
                                    and ("epoch" not in r or r["model"] not in only)]
    for r in kept:
        if "epoch" in r:
            continue
        r.setdefault("steps", steps)
        r["base"] = r.get("base", r["model"])
        if r["base"] in only:  # type: ignore[operator]
            r["model"] = f"{r['base']} ({r['steps']} steps, earlier protocol)"
    return [*new[:1], *sorted([*new[1:], *kept], key=tumour_row_order)]


def merge_results(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Finished runs as one, later parts winning (``--merge a.json b.json``): processes that
    each ran some parts, or some tumour rows, joined. Tumour rows are unioned by (model, seed),
    which needs the same split and protocol in every part that has tumour rows."""
    res: dict[str, Any] = {}
    runs = [run for part in parts for run in part_runs(part)]
    for part in parts:
        if "tumour" in part and "tumour" in res:
            for field in ("tumour_split", "tumour_epochs", "tumour_steps"):
                if part.get(field) != res.get(field):
                    raise ValueError(f"cannot join tumour rows of runs whose {field} "
                                     f"differs: {res.get(field)} vs {part.get(field)}")
        for key, value in part.items():
            if key == "tumour" and "tumour" in res:
                new = {(r["model"], r.get("seed")) for r in value}
                rows = [r for r in res["tumour"] if (r["model"], r.get("seed")) not in new]
                res["tumour"] = sorted([*rows, *value], key=tumour_row_order)
            elif key == "part_minutes":
                res.setdefault(key, {}).update(value)
            elif key != "runs":
                res[key] = value
    if runs:
        res["runs"] = runs
    return res


def part_runs(res: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The processes behind a results.json: its own ``runs`` list, or (a run saved before runs
    were listed) one entry from its machine, minutes per part and tumour models."""
    if "runs" in res:
        return [dict(r) for r in res["runs"]]
    if not res.get("part_minutes"):
        return []
    models = sorted({r.get("base", r["model"]) for r in res.get("tumour", [])
                     if r.get("base", r["model"]) in TUMOUR_MODELS}, key=list(TUMOUR_MODELS).index)
    return [{"parts": list(res["part_minutes"]), "machine": res.get("machine", "?"),
             "minutes": dict(res["part_minutes"]), "date": res.get("date"),
             "tumour_models": models if "tumour" in res["part_minutes"] else []}]


def train_select(model: UniconModel, task: str, train: Dataset, val: Dataset, epochs: int,
                 lr: float, seed: int, batch_size: int = 16,
                 max_steps: int | None = None) -> dict[str, Any]:
    """Train ``task``'s skill one epoch at a time; keep (and load) the skill of the epoch with
    the best validation AUC. Test data never enters: the caller scores it once, afterwards."""
    from sklearn.metrics import roc_auc_score

    y_val = np.array([int(val[i]["label"]) for i in range(len(val))])  # type: ignore[arg-type]
    best: dict[str, Any] = {"epoch": 0, "val_auc": -1.0, "val_aucs": []}
    state = None
    for epoch in range(1, epochs + 1):
        train_task(model, task, make_loader(train, batch_size, shuffle=True,
                                            seed=seed * 1000 + epoch),
                   TrainConfig(epochs=1, max_steps=max_steps, lr=lr, seed=seed * 1000 + epoch,
                               progress=False, device="cpu"))
        val_auc = float(roc_auc_score(y_val, _scores(model, task, val)))
        best["val_aucs"].append(val_auc)
        if val_auc > best["val_auc"]:
            best.update(epoch=epoch, val_auc=val_auc)
            state = {k: v.detach().clone() for k, v in model.skill_state_dict(task).items()}
    assert state is not None
    model.load_skill_state_dict(task, state)
    return best


@torch.no_grad()
def _scores(model: UniconModel, task: str, data: Dataset) -> np.ndarray:
    model.eval()
    out = [torch.softmax(model(b["input"], task), -1)[:, 1] for b in make_loader(data, 64,
                                                                                 shuffle=False)]
    return torch.cat(out).numpy()


# ---------------------------------------------------------------------------- 3. survey
def phantoms(n: int, seed: int) -> Tensors:
    """SYNTHETIC CT phantoms (32³), HU window (-160, 240) → [0, 1], lesion masks."""
    from unicon_core.demo_data.phantoms import PhantomConfig, make_phantom

    rng = np.random.default_rng(seed)
    cases = [make_phantom(rng, PhantomConfig(size=32)) for _ in range(n)]
    ct = np.stack([np.clip((c["ct"] + 160.0) / 400.0, 0, 1) for c in cases]).astype(np.float32)
    mask = np.stack([c["mask"] for c in cases]).astype(np.int64)
    return Tensors(torch.from_numpy(ct)[:, None], mask=torch.from_numpy(mask)[:, None])


def survey(seeds: Sequence[int], phases: int, steps: int, n_train: int,
           n_test: int) -> list[dict[str, Any]]:
    """Each adaptation strategy on the real CT FM, same steps; Dice on held-out phantoms."""
    from unicon_core.continual.baselines import ADAPTATION_STRATEGIES
    from unicon_core.training.plans import lr_groups, plan_parameters, round_plan

    spec = _task("ct_seg", "segmentation", "ct", 3, [32, 32, 32])
    test = phantoms(n_test, seed=10_000)
    rows = []
    for seed in seeds:
        train = phantoms(n_train, seed=seed)
        for name, plan_name in ADAPTATION_STRATEGIES.items():
            model = UniconModel(CT_FM, seed=seed)
            model.add_task(spec)
            params = plan_parameters(model, "ct_seg", plan_name)
            lr = 1e-4 if name in ("full_finetune", "gradual_unfreezing", "discriminative_lr") \
                else 1e-3
            start = time.perf_counter()
            for phase in range(phases):
                plan = round_plan(model, "ct_seg", plan_name, phase, phases)
                groups = lr_groups({n: params[n] for n in plan.keys}, plan.lr_scale, lr)
                train_task(model, "ct_seg", make_loader(train, 2, shuffle=True,
                                                        seed=seed * 100 + phase),
                           TrainConfig(max_steps=steps, lr=lr, seed=seed * 100 + phase,
                                       progress=False, device="cpu"), params=groups)
            wall = time.perf_counter() - start
            dice = evaluate_task(model, "ct_seg", make_loader(test, 4, shuffle=False),
                                 primary_only=True)["dice"]
            trained = sum(params[n].numel() for n in round_plan(model, "ct_seg", plan_name,
                                                                phases - 1, phases).keys)
            rows.append({"strategy": name, "seed": seed, "dice": float(dice), "wall_s": wall,
                         "trained_params_last_phase": trained})
            print(f"  survey {name} seed {seed}: Dice {dice:.3f} ({wall:.0f} s)", flush=True)
    return rows


# ---------------------------------------------------------------------------- report
def _mean_std(values: Sequence[float]) -> str:
    arr = np.array(values, dtype=float)
    return f"{arr.mean():.3f} ± {arr.std():.3f}" if len(arr) > 1 else f"{arr.mean():.3f}"


def _tumour_protocol(res: dict[str, Any]) -> str:
    """How the tumour rows were trained (a run from before validation selection: fixed steps)."""
    split = res["tumour_split"]
    if "tumour_epochs" not in res:
        return f"the same LoRA skill (r=8) + head for {res['tumour_steps']} steps of 16 images. "
    return (f"the same LoRA skill (r=8) + head on {split['n_train'] - split['n_val']} images for "
            f"up to {res['tumour_epochs']} epochs of {res['tumour_steps_per_epoch']} steps of 16 "
            f"images; the epoch with the best AUC on **{split['n_val']} validation images** "
            f"({split['val_pos']} tumour) from {split['sources_val']} training sources held out "
            "of training is kept, and only then scored on test, once. ")


def render(res: dict[str, Any]) -> str:
    """The markdown section (numbers from ``res`` only)."""
    split = res["tumour_split"]
    runs = res.get("runs", [])
    if len(runs) > 1:
        made = (f"Written by `python -m simulations.backbones_bench --merge` on {res['date']}, "
                f"joining {len(runs)} runs made side by side on this machine: " + "; ".join(
                    f"{', '.join(r['parts'])}"
                    + (f" ({', '.join(r['tumour_models'])})" if r.get("tumour_models") else "")
                    + f" ({r['machine']}; "
                    + ", ".join(f"{k} {v:.1f} min" for k, v in r["minutes"].items()) + ")"
                    for r in runs) + ".")
    else:
        made = (f"Written by `python -m simulations.backbones_bench` on {res['date']} "
                f"({res['machine']}; minutes per part: "
                + ", ".join(f"{k} {v:.1f}" for k, v in res["part_minutes"].items()) + ").")
    lines = [
        "## backbones",
        "",
        made + f" Seeds: {res['seeds']}. Step times are wall-clock on a 2-core machine and "
        "move with whatever else runs on it; metrics do not.",
        "",
        "### Skill size and local step time per backbone and task kind",
        "",
        "Skill = LoRA (r=8) + head + private stem; full = backbone + stem + head + adapter. "
        "Segmentation uses the FPN decoder unless the row says unetr (the token backbones' "
        "light UNETR-like decoder, the default there). Rows with low-rank 3D stems set the "
        "3D tasks' `stem_rank` (the private patch projection factorised as Conv(C→r) then "
        "Linear(r→hidden); 2D and clinical tasks unchanged). "
        f"Seconds per local step: batch 4, mean of {res['steps_timed']} steps on this CPU "
        "(random inputs; only the time is measured).",
        "",
        "| backbone | params | task | skill MB | full MB | full / skill | s / step |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in res["sizes"]:
        lines.append(
            f"| {r['backbone']} | {r['backbone_params'] / 1e6:.1f}M | {r['task']} | "
            f"{r['skill_bytes'] / 1e6:.2f} | {r['full_bytes'] / 1e6:.1f} | "
            f"{r['full_over_skill']:.0f} | {r['s_per_step']:.2f} |")
    lines += ["", "Goal ≤ 1/50 for every task kind on a ≥ 80M backbone (FPN decoder rows):"]
    for name in dict.fromkeys(r["backbone"] for r in res["sizes"]):
        rows = [r for r in res["sizes"] if r["backbone"] == name and "unetr" not in r["task"]]
        if rows[0]["backbone_params"] < 80e6:
            continue
        worst = min(rows, key=lambda r: r["full_over_skill"])
        verdict = "met" if worst["full_over_skill"] >= 50 else "MISSED"
        lines.append(f"- {name}: **{verdict}** (smallest 1/{worst['full_over_skill']:.0f}, "
                     f"{worst['task']}; {len(rows)} task kinds)")
    lines.append("")
    lines += [
        f"### {UNSEEN_SOURCES_TABLE}: random vs pretrained",
        "",
        f"Br35H (real MRI, 2D): {split['n_train']} training images from {split['sources_train']} "
        f"sources; **{split['n_test']} test images from {split['sources_test']} other sources** "
        f"({split['test_pos']} tumour). Images are grayscale, cropped to the foreground and "
        "padded square before resizing to 64×64, so original geometry cannot leak the label; "
        "near-duplicates share a source group and never cross the split. Every deep model trains "
        + _tumour_protocol(res)
        + "The federated SSL foundation is the small transformer pretrained by masked-image "
        "modelling with FedAvg of the full foundation over 3 sites holding whole training "
        f"sources ({res['ssl']['rounds']} rounds × {res['ssl']['steps']} local steps of 32; "
        "no validation or test image, no pooling), then frozen. 95 % bootstrap intervals over "
        "test images."
        + (" Rows marked *earlier protocol* were not rerun: they come from the merged run, "
           "trained for a fixed number of steps of 16 images with no validation selection."
           if any(r.get("steps") for r in res["tumour"]) else ""),
        "",
        "| model | seeds | test AUC (mean ± sd) | 95 % CI (first seed) | epoch kept (val AUC) "
        "per seed |",
        "|---|---:|---:|---:|---|",
    ]
    by_model: dict[str, list[dict[str, Any]]] = {}
    for r in res["tumour"]:
        by_model.setdefault(r["model"], []).append(r)
    for name, rs in by_model.items():
        kept = ", ".join(f"{r['epoch']} ({r['val_auc']:.3f})" for r in rs if "epoch" in r)
        if not kept and rs[0].get("steps"):
            kept = f"— ({rs[0]['steps']} steps, no selection: earlier protocol)"
        lines.append(f"| {name} | {len(rs)} | {_mean_std([r['auc'] for r in rs])} | "
                     f"[{rs[0]['lo']:.3f}, {rs[0]['hi']:.3f}] | {kept or '—'} |")
    best = max(np.mean([r["auc"] for r in rs]) for rs in by_model.values())
    lines += ["", f"Goal AUC ≥ 0.9 on held-out sources: **{'met' if best >= 0.9 else 'MISSED'}** "
              f"(best mean {best:.3f}).", ""]
    lines += [
        "### Adaptation survey on the real CT foundation (SYNTHETIC CT phantoms)",
        "",
        f"I3ResNet-152 with the real weights; CT lesion segmentation on synthetic 32³ phantoms "
        f"(HU window −160..240 → [0, 1]); {res['survey']['n_train']} training and "
        f"{res['survey']['n_test']} held-out phantoms; {res['survey']['phases']} phases × "
        f"{res['survey']['steps']} steps of 2 (gradual unfreezing opens one depth per phase). "
        "lr 1e-3 for LoRA and linear probe, 1e-4 where backbone weights train.",
        "",
        "| strategy | Dice (mean ± sd) | trained params (last phase) | seconds per run |",
        "|---|---:|---:|---:|",
    ]
    by_strategy: dict[str, list[dict[str, Any]]] = {}
    for r in res["survey"]["rows"]:
        by_strategy.setdefault(r["strategy"], []).append(r)
    for name, rs in by_strategy.items():
        lines.append(f"| {name} | {_mean_std([r['dice'] for r in rs])} | "
                     f"{rs[0]['trained_params_last_phase'] / 1e6:.2f}M | "
                     f"{np.mean([r['wall_s'] for r in rs]):.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
    p.add_argument("--out", type=Path, default=OUT_MD)
    p.add_argument("--runs-dir", type=Path, default=REPO / "runs")
    p.add_argument("--report-only", type=Path, default=None, metavar="RESULTS_JSON",
                   help="re-render the section from a finished run's results.json")
    p.add_argument("--parts", default="sizes,tumour,survey",
                   help="comma-separated parts to run now: sizes, tumour, survey")
    p.add_argument("--tumour-models", nargs="+", default=None, choices=list(TUMOUR_MODELS),
                   help="run only these rows of the tumour table; with --merge the other rows "
                        "are kept from the merged run (each row says how it was trained)")
    p.add_argument("--merge", type=Path, nargs="+", default=None, metavar="RESULTS_JSON",
                   help="start from finished runs' results.json (joined, later ones winning; "
                        "tumour rows unioned) and replace only the parts run now; with "
                        "--parts '' only join them and write the section")
    p.add_argument("--into", type=Path, default=None, metavar="BENCHMARKS_MD",
                   help="also put the section into this BENCHMARKS.md (replacing its old one)")
    args = p.parse_args(argv)
    if args.report_only is not None:
        section = render(json.loads(args.report_only.read_text()))
        args.out.write_text(section)
        if args.into is not None:
            insert_section(args.into, section)
        print(f"wrote {args.out}")
        return 0
    seeds = list(range(args.seeds))
    start = time.time()
    q = args.quick
    parts = {p for p in args.parts.split(",") if p}
    res = merge_results([json.loads(p.read_text()) for p in args.merge or []])
    res.update({"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
                "machine": f"CPU, torch threads {torch.get_num_threads()}", "seeds": seeds})
    res.setdefault("part_minutes", {})
    run_dir = args.runs_dir / f"backbones-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        """Write what is measured so far: a run stopped in a later part keeps the earlier
        ones (``--merge`` it and run only the parts that are missing)."""
        (run_dir / "results.json").write_text(json.dumps(res, indent=2))

    if "sizes" in parts:
        print("sizes and step times", flush=True)
        res["steps_timed"] = 2 if q else 4
        res["sizes"] = sizes_and_speed(res["steps_timed"])
        res["part_minutes"]["sizes"] = (time.time() - start) / 60
        save()
    if "tumour" in parts:
        print("tumour classification on unseen sources", flush=True)
        begin = time.time()
        split = tumour_split()
        test, val = split["test"], split["val"]
        split_info = {"n_train": int((~test).sum()), "n_test": int(test.sum()),
                      "n_val": int(val.sum()), "val_pos": int(split["y"][val].sum()),
                      "sources_val": len(set(split["groups"][val].tolist())),
                      "test_pos": int(split["y"][test].sum()),
                      "sources_train": len(set(split["groups"][~test].tolist())),
                      "sources_test": len(set(split["groups"][test].tolist()))}
        epochs = 1 if q else 3
        if "tumour_epochs" in res and (res["tumour_epochs"], res.get("tumour_split")) != (
                epochs, split_info):  # kept rows of this protocol must share the test set
            raise SystemExit(f"the merged run's tumour rows used another split or budget "
                             f"({res.get('tumour_split')}, {res['tumour_epochs']} epochs) than "
                             f"this one ({split_info}, {epochs} epochs): rerun every row")
        res["tumour_epochs"] = epochs
        res["ssl"] = {"rounds": 2 if q else 8, "steps": 5 if q else 40}
        rows = tumour_auc(split, seeds, res["tumour_epochs"],
                          (res["ssl"]["rounds"], res["ssl"]["steps"]),
                          max_steps=10 if q else None, only=args.tumour_models)
        res["tumour"] = merge_tumour_rows(res.get("tumour", []), rows, args.tumour_models,
                                          res.get("tumour_steps"))
        n_fit = int((~test & ~val).sum())
        res["tumour_steps_per_epoch"] = 10 if q else -(-n_fit // 16)
        res["tumour_split"] = split_info
        res["part_minutes"]["tumour"] = (time.time() - begin) / 60
        save()
    if "survey" in parts:
        print("adaptation survey on the real CT foundation", flush=True)
        begin = time.time()
        survey_cfg = {"phases": 2 if q else 4, "steps": 2 if q else 8,
                      "n_train": 8 if q else 32, "n_test": 8 if q else 24}
        rows = survey(seeds, survey_cfg["phases"], survey_cfg["steps"],
                      survey_cfg["n_train"], survey_cfg["n_test"])
        res["survey"] = {**survey_cfg, "rows": rows}
        res["part_minutes"]["survey"] = (time.time() - begin) / 60
    if parts:  # this process's own entry, beside those of the runs it joins
        res["runs"] = [*res.get("runs", []), {
            "parts": [k for k in ("sizes", "tumour", "survey") if k in parts],
            "machine": res["machine"], "date": res["date"],
            "minutes": {k: res["part_minutes"][k] for k in parts if k in res["part_minutes"]},
            "tumour_models": list(args.tumour_models or TUMOUR_MODELS) if "tumour" in parts
            else []}]
    missing = [k for k in ("sizes", "tumour", "survey") if k not in res]
    save()
    if missing:
        print(f"wrote {run_dir / 'results.json'}; run the parts {missing} (--merge it) "
              "before a report is written")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(res))
    if args.into is not None:
        insert_section(args.into, render(res))
    print(f"wrote {args.out} and {run_dir / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

