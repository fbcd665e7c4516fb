"""Warm SuperExec for a site: answer each message without re-importing torch, MONAI and peft.

Flower 1.41 runs every message a SuperNode receives in a fresh ``flwr-clientapp`` process,
which imports the app and its libraries from scratch: torch, MONAI and peft (which pulls in
transformers) cost several seconds per message on a small CPU. This module is a drop-in
replacement for the ``flower-superexec`` that a SuperNode started with ``--isolation process``
expects next to it:

1. at start it imports the heavy third-party libraries once (:data:`PRELOAD`); never the
   project's own modules, so every message still runs the code of the FAB the researcher
   submitted, exactly as with Flower's own executor;
2. it runs Flower's SuperExec loop unchanged (``run_superexec``: poll the SuperNode's Runtime
   API, acquire a task, launch it), with one executor swapped in: :class:`ForkExecutor`, which
   starts each ClientApp task by ``os.fork()`` of this warm process, instead of spawning a new
   interpreter; the child runs the task under the site's own guard
   (``deploy/site_guard.py``: Flower's ``run_clientapp`` steps, with the FAB's ClientApp in a
   further forked process, the FAB's signature checked against ``--trusted-entities`` and
   every reply checked before it is pushed).

The child is a separate process as before (a crash or ``os._exit`` in a task cannot take the
executor down, memory is released when the task ends) and watches the executor's PID like a
normal ``flwr-clientapp``. This file lives outside the app's packages on purpose: the warm
parent imports nothing of ``client``/``server``/``unicon_core``, so the child loads them from
the FAB. Nothing runs at import; the command is ``python deploy/warm_executor.py
--runtime-api-address 127.0.0.1:<supernode --port> --parent-pid <pid> [--trusted-entities
FILE]`` (``deploy/start_site.sh`` does this).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any

#: Third-party libraries a unicon ClientApp needs, imported once in the warm parent. Importing
#: them starts no threads, so forking afterwards is safe.
PRELOAD: tuple[str, ...] = (
    "numpy",
    "torch",
    "monai.networks.blocks",
    "peft",
    "safetensors",
    "hydra",
    "omegaconf",
    "pandas",
    "sklearn.metrics",
    "sksurv.metrics",
    "torchsurv.loss.cox",
    "opacus",
    "PIL.Image",
    "nibabel",
    "flwr.supernode.runtime.run_clientapp",
)


def preload(modules: Sequence[str] = PRELOAD) -> dict[str, float]:
    """Import ``modules`` in order; returns seconds spent per module (missing ones skipped)."""
    spent: dict[str, float] = {}
    for name in modules:
        start = time.perf_counter()
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        spent[name] = time.perf_counter() - start
    return spent


def _fork_executor_class() -> type:
    """:class:`ForkExecutor`, built lazily so importing this module imports no Flower internals."""
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor
    from flwr.supercore.superexec.executor.types import ExecutionSpec, LaunchResult
    from flwr.supercore.tls import validate_and_resolve_root_certificates

    class ForkExecutor(SubprocessExecutor):
        """Flower's subprocess executor, except ClientApp tasks start by forking this process."""

        def __init__(self, trusted_entities: dict[str, str] | None = None) -> None:
            self.children: set[int] = set()
            self.trusted_entities = trusted_entities

        def launch(self, spec: ExecutionSpec) -> LaunchResult:
            """Fork a child running ``run_clientapp`` for a ClientApp task (others: as Flower)."""
            if spec.task_type != TaskType.CLIENT_APP or spec.runtime_dependency_install:
                return super().launch(spec)
            certificates = validate_and_resolve_root_certificates(
                spec.root_certificates_path, spec.insecure
            )
            pid = os.fork()
            if pid == 0:  # child: never returns into the executor loop
                os._exit(_run_task(spec, certificates, self.trusted_entities))
            self.children.add(pid)
            return LaunchResult.accepted()

        def reconcile(self) -> None:
            """Reap finished children so none lingers as a zombie."""
            for pid in list(self.children):
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    done = pid
                if done:
                    self.children.discard(pid)

        def close(self) -> None:
            """Reap what has finished; running tasks stop themselves when the parent exits."""
            self.reconcile()

    return ForkExecutor


def _site_guard() -> Any:
    """``deploy/site_guard.py`` of this checkout (a script's sibling, or ``deploy.site_guard``)."""
    if __package__:
        return importlib.import_module(f"{__package__}.site_guard")
    return importlib.import_module("site_guard")


def _run_task(spec: Any, certificates: bytes | None,
              trusted_entities: dict[str, str] | None = None) -> int:
    """Child side of a fork: run one ClientApp task under the site's guard; an exit code."""
    try:
        _site_guard().run_guarded_clientapp(
            runtime_api_address=spec.runtime_api_address,
            token=spec.token,
            insecure=spec.insecure,
            certificates=certificates,
            parent_pid=spec.parent_pid,
            trusted_entities=trusted_entities,
        )
    except SystemExit as done:  # flwr_exit ends every task with sys.exit(code)
        return done.code if isinstance(done.code, int) else 1
    except BaseException:  # a child must never unwind into the parent's loop
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return 0


def serve(runtime_api_address: str, parent_pid: int | None, insecure: bool,
          root_certificates: str | None, trusted_entities: str | None = None) -> None:
    """Preload, then run Flower's SuperExec loop with the fork executor (never returns)."""
    from flwr.supercore import log

    superexec = importlib.import_module("flwr.supercore.superexec.run_superexec")

    trusted = None
    if trusted_entities is not None:  # fail at start, not at the first message
        trusted = _site_guard().load_trusted_entities(trusted_entities)
        log(20, "warm executor: runs only apps signed by %s", ", ".join(sorted(trusted)))
    spent = preload()
    log(20, "warm executor: preloaded %s in %.1f s", ", ".join(spent), sum(spent.values()))
    executor = _fork_executor_class()(trusted)
    # The one seam: Flower's loop asks its factory for the executor; hand it ours.
    superexec.get_executor = lambda *args, **kwargs: executor
    superexec.run_superexec(
        runtime_api_address=runtime_api_address,
        insecure=insecure,
        root_certificates_path=root_certificates,
        parent_pid=parent_pid,
        runtime_dependency_install=False,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python deploy/warm_executor.py --runtime-api-address HOST:PORT``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime-api-address", required=True,
                        help="the SuperNode's Runtime API (its --host/--port), e.g. 127.0.0.1:9094")
    parser.add_argument("--parent-pid", type=int, default=None,
                        help="exit when this process (the SuperNode) exits")
    parser.add_argument("--root-certificates", default=None,
                        help="CA of the Runtime API when the SuperNode serves it with TLS")
    parser.add_argument("--trusted-entities", default=None,
                        help="YAML of the Ed25519 keys whose signature an app must carry "
                             "(flower-supernode's format); without it any app runs")
    args = parser.parse_args(argv)
    try:
        serve(args.runtime_api_address, args.parent_pid, insecure=args.root_certificates is None,
              root_certificates=args.root_certificates, trusted_entities=args.trusted_entities)
    except _site_guard().SiteGuardError as err:  # the site's own files: say which and why
        parser.exit(2, f"error: {err}\n")


if __name__ == "__main__":
    main()
