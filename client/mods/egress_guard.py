"""Egress guard (FAB side): the app's own last gate before a reply leaves a site.

Defence in depth only: this mod ships inside the researcher's FAB, so a hostile or careless app
can leave it out. What a deployed site enforces is the site's own check, run by the executor the
site installed (``deploy/site_guard.py``) on the same rules
(:mod:`unicon_core.federation.egress`), there with the site's own skill layout, metric
allow-list and reply schema. Here the rules come from the instruction that came in:

* arrays only in the ``skill`` ArrayRecord, only under keys the server sent for this task, each
  with the shape it came with, a skill prefix and a floating-point dtype, and bytes that decode
  to exactly that array with finite values; an instruction without arrays (a query) lets no
  array out;
* an encoded update (issue #14) only in the ``delta`` ArrayRecord, each array encoding one of
  those keys' update;
* router summaries only in the ``summary`` ArrayRecord, only under the known summary keys, as
  1-D floating-point vectors of bounded length, over at least ``MIN_SUMMARY_COUNT`` examples;
* metrics only as scalar numbers; config values only as short scalars (no bytes, no lists).

Anything else turns the reply into an error message naming each offending key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from logging import ERROR

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode
from flwr.supercore import log

from unicon_core.federation.config import research_allowed
from unicon_core.federation.egress import ArrayView, EgressRules, ReplyView, reply_problems
from unicon_core.federation.protocol import RecordKey

__all__ = ["EgressGuard", "array_view", "reply_view"]


def array_view(arr: Array) -> ArrayView:
    """An :class:`ArrayView` of a Flower ``Array``: header, payload size, decoded bytes."""
    try:
        value, error = arr.numpy(), ""
    except Exception as err:
        value, error = None, f"{type(err).__name__}: {err}"
    return ArrayView(dtype=str(arr.dtype), shape=tuple(int(s) for s in arr.shape),
                     nbytes=len(arr.data), value=value, error=error, offset=npy_offset(arr.data))


def npy_offset(data: bytes) -> int:
    """Where an ``.npy`` payload's array bytes start (0 if ``data`` is no ``.npy``)."""
    if len(data) < 12 or not data.startswith(b"\x93NUMPY"):
        return 0
    if data[6] == 1:
        return 10 + int.from_bytes(data[8:10], "little")
    return 12 + int.from_bytes(data[8:12], "little")


def reply_view(content: Mapping[str, object]) -> ReplyView:
    """The :class:`ReplyView` of a message's ``RecordDict`` (every record, decoded)."""
    view = ReplyView()
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            view.arrays[name] = {k: array_view(a) for k, a in record.items()}
        elif isinstance(record, MetricRecord):
            view.metrics[name] = dict(record)
        elif isinstance(record, ConfigRecord):
            view.configs[name] = dict(record)
        else:  # pragma: no cover - RecordDict only holds the three record types
            view.configs[name] = {"record-type": [type(record).__name__]}
    return view


#: Problems a refusal names in full; the site's log keeps every one.
MAX_NAMED_PROBLEMS = 5


def refusal(problems: list[str]) -> str:
    """The error reason of a refused reply: its first problems and how many more (a diverged
    skill has one per tensor, hundreds on a large backbone)."""
    named = "; ".join(problems[:MAX_NAMED_PROBLEMS])
    more = len(problems) - MAX_NAMED_PROBLEMS
    return (f"egress guard refused the reply: {named}"
            + (f"; and {more} more problem(s) (the site's log lists them)" if more > 0 else ""))


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

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        """Run the app, then let the reply out only if every record passes the checks."""
        allowed = self.allowed_arrays(msg, context)
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        # A site whose node config (never the run config) allows research plans also lets the
        # backbone tensors the server sent go back; every other rule is unchanged.
        problems = self.problems(reply, allowed, research_allowed(context.node_config))
        if not problems:
            return reply
        log(ERROR, "egress guard refused the reply: %s", "; ".join(problems))
        return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION,
                             reason=refusal(problems)), reply_to=msg)

    def allowed_arrays(
        self, msg: Message, context: Context | None = None
    ) -> dict[str, tuple[int, ...]]:
        """Key -> shape of the skill tensors the instruction carried (empty for none); for a
        compressed downlink change, those of the skill the site holds (what it applies to)."""
        if not msg.has_content():
            return {}
        record = msg.content.array_records.get(self.skill_record)
        if (record is None and context is not None
                and RecordKey.DOWNLINK.value in msg.content.array_records):
            from client.site_runner import DOWNLINK_STATE

            record = context.state.array_records.get(DOWNLINK_STATE)
        if record is None:
            return {}
        return {key: tuple(arr.shape) for key, arr in record.items()}

    def problems(
        self, reply: Message, allowed: Mapping[str, tuple[int, ...]], research: bool = False
    ) -> list[str]:
        """Every reason the reply may not leave (empty list: it may)."""
        view = reply_view(reply.content)
        if self.skill_record != RecordKey.SKILL.value and self.skill_record in view.arrays:
            view.arrays[RecordKey.SKILL.value] = view.arrays.pop(self.skill_record)
        rules = EgressRules(allowed=dict(allowed), max_config_chars=self.max_config_chars)
        if research:
            from unicon_core.training.plans import RESEARCH_PREFIXES

            rules = replace(rules, prefixes=rules.prefixes + RESEARCH_PREFIXES)
        return reply_problems(reply.metadata.message_type, view, rules)
