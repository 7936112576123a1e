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

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _dtypes
from .. import _validate as check
from .._backends import to_numpy
from . import _grid, _tree
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
    grid: str = ""
    trailing: tuple[str, ...] = ()  # names of the last axes, when not (head, query, last_axis)

    def report(self, what: str) -> str:
        where = index_names(self.index, self.last_axis, self.trailing or None)
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
        if self.grid:
            lines.append(self.grid)
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)


class MismatchError(AssertionError):
    """AssertionError of assert_weights_close / assert_attention_close; `.mismatch` is the worst entry."""

    def __init__(self, message: str, mismatch: Mismatch) -> None:
        super().__init__(message)
        self.mismatch = mismatch


def axis_names(ndim: int, last_axis: str = "key", trailing: tuple[str, ...] | None = None) -> list[str]:
    """The names of an array's axes: the last ones `trailing` (default head, query, `last_axis`),
    any before them batch axes (batch, or batch0, batch1, ... when there are several)."""
    if ndim == 0:
        return []
    names = ("head", "query", last_axis) if trailing is None else trailing
    tail = list(names[-min(ndim, len(names)) :]) if ndim >= 2 else [names[-1]]
    lead = ndim - len(tail)
    return (["batch"] if lead == 1 else [f"batch{i}" for i in range(lead)]) + tail


# The axes of attention's gradients, as a report names them (dk and dv run over keys).
GRADIENT_AXES = {"dq": ("head", "query", "dim"), "dk": ("head", "key", "dim"), "dv": ("head", "key", "dim"),
                 "dbias": ("head", "query", "key"), "dsinks": ("head",)}


def index_names(index: tuple[int, ...], last_axis: str = "key", trailing: tuple[str, ...] | None = None) -> str:
    """(batch=1, head=0, query=2, key=3): the last three axes are head, query and `last_axis` (or
    `trailing`), any before them batch axes (batch, or batch0, batch1, ... when there are several)."""
    names = axis_names(len(index), last_axis, trailing)
    return "(" + ", ".join(f"{name}={int(i)}" for name, i in zip(names, index, strict=True)) + ")"


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
    lse: bool = False,
    trailing: tuple[str, ...] | None = None,
) -> Mismatch:
    score = np.where(bad, np.nan_to_num(np.asarray(score, dtype=np.float64), nan=np.inf), -np.inf)
    index = tuple(int(i) for i in np.unravel_index(int(np.argmax(score)), a.shape))
    ulp = float(ulp_distance(a[index][None], e[index][None].astype(a.dtype))[0])
    fully = masked = None
    # For the grid: the entries the mask drops, the rows with no kept key.
    dropped: np.ndarray | None = None
    empty_rows: np.ndarray | None = None
    if lse:
        # lse (..., H, T): one entry per row of the scores (..., H, T, S).
        keep = _keep_for(mask, a.shape, None) if a.ndim else None
        if keep is not None:
            dropped = np.asarray(~keep.any(axis=-1))
            fully = bool(dropped[index])
    else:
        keep = _keep_for(mask, a.shape[:-1], a.shape[-1] if weights else None) if a.ndim else None
        if keep is not None:
            row_keep = keep[index[:-1]]
            fully = not bool(row_keep.any())
            masked = (not bool(row_keep[index[-1]])) if weights else None
            empty_rows = np.asarray(~keep.any(axis=-1))
            dropped = np.asarray(~keep) if weights else None
    actual_row = expected_row = None
    if a.ndim and a.shape[-1] <= _PRINT_ROW_MAX:
        actual_row, expected_row = a[index[:-1]], e[index[:-1]]
    trailing = trailing or (("head", "query") if lse else ())
    last_axis = trailing[-1] if trailing else "key" if weights else "dim"
    grid = _grid.draw(bad, index, axis_names(a.ndim, last_axis, trailing or None), masked=dropped,
                      fully_masked_rows=empty_rows, masked_label="no kept key" if lse else "masked")
    hint = hint or (_lse_hint(a, e, index, fully) if lse else _hint(a, e, index, fully, masked, weights))
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
        last_axis,
        actual_row,
        expected_row,
        hint,
        grid,
        trailing,
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
        if fully is None:  # no mask to tell (a gradient's entry gathers many rows)
            return ("NaN where the oracle has a number: overflow in exp (no max subtraction?), a NaN/inf in masked "
                    "scores, or exp(-inf - -inf) in a row with no kept key")
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


