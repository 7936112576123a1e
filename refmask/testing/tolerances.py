"""Every tolerance refmask's tests (and refmask.testing's defaults) use, per dtype, in one place.

Weights are compared in ULPs of their dtype; attention outputs, which can cancel to near 0, in
ULPs of a scale (by default the largest |expected| entry): |actual - expected| <= n * eps * scale.
Structure is never toleranced: the same entries are exactly 0, the same entries are NaN.

Why these numbers: the oracle rounds an exact (float64) result once. A backend computing in the
input precision (float32, float64) loses a few ULP in exp and in the row sum, and, for
attention_weights, the rounding of each score s is amplified to about |s - max| ULP by exp;
the catalogue's scores stay within a few units. float16 and bfloat16 backends accumulate in
float32 and round once, so they are off by at most one ULP (a double rounding).
"""

from __future__ import annotations

from typing import Any

import numpy as np

SOFTMAX_MAX_ULP = {"float64": 8, "float32": 4, "float16": 1, "bfloat16": 1}
ATTENTION_WEIGHTS_MAX_ULP = {"float64": 32, "float32": 16, "float16": 1, "bfloat16": 1}
ATTENTION_OUTPUT_MAX_ULP = {"float64": 64, "float32": 32, "float16": 2, "bfloat16": 2}

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
    """"float32", "bfloat16", ... for a NumPy, jax or torch dtype or a name."""
    name = str(dtype)
    return name.removeprefix("torch.")


def eps(dtype: Any) -> float:
    name = dtype_name(dtype)
    if name == "bfloat16":
        return 2.0**-7
    return float(np.finfo(name).eps)


def tolerance(table: dict[str, int], dtype: Any) -> int:
    name = dtype_name(dtype)
    if name not in table:
        raise ValueError(f"no tolerance for dtype {name}; refmask compares {', '.join(table)}")
    return table[name]


# Which precision a backend computes a dtype's softmax in: the input's, or float32 for half types.
COMPUTE_DTYPE = {"float64": "float64", "float32": "float32", "float16": "float32", "bfloat16": "float32"}


def softmax_max_ulp(dtype: Any, scores: Any, mask: Any = None) -> np.ndarray:
    """Per-entry ULP bound for weights computed from `scores` in COMPUTE_DTYPE arithmetic.

    SOFTMAX_MAX_ULP[dtype] + |x - m| * eps(compute) / eps(dtype), m the row's largest kept score.
    Why: every softmax rounds d = x - m to the compute precision, an absolute error of up to
    |d| * eps(compute) / 2, and exp turns it into a relative error of the same size, which is up to
    |d| * eps(compute) / eps(dtype) ULP of the result. So no float32 implementation, the plain
    `softmax(masked_fill(-inf))` included, is within a flat 4 ULP of the correctly rounded weights
    once scores spread over more than a few units. For float16/bfloat16 computed in float32 the
    term is negligible and the bound is SOFTMAX_MAX_ULP alone.
    """
    from .._backends import to_numpy

    name = dtype_name(dtype)
    x = np.asarray(to_numpy(scores)).astype(np.float64)
    keep = np.ones(x.shape, bool) if mask is None else np.broadcast_to(np.asarray(to_numpy(mask)), x.shape)
    kept = np.where(keep, x, -np.inf)
    with np.errstate(invalid="ignore"):
        m = np.max(kept, axis=-1, keepdims=True, initial=-np.inf)
        spread = np.where(keep & np.isfinite(x) & np.isfinite(m), np.abs(x - m), 0.0)
    growth = eps(COMPUTE_DTYPE[name]) / eps(name)
    return tolerance(SOFTMAX_MAX_ULP, name) + growth * spread
