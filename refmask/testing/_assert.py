"""Raising comparisons of attention weights and outputs against the oracle's.

Checks run in order, and the first that fails raises AssertionError with a report a person can
act on: shape, then dtype, then structure (the same entries NaN; for weights also the same entries
exactly 0; for outputs, exactly 0 wherever the oracle's row is fully masked and 0), then values
within the per-dtype tolerance of refmask.testing.tolerances. Tolerance arguments are checked
first of all (tolerances.checks_tolerances), and pairs of values both below
tolerances.flush_to_zero_bound count as equal except where the mask decides the value.

A report names how many entries differ, the worst one with its index ((batch, head, query, key)
for weights, (batch, head, query, dim) for outputs), its value and the oracle's, their ULP
distance, whether that entry is masked and its row fully masked (when the mask is passed), and a
hint when the pattern points at a classic bug.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _dtypes
from .. import _validate as check
from .._backends import to_numpy
from . import tolerances as tol

_INT_OF_WIDTH: dict[int, type[np.signedinteger[Any]]] = {2: np.int16, 4: np.int32, 8: np.int64}

# The dtypes refmask compares (and counts ULPs in).
FLOAT_DTYPES = _dtypes.FLOAT_DTYPES
_FLOAT_NAMES = "float16, bfloat16, float32 or float64"

# Rows at most this long are printed whole in a report (actual and oracle side by side).
_PRINT_ROW_MAX = 16


def ulp_distance(a: Any, b: Any) -> np.ndarray:
    """Number of representable values of their (shared) dtype between a and b; +0 and -0 are 0 apart.

    a, b: NumPy, jax or torch arrays of one dtype among FLOAT_DTYPES (integers, bools and complex
    numbers have no ULPs; two dtypes would leave it open whose ULPs are meant).
    Returned as float64 (exact below 2**53). NaN entries give NaN.
    """
    a, b = _as_numpy(a), _as_numpy(b)
    for name, x in (("a", a), ("b", b)):
        if _dtype_name(x.dtype) not in FLOAT_DTYPES:
            raise TypeError(f"ulp_distance: {name} must be an array of {_FLOAT_NAMES}; "
                            f"got dtype {_dtype_name(x.dtype)}")
    if a.dtype != b.dtype:
        raise TypeError(f"ulp_distance: a and b must have one dtype (ULPs of which?); got a {_dtype_name(a.dtype)} "
                        f"and b {_dtype_name(b.dtype)}: cast one to the other's dtype")
    ints = _INT_OF_WIDTH[a.dtype.itemsize]
    lowest = np.iinfo(ints).min

    def ordered(x: np.ndarray) -> np.ndarray:
        # Sign-magnitude bit patterns -> integers in the order of the floats they encode.
        i = np.ascontiguousarray(x).view(ints).astype(np.int64)
        return np.where(i < 0, lowest - i, i)

    oa, ob = ordered(a), ordered(b)
    # Subtract as integers (a float64 conversion first would round float64 bit patterns); in uint64
    # because the distance between extremes of opposite sign exceeds int64's range.
    hi, lo = np.maximum(oa, ob).astype(np.uint64), np.minimum(oa, ob).astype(np.uint64)
    distance = (hi - lo).astype(np.float64)
    return np.where(np.isnan(a.astype(np.float64)) | np.isnan(b.astype(np.float64)), np.nan, distance)


@dataclass(frozen=True)
class Mismatch:
    """The worst entry of a failed comparison, and what is known about it."""

    kind: str
    count: int
    total: int
    index: tuple[int, ...]
    actual: float
    expected: float
    ulp: float
    row_fully_masked: bool | None
    entry_masked: bool | None
    last_axis: str = "key"
    actual_row: np.ndarray | None = None
    expected_row: np.ndarray | None = None
    hint: str | None = None

    def report(self, what: str) -> str:
        where = index_names(self.index, self.last_axis)
        ulp = "ULP distance undefined (NaN)" if np.isnan(self.ulp) else f"{self.ulp:g} ULP apart"
        lines = [
            f"{what}: {self.count} of {self.total} entries differ ({self.kind})",
            f"  worst at {where}: actual {self.actual!r}, oracle {self.expected!r}, {ulp}",
        ]
        if self.entry_masked is not None:
            lines.append(f"  that entry is {'masked (mask False)' if self.entry_masked else 'kept (mask True)'}")
        if self.row_fully_masked is not None:
            lines.append(
                "  its row is fully masked (no key kept)" if self.row_fully_masked else "  its row is not fully masked"
            )
        if self.actual_row is not None and self.expected_row is not None:
            lines.append(f"  that row, actual: {_fmt_row(self.actual_row)}")
            lines.append(f"  that row, oracle: {_fmt_row(self.expected_row)}")
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)


class MismatchError(AssertionError):
    """AssertionError of assert_weights_close / assert_attention_close; `.mismatch` is the worst entry."""

    def __init__(self, message: str, mismatch: Mismatch) -> None:
        super().__init__(message)
        self.mismatch = mismatch


def index_names(index: tuple[int, ...], last_axis: str = "key") -> str:
    """(batch=1, head=0, query=2, key=3): the last three axes are head, query and `last_axis`,
    any before them batch axes (batch, or batch0, batch1, ... when there are several)."""
    n = len(index)
    if n == 0:
        return "()"
    tail = ["head", "query", last_axis][-min(n, 3) :] if n >= 2 else [last_axis]
    lead = n - len(tail)
    batch = ["batch"] if lead == 1 else [f"batch{i}" for i in range(lead)]
    return "(" + ", ".join(f"{name}={int(i)}" for name, i in zip(batch + tail, index, strict=True)) + ")"


def _fmt_row(row: np.ndarray) -> str:
    return np.array2string(np.asarray(row, dtype=np.float64), precision=4, separator=", ", max_line_width=10_000)


def _as_numpy(x: Any) -> np.ndarray:
    return np.asarray(to_numpy(x))


def _keep_for(mask: Any, rows_shape: tuple[int, ...], kv_len: int | None) -> np.ndarray | None:
    """The mask broadcast to (*rows_shape, S), or None when there is none or it does not fit."""
    if mask is None:
        return None
    keep = _as_numpy(mask)
    if keep.dtype != np.bool_ or keep.ndim < 1:
        return None
    s = keep.shape[-1] if kv_len is None else kv_len
    try:
        return np.broadcast_to(keep, (*rows_shape, s))
    except ValueError:
        return None


def _worst(
    kind: str,
    bad: np.ndarray,
    score: np.ndarray,
    a: np.ndarray,
    e: np.ndarray,
    mask: Any,
    *,
    weights: bool,
    hint: str | None = None,
) -> Mismatch:
    score = np.where(bad, np.nan_to_num(np.asarray(score, dtype=np.float64), nan=np.inf), -np.inf)
    index = tuple(int(i) for i in np.unravel_index(int(np.argmax(score)), a.shape))
    ulp = float(ulp_distance(a[index][None], e[index][None].astype(a.dtype))[0])
    fully = masked = None
    keep = _keep_for(mask, a.shape[:-1], a.shape[-1] if weights else None) if a.ndim else None
    if keep is not None:
        row_keep = keep[index[:-1]]
        fully = not bool(row_keep.any())
        masked = (not bool(row_keep[index[-1]])) if weights else None
    actual_row = expected_row = None
    if a.ndim and a.shape[-1] <= _PRINT_ROW_MAX:
        actual_row, expected_row = a[index[:-1]], e[index[:-1]]
    hint = hint or _hint(a, e, index, fully, masked, weights)
    return Mismatch(
        kind,
        int(bad.sum()),
        int(a.size),
        index,
        float(a[index]),
        float(e[index]),
        ulp,
        fully,
        masked,
        "key" if weights else "dim",
        actual_row,
        expected_row,
        hint,
    )


def _hint(a: np.ndarray, e: np.ndarray, index: tuple[int, ...], fully: bool | None, masked: bool | None,
          weights: bool) -> str | None:
    """A guess at the bug behind the worst entry, from patterns that recur in attention code."""
    av, ev = float(a[index]), float(e[index])
    if fully:
        if np.isnan(av):
            return (
                "this row has no kept key and yours is NaN: a softmax over all -inf (e.g. -inf fill, or a "
                "finite fill such as -1e9 that overflows to -inf in float16) -- the oracle follows the "
                "fully_masked policy you asked for"
            )
        return (
            "this row has no kept key: its value is set by the fully_masked policy (\"zero\": 0; \"uniform\": "
            "weights 1/S, so the output is the mean of v; \"nan\": NaN); check which one your code follows"
        )
    if weights and masked and av != 0 and ev == 0:
        return "a masked key got weight: is the mask inverted (True = attend) or broadcast along the wrong axis?"
    if weights and masked is False and av == 0 and ev != 0:
        return "a kept key got weight 0: is the mask inverted (True = attend) or broadcast along the wrong axis?"
    if weights and fully is False:
        row = a[index[:-1]].astype(np.float64)
        total = float(row.sum())
        if np.isfinite(total) and abs(total - 1.0) > 1e-2:
            expected_row = e[index[:-1]].astype(np.float64)
            if total < 1.0 and (expected_row == 0).any():
                return f"this row's weights sum to {total:.4g}, not 1: is the mask applied after the softmax?"
            return f"this row's weights sum to {total:.4g}, not 1"
    if np.isnan(av) and not np.isnan(ev):
        return "NaN in a row that has kept keys: overflow in exp (no max subtraction?) or a NaN/inf in masked scores"
    return None


def _raise(what: str, mismatch: Mismatch) -> None:
    __tracebackhide__ = True
    raise MismatchError(mismatch.report(what), mismatch)


def _dtype_name(dtype: Any) -> str:
    """"float16" for np.float16, np.dtype("float16"), "float16", jnp.float16 or torch.float16."""
    if isinstance(dtype, str):
        return dtype.removeprefix("torch.")
    try:
        return np.dtype(dtype).name
    except TypeError:
        return tol.dtype_name(dtype)


def _check_shape_and_dtype(what: str, a: np.ndarray, e: np.ndarray, dtype: Any) -> None:
    __tracebackhide__ = True
    if a.shape != e.shape:
        raise AssertionError(f"{what}: shape {a.shape} differs from the oracle's {e.shape}")
    expected_dtype = _dtype_name(e.dtype if dtype is None else dtype)
    actual_dtype = _dtype_name(a.dtype)
    if actual_dtype != expected_dtype:
        why = " (jax turns float64 into float32 unless jax_enable_x64 is on)" if (
            actual_dtype, expected_dtype) == ("float32", "float64") else ""
        raise AssertionError(f"{what}: dtype {actual_dtype} differs from the expected {expected_dtype}{why}")
    if actual_dtype not in FLOAT_DTYPES:
        raise TypeError(f"actual must be an array of {_FLOAT_NAMES}; got dtype {actual_dtype}")
    if _dtype_name(e.dtype) not in FLOAT_DTYPES:
        raise TypeError(f"expected must be an array of {_FLOAT_NAMES}; got dtype {_dtype_name(e.dtype)}")


def _mask_decides(mask: Any, e: np.ndarray, *, weights: bool) -> np.ndarray:
    """Where the mask, not the arithmetic, sets the oracle's value: masked weights and fully-masked
    rows (for outputs, their whole row). Without a mask that fits: for weights, rows whose oracle
    weights are all 0 (a row with a kept key sums to 1); for outputs, nowhere."""
    if e.ndim == 0:
        return np.zeros((), bool)
    keep = _keep_for(mask, e.shape[:-1], e.shape[-1] if weights else None)
    if keep is None:
        if not weights:
            return np.zeros(e.shape, bool)
        return np.broadcast_to((e.astype(np.float64) == 0).all(axis=-1, keepdims=True), e.shape)
    fully = ~keep.any(axis=-1, keepdims=True)
    return (~keep | fully) if weights else np.broadcast_to(fully, e.shape)


def _flushed(a: np.ndarray, e: np.ndarray, mask: Any, *, weights: bool) -> np.ndarray:
    """Entries that count as equal by tolerances.subnormals_agree (both below the flush-to-zero
    bound), where the mask does not decide the value."""
    return tol.subnormals_agree(a, e) & ~_mask_decides(mask, e, weights=weights)


_FLOAT32_HINT = ("float64 expected, values agree to float32: computed in float32? (as jax does unless "
                 "jax_enable_x64 is on)")


def _float32_weights_hint(a: np.ndarray, e: np.ndarray, bad: np.ndarray, table: Mapping[str, float] | None,
                          scores: Any, mask: Any) -> str | None:
    """_FLOAT32_HINT when float64 weights that differ all agree to float32's tolerance."""
    if a.dtype != np.float64:
        return None
    a32, e32 = a.astype(np.float32), e.astype(np.float32)
    if scores is not None:
        bound = np.broadcast_to(tol.softmax_max_ulp("float32", scores, mask), a.shape)[bad]
    else:
        default = tol.ATTENTION_WEIGHTS_MAX_ULP["float32"]
        bound = (table or tol.ATTENTION_WEIGHTS_MAX_ULP).get("float32", default)
    near = (ulp_distance(a32[bad], e32[bad]) <= bound) | tol.subnormals_agree(a32[bad], e32[bad])
    return _FLOAT32_HINT if bool(near.all()) else None


