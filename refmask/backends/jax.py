"""The JAX backend: refmask's public API in idiomatic jax.numpy, jit-compiled, checked against the oracle.

An independent implementation (it never calls refmask.oracle): the oracle's docstrings are the
definitions, refmask/_validate.py makes its argument errors identical to every other backend's.

- Inputs may be jax arrays (traced or not), NumPy arrays, lists or numbers; results are jax arrays.
- Static (Python) values: mask sizes, align, side, window, chunk_size, offset, pad_id,
  axis, is_causal, return_weights. The fully_masked policy's fill and the scale are passed as data,
  so the three policies share one compiled program. Shapes and dtypes are always checked.
- Value-dependent checks (lengths in range, from_hf values 0/1, NaN in a bias, non-mask values in a
  torch float mask) run only on concrete values; under jax.jit/vmap/grad tracing they are skipped,
  because the values do not exist yet.
- masked_softmax, attention_weights and attention call module-level jax.jit entry points, so an eager
  call in a loop compiles once per shape/dtype/static argument, never per call; under a user's jax.jit
  they are inlined.
- float16/bfloat16: scores, softmax and the weights-value product run in float32, the result is rounded
  once to the input dtype. float32 matmuls run at Precision.HIGHEST (no TF32/bf16 passes on GPU/TPU):
  this is the reference, accuracy first.
- Gradients: the softmax core has a custom JVP, w * (dx - sum(w * dx)) with w zeroed where masked and on
  fully-masked rows, so masked positions get exactly 0 and fully-masked rows a finite 0 gradient under
  every policy (no NaN from differentiating through a where over -inf).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .. import _arrays as arrays
from .. import _backends, _dtypes
from .. import _validate as check
from ._jax_ops import JAX as OPS  # the array operations refmask's shared code runs on, for this backend

# ----------------------------------------------------------------------------------------------
# conversions and argument checks


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy array (bfloat16 as ml_dtypes.bfloat16) from a jax array."""
    return np.asarray(x)


def from_numpy(x: Any) -> jax.Array:
    """The NumPy array x as a jax array of the same dtype (float64 needs jax_enable_x64)."""
    return jnp.asarray(x)


def _is_concrete(x: Any) -> bool:
    """True when x's values are known now (not a tracer inside jit/vmap/grad)."""
    return OPS.concrete(x)


def _dtype_name(dtype: Any) -> str:
    return np.dtype(dtype).name


def _bool_mask(name: str, mask: Any) -> jax.Array:
    return arrays.bool_mask(OPS, name, mask)


def _integers(name: str, x: Any) -> jax.Array:
    """An integer jax array; host values jax's dtype cannot hold (int64 without x64) are refused, not wrapped."""
    if isinstance(x, jax.Array):
        return arrays.integers(OPS, name, x)
    host = arrays.integers(arrays.NUMPY, name, x)
    produced = OPS.produced_dtype(host.dtype.name)
    if produced != host.dtype.name and host.size:
        check.integers_fit(name, int(host.min()), int(host.max()), produced)
    return jnp.asarray(host)


def _lengths(name: str, x: Any, max_len: int, meaning: str | None = None) -> jax.Array:
    """Integer lengths in [0, max_len] (of shape `meaning`, 1-D, if given), as the index dtype in which
    they compare exactly with positions. Host values are checked before jax could narrow them."""
    ops = OPS if isinstance(x, jax.Array) else arrays.NUMPY
    lengths = arrays.integers(ops, name, x)
    if meaning is not None:
        check.ndim(name, lengths.shape, 1, meaning)
    if lengths.size and _is_concrete(lengths):
        check.lengths_in_range(name, int(lengths.min()), int(lengths.max()), max_len)
    return jnp.asarray(lengths.astype(_index_dtype(max_len)))


def _index_dtype(max_len: int) -> Any:
    return np.dtype(OPS.produced_dtype(check.index_dtype(max_len)))


def _compute_dtype(dtype: Any) -> Any:
    """float16/bfloat16 accumulate in float32; float32 and float64 compute in themselves."""
    return _dtypes.numpy_dtype(_dtypes.compute_dtype(_dtype_name(dtype)))


