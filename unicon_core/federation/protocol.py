"""Names shared by the ServerApp and the ClientApp: record keys, config keys, reply statuses.

One place for the wire vocabulary, so server and sites cannot drift apart on a literal.
"""

from __future__ import annotations

from enum import Enum


class RecordKey(str, Enum):
    """Keys of the records inside a message's ``RecordDict``."""

    SKILL = "skill"  # ArrayRecord: one task's skill tensors (server -> site and back)
    CONFIG = "config"  # ConfigRecord: server instructions
    METRICS = "metrics"  # MetricRecord: scalar metrics of a reply
    INFO = "info"  # ConfigRecord: who replies (site, task, foundation hash, status)
    SUMMARY = "summary"  # ArrayRecord: aggregate statistics for the router (query replies only)
    DELTA = "delta"  # ArrayRecord: a train reply's encoded local - global (instead of `skill`)
    #: ArrayRecord: an instruction's encoded change since the skill the site holds (instead of
    #: `skill`; issue #14 downlink compression)
    DOWNLINK = "downlink"
    #: ArrayRecord, SCAFFOLD (issue #14): the server's control variate ``c`` of the task in a
    #: train instruction; ``c_i_new - c_i`` of the trained parameters in the site's reply
    CONTROL = "control"


class SummaryKey(str, Enum):
    """The only arrays a ``summary`` record may hold: 1-D moments over a site's train split."""

    PROTOTYPE = "router.prototype"  # mean and mean of squares of the input descriptor
    FEATURE_MOMENTS = "router.feature-moments"  # clinical sites: mean and mean of raw features


class ConfigKey(str, Enum):
    """Keys of the server's instruction ``ConfigRecord``."""

    SERVER_ROUND = "server-round"
    TASK = "task"
    FOUNDATION_HASH = "foundation-hash"
    #: Issue #14, only sent when not today's default: the reply's delta codec (absent: the
    #: whole skill), its options, the LoRA rule (``ffa``: A frozen), FedProx's mu.
    DELTA_CODEC = "delta-codec"
    CODEC_PER_ROW = "codec-per-row"
    TOPK_FRACTION = "topk-fraction"
    LORA_RULE = "lora-rule"
    PROX_MU = "prox-mu"
    #: present (true): SCAFFOLD, the instruction carries ``control`` and so must the reply
    SCAFFOLD = "scaffold"
    #: present (true): the site adds its own train split's log class prior to the logits in
    #: its training loss (logit adjustment against label skew); nothing about it is sent back
    LOGIT_ADJUST = "logit-adjust"
    #: present (> 0): the site trains with plain SGD at this lr (no momentum, no weight
    #: decay) instead of its train config's optimiser: FedOpt's split, the adaptive step
    #: taken once, by the server's optimiser, on the aggregated pseudo-gradient
    SITE_SGD_LR = "site-sgd-lr"
    #: present (true): the reply's delta travels packed, one flat array per dtype
    DELTA_PACKED = "delta-packed"
    #: Downlink compression: the codec of the instruction's skill (present: the site keeps
    #: what it reconstructs) and the digest of the copy a `downlink` delta applies to.
    DOWNLINK_CODEC = "downlink-codec"
    DOWNLINK_BASE = "downlink-base"


class InfoKey(str, Enum):
    """Keys of the ``ConfigRecord`` every site reply carries."""

    SITE = "site"
    TASK = "task"
    FOUNDATION_HASH = "foundation-hash"
    TASK_SPEC = "task-spec"  # JSON of the site's TaskSpec (query replies only)
    SYNTHETIC = "synthetic"
    STATUS = "status"
    REASON = "reason"
    DEVICE = "device"  # where the site computes, e.g. cpu or cuda:0 (query replies only)
    ROUND = "server-round"  # the round a train/evaluate reply answers (replays are refused)
    PRIVACY = "privacy"  # what the site's own privacy floor changed, if anything (train replies)


class Status(str, Enum):
    """What a site did with an instruction."""

    TRAINED = "trained"
    EVALUATED = "evaluated"
    READY = "ready"
    BUDGET_EXHAUSTED = "budget-exhausted"
    #: A query reply of a site that cannot join: its data failed validation (``reason`` holds
    #: the short summary of :func:`unicon_core.federation.exclusions.exclusion_reason`).
    INVALID_DATA = "invalid-data"
    #: A round record's entry for an evaluation-only site (``role: evaluation``): it gets no
    #: train instruction, so its bytes are not a training site's and are counted apart.
    EVALUATION_ONLY = "evaluation-only"


#: Metric key FedAvg weights by: the number of training (or evaluation) *examples*.
NUM_EXAMPLES = "num-examples"

#: Query-reply metric: examples in the site's evaluation split (bounds its evaluate replies).
EVAL_EXAMPLES = "eval-examples"

#: Separator between task name and skill key in the server's union ArrayRecord.
#: Task names never contain a dot (``TaskSpec`` validates this), so the split is unambiguous.
TASK_SEP = "."
