"""Every tolerance refmask's tests (and refmask.testing's defaults) use, per dtype, in one place.

Weights are compared in ULPs of their dtype; attention outputs, which can cancel to near 0, in
ULPs of a scale (by default the largest |expected| entry): |actual - expected| <= n * eps * scale.
Structure is never toleranced: the same entries are NaN, and the same entries exactly 0 (except
for pairs both below flush_to_zero_bound, outside what the mask decides).

Why these numbers: the oracle rounds an exact (float64) result once. A backend computing in the
input precision (float32, float64) loses a few ULP in exp and in the row sum, and, for
attention_weights, the rounding of each score s is amplified to about |s - max| ULP by exp;
the catalogue's scores stay within a few units. float16 and bfloat16 backends accumulate in
float32 and round once, so they are off by at most one ULP (a double rounding).

Tolerances a caller passes (max_ulp, rtol, atol, scale, table entries) must be finite numbers
>= 0: check_tolerance says why each other value would pass a wrong answer or fail a right one,
and checks_tolerances applies it to every entry point of refmask.testing. Values below the
smallest normal number are compared by flush_to_zero_bound and subnormals_agree.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping
from numbers import Real
from typing import Any, ParamSpec, TypeVar

import numpy as np

from .. import _dtypes

SOFTMAX_MAX_ULP = {"float64": 8, "float32": 4, "float16": 1, "bfloat16": 1}
ATTENTION_WEIGHTS_MAX_ULP = {"float64": 32, "float32": 16, "float16": 1, "bfloat16": 1}
ATTENTION_OUTPUT_MAX_ULP = {"float64": 64, "float32": 32, "float16": 2, "bfloat16": 2}

# A row's log-sum-exp, lse = m + log(sum_j exp(s_j - m)) over its kept scores, in units of
# eps(lse's dtype) * max(1, largest finite |lse|), keyed by lse's dtype (float32 for float16 and
# bfloat16 inputs, as kernels keep it). Its error is that of the scores nearest the row's maximum
# (lse is within log S of it, so they scale with |lse|) plus the rounding of the row sum, a relative
# error that log turns into an absolute one (hence the floor 1). Blockwise (online) softmax rescales
# the sum once per block, a few roundings more.
LSE_MAX_ULP = {"float64": 64, "float32": 32, "float16": 2, "bfloat16": 2}

# ALiBi biases (alibi_bias, alibi_slopes) computed in float64 are the oracle's bit for bit. Computed in
# float32 (jax without x64) the slope is rounded to float32 before slope * (j - i') is rounded: two
# roundings where the oracle has one, so up to 1 ULP of the result's dtype.
ALIBI_FLOAT32_MAX_ULP = 1

# |sum of a kept row's weights - 1| <= n * eps(dtype), the sum taken exactly (in float64). Each
# once-rounded weight is off by at most eps/2 of itself, so the weights of a row are off by at
# most eps/2 in all (float32, float16, bfloat16); float64 weights carry a few rounding errors of
# exp and of the row sum, and the float64 sum adds one per key (rows of up to ~16 keys).
KEPT_ROW_SUM_MAX_EPS = {"float64": 32, "float32": 1, "float16": 1, "bfloat16": 1}

# A float64 central difference (f(x + h) - f(x - h)) / 2h with h = 1e-6 on softmax weights: its
# truncation error is ~h**2 and its rounding error ~eps / h ~ 1e-10.
VJP_FINITE_DIFFERENCE_STEP = 1e-6
VJP_FINITE_DIFFERENCE_ATOL = 1e-8


def dtype_name(dtype: Any) -> str:
    """"float32", "bfloat16", ... for a NumPy, jax or torch dtype (or scalar type) or a name."""
    return dtype if isinstance(dtype, str) else _dtypes.name_of(dtype)


def eps(dtype: Any) -> float:
    return _dtypes.eps(dtype_name(dtype))


# The parameter names under which refmask.testing's entry points take a tolerance. Each is checked
# by check_tolerance (table: each entry) before any comparison runs.
TOLERANCE_ARGUMENTS = ("max_ulp", "rtol", "atol", "scale", "table")

_P = ParamSpec("_P")
_R = TypeVar("_R")


def check_tolerance(name: str, value: Any) -> float:
    """`value` as a float; refuse, naming `name`, what cannot be a tolerance.

    A tolerance is a finite real number >= 0. Each refusal closes a way to pass a wrong answer or to
    fail a right one: every comparison with a NaN bound is False, so nothing would ever exceed it;
    an infinite bound (or scale) lets every finite value through; a negative one fails even
    identical arrays; True is 1 and False is 0 to Python, so a bool is a slip, not a bound.
    """
    expected = "a finite number >= 0"
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf":
        value = value.item()
    if isinstance(value, bool | np.bool_) or not isinstance(value, Real):
        raise TypeError(f"{name} must be {expected}; got {type(value).__name__} {value!r}")
    x = float(value)
    if math.isnan(x):
        raise ValueError(f"{name} must be {expected}; got NaN, which no difference exceeds (anything would pass)")
    if math.isinf(x):
        raise ValueError(f"{name} must be {expected}; got {value!r}, which lets every finite value pass")
    if x < 0:
        raise ValueError(f"{name} must be {expected}; got {value!r}, which even identical arrays exceed")
    return x


def check_table(name: str, value: Any) -> Mapping[str, Any]:
    """A table of per-dtype tolerances ({"float32": 4, ...}), each entry checked by check_tolerance."""
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a dict of dtype name -> tolerance, such as tolerances.SOFTMAX_MAX_ULP; "
                        f"got {type(value).__name__} {value!r}")
    for key, entry in value.items():
        check_tolerance(f"{name}[{key!r}]", entry)
    return value


def checks_tolerances(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Decorator for every refmask.testing function that takes a tolerance: its TOLERANCE_ARGUMENTS
    other than None (the default) are checked (check_tolerance, check_table) before it runs, so no
    entry point can forget them.
    max_ulp together with rtol or atol is refused too: rtol/atol replace the ULP test, and one of
    the two would be ignored without a word.
    """
    signature = inspect.signature(fn)
    names = [n for n in TOLERANCE_ARGUMENTS if n in signature.parameters]
    if not names:
        raise TypeError(f"{fn.__qualname__} takes none of {TOLERANCE_ARGUMENTS}: nothing to check")

    @functools.wraps(fn)
    def checked(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        __tracebackhide__ = True
        try:
            given = signature.bind(*args, **kwargs).arguments
        except TypeError:
            return fn(*args, **kwargs)  # Python's own error for a call that does not fit
        for name in names:
            value = given.get(name)
            if value is None:
                continue  # the default
            if name == "table":
                check_table(name, value)
            else:
                check_tolerance(name, value)
        max_ulp = given.get("max_ulp")
        if max_ulp is not None and (given.get("rtol") is not None or given.get("atol") is not None):
            raise ValueError(
                f"max_ulp and rtol/atol are alternatives (rtol/atol replace the ULP test); got max_ulp={max_ulp!r}, "
                f"rtol={given.get('rtol')!r}, atol={given.get('atol')!r}"
            )
        return fn(*args, **kwargs)

    return checked


@checks_tolerances
def tolerance(table: Mapping[str, float], dtype: Any) -> float:
    """table[dtype], the dtype given as a NumPy, jax or torch dtype or a name."""
    name = dtype_name(dtype)
    if name not in table:
        raise ValueError(f"no tolerance for dtype {name}; refmask compares {', '.join(table)}")
    return table[name]


# Which precision a backend computes a dtype's softmax in: the input's, or float32 for half types.
COMPUTE_DTYPE = {"float64": "float64", "float32": "float32", "float16": "float32", "bfloat16": "float32"}

# The smallest normal number of each dtype (finfo.tiny); bfloat16 has float32's exponent range.
SMALLEST_NORMAL = {
    "float64": float(np.finfo(np.float64).tiny),
    "float32": float(np.finfo(np.float32).tiny),
    "float16": float(np.finfo(np.float16).tiny),
    "bfloat16": float(np.finfo(np.float32).tiny),
}


def flush_to_zero_bound(dtype: Any) -> float:
    """Below this magnitude a value of `dtype` may come back from a correct backend as 0 (or as a
    subnormal where the oracle rounds to 0): the smallest normal number of the precision it is
    computed in (COMPUTE_DTYPE).

    Why: arithmetic with flush-to-zero (XLA on CPU, kernels built with fast-math flags) replaces
    every subnormal result by 0, and an exp that is not correctly rounded may round the smallest
    subnormals the other way. So for the row [0, -90] in float32 (and bfloat16) the oracle's weight
    exp(-90) = 8.2e-40 is 0 in jax, and where the oracle rounds a weight to 0, another library may
    give 1.4e-45. Both are off by less than the smallest normal number, yet hundreds of thousands of
    ULPs apart: a ULP bound cannot hold them, and they are not wrong.
    float16 is computed in float32, where its subnormals (6e-8 .. 6.1e-5) are normal numbers that
    survive the final rounding: they are compared in ULPs like any other value (the bound, float32's
    smallest normal, is below float16's smallest subnormal).

    See subnormals_agree for where the rule applies.
    """
    return SMALLEST_NORMAL[COMPUTE_DTYPE[dtype_name(dtype)]]


def subnormals_agree(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """True where actual and expected (NumPy arrays of one dtype) are both below
    flush_to_zero_bound(dtype) in magnitude: such a pair counts as equal, whatever their ULP
    distance, and a 0 on one side is then not a structure error.

    refmask.testing applies this only to entries whose value the mask does not decide: never to a
    masked weight (exactly 0) nor to a fully-masked row (exactly what the fully_masked policy says),
    which stay exact. Without a mask, a row whose oracle weights are all 0 counts as fully masked.
    """
    bound = flush_to_zero_bound(actual.dtype)
    with np.errstate(invalid="ignore"):
        return (np.abs(actual.astype(np.float64)) < bound) & (np.abs(expected.astype(np.float64)) < bound)


# An attention output sums S products w_j * v_j; under flush-to-zero each product below the smallest
# normal may come back as 0, so a correct output may be off by up to S * flush_to_zero_bound in absolute
# terms (v = [-tiny, -tiny] with weights 1/2: each product is subnormal, the sum is -tiny, and jax gives
# 0). The allowance covers rows of up to this many keys; it is far below any meaningful output.
OUTPUT_FLUSH_TERMS = 2**16


def output_flush_allowance(dtype: Any) -> float:
    """The absolute difference an attention output of `dtype` may show from flushed subnormal products."""
    return OUTPUT_FLUSH_TERMS * flush_to_zero_bound(dtype)


# exp(-746) is 0 in float64 (its smallest subnormal is exp(-744.4)), and so in every narrower dtype.
SOFTMAX_SPREAD_CAP = 746.0


def softmax_max_ulp(dtype: Any, scores: Any, mask: Any = None) -> np.ndarray:
    """Per-entry ULP bound for weights computed from `scores` in COMPUTE_DTYPE arithmetic.

    SOFTMAX_MAX_ULP[dtype] + |x - m| * eps(compute) / eps(dtype), m the row's largest kept score.
    Why: every softmax rounds d = x - m to the compute precision, an absolute error of up to
    |d| * eps(compute) / 2, and exp turns it into a relative error of the same size, which is up to
    |d| * eps(compute) / eps(dtype) ULP of the result. So no float32 implementation, the plain
    `softmax(masked_fill(-inf))` included, is within a flat 4 ULP of the correctly rounded weights
    once scores spread over more than a few units. For float16/bfloat16 computed in float32 the
    term is negligible and the bound is SOFTMAX_MAX_ULP alone.
    The row sum adds log2(n) * eps(compute) / eps(dtype) ULP more for n kept entries: a sum of n terms
    in the compute precision (pairwise, as NumPy, torch and XLA add) is off by up to about log2(n)
    roundings, and every weight is divided by it (a plain float32 softmax over 62 keys shows 5 ULP).
    |x - m| is capped at SOFTMAX_SPREAD_CAP: beyond it exp(x - m) is 0 in every floating dtype, so
    the correctly rounded weight is 0 and a spread of up to 2 * finfo.max (which overflows) must not
    make the bound infinite.
    """
    from .._backends import to_numpy

    name = dtype_name(dtype)
    x = np.asarray(to_numpy(scores)).astype(np.float64)
    keep = np.ones(x.shape, bool) if mask is None else np.broadcast_to(np.asarray(to_numpy(mask)), x.shape)
    kept = np.where(keep, x, -np.inf)
    with np.errstate(invalid="ignore", over="ignore"):
        m = np.max(kept, axis=-1, keepdims=True, initial=-np.inf)
        spread = np.where(keep & np.isfinite(x) & np.isfinite(m), np.minimum(np.abs(x - m), SOFTMAX_SPREAD_CAP), 0.0)
    growth = eps(COMPUTE_DTYPE[name]) / eps(name)
    row_sum = np.log2(np.maximum(keep.sum(axis=-1, keepdims=True), 1))
    return tolerance(SOFTMAX_MAX_ULP, name) + growth * (spread + row_sum)


# Gradients (attention_vjp, autodiff of attention): |actual - expected| <= n * eps * terms +
# gradient_allowance, n = GRADIENT_MAX_ULP[dtype], `terms` the magnitude of the sum each entry is
# (attention_gradient_terms: the backward pass with every factor replaced by its absolute value, e.g.
# sum_j |w[j] (dw[j] - sum_k w[k] dw[k])| |k[j]| for dq), and exactly equal where terms is 0 (masked).
# Why relative to the terms: a gradient is a sum that cancels (a row's ds sums to 0, dq to whatever is
# left of it), so its error is a few roundings of its largest terms, not of its value, which can be 0 or
# any fraction of them.
# float16/bfloat16 are computed in float32 and rounded once: the exact value near a rounding midpoint,
# two correct results can be a whole ULP apart, at most eps of the value and so of the terms; 2 leaves
# the float32 arithmetic room. float32 and float64 carry the roundings of the forward (the weights, a few
# ULP each for scores of moderate size, as ATTENTION_WEIGHTS_MAX_ULP) and of the backward's four
# reductions (over D for the scores, S for the row sum, Dv for dw, T or S for the products back), each
# relative to the sum of its |terms|; the oracle's float64 side has the same errors. Keyed by the coarser
# of the gradient's dtype and the precision it was computed in (q's, COMPUTE_DTYPE).
GRADIENT_MAX_ULP = {"float64": 32, "float32": 32, "float16": 2, "bfloat16": 2}


def gradient_allowance(dtype: Any) -> float:
    """The absolute difference a gradient of `dtype` may show whatever its terms: flushed subnormal
    products (output_flush_allowance) and the rounding of a value to a subnormal of `dtype` (float16's
    subnormals reach 6e-5, where half an ULP is an absolute 3e-8, not eps of the value)."""
    smallest_subnormal = float(_dtypes.finfo(dtype_name(dtype)).smallest_subnormal)
    return max(output_flush_allowance(dtype), smallest_subnormal)