def _check_nans(what: str, a: np.ndarray, e: np.ndarray, mask: Any, *, weights: bool,
                trailing: tuple[str, ...] | None = None) -> None:
    __tracebackhide__ = True
    nan_differs = np.isnan(a.astype(np.float64)) != np.isnan(e.astype(np.float64))
    if nan_differs.any():
        _raise(what, _worst("NaN where the oracle has none, or the reverse", nan_differs,
                            nan_differs.astype(float), a, e, mask, weights=weights, trailing=trailing))


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


def _compare_each_leaf(what: str, actual: Any, expected: Any, err_msg: str,
                       compare: Callable[[str, Any, Any], None]) -> None:
    """compare(what + path, a, e) for each pair of leaves of two nested results (_tree.pairs), the
    structure checked first; err_msg put before any report."""
    __tracebackhide__ = True
    if not isinstance(err_msg, str):
        raise TypeError(f"err_msg must be a str; got {type(err_msg).__name__} {err_msg!r}")
    try:
        for path, a, e in list(_tree.pairs(actual, expected, what)):
            compare(what + path, a, e)
    except MismatchError as err:
        if not err_msg:
            raise
        raise MismatchError(_tree.with_message(err_msg, str(err)), err.mismatch) from None
    except AssertionError as err:
        if not err_msg:
            raise
        raise AssertionError(_tree.with_message(err_msg, str(err))) from None


@tol.checks_tolerances
def assert_weights_close(
    actual: Any,
    expected: Any,
    rtol: float | None = None,
    atol: float | None = None,
    *,
    dtype: Any = None,
    max_ulp: float | None = None,
    mask: Any = None,
    table: Mapping[str, float] | None = None,
    scores: Any = None,
    err_msg: str = "",
) -> None:
    """Assert attention weights (or a masked softmax) equal the oracle's.

    Structure exactly (shape, dtype, the same entries NaN, the same entries exactly 0), then values
    within max_ulp ULPs of actual's dtype. A pair of weights both below
    tolerances.flush_to_zero_bound(dtype) counts as equal (and a 0 there is no structure error),
    except where the mask decides: masked weights must be exactly 0 and fully-masked rows exactly
    what the policy gives (without `mask`, rows whose oracle weights are all 0 count as fully masked).

    actual, expected: NumPy, jax or torch arrays (any mix) of float16, bfloat16, float32 or
      float64, (..., H, T, S); pass the oracle's as `expected`. Or two nested structures of them
      (tuples, lists, dicts, NamedTuples), compared leaf by leaf: the report names the leaf by its
      path ("weights[1]", "weights['w']"), and a structure that differs is reported as such.
    rtol, atol (positional, as in numpy.testing.assert_allclose): when given, replace the ULP test
      by |actual - expected| <= atol + rtol * |expected|.
    dtype: the dtype actual must have (default: expected's).
    max_ulp, rtol, atol, table entries: finite numbers >= 0 (anything else raises ValueError or
      TypeError naming the argument); max_ulp and rtol/atol are alternatives.
    max_ulp: default tolerances.ATTENTION_WEIGHTS_MAX_ULP[dtype] (or `table`[dtype]).
    scores: the scores a masked softmax was computed from; when given (and max_ulp is not), each
      entry's bound is tolerances.softmax_max_ulp(dtype, scores, mask), which accounts for the
      rounding of x - max that exp amplifies in any implementation working in float32 or float64.
    mask: the boolean mask (True = attend, broadcastable to the weights); lets the report say
      whether the worst entry is masked and its row fully masked, and keeps masked weights exact.
    err_msg: a line put first in the report (numpy.testing's err_msg).
    """
    __tracebackhide__ = True

    def compare(what: str, a: Any, e: Any) -> None:
        __tracebackhide__ = True
        _weights_close(what, a, e, dtype, max_ulp, rtol, atol, mask, table, scores)

    _compare_each_leaf("weights", actual, expected, err_msg, compare)


