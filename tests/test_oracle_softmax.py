"""The oracle's masked softmax: the seeds' worked examples, hand-worked rows, and properties over
random shapes, masks and dtypes (float64, float32, float16, bfloat16)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refmask
from refmask import _dtypes
from refmask.testing import assert_weights_close, tolerances
from refmask.testing.cases import DTYPES, POLICIES, numpy_dtype


def bools(*rows):
    return np.array(rows, dtype=np.int64).astype(bool)


# ---------------------------------------------------------------------------------------------
# seed 003 (Judit Acs, "Masking attention weights"): lengths [4, 1, 6, 3], right padding

# The article's softmax table, printed to 4 decimals. Its rows have 4, 1, 6 and 3 non-zero
# weights, so they belong to the lengths [4, 1, 6, 3] (X_len) and to the article's *second*
# printed mask; its first printed mask ([[1,1,1,1,0,0],[1,1,1,1,1,1],[1,0,0,0,0,0],[1,1,1,1,1,1]],
# lengths 4, 6, 1, 6) is inconsistent with X_len. The printed softmax is the ground truth here.
SEED_003_SOFTMAX = np.array([
    [0.2445, 0.4455, 0.1099, 0.2002, 0.0000, 0.0000],
    [1.0000, 0.0000, 0.0000, 0.0000, 0.0000, 0.0000],
    [0.0822, 0.3335, 0.0551, 0.2235, 0.1227, 0.1830],
    [0.1593, 0.1946, 0.6461, 0.0000, 0.0000, 0.0000],
])
# Printed to 4 decimals: a correct value lies within half a unit of the last decimal.
SEED_003_PRINTED_ATOL = 5e-5


def seed_003_scores():
    state = np.random.get_state()
    try:
        np.random.seed(1)
        return np.random.random((4, 6)).round(1) * 2 + 3
    finally:
        np.random.set_state(state)


def test_seed_003_masked_softmax_reproduces_the_printed_table():
    scores = seed_003_scores()
    mask = refmask.padding_mask(np.array([4, 1, 6, 3]), 6)
    weights = refmask.masked_softmax(scores, mask)
    assert weights.dtype == np.float64
    np.testing.assert_allclose(weights, SEED_003_SOFTMAX, rtol=0, atol=SEED_003_PRINTED_ATOL)
    # The zeros the article printed are exact zeros, not small numbers.
    assert (weights[~mask] == 0).all()


# ---------------------------------------------------------------------------------------------
# seed 002 (crossvalidated 598239): padded *queries* too


SEED_002_IDS = np.array([[1, 2, 3, 0, 0, 0], [1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 0]])


def plain_softmax(x):
    """A framework's plain softmax over the last axis (no mask, IEEE arithmetic)."""
    with np.errstate(invalid="ignore"):
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)


def test_seed_002_padded_query_rows():
    valid = refmask.padding_mask_from_ids(SEED_002_IDS, 0)
    mask = refmask.attention_padding_mask(valid, valid)[:, 0]  # (3, 6, 6): keys and queries
    scores = np.random.default_rng(2).standard_normal((3, 6, 6)).astype(np.float32)

    # The article fills masked scores with a huge negative number (masked_fill(-1e9)): a padded
    # query row is then six equal numbers, and a plain softmax spreads it uniformly, 1/6 each.
    article = plain_softmax(np.where(mask, scores, np.float32(-1e9)))
    padded_query_rows = ~valid  # (3, 6): which query rows are padding
    assert np.array_equal(article[padded_query_rows], np.full((4, 6), np.float32(1 / 6)))

    uniform = refmask.masked_softmax(scores, mask, fully_masked="uniform")
    zero = refmask.masked_softmax(scores, mask, fully_masked="zero")
    nan = refmask.masked_softmax(scores, mask, fully_masked="nan")
    one_sixth = np.float32(1 / 6)
    assert (uniform[padded_query_rows] == one_sixth).all()  # "uniform" reproduces the article
    assert (zero[padded_query_rows] == 0).all()  # "zero" does not: padded queries get no weight
    assert np.isnan(nan[padded_query_rows]).all()
    # On real query rows the three policies and the article agree.
    for weights in (uniform, zero, nan):
        assert_weights_close(weights[valid], article[valid], table=tolerances.SOFTMAX_MAX_ULP)

    # With a literal -inf instead, the plain softmax of a padded query row is 0/0: NaN, the "nan" policy.
    with np.errstate(invalid="ignore"):
        minus_inf = plain_softmax(np.where(mask, scores, np.float32(-np.inf)))
    assert np.isnan(minus_inf[padded_query_rows]).all()


