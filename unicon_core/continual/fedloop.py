"""FedAvg over an arbitrary parameter set, in a plain loop, with Flower messages for accounting.

The unicon path trains skills through the real ServerApp/ClientApp; the baselines need other
parameter sets (the full model, a head only, layer-wise learning rates). This loop does what a
round does there: each client receives the global tensors in a ``RecordDict`` shaped like the
server's instruction (``skill`` ArrayRecord + ``config``), trains them locally with
:func:`~unicon_core.training.train_task` (seeded like a site: seed, site, round), replies like a
site (``skill`` + ``metrics`` + ``info``), and the replies are averaged weighted by training
examples. Bytes of every message are measured with the same
:func:`~unicon_core.federation.accounting.content_bytes` the server uses, so both paths report
comparable bytes per site and round (train + evaluate instructions down, both replies up).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from unicon_core.config import TrainConfig
from unicon_core.metrics import PRIMARY_METRIC
from unicon_core.model import UniconModel


@dataclass
class ParamPlan:
    """What a client trains (and exchanges) in one round.

    ``names`` are ``model.named_parameters()`` names; ``lr_scale`` (optional) maps a name to a
    learning-rate multiplier (discriminative learning rates), default 1.
    """

    names: list[str]
    lr_scale: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.names:
            raise ValueError("a parameter plan needs at least one parameter to train")


#: ``(model, task, round index from 0, total rounds) -> ParamPlan``
PlanFn = Callable[[UniconModel, str, int, int], ParamPlan]


@dataclass
class Client:
    """A training participant: a site, or the pooled data of several (centralised)."""

    name: str
    train: Dataset
    steps: int
    synthetic: bool = False


@dataclass
class EvalSite:
    """Where a task is evaluated: a site's held-out split, optionally through an input view."""

    name: str
    data: Dataset


@dataclass
class LoopResult:
    """Per-round records and mean bytes per site and round."""

    rounds: list[dict[str, Any]]
    bytes_down_per_site_round: float
    bytes_up_per_site_round: float
    wall_s: float


def named(model: UniconModel, names: Sequence[str]) -> dict[str, torch.nn.Parameter]:
    """Parameters by ``named_parameters`` name (clear error naming unknown ones)."""
    params = dict(model.named_parameters())
    missing = [n for n in names if n not in params]
    if missing:
        raise KeyError(f"unknown parameters {missing[:5]}")
    return {n: params[n] for n in names}


def skill_names(model: UniconModel, task: str) -> list[str]:
    """``named_parameters`` names of ``task``'s skill."""
    ids = {id(p) for p in model.skill_parameters(task).values()}
    return [n for n, p in model.named_parameters() if id(p) in ids]


def backbone_names(model: UniconModel) -> list[str]:
    """Names of the backbone's own (non-LoRA) weights."""
    return [n for n in (name for name, _ in model.named_parameters())
            if n.startswith("backbone.") and ".lora_" not in n]


def stem_names(model: UniconModel, task: str) -> list[str]:
    """Names of the stem ``task`` uses."""
    return [n for n, _ in model.named_parameters()
            if n.startswith(f"stems.{model.task_stem[task]}.")]


def head_names(model: UniconModel, task: str) -> list[str]:
    """Names of ``task``'s head."""
    return [n for n, _ in model.named_parameters() if n.startswith(f"heads.{task}.")]


def _arrays(tensors: dict[str, torch.Tensor]) -> Any:
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({k: Array(v.detach().cpu().numpy()) for k, v in tensors.items()})


def instruction(tensors: dict[str, torch.Tensor], rnd: int, task: str, fhash: str) -> Any:
    """A training/evaluation instruction shaped like the server's."""
    from flwr.app import ConfigRecord, RecordDict

    from unicon_core.federation.protocol import ConfigKey, RecordKey

    config = ConfigRecord({ConfigKey.SERVER_ROUND.value: rnd, ConfigKey.TASK.value: task,
                           ConfigKey.FOUNDATION_HASH.value: fhash})
    return RecordDict({RecordKey.SKILL.value: _arrays(tensors), RecordKey.CONFIG.value: config})


def reply(
    tensors: dict[str, torch.Tensor] | None, metrics: dict[str, float], site: str, task: str,
    fhash: str, synthetic: bool, status: str,
) -> Any:
    """A site's reply shaped like the ClientApp's (``skill`` only for training replies)."""
    from flwr.app import ConfigRecord, MetricRecord, RecordDict

    from unicon_core.federation.protocol import InfoKey, RecordKey

    info = ConfigRecord({InfoKey.SITE.value: site, InfoKey.TASK.value: task,
                         InfoKey.FOUNDATION_HASH.value: fhash,
                         InfoKey.SYNTHETIC.value: synthetic, InfoKey.STATUS.value: status})
    content = {RecordKey.METRICS.value: MetricRecord(
        {k: (int(v) if k == "num-examples" else float(v)) for k, v in metrics.items()}
    ), RecordKey.INFO.value: info}
    if tensors is not None:
        content[RecordKey.SKILL.value] = _arrays(tensors)
    return RecordDict(content)


def received(content: Any) -> dict[str, torch.Tensor]:
    """Tensors of a message's ``skill`` record, decoded from their serialized bytes."""
    from unicon_core.federation.protocol import RecordKey

    record = content.array_records[RecordKey.SKILL.value]
    return {k: torch.from_numpy(a.numpy().copy()) for k, a in record.items()}