def _weights_close(what: str, actual: Any, expected: Any, dtype: Any, max_ulp: float | None, rtol: float | None,
                   atol: float | None, mask: Any, table: Mapping[str, float] | None, scores: Any) -> None:
    __tracebackhide__ = True
    a, e = _as_numpy(actual), _as_numpy(expected)
    _check_shape_and_dtype(what, a, e, dtype)
    e = e.astype(a.dtype) if e.dtype != a.dtype else e
    _check_nans(what, a, e, mask, weights=True)
    flushed = _flushed(a, e, mask, weights=True)
    _check_zeros(what, a, e, mask, ~flushed, weights=True)
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
        _raise(what, _worst(kind, bad, excess, a, e, mask, weights=True, hint=hint))


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
    rtol: float | None = None,
    atol: float | None = None,
    *,
    dtype: Any = None,
    max_ulp: float | None = None,
    scale: float | None = None,
    mask: Any = None,
    fully_masked: str = "zero",
    err_msg: str = "",
) -> None:
    """Assert attention outputs equal the oracle's.

    Structure exactly (shape, dtype, the same entries NaN; with `mask` and fully_masked="zero",
    exactly 0 in every fully-masked row), then values within
    max_ulp * eps(dtype) * scale, or, when rtol/atol are given, atol + rtol * |expected|. A pair
    of values both below tolerances.flush_to_zero_bound(dtype) counts as equal, except in the
    fully-masked rows of `mask`.

    actual, expected: NumPy, jax or torch arrays of float16, bfloat16, float32 or float64,
      (..., H, T, Dv); pass the oracle's as `expected`. Or two nested structures of them (tuples,
      lists, dicts, NamedTuples), compared leaf by leaf: the report names the leaf by its path
      ("output[1]", "output['x']"), and a structure that differs is reported as such.
    rtol, atol (positional, as in numpy.testing.assert_allclose): replace the ULP test.
    max_ulp, scale, rtol, atol: finite numbers >= 0 (anything else raises ValueError or TypeError
      naming the argument); max_ulp and rtol/atol are alternatives.
    max_ulp: default tolerances.ATTENTION_OUTPUT_MAX_ULP[dtype].
    scale: default the largest finite |expected| (of each leaf); pass max|v| when you have it
      (outputs can cancel to near 0, so a relative test is meaningless there).
    mask: the boolean mask (broadcastable to the scores (..., H, T, S)); lets the report say whether
      the worst entry's row is fully masked.
    fully_masked: the policy the outputs were computed under. Under "zero" the mask decides a
      fully-masked row (exactly 0); under "uniform" the row is the mean of v, a computed value compared
      like any other (it may cancel to near 0), and under "nan" the NaN check covers it.
    err_msg: a line put first in the report (numpy.testing's err_msg).
    """
    __tracebackhide__ = True
    check.choice("fully_masked", fully_masked, check.FULLY_MASKED_POLICIES)

    def compare(what: str, a: Any, e: Any) -> None:
        __tracebackhide__ = True
        _attention_close(what, a, e, dtype, max_ulp, scale, rtol, atol, mask, fully_masked)

    _compare_each_leaf("output", actual, expected, err_msg, compare)


