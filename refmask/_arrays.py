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
from collections.abc import Hashable
from typing import Any, Generic, NamedTuple, Protocol, TypeAlias, TypeVar

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

    def signature(self, x: Any) -> Hashable | None:
        """What the checks of x read when x is this framework's own array (its type, shape, dtype and
        device), or None: x is something else (a list, another framework's array, a traced value whose
        checks must run each time) and is checked in full."""


class NumpyOps:
    name = "numpy"

    def asarray(self, x: Any, device: Any = None) -> Any:
        if device is None and type(x) is np.ndarray:
            return x
        self.device(device)
        from ._backends import to_numpy  # another framework's array: detached, bfloat16 bit for bit

        return to_numpy(x)

    def device(self, device: Any) -> None:
        if device not in (None, "cpu"):
            raise ValueError(f'device={device!r} is not available to the numpy backend (available: None or "cpu")')

    def device_of(self, named: dict[str, Any]) -> Any:
        return None

    def dtype_name(self, x: Any) -> str:
        return _dtypes.numpy_name(x.dtype)

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

    def signature(self, x: Any) -> Hashable | None:
        return (x.shape, x.dtype) if type(x) is np.ndarray else None


NUMPY = NumpyOps()


# ----------------------------------------------------------------------------------------------
# array arguments


def array(ops: ArrayOps, name: str, x: Any, device: Any = None, expected: str = "an array of numbers or bools") -> Any:
    """x as the backend's array; None (or a non-array such as a string) is refused, naming the argument."""
    if x is None:
        raise TypeError(f"{name} must be an array; got None")
    if array_backend(x) == "numpy":  # a framework's array is none of the below
        if type(x) is not np.ndarray:
            if isinstance(x, str | bytes | dict | set):
                raise TypeError(f"{name} must be an array; got {type(x).__name__} {x!r}")
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
    sinks: Any = None  # as given (checked_sinks); sink_column puts them beside the scores
    accuracy: str = "fast"


# softmax_call's decisions per signature of its arguments (_softmax_key): a model calls masked_softmax with
# the same shapes, dtypes and options at every step, and then the checks have nothing new to find.
_SOFTMAX_DECISIONS: dict[Hashable, tuple[int, str, str]] = {}
_SOFTMAX_DECISIONS_MAX = 512


def _softmax_key(ops: ArrayOps, scores: Any, mask: Any, axis: object, fully_masked: object, accuracy: object
                 ) -> Hashable | None:
    """What softmax_call's checks read, when it is all there is to read (scores and mask the backend's own
    arrays, or no mask; the options of their plain types: an axis of True is refused, not taken for 1); else None."""
    if type(axis) is not int or type(fully_masked) is not str or type(accuracy) is not str:
        return None
    s = ops.signature(scores)
    m = () if mask is None else ops.signature(mask)
    if s is None or m is None:
        return None
    return ops.name, s, m, axis, fully_masked, accuracy


def softmax_call(
    ops: ArrayOps,
    scores: Any,
    mask: Any,
    axis: object,
    fully_masked: object,
    sinks: Any = None,
    accuracy: object = "fast",
) -> SoftmaxCall:
    """masked_softmax's arguments: floating scores of at least one axis, a bool mask that broadcasts to
    them (on their device), the axis, the policy, the sinks (check.sinks_shape) and the accuracy.

    A call whose signature (_softmax_key) has passed the checks before returns what they decided then.
    """
    key = None if sinks is not None else _softmax_key(ops, scores, mask, axis, fully_masked, accuracy)
    if key is not None:
        decided = _SOFTMAX_DECISIONS.get(key)
        if decided is not None:
            return SoftmaxCall(scores, mask, decided[0], decided[1], None, decided[2])
    call = _checked_softmax_call(ops, scores, mask, axis, fully_masked, sinks, accuracy)
    if key is not None and call.scores is scores and call.mask is mask:
        if len(_SOFTMAX_DECISIONS) >= _SOFTMAX_DECISIONS_MAX:
            _SOFTMAX_DECISIONS.clear()
        _SOFTMAX_DECISIONS[key] = (call.axis, call.fully_masked, call.accuracy)
    return call


def _checked_softmax_call(
    ops: ArrayOps, scores: Any, mask: Any, axis: object, fully_masked: object, sinks: Any, accuracy: object
) -> SoftmaxCall:
    device = ops.device_of({"scores": scores, "mask": mask, "sinks": sinks})
    scores = floating(ops, "scores", scores, device)
    policy = check.choice("fully_masked", fully_masked, check.FULLY_MASKED_POLICIES)
    keep = checked_mask(ops, mask, ops.shape(scores), device)
    a = check.axis(axis, len(ops.shape(scores)))
    sinks = checked_sinks(ops, sinks, ops.shape(scores), device, axis=a)
    return SoftmaxCall(scores, keep, a, policy, sinks, check.choice("accuracy", accuracy, check.SOFTMAX_ACCURACIES))


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
    softcap: float | None = None
    sinks: Any = None  # as given (checked_sinks); sink_column puts them beside the scores
    return_lse: bool = False