def _float32_output_hint(a64: np.ndarray, e64: np.ndarray, bad: np.ndarray, ref: float) -> str | None:
    """_FLOAT32_HINT when float64 outputs that differ all agree to float32's output tolerance."""
    allowed = tol.ATTENTION_OUTPUT_MAX_ULP["float32"] * tol.eps("float32") * ref
    return _FLOAT32_HINT if bool((np.abs(a64[bad] - e64[bad]) <= allowed).all()) else None


def _check_nans(what: str, a: np.ndarray, e: np.ndarray, mask: Any, *, weights: bool) -> None:
    __tracebackhide__ = True
    nan_differs = np.isnan(a.astype(np.float64)) != np.isnan(e.astype(np.float64))
    if nan_differs.any():
        _raise(what, _worst("NaN where the oracle has none, or the reverse", nan_differs,
                            nan_differs.astype(float), a, e, mask, weights=weights))


def _check_zeros(
    what: str, a: np.ndarray, e: np.ndarray, mask: Any, where: np.ndarray | None, *, weights: bool
) -> None:
    __tracebackhide__ = True
    a64, e64 = a.astype(np.float64), e.astype(np.float64)
    zero_differs = (a64 == 0) != (e64 == 0)
    if where is not None:
        zero_differs &= where
    if zero_differs.any():
        _raise(what, _worst("exactly 0 in one and not the other", zero_differs, np.abs(a64 - e64), a, e, mask,
                            weights=weights))