def _attention_close(what: str, actual: Any, expected: Any, dtype: Any, max_ulp: float | None, scale: float | None,
                     rtol: float | None, atol: float | None, mask: Any, fully_masked: str) -> None:
    __tracebackhide__ = True
    mask_decides = mask if fully_masked == "zero" else None
    a, e = _as_numpy(actual), _as_numpy(expected)
    _check_shape_and_dtype(what, a, e, dtype)
    e = e.astype(a.dtype) if e.dtype != a.dtype else e
    _check_nans(what, a, e, mask, weights=False)
    keep = _keep_for(mask_decides, a.shape[:-1], None) if a.ndim else None
    if keep is not None:
        fully_masked_rows = ~keep.any(axis=-1, keepdims=True) & (e.astype(np.float64) == 0)
        _check_zeros(what, a, e, mask, np.broadcast_to(fully_masked_rows, a.shape), weights=False)
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
        _raise(what, _worst(kind, bad, excess, a, e, mask, weights=False, hint=hint))


def _lse_hint(a: np.ndarray, e: np.ndarray, index: tuple[int, ...], fully: bool | None) -> str | None:
    """A guess at the bug behind the worst lse entry."""
    av, ev = float(a[index]), float(e[index])
    if fully or (ev == -np.inf and fully is None):
        if av == np.inf:
            return ("this row has no kept key, so its lse is log(0) = -inf; +inf (flash-attn's convention "
                    "outside split-KV) makes a merge of partial results (logaddexp, as split-KV and ring "
                    "attention combine them) drop every key of the other part")
        if np.isfinite(av):
            return ("this row has no kept key, so its lse is log(0) = -inf; a finite value comes from a guarded "
                    "row sum (log(max(l, tiny)), or l = 1 where l = 0) or a finite initial maximum such as -1e30")
    if av == -np.inf and np.isfinite(ev):
        return "lse -inf in a row with a kept key: the row sum underflowed to 0 (scores not shifted by their max?)"
    if np.isnan(av) and not np.isnan(ev):
        return "NaN lse in a row with a kept key: overflow in exp (no max subtraction?) or -inf - -inf"
    return None


@tol.checks_tolerances
def assert_lse_close(
    actual: Any,
    expected: Any,
    rtol: float | None = None,
    atol: float | None = None,
    *,
    dtype: Any = None,
    max_ulp: float | None = None,
    scale: float | None = None,
    mask: Any = None,
    err_msg: str = "",
) -> None:
    """Assert the log-sum-exp of each row of scores (the `lse` a flash-style kernel saves for its
    backward) equals the oracle's, as refmask.attention(..., return_lse=True) returns it.

    lse (..., H, T): log of the sum of exp over the row's kept scores; -inf (log 0) for a row with
    no kept key. Structure exactly (shape, dtype, the same entries NaN, the same entries infinite,
    of the same sign), then values within max_ulp * eps(dtype) * scale, or, when rtol/atol are
    given, atol + rtol * |expected|.

    actual, expected: NumPy, jax or torch arrays (or nested structures of them, compared leaf by
      leaf); pass the oracle's as `expected`.
    rtol, atol (positional, as in numpy.testing.assert_allclose): replace the ULP test.
    max_ulp: default tolerances.LSE_MAX_ULP[dtype]; scale: default max(1, largest finite |expected|).
    max_ulp, scale, rtol, atol: finite numbers >= 0; max_ulp and rtol/atol are alternatives.
    mask: the boolean mask (broadcastable to the scores (..., H, T, S)); lets the report say whether
      the worst entry's row has a kept key.
    err_msg: a line put first in the report (numpy.testing's err_msg).
    """
    __tracebackhide__ = True

    def compare(what: str, a: Any, e: Any) -> None:
        __tracebackhide__ = True
        _lse_close(what, a, e, dtype, max_ulp, scale, rtol, atol, mask)

    _compare_each_leaf("lse", actual, expected, err_msg, compare)


