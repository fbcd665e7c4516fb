"""Routing accuracy of the learned router on every site's held-out split (a BENCHMARKS section).

For each site folder under ``--data-root`` the router's prototypes are built the federated way
(each site's :func:`~unicon_core.inference.prototypes.site_prototype` on its *train* split,
aggregated per task by counts), then every held-out input (``--split``, default ``test``) is
read from its raw files, exactly as ``unicon predict`` reads it, and routed with no task named.
A route is correct when it picks the task the site serves. Two columns: no question at all,
and with a question naming the site's task kind.

Usage::

    python -m simulations.routing_accuracy --data-root DEMO_DATA [--bundle BUNDLE] \\
        [--out simulations/results/routing.md]

The router's descriptor is task-agnostic (raw-input statistics), so the skills' weights do not
change routing; ``--bundle`` checks that a bundle holds a skill for every site's task.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simulations.report import shown_path

QUESTIONS = {"segmentation": "segment", "classification": "classify", "survival": "prognosis"}


def _held_out_inputs(site: Any, split: str) -> list[Any]:
    """The split's inputs as ``predict`` would load them (raw files, or the CSV row)."""
    from unicon_core.data.manifest import image_columns
    from unicon_core.inference.inputs import InputRef, LoadedInput, load_input

    spec = site.task_spec
    items = []
    for i in site.split_rows(split):
        row = site.rows[i]
        name = row.get("id") or f"{site.name}_{i + 1}"
        if spec.modality.value == "clinical":
            cells = {k: row[k] for k in spec.feature_names}
            ref = InputRef(name, [site.root / "manifest.csv"], row=cells, row_number=i + 1)
            items.append(LoadedInput(ref=ref, row=cells, columns=list(cells)))
        else:
            paths = [site.root / row[c] for c in image_columns(spec)]
            items.append(load_input(InputRef(name, paths)))
    return items


def routing_table(
    data_root: Path, bundle_dir: Path | None = None, split: str = "test", seed: int = 0
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-task routing accuracy rows and a description of the setting."""
    from unicon_core.data import open_site
    from unicon_core.inference.bundle import SiteRecord, load_bundle
    from unicon_core.inference.export import bundle_from_model, federated_summaries
    from unicon_core.inference.predict import Predictor

    site_dirs = sorted(p.parent for p in Path(data_root).glob("*/site.json"))
    if not site_dirs:
        raise FileNotFoundError(f"no site folders (with site.json) under {data_root}")
    sites = [open_site(d, seed=seed) for d in site_dirs]
    if bundle_dir is not None:
        bundle = load_bundle(bundle_dir)
        missing = sorted({s.task_spec.name for s in sites} - set(bundle.tasks))
        if missing:
            raise ValueError(f"bundle {bundle_dir} has no skill for the sites' tasks {missing}")
        model, skills = bundle.model, f"bundle {bundle_dir}"
    else:
        from unicon_core.hydra_config import backbone_config, load_config
        from unicon_core.model import UniconModel

        model = UniconModel(backbone_config(load_config([])), seed=seed)
        records: dict[str, list[SiteRecord]] = {}
        for site in sorted(sites, key=lambda s: s.task_spec.name):
            if site.task_spec.name not in model.specs:
                model.add_task(site.task_spec)
            records.setdefault(site.task_spec.name, []).append(
                SiteRecord(site.name, site.synthetic, site.metadata.source)
            )
        bundle = bundle_from_model(model, records)
        skills = "tasks from the sites' site.json (routing does not use skill weights)"
    bundle.router, stats = federated_summaries(model, sites)
    for task, (mean, std) in stats.items():
        bundle.tasks[task].feature_mean, bundle.tasks[task].feature_std = mean, std
    predictor = Predictor(bundle)
    per_task: dict[str, dict[str, Any]] = {}
    for site in sites:
        spec = site.task_spec
        row = per_task.setdefault(
            spec.name,
            {
                "task": spec.name,
                "kind": spec.kind.value,
                "modality": spec.modality.value,
                "sites": [],
                "n": 0,
                "hit": 0,
                "hit_q": 0,
                "how": Counter(),
                "synthetic": False,
            },
        )
        row["sites"].append(site.name)
        row["synthetic"] |= site.synthetic
        for item in _held_out_inputs(site, split):
            plain = predictor.decide(item)
            asked = predictor.decide(item, question=QUESTIONS[spec.kind.value])
            row["n"] += 1
            row["hit"] += plain.task == spec.name
            row["hit_q"] += asked.task == spec.name
            row["how"][plain.method.value] += 1
    setting = {
        "skills": skills,
        "split": split,
        "data_root": str(data_root),
        "prototype_counts": {t: p.count for t, p in bundle.router.items()},
    }
    return list(per_task.values()), setting


def to_markdown(rows: Sequence[dict[str, Any]], setting: dict[str, Any]) -> str:
    """The BENCHMARKS.md section."""
    lines = [
        "## Routing accuracy (learned router, held-out data)",
        "",
        f"Held-out split `{setting['split']}` of every site under "
        f"`{shown_path(setting['data_root'])}`; "
        f"skills: {setting['skills']}. Prototypes: each site's train-split "
        "`site_prototype`, averaged per task by example counts "
        f"({setting['prototype_counts']}). No task is named; a route is correct when it "
        "picks the task the site serves. Produced by `python -m simulations.routing_accuracy`.",
        "",
        "| task | kind | modality | data | sites | held-out inputs | accuracy, no question "
        "| accuracy, with question | decided by (no question) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: r["task"]):
        n = r["n"]
        acc = f"{r['hit'] / n:.3f}" if n else "n/a"
        acc_q = f"{r['hit_q'] / n:.3f}" if n else "n/a"
        how = ", ".join(f"{k} {v}" for k, v in sorted(r["how"].items()))
        data = "SYNTHETIC" if r["synthetic"] else "real"
        lines.append(
            f"| {r['task']} | {r['kind']} | {r['modality']} | {data} | {', '.join(r['sites'])} "
            f"| {n} | {acc} | {acc_q} | {how} |"
        )
    total = sum(r["n"] for r in rows)
    hits = sum(r["hit"] for r in rows)
    lines += ["", f"Overall (no question): {hits}/{total} = {hits / max(total, 1):.3f}.", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; writes the markdown section to ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, required=True, help="Folder of site folders.")
    parser.add_argument("--bundle", type=Path, default=None, help="Bundle from `unicon export`.")
    parser.add_argument("--split", default="test", choices=["val", "test"])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "routing.md",
        help="Markdown file to write (absolute path recommended).",
    )
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    rows, setting = routing_table(args.data_root.resolve(), args.bundle, args.split)
    text = to_markdown(rows, setting)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