# ---------------------------------------------------------------------------------------------
# hand-worked rows (float64; ln values make the weights simple fractions)


@pytest.mark.parametrize("scores, mask, expected", [
    ([0.0, math.log(2), math.log(5)], [1, 1, 1], [1 / 8, 2 / 8, 5 / 8]),
    ([0.0, 123.0, math.log(3)], [1, 0, 1], [1 / 4, 0.0, 3 / 4]),
    ([7.0, 7.0, 7.0, 7.0], [1, 1, 0, 1], [1 / 3, 1 / 3, 0.0, 1 / 3]),
    # shifted by the kept max (inputs exact in float64: -1000 + ln 9 would itself be rounded by
    # ulp(1000) / 2, which moves the true softmax ~30 ULP away from 9/10)
    ([-1000.0, -998.0], [1, 1], [1 / (1 + math.exp(2)), 1 / (1 + math.exp(-2))]),
    ([5.0, 1.0], [0, 1], [0.0, 1.0]),
    ([0.0, -np.inf, math.log(3)], [1, 1, 1], [1 / 4, 0.0, 3 / 4]),  # kept -inf beside finite: weight 0
])
def test_masked_softmax_hand_worked_rows(scores, mask, expected):
    actual = refmask.masked_softmax(np.array(scores), bools(*mask))
    assert_weights_close(actual, np.array(expected), table=tolerances.SOFTMAX_MAX_ULP)


@pytest.mark.parametrize("fully_masked, expected", [
    ("zero", [[0.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]]),
    ("uniform", [[0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0.0, 0.0]]),
    ("nan", [[np.nan] * 4, [0.5, 0.5, 0.0, 0.0]]),
])
def test_fully_masked_row_hand_worked(fully_masked, expected):
    scores = np.array([[1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 9.0, 9.0]], dtype=np.float32)
    mask = bools([0, 0, 0, 0], [1, 1, 0, 0])
    actual = refmask.masked_softmax(scores, mask, fully_masked=fully_masked)
    np.testing.assert_array_equal(actual, np.array(expected, dtype=np.float32))


def test_default_policy_is_zero():
    out = refmask.masked_softmax(np.zeros((1, 3)), np.zeros((1, 3), bool))
    np.testing.assert_array_equal(out, np.zeros((1, 3)))


@pytest.mark.parametrize("kept_scores, what", [
    ([1.0, np.nan, 2.0], "kept NaN"),
    ([1.0, np.inf, 2.0], "kept +inf"),
    ([-np.inf, -np.inf, -np.inf], "all kept -inf"),
])
@pytest.mark.parametrize("fully_masked", POLICIES)
def test_non_finite_kept_scores_make_the_row_nan(kept_scores, what, fully_masked):
    # The docstring: a kept NaN or +inf, or kept scores that are all -inf, make the whole row NaN,
    # whatever fully_masked says (the row is not fully masked). A masked 4th entry stays NaN too.
    scores = np.array([[*kept_scores, 0.0], [0.0, 1.0, 2.0, 3.0]])
    mask = bools([1, 1, 1, 0], [1, 1, 1, 1])
    out = refmask.masked_softmax(scores, mask, fully_masked=fully_masked)
    assert np.isnan(out[0]).all(), what
    assert np.isfinite(out[1]).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_kept_minus_inf_beside_finite_is_the_same_as_masking_it(dtype):
    d = numpy_dtype(dtype)
    scores = np.array([[0.5, -np.inf, 1.5, -0.25]]).astype(d)
    with_inf = refmask.masked_softmax(scores)
    masked = refmask.masked_softmax(scores, bools([1, 0, 1, 1]))
    np.testing.assert_array_equal(with_inf.view(np.uint8), masked.view(np.uint8))


# ---------------------------------------------------------------------------------------------
# properties over random problems


