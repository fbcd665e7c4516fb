"""Egress guard: the last gate before a reply leaves a site.

Only a task's skill tensors may leave, never an image, mask, label or feature. The guard
compares every outgoing record with the instruction that came in:

* arrays only in the ``skill`` ArrayRecord, only under keys the server sent for this task (the
  ClientApp loads those strictly into the model, so they are exactly the task's skill keys),
  each with the shape it came with, a skill prefix (``adapter.``/``head.``/``stem.``) and a
  floating-point dtype; an instruction without arrays (a query) lets no array out;
* an encoded update (issue #14) only in the ``delta`` ArrayRecord, each array named after one
  of those keys: the delta itself with the key's shape (float, or int8 beside its
  ``<key>#scale``), a 1-D float ``<key>#scale`` of at most one value per row, or a top-k pair
  (1-D float values and 1-D integer ``<key>#idx``, each no longer than the tensor);
* router summaries only in the ``summary`` ArrayRecord, only under the known summary keys, as
  1-D floating-point vectors of bounded length, and only when the reply's example count is at
  least ``MIN_SUMMARY_COUNT`` (moments over a site's train split, never a row);
* metrics only as scalar numbers (a list could carry per-patient values);
* config values only as short scalars (no bytes, no lists).

Anything else turns the reply into an error message naming each offending key, so the
violation is loud on both ends and nothing of it is transmitted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from logging import ERROR

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode
from flwr.supercore import log

from unicon_core.federation.compression import INDEX, SCALE
from unicon_core.federation.protocol import NUM_EXAMPLES, RecordKey, SummaryKey
from unicon_core.federation.summaries import MAX_SUMMARY_LENGTH, MIN_SUMMARY_COUNT
from unicon_core.keys import SkillPart

FLOAT_DTYPES = frozenset({"float16", "bfloat16", "float32", "float64"})


class EgressGuard:
    """Client mod refusing any outgoing array that is not one of the task's skill tensors.

    Parameters
    ----------
    max_config_chars : int (default: 16384)
        Longest string a reply's ConfigRecord may carry (a task spec as JSON fits easily).
    skill_record : str (default: ``"skill"``)
        Name of the ArrayRecord holding the skill, in instruction and reply alike.
    """

    def __init__(
        self, max_config_chars: int = 16384, skill_record: str = RecordKey.SKILL.value
    ) -> None:
        if max_config_chars < 1:
            raise ValueError(f"max_config_chars must be >= 1, got {max_config_chars}")
        if not skill_record:
            raise ValueError("skill_record must be a non-empty record name")
        self.max_config_chars = max_config_chars
        self.skill_record = skill_record
        self.prefixes = tuple(f"{part.value}." for part in SkillPart)

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        """Run the app, then let the reply out only if every record passes the checks."""
        allowed = self.allowed_arrays(msg)
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        problems = self.problems(reply, allowed)
        if not problems:
            return reply
        reason = "egress guard refused the reply: " + "; ".join(problems)
        log(ERROR, reason)
        return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=reason), reply_to=msg)

    def allowed_arrays(self, msg: Message) -> dict[str, tuple[int, ...]]:
        """Key -> shape of the skill tensors the instruction carried (empty for none)."""
        if not msg.has_content() or self.skill_record not in msg.content.array_records:
            return {}
        record = msg.content.array_records[self.skill_record]
        return {key: tuple(arr.shape) for key, arr in record.items()}

    def problems(self, reply: Message, allowed: Mapping[str, tuple[int, ...]]) -> list[str]:
        """Every reason the reply may not leave (empty list: it may)."""
        out: list[str] = []
        for name, record in reply.content.items():
            if isinstance(record, ArrayRecord) and name == RecordKey.SUMMARY.value:
                out += self._summary_problems(reply, record)
            elif isinstance(record, ArrayRecord) and name == RecordKey.DELTA.value:
                out += self._delta_problems(record, allowed)
            elif isinstance(record, ArrayRecord):
                out += self._array_problems(name, record, allowed)
            elif isinstance(record, MetricRecord):
                out += [
                    f"metric {name}.{k} is not a scalar number"
                    for k, v in record.items()
                    if isinstance(v, bool) or not isinstance(v, (int, float))
                ]
            elif isinstance(record, ConfigRecord):
                out += self._config_problems(name, record)
            else:  # pragma: no cover - RecordDict only holds the three record types
                out.append(f"record {name!r} of type {type(record).__name__} is not allowed")
        return out

    def _array_problems(
        self, name: str, record: ArrayRecord, allowed: Mapping[str, tuple[int, ...]]
    ) -> list[str]:
        if name != self.skill_record:
            return [f"arrays may only leave in the {self.skill_record!r} record, not {name!r}"]
        out = []
        for key, arr in record.items():
            if key not in allowed:
                out.append(f"array {key!r} is not a skill tensor of this task")
            elif tuple(arr.shape) != allowed[key]:
                out.append(f"array {key!r} has shape {tuple(arr.shape)}, not {allowed[key]}")
            elif not key.startswith(self.prefixes):
                out.append(f"array {key!r} lacks a skill prefix {self.prefixes}")
            elif arr.dtype not in FLOAT_DTYPES:
                out.append(f"array {key!r} has dtype {arr.dtype}, skills are floating point")
        return out

    def _delta_problems(
        self, record: ArrayRecord, allowed: Mapping[str, tuple[int, ...]]
    ) -> list[str]:
        out = []
        for key, arr in record.items():
            base = key.removesuffix(SCALE).removesuffix(INDEX)
            if base not in allowed or not base.startswith(self.prefixes):
                out.append(f"array {key!r} is not an update of a skill tensor of this task")
                continue
            shape, size = tuple(arr.shape), math.prod(allowed[base])
            flat = len(shape) == 1 and shape[0] <= size
            if key.endswith(INDEX):
                ok = flat and arr.dtype in ("int32", "int64")
            elif key.endswith(SCALE):
                rows = allowed[base][0] if allowed[base] else 1
                ok = len(shape) == 1 and shape[0] <= rows and arr.dtype in FLOAT_DTYPES
            elif arr.dtype == "int8":
                ok = shape == allowed[base] and base + SCALE in record
            else:
                ok = (shape == allowed[base] or (flat and base + INDEX in record)) and (
                    arr.dtype in FLOAT_DTYPES)
            if not ok:
                out.append(f"array {key!r} ({arr.dtype}, shape {shape}) does not encode an "
                           f"update of shape {allowed[base]}")
        return out

    def _summary_problems(self, reply: Message, record: ArrayRecord) -> list[str]:
        known = {k.value for k in SummaryKey}
        metrics = reply.content.metric_records.get(RecordKey.METRICS.value)
        count = metrics.get(NUM_EXAMPLES) if metrics is not None else None
        out = []
        if not isinstance(count, (int, float)) or count < MIN_SUMMARY_COUNT:
            out.append(f"a summary needs >= {MIN_SUMMARY_COUNT} examples behind it, got {count}")
        for key, arr in record.items():
            if key not in known:
                out.append(f"summary array {key!r} is not one of {sorted(known)}")
            elif len(arr.shape) != 1 or arr.shape[0] > MAX_SUMMARY_LENGTH:
                out.append(f"summary array {key!r} has shape {tuple(arr.shape)}, not a vector "
                           f"of at most {MAX_SUMMARY_LENGTH}")
            elif arr.dtype not in FLOAT_DTYPES:
                out.append(f"summary array {key!r} has dtype {arr.dtype}, not floating point")
        return out

    def _config_problems(self, name: str, record: ConfigRecord) -> list[str]:
        out = []
        for key, value in record.items():
            if isinstance(value, (bytes, list)):
                out.append(f"config {name}.{key} carries {type(value).__name__}, only scalars")
            elif isinstance(value, str) and len(value) > self.max_config_chars:
                out.append(f"config {name}.{key} is {len(value)} characters long "
                           f"(at most {self.max_config_chars})")
        return out
