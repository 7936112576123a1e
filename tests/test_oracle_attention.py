"""The oracle's attention_weights and attention: hand-worked values and properties (weights @ v,
return_weights, query blocking, grouped-query heads, is_causal, bias, scale, fully-masked rows)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refmask
from refmask import oracle
from refmask.testing import assert_attention_close, assert_weights_close
from refmask.testing.cases import DTYPES, POLICIES, numpy_dtype


def bits(x):
    return np.ascontiguousarray(x).view(np.uint8)


def assert_bit_identical(actual, expected):
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    np.testing.assert_array_equal(bits(actual), bits(expected))


# ---------------------------------------------------------------------------------------------
# hand-worked


def test_attention_hand_worked_single_query():
    # scores = ln3 * [1, 0] -> weights [3/4, 1/4] -> out = 3/4 * 4 + 1/4 * 8 = 5
    q = np.array([[1.0, 0.0]])
    k = np.array([[1.0, 0.0], [0.0, 1.0]])
    v = np.array([[4.0, -4.0], [8.0, 0.0]])
    out, w = refmask.attention(q, k, v, scale=math.log(3), return_weights=True)
    assert_weights_close(w, np.array([[0.75, 0.25]]))
    assert_attention_close(out, np.array([[5.0, -3.0]]))


def test_attention_hand_worked_mask_and_fully_masked_row():
    q = np.zeros((1, 2, 2))  # (H, T, D): all scores 0, so kept keys share weight equally
    k = np.zeros((1, 3, 2))
    v = np.array([[[3.0], [6.0], [30.0]]])
    mask = np.array([[True, True, False], [False, False, False]])
    expected = {
        "zero": [[4.5], [0.0]],
        "uniform": [[4.5], [13.0]],  # the mean of all of v, masked keys included
        "nan": [[4.5], [np.nan]],
    }
    for policy, out in expected.items():
        actual = refmask.attention(q, k, v, mask, fully_masked=policy)
        np.testing.assert_array_equal(actual, np.array([out]))


def test_default_scale_is_one_over_sqrt_d():
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal((2, 3, 5)), rng.standard_normal((2, 4, 5))
    assert_bit_identical(refmask.attention_weights(q, k), refmask.attention_weights(q, k, scale=1 / math.sqrt(5)))
    expected = refmask.masked_softmax(q @ np.swapaxes(k, -1, -2) / math.sqrt(5))
    assert_weights_close(refmask.attention_weights(q, k), expected)


# ---------------------------------------------------------------------------------------------
# random problems


@st.composite
def attention_problems(draw, dtypes=DTYPES):
    dtype = draw(st.sampled_from(dtypes))
    batch = draw(st.sampled_from([(), (0,), (1,), (2,)]))
    kv_heads = draw(st.integers(1, 2))
    heads = kv_heads * draw(st.integers(1, 3))
    t, s = draw(st.integers(0, 5)), draw(st.integers(0, 6))
    d, dv = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dt = numpy_dtype(dtype)
    q = rng.standard_normal((*batch, heads, t, d)).astype(dt)
    k = rng.standard_normal((*batch, kv_heads, s, d)).astype(dt)
    v = rng.standard_normal((*batch, kv_heads, s, dv)).astype(dt)
    form = draw(st.sampled_from(["none", "causal", "padding", "full"]))
    if form == "none":
        mask = None
    elif form == "causal":
        mask = refmask.causal_mask(t, s, align=draw(st.sampled_from(["top_left", "bottom_right"])))
    elif form == "padding" and batch:
        lengths = rng.integers(0, s + 1, size=batch[0])
        mask = refmask.attention_padding_mask(refmask.padding_mask(lengths, s))
    else:
        mask = rng.random((*batch, heads, t, s)) < 0.6
    return q, k, v, mask, dtype


@settings(max_examples=80, deadline=None)
@given(problem=attention_problems(dtypes=("float64",)), fully_masked=st.sampled_from(["zero", "uniform"]))
def test_attention_equals_attention_weights_times_v_in_float64(problem, fully_masked):
    q, k, v, mask, _ = problem
    w = refmask.attention_weights(q, k, mask, fully_masked=fully_masked)
    heads = q.shape[-3]
    v_full = np.repeat(v, heads // v.shape[-3], axis=-3)
    out = refmask.attention(q, k, v, mask, fully_masked=fully_masked)
    scale = float(np.abs(v).max(initial=0.0))
    assert_attention_close(out, w @ v_full, scale=scale)


@settings(max_examples=80, deadline=None)
@given(problem=attention_problems(), fully_masked=st.sampled_from(POLICIES))
def test_return_weights_changes_nothing(problem, fully_masked):
    q, k, v, mask, _ = problem
    out = refmask.attention(q, k, v, mask, fully_masked=fully_masked)
    out_too, w = refmask.attention(q, k, v, mask, fully_masked=fully_masked, return_weights=True)
    assert out.shape == q.shape[:-1] + v.shape[-1:] and out.dtype == q.dtype
    assert_bit_identical(out_too, out)
    assert_bit_identical(w, refmask.attention_weights(q, k, mask, fully_masked=fully_masked))


@settings(max_examples=80, deadline=None)
@given(problem=attention_problems(), fully_masked=st.sampled_from(POLICIES), block=st.integers(1, 40))
def test_query_blocking_is_invisible(problem, fully_masked, block):
    q, k, v, mask, dtype = problem
    whole, _ = refmask.attention(q, k, v, mask, fully_masked=fully_masked, return_weights=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(oracle, "_ATTENTION_BLOCK_ELEMENTS", block)
        blocked = refmask.attention(q, k, v, mask, fully_masked=fully_masked)
    # NumPy's matmul (BLAS) may sum in another order for fewer rows, moving float64 intermediates
    # by an ULP or so. Rounded to a narrower dtype that is invisible, except where the exact output
    # sits on a rounding midpoint (e.g. the "uniform" mean of bfloat16 values): there it may flip
    # one rounding step, so one step (eps * max|v|) is the bound, not bit identity.
    scale = float(np.abs(v.astype(np.float64)).max(initial=0.0))
    assert_attention_close(blocked, whole, scale=scale, max_ulp=None if dtype == "float64" else 1)


@settings(max_examples=60, deadline=None)
@given(problem=attention_problems(), fully_masked=st.sampled_from(POLICIES))
def test_grouped_query_attention_equals_explicitly_repeated_heads(problem, fully_masked):
    q, k, v, mask, _ = problem
    heads, kv_heads = q.shape[-3], k.shape[-3]
    group = heads // kv_heads
    # query head h reads key/value head h // group, written out head by head
    k_full = np.stack([k[..., h // group, :, :] for h in range(heads)], axis=-3)
    v_full = np.stack([v[..., h // group, :, :] for h in range(heads)], axis=-3)
    grouped = refmask.attention(q, k, v, mask, fully_masked=fully_masked, return_weights=True)
    repeated = refmask.attention(q, k_full, v_full, mask, fully_masked=fully_masked, return_weights=True)
    assert_bit_identical(grouped[0], repeated[0])
    assert_bit_identical(grouped[1], repeated[1])


@settings(max_examples=60, deadline=None)
@given(problem=attention_problems())
def test_is_causal_is_and_with_top_left_causal(problem):
    q, k, v, mask, _ = problem
    t, s = q.shape[-2], k.shape[-2]
    explicit = refmask.and_masks(mask, refmask.causal_mask(t, s))
    assert_bit_identical(refmask.attention(q, k, v, mask, is_causal=True), refmask.attention(q, k, v, explicit))


@settings(max_examples=60, deadline=None)
@given(problem=attention_problems(dtypes=("float64", "float32")), fully_masked=st.sampled_from(POLICIES))
def test_bias_is_added_before_the_mask_and_masked_bias_changes_nothing(problem, fully_masked):
    q, k, _v, mask, _ = problem
    t, s = q.shape[-2], k.shape[-2]
    alibi = (-0.5 * np.abs(np.arange(t)[:, None] - np.arange(s)[None, :])).astype(q.dtype)
    heads = q.shape[-3]
    scores = (q.astype(np.float64) @ np.swapaxes(np.repeat(k, heads // k.shape[-3], axis=-3), -1, -2)
              .astype(np.float64)) / math.sqrt(q.shape[-1]) + alibi
    expected = refmask.masked_softmax(scores, mask, fully_masked=fully_masked).astype(q.dtype)
    actual = refmask.attention_weights(q, k, mask, bias=alibi, fully_masked=fully_masked)
    assert_weights_close(actual, expected)
    if mask is not None:
        keep = np.broadcast_to(mask, scores.shape)
        poisoned_bias = np.where(keep, np.broadcast_to(alibi, scores.shape), np.nan).astype(q.dtype)
        dirty = refmask.attention_weights(q, k, mask, bias=poisoned_bias, fully_masked=fully_masked)
        assert_bit_identical(dirty, actual)


@settings(max_examples=60, deadline=None)
@given(problem=attention_problems())
def test_fully_masked_rows_follow_the_policy(problem):
    q, k, v, _, _dtype = problem
    heads, t, s = q.shape[-3], q.shape[-2], k.shape[-2]
    nothing = np.zeros((t, s), bool)
    v_mean = np.repeat(v, heads // v.shape[-3], axis=-3).astype(np.float64).mean(axis=-2, keepdims=True) if s else None
    zero = refmask.attention(q, k, v, nothing, fully_masked="zero")
    nan = refmask.attention(q, k, v, nothing, fully_masked="nan")
    uniform = refmask.attention(q, k, v, nothing, fully_masked="uniform")
    assert (zero == 0).all()
    if s:
        assert np.isnan(nan.astype(np.float64)).all()
        assert v_mean is not None
        expected = np.broadcast_to(v_mean, uniform.shape).astype(q.dtype)
        assert_attention_close(uniform, expected, scale=float(np.abs(v.astype(np.float64)).max(initial=0.0)))
    else:
        # S = 0: out = weights @ v is an empty sum, 0 under every policy.
        assert (nan == 0).all() and (uniform == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch, t, s", [((0,), 3, 4), ((2,), 0, 4), ((2,), 3, 0), ((), 0, 0)])
@pytest.mark.parametrize("fully_masked", POLICIES)
def test_zero_length_axes_give_empty_or_zero_outputs(dtype, batch, t, s, fully_masked):
    d = numpy_dtype(dtype)
    q, k, v = np.ones((*batch, 2, t, 3), d), np.ones((*batch, 1, s, 3), d), np.ones((*batch, 1, s, 5), d)
    mask = refmask.causal_mask(t, s)
    out, w = refmask.attention(q, k, v, mask, fully_masked=fully_masked, return_weights=True)
    assert out.shape == (*batch, 2, t, 5) and out.dtype == d
    assert w.shape == (*batch, 2, t, s) and w.dtype == d
    assert (out.astype(np.float64) == 0).all()  # empty, or an empty sum over S = 0 keys
    assert refmask.attention_weights(q, k, mask).shape == (*batch, 2, t, s)


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_accepts_unbatched_and_headless_layouts(dtype):
    d = numpy_dtype(dtype)
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal(shape).astype(d) for shape in [(4, 3), (5, 3), (5, 2)])
    out = refmask.attention(q, k, v, refmask.causal_mask(4, 5))
    batched = refmask.attention(q[None, None], k[None, None], v[None, None], refmask.causal_mask(4, 5))
    assert out.shape == (4, 2) and out.dtype == d
    assert_bit_identical(out, batched[0, 0])