def _lse_close(what: str, actual: Any, expected: Any, dtype: Any, max_ulp: float | None, scale: float | None,
               rtol: float | None, atol: float | None, mask: Any) -> None:
    __tracebackhide__ = True
    a, e = _as_numpy(actual), _as_numpy(expected)
    _check_shape_and_dtype(what, a, e, dtype)
    e = e.astype(a.dtype) if e.dtype != a.dtype else e
    a64, e64 = a.astype(np.float64), e.astype(np.float64)
    nan_differs = np.isnan(a64) != np.isnan(e64)
    if nan_differs.any():
        _raise(what, _worst("NaN where the oracle has none, or the reverse", nan_differs, nan_differs.astype(float),
                            a, e, mask, weights=False, lse=True))
    with np.errstate(invalid="ignore"):
        inf_differs = (np.isinf(a64) | np.isinf(e64)) & (a64 != e64) & ~np.isnan(e64)
    if inf_differs.any():
        _raise(what, _worst("infinite in one and not the other, or of the other sign", inf_differs,
                            inf_differs.astype(float), a, e, mask, weights=False, lse=True))
    ref = max(1.0, _output_scale(e64)) if scale is None else float(scale)
    allowed: np.ndarray | float
    if rtol is not None or atol is not None:
        allowed = (atol or 0.0) + (rtol or 0.0) * np.abs(e64)
        kind = f"beyond atol={atol} rtol={rtol}"
    else:
        bound = max_ulp if max_ulp is not None else tol.tolerance(tol.LSE_MAX_ULP, a.dtype)
        allowed = bound * tol.eps(a.dtype) * ref
        kind = f"more than {bound:g} * eps * {ref:g} apart"
    with np.errstate(invalid="ignore"):
        excess = np.where(np.isfinite(e64), np.abs(a64 - e64) - allowed, -np.inf)
    bad = excess > 0
    if bad.any():
        _raise(what, _worst(kind, bad, excess, a, e, mask, weights=False, lse=True))


def lse_error(actual: Any, expected: Any) -> float:
    """Largest |actual - expected| over finite entries in units of eps(dtype) * max(1, largest finite
    |expected|): the number assert_lse_close bounds."""
    a, e = _as_numpy(actual), _as_numpy(expected)
    e = e.astype(a.dtype) if e.dtype != a.dtype else e
    a64, e64 = a.astype(np.float64), e.astype(np.float64)
    finite = np.isfinite(e64) & np.isfinite(a64)
    worst = float(np.abs(a64[finite] - e64[finite]).max(initial=0.0))
    return worst / (tol.eps(a.dtype) * max(1.0, _output_scale(e64)))


# ----------------------------------------------------------------------------------------------
# gradients


def _gradient_bounds(
    a: np.ndarray, e64: np.ndarray, terms: Any, scale: float | None, max_ulp: float | None, precision: Any
) -> tuple[np.ndarray, np.ndarray, float]:
    """(terms per entry, allowed |actual - expected| per entry, the ULP bound) of a gradient comparison."""
    p = _precision(a.dtype, precision)
    if terms is not None:
        t = np.broadcast_to(np.asarray(to_numpy(terms)).astype(np.float64), a.shape)
        with np.errstate(invalid="ignore"):
            if bool((t < 0).any()) or bool(np.isinf(t).any()):
                raise ValueError("terms must hold magnitudes: numbers >= 0 (NaN where the gradient is NaN)")
    else:
        ref = _output_scale(e64) if scale is None else float(scale)
        t = np.full(a.shape, ref)
    bound = max_ulp if max_ulp is not None else tol.tolerance(tol.GRADIENT_MAX_ULP, p)
    allowed = np.where(t == 0, 0.0, bound * tol.eps(p) * t + tol.gradient_allowance(p))
    return t, allowed, bound


def _precision(dtype: Any, precision: Any) -> str:
    """The coarser of a gradient's dtype and the precision it was computed in (None: its own dtype)."""
    own = tol.dtype_name(dtype)
    if precision is None:
        return own
    other = tol.dtype_name(precision)
    return other if tol.eps(other) > tol.eps(own) else own


