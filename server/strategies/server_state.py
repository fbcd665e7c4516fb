"""The per-task strategy state a resumed run needs beyond the skills, as named arrays.

Each task's server optimiser state (``opt/<task>/m|v/<key>``, ``opt/<task>/steps``) and each
site's FedSA B factors (``fedsa/<site>/<key>``) go into the checkpoint. Not SCAFFOLD's ``c``:
the sites' own ``c_i`` live in their node state for one Flower run, so a resumed run's sites
start theirs at zero, and ``c`` restarts at zero with them (their mean); a restored ``c``
would stay offset by its old value for the rest of the run, since ``c`` only moves by the
sites' changes. Downlink copies are not kept either: a resumed run is a new Flower run, whose
sites hold nothing yet (they get the whole skill first).

Kept apart from :class:`~server.strategies.per_task_fedavg.PerTaskFedAvg` (which calls it
from ``server_state`` and ``load_server_state``): the checkpoint's layout in one place.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from unicon_core.federation.config import TaskFederation
from unicon_core.federation.server_opt import ServerOptimizer

#: Key prefixes of the strategy's own state in a checkpoint
OPT_STATE, FEDSA_STATE, CONTROL_STATE = "opt", "fedsa", "scaffold"


def dump_state(server_opts: Mapping[str, ServerOptimizer],
               personal: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The server optimisers' state per task and the FedSA B factors per site, by name."""
    out: dict[str, np.ndarray] = {}
    for task, opt in sorted(server_opts.items()):
        out[f"{OPT_STATE}/{task}/steps"] = np.asarray([opt.steps], np.int64)
        for part, arrays in (("m", opt.m), ("v", opt.v)):
            out.update({f"{OPT_STATE}/{task}/{part}/{k}": np.asarray(v)
                        for k, v in arrays.items()})
    for site, arrays in sorted(personal.items()):
        out.update({f"{FEDSA_STATE}/{site}/{k}": v for k, v in arrays.items()})
    return out


@dataclass
class Restored:
    """:func:`restore_state`'s result: what to restore, and what was not (by ``kind/owner``)."""

    server_opts: dict[str, ServerOptimizer] = field(default_factory=dict)
    personal: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    #: state of a task that no longer uses it, or of a site no longer in the run
    dropped: set[str] = field(default_factory=set)
    #: SCAFFOLD tasks whose saved ``c`` (from before it was left out) restarts at zero
    restarted: set[str] = field(default_factory=set)


def restore_state(state: Mapping[str, np.ndarray], task_of: Mapping[str, str],
                  options: Callable[[str], TaskFederation]) -> Restored:
    """:func:`dump_state`'s arrays back, for the run's sites (``task_of``: site -> task) and
    their tasks' current ``options``; raises on a name of no known kind."""
    tasks = set(task_of.values())
    out = Restored()
    personal: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    for name, value in state.items():
        kind, owner, rest = [*name.split("/", 2), "", ""][:3]
        if kind == OPT_STATE and owner in tasks and options(owner).server_opt != "fedavg":
            opt = out.server_opts.setdefault(owner, ServerOptimizer(
                options(owner).server_opt_config()))
            if rest == "steps":
                opt.steps = int(np.asarray(value).reshape(-1)[0])
            elif rest[:2] in ("m/", "v/"):
                getattr(opt, rest[0])[rest[2:]] = np.asarray(value)
            else:
                raise ValueError(f"checkpoint state {name!r} is not optimiser state")
        elif kind == FEDSA_STATE and owner in task_of and options(
                task_of[owner]).lora_rule == "fedsa":
            personal[owner][rest] = np.asarray(value)
        elif kind == CONTROL_STATE and owner in tasks and options(owner).scaffold:
            out.restarted.add(owner)
        elif kind in (OPT_STATE, FEDSA_STATE, CONTROL_STATE):
            out.dropped.add(f"{kind}/{owner}")
        else:
            raise ValueError(f"checkpoint state {name!r}: unknown kind {kind!r}")
    out.personal = dict(personal)
    return out
