"""The continual part of the suite: every continual strategy over the stages, for each seed."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from unicon_core.config import BackboneConfig
from unicon_core.continual.baselines import CONTINUAL_STRATEGIES, IsolatedSkills
from unicon_core.continual.runner import RunContext, open_sites, run_continual
from unicon_core.continual.stages import ContinualConfig
from unicon_flower.continual import make_context

log = logging.getLogger(__name__)


def run_strategies(
    cfg: ContinualConfig, backbone: BackboneConfig, overrides: list[str], run_dir: Path,
    seed: int, names: list[str],
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Each named strategy through every stage with ``seed``; returns results and the
    isolated strategy's final skills (for the modality study)."""
    sites = open_sites(cfg, seed)
    out: dict[str, dict[str, Any]] = {}
    isolated_skills: dict[str, Any] = {}
    for name in names:
        ctx: RunContext = make_context(cfg, seed, backbone, run_dir / f"{name}_seed{seed}",
                                       overrides, sites)
        strategy = CONTINUAL_STRATEGIES[name]()
        log.info("continual: %s, seed %d", name, seed)
        result = run_continual(strategy, ctx)  # type: ignore[arg-type]
        out[name] = result.to_dict()
        (ctx.run_dir / "continual.json").write_text(json.dumps(out[name], indent=1))
        if isinstance(strategy, IsolatedSkills) and type(strategy) is IsolatedSkills:
            isolated_skills = dict(strategy.skills)
    return out, isolated_skills


def run_on_foundation(
    cfg: ContinualConfig, backbone: BackboneConfig, overrides: list[str], run_dir: Path,
    seed: int,
) -> dict[str, Any]:
    """Isolated skills on a backbone first trained by full-model FedAvg on the first task."""
    from dataclasses import replace

    from unicon_core.continual.foundation import federated_foundation

    sites = open_sites(cfg, seed)
    stage = make_context(cfg, seed, backbone, run_dir, overrides, sites)
    path, loop = federated_foundation(stage, list(cfg.stages[0].sites),
                                      run_dir / f"foundation_seed{seed}.safetensors")
    fb = replace(backbone, checkpoint=str(path))
    ctx = make_context(cfg, seed, fb, run_dir / f"isolated_foundation_seed{seed}",
                       [*overrides, f"backbone.checkpoint='{path}'"])
    result = run_continual(IsolatedSkills(), ctx).to_dict()
    result["foundation"] = {"path": str(path), "wall_s": loop.wall_s,
                            "bytes_per_site_round": loop.bytes_down_per_site_round
                            + loop.bytes_up_per_site_round}
    return result