def round_bytes(model: UniconModel, task: str, names: Sequence[str]) -> dict[str, int]:
    """Bytes one site sends and receives in one round when ``names`` travel (no training)."""
    from unicon_core.federation.accounting import content_bytes

    tensors = {n: p.detach() for n, p in named(model, names).items()}
    fhash = model.foundation_hash
    down = content_bytes(instruction(tensors, 1, task, fhash))
    metrics = {"num-examples": 100, "train_loss": 0.5, "steps": 10}
    up = content_bytes(reply(tensors, metrics, "site", task, fhash, False, "trained"))
    up_eval = content_bytes(reply(None, {"num-examples": 10, "metric": 0.5}, "site", task,
                                  fhash, False, "evaluated"))
    return {"bytes_down": 2 * down, "bytes_up": up + up_eval}


def evaluate_sites(
    model: UniconModel, task: str, sites: Sequence[EvalSite], batch_size: int
) -> dict[str, tuple[float, int]]:
    """``site -> (primary metric, examples)`` on each site's held-out data."""
    from unicon_core.training import evaluate_task, make_loader

    metric = PRIMARY_METRIC[model.spec(task).kind]
    out = {}
    for site in sites:
        result = evaluate_task(model, task, make_loader(site.data, batch_size, shuffle=False),
                               primary_only=True)
        out[site.name] = (float(result[metric]), int(result["num_examples"]))
    return out


def weighted_value(per_site: dict[str, tuple[float, int]]) -> float:
    """Example-weighted mean of the finite per-site values (NaN if none)."""
    pairs = [(v, n) for v, n in per_site.values() if np.isfinite(v) and n > 0]
    total = sum(n for _, n in pairs)
    return sum(v * n for v, n in pairs) / total if total else float("nan")


def lr_groups(
    params: dict[str, torch.nn.Parameter], scales: dict[str, float], lr: float
) -> list[dict[str, Any]]:
    """Parameter groups with ``lr x scale`` per parameter name (scale 1 when not given)."""
    by_scale: dict[float, list[torch.nn.Parameter]] = {}
    for name, param in params.items():
        by_scale.setdefault(scales.get(name, 1.0), []).append(param)
    return [{"params": ps, "lr": lr * s} for s, ps in sorted(by_scale.items())]


def fedavg_loop(
    model: UniconModel,
    task: str,
    clients: Sequence[Client],
    eval_sites: Sequence[EvalSite],
    plan: PlanFn,
    *,
    rounds: int,
    train: TrainConfig,
    evaluate_every_round: bool = True,
    regulariser: Callable[[], torch.Tensor] | None = None,
    on_client: Callable[[str], None] | None = None,
) -> LoopResult:
    """Run ``rounds`` of FedAvg of ``plan``'s parameters over ``clients``; ``model`` ends global.

    Each client runs ``client.steps`` optimiser steps per round (``train.max_steps`` is set per
    client), seeded by (``train.seed``, client, round) exactly like a site of the real path.
    ``regulariser`` (e.g. the continual plugins' loss, ``plugins.base.CapturedLoss``) goes to
    ``train_task``; without it the call is exactly as before. ``on_client(name)`` is called
    before each client trains (the plugins learn which site they run at).
    """
    from client.site_runner import round_seed
    from unicon_core.federation.accounting import content_bytes
    from unicon_core.federation.aggregation import weighted_average
    from unicon_core.training import make_loader, train_task

    start = time.perf_counter()
    fhash = model.foundation_hash
    synthetic = any(c.synthetic for c in clients)
    records: list[dict[str, Any]] = []
    downs: list[int] = []
    ups: list[int] = []
    for r in range(rounds):
        rnd = r + 1
        p = plan(model, task, r, rounds)
        params = named(model, p.names)
        global_state = {n: t.detach().clone() for n, t in params.items()}
        states, weights, sizes = [], [], {}
        for client in clients:
            down = instruction(global_state, rnd, task, fhash)
            with torch.no_grad():
                for n, t in received(down).items():
                    params[n].copy_(t)
            if on_client is not None:
                on_client(client.name)
            seed = round_seed(train.seed, client.name, rnd)
            cfg = replace(train, seed=seed, max_steps=client.steps, epochs=10_000, progress=False)
            loader = make_loader(client.train, cfg.batch_size, shuffle=True, seed=seed)
            trained = lr_groups(params, p.lr_scale, cfg.lr) if p.lr_scale else list(params.values())
            extra = {} if regulariser is None else {"regulariser": regulariser}
            result = train_task(model, task, loader, cfg, params=trained, **extra)
            up = reply({n: t.detach() for n, t in params.items()},
                       {"num-examples": result.num_examples, "train_loss": result.loss,
                        "steps": result.steps}, client.name, task, fhash, synthetic, "trained")
            states.append({k: v.numpy() for k, v in received(up).items()})
            weights.append(float(result.num_examples))
            sizes[client.name] = {"bytes_down": content_bytes(down), "bytes_up": content_bytes(up)}
        average = weighted_average(states, weights)
        with torch.no_grad():
            for n, value in average.items():
                params[n].copy_(torch.from_numpy(np.asarray(value)))
        record: dict[str, Any] = {"round": rnd, "trained": len(p.names)}
        if evaluate_every_round or rnd == rounds:
            per_site = evaluate_sites(model, task, eval_sites, train.batch_size)
            record["per_site"] = {s: v for s, (v, _) in per_site.items()}
            record["value"] = weighted_value(per_site)
            eval_down = content_bytes(instruction(global_state, rnd, task, fhash))
            eval_up = content_bytes(reply(None, {"num-examples": 1, "metric": 0.0}, "site",
                                          task, fhash, synthetic, "evaluated"))
            for entry in sizes.values():
                entry["bytes_down"] += eval_down
                entry["bytes_up"] += eval_up
        record["sites"] = sizes
        records.append(record)
        downs += [e["bytes_down"] for e in sizes.values()]
        ups += [e["bytes_up"] for e in sizes.values()]
    return LoopResult(records, float(np.mean(downs)), float(np.mean(ups)),
                      time.perf_counter() - start)
