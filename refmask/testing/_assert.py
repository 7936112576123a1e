"""Raising comparisons of attention weights and outputs against the oracle's.

Checks run in order, and the first that fails raises AssertionError with a report a person can
act on: shape, then dtype, then structure (the same entries exactly 0, the same entries NaN), then
values within the per-dtype tolerance of refmask.testing.tolerances.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._backends import to_numpy
from . import tolerances as tol

_INT_OF_WIDTH = {2: np.int16, 4: np.int32, 8: np.int64}


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Number of representable values of their (shared) dtype between a and b; +0 and -0 are 0 apart.

    Returned as float64 (exact below 2**53). NaN entries give NaN.
    """
    if a.dtype != b.dtype:
        raise TypeError(f"ulp_distance needs one dtype; got {a.dtype} and {b.dtype}")
    ints = _INT_OF_WIDTH[a.dtype.itemsize]
    lowest = np.iinfo(ints).min

    def ordered(x: np.ndarray) -> np.ndarray:
        # Sign-magnitude bit patterns -> integers in the order of the floats they encode.
        i = np.ascontiguousarray(x).view(ints).astype(np.int64)
        return np.where(i < 0, lowest - i, i)

    distance = np.abs(ordered(a).astype(np.float64) - ordered(b).astype(np.float64))
    return np.where(np.isnan(a.astype(np.float64)) | np.isnan(b.astype(np.float64)), np.nan, distance)


@dataclass(frozen=True)
class Mismatch:
    """The worst entry of a failed comparison."""

    kind: str
    count: int
    total: int
    index: tuple[int, ...]
    actual: float
    expected: float
    ulp: float
    row_fully_masked: bool | None
    entry_masked: bool | None

    def report(self, what: str) -> str:
        where = _index_names(self.index)
        lines = [
            f"{what}: {self.count} of {self.total} entries differ ({self.kind})",
            f"  worst at {where}: actual {self.actual!r}, oracle {self.expected!r}, {self.ulp:g} ULP apart",
        ]
        if self.entry_masked is not None:
            lines.append(f"  that entry is {'masked' if self.entry_masked else 'kept'} by the mask")
        if self.row_fully_masked is not None:
            lines.append(f"  its row is {'fully masked' if self.row_fully_masked else 'not fully masked'}")
        return "\n".join(lines)


def _index_names(index: tuple[int, ...]) -> str:
    names = ("batch", "head", "query", "key")
    if len(index) == 4:
        return "(" + ", ".join(f"{n}={i}" for n, i in zip(names, index)) + ")"
    return str(tuple(int(i) for i in index))


def _as_numpy(x: Any) -> np.ndarray:
    return np.asarray(to_numpy(x))


def _mask_info(mask: Any, shape: tuple[int, ...], index: tuple[int, ...]) -> tuple[bool | None, bool | None]:
    if mask is None:
        return None, None
    keep = np.broadcast_to(_as_numpy(mask), shape)
    row = keep[index[:-1]] if len(shape) else keep
    return (not bool(row.any())), (not bool(keep[index]))


def _worst(kind, bad, score, a, e, mask) -> Mismatch:
    score = np.where(bad, np.nan_to_num(score, nan=np.inf), -np.inf)
    index = tuple(int(i) for i in np.unravel_index(int(np.argmax(score)), a.shape))
    ulp = float(ulp_distance(a[index][None], e[index][None])[0]) if a.dtype == e.dtype else float("nan")
    fully, masked = _mask_info(mask, a.shape, index)
    return Mismatch(
        kind, int(bad.sum()), int(a.size), index, float(a[index]), float(e[index]), ulp, fully, masked
    )