def _compensate(dtype: Any) -> bool:
    """Whether the softmax compensates the rounding of x - max (float32 inputs; see _exp_shifted)."""
    return _dtype_name(dtype) == "float32"


def _place(x: Any, device: Any) -> Any:
    """Put x on `device` (a jax Device or Sharding, or a platform name like "cpu"/"gpu")."""
    device = OPS.device(device)
    return x if device is None else jax.device_put(x, device)


# ----------------------------------------------------------------------------------------------
# masks from positions
#
# Query positions i (a (T, 1) iota) and key positions j (a (1, S) iota) are compared through
# their difference or quotient with shifts that refmask/_validate.py reduced exactly to small ints
# (check.diagonal, check.chunks), so huge offsets never overflow int32 and the result is bit-identical.


def _iotas(t: int, s: int) -> tuple[jax.Array, jax.Array]:
    i = lax.broadcasted_iota(jnp.int32, (t, 1), 0)
    j = lax.broadcasted_iota(jnp.int32, (1, s), 1)
    return i, j


def causal_mask(
    q_len: int, kv_len: int | None = None, *, align: str = "top_left", offset: int = 0, device: Any = None
) -> jax.Array:
    t, s = check.q_kv_lengths(q_len, kv_len)
    d = check.diagonal(check.aligned_offset(align, t, s, offset), t, s)
    i, j = _iotas(t, s)
    return _place(j - i <= d, device)


def sliding_window_mask(
    q_len: int,
    kv_len: int | None = None,
    *,
    window: int | tuple[int, int],
    align: str = "top_left",
    offset: int = 0,
    device: Any = None,
) -> jax.Array:
    t, s = check.q_kv_lengths(q_len, kv_len)
    left, right = check.window(window)
    d = check.aligned_offset(align, t, s, offset)
    i, j = _iotas(t, s)
    diff = j - i
    lo, hi = check.diagonal(d - left, t, s), check.diagonal(d + right, t, s)
    return _place((lo <= diff) & (diff <= hi), device)


