"""Every backend variant against the oracle, on the shared catalogue (refmask.testing.cases).

Masks and converters: bit-identical. Weights and outputs: exact structure (the same exact zeros,
the same NaNs), values within the per-dtype bounds of refmask.testing.tolerances.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refmask import oracle
from refmask.testing import assert_attention_close, assert_weights_close
from refmask.testing.cases import ATTENTION_CASES, DTYPES, MASK_CALLS, POLICIES, numpy_dtype


def assert_identical(actual, expected, what):
    """Same type structure, shape, dtype and bits (NaN == NaN)."""
    if isinstance(expected, tuple) or expected is None:
        assert type(actual) is type(expected), f"{what}: got {type(actual)}, oracle {type(expected)}"
        for a, e in zip(actual or (), expected or ()):
            assert_identical(a, e, what)
        return
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, oracle {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype}, oracle {expected.dtype}"
    differs = ~((actual == expected) | (np.isnan(actual) & np.isnan(expected)) if actual.dtype.kind == "f"
                else actual == expected)
    assert not differs.any(), f"{what}: {int(differs.sum())} entries differ, first at {np.argwhere(differs)[0]}"


@pytest.mark.parametrize("call", MASK_CALLS, ids=lambda c: c.id)
def test_mask_function_is_bit_identical_to_oracle(variant, call):
    expected = getattr(oracle, call.fn)(*call.args, **call.kwargs)
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
    expected = oracle.masked_softmax(scores, mask, fully_masked=fully_masked)
    actual = variant.call("masked_softmax", scores, mask, fully_masked=fully_masked)
    assert_weights_close(actual, expected, mask=mask, scores=scores)


@cases
@dtypes
@policies
def test_attention_weights_match_oracle(variant, case, dtype, fully_masked):
    a, mask = case.arrays(dtype), case.mask()
    expected = oracle.attention_weights(a["q"], a["k"], mask, fully_masked=fully_masked)
    actual = variant.call("attention_weights", a["q"], a["k"], mask, fully_masked=fully_masked)
    assert_weights_close(actual, expected, mask=mask)


@cases
@dtypes
@policies
def test_attention_matches_oracle(variant, case, dtype, fully_masked):
    a, mask = case.arrays(dtype), case.mask()
    expected, expected_w = oracle.attention(
        a["q"], a["k"], a["v"], mask, fully_masked=fully_masked, return_weights=True
    )
    out = variant.call("attention", a["q"], a["k"], a["v"], mask, fully_masked=fully_masked)
    out_w, w = variant.call(
        "attention", a["q"], a["k"], a["v"], mask, fully_masked=fully_masked, return_weights=True
    )
    v_scale = float(np.abs(a["v"].astype(np.float64)).max(initial=0.0))
    assert_attention_close(out, expected, scale=v_scale)
    assert_attention_close(out_w, expected, scale=v_scale)
    assert_weights_close(w, expected_w, mask=mask)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_attention_is_causal_and_bias_match_oracle(variant, dtype):
    case = next(c for c in ATTENTION_CASES if c.id == "gqa-causal")
    a = case.arrays(dtype)
    bias = (-0.5 * np.abs(np.arange(5)[:, None] - np.arange(5)[None, :])).astype(numpy_dtype(dtype))
    padding = oracle.attention_padding_mask(oracle.padding_mask(np.array([5, 2]), 5))
    expected = oracle.attention(a["q"], a["k"], a["v"], padding, bias=bias, scale=0.3, is_causal=True)
    actual = variant.call("attention", a["q"], a["k"], a["v"], padding, bias=bias, scale=0.3, is_causal=True)
    assert_attention_close(actual, expected, scale=float(np.abs(a["v"].astype(np.float64)).max()))


@pytest.mark.parametrize("poison", [np.nan, np.inf, -np.inf, 1e30])
@policies
def test_masked_scores_never_change_the_result(variant, poison, fully_masked):
    case = next(c for c in ATTENTION_CASES if c.id == "causal+padding")
    scores, mask = case.arrays("float32")["scores"], case.mask()
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


@settings(max_examples=40, deadline=None)
@given(problem=softmax_problems())
def test_masked_softmax_random_problems_match_oracle(variant, problem):
    scores, keep, fully_masked = problem
    expected = oracle.masked_softmax(scores, keep, fully_masked=fully_masked)
    actual = variant.call("masked_softmax", scores, keep, fully_masked=fully_masked)
    assert_weights_close(actual, expected, mask=keep, scores=scores)
