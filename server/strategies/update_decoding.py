"""The update a train reply carries, decoded against the skill its site was sent.

A task that takes deltas (issue #14) must get an encoded ``local - sent`` under
``RecordKey.DELTA`` and never a whole skill; a task that does not gets the whole skill under
``RecordKey.SKILL``. Every array's header (its shape) is checked against the layout the site
was sent before any of its bytes are decoded, so a reply cannot make the server allocate or
decode more than the skill it sent; the decoded update then goes through
:func:`~unicon_core.federation.replies.check_reply` like any other. Under FFA-LoRA the A
factors are frozen at their shared initialisation: a site need not send them, and the server
fills them in from the skill it sent.

A SCAFFOLD task's train reply also carries the site's control-variate change, checked the
same way against the trained layout (:func:`decode_control`).

Kept apart from :class:`~server.strategies.per_task_fedavg.PerTaskFedAvg` so each refusal can
be tested on hand-made records, without a Flower round.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, RecordDict

from unicon_core.federation.compression import (
    INDEX,
    SCALE,
    Codec,
    apply_delta,
    decode_delta,
    from_wire,
    packed_sizes,
)
from unicon_core.federation.config import TaskFederation
from unicon_core.federation.lora_rules import a_keys
from unicon_core.federation.protocol import RecordKey, Status
from unicon_core.federation.replies import Rejected, digest
from unicon_core.federation.scaffold import control_problem
from unicon_flower.records import record_to_arrays


@dataclass(frozen=True)
class Decoded:
    """A reply's update (None: it carries none, e.g. a site whose privacy budget is spent)
    and, for a delta, the digest of its encoded payload (replays are refused on it)."""

    state: dict[str, np.ndarray] | None
    delta_digest: str = ""


def decode_update(content: RecordDict, status: object, reference: dict[str, np.ndarray],
                  options: TaskFederation, task: str) -> Decoded | Rejected:
    """The skill a train reply stands for, or why it is refused (may raise on damaged
    bytes: the caller rejects those as undecodable). ``status``: the reply's declared status;
    ``reference``: the skill the site was sent."""
    skill = content.array_records.get(RecordKey.SKILL.value)
    frozen = a_keys(reference) if options.lora_rule == "ffa" else set()
    if options.delta:
        encoded = content.array_records.get(RecordKey.DELTA.value)
        if skill is not None or (encoded is None and status == Status.TRAINED.value):
            return Rejected(f"task {task} takes deltas ({options.codec}), the reply carries "
                            "none")
        if encoded is None:
            return Decoded(None)
        trained = {k: v for k, v in reference.items() if k not in frozen}
        codec = options.codec_spec()
        problem = _delta_header_problem(encoded, trained, codec)
        if problem:
            return Rejected(problem)
        payload = from_wire(record_to_arrays(encoded), trained, codec)
        deltas = decode_delta(payload, trained, codec)
        state = {**apply_delta(trained, deltas), **{k: reference[k] for k in frozen}}
        return Decoded(state, "delta:" + digest(payload))
    if skill is None:
        return Decoded(None)
    for key, arr in skill.items():  # the header before any bytes are decoded
        if key in reference and tuple(arr.shape) != reference[key].shape:
            return Rejected(f"{key}: shape {tuple(arr.shape)} != {reference[key].shape}")
    state = record_to_arrays(skill)
    state.update({k: reference[k] for k in frozen if k not in state})
    return Decoded(state)


def _delta_header_problem(encoded: ArrayRecord, trained: dict[str, np.ndarray],
                          codec: Codec) -> str:
    """Why an encoded delta's array headers do not fit the trained layout ('' when they do):
    packed, one flat array per dtype of the layout's size; else per tensor its own shape, or
    1-D and no longer than the tensor for scales, indices and top-k values."""
    sizes = packed_sizes(trained, codec) if codec.packed else {}
    for key, arr in encoded.items():
        if codec.packed:
            fits = key in sizes and tuple(arr.shape) == (sizes[key],)
        else:
            base = key.removesuffix(SCALE).removesuffix(INDEX)
            size = int(np.prod(trained[base].shape)) if base in trained else -1
            flat = base != key or codec.kind == "topk"
            fits = (len(arr.shape) == 1 and arr.shape[0] <= size) if flat else (
                base in trained and tuple(arr.shape) == trained[base].shape)
        if not fits:
            return f"{key}: shape {tuple(arr.shape)} does not fit the skill"
    return ""


def decode_control(content: RecordDict, layout: dict[str, np.ndarray], *, scaffold: bool,
                   updated: bool, task: str) -> tuple[dict[str, np.ndarray] | None, str]:
    """A train reply's SCAFFOLD ``control`` record: ``(change, '')``, or ``(None, why it is
    refused)``. Required with an update (``updated``) when the task uses SCAFFOLD, refused
    otherwise; checked against ``layout`` (the trained part of the skill sent) header first.
    ``(None, '')``: no record, and none was due."""
    record = content.array_records.get(RecordKey.CONTROL.value)
    if not scaffold or not updated:
        return None, "" if record is None else (
            f"the reply carries control variates task {task} did not ask for")
    if record is None:
        return None, f"task {task} uses SCAFFOLD: the reply carries no control variate change"
    for key, arr in record.items():  # the header before any bytes are decoded
        if key not in layout or tuple(arr.shape) != layout[key].shape:
            return None, f"control {key[:80]}: not a trained parameter of this shape"
    change = record_to_arrays(record)
    problem = control_problem(change, layout)
    return (None, problem) if problem else (change, "")
