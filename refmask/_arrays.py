"""The small table of array operations each backend provides, and array-argument parsing written once over it.

Everything refmask does that is not numerics (is this argument an array, of which kind, of which
dtype, may its values be read now, what does the error say) is written here once; a backend provides an
`ArrayOps` (NumPy's is below, jax's and torch's live in their backend modules). Python operators (`~`,
`&`, `|`, `>`, `==`, indexing with None, `.reshape(tuple)`, `.any()`) mean the same in NumPy, jax and
torch, so the shared code uses them directly and the table stays small.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple, Protocol, TypeAlias

import numpy as np

from . import _dtypes
from . import _validate as check
from ._backends import array_backend

# What the oracle annotates array parameters with: a NumPy, jax or torch array, or anything NumPy reads
# as one (lists, numbers). The public API is generated from these annotations (refmask/_api.py).
ArrayLike: TypeAlias = Any


class ArrayOps(Protocol):
    """What the shared code needs from a framework, beyond Python's operators."""

    name: str

    def asarray(self, x: Any, device: Any = None) -> Any:
        """x (not None) as the framework's array, on `device` if given, keeping its dtype where the framework can."""

    def device_of(self, named: dict[str, Any]) -> Any:
        """The one device of the framework arrays among `named` (None if none), refusing a mix."""

    def dtype_name(self, x: Any) -> str: ...

    def shape(self, x: Any) -> tuple[int, ...]: ...

    def concrete(self, *xs: Any) -> bool:
        """Whether the values of xs can be read now (not inside a tracing transform, not on a meta device)."""

    def to_numpy(self, x: Any) -> np.ndarray[Any, Any]: ...

    def produced_dtype(self, name: str) -> str:
        """The dtype the framework actually makes when asked for `name` (jax without x64: float32 for float64)."""

    def where(self, cond: Any, kept: float, masked: float, dtype: str) -> Any:
        """An array of cond's shape and dtype `dtype`: `kept` where cond, `masked` elsewhere."""

    def broadcast_to(self, x: Any, shape: tuple[int, ...]) -> Any: ...


class NumpyOps:
    name = "numpy"

    def asarray(self, x: Any, device: Any = None) -> Any:
        self.device(device)
        from ._backends import to_numpy  # another framework's array: detached, bfloat16 bit for bit

        return to_numpy(x)

    def device(self, device: Any) -> None:
        if device not in (None, "cpu"):
            raise ValueError(f'device={device!r} is not available to the numpy backend (available: None or "cpu")')

    def device_of(self, named: dict[str, Any]) -> Any:
        return None

    def dtype_name(self, x: Any) -> str:
        return str(x.dtype.name)

    def shape(self, x: Any) -> tuple[int, ...]:
        return tuple(x.shape)

    def concrete(self, *xs: Any) -> bool:
        return True

    def to_numpy(self, x: Any) -> np.ndarray[Any, Any]:
        return np.asarray(x)

    def produced_dtype(self, name: str) -> str:
        return name

    def where(self, cond: Any, kept: float, masked: float, dtype: str) -> Any:
        dt = _dtypes.numpy_dtype(dtype)
        return np.where(cond, np.asarray(kept, np.float64).astype(dt), np.asarray(masked, np.float64).astype(dt))

    def broadcast_to(self, x: Any, shape: tuple[int, ...]) -> Any:
        return np.broadcast_to(x, shape)


NUMPY = NumpyOps()


# ----------------------------------------------------------------------------------------------
# array arguments


def array(ops: ArrayOps, name: str, x: Any, device: Any = None, expected: str = "an array of numbers or bools") -> Any:
    """x as the backend's array; None (or a non-array such as a string) is refused, naming the argument."""
    if x is None:
        raise TypeError(f"{name} must be an array; got None")
    if isinstance(x, str | bytes | dict | set):
        raise TypeError(f"{name} must be an array; got {type(x).__name__} {x!r}")
    if array_backend(x) == "numpy":
        # Host input is read by NumPy first, so every backend refuses strings and objects alike.
        x = np.asarray(x)
        if x.dtype.kind not in "biufc" and x.dtype.name != "bfloat16":
            raise TypeError(f"{name} must be {expected}; got dtype {x.dtype}")
    return ops.asarray(x, device)