def attention_call(
    ops: ArrayOps,
    named: dict[str, Any],
    mask: Any,
    bias: Any,
    scale: object,
    fully_masked: object,
    is_causal: object = False,
    return_weights: object = False,
    *,
    softcap: object = None,
    sinks: Any = None,
    return_lse: object = False,
) -> AttentionCall:
    """attention's (or, without "v" in `named`, attention_weights') arguments, checked once: q, k (v) of one
    floating dtype on one device, their shapes, a bias and a bool mask that broadcast to the scores, the
    scale, the softcap, the sinks, the policy and the flags."""
    parsed = attention_inputs(ops, named, {"mask": mask, "bias": bias, "sinks": sinks})
    policy = check.choice("fully_masked", fully_masked, check.FULLY_MASKED_POLICIES)
    causal, weights = check.flag("is_causal", is_causal), check.flag("return_weights", return_weights)
    lse = check.flag("return_lse", return_lse)
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
        softcap_value(softcap),
        checked_sinks(ops, sinks, shape, device),
        lse,
    )


# ----------------------------------------------------------------------------------------------
# attention_vjp: attention's arguments and the output's cotangent d_out

_A = TypeVar("_A")


class AttentionGrads(NamedTuple, Generic[_A]):
    """attention_vjp's result: the gradient for each input, in that input's dtype and shape.

    dbias is None without a bias and dsinks None without sinks.
    """

    dq: _A
    dk: _A
    dv: _A
    dbias: _A | None
    dsinks: _A | None


class AttentionVjpCall(NamedTuple):
    attention: AttentionCall
    d_out: Any


def attention_vjp_call(
    ops: ArrayOps,
    named: dict[str, Any],
    mask: Any,
    d_out: Any,
    bias: Any,
    scale: object,
    fully_masked: object,
    softcap: object = None,
    sinks: Any = None,
) -> AttentionVjpCall:
    """attention_vjp's arguments: attention's (attention_call), and d_out, the cotangent of the output: a
    floating array of exactly the output's shape (..., H, T, Dv) and dtype (q's), on q's device."""
    call = attention_call(ops, named, mask, bias, scale, fully_masked, softcap=softcap, sinks=sinks)
    device = ops.device_of({"q": call.q, "d_out": d_out})
    d_out = floating(ops, "d_out", d_out, device)
    out_dtype, got_dtype = ops.dtype_name(call.q), ops.dtype_name(d_out)
    if got_dtype != out_dtype:
        raise TypeError(f"d_out must have the output's dtype {out_dtype} (q's); got dtype {got_dtype}")
    out_shape = (*call.shape[:-1], ops.shape(call.v)[-1])
    if ops.shape(d_out) != out_shape:
        raise ValueError(
            f"d_out must have the output's shape {out_shape} (..., H, T, Dv); got shape {ops.shape(d_out)}"
        )
    return AttentionVjpCall(call, d_out)


