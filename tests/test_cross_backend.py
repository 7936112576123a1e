"""Every backend variant against the oracle, on the shared catalogue (refmask.testing.cases).

Masks and converters: bit-identical. Weights and outputs: exact structure (the same exact zeros,
the same NaNs), values within the per-dtype bounds of refmask.testing.tolerances. The expected
result is the oracle's on the inputs as the variant computes on them (`variant.expected`): the
inputs themselves, except under JAX's default configuration, where float64 enters as float32.
That the public API with backend="numpy" is the oracle is tested in test_import_and_dispatch.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import wide_scores
from harness.compare import assert_identical
from refmask import oracle
from refmask._backends import unavailable_reason
from refmask.testing import assert_attention_close, assert_lse_close, assert_weights_close, tolerances, ulp_distance
from refmask.testing.cases import ATTENTION_CASES, DTYPES, MASK_CALLS, POLICIES, numpy_dtype


@pytest.mark.parametrize("call", MASK_CALLS, ids=lambda c: c.id)
def test_mask_function_is_bit_identical_to_oracle(variant, call):
    expected = variant.expected(call.fn, *call.args, **call.kwargs)
    actual = variant.call(call.fn, *call.args, **call.kwargs)
    assert_identical(actual, expected, f"{call.fn}{call.args}")


cases = pytest.mark.parametrize("case", ATTENTION_CASES, ids=lambda c: c.id)
dtypes = pytest.mark.parametrize("dtype", DTYPES)
policies = pytest.mark.parametrize("fully_masked", POLICIES)


@cases
@dtypes
@policies
def test_masked_softmax_matches_oracle(variant, case, dtype, fully_masked):
    scores, mask = case.arrays(dtype)["scores"], case.mask()
    expected = variant.expected("masked_softmax", scores, mask, fully_masked=fully_masked)
    actual = variant.call("masked_softmax", scores, mask, fully_masked=fully_masked)
    assert_weights_close(actual, expected, mask=mask, scores=variant.computed_input(scores))


@pytest.mark.parametrize(("case", "fully_masked"),
                         [(c, POLICIES[i % len(POLICIES)]) for i, c in enumerate(ATTENTION_CASES)],
                         ids=[c.id for c in ATTENTION_CASES])
def test_accurate_float32_masked_softmax_is_within_a_flat_bound(variant, case, fully_masked):
    """accuracy="accurate": within SOFTMAX_MAX_ULP of the oracle whatever the spread, here scores of
    scale 4, where the plain float32 softmax is not (test_tolerances.py)."""
    scores, mask = 4 * case.arrays("float32")["scores"], case.mask()
    expected = variant.expected("masked_softmax", scores, mask, fully_masked=fully_masked)
    actual = variant.call("masked_softmax", scores, mask, fully_masked=fully_masked, accuracy="accurate")
    assert_weights_close(actual, expected, mask=mask, table=tolerances.SOFTMAX_MAX_ULP)


@pytest.mark.parametrize("scale", [4.0, 16.0])
@pytest.mark.parametrize("accuracy", ["fast", "accurate"])
def test_float32_masked_softmax_accuracy_on_wide_scores(variant, accuracy, scale):
    """Scores of scale 4 and 16 over 512 keys: "accurate" within the flat SOFTMAX_MAX_ULP, "fast" within
    the float32 error model that grows with |x - max| (softmax_max_ulp)."""
    scores, keep = wide_scores.draw(scale)
    expected = variant.expected("masked_softmax", scores, keep)
    actual = variant.call("masked_softmax", scores, keep, accuracy=accuracy)
    if accuracy == "accurate":
        assert_weights_close(actual, expected, mask=keep, table=tolerances.SOFTMAX_MAX_ULP)
    else:
        assert_weights_close(actual, expected, mask=keep, scores=scores)


@cases
@dtypes
@policies
def test_attention_weights_match_oracle(variant, case, dtype, fully_masked):
    a, mask = case.arrays(dtype), case.mask()
    expected = variant.expected("attention_weights", a["q"], a["k"], mask, fully_masked=fully_masked)
    actual = variant.call("attention_weights", a["q"], a["k"], mask, fully_masked=fully_masked)
    assert_weights_close(actual, expected, mask=mask)


@cases
@dtypes
@policies
def test_attention_matches_oracle(variant, case, dtype, fully_masked):
    a, mask = case.arrays(dtype), case.mask()
    expected, expected_w = variant.expected(
        "attention", a["q"], a["k"], a["v"], mask, fully_masked=fully_masked, return_weights=True
    )
    out = variant.call("attention", a["q"], a["k"], a["v"], mask, fully_masked=fully_masked)
    out_w, w = variant.call(
        "attention", a["q"], a["k"], a["v"], mask, fully_masked=fully_masked, return_weights=True
    )
    v_scale = float(np.abs(variant.computed_input(a["v"]).astype(np.float64)).max(initial=0.0))
    assert_attention_close(out, expected, scale=v_scale)
    assert_attention_close(out_w, expected, scale=v_scale)
    assert_weights_close(w, expected_w, mask=mask)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_attention_is_causal_and_bias_match_oracle(variant, dtype):
    case = next(c for c in ATTENTION_CASES if c.id == "gqa-causal")
    a = case.arrays(dtype)
    bias = (-0.5 * np.abs(np.arange(5)[:, None] - np.arange(5)[None, :])).astype(numpy_dtype(dtype))
    padding = oracle.attention_padding_mask(oracle.padding_mask(np.array([5, 2]), 5))
    expected = variant.expected("attention", a["q"], a["k"], a["v"], padding, bias=bias, scale=0.3, is_causal=True)
    actual = variant.call("attention", a["q"], a["k"], a["v"], padding, bias=bias, scale=0.3, is_causal=True)
    assert_attention_close(actual, expected, scale=float(np.abs(a["v"].astype(np.float64)).max()))


@pytest.mark.parametrize("poison", [np.nan, np.inf, -np.inf, 1e30])
@policies
def test_masked_scores_never_change_the_result(variant, poison, fully_masked):
    case = next(c for c in ATTENTION_CASES if c.id == "causal+padding")
    scores, mask = case.arrays("float32")["scores"], case.mask()
    assert mask is not None
    clean = variant.call("masked_softmax", scores, mask, fully_masked=fully_masked)
    poisoned = np.where(mask, scores, np.float32(poison))
    dirty = variant.call("masked_softmax", poisoned, mask, fully_masked=fully_masked)
    assert_identical(dirty, clean, "masked_softmax with poisoned masked scores")


@st.composite
def softmax_problems(draw):
    dtype = draw(st.sampled_from(DTYPES))
    batch = draw(st.integers(0, 3))
    t = draw(st.integers(0, 6))
    s = draw(st.integers(0, 9))
    keep = np.array(draw(st.lists(st.booleans(), min_size=batch * t * s, max_size=batch * t * s)), bool)
    keep = keep.reshape(batch, t, s)
    seed = draw(st.integers(0, 2**32 - 1))
    scale = draw(st.sampled_from([0.1, 1.0, 4.0]))
    scores = (scale * np.random.default_rng(seed).standard_normal((batch, t, s))).astype(numpy_dtype(dtype))
    return scores, keep, draw(st.sampled_from(POLICIES))


# The variant holds no per-example state: its framework configuration is meant to hold for every example.
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(problem=softmax_problems())
def test_masked_softmax_random_problems_match_oracle(variant, problem):
    scores, keep, fully_masked = problem
    expected = variant.expected("masked_softmax", scores, keep, fully_masked=fully_masked)
    actual = variant.call("masked_softmax", scores, keep, fully_masked=fully_masked)
    assert_weights_close(actual, expected, mask=keep, scores=variant.computed_input(scores))


def test_jit_variant_traces_once_per_function_and_static_arguments_for_every_policy():
    if (why := unavailable_reason("jax")) is not None:
        pytest.skip(why)
    from harness.jax_variants import JitVariant

    jit = JitVariant("jax-jit", x64=False)
    case = next(c for c in ATTENTION_CASES if c.id == "causal+padding")
    mask = case.mask()
    with jit.configured():
        for seed in range(3):  # new values, same shapes: no new trace
            jit.call("masked_softmax", case.arrays("float32", seed)["scores"], mask, fully_masked="zero")
        (jitted,) = jit._jitted.values()
        assert jitted._cache_size() == 1
        # every policy is computed by the one program, and each is the oracle's
        scores = case.arrays("float32")["scores"]
        for policy in POLICIES:
            expected = jit.expected("masked_softmax", scores, mask, fully_masked=policy)
            assert_weights_close(jit.call("masked_softmax", scores, mask, fully_masked=policy), expected, mask=mask)
        assert len(jit._jitted) == 1 and jitted._cache_size() == 1
        jit.call("masked_softmax", scores, None, fully_masked="nan")
        assert len(jit._jitted) == 2  # a new static argument (no mask) is a new function


# softcap, sinks, lse and ALiBi: two catalogue cases (one with rows that keep no key), one dtype each
@pytest.mark.parametrize("case, dtype", [
    (next(c for c in ATTENTION_CASES if c.id == case_id), dtype)
    for case_id, dtype in [("gqa-causal", "bfloat16"), ("causal-T>S-bottom_right-fully-masked-rows", "float32")]
], ids=["gqa-causal-bfloat16", "fully-masked-rows-float32"])
def test_softcap_sinks_and_lse_match_oracle(variant, case, dtype):
    a, mask = case.arrays(dtype), case.mask()
    heads, t, s = case.heads, case.q_len, case.kv_len
    bias = oracle.alibi_bias(heads, t, s, align="bottom_right")
    sinks = np.linspace(-1.0, 1.0, heads).astype(np.float32)
    v_scale = float(np.abs(variant.computed_input(a["v"]).astype(np.float64)).max())
    # "nan" is asked for, yet with sinks a row with no kept key is exactly 0: the sink takes everything
    kw = {"bias": bias, "softcap": 2.0, "sinks": sinks, "fully_masked": "nan"}
    expected = variant.expected("attention", a["q"], a["k"], a["v"], mask, return_weights=True, return_lse=True, **kw)
    out, w, lse = variant.call("attention", a["q"], a["k"], a["v"], mask, return_weights=True, return_lse=True, **kw)
    assert_attention_close(out, expected[0], scale=v_scale, mask=mask)
    assert_weights_close(w, expected[1], mask=mask)
    assert_lse_close(lse, expected[2], mask=mask)
    # without sinks: -inf where no key is kept
    out, lse = variant.call("attention", a["q"], a["k"], a["v"], mask, softcap=2.0, return_lse=True)
    expected = variant.expected("attention", a["q"], a["k"], a["v"], mask, softcap=2.0, return_lse=True)
    assert_attention_close(out, expected[0], scale=v_scale, mask=mask)
    assert_lse_close(lse, expected[1], mask=mask)
    scores = a["scores"]
    w = variant.call("masked_softmax", scores, mask, sinks=sinks, fully_masked="uniform")
    assert_weights_close(w, variant.expected("masked_softmax", scores, mask, sinks=sinks), mask=mask)


@pytest.mark.parametrize("dtype", ["bfloat16", "float64"])
def test_alibi_matches_oracle(variant, dtype):
    args, kw = (12, 5, 9), {"align": "bottom_right", "offset": -2, "dtype": dtype}
    expected = variant.expected("alibi_bias", *args, **kw)
    actual = variant.call("alibi_bias", *args, **kw)
    slopes = variant.call("alibi_slopes", 12, dtype=dtype)
    if variant.computed_input(np.zeros(1)).dtype == np.float64:  # computed in float64: the oracle's, bit for bit
        assert_identical(actual, expected, "alibi_bias")
        assert_identical(slopes, variant.expected("alibi_slopes", 12, dtype=dtype), "alibi_slopes")
    else:  # jax without x64: float32 arithmetic, and float64 makes float32
        expected = expected.astype(actual.dtype)
        assert actual.dtype != np.float64
        assert float(ulp_distance(actual, expected).max()) <= tolerances.ALIBI_FLOAT32_MAX_ULP