def floating(ops: ArrayOps, name: str, x: Any, device: Any = None) -> Any:
    x = array(ops, name, x, device, "a floating array (float16, bfloat16, float32 or float64)")
    dtype = ops.dtype_name(x)
    if not _dtypes.is_floating(dtype):
        raise TypeError(
            f"{name} must have a floating dtype (float16, bfloat16, float32 or float64); got dtype {dtype}"
        )
    return x


def integers(ops: ArrayOps, name: str, x: Any, device: Any = None) -> Any:
    x = array(ops, name, x, device, "an integer array")
    dtype = ops.dtype_name(x)
    if not _dtypes.is_integer(dtype):
        raise TypeError(f"{name} must be an integer array; got dtype {dtype}")
    return x


def bool_mask(ops: ArrayOps, name: str, mask: Any, device: Any = None) -> Any:
    """A boolean mask (True = may attend); anything else is refused with the converter that fits it."""
    mask = array(ops, name, mask, device, f"a boolean array (True = may attend). {check.CONVERTERS_HINT}")
    dtype = ops.dtype_name(mask)
    if dtype != "bool":
        values = ops.to_numpy(mask) if ops.concrete(mask) else None
        raise TypeError(
            f"{name} must be a boolean array (True = may attend); got dtype {dtype}. "
            f"{converter_hint(dtype, ops.shape(mask), values)}"
        )
    return mask


def converter_hint(dtype: str, shape: tuple[int, ...], values: np.ndarray[Any, Any] | None) -> str:
    """Which converter fits a non-boolean mask, judged from its dtype, shape and (when known) values."""
    if _dtypes.is_integer(dtype) and len(shape) == 1:
        return (
            "A 1-D integer array looks like lengths: refmask.padding_mask(lengths, max_len) builds the "
            "(B, S) validity mask from them (then refmask.attention_padding_mask for the (B, 1, 1, S) form)"
        )
    if values is not None and values.size:
        v = values.astype(np.float64)
        zero_one = bool(np.isin(v, (0.0, 1.0)).all())
        if zero_one and _dtypes.is_integer(dtype) and len(shape) == 2:
            return (
                "0/1 integers are ambiguous: a (B, S) Hugging Face attention_mask (1 = real token) converts "
                "with refmask.from_hf; any other 1/0 mask (1 = attend) with refmask.from_multiplicative"
            )
        if zero_one:
            return (
                "0/1 values are ambiguous: a multiplicative mask (1 = attend, as Flax's make_attention_mask) "
                "converts with refmask.from_multiplicative; torch nn.MultiheadAttention masks "
                "(True = masked) with refmask.from_torch_mha"
            )
        if _dtypes.is_floating(dtype) and bool((v <= 0).all()):
            return (
                "A float array of 0 and negative values is an additive mask: convert it with "
                "refmask.from_additive (threshold= for fills such as -1e9)"
            )
    return (
        "0/1 integers and floats are ambiguous: " + check.CONVERTERS_HINT
    )


def attention_inputs(ops: ArrayOps, named: dict[str, Any], others: dict[str, Any] | None = None) -> list[Any]:
    """q, k (and v): floating arrays of one dtype, on one device (which `others`, the mask and bias, share)."""
    device = ops.device_of({**named, **(others or {})})
    arrays = [floating(ops, n, x, device) for n, x in named.items()]
    dtypes = [ops.dtype_name(a) for a in arrays]
    if len(set(dtypes)) > 1:
        got = ", ".join(f"{n}: {d}" for n, d in zip(named, dtypes, strict=True))
        raise TypeError(f"{', '.join(named)} must share one floating dtype; got {got}")
    return arrays


