"""The converters between conventions, written once over a backend's `ArrayOps`.

The definitions are the oracle's docstrings (refmask/oracle.py); the oracle and every backend call these
with their own operations, so a converter cannot drift between backends. Value checks (NaN in a bias, a
bias that is not a mask, 0/1 values) run whenever the values can be read, i.e. outside tracing.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from . import _arrays as arrays
from . import _dtypes
from . import _validate as check
from ._arrays import ArrayOps

# The public functions that are this module's flow on every backend (the public API calls them with the
# chosen backend's OPS); each has the oracle's signature after its leading `ops`.
SHARED = ("and_masks", "or_masks", "to_additive", "from_additive", "from_multiplicative", "from_torch_mha",
          "to_torch_mha", "from_hf")

_NOT_A_MASK = (
    "that is a bias, not a mask: pass it as attention(..., bias=...); a 1/0 mask (1 = attend, as Flax's "
    "make_attention_mask) converts with refmask.from_multiplicative"
)


def fill_value(fill: object, dtype: str) -> float:
    """The masking value to_additive writes in `dtype`: finfo.min, -inf, or a negative number rounded to dtype."""
    if isinstance(fill, str):
        check.choice("fill", fill, check.FILLS)
        return _dtypes.lowest(dtype) if fill == "min" else -math.inf
    if isinstance(fill, bool) or not isinstance(fill, numbers.Real):
        raise TypeError(f'fill must be "min", "-inf" or a negative number; got {fill!r}')
    if not fill < 0:
        raise ValueError(f"fill must be a negative number (a masking value); got {fill!r}")
    rounded = _dtypes.round_to(float(fill), dtype)
    if not math.isfinite(rounded):
        raise ValueError(
            f"fill={fill!r} overflows to -inf in {dtype} (its most negative finite value is "
            f'{_dtypes.finfo(dtype).min}); use fill="min" or fill="-inf" to mean that'
        )
    return rounded


# threshold="auto": every fill a framework writes (-inf, finfo.min of float16, bfloat16, float32 or float64, the
# tutorials' -1e9 or -1e30) lies at or below float16's most negative value, and stays there when an array is
# upcast (a Hugging Face float16 mask read as float32 keeps -65504), while no fill lies between it and 0.
AUTO_FILL_LIMIT = -65504.0
THRESHOLDS = ("auto", "min")


def threshold_value(threshold: object, dtype: str) -> float:
    """from_additive's limit in `dtype`: -65504 for "auto", finfo.min for "min", else a negative number
    rounded to dtype."""
    if isinstance(threshold, str):
        check.choice("threshold", threshold, THRESHOLDS)
        return AUTO_FILL_LIMIT if threshold == "auto" else _dtypes.lowest(dtype)
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise TypeError(f'threshold must be "auto", "min" or a negative number (a masking value); got {threshold!r}')
    if not threshold < 0:  # NaN fails this too
        raise ValueError(
            f"threshold must be a negative number (values <= threshold mask); got {threshold!r}: "
            "a threshold of 0 or more would read the kept 0s as masked"
        )
    return _dtypes.round_to(float(threshold), dtype)


def to_additive(ops: ArrayOps, mask: Any, dtype: Any = "float32", *, fill: Any = "min") -> Any:
    mask = arrays.bool_mask(ops, "mask", mask)
    name = ops.produced_dtype(_dtypes.float_dtype("dtype", dtype))
    return ops.where(mask, 0.0, fill_value(fill, name), name)


def from_additive(ops: ArrayOps, bias: Any, *, threshold: Any = "auto") -> Any:
    return _from_additive(ops, "bias", bias, threshold)


def _from_additive(ops: ArrayOps, name: str, bias: Any, threshold: Any) -> Any:
    bias = arrays.floating(ops, name, bias)
    limit = threshold_value(threshold, ops.dtype_name(bias))
    keep = bias > limit
    if ops.concrete(bias):
        _check_additive_values(name, ops.to_numpy(bias), ops.to_numpy(keep), limit)
    return keep


def _check_additive_values(name: str, values: np.ndarray[Any, Any], keep: np.ndarray[Any, Any], limit: float) -> None:
    v = values.astype(np.float64)
    if np.isnan(v).any():
        raise ValueError(f"{name} contains NaN, which is neither a kept (0) nor a masking value")
    if np.isposinf(v).any():
        raise ValueError(f"{name} contains +inf, which is neither a kept (0) nor a masking value")
    bad = keep & (v != 0)
    if bad.any():
        first = float(v[bad].ravel()[0])
        fill = f"; if {first!r} is the mask's fill, pass threshold={first!r}" if first < 0 else ""
        raise ValueError(
            f"{name} holds {first!r}, which is neither 0 (kept) nor a masking value (<= {limit!r}){fill}. "
            f"Otherwise {_NOT_A_MASK}"
        )


def from_multiplicative(ops: ArrayOps, mask: Any) -> Any:
    m = arrays.array(ops, "mask", mask, expected="1 (attend) and 0 (masked) as numbers or bools")
    dtype = ops.dtype_name(m)
    if dtype == "bool":
        return m
    if not (_dtypes.is_integer(dtype) or _dtypes.is_floating(dtype)):
        raise TypeError(f"mask must hold 1 (attend) and 0 (masked) as numbers or bools; got dtype {dtype}")
    if ops.concrete(m):
        v = ops.to_numpy(m).astype(np.float64)
        bad = ~np.isin(v, (0.0, 1.0))
        if bad.any():
            raise ValueError(
                f"mask must hold only 1 (attend) and 0 (masked); got {v[bad].ravel()[0]!r}. An additive mask "
                "(0 and large negative values) converts with refmask.from_additive"
            )
    return m == 1


def from_hf(ops: ArrayOps, attention_mask: Any) -> Any:
    m = arrays.array(ops, "attention_mask", attention_mask, expected="0/1 numbers or bools")
    check.ndim("attention_mask", ops.shape(m), 2, "(B, S)")
    dtype = ops.dtype_name(m)
    if dtype != "bool":
        if not (_dtypes.is_integer(dtype) or _dtypes.is_floating(dtype)):
            raise TypeError(f"attention_mask must hold 0/1 numbers or bools; got dtype {dtype}")
        if ops.concrete(m):
            v = ops.to_numpy(m)
            bad = ~np.isin(v.astype(np.float64), (0.0, 1.0))
            if bad.any():
                raise ValueError(f"attention_mask must hold only 1 (attend) and 0 (padding); got {v[bad].ravel()[0]!r}")
    return (m == 1)[:, None, None, :]


def _mha_keep(ops: ArrayOps, name: str, m: Any, threshold: Any, device: Any) -> Any:
    """torch MHA masks: bool True = masked; float = additive, which may only hold 0 or masking values."""
    m = arrays.array(ops, name, m, device)
    dtype = ops.dtype_name(m)
    if dtype == "bool":
        return ~m
    if not _dtypes.is_floating(dtype):
        raise TypeError(f"{name} must be bool (True = masked) or a float additive mask; got dtype {dtype}")
    return _from_additive(ops, name, m, threshold)


def from_torch_mha(
    ops: ArrayOps,
    attn_mask: Any = None,
    key_padding_mask: Any = None,
    *,
    num_heads: Any = None,
    threshold: Any = "auto",
) -> Any:
    device = ops.device_of({"attn_mask": attn_mask, "key_padding_mask": key_padding_mask})
    keep = None
    if attn_mask is not None:
        keep = _mha_keep(ops, "attn_mask", attn_mask, threshold, device)
        heads = check.mha_attn_mask_heads(ops.shape(keep), num_heads)
        if heads is not None:
            shape = ops.shape(keep)
            keep = keep.reshape((shape[0] // heads, heads, *shape[1:]))  # not -1: T or S may be 0
    if key_padding_mask is not None:
        kp = _mha_keep(ops, "key_padding_mask", key_padding_mask, threshold, device)
        check.mha_key_padding_mask(ops.shape(kp))
        kp = kp[None, :] if len(ops.shape(kp)) == 1 else kp[:, None, None, :]
        keep = kp if keep is None else combine(ops, "and", (keep, kp), ("attn_mask", "key_padding_mask"))
    return keep


def to_torch_mha(ops: ArrayOps, mask: Any, *, num_heads: Any = None, q_len: Any = None) -> tuple[Any, Any]:
    keep = arrays.bool_mask(ops, "mask", mask)
    argument, full, final = check.torch_mha_form(ops.shape(keep), num_heads, q_len)
    if argument == "key_padding_mask":
        return None, ~keep.reshape(final)
    return ~ops.broadcast_to(keep, full).reshape(final), None


def and_masks(ops: ArrayOps, *masks: Any) -> Any:
    return combine(ops, "and", masks)


def or_masks(ops: ArrayOps, *masks: Any) -> Any:
    return combine(ops, "or", masks)


def combine(ops: ArrayOps, op: str, masks: tuple[Any, ...], names: tuple[str, ...] | None = None) -> Any:
    """The and / or of boolean masks, after checking that they broadcast together.

    None keeps everything: and skips it, or returns None (keep everything) once any argument is None.
    With nothing to combine, and keeps everything (None) and or keeps nothing (a 0-d False).
    """
    names = names or tuple(f"masks[{n}]" for n in range(len(masks)))
    device = ops.device_of({n: m for n, m in zip(names, masks, strict=True) if m is not None})
    present = [(n, arrays.bool_mask(ops, n, m, device)) for n, m in zip(names, masks, strict=True) if m is not None]
    if present:
        check.masks_broadcast([n for n, _ in present], [ops.shape(m) for _, m in present])
    if op == "or" and len(present) < len(masks):
        return None
    if not present:
        return None if op == "and" else ops.asarray(np.zeros((), bool), device)
    out = present[0][1]
    for _, m in present[1:]:
        out = (out & m) if op == "and" else (out | m)
    return out