def chunked_mask(
    q_len: int,
    kv_len: int | None = None,
    *,
    chunk_size: int,
    align: str = "top_left",
    offset: int = 0,
    device: Any = None,
) -> jax.Array:
    t, s = check.q_kv_lengths(q_len, kv_len)
    c = check.integer("chunk_size", chunk_size, minimum=1)
    c, d = check.chunks(check.aligned_offset(align, t, s, offset), c, t, s)
    i, j = _iotas(t, s)
    return _place((i + d) // c == j // c, device)


# ----------------------------------------------------------------------------------------------
# masks from data


def padding_mask(lengths: Any, max_len: int, *, side: str = "right", device: Any = None) -> jax.Array:
    max_len = check.integer("max_len", max_len, minimum=0)
    check.choice("side", side, check.SIDES)
    lengths = _lengths("lengths", lengths, max_len)
    position = jnp.arange(max_len, dtype=lengths.dtype)
    keep = position < lengths[..., None] if side == "right" else position >= max_len - lengths[..., None]
    return _place(keep, device)


def padding_mask_from_ids(ids: Any, pad_id: int, *, device: Any = None) -> jax.Array:
    ids = _integers("ids", ids)
    pad = check.pad_id(pad_id, _dtype_name(ids.dtype))
    return _place(jnp.ones(ids.shape, bool) if pad is None else ids != pad, device)


def attention_padding_mask(kv_valid: Any, q_valid: Any = None, *, device: Any = None) -> jax.Array:
    kv_valid = _bool_mask("kv_valid", kv_valid)
    check.ndim("kv_valid", kv_valid.shape, 2, "(B, S)")
    keep = kv_valid[:, None, None, :]
    if q_valid is not None:
        q_valid = _bool_mask("q_valid", q_valid)
        check.ndim("q_valid", q_valid.shape, 2, "(B, T)")
        check.same_batch("q_valid", q_valid.shape, "kv_valid", kv_valid.shape)
        keep = q_valid[:, None, :, None] & keep
    return _place(keep, device)


def segment_mask(
    q_segment_ids: Any, kv_segment_ids: Any = None, *, pad_id: int | None = None, device: Any = None
) -> jax.Array:
    q_seg = _integers("q_segment_ids", q_segment_ids)
    kv_seg = q_seg if kv_segment_ids is None else _integers("kv_segment_ids", kv_segment_ids)
    check.ndim("q_segment_ids", q_seg.shape, 2, "(B, T)")
    check.ndim("kv_segment_ids", kv_seg.shape, 2, "(B, S)")
    check.same_batch("q_segment_ids", q_seg.shape, "kv_segment_ids", kv_seg.shape)
    common = check.common_integer_dtype(
        ("q_segment_ids", "kv_segment_ids"), (_dtype_name(q_seg.dtype), _dtype_name(kv_seg.dtype))
    )
    common = OPS.produced_dtype(common)
    keep = q_seg[:, None, :, None].astype(common) == kv_seg[:, None, None, :].astype(common)
    if pad_id is not None:
        # A pad_id outside an array's dtype matches none of its ids (no wrap, no overflow).
        q_pad, kv_pad = check.pad_id(pad_id, _dtype_name(q_seg.dtype)), check.pad_id(pad_id, _dtype_name(kv_seg.dtype))
        if q_pad is not None:
            keep = keep & (q_seg != q_pad)[:, None, :, None]
        if kv_pad is not None:
            keep = keep & (kv_seg != kv_pad)[:, None, None, :]
    return _place(keep, device)


def prefix_lm_mask(
    prefix_lengths: Any,
    q_len: int,
    kv_len: int | None = None,
    *,
    align: str = "top_left",
    device: Any = None,
) -> jax.Array:
    t, s = check.q_kv_lengths(q_len, kv_len)
    prefix = _lengths("prefix_lengths", prefix_lengths, s, "(B,)")
    d = check.diagonal(check.aligned_offset(align, t, s, 0), t, s)
    i, j = _iotas(t, s)
    in_prefix = j[None, None] < prefix[:, None, None, None]
    causal = (j - i <= d)[None, None]
    return _place(in_prefix | causal, device)


# ----------------------------------------------------------------------------------------------
# converters between conventions


# ----------------------------------------------------------------------------------------------
# masked softmax


def _any_kept(keep: jax.Array, axis: int) -> jax.Array:
    """Whether each row (along negative `axis`) keeps anything, reduced at the mask's own (small) shape.

    A mask axis of size 1 (or missing) broadcasts along the row, so the row keeps something iff that
    entry does (rows of length 0 have no entries for the answer to matter to).
    """
    if keep.ndim < -axis or keep.shape[axis] == 1:
        return keep
    return jnp.any(keep, axis=axis, keepdims=True)


def _exp_shifted(x: jax.Array, m: jax.Array, compensate: bool) -> jax.Array:
    """exp(x - m); with compensate=True, with the rounding error of x - m compensated.

    fl(x - m) is off by up to |x - m| * eps / 2, which exp turns into a relative error of the same
    size: |x - m| / 2 ULP of the weight (16 ULP for float32 scores 32 apart; jax.nn.softmax shows
    exactly that). TwoSum recovers the exact error `err` of the subtraction, and
    exp(d + err) = exp(d) + exp(d) * err to first order, so float32 weights stay within a few ULP of
    the correctly rounded ones whatever the spread of the scores.

    The compensated weight is selected only where x - m > -104: there x and m are finite and within
    104 of each other, so every TwoSum term is finite. Below it exp(x - m) is 0 or the smallest
    subnormals, where a relative correction is meaningless, and the plain exp is taken. The select is
    on d itself, not on a floor raised to m - 128: for |m| >= 2^32, m - 128 rounds to m and would give
    masked entries (-inf) and far-below scores weight. A select is elementwise, so XLA still fuses the
    whole softmax. Masked entries hold -inf: d = -inf, exp gives exactly 0. Rows whose max is not finite
    come out NaN (kept NaN/+inf, all kept -inf) or are replaced afterwards (fully masked), as without it.

    Used for float32 inputs only: float64 keeps the plain form (the oracle's own arithmetic), and
    float16/bfloat16 inputs, computed in float32, have ULPs far above this error.
    """
    d = x - m
    e = jnp.exp(d)
    if not compensate:
        return e
    neg_m = -m
    x_back = d - neg_m
    err = (x - x_back) + (neg_m - (d - x_back))
    return jnp.where(d > -104.0, e + e * err, e)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def _softmax_core(
    x: jax.Array, keep: jax.Array | None, fill: jax.Array, axis: int, compensate: bool
) -> jax.Array:
    """The hot path, in x's (compute) dtype: where, max, exp, sum, divide, and a row-level where.

    Masked scores become -inf before anything reads them, so they can hold NaN or +inf. A row with
    nothing kept has max -inf and computes NaN; the last where replaces it by `fill`, the policy's
    value, which is data (a 0-d array), so the three policies share one compiled program.
    A kept NaN/+inf, or kept scores all -inf, give NaN by IEEE arithmetic, as the oracle says.
    """
    n = x.shape[axis]
    kept = x if keep is None else jnp.where(keep, x, -jnp.inf)
    m = lax.stop_gradient(jnp.max(kept, axis=axis, keepdims=True, initial=-jnp.inf if n == 0 else None))
    e = _exp_shifted(kept, m, compensate)
    w = e / jnp.sum(e, axis=axis, keepdims=True)
    if keep is None:
        return w
    return jnp.where(_any_kept(keep, axis), w, fill.astype(w.dtype))


@_softmax_core.defjvp
def _softmax_core_jvp(
    axis: int,
    compensate: bool,
    primals: tuple[jax.Array, jax.Array | None, jax.Array],
    tangents: tuple[jax.Array, Any, Any],
) -> tuple[jax.Array, jax.Array]:
    x, keep, fill = primals
    x_dot = tangents[0]
    w = _softmax_core(x, keep, fill, axis, compensate)
    # Weights that depend on x: zero at masked entries and on fully-masked rows (whose value is a
    # constant of the policy: the fill is not differentiated), so those get exactly 0 gradient,
    # finite under every policy.
    wk = w if keep is None else jnp.where(keep, w, jnp.zeros((), w.dtype))
    return w, wk * (x_dot - jnp.sum(wk * x_dot, axis=axis, keepdims=True))


def _masked_softmax_impl(scores: jax.Array, mask: jax.Array | None, fill: jax.Array, *, axis: int) -> jax.Array:
    x = scores.astype(_compute_dtype(scores.dtype))
    return _softmax_core(x, mask, fill, axis, _compensate(scores.dtype)).astype(scores.dtype)


_masked_softmax_jit = jax.jit(_masked_softmax_impl, static_argnames=("axis",))


def _fill(policy: str, n: int, dtype: Any) -> jax.Array:
    """The weight of a fully-masked row's entries under `policy` (rows of length n), as data for jit."""
    return jnp.asarray(arrays.fully_masked_value(policy, n), dtype=_compute_dtype(dtype))


def masked_softmax(scores: Any, mask: Any = None, *, axis: int = -1, fully_masked: str = "zero") -> jax.Array:
    c = arrays.softmax_call(OPS, scores, mask, axis, fully_masked)
    fill = _fill(c.fully_masked, c.scores.shape[c.axis], c.scores.dtype)
    return _masked_softmax_jit(c.scores, c.mask, fill, axis=c.axis)


# ----------------------------------------------------------------------------------------------
# attention


def _grouped(a: jax.Array, kv_heads: int) -> jax.Array:
    """(..., H, T, X) -> (..., H_kv, H // H_kv, T, X): query head h = kv head h // G, member h % G."""
    return a.reshape(*a.shape[:-3], kv_heads, a.shape[-3] // kv_heads, *a.shape[-2:])


def _weights(
    q: jax.Array,
    k: jax.Array,
    bias: jax.Array | None,
    mask: jax.Array | None,
    scale: jax.Array,
    fill: jax.Array,
    is_causal: bool,
) -> tuple[jax.Array, int | None]:
    """Compute-dtype weights (..., H, T, S), and the (H_kv, G) grouping used (None without heads)."""
    cdt = _compute_dtype(q.dtype)
    hp = lax.Precision.HIGHEST
    groups = None
    if q.ndim >= 3 and k.shape[-3] != q.shape[-3]:
        groups = k.shape[-3]
        s = jnp.einsum("...hgtd,...hsd->...hgts", _grouped(q, groups), k, precision=hp, preferred_element_type=cdt)
        s = s.reshape(*q.shape[:-1], k.shape[-2])
    else:
        s = jnp.einsum("...td,...sd->...ts", q, k, precision=hp, preferred_element_type=cdt)
    s = s * scale.astype(cdt)
    if bias is not None:
        s = s + bias.astype(cdt)
    if is_causal:
        t, n = s.shape[-2], s.shape[-1]
        causal = causal_mask(t, n)
        mask = causal if mask is None else mask & causal
    return _softmax_core(s, mask, fill, -1, _compensate(q.dtype)), groups


def _attention_impl(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None,
    bias: jax.Array | None,
    scale: jax.Array,
    fill: jax.Array,
    *,
    is_causal: bool,
    return_weights: bool,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    w, groups = _weights(q, k, bias, mask, scale, fill, is_causal)
    vc = v.astype(w.dtype)
    hp = lax.Precision.HIGHEST
    if groups is not None:
        out = jnp.einsum("...hgts,...hsd->...hgtd", _grouped(w, groups), vc, precision=hp)
        out = out.reshape(*w.shape[:-1], v.shape[-1])
    else:
        out = jnp.einsum("...ts,...sd->...td", w, vc, precision=hp)
    out = out.astype(q.dtype)
    return (out, w.astype(q.dtype)) if return_weights else out


def _attention_weights_impl(
    q: jax.Array, k: jax.Array, mask: jax.Array | None, bias: jax.Array | None, scale: jax.Array, fill: jax.Array
) -> jax.Array:
    w, _ = _weights(q, k, bias, mask, scale, fill, False)
    return w.astype(q.dtype)


# The policies' fills and the scale are data, not static arguments: one program serves all three.
_attention_jit = jax.jit(_attention_impl, static_argnames=("is_causal", "return_weights"))
_attention_weights_jit = jax.jit(_attention_weights_impl)


def _scale(scale: float, dtype: Any) -> jax.Array:
    """A scalar of the compute dtype, passed to jit as data, so a new scale does not recompile."""
    return jnp.asarray(scale, dtype=_compute_dtype(dtype))


def attention_weights(
    q: Any, k: Any, mask: Any = None, *, bias: Any = None, scale: float | None = None, fully_masked: str = "zero"
) -> jax.Array:
    c = arrays.attention_call(OPS, {"q": q, "k": k}, mask, bias, scale, fully_masked)
    fill = _fill(c.fully_masked, c.shape[-1], c.q.dtype)
    return _attention_weights_jit(c.q, c.k, c.mask, c.bias, _scale(c.scale, c.q.dtype), fill)


def attention(
    q: Any,
    k: Any,
    v: Any,
    mask: Any = None,
    *,
    bias: Any = None,
    scale: float | None = None,
    is_causal: bool = False,
    fully_masked: str = "zero",
    return_weights: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    c = arrays.attention_call(OPS, {"q": q, "k": k, "v": v}, mask, bias, scale, fully_masked, is_causal, return_weights)
    return _attention_jit(
        c.q,
        c.k,
        c.v,
        c.mask,
        c.bias,
        _scale(c.scale, c.q.dtype),
        _fill(c.fully_masked, c.shape[-1], c.q.dtype),
        is_causal=c.is_causal,
        return_weights=c.return_weights,
    )


_backends.loaded(__name__)  # last: the registry hands this module out only once it is complete