def softcap_value(value: object) -> float | None:
    """attention's softcap: None (no cap) or a finite real number > 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"softcap must be a real number > 0 or None; got {type(value).__name__} {value!r}")
    if not (math.isfinite(float(value)) and float(value) > 0):
        raise ValueError(f"softcap must be a finite number > 0 (or None: no cap); got {value!r}")
    return float(value)


def checked_sinks(ops: ArrayOps, sinks: Any, shape: tuple[int, ...], device: Any = None, *, axis: int = -1) -> Any:
    """Sink logits beside scores of `shape` normalised along `axis`: floating, (H,) (one per query head) or
    broadcastable to the rows (..., H, T) (check.sinks_shape); returned as given."""
    if sinks is None:
        return None
    sinks = floating(ops, "sinks", sinks, device)
    check.sinks_shape(ops.shape(sinks), shape, axis)
    return sinks


def sink_column(ops: ArrayOps, sinks: Any, shape: tuple[int, ...], axis: int = -1) -> Any:
    """Checked sinks reshaped to broadcast against scores of `shape` with the softmax axis of size 1
    ((H,) -> (H, 1, 1) beside (..., H, T, S) scores); None stays None."""
    return None if sinks is None else sinks.reshape(check.sinks_shape(ops.shape(sinks), shape, axis))


# ----------------------------------------------------------------------------------------------
# positions of the position masks: per-example offsets or explicit position arrays


class PositionArgs(NamedTuple):
    q_len: int
    kv_len: int
    shift: int  # added to arange query positions (align's shift); 0 with q_positions
    offset: Any  # (B,) per-example offsets, or None
    q_positions: Any  # (T,) or (B, T), or None: arange(T) + shift (+ offset[b])
    kv_positions: Any  # (S,) or (B, S), or None: arange(S)


def uses_positions(offset: object, q_positions: Any, kv_positions: Any) -> bool:
    """Whether a position mask's arguments hold arrays (per-example offsets, positions), not the all-int form
    (an int offset, a NumPy integer included, of any size)."""
    if q_positions is not None or kv_positions is not None:
        return True
    return (hasattr(offset, "shape") or isinstance(offset, list | tuple)) and not isinstance(offset, numbers.Integral)


def position_args(
    ops: ArrayOps,
    q_len: object,
    kv_len: object,
    align: object,
    offset: object,
    q_positions: Any,
    kv_positions: Any,
    device: Any = None,
) -> PositionArgs | None:
    """The arguments of causal/sliding_window/chunked/prefix_lm masks when they hold arrays, checked once;
    None for the all-int form (every backend's exact small-int path).

    Values are checked (range) where they can be read, on the host before a framework could narrow them.
    """
    if not uses_positions(offset, q_positions, kv_positions):
        return None
    found = ops.device_of({"offset": offset, "q_positions": q_positions, "kv_positions": kv_positions})
    device = found if device is None else device
    if q_positions is None and kv_positions is None:
        host = _position_array("offset", offset)
        check.per_example_offset(_shape(host), q_len)
        t, s = check.q_kv_lengths(q_len, kv_len)
        shift = check.align_shift(align, t, s)  # type: ignore[arg-type]
        if (extremes := _extremes(host)) is not None:
            check.offsets_in_range(*extremes, shift, t)
        return PositionArgs(t, s, shift, ops.asarray(host, device), None, None)
    q = None if q_positions is None else _position_array("q_positions", q_positions)
    kv = None if kv_positions is None else _position_array("kv_positions", kv_positions)
    t, s = check.position_lengths(
        q_len, kv_len, None if q is None else _shape(q), None if kv is None else _shape(kv), align, offset
    )
    for name, p in (("q_positions", q), ("kv_positions", kv)):
        if p is not None and (extremes := _extremes(p)) is not None:
            check.positions_in_range(name, *extremes)
    return PositionArgs(
        t,
        s,
        0,
        None,
        None if q is None else ops.asarray(q, device),
        None if kv is None else ops.asarray(kv, device),
    )


def _position_array(name: str, x: Any) -> Any:
    """An integer array of the framework it comes in (NumPy for host data: lists, NumPy), so that its
    values are checked before the backend could narrow them (jax without x64)."""
    return integers(_ops_of(x), name, x)


def _ops_of(x: Any) -> ArrayOps:
    """The array operations of x's own framework (NumPy for host data)."""
    from ._backends import get_backend

    ops: ArrayOps = get_backend(array_backend(x)).OPS
    return ops


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(x.shape)


def _extremes(x: Any) -> tuple[int, int] | None:
    """(min, max) of a non-empty integer array whose values can be read now, else None."""
    values = _readable(_ops_of(x), x) if math.prod(_shape(x)) else None
    return None if values is None else (int(values.min()), int(values.max()))


# ----------------------------------------------------------------------------------------------
# varlen batches: integer and bool arrays whose values are checked where they can be read


def _readable(ops: ArrayOps, x: Any) -> np.ndarray[Any, Any] | None:
    """x's values on the host, or None while they cannot be read (tracing, the meta device)."""
    return ops.to_numpy(x) if ops.concrete(x) else None


def sequence_lengths(ops: ArrayOps, name: str, x: Any) -> Any:
    """(B,) integer lengths, each >= 0, their total within int32 (checked where readable)."""
    x = integers(ops, name, x)
    check.ndim(name, ops.shape(x), 1, "(B,)")
    v = _readable(ops, x) if ops.shape(x)[0] else None
    if v is not None:
        lo, hi = int(v.min()), int(v.max())
        # Below int32's maximum each, B lengths sum exactly in int64.
        total = int(v.sum(dtype=np.int64)) if lo >= 0 and hi <= check.INT32_MAX else sum(int(n) for n in v)
        check.sequence_lengths(name, lo, total)
    return x


def cu_seqlens(ops: ArrayOps, name: str, x: Any, device: Any = None) -> tuple[Any, int | None]:
    """A (B + 1,) integer cu_seqlens array, and its last value (the tokens it packs; None if unreadable).

    Where readable its values are checked: a leading 0, never decreasing.
    """
    x = integers(ops, name, x, device)
    check.cu_seqlens_shape(name, ops.shape(x))
    v = _readable(ops, x)
    if v is None:
        return x, None
    drops = np.flatnonzero(v[1:] < v[:-1])  # compared in the array's dtype: no wrap-around of a difference
    drop = None if drops.size == 0 else (int(drops[0]) + 1, int(v[drops[0]]), int(v[drops[0] + 1]))
    check.cu_seqlens_values(name, int(v[0]), drop)
    return x, int(v[-1])


def packed_total(name: str, last: int | None, total_name: str, total: object) -> int:
    """The packed length a result spans: `total` if given, else cu_seqlens[-1], which must then be readable."""
    n = check.packed_total(name, total_name, total, last)
    if n is None:
        raise check.traced(name, f"pass {total_name}= (a Python int: the packed length)")
    return n


class VarlenCall(NamedTuple):
    cu_q: Any
    cu_k: Any  # cu_q itself for self-attention
    total_q: int
    total_k: int
    lo: int  # varlen_mask keeps lo <= (q - p) - (len_k - len_q) <= hi
    hi: int


def varlen_call(
    ops: ArrayOps,
    cu_seqlens_q: Any,
    cu_seqlens_k: Any,
    causal: object,
    window: object,
    total_q: object,
    total_k: object,
    device: Any = None,
) -> VarlenCall:
    """varlen_mask's arguments, checked once: the cu_seqlens (on one device), the packed totals and the
    diagonal bounds of causal and window."""
    if device is None:
        device = ops.device_of({"cu_seqlens_q": cu_seqlens_q, "cu_seqlens_k": cu_seqlens_k})
    cu_q, last_q = cu_seqlens(ops, "cu_seqlens_q", cu_seqlens_q, device)
    if cu_seqlens_k is None:
        cu_k, name_k, last_k = cu_q, "cu_seqlens_q", last_q
    else:
        (cu_k, last_k), name_k = cu_seqlens(ops, "cu_seqlens_k", cu_seqlens_k, device), "cu_seqlens_k"
        check.same_sequences("cu_seqlens_q", ops.shape(cu_q), "cu_seqlens_k", ops.shape(cu_k))
    t = packed_total("cu_seqlens_q", last_q, "total_q", total_q)
    s = packed_total(name_k, last_k, "total_k", t if cu_seqlens_k is None and total_k is None else total_k)
    lo, hi = check.varlen_bounds(causal, window, t, s)
    return VarlenCall(cu_q, cu_k, t, s, lo, hi)


def packed_segment_ids(ops: ArrayOps, name: str, x: Any, num_segments: object) -> tuple[Any, int]:
    """1-D packed segment ids (real tokens' ids non-decreasing, -1 padding after them) and the number of
    sequences B (num_segments, or the largest id + 1, which must then be readable)."""
    x = integers(ops, name, x)
    check.ndim(name, ops.shape(x), 1, "(total,)")
    v = _readable(ops, x)
    needed = None
    if v is not None:
        padding = v < 0
        first_pad = int(np.argmax(padding)) if padding.any() else v.size
        real = v[:first_pad]
        after = np.flatnonzero(~padding[first_pad:])
        drops = np.flatnonzero(real[1:] < real[:-1])
        check.segment_id_values(
            name,
            int(v.min()) if v.size else 0,
            int(after[0]) + first_pad if after.size else None,
            None if drops.size == 0 else (int(drops[0]) + 1, int(real[drops[0]]), int(real[drops[0] + 1])),
        )
        needed = int(real.max()) + 1 if real.size else 0
    n = check.num_segments(num_segments, needed)
    if n is None:
        raise check.traced(name, "pass num_segments= (a Python int: the number of sequences B)")
    return x, n


def unpad_args(ops: ArrayOps, x: Any, valid: Any) -> tuple[Any, Any]:
    """unpad's x (B, L, ...) and bool valid (B, L) on one device; valid's values must be readable (they set
    the packed length)."""
    device = ops.device_of({"x": x, "valid": valid})
    x = array(ops, "x", x, device)
    valid = bool_mask(ops, "valid", valid, device)
    check.unpad_shapes(ops.shape(x), ops.shape(valid))
    if not ops.concrete(valid):
        raise check.traced("valid", "call unpad outside the traced function and pass its results in")
    return x, valid


def pad_args(ops: ArrayOps, packed: Any, indices: Any, batch: object, max_len: object) -> tuple[Any, Any, int, int]:
    """pad's packed (total, ...) and integer indices (total,) on one device, and the layout's batch and
    max_len (Python ints: they set the result's shape); indices in range and distinct where readable."""
    device = ops.device_of({"packed": packed, "indices": indices})
    packed = array(ops, "packed", packed, device)
    indices = integers(ops, "indices", indices, device)
    b = check.integer("batch", batch, minimum=0)
    n = check.integer("max_len", max_len, minimum=0)
    check.pad_shapes(ops.shape(packed), ops.shape(indices))
    v = _readable(ops, indices) if ops.shape(indices)[0] else None
    if v is not None:
        check.pad_indices(int(v.min()), int(v.max()), np.unique(v).size == v.size, b, n)
    return packed, indices, b, n