def _structure(what: str, a: np.ndarray, e: np.ndarray, dtype: Any, mask: Any) -> None:
    if a.shape != e.shape:
        raise AssertionError(f"{what}: shape {a.shape} differs from the oracle's {e.shape}")
    expected_dtype = tol.dtype_name(e.dtype if dtype is None else dtype)
    if tol.dtype_name(a.dtype) != expected_dtype:
        raise AssertionError(f"{what}: dtype {a.dtype} differs from the expected {expected_dtype}")
    a64, e64 = a.astype(np.float64), e.astype(np.float64)
    nan_differs = np.isnan(a64) != np.isnan(e64)
    if nan_differs.any():
        raise AssertionError(_worst("NaN where the oracle has none, or the reverse", nan_differs,
                                    nan_differs.astype(float), a, e, mask).report(what))
    zero_differs = (a64 == 0) != (e64 == 0)
    if zero_differs.any():
        raise AssertionError(_worst("exactly 0 in one and not the other", zero_differs,
                                    np.abs(a64 - e64), a, e, mask).report(what))


def assert_weights_close(
    actual: Any,
    expected: Any,
    *,
    dtype: Any = None,
    max_ulp: float | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    mask: Any = None,
    table: dict[str, int] | None = None,
) -> None:
    """Assert attention weights equal the oracle's: structure exactly, values within max_ulp ULPs.

    actual, expected: NumPy, jax or torch arrays. dtype: the dtype actual must have (default:
    expected's). max_ulp defaults to the per-dtype bound for attention weights; rtol/atol, when
    given, replace the ULP test by |actual - expected| <= atol + rtol * |expected|. mask (optional)
    lets the report say whether the worst entry is masked and its row fully masked.
    """
    __tracebackhide__ = True
    a, e = _as_numpy(actual), _as_numpy(expected)
    _structure("weights", a, e, dtype, mask)
    if rtol is not None or atol is not None:
        a64, e64 = a.astype(np.float64), e.astype(np.float64)
        excess = np.abs(a64 - e64) - ((atol or 0.0) + (rtol or 0.0) * np.abs(e64))
        bad = excess > 0
        kind = f"beyond atol={atol} rtol={rtol}"
    else:
        bound = max_ulp if max_ulp is not None else tol.tolerance(table or tol.ATTENTION_WEIGHTS_MAX_ULP, a.dtype)
        excess = ulp_distance(a, e.astype(a.dtype))
        bad = excess > bound
        kind = f"more than {bound} ULP apart"
    if bad.any():
        raise AssertionError(_worst(kind, bad, excess, a, e, mask).report("weights"))


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
) -> None:
    """Assert attention outputs equal the oracle's: NaNs and exact zeros in the same places, values
    within max_ulp * eps(dtype) * scale (scale defaults to the largest finite |expected|; pass
    max|v| when you have it) or, when given, atol + rtol * |expected|.
    """
    __tracebackhide__ = True
    a, e = _as_numpy(actual), _as_numpy(expected)
    if a.shape != e.shape:
        raise AssertionError(f"output: shape {a.shape} differs from the oracle's {e.shape}")
    expected_dtype = tol.dtype_name(e.dtype if dtype is None else dtype)
    if tol.dtype_name(a.dtype) != expected_dtype:
        raise AssertionError(f"output: dtype {a.dtype} differs from the expected {expected_dtype}")
    a64, e64 = a.astype(np.float64), e.astype(np.float64)
    nan_differs = np.isnan(a64) != np.isnan(e64)
    if nan_differs.any():
        raise AssertionError(_worst("NaN where the oracle has none, or the reverse", nan_differs,
                                    nan_differs.astype(float), a, e, None).report("output"))
    if rtol is not None or atol is not None:
        allowed = (atol or 0.0) + (rtol or 0.0) * np.abs(e64)
        kind = f"beyond atol={atol} rtol={rtol}"
    else:
        bound = max_ulp if max_ulp is not None else tol.tolerance(tol.ATTENTION_OUTPUT_MAX_ULP, a.dtype)
        finite = np.abs(e64[np.isfinite(e64)])
        ref = scale if scale is not None else (float(finite.max()) if finite.size else 0.0)
        allowed = bound * tol.eps(a.dtype) * ref
        kind = f"more than {bound} * eps * {ref:g} apart"
    excess = np.where(np.isnan(e64), -np.inf, np.abs(a64 - e64) - allowed)
    bad = excess > 0
    if bad.any():
        raise AssertionError(_worst(kind, bad, excess, a, e, None).report("output"))
