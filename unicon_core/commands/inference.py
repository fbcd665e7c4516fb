"""Bodies of ``unicon export`` and ``unicon predict``; the typer layer stays thin.

Both return a process exit code: 0 on success, 1 when something named in the printed messages
failed (a predict run keeps going past a bad input and reports every one). A usage error (a
run or bundle folder that does not exist, a bad ``--device``) raises
:class:`~unicon_core.commands.errors.UsageError` (exit 2, as for every command).
"""

from __future__ import annotations

import sys
from pathlib import Path


def export_command(run_dir: Path, bundle_dir: Path) -> int:
    """Write the bundle of a run folder's latest checkpoint (``UsageError`` if ``run_dir`` is
    not a folder)."""
    from unicon_core.commands.errors import require_dir
    from unicon_core.inference.bundle import BundleError, read_manifest
    from unicon_core.inference.export import export_run

    require_dir(run_dir, "run folder")
    try:
        out = export_run(run_dir, bundle_dir)
    except (BundleError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    manifest = read_manifest(out)
    print(
        f"wrote bundle {out} (round {manifest['source'].get('round')}, backbone "
        f"{manifest['backbone']['hash'][:12]}...)"
    )
    for name, info in manifest["tasks"].items():
        sites = ", ".join(s["site"] for s in info["trained_on"])
        tag = " -- SYNTHETIC DATA" if info["synthetic"] else ""
        print(f"  {name}: {info['spec']['kind']} on {info['spec']['modality']}, sites {sites}{tag}")
    print(f"  router: {manifest['source'].get('router')}")
    return 0


def predict_command(
    bundle: Path,
    out_dir: Path,
    inputs: list[Path],
    task: str | None,
    question: str | None,
    device: str = "auto",
    refuse_ood: bool = False,
) -> int:
    """Route every input to a skill, run it, write masks/probabilities/risks and JSON summaries.

    Images are read under the limits of the bundle's tasks (sizes checked from headers). No
    file under ``out_dir`` is ever replaced: if any output of this run is already there, the
    run stops before predicting, naming it. The model runs on ``device`` (auto, cpu, cuda or
    cuda:<index>); a bad ``device`` or a ``bundle`` that is not a folder raises
    :class:`~unicon_core.commands.errors.UsageError`. ``refuse_ood``: an input flagged
    ``in_distribution: false`` gets no output files; it is listed under ``refused`` in the
    run summary (and printed), never dropped silently.
    """
    import json

    from tqdm.auto import tqdm

    from unicon_core.commands.errors import UsageError, require_dir
    from unicon_core.data.readers import ImageLimits
    from unicon_core.inference.bundle import BundleError, load_bundle
    from unicon_core.inference.inputs import InputError, collect_inputs, load_input
    from unicon_core.inference.predict import (
        SUMMARY_FILE,
        Predictor,
        existing_outputs,
        predict_device,
        write_new,
    )
    from unicon_core.inference.routing import RoutingError

    out_dir = Path(out_dir)
    try:
        target = predict_device(device)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    require_dir(bundle, "bundle folder")
    try:
        loaded = load_bundle(bundle)
        refs = collect_inputs(list(inputs))
        if question:
            from unicon_core.inference.routing import kind_from_question

            kind_from_question(question)
        limits = ImageLimits.for_tasks(entry.spec for entry in loaded.tasks.values())
    except (BundleError, InputError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    there = existing_outputs(out_dir, [ref.name for ref in refs])
    if there:
        names = ", ".join(p.name for p in there[:5]) + (" ..." if len(there) > 5 else "")
        print(
            f"error: {out_dir} already holds {len(there)} file(s) this run would write "
            f"({names}); predict never overwrites earlier results: choose a new --out folder "
            "or move them away",
            file=sys.stderr,
        )
        return 1
    predictor = Predictor(loaded, target)
    summaries, errors, refused = [], [], []
    show_bar = len(refs) > 1 or any(Path(p).is_dir() for p in inputs)
    for ref in tqdm(refs, desc="predict", unit="input", disable=not show_bar):
        try:
            prediction = predictor.predict(load_input(ref, limits), task=task, question=question)
            flag = prediction.extra.get("ood") or {}
            if refuse_ood and flag.get("in_distribution") is False:
                refused.append(
                    {"input": ref.label, "task": prediction.decision.task, "ood": flag}
                )
                print(
                    f"refused: {ref.label}: out of distribution for {prediction.decision.task} "
                    f"(score {flag['score']:.3g} > threshold {flag['threshold']:.3g})",
                    file=sys.stderr,
                )
                continue
            summary = predictor.write(prediction, out_dir)
        except (InputError, RoutingError, ValueError) as exc:
            errors.append({"input": ref.label, "error": str(exc)})
            print(f"error: {exc}", file=sys.stderr)
            continue
        summaries.append(summary)
        if not show_bar:  # a folder's per-input lines are in summary.json
            tag = " [SYNTHETIC-DATA SKILL]" if summary["trained_on_synthetic_data"] else ""
            print(f"{ref.label}: {summary['task']} ({summary['routing']['method']}){tag}")
    out_dir.mkdir(parents=True, exist_ok=True)
    run = {
        "bundle": str(bundle),
        "predictions": summaries,
        "errors": errors,
        "refused_out_of_distribution": refused,
    }
    try:
        write_new(out_dir / SUMMARY_FILE, json.dumps(run, indent=2) + "\n")
    except ValueError as exc:  # appeared while the run went on
        print(f"error: {exc}", file=sys.stderr)
        return 1
    flagged = sum(1 for s in summaries if s.get("in_distribution") is False)
    print(
        f"{len(summaries)} prediction(s) ({flagged} flagged out of distribution), "
        f"{len(refused)} refused as out of distribution, {len(errors)} error(s); see "
        f"{out_dir / SUMMARY_FILE}"
    )
    return 1 if errors else 0
