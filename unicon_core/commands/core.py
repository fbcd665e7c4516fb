"""Bodies of the core CLI commands (pretrain, local training); the typer layer stays thin.

User errors are raised as the project's exceptions (``SiteValidationError``, ``UsageError``,
``ConfigError``) for :func:`unicon_core.commands.errors.user_errors` to print briefly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any


def pretrain_command(
    sites: Sequence[Path],
    out: Path,
    steps: int,
    mask_ratio: float,
    overrides: Sequence[str],
    rounds: int = 0,
) -> str:
    """Pretrain a foundation on the sites' train splits and write it; returns its hash.

    ``rounds`` > 0: federated (FedAvg over the sites, ``steps`` local steps a round), no images
    pooled; 0: one pooled run of ``steps`` steps.
    """
    from unicon_core.commands.errors import UsageError, config_errors, require_dir
    from unicon_core.hydra_config import backbone_config, load_config
    from unicon_core.model import UniconModel
    from unicon_core.model.foundation import save_foundation
    from unicon_core.pretrain import (
        PretrainConfig,
        federated_pretrain,
        pooled,
        pretrain,
        pretraining_images_by_site,
    )

    for site in sites:
        require_dir(site)
    with config_errors():
        cfg = load_config(overrides)
        backbone = replace(backbone_config(cfg), checkpoint=None)
    model = UniconModel(backbone, seed=int(cfg.seed))
    by_site = pretraining_images_by_site([Path(s) for s in sites])
    if not by_site:
        raise UsageError(
            f"none of the sites {[str(s) for s in sites]} holds images to pretrain on"
        )
    for stem in sorted({s for datasets in by_site.values() for s in datasets}, key=str):
        model.add_stem(stem, owner=None)
    settings = PretrainConfig(steps=steps, mask_ratio=mask_ratio, seed=int(cfg.seed))
    if rounds > 0:
        losses = federated_pretrain(
            model,
            {site: {s.key: ds for s, ds in d.items()} for site, d in by_site.items()},
            settings,
            rounds,
        )
    else:
        losses = pretrain(model, {s.key: ds for s, ds in pooled(by_site).items()}, settings)
    return save_foundation(
        model,
        out,
        extra={
            "sites": [str(Path(s).resolve()) for s in sites],
            "split": "train",
            "steps": steps,
            "federated_rounds": rounds,
            "final_loss": sum(losses[-10:]) / len(losses[-10:]),
        },
    )


def train_local_command(
    site_dir: Path,
    epochs: int | None,
    overrides: Sequence[str],
    bundle_dir: Path | None = None,
) -> str:
    """Train a site's task on its train split; report metrics on its val and test splits.

    ``epochs`` None keeps the ``train`` config's budget (epochs and ``max_steps``: what one
    federated round trains); a number trains that many passes. ``bundle_dir`` writes the
    trained skill as a bundle that ``unicon predict`` loads.
    """
    from unicon_core.commands.errors import config_errors, require_dir
    from unicon_core.data import open_site
    from unicon_core.hydra_config import backbone_config, load_config, train_config
    from unicon_core.model import UniconModel
    from unicon_core.training import evaluate_task, make_loader, train_task

    require_dir(site_dir)
    with config_errors():
        cfg = load_config(overrides)
        train = replace(train_config(cfg), progress=True)
        if epochs is not None:
            train = replace(train, epochs=epochs, max_steps=None)
        backbone = backbone_config(cfg)
    site = open_site(site_dir)
    if not site.split_rows("train"):
        from unicon_core.commands.errors import UsageError

        raise UsageError(f"site {site.name} has no train rows (an evaluation-only site, e.g. "
                         "an external validation hospital): it cannot train; give it to a "
                         "federation, or `unicon predict` a bundle on its files")
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
    if bundle_dir is not None:
        write_local_bundle(model, site, cfg, result.num_examples, result.steps, bundle_dir)
        lines.append(f"wrote bundle {bundle_dir} (unicon predict --bundle {bundle_dir} ...)")
    return "\n".join(lines)


def write_local_bundle(
    model: Any, site: Any, cfg: Any, num_examples: int, steps: int, bundle_dir: Path
) -> Path:
    """A bundle of a locally trained skill: the site as provenance, its train-split router
    statistics, OOD thresholds from its val split (as ``unicon export`` does for a run)."""
    from unicon_core.data.transforms import PreprocessConfig
    from unicon_core.inference.bundle import SiteRecord, save_bundle
    from unicon_core.inference.export import bundle_from_model, federated_summaries
    from unicon_core.inference.ood import calibrate_ood

    model.to("cpu")
    router, feature_stats = federated_summaries(model, [site])
    ood = calibrate_ood(router, [site]) if router else {}
    record = SiteRecord(site.name, bool(site.synthetic), "unicon train (one site, no federation)",
                        num_examples=num_examples)
    bundle = bundle_from_model(
        model,
        {site.task_spec.name: [record]},
        preprocess=PreprocessConfig.from_mapping(dict(cfg.get("preprocess") or {})),
        router=router,
        feature_stats=feature_stats,
        source={"command": "unicon train", "site": site.name, "steps": steps},
        ood=ood,
    )
    return save_bundle(bundle, bundle_dir)
