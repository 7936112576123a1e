"""The tolerance model itself: ULP distances are exact, and the softmax bound is both needed and
sufficient for a plain float32 softmax (the idiom every framework uses)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refmask import oracle
from refmask.testing import tolerances, ulp_distance


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_ulp_distance_counts_neighbours_exactly(dtype):
    x = np.array([1.0, 3.5, -2.25, 1e-3], dtype=dtype)
    up = np.nextafter(x, dtype(np.inf))
    assert ulp_distance(x, up).tolist() == [1.0] * 4
    assert ulp_distance(x, np.nextafter(up, dtype(np.inf))).tolist() == [2.0] * 4


def test_ulp_distance_across_zero_and_at_the_extremes():
    tiny = np.array([5e-324])
    assert ulp_distance(tiny, -tiny).tolist() == [2.0]
    assert ulp_distance(np.array([0.0]), np.array([-0.0])).tolist() == [0.0]
    big = np.finfo(np.float64).max
    assert ulp_distance(np.array([big]), np.array([-big]))[0] == pytest.approx(2.0 * (2**63 - 2**52 - 1))


def plain_float32_softmax(scores, keep):
    """softmax(masked_fill(~keep, -inf)) in float32 arithmetic, as torch and jax compute it."""
    x = np.where(keep, scores, np.float32(-np.inf))
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), spread=st.sampled_from([1.0, 4.0, 16.0]), s=st.integers(2, 64))
def test_plain_float32_softmax_is_within_softmax_max_ulp(seed, spread, s):
    rng = np.random.default_rng(seed)
    scores = (spread * rng.standard_normal((4, s))).astype(np.float32)
    keep = rng.random((4, s)) < 0.8
    keep[:, 0] = True
    expected = oracle.masked_softmax(scores, keep)
    distance = ulp_distance(plain_float32_softmax(scores, keep), expected)
    assert (distance <= tolerances.softmax_max_ulp("float32", scores, keep)).all()


def test_a_flat_four_ulp_bound_is_not_enough_for_float32():
    rng = np.random.default_rng(0)
    scores = (16.0 * rng.standard_normal((64, 64))).astype(np.float32)
    keep = np.ones(scores.shape, bool)
    distance = ulp_distance(plain_float32_softmax(scores, keep), oracle.masked_softmax(scores, keep))
    assert distance.max() > tolerances.SOFTMAX_MAX_ULP["float32"]