@tol.checks_tolerances
def assert_weights_close(
    actual: Any,
    expected: Any,
    *,
    dtype: Any = None,
    max_ulp: float | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    mask: Any = None,
    table: Mapping[str, float] | None = None,
    scores: Any = None,
) -> None:
    """Assert attention weights (or a masked softmax) equal the oracle's.

    Structure exactly (shape, dtype, the same entries NaN, the same entries exactly 0), then values
    within max_ulp ULPs of actual's dtype. A pair of weights both below
    tolerances.flush_to_zero_bound(dtype) counts as equal (and a 0 there is no structure error),
    except where the mask decides: masked weights must be exactly 0 and fully-masked rows exactly
    what the policy gives (without `mask`, rows whose oracle weights are all 0 count as fully masked).

    actual, expected: NumPy, jax or torch arrays (any mix) of float16, bfloat16, float32 or
      float64, (..., H, T, S); pass the oracle's as `expected`.
    dtype: the dtype actual must have (default: expected's).
    max_ulp, rtol, atol, table entries: finite numbers >= 0 (anything else raises ValueError or
      TypeError naming the argument); max_ulp and rtol/atol are alternatives.
    max_ulp: default tolerances.ATTENTION_WEIGHTS_MAX_ULP[dtype] (or `table`[dtype]).
    scores: the scores a masked softmax was computed from; when given (and max_ulp is not), each
      entry's bound is tolerances.softmax_max_ulp(dtype, scores, mask), which accounts for the
      rounding of x - max that exp amplifies in any implementation working in float32 or float64.
    rtol, atol: when given, replace the ULP test by |actual - expected| <= atol + rtol * |expected|.
    mask: the boolean mask (True = attend, broadcastable to the weights); lets the report say
      whether the worst entry is masked and its row fully masked, and keeps masked weights exact.
    """
    __tracebackhide__ = True
    a, e = _as_numpy(actual), _as_numpy(expected)
    _check_shape_and_dtype("weights", a, e, dtype)
    e = e.astype(a.dtype) if e.dtype != a.dtype else e
    _check_nans("weights", a, e, mask, weights=True)
    flushed = _flushed(a, e, mask, weights=True)
    _check_zeros("weights", a, e, mask, ~flushed, weights=True)
    if rtol is not None or atol is not None:
        a64, e64 = a.astype(np.float64), e.astype(np.float64)
        excess = np.abs(a64 - e64) - ((atol or 0.0) + (rtol or 0.0) * np.abs(e64))
        bad = excess > 0
        kind = f"beyond atol={atol} rtol={rtol}"
    else:
        if max_ulp is None and scores is not None:
            bound = tol.softmax_max_ulp(a.dtype, scores, mask)
            excess = ulp_distance(a, e) - bound
            bad = excess > 0
            kind = "more ULP apart than tolerances.softmax_max_ulp allows for these scores"
        else:
            flat = max_ulp if max_ulp is not None else tol.tolerance(table or tol.ATTENTION_WEIGHTS_MAX_ULP, a.dtype)
            excess = ulp_distance(a, e)
            bad = excess > flat
            kind = f"more than {flat:g} ULP apart"
    bad &= ~flushed
    if bad.any():
        hint = _float32_weights_hint(a, e, bad, table, scores if max_ulp is None else None, mask)
        _raise("weights", _worst(kind, bad, excess, a, e, mask, weights=True, hint=hint))