@st.composite
def problems(draw, dtypes=DTYPES, max_batch=3, max_t=5, max_s=8):
    """(scores, mask, dtype name): scores rounded to dtype, a random mask with some fully-masked rows."""
    dtype = draw(st.sampled_from(dtypes))
    b, t, s = draw(st.integers(0, max_batch)), draw(st.integers(0, max_t)), draw(st.integers(0, max_s))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    spread = draw(st.sampled_from([0.01, 1.0, 5.0, 30.0]))
    scores = (spread * rng.standard_normal((b, t, s))).astype(numpy_dtype(dtype))
    density = draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))
    mask = rng.random((b, t, s)) < density
    mask[..., : max(t // 3, 0), :] &= draw(st.booleans())  # sometimes whole rows masked
    return scores, mask, dtype


def kept_rows(mask):
    return mask.any(axis=-1)


@settings(max_examples=100, deadline=None)
@given(problem=problems(), fully_masked=st.sampled_from(POLICIES))
def test_kept_rows_sum_to_one_and_masked_weights_are_exactly_zero(problem, fully_masked):
    scores, mask, dtype = problem
    w = refmask.masked_softmax(scores, mask, fully_masked=fully_masked)
    assert w.shape == scores.shape and w.dtype == scores.dtype
    w64 = w.astype(np.float64)
    rows = kept_rows(mask)
    bound = tolerances.KEPT_ROW_SUM_MAX_EPS[dtype] * tolerances.eps(dtype)
    sums = w64.sum(axis=-1)[rows]
    assert np.all(np.abs(sums - 1.0) <= bound), f"row sums {sums[np.abs(sums - 1) > bound]} beyond {bound}"
    kept_row_entries = np.broadcast_to(rows[..., None], mask.shape)
    assert (w64[kept_row_entries & ~mask] == 0).all()
    assert ((w64[kept_row_entries] >= 0) & (w64[kept_row_entries] <= 1)).all()


@settings(max_examples=100, deadline=None)
@given(problem=problems(), fully_masked=st.sampled_from(POLICIES))
def test_fully_masked_rows_get_exactly_what_the_policy_promises(problem, fully_masked):
    scores, mask, dtype = problem
    w = refmask.masked_softmax(scores, mask, fully_masked=fully_masked).astype(np.float64)
    empty = w[~kept_rows(mask)]
    s = scores.shape[-1]
    if fully_masked == "zero":
        assert (empty == 0).all()
    elif fully_masked == "uniform":
        one_over_s = float(np.asarray(1.0 / s).astype(numpy_dtype(dtype))) if s else None
        assert (empty == one_over_s).all()
    else:
        assert np.isnan(empty).all()


@settings(max_examples=100, deadline=None)
@given(
    problem=problems(),
    fully_masked=st.sampled_from(POLICIES),
    poison=st.sampled_from([np.nan, np.inf, -np.inf, 1e30, -1e30, "max", "min", "random"]),
)
def test_masked_scores_change_nothing_bit_for_bit(problem, fully_masked, poison):
    scores, mask, dtype = problem
    d = numpy_dtype(dtype)
    if poison == "random":
        values = (1e4 * np.random.default_rng(7).standard_normal(scores.shape)).astype(d)
    elif poison in ("max", "min"):
        finfo = _dtypes.finfo(d.name)
        values = np.full(scores.shape, finfo.max if poison == "max" else finfo.min, dtype=d)
    else:
        with np.errstate(over="ignore"):
            values = np.full(scores.shape, poison).astype(d)
    poisoned = np.where(mask, scores, values)
    clean = refmask.masked_softmax(scores, mask, fully_masked=fully_masked)
    dirty = refmask.masked_softmax(poisoned, mask, fully_masked=fully_masked)
    np.testing.assert_array_equal(dirty.view(np.uint8), clean.view(np.uint8))


@settings(max_examples=60, deadline=None)
@given(problem=problems(dtypes=("float64",)))
def test_float64_weights_equal_an_independent_formula(problem):
    scores, mask, _ = problem
    expected = np.zeros(scores.shape)
    for index in np.ndindex(scores.shape[:-1]):
        kept = np.flatnonzero(mask[index])
        if kept.size:
            x = scores[index][kept]
            e = [math.exp(v - max(x)) for v in x]
            expected[index][kept] = [v / math.fsum(e) for v in e]
    actual = refmask.masked_softmax(scores, mask, fully_masked="zero")
    assert_weights_close(actual, expected, table=tolerances.SOFTMAX_MAX_ULP)


@settings(max_examples=50, deadline=None)
@given(problem=problems(max_batch=2))
def test_axis_argument_is_a_transpose(problem):
    scores, mask, _ = problem
    along_0 = refmask.masked_softmax(np.swapaxes(scores, -1, 0), np.swapaxes(mask, -1, 0), axis=0)
    along_last = refmask.masked_softmax(scores, mask)
    np.testing.assert_array_equal(np.swapaxes(along_0, -1, 0).view(np.uint8), along_last.view(np.uint8))


@settings(max_examples=50, deadline=None)
@given(problem=problems(max_batch=2))
def test_no_mask_equals_all_true_and_masks_broadcast(problem):
    scores, mask, _ = problem
    all_true = np.ones(scores.shape, bool)
    np.testing.assert_array_equal(
        refmask.masked_softmax(scores).view(np.uint8), refmask.masked_softmax(scores, all_true).view(np.uint8)
    )
    if scores.shape[0]:
        row_mask = mask[0]  # (T, S), broadcast over the batch
        explicit = np.broadcast_to(row_mask, scores.shape).copy()
        np.testing.assert_array_equal(
            refmask.masked_softmax(scores, row_mask).view(np.uint8),
            refmask.masked_softmax(scores, explicit).view(np.uint8),
        )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0, 4), (3, 0), (0, 0), (2, 0, 5)])
