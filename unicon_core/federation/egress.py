"""What may leave a site: the rules of the egress check, on decoded reply content (no Flower).

One core, used twice: by the FAB's client mod (:class:`client.mods.EgressGuard`, defence in
depth, rules from the instruction) and by the code the *site* installed
(``deploy/site_guard.py``, run by the site's own executor outside the FAB's process, rules from
the site's node config and ``site.json``). A reply is described as a :class:`ReplyView`: every
record's arrays (header dtype and shape, payload size, and the array decoded from its bytes),
metrics and config values. :func:`reply_problems` lists every reason it may not leave; an empty
list lets it out.

Checks (each one a line of the returned list, naming the record and key):

* schema (site rules): which records a reply to ``query``/``train``/``evaluate`` may hold;
* skill arrays: only in ``skill``, keys inside the allowed layout, each with its shape (the LoRA
  rank may be lower where the rules allow mixed ranks) and a floating dtype;
* deltas (issue #14): only in ``delta``, each an encoding of one allowed key's update; packed
  (one flat array per dtype), no more values of each kind than the allowed layout's updates hold;
* SCAFFOLD control-variate changes: only in a train reply's ``control``, checked as skill arrays
  (each an allowed key with its shape; as derived from the site's gradients as a delta is);
* router summaries: only the known keys, 1-D float vectors of bounded length, over at least
  ``min_summary_count`` examples;
* decoded content: the bytes decode to exactly the header's dtype and shape (an ``.npy`` of other
  data behind an honest header is refused), carry no bytes beyond that array's ``.npy`` header
  and data, and hold finite values;
* metrics: scalars, at most ``max_metrics``, names from the allow-list (site rules; with
  ``val_``/``test_`` prefixes and ``_ci_low``/``_ci_high`` interval suffixes), values
  finite or NaN (undefined) and in range (:func:`~unicon_core.federation.replies.metric_problem`);
* config values: short scalars; with an allow-list of keys (site rules), no long runs of
  base64/hex-like text outside the fields that are hashes, and the task spec equal to the
  site's own.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from unicon_core.federation.compression import INDEX, PACKED, SCALE
from unicon_core.federation.exclusions import MAX_REASON_CHARS
from unicon_core.federation.protocol import (
    EVAL_EXAMPLES,
    NUM_EXAMPLES,
    ConfigKey,
    InfoKey,
    RecordKey,
    SummaryKey,
)
from unicon_core.federation.replies import MAX_METRICS, metric_problem
from unicon_core.inference.summaries import MAX_SUMMARY_LENGTH, MIN_SUMMARY_COUNT
from unicon_core.keys import SkillPart

FLOAT_DTYPES = frozenset({"float16", "bfloat16", "float32", "float64"})
SKILL_PREFIXES = tuple(f"{part.value}." for part in SkillPart)
#: Bytes an ``.npy`` header may add to an array's own bytes (numpy pads it to 64..4096 bytes).
NPY_HEADER_BYTES = 4096
#: A run of this many characters from the base64 alphabet is encoded data, not a message.
ENCODED_RUN = 48
_ENCODED = re.compile(rf"[A-Za-z0-9+/=_\-]{{{ENCODED_RUN},}}")
_HEX = re.compile(r"[0-9a-f]{16,128}")

#: Base names of every metric a unicon site reports (``val_``/``test_`` prefixes allowed).
METRIC_NAMES = frozenset({
    NUM_EXAMPLES, EVAL_EXAMPLES, "auc", "balanced_accuracy", "accuracy", "dice", "c_index",
    "loss", "train_loss", "steps", "epsilon", "delta", "answer_s", "handle_s", "process_s",
})
METRIC_PREFIXES = ("val_", "test_")
#: Suffixes of a metric's interval bounds (``auc_ci_low``; ``unicon_core.metrics.CI_LOW/HIGH``,
#: not imported: that module loads torch, and the FAB-side mod must import quickly).
METRIC_SUFFIXES = ("_ci_low", "_ci_high")
#: Largest magnitude of any metric (the example-count cap of :mod:`replies`).
MAX_METRIC_VALUE = 1e9

#: Info keys (``ConfigRecord`` ``info``) and the longest value each may have.
INFO_LIMITS: dict[str, int] = {
    InfoKey.SITE.value: 128, InfoKey.TASK.value: 128, InfoKey.FOUNDATION_HASH.value: 128,
    InfoKey.TASK_SPEC.value: 16384, InfoKey.SYNTHETIC.value: 8, InfoKey.STATUS.value: 32,
    InfoKey.REASON.value: MAX_REASON_CHARS, InfoKey.DEVICE.value: 64, InfoKey.ROUND.value: 32,
    InfoKey.PRIVACY.value: MAX_REASON_CHARS,
}
#: Info keys whose value is a hash (hex text is expected there, nowhere else).
HASH_KEYS = frozenset({InfoKey.FOUNDATION_HASH.value})

#: Records a reply to each message type may hold (site rules); anything else is refused.
REPLY_SCHEMA: dict[str, frozenset[str]] = {
    "query": frozenset({RecordKey.INFO.value, RecordKey.METRICS.value, RecordKey.SUMMARY.value}),
    "train": frozenset({RecordKey.INFO.value, RecordKey.METRICS.value, RecordKey.SKILL.value,
                        RecordKey.DELTA.value, RecordKey.CONTROL.value}),
    "evaluate": frozenset({RecordKey.INFO.value, RecordKey.METRICS.value}),
}


class RefusalCode(str, Enum):
    """The only error reasons a site-guarded reply carries (details stay in the site's log)."""

    EGRESS = "site-refused: reply failed the site's egress check"
    APP_ERROR = "site-refused: the app failed at the site"
    UNSIGNED_APP = "site-refused: the app is not signed by an entity this site trusts"


@dataclass(frozen=True)
class ArrayView:
    """One array as it would travel: its header, payload size and the decoded array."""

    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    value: np.ndarray | None = None
    error: str = ""
    #: Where the array's own bytes start in the payload (the ``.npy`` header's length; 0 when
    #: unknown, then up to :data:`NPY_HEADER_BYTES` of header are allowed).
    offset: int = 0


@dataclass
class ReplyView:
    """A reply's content by record name: arrays, metrics and config values."""

    arrays: dict[str, dict[str, ArrayView]] = field(default_factory=dict)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class EgressRules:
    """What may leave. ``None`` in a field means "not checked" (the FAB-side mod's defaults).

    Parameters
    ----------
    allowed : mapping
        Skill key -> shape that may leave (the site's layout, or the keys the server sent).
    lower_rank : bool
        A LoRA factor may have a lower rank than ``allowed`` (mixed ranks: the server sends some
        sites a lower rank).
    schema : mapping or None
        Message type -> records its reply may hold (:data:`REPLY_SCHEMA`).
    metric_names : frozenset or None
        Allowed metric base names (``val_``/``test_`` prefixes added).
    max_metrics : int or None
        Most metrics a reply may carry.
    info_limits : mapping or None
        Allowed info keys and their longest values; with it, encoded-looking text is refused.
    max_config_chars : int
        Longest string any config value may be.
    decode : bool
        Check decoded arrays (dtype/shape as the header says, no extra bytes, finite values).
    site_names, task, task_spec : optional
        What the ``info`` record must say (the site's own name(s), task and task spec JSON).
    min_summary_count : int
        Fewest examples behind a router summary.
    exact : bool
        A skill or delta must cover every key of ``allowed`` but ``omittable`` (site rules).
    omittable : frozenset
        Keys a reply may leave out (the A factors under FFA-LoRA: :func:`for_instruction`).
    """

    allowed: Mapping[str, tuple[int, ...]]
    lower_rank: bool = False
    schema: Mapping[str, frozenset[str]] | None = None
    metric_names: frozenset[str] | None = None
    max_metrics: int | None = None
    info_limits: Mapping[str, int] | None = None
    max_config_chars: int = 16384
    decode: bool = True
    site_names: frozenset[str] | None = None
    task: str | None = None
    task_spec: Mapping[str, Any] | None = None
    min_summary_count: int = MIN_SUMMARY_COUNT
    #: Key prefixes an array may carry (a research site, issue #16, adds the backbone's).
    prefixes: tuple[str, ...] = SKILL_PREFIXES
    exact: bool = False
    omittable: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.max_config_chars < 1:
            raise ValueError(f"max_config_chars must be >= 1, got {self.max_config_chars}")
        if self.max_metrics is not None and self.max_metrics < 1:
            raise ValueError(f"max_metrics must be >= 1, got {self.max_metrics}")
        if self.min_summary_count < MIN_SUMMARY_COUNT:
            raise ValueError(f"min_summary_count must be >= {MIN_SUMMARY_COUNT}, got "
                             f"{self.min_summary_count}")


def site_rules(
    layout: Mapping[str, tuple[int, ...]],
    *,
    site_names: frozenset[str],
    task_spec: Mapping[str, Any],
    extra_metrics: frozenset[str] = frozenset(),
    max_metrics: int = 32,
    min_summary_count: int = MIN_SUMMARY_COUNT,
) -> EgressRules:
    """The rules of a site's own check: its layout, names, task spec and every allow-list."""
    return EgressRules(
        allowed=dict(layout), lower_rank=True, schema=REPLY_SCHEMA,
        metric_names=METRIC_NAMES | extra_metrics, max_metrics=min(max_metrics, MAX_METRICS),
        info_limits=INFO_LIMITS, decode=True, site_names=site_names,
        task=str(task_spec.get("name", "")), task_spec=dict(task_spec),
        min_summary_count=min_summary_count, exact=True,
    )


def for_instruction(rules: EgressRules, config: Mapping[str, Any]) -> EgressRules:
    """``rules`` for one instruction's ``config``: under FFA-LoRA the A factors stay home."""
    from dataclasses import replace

    from unicon_core.federation.lora_rules import a_keys

    if config.get(ConfigKey.LORA_RULE.value) != "ffa":
        return rules
    return replace(rules, omittable=frozenset(a_keys(list(rules.allowed))))


def reply_problems(message_type: str, reply: ReplyView, rules: EgressRules) -> list[str]:
    """Every reason ``reply`` (to a ``message_type`` instruction) may not leave; [] if it may."""
    out: list[str] = []
    names = [*reply.arrays, *reply.metrics, *reply.configs]
    if len(names) != len(set(names)):
        out.append("a record name is used twice")
    if rules.schema is not None:
        allowed = rules.schema.get(message_type)
        if allowed is None:
            return [*out, f"no reply may leave for a {message_type[:32]!r} message"]
        out += [f"record {n[:64]!r} may not be in a {message_type} reply (allowed: "
                f"{sorted(allowed)})" for n in names if n not in allowed]
        if message_type == "train" and {RecordKey.SKILL.value, RecordKey.DELTA.value} <= set(
                reply.arrays):
            out.append("a train reply carries either a skill or a delta, not both")
    for name, arrays in reply.arrays.items():
        if name == RecordKey.SUMMARY.value:
            out += summary_problems(arrays, _count(reply), rules)
        elif name == RecordKey.DELTA.value:
            out += delta_problems(arrays, rules)
        elif name == RecordKey.SKILL.value:
            out += skill_problems(arrays, rules)
        elif name == RecordKey.CONTROL.value and message_type == "train":
            out += skill_problems(arrays, rules)  # SCAFFOLD: one array per trained tensor
        else:
            out.append(f"arrays may only leave in the {RecordKey.SKILL.value!r} record, "
                       f"not {name[:64]!r}")
            continue
        if rules.decode:
            out += [p for key, view in arrays.items() if (p := decoded_problem(name, key, view))]
    for name, values in reply.metrics.items():
        out += metric_problems(name, values, rules)
    for name, values in reply.configs.items():
        out += config_problems(name, values, rules)
    return out


def _count(reply: ReplyView) -> Any:
    return reply.metrics.get(RecordKey.METRICS.value, {}).get(NUM_EXAMPLES)


def _shape_fits(key: str, shape: tuple[int, ...], want: tuple[int, ...], lower_rank: bool) -> bool:
    """``shape`` is ``want``, or (mixed ranks) a LoRA factor of ``want`` with a lower rank."""
    if shape == want:
        return True
    if not lower_rank or len(shape) != len(want) or not shape:
        return False
    rank_dim = 0 if ".lora_A." in key else 1 if ".lora_B." in key else None
    if rank_dim is None or rank_dim >= len(want):
        return False
    return all(s == w if i != rank_dim else 1 <= s <= w
               for i, (s, w) in enumerate(zip(shape, want, strict=True)))


def _missing(present: set[str], rules: EgressRules) -> list[str]:
    if not rules.exact:
        return []
    missing = sorted(set(rules.allowed) - present - rules.omittable)
    return [f"missing keys {missing[:8]} of the site's skill layout"] if missing else []


def skill_problems(arrays: Mapping[str, ArrayView], rules: EgressRules) -> list[str]:
    """Skill arrays: allowed keys (all of them under ``exact``), their shapes, a skill prefix
    and a floating dtype."""
    out = _missing(set(arrays), rules)
    for key, arr in arrays.items():
        want = rules.allowed.get(key)
        if want is None:
            out.append(f"array {key[:80]!r} is not a skill tensor of this task")
        elif not _shape_fits(key, arr.shape, tuple(want), rules.lower_rank):
            out.append(f"array {key!r} has shape {arr.shape}, not {tuple(want)}")
        elif not key.startswith(rules.prefixes):
            out.append(f"array {key!r} lacks a skill prefix {rules.prefixes}")
        elif arr.dtype not in FLOAT_DTYPES:
            out.append(f"array {key!r} has dtype {arr.dtype[:16]}, skills are floating point")
    return out


def delta_problems(arrays: Mapping[str, ArrayView], rules: EgressRules) -> list[str]:
    """Encoded updates (issue #14): each array encodes one allowed key's update."""
    if any(key.startswith(PACKED) for key in arrays):
        return packed_problems(arrays, rules)
    out = _missing({k.removesuffix(SCALE).removesuffix(INDEX) for k in arrays}, rules)
    for key, arr in arrays.items():
        base = key.removesuffix(SCALE).removesuffix(INDEX)
        if base not in rules.allowed or not base.startswith(SKILL_PREFIXES):
            out.append(f"array {key[:80]!r} is not an update of a skill tensor of this task")
            continue
        want = tuple(rules.allowed[base])
        shape, size = arr.shape, math.prod(want)
        flat = len(shape) == 1 and shape[0] <= size
        if key.endswith(INDEX):
            ok = flat and arr.dtype in ("int32", "int64")
        elif key.endswith(SCALE):
            rows = want[0] if want else 1
            ok = len(shape) == 1 and shape[0] <= rows and arr.dtype in FLOAT_DTYPES
        elif arr.dtype == "int8":
            ok = _shape_fits(key, shape, want, rules.lower_rank) and base + SCALE in arrays
        else:
            ok = (_shape_fits(key, shape, want, rules.lower_rank)
                  or (flat and base + INDEX in arrays)) and arr.dtype in FLOAT_DTYPES
        if not ok:
            out.append(f"array {key!r} ({arr.dtype[:16]}, shape {shape}) does not encode an "
                       f"update of shape {want}")
    return out


def packed_problems(arrays: Mapping[str, ArrayView], rules: EgressRules) -> list[str]:
    """A packed delta: flat ``#packed.<dtype>`` arrays holding, per kind of value, no more than
    the unpacked encodings of the allowed keys could (values and top-k indices: one per skill
    value; float scales: one per row on top). Keys and shapes do not travel, so this bounds what
    can leave rather than matching each tensor; the receiver checks the exact layout."""
    shapes = [tuple(w) for k, w in rules.allowed.items() if k.startswith(SKILL_PREFIXES)]
    cap = sum(math.prod(w) for w in shapes)
    rows = sum(w[0] if w else 1 for w in shapes)
    kinds = {"int8": ("int8 values", cap), "int32": ("indices", cap), "int64": ("indices", cap),
             **{f: ("float values", cap + rows) for f in FLOAT_DTYPES}}
    out, used = [], dict.fromkeys((label for label, _ in kinds.values()), 0)
    for key, arr in arrays.items():
        kind = kinds.get(arr.dtype)
        if key != PACKED + arr.dtype or kind is None or len(arr.shape) != 1:
            out.append(f"array {key[:80]!r} ({arr.dtype[:16]}, shape {arr.shape}) is not one "
                       f"packed group of an update (a flat '{PACKED}<dtype>' array)")
            continue
        used[kind[0]] += arr.shape[0]
    for label, bound in {label: bound for label, bound in kinds.values()}.items():
        if used[label] > bound:
            out.append(f"the packed delta holds {used[label]} {label}, more than the task's "
                       f"skill layout allows ({bound})")
    return out


def summary_problems(arrays: Mapping[str, ArrayView], count: Any,
                     rules: EgressRules) -> list[str]:
    """Router summaries: known keys, bounded 1-D float vectors, enough examples behind them."""
    known = {k.value for k in SummaryKey}
    out = []
    if isinstance(count, bool) or not isinstance(count, (int, float)) or not (
            count >= rules.min_summary_count):
        out.append(f"a summary needs >= {rules.min_summary_count} examples behind it, got "
                   f"{str(count)[:20]}")
    for key, arr in arrays.items():
        if key not in known:
            out.append(f"summary array {key[:80]!r} is not one of {sorted(known)}")
        elif len(arr.shape) != 1 or arr.shape[0] > MAX_SUMMARY_LENGTH:
            out.append(f"summary array {key!r} has shape {arr.shape}, not a vector of at most "
                       f"{MAX_SUMMARY_LENGTH}")
        elif arr.dtype not in FLOAT_DTYPES:
            out.append(f"summary array {key!r} has dtype {arr.dtype[:16]}, not floating point")
    return out


def decoded_problem(record: str, key: str, arr: ArrayView) -> str:
    """Why the bytes behind an array's header are not that array ('' if they are)."""
    where = f"array {record}.{key[:80]}"
    if arr.value is None:
        return f"{where} cannot be decoded ({arr.error[:200] or 'no value'})"
    value = arr.value
    if value.dtype.name != arr.dtype or tuple(value.shape) != tuple(arr.shape):
        return (f"{where}: its bytes decode to {value.dtype.name} {tuple(value.shape)}, but its "
                f"header says {arr.dtype[:16]} {arr.shape}")
    expected = arr.offset + value.nbytes
    if arr.offset > NPY_HEADER_BYTES or (arr.nbytes != expected if arr.offset else
                                         arr.nbytes > value.nbytes + NPY_HEADER_BYTES):
        return (f"{where} carries {arr.nbytes} bytes for a {value.nbytes}-byte array (data "
                "hidden after the array)")
    if value.dtype.kind == "f" and not bool(np.isfinite(value).all()):
        return f"{where} holds {int((~np.isfinite(value)).sum())} non-finite values"
    return ""


def metric_problems(name: str, values: Mapping[str, Any], rules: EgressRules) -> list[str]:
    """Metrics: scalars, few, allowed names, finite (or NaN) values within range."""
    out = []
    if rules.max_metrics is not None and len(values) > rules.max_metrics:
        out.append(f"metrics {name[:64]}: {len(values)} values, at most {rules.max_metrics}")
        return out
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            out.append(f"metric {name[:64]}.{key[:64]} is not a scalar number")
            continue
        if rules.metric_names is None:
            continue
        base = key
        for prefix in METRIC_PREFIXES:
            base = base.removeprefix(prefix)
        for suffix in METRIC_SUFFIXES:
            base = base.removesuffix(suffix)
        if base not in rules.metric_names:
            out.append(f"metric {name[:64]}.{key[:64]} is not an allowed metric name")
        elif problem := metric_problem(base, value):
            out.append(f"metrics {name[:64]}: {problem}")
        elif abs(float(value)) > MAX_METRIC_VALUE:
            out.append(f"metric {name[:64]}.{key} is {float(value):.4g}, beyond "
                       f"{MAX_METRIC_VALUE:g}")
    return out


def config_problems(name: str, values: Mapping[str, Any], rules: EgressRules) -> list[str]:
    """Config values: short scalars; with site rules, allowed keys and what the site says."""
    out = []
    limits = rules.info_limits
    if limits is not None and name != RecordKey.INFO.value:
        return [f"config record {name[:64]!r} is not allowed (only {RecordKey.INFO.value!r})"]
    for key, value in values.items():
        where = f"config {name[:64]}.{key[:64]}"
        if isinstance(value, (bytes, list)):
            out.append(f"{where} carries {type(value).__name__}, only scalars")
            continue
        text = value if isinstance(value, str) else ""
        longest = rules.max_config_chars if limits is None else limits.get(key)
        if longest is None:
            out.append(f"{where} is not an allowed info key")
        elif len(text) > longest:
            out.append(f"{where} is {len(text)} characters long (at most {longest})")
        elif limits is not None:
            out += _info_value_problems(where, key, value, rules)
    return out


def _info_value_problems(where: str, key: str, value: Any, rules: EgressRules) -> list[str]:
    if not isinstance(value, str):
        return []
    if key in HASH_KEYS:
        return [] if _HEX.fullmatch(value) else [f"{where} is not a hex digest"]
    if key == InfoKey.SITE.value and rules.site_names and value not in rules.site_names:
        return [f"{where} names another site than this one"]
    if key == InfoKey.TASK.value and rules.task and value != rules.task:
        return [f"{where} names another task than this site's"]
    if key == InfoKey.TASK_SPEC.value and rules.task_spec is not None:
        try:
            same = json.loads(value) == json.loads(json.dumps(rules.task_spec))
        except ValueError:
            same = False
        return [] if same else [f"{where} is not this site's own task spec (site.json)"]
    if _ENCODED.search(value):
        return [f"{where} holds a run of {ENCODED_RUN}+ base64/hex-like characters (encoded "
                "data)"]
    return []