def checked_bias(ops: ArrayOps, bias: Any, shape: tuple[int, ...], device: Any = None) -> Any:
    if bias is None:
        return None
    bias = floating(ops, "bias", bias, device)
    check.broadcasts_to("bias", ops.shape(bias), shape)
    return bias


def checked_mask(ops: ArrayOps, mask: Any, shape: tuple[int, ...], device: Any = None) -> Any:
    if mask is None:
        return None
    mask = bool_mask(ops, "mask", mask, device)
    check.broadcasts_to("mask", ops.shape(mask), shape)
    return mask


def scale_value(value: object, head_dim: int) -> float:
    """attention's scale: 1/sqrt(D) by default; a given scale must be a finite real number."""
    if value is None:
        # An empty dot product (D = 0) is 0 whatever the scale; 1.0 keeps it from being 0 * inf.
        return 1.0 / math.sqrt(head_dim) if head_dim > 0 else 1.0
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"scale must be a real number or None; got {type(value).__name__} {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"scale must be finite; got {value!r}")
    return float(value)


def fully_masked_value(policy: str, n: int) -> float:
    """The weight every entry of a row with no kept key gets under `policy` (n the row's length)."""
    return {"zero": 0.0, "uniform": 1.0 / max(n, 1), "nan": math.nan}[policy]


# ----------------------------------------------------------------------------------------------
# whole calls: every argument of masked_softmax / attention_weights / attention, parsed once


class SoftmaxCall(NamedTuple):
    scores: Any
    mask: Any
    axis: int  # negative: it names the same axis of a mask with fewer dimensions
    fully_masked: str


def softmax_call(ops: ArrayOps, scores: Any, mask: Any, axis: object, fully_masked: object) -> SoftmaxCall:
    """masked_softmax's arguments: floating scores of at least one axis, a bool mask that broadcasts to
    them (on their device), the axis and the policy."""
    device = ops.device_of({"scores": scores, "mask": mask})
    scores = floating(ops, "scores", scores, device)
    policy = check.choice("fully_masked", fully_masked, check.FULLY_MASKED_POLICIES)
    keep = checked_mask(ops, mask, ops.shape(scores), device)
    return SoftmaxCall(scores, keep, check.axis(axis, len(ops.shape(scores))), policy)


class AttentionCall(NamedTuple):
    q: Any
    k: Any
    v: Any  # None for attention_weights
    mask: Any
    bias: Any
    scale: float
    shape: tuple[int, ...]  # the scores' (..., H, T, S)
    fully_masked: str
    is_causal: bool
    return_weights: bool


def attention_call(
    ops: ArrayOps,
    named: dict[str, Any],
    mask: Any,
    bias: Any,
    scale: object,
    fully_masked: object,
    is_causal: object = False,
    return_weights: object = False,
) -> AttentionCall:
    """attention's (or, without "v" in `named`, attention_weights') arguments, checked once: q, k (v) of one
    floating dtype on one device, their shapes, a bias and a bool mask that broadcast to the scores, the
    scale, the policy and the two flags."""
    parsed = attention_inputs(ops, named, {"mask": mask, "bias": bias})
    policy = check.choice("fully_masked", fully_masked, check.FULLY_MASKED_POLICIES)
    causal, weights = check.flag("is_causal", is_causal), check.flag("return_weights", return_weights)
    shape = check.attention_shapes(*(ops.shape(a) for a in parsed))
    device = ops.device_of({"q": parsed[0]})
    q, k, v = parsed[0], parsed[1], parsed[2] if len(parsed) > 2 else None
    return AttentionCall(
        q,
        k,
        v,
        checked_mask(ops, mask, shape, device),
        checked_bias(ops, bias, shape, device),
        scale_value(scale, ops.shape(q)[-1]),
        shape,
        policy,
        causal,
        weights,
    )
