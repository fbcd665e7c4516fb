"""Deltas on the wire, compression, LoRA aggregation rules, mixed ranks, sampling, server
optimisers (issue #14): pure library functions on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest

from unicon_core.federation.aggregation import weighted_average
from unicon_core.federation.compression import (
    PACKED,
    Codec,
    apply_delta,
    decode_delta,
    encode_delta,
    from_wire,
    payload_layout,
    to_wire,
)
from unicon_core.federation.lora_rules import (
    aggregate_lora,
    factorise,
    lora_pairs,
    pad_rank,
    project_rank,
)
from unicon_core.federation.sampling import SamplingConfig, sample_sites, sample_size
from unicon_core.federation.server_opt import ServerOptConfig, ServerOptimizer

A, B = "adapter.m.lora_A.weight", "adapter.m.lora_B.weight"


def skill(rng: np.random.Generator, rank: int = 2, zero_b: bool = False) -> dict:
    return {
        A: rng.normal(size=(rank, 5)).astype(np.float32),
        B: (np.zeros((4, rank)) if zero_b else rng.normal(size=(4, rank))).astype(np.float32),
        "head.w": rng.normal(size=(3,)).astype(np.float32),
    }


# ---------------------------------------------------------------------------- compression
def test_uncompressed_delta_round_trip_is_exact_on_representable_updates() -> None:
    rng = np.random.default_rng(0)
    glob = skill(rng, zero_b=True)
    local = {k: v + np.float32(0.25) * (np.arange(v.size).reshape(v.shape) % 3).astype(
        np.float32) for k, v in glob.items()}
    local[B] = rng.normal(size=(4, 2)).astype(np.float32)  # from zero: exact
    payload, residual = encode_delta(local, glob, Codec("none"))
    back = apply_delta(glob, decode_delta(payload, glob, Codec("none")))
    for key in glob:
        assert back[key].dtype == glob[key].dtype
        np.testing.assert_array_equal(back[key], local[key])
        assert not np.any(residual[key])
    assert {k: v.dtype for k, v in payload.items()} == {k: v.dtype for k, v in glob.items()}


def test_uncompressed_delta_within_one_rounding_in_general() -> None:
    rng = np.random.default_rng(1)
    glob, local = skill(rng), skill(rng)
    back = apply_delta(glob, decode_delta(encode_delta(local, glob, Codec("none"))[0], glob,
                                          Codec("none")))
    for key in glob:
        np.testing.assert_allclose(back[key], local[key], rtol=0, atol=1e-6)


@pytest.mark.parametrize("codec", [Codec("fp16"), Codec("int8"), Codec("int8", per_row=True)])
def test_lossy_codecs_are_bounded(codec: Codec) -> None:
    rng = np.random.default_rng(2)
    glob, local = skill(rng), skill(rng)
    payload, residual = encode_delta(local, glob, codec)
    got = decode_delta(payload, glob, codec)
    for key in glob:
        d = local[key].astype(np.float64) - glob[key].astype(np.float64)
        err = np.abs(got[key] - d)
        if codec.kind == "fp16":
            assert np.all(err <= np.abs(d) * 2**-11 + 1e-7)
        else:
            rows = d.reshape(d.shape[0], -1) if codec.per_row and d.ndim > 1 else d.reshape(1, -1)
            bound = np.abs(rows).max(axis=1) / 127 / 2 + 1e-7
            assert np.all(err.reshape(rows.shape) <= bound[:, None])
        np.testing.assert_allclose(residual[key], d - got[key], atol=1e-12)
    assert payload[A].dtype == (np.float16 if codec.kind == "fp16" else np.int8)


def test_topk_sends_the_largest_and_error_feedback_keeps_the_rest() -> None:
    rng = np.random.default_rng(3)
    glob, local = skill(rng), skill(rng)
    codec = Codec("topk", topk_fraction=0.25)
    payload, residual = encode_delta(local, glob, codec)
    got = decode_delta(payload, glob, codec)
    for key in glob:
        d = local[key].astype(np.float64) - glob[key].astype(np.float64)
        k = int(np.ceil(0.25 * d.size))
        assert np.count_nonzero(got[key]) == k
        kept = np.abs(d).reshape(-1)[payload[key + "#idx"]]
        assert kept.min() >= np.sort(np.abs(d).reshape(-1))[-k] - 1e-12
        np.testing.assert_allclose(got[key] + residual[key], d, atol=1e-6)  # nothing lost
    # next round with no new training: the residual is sent, in the largest-first order
    total = {k: v.copy() for k, v in got.items()}
    for _ in range(4):
        payload, residual = encode_delta(glob, glob, codec, residual)
        for key, v in decode_delta(payload, glob, codec).items():
            total[key] += v
    for key in glob:
        d = local[key].astype(np.float64) - glob[key].astype(np.float64)
        np.testing.assert_allclose(total[key], d, atol=1e-6)


def test_malformed_payload_is_refused() -> None:
    rng = np.random.default_rng(4)
    glob = skill(rng)
    payload, _ = encode_delta(skill(rng), glob, Codec("topk"))
    payload[A + "#idx"] = payload[A + "#idx"] + 10_000
    with pytest.raises(ValueError, match="top-k"):
        decode_delta(payload, glob, Codec("topk"))
    with pytest.raises(ValueError, match="keys"):
        decode_delta({A: glob[A]}, glob, Codec("none"))


# ---------------------------------------------------------------------------- LoRA rules
PACKED_CODECS = [Codec("none", packed=True), Codec("fp16", packed=True),
                 Codec("int8", packed=True), Codec("int8", per_row=True, packed=True),
                 Codec("topk", topk_fraction=0.3, packed=True),
                 Codec("topk", topk_fraction=1.0, packed=True)]


@pytest.mark.parametrize("codec", PACKED_CODECS)
def test_packed_payload_round_trips_bit_for_bit(codec: Codec) -> None:
    # Prepare: mappings in different key orders on the two sides; a 0-size tensor
    rng = np.random.default_rng(4)
    glob, local = skill(rng), skill(rng)
    glob["stem.empty"], local["stem.empty"] = np.zeros((0, 3), np.float32), np.zeros((0, 3),
                                                                                     np.float32)
    payload, _ = encode_delta(local, glob, codec)
    # Execute
    wire = to_wire(payload, glob, codec)
    back = from_wire(wire, dict(reversed(list(glob.items()))), codec)
    # Assert: one flat array per dtype, and exactly the unpacked payload behind it
    assert all(k.startswith(PACKED) and v.ndim == 1 for k, v in wire.items())
    assert len(wire) == len({dtype for _, dtype, _ in payload_layout(glob, codec)})
    assert sum(v.size for v in wire.values()) == sum(v.size for v in payload.values())
    assert set(back) == set(payload)
    for key, arr in payload.items():
        assert back[key].dtype == arr.dtype
        np.testing.assert_array_equal(back[key], arr)


def test_unpacked_codec_leaves_the_payload_as_it_is() -> None:
    rng = np.random.default_rng(5)
    glob, local = skill(rng), skill(rng)
    payload, _ = encode_delta(local, glob, Codec("int8"))
    assert to_wire(payload, glob, Codec("int8")).keys() == payload.keys()


def test_malformed_packed_payload_is_refused() -> None:
    rng = np.random.default_rng(6)
    glob, local = skill(rng), skill(rng)
    codec = Codec("int8", packed=True)
    wire = to_wire(encode_delta(local, glob, codec)[0], glob, codec)
    ints, floats = PACKED + "int8", PACKED + "float32"
    with pytest.raises(ValueError, match="needs 21 values"):
        from_wire({**wire, ints: wire[ints][:-1]}, glob, codec)
    with pytest.raises(ValueError, match="needs 21 values"):
        from_wire({**wire, ints: np.concatenate([wire[ints], wire[ints]])}, glob, codec)
    with pytest.raises(ValueError, match=r"missing \['#packed.float32'\]"):
        from_wire({ints: wire[ints]}, glob, codec)
    with pytest.raises(ValueError, match=r"unknown \['#packed.float64'\]"):
        from_wire({**wire, PACKED + "float64": wire[floats].astype(np.float64)}, glob, codec)
    with pytest.raises(ValueError, match="float64"):
        from_wire({**wire, floats: wire[floats].astype(np.float64)}, glob, codec)
    with pytest.raises(ValueError, match="shape"):
        from_wire({**wire, ints: wire[ints].reshape(1, -1)}, glob, codec)


def test_ffa_average_of_products_is_product_of_average() -> None:
    rng = np.random.default_rng(5)
    glob = skill(rng)
    states = []
    for _ in range(3):
        s = skill(rng)
        s[A] = glob[A].copy()  # A frozen at its shared initialisation
        states.append({k: v.astype(np.float64) for k, v in s.items()})
    w = [1.0, 2.0, 5.0]
    out = aggregate_lora(states, w, "ffa", reference=glob, alpha=4.0, rank=2).skill
    np.testing.assert_array_equal(out[A], glob[A])
    share = np.asarray(w) / sum(w)
    mean_products = sum(s * st[B] @ st[A] for s, st in zip(share, states, strict=True))
    np.testing.assert_allclose(out[B] @ out[A], mean_products, rtol=1e-12, atol=1e-12)


def test_ffa_ignores_a_site_that_moved_a() -> None:
    rng = np.random.default_rng(6)
    glob = skill(rng)
    out = aggregate_lora([skill(rng), skill(rng)], [1, 1], "ffa", reference=glob, alpha=4.0,
                         rank=2).skill
    np.testing.assert_array_equal(out[A], glob[A])


def test_naive_rule_is_todays_average() -> None:
    rng = np.random.default_rng(7)
    states = [skill(rng) for _ in range(3)]
    out = aggregate_lora(states, [1, 2, 3], "naive", reference=states[0], alpha=4, rank=2)
    for key, value in weighted_average(states, [1, 2, 3]).items():
        np.testing.assert_array_equal(out.skill[key], value)


def test_svd_rule_exact_when_average_product_has_the_rank() -> None:
    rng = np.random.default_rng(8)
    glob = skill(rng)
    a = rng.normal(size=(2, 5))
    states = [{A: a, B: rng.normal(size=(4, 2)), "head.w": np.ones(3)} for _ in range(3)]
    res = aggregate_lora(states, [1, 1, 2], "svd", reference=glob, alpha=4.0, rank=2)
    target = sum(w * 2.0 * s[B] @ s[A] for w, s in zip([0.25, 0.25, 0.5], states, strict=True))
    np.testing.assert_allclose(2.0 * res.skill[B].astype(np.float64) @ res.skill[A], target,
                               rtol=1e-5, atol=1e-5)
    assert res.report["svd_truncation_error"] < 1e-12
    assert res.skill[A].dtype == np.float32


def test_svd_rule_on_convolutional_factors_averages_the_kernels_update() -> None:
    # Prepare: peft's Conv LoRA factors: A (r x C x k x k), B (out x r x 1 x 1), rank 2
    rng = np.random.default_rng(12)
    a_key, b_key = "m.conv.lora_A.weight", "m.conv.lora_B.weight"
    glob = {a_key: rng.normal(size=(2, 3, 3, 3)).astype(np.float32),
            b_key: rng.normal(size=(4, 2, 1, 1)).astype(np.float32)}
    a = rng.normal(size=(2, 3, 3, 3))
    states = [{a_key: a, b_key: rng.normal(size=(4, 2, 1, 1))} for _ in range(2)]
    # Execute
    res = aggregate_lora(states, [1, 3], "svd", reference=glob, alpha=4.0, rank=2)

    # Assert: the factors keep their shapes, and B.flatten(1) @ A.flatten(1) is the weighted
    # average of the sites' kernel updates (exact: all share A, so the average has rank 2)
    def dw(s: dict[str, np.ndarray]) -> np.ndarray:
        return 2.0 * np.asarray(s[b_key], np.float64).reshape(4, 2) @ np.asarray(
            s[a_key], np.float64).reshape(2, 27)

    assert res.skill[a_key].shape == (2, 3, 3, 3) and res.skill[b_key].shape == (4, 2, 1, 1)
    np.testing.assert_allclose(dw(res.skill), 0.25 * dw(states[0]) + 0.75 * dw(states[1]),
                               rtol=1e-5, atol=1e-5)
    assert res.report["svd_truncation_error"] < 1e-6


def test_svd_rule_reports_truncation_error() -> None:
    rng = np.random.default_rng(9)
    glob = skill(rng)
    states = [{k: v.astype(np.float64) for k, v in skill(rng).items()} for _ in range(3)]
    res = aggregate_lora(states, [1, 1, 1], "svd", reference=glob, alpha=4.0, rank=2)
    dw = sum(2.0 * s[B] @ s[A] for s in states) / 3
    s = np.linalg.svd(dw, compute_uv=False)
    expected = np.sqrt(np.sum(s[2:] ** 2)) / np.linalg.norm(dw)
    assert res.report["svd_truncation_error"] == pytest.approx(expected, rel=1e-9)
    assert 0 < expected < 1


def test_fedsa_shares_a_keeps_each_sites_b() -> None:
    rng = np.random.default_rng(10)
    states = [skill(rng) for _ in range(2)]
    res = aggregate_lora(states, [1, 3], "fedsa", reference=states[0], alpha=4.0, rank=2)
    np.testing.assert_allclose(res.skill[A], 0.25 * states[0][A] + 0.75 * states[1][A],
                               rtol=1e-6)
    assert [p[B].tolist() for p in res.personal] == [s[B].tolist() for s in states]


def test_factorise_is_best_rank_r() -> None:
    rng = np.random.default_rng(11)
    dw = rng.normal(size=(6, 5))
    b, a, err = factorise(dw, 3, 0.5)
    assert err == pytest.approx(np.linalg.norm(dw - 0.5 * b @ a))


# ---------------------------------------------------------------------------- mixed ranks
def test_mixed_ranks_round_trip() -> None:
    rng = np.random.default_rng(12)
    low = {k: v.astype(np.float64) for k, v in skill(rng, rank=1).items()}
    padded = pad_rank(low, 4, alpha=4.0)
    assert padded[A].shape == (4, 5) and padded[B].shape == (4, 4)
    np.testing.assert_allclose((4.0 / 4) * padded[B] @ padded[A], (4.0 / 1) * low[B] @ low[A])
    back, err = project_rank(padded, 4, alpha=4.0, site_rank=1)
    assert err < 1e-12
    np.testing.assert_allclose(4.0 * back[B] @ back[A], 4.0 * low[B] @ low[A], atol=1e-12)
    assert back[A].shape == (1, 5)


def test_mixed_ranks_round_trip_on_convolutional_factors() -> None:
    # Prepare: a rank-1 site's Conv LoRA pair, A (r x C x k x k) and B (out x r x 1 x 1)
    rng = np.random.default_rng(15)
    a_key, b_key = "m.conv.lora_A.weight", "m.conv.lora_B.weight"
    low = {a_key: rng.normal(size=(1, 3, 3, 3)), b_key: rng.normal(size=(4, 1, 1, 1))}

    def dw(s: dict[str, np.ndarray], scale: float) -> np.ndarray:
        r = s[a_key].shape[0]
        return scale * s[b_key].reshape(4, r) @ s[a_key].reshape(r, 27)

    # Execute: padded to the task's rank 4, then cut back to the site's rank 1
    padded = pad_rank(low, 4, alpha=4.0)
    back, err = project_rank(padded, 4, alpha=4.0, site_rank=1)

    # Assert: every step keeps the kernel update and the factors' convolutional shapes
    assert padded[a_key].shape == (4, 3, 3, 3) and padded[b_key].shape == (4, 4, 1, 1)
    np.testing.assert_allclose(dw(padded, 4.0 / 4), dw(low, 4.0 / 1))
    assert back[a_key].shape == (1, 3, 3, 3) and back[b_key].shape == (4, 1, 1, 1)
    assert err < 1e-12
    np.testing.assert_allclose(dw(back, 4.0), dw(low, 4.0), atol=1e-12)


def test_mixed_ranks_aggregate_in_product_space() -> None:
    rng = np.random.default_rng(13)
    glob = {k: v.astype(np.float64) for k, v in skill(rng, rank=2).items()}
    lo = {k: v.astype(np.float64) for k, v in skill(rng, rank=1).items()}
    hi = {k: v.astype(np.float64) for k, v in skill(rng, rank=2).items()}
    res = aggregate_lora([pad_rank(lo, 2, 4.0), hi], [1, 1], "svd", reference=glob, alpha=4.0,
                         rank=2)
    target = 0.5 * (4.0 * lo[B] @ lo[A]) + 0.5 * (2.0 * hi[B] @ hi[A])
    got = 2.0 * res.skill[B] @ res.skill[A]
    s = np.linalg.svd(target, compute_uv=False)
    assert np.linalg.norm(got - target) == pytest.approx(np.sqrt(np.sum(s[2:] ** 2)), abs=1e-9)


def test_project_keeps_a_when_b_is_zero() -> None:
    rng = np.random.default_rng(14)
    glob = skill(rng, rank=4, zero_b=True)
    out, err = project_rank(glob, 4, 4.0, 2)
    np.testing.assert_array_equal(out[A], glob[A][:2])
    assert out[B].shape == (4, 2) and err == 0.0


def test_lora_pairs() -> None:
    assert lora_pairs([A, B, "head.w"]) == {"adapter.m": (A, B)}


# ---------------------------------------------------------------------------- sampling
def test_sampling_is_deterministic_and_never_starves() -> None:
    sites = {"t1": [f"s{i}" for i in range(10)], "t2": ["x", "y"], "t3": ["z"]}
    cfgs = {"t1": SamplingConfig(0.3, 2), "t2": SamplingConfig(0.1, 2),
            "t3": SamplingConfig(0.5, 3)}
    draws = [sample_sites(sites, cfgs, seed=7, server_round=r) for r in range(1, 30)]
    assert draws == [sample_sites(sites, cfgs, seed=7, server_round=r) for r in range(1, 30)]
    assert draws != [sample_sites(sites, cfgs, seed=8, server_round=r) for r in range(1, 30)]
    for draw in draws:
        assert len(draw["t1"]) == 3 and draw["t2"] == ["x", "y"] and draw["t3"] == ["z"]
    assert len({tuple(d["t1"]) for d in draws}) > 1  # rounds differ
    assert sample_size(10, SamplingConfig(0.05, 4)) == 4
    assert sample_sites(sites, {}, seed=0, server_round=1) == {k: sorted(v)
                                                                for k, v in sites.items()}


def test_sampling_config_is_validated() -> None:
    with pytest.raises(ValueError):
        SamplingConfig(0.0)
    with pytest.raises(ValueError):
        SamplingConfig(0.5, 0)


# ---------------------------------------------------------------------------- server opt
def test_server_optimisers_follow_flowers_rules() -> None:
    x = {"w": np.array([1.0, -2.0], np.float32)}
    agg = {"w": np.array([1.5, -2.5], np.float32)}
    assert ServerOptimizer(ServerOptConfig("fedavg")).step(x, agg)["w"].tolist() == [1.5, -2.5]
    m = ServerOptimizer(ServerOptConfig("fedavgm", lr=1.0, momentum=0.5))
    first = m.step(x, agg)["w"]
    np.testing.assert_allclose(first, [1.5, -2.5])
    second = m.step({"w": first}, {"w": first + np.float32(1.0)})["w"]
    np.testing.assert_allclose(second, first + 1.0 + 0.5 * np.array([0.5, -0.5]))
    adam = ServerOptimizer(ServerOptConfig("fedadam", eta=0.1))
    d = np.array([0.5, -0.5])
    mt, vt = 0.1 * d, 0.01 * d**2
    eta = 0.1 * np.sqrt(1 - 0.99**2) / (1 - 0.9**2)
    np.testing.assert_allclose(adam.step(x, agg)["w"], x["w"] + eta * mt / (np.sqrt(vt) + 1e-3),
                               rtol=1e-6)
    yogi = ServerOptimizer(ServerOptConfig("fedyogi", eta=0.1))
    vt = 0.01 * d**2  # v0 = 0: v - (1 - b2) d^2 sign(0 - d^2)
    np.testing.assert_allclose(yogi.step(x, agg)["w"], x["w"] + 0.1 * mt / (np.sqrt(vt) + 1e-3),
                               rtol=1e-6)
    with pytest.raises(ValueError):
        ServerOptConfig("sgd")