def weights_error(actual: Any, expected: Any, *, mask: Any = None) -> float:
    """Largest ULP distance between weights over the entries assert_weights_close holds to a ULP
    bound: not NaN, and not a pair both below tolerances.flush_to_zero_bound where the mask does
    not decide the value."""
    a, e = _as_numpy(actual), _as_numpy(expected)
    e = e.astype(a.dtype) if e.dtype != a.dtype else e
    d = ulp_distance(a, e)
    counted = ~np.isnan(d) & ~_flushed(a, e, mask, weights=True)
    return float(d[counted].max(initial=0.0))


@tol.checks_tolerances
def output_error(actual: Any, expected: Any, *, scale: float | None = None, mask: Any = None) -> float:
    """Largest |actual - expected| in units of eps(dtype) * scale (scale: largest finite |expected|
    by default), over entries where expected is not NaN, leaving out pairs both below
    tolerances.flush_to_zero_bound outside fully-masked rows of `mask`: the number
    assert_attention_close bounds."""
    a, e = _as_numpy(actual), _as_numpy(expected)
    e = e.astype(a.dtype) if e.dtype != a.dtype else e
    a64, e64 = a.astype(np.float64), e.astype(np.float64)
    ref = _output_scale(e64) if scale is None else float(scale)
    diff = np.abs(a64 - e64)
    agree = np.isnan(e64) | _flushed(a, e, mask, weights=False) | (diff <= tol.output_flush_allowance(a.dtype))
    diff = np.where(agree, 0.0, diff)
    worst = float(diff.max(initial=0.0))
    if worst == 0.0:
        return 0.0
    unit = tol.eps(a.dtype) * ref
    return worst / unit if unit > 0 else float("inf")


