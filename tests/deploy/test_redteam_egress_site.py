"""Red team, egress at the site: hostile replies against the guard the *site* installed.

Every case runs a hostile ClientApp with no mods at all (the FAB's own egress guard removed)
through the site's path of ``deploy/site_guard.py``: the app in a forked process
(:func:`run_isolated`), then :func:`guarded_reply` with the rules the site derives from its own
``site.json`` and node config. Each must come back as an error reply holding only a fixed
reason code, while the site's log names what was wrong.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.supercore.task_identity import TaskIdentity

from client.mods.egress_guard import EgressGuard
from deploy.site_guard import guarded_reply, run_isolated, site_layout, site_rules_for
from tests.deploy.sitetools import RUN_CONFIG, TASK, make_site_json, task_spec
from unicon_core.federation.egress import RefusalCode

HASH = "ab" * 32


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = make_site_json(tmp_path_factory.mktemp("guard"))
    node = {"site-dir": str(folder)}
    layout, _ = site_layout(node, RUN_CONFIG)
    return {"rules": site_rules_for(node, RUN_CONFIG), "layout": layout}


def _instruction(kind: str, layout: dict[str, tuple[int, ...]] | None = None,
                 **config: Any) -> Message:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    content = RecordDict({"config": ConfigRecord({"server-round": 1, "task": TASK, **config})})
    if layout:
        content["skill"] = ArrayRecord({k: Array(np.zeros(s, np.float32))
                                        for k, s in layout.items()})
    return Message(content, dst_node_id=1, message_type=kind)


def _skill(layout: dict[str, tuple[int, ...]], **replace: Array) -> ArrayRecord:
    arrays = {k: Array(np.full(s, 0.01, np.float32)) for k, s in layout.items()}
    return ArrayRecord({**arrays, **replace})


def _info(**extra: Any) -> ConfigRecord:
    return ConfigRecord({"site": "site_a", "task": TASK, "foundation-hash": HASH,
                         "status": "trained", "server-round": 1, "synthetic": True, **extra})


def _metrics(**extra: float) -> MetricRecord:
    return MetricRecord({"num-examples": 12, "train_loss": 0.5, "val_auc": 0.6, "steps": 3,
                         "val_auc_ci_low": 0.4, "val_auc_ci_high": 0.8, **extra})


def _hostile(records: Callable[[], dict[str, Any]]) -> Callable[[Message, Context], Message]:
    """A ClientApp handler without any mod: it returns whatever ``records`` builds."""
    def app(msg: Message, ctx: Context) -> Message:
        return Message(RecordDict(records()), reply_to=msg)
    return app


def _run(app: Callable[[Message, Context], Message], instruction: Message,
         rules: Any) -> tuple[Message, str]:
    logged: list[str] = []
    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    outcome = run_isolated(app, instruction, ctx)
    reply = guarded_reply(instruction, outcome, rules, lambda lvl, fmt, *a: logged.append(
        fmt % a))
    return reply, "\n".join(logged)


def test_an_honest_reply_leaves_unchanged(site: dict[str, Any]) -> None:
    layout = site["layout"]
    reply, log = _run(_hostile(lambda: {"skill": _skill(layout), "metrics": _metrics(),
                                        "info": _info()}),
                      _instruction("train", layout), site["rules"])
    assert not reply.has_error(), log
    assert set(reply.content["skill"].keys()) == set(layout)


def test_an_honest_query_reply_with_a_summary_leaves(site: dict[str, Any]) -> None:
    import json

    info = _info(status="ready", **{"task-spec": json.dumps(task_spec().to_dict(),
                                                            sort_keys=True)})
    reply, log = _run(_hostile(lambda: {
        "info": info, "metrics": MetricRecord({"num-examples": 40, "eval-examples": 6}),
        "summary": ArrayRecord({"router.prototype": Array(np.zeros(8))})}),
        _instruction("query"), site["rules"])
    assert not reply.has_error(), log


def test_an_honest_invalid_data_reply_leaves(site: dict[str, Any]) -> None:
    # A site whose data fail validation says its name and a bounded, value-free reason
    from unicon_core.federation.exclusions import MAX_REASON_CHARS

    reason = ("invalid data: 40 problems\nlabel: 40 missing values (manifest.csv rows 2-41) " *
              20)[:MAX_REASON_CHARS]
    reply, log = _run(_hostile(lambda: {"info": ConfigRecord({
        "site": "site_a", "status": "invalid-data", "reason": reason})}),
        _instruction("query"), site["rules"])
    assert not reply.has_error(), log


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _hidden_rows(layout: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """Raw rows (an int64 table) as an .npy behind a float32 header of an allowed key."""
    key, shape = next(iter(layout.items()))
    rows = np.arange(200 * 3, dtype=np.int64).reshape(200, 3)
    smuggled = Array(dtype="float32", shape=tuple(shape), stype="numpy.ndarray", data=_npy(rows))
    return {"skill": _skill(layout, **{key: smuggled}), "metrics": _metrics(), "info": _info()}


def _appended_bytes(layout: dict[str, tuple[int, ...]], size: int = 65536) -> dict[str, Any]:
    """The honest array's .npy, then ``size`` bytes of something else after it."""
    key, shape = next(iter(layout.items()))
    data = _npy(np.zeros(shape, np.float32)) + (bytes(range(256)) * (size // 256 + 1))[:size]
    return {"skill": _skill(layout, **{key: Array(dtype="float32", shape=tuple(shape),
                                                  stype="numpy.ndarray", data=data)}),
            "metrics": _metrics(), "info": _info()}


def _non_finite(layout: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    key, shape = next(iter(layout.items()))
    bad = np.zeros(shape, np.float32)
    bad.flat[0] = np.nan
    return {"skill": _skill(layout, **{key: Array(bad)}), "metrics": _metrics(), "info": _info()}


MANIFEST = base64.b64encode(b"id,age,label\nP-0001,63,1\nP-0002,71,0\n" * 20).decode()

# (case, message type, records builder given the layout, what the site's log names)
CASES: list[tuple[str, str, Callable[[dict], dict[str, Any]], str]] = [
    ("npy-rows-behind-float32-header", "train", _hidden_rows, "its bytes decode to int64"),
    ("bytes-after-the-array", "train", _appended_bytes, "data hidden after the array"),
    ("a-few-bytes-after-the-array", "train", lambda lay: _appended_bytes(lay, 100),
     "data hidden after the array"),
    ("non-finite-skill", "train", _non_finite, "non-finite"),
    ("hundreds-of-scalar-metrics", "train", lambda lay: {
        "skill": _skill(lay), "info": _info(),
        "metrics": MetricRecord({"num-examples": 12, **{f"val_auc{i}": 0.5 for i in range(300)}})},
     "at most"),
    ("unknown-metric-names", "train", lambda lay: {
        "skill": _skill(lay), "info": _info(),
        "metrics": _metrics(age_of_p0001=63.0, sbp_of_p0002=141.0)}, "not an allowed metric"),
    ("interval-bound-out-of-range", "evaluate", lambda lay: {
        "info": _info(status="evaluated"), "metrics": _metrics(auc_ci_high=63.0)},
     "outside [0, 1]"),
    ("infinite-metric", "evaluate", lambda lay: {
        "info": _info(status="evaluated"), "metrics": _metrics(train_loss=float("inf"))},
     "is inf"),
    ("base64-in-a-config-string", "train", lambda lay: {
        "skill": _skill(lay), "metrics": _metrics(), "info": _info(reason=MANIFEST[:900])},
     "encoded data"),
    ("unknown-info-key", "train", lambda lay: {
        "skill": _skill(lay), "metrics": _metrics(), "info": _info(notes="P-0001 age 63")},
     "not an allowed info key"),
    ("second-config-record", "train", lambda lay: {
        "skill": _skill(lay), "metrics": _metrics(), "info": _info(),
        "extra": ConfigRecord({"a": "b"})}, "may not be in a train reply"),
    ("summary-in-a-train-reply", "train", lambda lay: {
        "skill": _skill(lay), "metrics": _metrics(), "info": _info(),
        "summary": ArrayRecord({"router.prototype": Array(np.zeros(8))})},
     "may not be in a train reply"),
    ("skill-in-a-query-reply", "query", lambda lay: {
        "info": _info(status="ready"), "metrics": MetricRecord({"num-examples": 40}),
        "skill": _skill(lay)}, "may not be in a query reply"),
    ("arrays-in-an-evaluate-reply", "evaluate", lambda lay: {
        "info": _info(status="evaluated"), "metrics": _metrics(),
        "images": ArrayRecord({"x": Array(np.zeros(16, np.float32))})},
     "may not be in a evaluate reply"),
    ("key-outside-the-layout", "train", lambda lay: {
        "skill": _skill(lay, **{"head.extra.weight": Array(np.zeros(64, np.float32))}),
        "metrics": _metrics(), "info": _info()}, "not a skill tensor of this task"),
    ("a-key-left-out", "train", lambda lay: {
        "skill": ArrayRecord({k: Array(np.zeros(v, np.float32)) for k, v in list(lay.items())[1:]}),
        "metrics": _metrics(), "info": _info()}, "missing keys"),
    ("wrong-shape", "train", lambda lay: {
        "skill": _skill(lay, **{next(iter(lay)): Array(np.zeros(999, np.float32))}),
        "metrics": _metrics(), "info": _info()}, "has shape"),
    ("another-sites-name", "train", lambda lay: {
        "skill": _skill(lay), "metrics": _metrics(), "info": _info(site="site_b")},
     "names another site"),
    ("forged-task-spec", "query", lambda lay: {
        "info": _info(status="ready", **{"task-spec": '{"name": "tab_cls", "x": 1}'}),
        "metrics": MetricRecord({"num-examples": 40})}, "not this site's own task spec"),
    ("summary-over-too-few-examples", "query", lambda lay: {
        "info": _info(status="ready"), "metrics": MetricRecord({"num-examples": 6}),
        "summary": ArrayRecord({"router.prototype": Array(np.zeros(8))})}, "needs >= 20"),
    ("reply-to-an-unknown-message-type", "system", lambda lay: {"info": _info()},
     "no reply may leave"),
]


@pytest.mark.parametrize(("case", "kind", "build", "match"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.redteam(surface="egress-site", outcome="clear_error")
def test_the_site_refuses_what_a_hostile_app_sends(
    site: dict[str, Any], case: str, kind: str, build: Callable, match: str
) -> None:
    # Prepare: the FAB's ClientApp without its egress mod
    layout = site["layout"]
    app = _hostile(lambda: build(layout))

    # Execute
    reply, log = _run(app, _instruction(kind, layout if kind == "train" else None),
                      site["rules"])

    # Assert: refused with the fixed code only; the reason is in the site's log
    assert reply.has_error() and not reply.has_content()
    assert reply.error.reason == RefusalCode.EGRESS.value, log
    assert match in log, log


@pytest.mark.redteam(surface="egress-site", outcome="clear_error")
def test_the_site_layout_refuses_a_key_the_fab_guard_lets_through(site: dict[str, Any]) -> None:
    # Prepare: the server sends an extra key and the app returns it; the FAB-side guard, whose
    # rules come from the instruction, passes it
    layout = dict(site["layout"], **{"head.extra.weight": (64,)})
    instruction = _instruction("train", layout)
    records = lambda: {"skill": _skill(layout), "metrics": _metrics(), "info": _info()}  # noqa: E731
    fab_guarded = lambda msg, ctx: EgressGuard()(msg, ctx, _hostile(records))  # noqa: E731

    # Execute
    reply, log = _run(fab_guarded, instruction, site["rules"])

    # Assert: the site's own layout (its task in site.json) refuses it
    assert reply.error.reason == RefusalCode.EGRESS.value
    assert "'head.extra.weight' is not a skill tensor" in log


@pytest.mark.parametrize("how", ["raises", "error-reply"])
@pytest.mark.redteam(surface="egress-site", outcome="private")
def test_error_text_stays_at_the_site(site: dict[str, Any], how: str) -> None:
    # Prepare: an app whose failure text carries a patient id, a value and a path
    secret = "patient P-0042 age 63 in /data/site_a/manifest.csv"

    def app(msg: Message, ctx: Context) -> Message:
        if how == "raises":
            raise ValueError(secret)
        return Message(Error(code=0, reason=secret), reply_to=msg)

    # Execute
    reply, log = _run(app, _instruction("train", site["layout"]), site["rules"])

    # Assert: the reply says only the fixed code; the detail is in the site's log
    assert reply.error.reason == RefusalCode.APP_ERROR.value
    assert secret not in reply.error.reason and secret in log


@pytest.mark.redteam(surface="egress-site", outcome="clear_error")
def test_an_app_that_crashes_the_process_is_refused(site: dict[str, Any]) -> None:
    def app(msg: Message, ctx: Context) -> Message:
        import os

        os._exit(7)

    reply, log = _run(app, _instruction("train", site["layout"]), site["rules"])
    assert reply.error.reason == RefusalCode.APP_ERROR.value and "exit status" in log


def test_layout_tracks_the_site_json_task_not_the_instruction(tmp_path: Path) -> None:
    # A site serving another task has another layout: a skill of tab_cls does not leave it
    other = make_site_json(tmp_path, "site_x", task="tab_other")
    rules = site_rules_for({"site-dir": str(other)}, RUN_CONFIG)
    layout, _ = site_layout({"site-dir": str(other)}, RUN_CONFIG)
    assert rules.task == "tab_other" and set(rules.allowed) == set(layout)


@pytest.mark.redteam(surface="egress-site", outcome="clear_error")
def test_an_app_that_patches_the_guard_in_its_own_process_is_still_checked(
    site: dict[str, Any]
) -> None:
    # Prepare: the app disables every check it can reach, then sends raw rows
    layout = site["layout"]

    def app(msg: Message, ctx: Context) -> Message:
        import deploy.site_guard as guard
        import unicon_core.federation.egress as egress

        egress.reply_problems = lambda *args, **kwargs: []
        guard.guarded_reply = lambda instruction, outcome, *args: Message(
            outcome.content, reply_to=instruction)
        return Message(RecordDict(_hidden_rows(layout)), reply_to=msg)

    # Execute
    reply, log = _run(app, _instruction("train", layout), site["rules"])

    # Assert: the patches lived in the app's process only; the site's check ran unchanged
    assert reply.error.reason == RefusalCode.EGRESS.value
    assert "its bytes decode to int64" in log


def test_under_ffa_the_a_factors_may_stay_home_and_nothing_else(site: dict[str, Any]) -> None:
    # Prepare: FFA-LoRA freezes every A factor, so the reply leaves them out
    layout = site["layout"]
    a_keys = {k for k in layout if ".lora_A." in k}
    instruction = _instruction("train", layout, **{"lora-rule": "ffa"})

    def reply_without(keys: set[str]) -> Callable[[Message, Context], Message]:
        return _hostile(lambda: {"metrics": _metrics(), "info": _info(), "skill": ArrayRecord(
            {k: Array(np.zeros(v, np.float32)) for k, v in layout.items() if k not in keys})})

    # Execute / Assert: without the A factors it leaves; without a B factor too, it does not
    reply, log = _run(reply_without(a_keys), instruction, site["rules"])
    assert a_keys and not reply.has_error(), log
    b_key = next(k for k in layout if ".lora_B." in k)
    reply, log = _run(reply_without(a_keys | {b_key}), instruction, site["rules"])
    assert reply.has_error() and "missing keys" in log


def test_scaffold_changes_leave_in_a_train_reply_only_in_the_skill_layout(
    site: dict[str, Any],
) -> None:
    # Prepare: an honest SCAFFOLD train reply carries its c_i change next to the skill
    layout = site["layout"]
    instruction = _instruction("train", layout, scaffold=True)

    def with_control(control: ArrayRecord) -> Callable[..., Message]:
        return _hostile(lambda: {"skill": _skill(layout), "metrics": _metrics(),
                                 "info": _info(), "control": control})

    # Execute / Assert: the layout's keys leave; a key outside it, a wrong shape, or a
    # control record in an evaluate reply do not
    reply, log = _run(with_control(_skill(layout)), instruction, site["rules"])
    assert not reply.has_error(), log
    assert set(reply.content["control"].keys()) == set(layout)
    extra = _skill(layout, **{"backbone.patch_embed.weight": Array(np.zeros(4, np.float32))})
    reply, log = _run(with_control(extra), instruction, site["rules"])
    assert reply.has_error() and "not a skill tensor" in log
    key = next(iter(layout))
    reply, log = _run(with_control(_skill(layout, **{key: Array(np.zeros(3, np.float32))})),
                      instruction, site["rules"])
    assert reply.has_error() and "has shape (3,)" in log
    evaluate = _hostile(lambda: {"metrics": _metrics(), "info": _info(status="evaluated"),
                                 "control": _skill(layout)})
    reply, log = _run(evaluate, _instruction("evaluate", layout), site["rules"])
    assert reply.has_error() and "'control' may not be in a evaluate reply" in log
