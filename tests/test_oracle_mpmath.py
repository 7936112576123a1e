"""The oracle's own truth: float32 and float16 results are correctly rounded (0 ULP).

A sample of masked_softmax and attention outputs is re-derived with mpmath at 50 significant
digits from the (exactly representable) low-precision inputs, rounded to the dtype to nearest with
ties to even, and compared with the oracle's results bit for bit.
"""

from __future__ import annotations

import mpmath
import numpy as np
import pytest

import refmask
from refmask.testing import ulp_distance
from refmask.testing.cases import numpy_dtype

DIGITS = 50
LOW_PRECISION = ["float32", "float16", "bfloat16"]


def round_to_dtype(x: mpmath.mpf, dtype: np.dtype) -> np.generic:
    """The value of `dtype` nearest to x, ties to the even bit pattern."""
    guess = np.asarray(float(x)).astype(dtype)  # within one step of the answer
    below, above = np.asarray(-np.inf, dtype), np.asarray(np.inf, dtype)
    neighbours = [np.nextafter(guess, below), guess, np.nextafter(guess, above)]
    distances = [abs(mpmath.mpf(float(c)) - x) for c in neighbours]
    best = min(distances)
    ties = [c for c, d in zip(neighbours, distances, strict=True) if d == best]
    if len(ties) > 1:
        ties = [c for c in ties if int(np.asarray(c).view(f"u{dtype.itemsize}")) % 2 == 0]
    return ties[0]


def mp_softmax(row: list[mpmath.mpf]) -> list[mpmath.mpf]:
    m = max(row)
    e = [mpmath.exp(x - m) for x in row]
    total = mpmath.fsum(e)
    return [v / total for v in e]


def as_mp(x: np.ndarray) -> list:
    """Exact mpmath values of low-precision floats (every such float is exact in float64)."""
    return [mpmath.mpf(float(v)) for v in np.asarray(x).astype(np.float64).ravel()]


def assert_correctly_rounded(actual: np.ndarray, exact: dict[tuple[int, ...], mpmath.mpf], what: str) -> None:
    expected = actual.copy()
    for index, value in exact.items():
        expected[index] = round_to_dtype(value, actual.dtype)
    ulps = ulp_distance(actual, expected)
    assert np.nanmax(ulps, initial=0.0) == 0, (
        f"{what}: {int((ulps > 0).sum())} of {len(exact)} values are not correctly rounded "
        f"(worst {np.nanmax(ulps)} ULP at {np.unravel_index(np.nanargmax(ulps), ulps.shape)})"
    )


@pytest.mark.parametrize("dtype_name", LOW_PRECISION)
def test_masked_softmax_is_correctly_rounded(dtype_name):
    dtype = numpy_dtype(dtype_name)
    rng = np.random.default_rng(20240501)
    scores = (3.0 * rng.standard_normal((3, 5, 12))).astype(dtype)
    mask = rng.random((3, 5, 12)) < 0.7
    mask[1, 2] = False  # a fully-masked row: exactly 0, not re-derived
    weights = refmask.masked_softmax(scores, mask)
    assert weights.dtype == dtype
    exact = {}
    with mpmath.workdps(DIGITS):
        for index in np.ndindex(scores.shape[:-1]):
            kept = np.flatnonzero(mask[index])
            if kept.size:
                for j, w in zip(kept, mp_softmax(as_mp(scores[index][kept])), strict=True):
                    exact[(*index, j)] = w
    assert len(exact) > 100
    assert (weights[~mask].astype(np.float64) == 0).all()
    assert_correctly_rounded(weights, exact, f"masked_softmax {dtype_name}")


@pytest.mark.parametrize("dtype_name", LOW_PRECISION)
@pytest.mark.parametrize("head_dim", [4, 16])  # 1/sqrt(D) is exact for these D
def test_attention_is_correctly_rounded(dtype_name, head_dim):
    dtype = numpy_dtype(dtype_name)
    rng = np.random.default_rng(head_dim)
    batch, heads, kv_heads, t, s, dv = 2, 2, 1, 4, 7, 3
    q = rng.standard_normal((batch, heads, t, head_dim)).astype(dtype)
    k = rng.standard_normal((batch, kv_heads, s, head_dim)).astype(dtype)
    v = rng.standard_normal((batch, kv_heads, s, dv)).astype(dtype)
    lengths = np.array([7, 4])
    mask = refmask.and_masks(refmask.causal_mask(t, s, align="bottom_right"),
                             refmask.attention_padding_mask(refmask.padding_mask(lengths, s)))
    out, weights = refmask.attention(q, k, v, mask, return_weights=True)
    assert mask is not None
    keep = np.broadcast_to(mask, (batch, heads, t, s))
    exact_out: dict[tuple[int, ...], mpmath.mpf] = {}
    exact_weights: dict[tuple[int, ...], mpmath.mpf] = {}
    with mpmath.workdps(DIGITS):
        scale = 1 / mpmath.sqrt(head_dim)
        for b in range(batch):
            for h in range(heads):
                kv = h // (heads // kv_heads)
                k_rows = [as_mp(k[b, kv, j]) for j in range(s)]
                v_rows = [as_mp(v[b, kv, j]) for j in range(s)]
                for i in range(t):
                    q_row = as_mp(q[b, h, i])
                    kept = np.flatnonzero(keep[b, h, i])
                    row_scores = [mpmath.fsum(a * c for a, c in zip(q_row, k_rows[j], strict=True)) for j in kept]
                    row_scores = [scale * x for x in row_scores]
                    w = mp_softmax(row_scores)
                    for j, wj in zip(kept, w, strict=True):
                        exact_weights[(b, h, i, int(j))] = wj
                    for e in range(dv):
                        exact_out[(b, h, i, e)] = mpmath.fsum(wj * v_rows[j][e] for j, wj in zip(kept, w, strict=True))
    assert_correctly_rounded(weights, exact_weights, f"attention weights {dtype_name} D={head_dim}")
    assert_correctly_rounded(out, exact_out, f"attention output {dtype_name} D={head_dim}")


@pytest.mark.parametrize("value, expected", [
    (1 + 2**-11, 1.0),  # halfway between 1 and 1 + 2**-10: to the even 1.0
    (1 + 3 * 2**-11, 1 + 2**-9),  # halfway between 1 + 2**-10 (odd) and 1 + 2**-9 (even)
    (1 + 2**-11 + 2**-40, 1 + 2**-10),  # just above halfway
    (-(1 + 2**-11 - 2**-40), -1.0),  # just below halfway
    (2**-25, 0.0),  # half the smallest subnormal: ties to 0
    (2**-25 + 2**-60, 2**-24),
])
def test_round_to_dtype_is_nearest_ties_to_even(value, expected):
    with mpmath.workdps(DIGITS):  # every value above is exact in float64, hence in mpmath
        assert float(round_to_dtype(mpmath.mpf(value), np.dtype(np.float16))) == expected