def _output_scale(e64: np.ndarray) -> float:
    finite = np.abs(e64[np.isfinite(e64)])
    return float(finite.max()) if finite.size else 0.0


@tol.checks_tolerances
def assert_attention_close(
    actual: Any,
    expected: Any,
    *,
    dtype: Any = None,
    max_ulp: float | None = None,
    scale: float | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    mask: Any = None,
    fully_masked: str = "zero",
) -> None:
    """Assert attention outputs equal the oracle's.

    Structure exactly (shape, dtype, the same entries NaN; with `mask` and fully_masked="zero",
    exactly 0 in every fully-masked row), then values within
    max_ulp * eps(dtype) * scale, or, when rtol/atol are given, atol + rtol * |expected|. A pair
    of values both below tolerances.flush_to_zero_bound(dtype) counts as equal, except in the
    fully-masked rows of `mask`.

    actual, expected: NumPy, jax or torch arrays of float16, bfloat16, float32 or float64,
      (..., H, T, Dv); pass the oracle's as `expected`.
    max_ulp, scale, rtol, atol: finite numbers >= 0 (anything else raises ValueError or TypeError
      naming the argument); max_ulp and rtol/atol are alternatives.
    max_ulp: default tolerances.ATTENTION_OUTPUT_MAX_ULP[dtype].
    scale: default the largest finite |expected|; pass max|v| when you have it (outputs can cancel
      to near 0, so a relative test is meaningless there).
    mask: the boolean mask (broadcastable to the scores (..., H, T, S)); lets the report say whether
      the worst entry's row is fully masked.
    fully_masked: the policy the outputs were computed under. Under "zero" the mask decides a
      fully-masked row (exactly 0); under "uniform" the row is the mean of v, a computed value compared
      like any other (it may cancel to near 0), and under "nan" the NaN check covers it.
    """
    __tracebackhide__ = True
    check.choice("fully_masked", fully_masked, check.FULLY_MASKED_POLICIES)
    mask_decides = mask if fully_masked == "zero" else None
    a, e = _as_numpy(actual), _as_numpy(expected)
    _check_shape_and_dtype("output", a, e, dtype)
    e = e.astype(a.dtype) if e.dtype != a.dtype else e
    _check_nans("output", a, e, mask, weights=False)
    keep = _keep_for(mask_decides, a.shape[:-1], None) if a.ndim else None
    if keep is not None:
        fully_masked_rows = ~keep.any(axis=-1, keepdims=True) & (e.astype(np.float64) == 0)
        _check_zeros("output", a, e, mask, np.broadcast_to(fully_masked_rows, a.shape), weights=False)
    a64, e64 = a.astype(np.float64), e.astype(np.float64)
    ref = _output_scale(e64) if scale is None else float(scale)
    allowed: np.ndarray | float
    if rtol is not None or atol is not None:
        allowed = (atol or 0.0) + (rtol or 0.0) * np.abs(e64)
        kind = f"beyond atol={atol} rtol={rtol}"
    else:
        bound = max_ulp if max_ulp is not None else tol.tolerance(tol.ATTENTION_OUTPUT_MAX_ULP, a.dtype)
        allowed = bound * tol.eps(a.dtype) * ref
        kind = f"more than {bound:g} * eps * {ref:g} apart"
    # Flushed subnormal products (tolerances.output_flush_allowance), wherever the mask does not decide.
    allowed = np.maximum(allowed, tol.output_flush_allowance(a.dtype))
    skip = np.isnan(e64) | _flushed(a, e, mask_decides, weights=False)
    excess = np.where(skip, -np.inf, np.abs(a64 - e64) - allowed)
    bad = excess > 0
    if bad.any():
        hint = _float32_output_hint(a64, e64, bad, ref) if a.dtype == np.float64 else None
        _raise("output", _worst(kind, bad, excess, a, e, mask, weights=False, hint=hint))