@tol.checks_tolerances
def assert_gradients_close(
    actual: Any,
    expected: Any,
    *,
    terms: Any = None,
    scale: float | None = None,
    max_ulp: float | None = None,
    precision: Any = None,
    name: str = "gradient",
) -> None:
    """Assert a gradient of attention equals the oracle's (refmask.attention_vjp's).

    Structure exactly (shape, dtype, the same entries NaN, and exactly expected's value wherever the
    entry has no term, terms == 0: masked entries, rows with no kept key), then
    |actual - expected| <= max_ulp * eps(dtype) * terms + tolerances.gradient_allowance(dtype).
    A gradient entry is a sum that cancels, so its error is relative to the magnitude of its terms,
    not to its value: pass them as `terms`.

    actual, expected: NumPy, jax or torch arrays of float16, bfloat16, float32 or float64; pass the
      oracle's as `expected`.
    terms: per entry, the sum of the magnitudes of the terms it sums (an array broadcastable to the
      gradient, as attention_gradient_terms gives); or `scale`, one number for every entry. Neither:
      the largest finite |expected| (weaker: a gradient can cancel far below its terms).
    max_ulp: default tolerances.GRADIENT_MAX_ULP[dtype]; with scale, a finite number >= 0.
    precision: the dtype the gradient was computed in, when coarser than its own: eps, max_ulp's default
      and the allowance are then that dtype's. A backend computes in q's precision
      (tolerances.COMPUTE_DTYPE), so a float64 bias or sinks beside float32 q gets a float64 gradient
      accurate to float32: pass precision=COMPUTE_DTYPE[q's dtype].
    name: what the report calls the array ("dq", "dbias", ...).
    """
    __tracebackhide__ = True
    a, e = _as_numpy(actual), _as_numpy(expected)
    _check_shape_and_dtype(name, a, e, None)
    e = e.astype(a.dtype) if e.dtype != a.dtype else e
    _check_nans(name, a, e, None, weights=False, trailing=GRADIENT_AXES.get(name))
    a64, e64 = a.astype(np.float64), e.astype(np.float64)
    t, allowed, bound = _gradient_bounds(a, e64, terms, scale, max_ulp, precision)
    with np.errstate(invalid="ignore"):
        excess = np.where(np.isnan(e64), -np.inf, np.abs(a64 - e64) - allowed)
    bad = excess > 0
    if bad.any():
        index = np.unravel_index(int(np.argmax(np.where(bad, excess, -np.inf))), a.shape)
        kind = ("not exactly the oracle's where no term contributes (terms 0)" if t[index] == 0
                else f"more than {bound:g} * eps * terms apart")
        _raise(name, _worst(kind, bad, excess, a, e, None, weights=False, trailing=GRADIENT_AXES.get(name)))


@tol.checks_tolerances
def gradient_error(
    actual: Any, expected: Any, *, terms: Any = None, scale: float | None = None, precision: Any = None
) -> tuple[float, float]:
    """(largest |actual - expected| in units of eps * terms, eps that of the coarser of actual's dtype and
    `precision`, largest |actual - expected|) over
    the entries assert_gradients_close bounds by a ULP count: not NaN, terms > 0, and beyond
    tolerances.gradient_allowance. Where terms is 0 any difference counts as infinitely many units."""
    a, e = _as_numpy(actual), _as_numpy(expected)
    e = e.astype(a.dtype) if e.dtype != a.dtype else e
    a64, e64 = a.astype(np.float64), e.astype(np.float64)
    t, _, _ = _gradient_bounds(a, e64, terms, scale, 0.0, precision)
    p = _precision(a.dtype, precision)
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = np.where(np.isnan(e64), 0.0, np.abs(a64 - e64))
        counted = np.where(diff > tol.gradient_allowance(p), diff, 0.0)
        units = np.where(counted > 0, counted / (tol.eps(p) * t), 0.0)
    return float(units.max(initial=0.0)), float(diff.max(initial=0.0))
