"""The update a train reply carries, decoded against the skill sent: each refusal on a
hand-made record, and the exact round trip when nothing is lost."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, RecordDict

from server.strategies.update_decoding import Decoded, decode_control, decode_update
from unicon_core.federation.compression import Codec, encode_delta, to_wire
from unicon_core.federation.config import TaskFederation
from unicon_core.federation.protocol import RecordKey, Status
from unicon_core.federation.replies import Rejected
from unicon_flower.records import arrays_to_record

A, B = "adapter.q.lora_A.weight", "adapter.q.lora_B.weight"


def _skill(seed: int) -> dict[str, np.ndarray]:
    """Quarters in [-2, 2): their float32 differences are exact, so a lossless round trip
    must give them back bit for bit."""
    rng = np.random.default_rng(seed)
    return {key: (rng.integers(-8, 8, size=shape) / 4).astype(np.float32)
            for key, shape in ((A, (2, 6)), (B, (6, 2)), ("head.fc.weight", (3, 6)))}


def _reply(**arrays: dict[str, np.ndarray]) -> RecordDict:
    records = {RecordKey[name.upper()].value: arrays_to_record(a) for name, a in arrays.items()}
    return RecordDict({**records, RecordKey.INFO.value: ConfigRecord({})})


def _delta_reply(local: dict[str, np.ndarray], sent: dict[str, np.ndarray],
                 codec: Codec) -> RecordDict:
    payload, _ = encode_delta(local, sent, codec)
    return _reply(delta=to_wire(payload, sent, codec))


TRAINED = Status.TRAINED.value


@pytest.mark.parametrize("packed", [False, True])
def test_a_lossless_delta_gives_back_the_sites_skill_bit_for_bit(packed: bool) -> None:
    sent, local = _skill(0), _skill(1)
    opts = TaskFederation(delta=True, pack=packed)
    out = decode_update(_delta_reply(local, sent, opts.codec_spec()), TRAINED, sent, opts, "t")
    assert isinstance(out, Decoded) and out.state is not None
    assert out.delta_digest.startswith("delta:")
    for key, value in local.items():
        np.testing.assert_array_equal(out.state[key], value)


def test_a_delta_task_refuses_a_whole_skill_and_a_trained_reply_without_delta() -> None:
    sent, opts = _skill(0), TaskFederation(delta=True)
    out = decode_update(_reply(skill=_skill(1)), TRAINED, sent, opts, "t")
    assert isinstance(out, Rejected) and "task t takes deltas (none)" in out.reason
    out = decode_update(_reply(), TRAINED, sent, opts, "t")
    assert isinstance(out, Rejected) and "carries none" in out.reason
    # a site that did not train (e.g. its privacy budget is spent) sends no update at all
    assert decode_update(_reply(), Status.BUDGET_EXHAUSTED.value, sent, opts, "t") == \
        Decoded(None)


@pytest.mark.parametrize(("codec", "key", "shape"), [
    ("none", "head.fc.weight", (6, 3)),  # a tensor of another shape
    ("none", "head.extra", (3,)),  # a tensor the skill does not have
    ("int8", "head.fc.weight#scale", (19,)),  # more scales than the tensor has values
    ("topk", "head.fc.weight#idx", (2, 2)),  # indices must be flat
])
def test_a_delta_header_that_does_not_fit_is_refused_before_decoding(
        codec: str, key: str, shape: tuple[int, ...]) -> None:
    sent, opts = _skill(0), TaskFederation(delta=True, codec=codec)
    payload, _ = encode_delta(_skill(1), sent, opts.codec_spec())
    payload[key] = np.zeros(shape, np.float32)
    out = decode_update(_reply(delta=payload), TRAINED, sent, opts, "t")
    assert isinstance(out, Rejected)
    assert out.reason == f"{key}: shape {shape} does not fit the skill"


def test_a_packed_delta_of_the_wrong_length_is_refused() -> None:
    sent, opts = _skill(0), TaskFederation(delta=True, pack=True)
    wire = to_wire(encode_delta(_skill(1), sent, opts.codec_spec())[0], sent,
                   opts.codec_spec())
    (key, flat), = wire.items()
    out = decode_update(_reply(delta={key: flat[:-1]}), TRAINED, sent, opts, "t")
    assert isinstance(out, Rejected) and "does not fit the skill" in out.reason


def test_ffa_takes_the_frozen_a_from_the_skill_sent() -> None:
    """Under FFA-LoRA a site sends no A (delta or whole skill); a delta for A is refused."""
    sent, local = _skill(0), _skill(1)
    opts = TaskFederation(delta=True, lora_rule="ffa")
    trained = {k: v for k, v in sent.items() if k != A}
    reply = _delta_reply({k: local[k] for k in trained}, trained, opts.codec_spec())
    out = decode_update(reply, TRAINED, sent, opts, "t")
    assert isinstance(out, Decoded) and out.state is not None
    np.testing.assert_array_equal(out.state[A], sent[A])
    np.testing.assert_array_equal(out.state[B], local[B])
    with_a = _delta_reply(local, sent, opts.codec_spec())
    assert isinstance(decode_update(with_a, TRAINED, sent, opts, "t"), Rejected)

    whole = TaskFederation(lora_rule="ffa")
    out = decode_update(_reply(skill=trained), TRAINED, sent, whole, "t")
    assert isinstance(out, Decoded) and out.state is not None
    np.testing.assert_array_equal(out.state[A], sent[A])


def test_a_whole_skill_of_another_shape_is_refused() -> None:
    sent = _skill(0)
    bad = {**_skill(1), B: np.zeros((6, 4), np.float32)}
    out = decode_update(_reply(skill=bad), TRAINED, sent, TaskFederation(), "t")
    assert isinstance(out, Rejected) and out.reason == f"{B}: shape (6, 4) != (6, 2)"
    out = decode_update(_reply(skill=_skill(1)), TRAINED, sent, TaskFederation(), "t")
    assert isinstance(out, Decoded) and out.state is not None and out.delta_digest == ""
    assert decode_update(_reply(), TRAINED, sent, TaskFederation(), "t") == Decoded(None)



def test_a_scaffold_reply_carries_a_control_change_of_the_trained_layout() -> None:
    """Required with an update under SCAFFOLD, refused without SCAFFOLD or without an update,
    checked key by key and for finite values."""
    layout = _skill(0)
    change = {k: np.ones_like(v) for k, v in layout.items()}
    ok = decode_control(_reply(control=change), layout, scaffold=True, updated=True, task="t")
    assert ok[1] == "" and ok[0] is not None
    np.testing.assert_array_equal(ok[0][B], change[B])
    assert decode_control(_reply(), layout, scaffold=True, updated=True, task="t") == (
        None, "task t uses SCAFFOLD: the reply carries no control variate change")
    assert decode_control(_reply(control=change), layout, scaffold=False, updated=True,
                          task="t") == (None, "the reply carries control variates task t "
                                        "did not ask for")
    assert decode_control(_reply(), layout, scaffold=True, updated=False, task="t") == (
        None, "")
    wrong = {**change, B: np.ones((2, 6), np.float32)}
    assert decode_control(_reply(control=wrong), layout, scaffold=True, updated=True,
                          task="t")[1] == f"control {B}: not a trained parameter of this shape"
    short = {k: v for k, v in change.items() if k != A}
    assert "does not cover the trained parameters" in decode_control(
        _reply(control=short), layout, scaffold=True, updated=True, task="t")[1]
    bad = {**change, A: np.full((2, 6), np.nan, np.float32)}
    assert decode_control(_reply(control=bad), layout, scaffold=True, updated=True,
                          task="t") == (None, f"control {A}: 12 non-finite values")