@pytest.mark.parametrize("fully_masked", POLICIES)
def test_zero_length_axes_give_empty_results(dtype, shape, fully_masked):
    scores = np.zeros(shape, numpy_dtype(dtype))
    out = refmask.masked_softmax(scores, np.zeros(shape, bool), fully_masked=fully_masked)
    assert out.shape == shape and out.dtype == scores.dtype


# ---------------------------------------------------------------------------------------------
# masked_softmax_vjp (oracle only)


@st.composite
def vjp_problems(draw):
    t, s = draw(st.integers(1, 3)), draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scores = 2.0 * rng.standard_normal((t, s))
    mask = rng.random((t, s)) < draw(st.sampled_from([0.4, 0.8, 1.0]))
    mask[0] &= draw(st.booleans())  # the first row is sometimes fully masked
    cotangent = rng.standard_normal((t, s))
    return scores, mask, cotangent


@settings(max_examples=60, deadline=None)
@given(problem=vjp_problems(), fully_masked=st.sampled_from(POLICIES))
def test_vjp_equals_finite_differences_and_is_zero_where_masked(problem, fully_masked):
    scores, mask, g = problem
    grad = refmask.oracle.masked_softmax_vjp(scores, mask, g, fully_masked=fully_masked)
    assert grad.shape == scores.shape and grad.dtype == np.float64
    rows = kept_rows(mask)
    assert (grad[~mask] == 0).all()
    assert (grad[~rows] == 0).all()

    def objective(x):
        w = refmask.masked_softmax(x, mask, fully_masked="zero")
        return float(np.sum(g * w))

    h = tolerances.VJP_FINITE_DIFFERENCE_STEP
    for i, j in zip(*np.nonzero(mask), strict=False):
        step = np.zeros_like(scores)
        step[i, j] = h
        numeric = (objective(scores + step) - objective(scores - step)) / (2 * h)
        assert abs(grad[i, j] - numeric) <= tolerances.VJP_FINITE_DIFFERENCE_ATOL, (i, j, grad[i, j], numeric)


@pytest.mark.parametrize("fully_masked", POLICIES)
def test_vjp_ignores_masked_scores(fully_masked):
    scores = np.array([[0.3, -1.2, 2.0], [1.0, 2.0, 3.0]])
    mask = bools([1, 0, 1], [0, 0, 0])
    g = np.array([[1.0, -2.0, 0.5], [4.0, 5.0, 6.0]])
    clean = refmask.oracle.masked_softmax_vjp(scores, mask, g, fully_masked=fully_masked)
    poisoned = np.where(mask, scores, np.nan)
    dirty = refmask.oracle.masked_softmax_vjp(poisoned, mask, g, fully_masked=fully_masked)
    np.testing.assert_array_equal(dirty, clean)
    assert np.isfinite(clean).all()
