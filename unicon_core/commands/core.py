"""Bodies of the core CLI commands (pretrain, local training); the typer layer stays thin.

User errors are raised as the project's exceptions (``SiteValidationError``, ``UsageError``,
``ConfigError``) for :func:`unicon_core.commands.errors.user_errors` to print briefly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path


def pretrain_command(
    sites: Sequence[Path], out: Path, steps: int, mask_ratio: float, overrides: Sequence[str]
) -> str:
    """Pretrain a foundation on the sites' train splits and write it; returns its hash."""
    from unicon_core.commands.errors import UsageError, config_errors, require_dir
    from unicon_core.hydra_config import backbone_config, load_config
    from unicon_core.model import UniconModel
    from unicon_core.model.foundation import save_foundation
    from unicon_core.pretrain import PretrainConfig, pretrain, pretraining_images

    for site in sites:
        require_dir(site)
    with config_errors():
        cfg = load_config(overrides)
        backbone = replace(backbone_config(cfg), checkpoint=None)
    model = UniconModel(backbone, seed=int(cfg.seed))
    images = pretraining_images([Path(s) for s in sites])
    if not images:
        raise UsageError(
            f"none of the sites {[str(s) for s in sites]} holds images to pretrain on"
        )
    for stem in images:
        model.add_stem(stem, owner=None)
    losses = pretrain(
        model,
        {stem.key: ds for stem, ds in images.items()},
        PretrainConfig(steps=steps, mask_ratio=mask_ratio, seed=int(cfg.seed)),
    )
    return save_foundation(
        model,
        out,
        extra={
            "sites": [str(Path(s).resolve()) for s in sites],
            "split": "train",
            "steps": steps,
            "final_loss": sum(losses[-10:]) / len(losses[-10:]),
        },
    )


def train_local_command(site_dir: Path, epochs: int, overrides: Sequence[str]) -> str:
    """Train a site's task on its train split; report metrics on its val and test splits."""
    from unicon_core.commands.errors import config_errors, require_dir
    from unicon_core.data import open_site
    from unicon_core.hydra_config import backbone_config, load_config, train_config
    from unicon_core.model import UniconModel
    from unicon_core.training import evaluate_task, make_loader, train_task

    require_dir(site_dir)
    with config_errors():
        cfg = load_config(overrides)
        train = replace(train_config(cfg), epochs=epochs, max_steps=None, progress=True)
        backbone = backbone_config(cfg)
    site = open_site(site_dir)
    spec = site.task_spec
    model = UniconModel(backbone, seed=int(cfg.seed))
    model.add_task(spec)
    loader = make_loader(
        site.dataset("train", train=True), train.batch_size, shuffle=True, seed=train.seed
    )
    result = train_task(model, spec.name, loader, train)
    lines = [
        f"site {site.name} task {spec.name} ({spec.kind.value}, {spec.modality.value})"
        + (" -- SYNTHETIC DATA" if site.synthetic else " -- real data"),
        f"trained {result.steps} steps on {result.num_examples} examples, mean loss "
        f"{result.loss:.4f}",
    ]
    for split in ("val", "test"):
        data = site.dataset(split, train=False)
        if len(data) == 0:
            lines.append(f"{split}: no rows")
            continue
        metrics = evaluate_task(
            model, spec.name, make_loader(data, train.batch_size, shuffle=False)
        )
        shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
        lines.append(f"{split} (held out): {shown}")
    return "\n".join(lines)
