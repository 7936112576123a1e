"""The JAX backend: refmask's public API in idiomatic jax.numpy, jit-compiled, checked against the oracle.

An independent implementation (it never calls refmask.oracle): the oracle's docstrings are the
definitions, refmask/_validate.py makes its argument errors identical to every other backend's.

- Inputs may be jax arrays (traced or not), NumPy arrays, lists or numbers; results are jax arrays.
- Static (Python) values: mask sizes, align, side, window, chunk_size, offset, pad_id,
  axis, is_causal, return_weights, and the varlen sizes that values would otherwise set (total=,
  total_q=, total_k=, num_segments=, pad's batch and max_len). The fully_masked policy's fill and the
  scale are passed as data, so the three policies share one compiled program. Shapes and dtypes are
  always checked.
- Value-dependent checks (lengths in range, from_hf values 0/1, NaN in a bias, non-mask values in a
  torch float mask) run only on concrete values; under jax.jit/vmap/grad tracing they are skipped,
  because the values do not exist yet.
- masked_softmax, attention_weights and attention call module-level jax.jit entry points, so an eager
  call in a loop compiles once per shape/dtype/static argument, never per call; under a user's jax.jit
  they are inlined.
- float16/bfloat16: scores, softmax and the weights-value product run in float32, the result is rounded
  once to the input dtype. On an NVIDIA GPU, attention in half precision runs on cuDNN's fused kernel
  through jax.nn.dot_product_attention where refmask's promises hold there (_jax_fused.py). float32
  matmuls run at Precision.HIGHEST (no TF32/bf16 passes on GPU/TPU): this is the reference, accuracy first.
  The float32 softmax computes as jax.nn.softmax does; masked_softmax(accuracy="accurate") compensates
  the rounding of x - max and of each row's sum (_exp_shifted, _row_sum).
- Gradients: the softmax core has a custom JVP, w * (dx - sum(w * dx)) with w zeroed where masked and on
  fully-masked rows, so masked positions get exactly 0 and fully-masked rows a finite 0 gradient under
  every policy (no NaN from differentiating through a where over -inf). attention_vjp is jax.vjp of this
  backend's attention, the forward and its pullback in one jitted program per shape and dtype.
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
from . import _jax_fused as fused
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
    return _dtypes.numpy_name(np.dtype(dtype))


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


@functools.lru_cache(maxsize=64)
def _compute_dtype(dtype: Any) -> Any:
    """float16/bfloat16 accumulate in float32; float32 and float64 compute in themselves."""
    return _dtypes.numpy_dtype(_dtypes.compute_dtype(_dtype_name(dtype)))


@functools.lru_cache(maxsize=64)
def _compensate(dtype: Any) -> bool:
    """Whether masked_softmax(accuracy="accurate") compensates inputs of `dtype` (float32 only; see
    _softmax_forward): float64 is the oracle's own arithmetic, float16/bfloat16 have ULPs far above the error."""
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


def _position_grid(p: arrays.PositionArgs) -> tuple[jax.Array, jax.Array]:
    """Query positions (..., T, 1) and key positions (..., 1, S) from position arrays, in int32: every
    position is within [-2^30, 2^30) (checked where concrete), so every difference fits."""
    q = jnp.arange(p.q_len, dtype=jnp.int32) + p.shift if p.q_positions is None else p.q_positions.astype(jnp.int32)
    if p.offset is not None:
        q = q + p.offset.astype(jnp.int32)[:, None]
    kv = jnp.arange(p.kv_len, dtype=jnp.int32) if p.kv_positions is None else p.kv_positions.astype(jnp.int32)
    return q[..., :, None], kv[..., None, :]


def _per_example(keep: jax.Array) -> jax.Array:
    return keep[:, None] if keep.ndim == 3 else keep


def causal_mask(
    q_len: int | None = None,
    kv_len: int | None = None,
    *,
    align: str = "top_left",
    offset: Any = 0,
    q_positions: Any = None,
    kv_positions: Any = None,
    device: Any = None,
) -> jax.Array:
    p = arrays.position_args(OPS, q_len, kv_len, align, offset, q_positions, kv_positions)
    if p is not None:
        i, j = _position_grid(p)
        return _place(_per_example(j <= i), device)
    t, s = check.q_kv_lengths(q_len, kv_len)
    d = check.diagonal(check.aligned_offset(align, t, s, offset), t, s)
    i, j = _iotas(t, s)
    return _place(j - i <= d, device)


def sliding_window_mask(
    q_len: int | None = None,
    kv_len: int | None = None,
    *,
    window: int | tuple[int | None, int | None],
    align: str = "top_left",
    offset: Any = 0,
    q_positions: Any = None,
    kv_positions: Any = None,
    device: Any = None,
) -> jax.Array:
    window = check.window(window)
    p = arrays.position_args(OPS, q_len, kv_len, align, offset, q_positions, kv_positions)
    if p is not None:
        i, j = _position_grid(p)
        left, right = check.position_window(window)
        diff = j - i
        keep = jnp.ones(diff.shape, bool)
        if left is not None:
            keep = keep & (diff >= -left)
        if right is not None:
            keep = keep & (diff <= right)
        return _place(_per_example(keep), device)
    t, s = check.q_kv_lengths(q_len, kv_len)
    lo, hi = check.window_diagonals(check.aligned_offset(align, t, s, offset), window, t, s)
    i, j = _iotas(t, s)
    diff = j - i
    return _place((lo <= diff) & (diff <= hi), device)


def chunked_mask(
    q_len: int | None = None,
    kv_len: int | None = None,
    *,
    chunk_size: int,
    align: str = "top_left",
    offset: Any = 0,
    q_positions: Any = None,
    kv_positions: Any = None,
    device: Any = None,
) -> jax.Array:
    c = check.integer("chunk_size", chunk_size, minimum=1)
    p = arrays.position_args(OPS, q_len, kv_len, align, offset, q_positions, kv_positions)
    if p is not None:
        i, j = _position_grid(p)
        c = check.position_chunk(c)
        return _place(_per_example(jnp.floor_divide(i, c) == jnp.floor_divide(j, c)), device)
    t, s = check.q_kv_lengths(q_len, kv_len)
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
    q_len: int | None = None,
    kv_len: int | None = None,
    *,
    align: str = "top_left",
    offset: Any = 0,
    q_positions: Any = None,
    kv_positions: Any = None,
    device: Any = None,
) -> jax.Array:
    p = arrays.position_args(OPS, q_len, kv_len, align, offset, q_positions, kv_positions)
    t, s = check.q_kv_lengths(q_len, kv_len) if p is None else (p.q_len, p.kv_len)
    prefix = _lengths("prefix_lengths", prefix_lengths, s, "(B,)")
    if p is not None:
        i, j = _position_grid(p)
        check.per_example_batch("prefix_lengths", prefix.shape[0], (i.shape, j.shape))
        in_prefix = j[..., None, :, :] < prefix.astype(jnp.int32)[:, None, None, None]
        return _place(in_prefix | (j <= i)[..., None, :, :], device)
    d = check.diagonal(check.aligned_offset(align, t, s, offset), t, s)
    i, j = _iotas(t, s)
    in_prefix = j[None, None] < prefix[:, None, None, None]
    causal = (j - i <= d)[None, None]
    return _place(in_prefix | causal, device)


# ----------------------------------------------------------------------------------------------
# converters between conventions


# ----------------------------------------------------------------------------------------------
# varlen batches and positions
#
# Shapes set by values (cu_seqlens[-1], the count of valid tokens) are read where the values are
# concrete; under jax.jit the sizes come as static ints (total=, total_q=, total_k=, num_segments=,
# batch, max_len), or the call is refused naming them (refmask/_arrays.py). Token indices are int32
# while the packed totals fit it (cu_seqlens are int32), int64 results follow JAX's x64 setting.


def _wide_int() -> Any:
    """int64, or int32 without jax_enable_x64 (JAX's convention for int64)."""
    return np.dtype(OPS.produced_dtype("int64"))


def _cu_seqlens(name: str, x: Any) -> tuple[jax.Array, int | None]:
    return arrays.cu_seqlens(OPS, name, _integers(name, x))


def _token_segments(cu: jax.Array, total: int, dtype: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
    """For each of `total` packed tokens t: its sequence (-1 from cu[-1] on), its position t - cu[b] in it,
    and b clipped to a real sequence (for gathers; cu holds at least one sequence)."""
    t = jnp.arange(total, dtype=dtype)
    cu = cu.astype(dtype)
    b = jnp.clip(jnp.searchsorted(cu, t, side="right") - 1, 0, cu.shape[0] - 2)
    return jnp.where(t < cu[-1], b, -1), t - cu[b], b


@jax.jit
def _cu_seqlens_impl(lengths: jax.Array) -> jax.Array:
    counts = jnp.cumsum(lengths.astype(jnp.int32), dtype=jnp.int32)
    return jnp.concatenate([jnp.zeros(1, jnp.int32), counts])


def cu_seqlens(lengths: Any) -> jax.Array:
    return _cu_seqlens_impl(arrays.sequence_lengths(OPS, "lengths", _integers("lengths", lengths)))


@functools.partial(jax.jit, static_argnames=("total",))
def _segment_ids_impl(cu: jax.Array, *, total: int) -> jax.Array:
    if cu.shape[0] == 1:  # no sequence: every token is padding
        return jnp.full((total,), -1, jnp.int32)
    ids, _, _ = _token_segments(cu, total, _index_dtype(total))
    return ids.astype(jnp.int32)


def segment_ids_from_cu_seqlens(cu_seqlens: Any, total: int | None = None) -> jax.Array:
    cu, last = _cu_seqlens("cu_seqlens", cu_seqlens)
    return _segment_ids_impl(cu, total=arrays.packed_total("cu_seqlens", last, "total", total))


@functools.partial(jax.jit, static_argnames=("n",))
def _cu_from_segment_ids_impl(ids: jax.Array, *, n: int) -> jax.Array:
    dtype = _index_dtype(max(n, ids.shape[0]))
    ids = ids.astype(dtype)
    # Padding (-1) sorts after every sequence as n: the ids are then sorted, and cu[b] counts those below b.
    ordered = jnp.where(ids < 0, jnp.asarray(n, dtype), ids)
    return jnp.searchsorted(ordered, jnp.arange(n + 1, dtype=dtype), side="left").astype(jnp.int32)


def cu_seqlens_from_segment_ids(segment_ids: Any, *, num_segments: int | None = None) -> jax.Array:
    ids, n = arrays.packed_segment_ids(OPS, "segment_ids", _integers("segment_ids", segment_ids), num_segments)
    return _cu_from_segment_ids_impl(ids, n=n)


def _varlen_mask_impl(
    cu_q: jax.Array, cu_k: jax.Array, *, total_q: int, total_k: int, lo: int, hi: int
) -> jax.Array:
    if cu_q.shape[0] == 1:  # no sequence: every token is padding
        return jnp.zeros((total_q, total_k), bool)
    dtype = _index_dtype(total_q + total_k + 2)
    seg_q, p, b = _token_segments(cu_q, total_q, dtype)
    seg_k, q, _ = _token_segments(cu_k, total_k, dtype)
    cu_q, cu_k = cu_q.astype(dtype), cu_k.astype(dtype)
    shift = (cu_k[b + 1] - cu_k[b]) - (cu_q[b + 1] - cu_q[b])  # len_k - len_q of each query's sequence
    d = q[None, :] - (p + shift)[:, None]
    same = (seg_q[:, None] == seg_k[None, :]) & (seg_q >= 0)[:, None]
    return same & (lo <= d) & (d <= hi)


_varlen_mask_jit = jax.jit(_varlen_mask_impl, static_argnames=("total_q", "total_k", "lo", "hi"))


def varlen_mask(
    cu_seqlens_q: Any,
    cu_seqlens_k: Any = None,
    *,
    causal: bool = False,
    window: int | tuple[int | None, int | None] | None = None,
    total_q: int | None = None,
    total_k: int | None = None,
) -> jax.Array:
    cu_k_given = None if cu_seqlens_k is None else _integers("cu_seqlens_k", cu_seqlens_k)
    cu_q, cu_k, t, s, lo, hi = arrays.varlen_call(
        OPS, _integers("cu_seqlens_q", cu_seqlens_q), cu_k_given, causal, window, total_q, total_k
    )
    return _varlen_mask_jit(cu_q, cu_k, total_q=t, total_k=s, lo=lo, hi=hi)


def unpad(x: Any, valid: Any) -> tuple[jax.Array, jax.Array, jax.Array, int]:
    x, valid = arrays.unpad_args(OPS, x, valid)
    b, n = valid.shape
    indices = jnp.flatnonzero(valid.reshape(-1)).astype(_wide_int())
    lengths = jnp.sum(valid, axis=-1, dtype=jnp.int32)
    max_len = int(jnp.max(lengths)) if b else 0
    return x.reshape(b * n, *x.shape[2:])[indices], indices, cu_seqlens(lengths), max_len


@functools.partial(jax.jit, static_argnames=("batch", "max_len"))
def _pad_impl(packed: jax.Array, indices: jax.Array, *, batch: int, max_len: int) -> jax.Array:
    rows = packed.shape[1:]
    return jnp.zeros((batch * max_len, *rows), packed.dtype).at[indices].set(packed).reshape(batch, max_len, *rows)


def pad(packed: Any, indices: Any, batch: int, max_len: int) -> jax.Array:
    packed, indices, b, n = arrays.pad_args(OPS, packed, _integers("indices", indices), batch, max_len)
    return _pad_impl(packed, indices, batch=b, max_len=n)


@jax.jit
def _position_ids_impl(valid: jax.Array) -> jax.Array:
    counted = jnp.cumsum(valid, axis=-1, dtype=_wide_int())
    return jnp.where(valid, counted - 1, jnp.ones((), counted.dtype))


def position_ids_from_padding(valid: Any) -> jax.Array:
    valid = _bool_mask("valid", valid)
    check.ndim("valid", valid.shape, 2, "(B, L)")
    return _position_ids_impl(valid)


@jax.jit
def _positions_in_segments_impl(ids: jax.Array) -> jax.Array:
    b, n = ids.shape
    t = jnp.arange(n, dtype=_wide_int())
    starts = jnp.concatenate([jnp.ones((b, min(n, 1)), bool), ids[:, 1:] != ids[:, :-1]], axis=1)
    return t - lax.cummax(jnp.where(starts, t, jnp.zeros((), t.dtype)), axis=1)


def positions_in_segments(segment_ids: Any) -> jax.Array:
    ids = _integers("segment_ids", segment_ids)
    check.ndim("segment_ids", ids.shape, 2, "(B, L)")
    return _positions_in_segments_impl(ids)


@jax.jit
def _segment_ids_from_positions_impl(pos: jax.Array) -> jax.Array:
    pos = pos.astype(_wide_int())
    b, n = pos.shape
    jumps = (pos[:, 1:] != pos[:, :-1] + 1).astype(pos.dtype)
    return jnp.cumsum(jnp.concatenate([jnp.zeros((b, min(n, 1)), pos.dtype), jumps], axis=1), axis=1)


def segment_ids_from_positions(position_ids: Any) -> jax.Array:
    pos = _integers("position_ids", position_ids)
    check.ndim("position_ids", pos.shape, 2, "(B, L)")
    return _segment_ids_from_positions_impl(pos)


# ----------------------------------------------------------------------------------------------
# position biases (ALiBi)


def _alibi_dtype() -> Any:
    """The precision ALiBi is computed in: float64, or float32 where jax makes no float64 (x64 off)."""
    return np.dtype(OPS.produced_dtype("float64"))


def _alibi_slopes(num_heads: int, dtype: Any) -> jax.Array:
    """2^e per head: e = -8 h / P for h = 1..P (P the largest power of two <= H), then -8 (2i + 1) / (2P).

    A table of H constants, made on the host from Python floats (as the paper's code makes them): XLA's
    exp2 is not exact even at integer exponents, and the slopes of 2^k heads are exact powers of two.
    """
    p = 1 << (num_heads.bit_length() - 1)
    exponents = [-8.0 * h / p for h in range(1, p + 1)] + [-4.0 * (2 * i + 1) / p for i in range(num_heads - p)]
    return jnp.asarray(np.array([2.0**e for e in exponents]), dtype)


def alibi_slopes(num_heads: int, *, dtype: Any = "float32", device: Any = None) -> jax.Array:
    h = check.integer("num_heads", num_heads, minimum=1)
    name = OPS.produced_dtype(_dtypes.float_dtype("dtype", dtype))
    return _place(_alibi_slopes(h, _alibi_dtype()).astype(name), device)


def alibi_bias(
    num_heads: int,
    q_len: int,
    kv_len: int | None = None,
    *,
    align: str = "top_left",
    offset: int = 0,
    dtype: Any = "float32",
    device: Any = None,
) -> jax.Array:
    h, t, s, d = check.alibi_bias_args(num_heads, q_len, kv_len, align, offset)
    name = OPS.produced_dtype(_dtypes.float_dtype("dtype", dtype))
    cdt = _alibi_dtype()
    distance = jnp.arange(s, dtype=cdt)[None, :] - (jnp.arange(t, dtype=cdt)[:, None] + jnp.asarray(float(d), cdt))
    return _place((_alibi_slopes(h, cdt)[:, None, None] * distance).astype(name), device)


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
    # Below 2^-100 the correction e * err is subnormal, which XLA flushes to zero unless it fuses
    # e + e * err into one FMA (it does not at low optimisation levels): there it is applied as a
    # factor, 1 + err, exact to 2^-24, a normal number like the result.
    corrected = jnp.where(e >= 2.0**-100, e + e * err, e * (1.0 + err))
    return jnp.where(d > -104.0, corrected, e)


def _two_sum_add(a: tuple[jax.Array, jax.Array], b: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """(sum, error) pairs added: s = s1 + s2 rounded, its exact rounding error (TwoSum) joining the errors."""
    (s1, c1), (s2, c2) = a, b
    s = s1 + s2
    b_part = s - s1
    return s, (c1 + c2) + ((s1 - (s - b_part)) + (s2 - b_part))


def _row_sum(e: jax.Array, axis: int, compensated: bool, extra: jax.Array | None = None) -> jax.Array:
    """The sum of e along negative `axis` (kept, size 1), plus `extra` (broadcastable, axis of size 1) if given.

    A plain float32 sum of n terms is off by up to log2(n) roundings, a few ULP of the total, which every
    weight divided by it inherits. compensated=True: each partial sum carries its exact rounding error
    (TwoSum) in a second accumulator of one reduction, in whatever order XLA adds, so the total is
    within about half an ULP of the exact sum.
    """
    if not compensated:
        total = jnp.sum(e, axis=axis, keepdims=True)
        return total if extra is None else total + extra
    return _compensated_sum(e, jnp.zeros((), e.dtype) if extra is None else extra, axis)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _compensated_sum(e: jax.Array, extra: jax.Array, axis: int) -> jax.Array:
    """_row_sum's compensated sum. Its derivative is the plain sum of the tangents (the sum is linear):
    jax cannot differentiate a two-operand reduce whose second operand has no tangent, which second
    derivatives of the softmax (through _softmax_core's JVP rule) would otherwise need."""
    zero = jnp.zeros((), e.dtype)
    s, c = lax.reduce((e, jnp.zeros_like(e)), (zero, zero), _two_sum_add, (e.ndim + axis,))
    s, c = _two_sum_add((jnp.expand_dims(s, axis), jnp.expand_dims(c, axis)), (extra, jnp.zeros_like(extra)))
    return s + c


@_compensated_sum.defjvp
def _compensated_sum_jvp(
    axis: int, primals: tuple[jax.Array, jax.Array], tangents: tuple[jax.Array, jax.Array]
) -> tuple[jax.Array, jax.Array]:
    (e, extra), (e_dot, extra_dot) = primals, tangents
    return _compensated_sum(e, extra, axis), jnp.sum(e_dot, axis=axis, keepdims=True) + extra_dot


def _softmax_forward(
    x: jax.Array, keep: jax.Array | None, fill: jax.Array, axis: int, compensate: bool, sink: jax.Array | None
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]:
    """The hot path, in x's (compute) dtype: where, max, exp, sum, divide, and a row-level where.

    compensate=True: exp(x - m) with the rounding of x - m compensated (_exp_shifted) and each row's
    sum compensated (_row_sum).

    Masked scores become -inf before anything reads them, so they can hold NaN or +inf. A row with
    nothing kept has max -inf and computes NaN; the last where replaces it by `fill`, the policy's
    value, which is data (a 0-d array), so the three policies share one compiled program (0 with sinks).
    A kept NaN/+inf, or kept scores all -inf, give NaN by IEEE arithmetic, as the oracle says.
    A sink joins the max and the row's sum, and takes no weight itself.
    Returns the weights, the row max m, the row sum (the sink's term included) and the sink's term.
    """
    n = x.shape[axis]
    kept = x if keep is None else jnp.where(keep, x, -jnp.inf)
    m = jnp.max(kept, axis=axis, keepdims=True, initial=-jnp.inf if n == 0 else None)
    if sink is not None:
        m = jnp.maximum(m, sink)
    m = lax.stop_gradient(m)
    e = _exp_shifted(kept, m, compensate)
    e_sink = None if sink is None else _exp_shifted(sink, m, compensate)
    total = _row_sum(e, axis, compensate, e_sink)
    w = e / total
    if keep is not None:
        w = jnp.where(_any_kept(keep, axis), w, fill.astype(w.dtype))
    return w, m, total, e_sink


def _log_sum_exp(m: jax.Array, total: jax.Array) -> jax.Array:
    """m + log(total), the log of the softmax denominator; m itself where m is not finite (-inf for a row
    with nothing kept and no sink, +inf or NaN for a kept or sink +inf or NaN)."""
    return jnp.where(jnp.isfinite(m), m + jnp.log(total), m)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4, 6))
def _softmax_core(
    x: jax.Array,
    keep: jax.Array | None,
    fill: jax.Array,
    axis: int,
    compensate: bool,
    sink: jax.Array | None = None,
    with_lse: bool = False,
) -> Any:
    """The masked softmax of x along `axis` (see _softmax_forward), and with_lse its log-sum-exp with
    `axis` kept (size 1): (weights, lse)."""
    w, m, total, _ = _softmax_forward(x, keep, fill, axis, compensate, sink)
    return (w, _log_sum_exp(m, total)) if with_lse else w


@_softmax_core.defjvp
def _softmax_core_jvp(
    axis: int,
    compensate: bool,
    with_lse: bool,
    primals: tuple[jax.Array, jax.Array | None, jax.Array, jax.Array | None],
    tangents: tuple[jax.Array, Any, Any, Any],
) -> tuple[Any, Any]:
    x, keep, fill, sink = primals
    x_dot = tangents[0]
    w, m, total, e_sink = _softmax_forward(x, keep, fill, axis, compensate, sink)
    # Weights that depend on x: zero at masked entries and on fully-masked rows (whose value is a
    # constant of the policy: the fill is not differentiated), so those get exactly 0 gradient,
    # finite under every policy.
    wk = w if keep is None else jnp.where(keep, w, jnp.zeros((), w.dtype))
    row_dot = jnp.sum(wk * x_dot, axis=axis, keepdims=True)
    if sink is not None and e_sink is not None:
        # The sink's share of the denominator; a row whose max is not finite has no finite share (its
        # weights are NaN, or constant 0 with nothing kept), so it gets none rather than NaN.
        share = e_sink / total
        row_dot = row_dot + jnp.where(jnp.isnan(share), jnp.zeros((), share.dtype), share) * tangents[3]
    w_dot = wk * (x_dot - row_dot)
    if not with_lse:
        return w, w_dot
    # d lse = sum_k w[k] dx[k] + share * d sink: the row's dot product, 0 on rows that keep nothing.
    return (w, _log_sum_exp(m, total)), (w_dot, row_dot)


def _masked_softmax_impl(
    scores: jax.Array,
    mask: jax.Array | None,
    fill: jax.Array,
    sink: jax.Array | None = None,
    *,
    axis: int,
    accurate: bool,
) -> jax.Array:
    x = scores.astype(_compute_dtype(scores.dtype))
    sink = None if sink is None else sink.astype(x.dtype)
    compensate = accurate and _compensate(scores.dtype)
    return _softmax_core(x, mask, fill, axis, compensate, sink).astype(scores.dtype)


_masked_softmax_jit = jax.jit(_masked_softmax_impl, static_argnames=("axis", "accurate"))


def _fill(policy: str, n: int, dtype: Any, sinks: Any = None) -> jax.Array:
    """The weight of a fully-masked row's entries under `policy` (rows of length n), as data for jit;
    0 with sinks (the sink takes everything, whatever the policy)."""
    return _fill_array("zero" if sinks is not None else policy, n, _compute_dtype(dtype))


@functools.lru_cache(maxsize=256)
def _fill_array(policy: str, n: int, compute_dtype: Any) -> jax.Array:
    # Made once per (policy, n, dtype): building a jax scalar costs more than a small softmax itself. Made
    # concrete even when first asked for under a trace (jax.jit of a caller), so no tracer is remembered.
    with jax.ensure_compile_time_eval():
        return jnp.asarray(arrays.fully_masked_value(policy, n), dtype=compute_dtype)


def masked_softmax(
    scores: Any,
    mask: Any = None,
    *,
    axis: int = -1,
    fully_masked: str = "zero",
    sinks: Any = None,
    accuracy: str = "fast",
) -> jax.Array:
    c = arrays.softmax_call(OPS, scores, mask, axis, fully_masked, sinks, accuracy)
    fill = _fill(c.fully_masked, c.scores.shape[c.axis], c.scores.dtype, c.sinks)
    sink = arrays.sink_column(OPS, c.sinks, c.scores.shape, c.axis)
    return _masked_softmax_jit(c.scores, c.mask, fill, sink, axis=c.axis, accurate=c.accuracy == "accurate")


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
    softcap: jax.Array | None = None,
    sink: jax.Array | None = None,
    with_lse: bool = False,
) -> tuple[jax.Array, jax.Array | None, int | None]:
    """Compute-dtype weights (..., H, T, S), with_lse their log-sum-exp (..., H, T) (else None), and the
    (H_kv, G) grouping used (None without heads)."""
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
    if softcap is not None:
        cap = softcap.astype(cdt)
        s = cap * jnp.tanh(s / cap)
    if bias is not None:
        s = s + bias.astype(cdt)
    if is_causal:
        t, n = s.shape[-2], s.shape[-1]
        causal = causal_mask(t, n)
        mask = causal if mask is None else mask & causal
    sink = None if sink is None else sink.astype(cdt)
    if not with_lse:
        return _softmax_core(s, mask, fill, -1, False, sink), None, groups
    w, lse = _softmax_core(s, mask, fill, -1, False, sink, True)
    return w, lse[..., 0], groups


def _attention_impl(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None,
    bias: jax.Array | None,
    scale: jax.Array,
    fill: jax.Array,
    softcap: jax.Array | None = None,
    sink: jax.Array | None = None,
    *,
    is_causal: bool,
    return_weights: bool,
    return_lse: bool = False,
) -> jax.Array | tuple[jax.Array, ...]:
    w, lse, groups = _weights(q, k, bias, mask, scale, fill, is_causal, softcap, sink, return_lse)
    vc = v.astype(w.dtype)
    hp = lax.Precision.HIGHEST
    if groups is not None:
        out = jnp.einsum("...hgts,...hsd->...hgtd", _grouped(w, groups), vc, precision=hp)
        out = out.reshape(*w.shape[:-1], v.shape[-1])
    else:
        out = jnp.einsum("...ts,...sd->...td", w, vc, precision=hp)
    out = out.astype(q.dtype)
    parts = [out] + ([w.astype(q.dtype)] if return_weights else []) + ([lse] if lse is not None else [])
    return parts[0] if len(parts) == 1 else tuple(parts)


def _attention_weights_impl(
    q: jax.Array,
    k: jax.Array,
    mask: jax.Array | None,
    bias: jax.Array | None,
    scale: jax.Array,
    fill: jax.Array,
    softcap: jax.Array | None = None,
    sink: jax.Array | None = None,
) -> jax.Array:
    w, _, _ = _weights(q, k, bias, mask, scale, fill, False, softcap, sink)
    return w.astype(q.dtype)


# The policies' fills, the scale and the softcap are data, not static arguments: one program serves all
# three policies and every scale and cap (a softcap or sinks given or not is a new program).
_attention_jit = jax.jit(_attention_impl, static_argnames=("is_causal", "return_weights", "return_lse"))
_attention_weights_jit = jax.jit(_attention_weights_impl)


def _scale(scale: float, dtype: Any) -> jax.Array:
    """A scalar of the compute dtype, passed to jit as data, so a new scale does not recompile."""
    return jnp.asarray(scale, dtype=_compute_dtype(dtype))


def _softcap(softcap: float | None, dtype: Any) -> jax.Array | None:
    """The softcap as a scalar of the compute dtype (data for jit, as the scale), or None."""
    return None if softcap is None else _scale(softcap, dtype)


def attention_weights(
    q: Any,
    k: Any,
    mask: Any = None,
    *,
    bias: Any = None,
    scale: float | None = None,
    softcap: float | None = None,
    sinks: Any = None,
    fully_masked: str = "zero",
) -> jax.Array:
    c = arrays.attention_call(OPS, {"q": q, "k": k}, mask, bias, scale, fully_masked, softcap=softcap, sinks=sinks)
    fill = _fill(c.fully_masked, c.shape[-1], c.q.dtype, c.sinks)
    return _attention_weights_jit(
        c.q,
        c.k,
        c.mask,
        c.bias,
        _scale(c.scale, c.q.dtype),
        fill,
        _softcap(c.softcap, c.q.dtype),
        arrays.sink_column(OPS, c.sinks, c.shape),
    )


def attention(
    q: Any,
    k: Any,
    v: Any,
    mask: Any = None,
    *,
    bias: Any = None,
    scale: float | None = None,
    softcap: float | None = None,
    sinks: Any = None,
    is_causal: bool = False,
    fully_masked: str = "zero",
    return_weights: bool = False,
    return_lse: bool = False,
) -> jax.Array | tuple[jax.Array, ...]:
    c = arrays.attention_call(
        OPS, {"q": q, "k": k, "v": v}, mask, bias, scale, fully_masked, is_causal, return_weights,
        softcap=softcap, sinks=sinks, return_lse=return_lse,
    )
    name = fused.implementation(c.q, c.k, c.v, weights=c.return_weights, lse=c.return_lse, softcap=c.softcap,
                                sinks=c.sinks, bias=c.bias)
    if name is not None:
        out = fused.attention(c.q, c.k, c.v, c.mask, c.bias, c.scale, _fill(c.fully_masked, c.shape[-1], c.q.dtype),
                              is_causal=c.is_causal, name=name)
        if out is not None:
            return out
    return _attention_jit(
        c.q,
        c.k,
        c.v,
        c.mask,
        c.bias,
        _scale(c.scale, c.q.dtype),
        _fill(c.fully_masked, c.shape[-1], c.q.dtype, c.sinks),
        _softcap(c.softcap, c.q.dtype),
        arrays.sink_column(OPS, c.sinks, c.shape),
        is_causal=c.is_causal,
        return_weights=c.return_weights,
        return_lse=c.return_lse,
    )


# ----------------------------------------------------------------------------------------------
# gradients of attention


def _attention_vjp_impl(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None,
    bias: jax.Array | None,
    scale: jax.Array,
    fill: jax.Array,
    softcap: jax.Array | None,
    sink: jax.Array | None,
    d_out: jax.Array,
) -> tuple[Any, ...]:
    """jax.vjp of this backend's attention at (q, k, v, bias, sink), pulled back from d_out."""

    def out(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None, sink: jax.Array | None) -> Any:
        return _attention_impl(q, k, v, mask, bias, scale, fill, softcap, sink, is_causal=False, return_weights=False)

    _, pullback = jax.vjp(out, q, k, v, bias, sink)
    return tuple(pullback(d_out))


# One program computes the whole gradient: the forward and its pullback compile once per shape and dtype.
_attention_vjp_jit = jax.jit(_attention_vjp_impl)


def attention_vjp(
    q: Any,
    k: Any,
    v: Any,
    mask: Any,
    d_out: Any,
    *,
    bias: Any = None,
    scale: float | None = None,
    softcap: float | None = None,
    sinks: Any = None,
    fully_masked: str = "zero",
) -> arrays.AttentionGrads[jax.Array]:
    c = arrays.attention_vjp_call(OPS, {"q": q, "k": k, "v": v}, mask, d_out, bias, scale, fully_masked, softcap, sinks)
    a = c.attention
    dq, dk, dv, dbias, dsink = _attention_vjp_jit(
        a.q,
        a.k,
        a.v,
        a.mask,
        a.bias,
        _scale(a.scale, a.q.dtype),
        _fill(a.fully_masked, a.shape[-1], a.q.dtype, a.sinks),
        _softcap(a.softcap, a.q.dtype),
        arrays.sink_column(OPS, a.sinks, a.shape),
        c.d_out,
    )
    return arrays.AttentionGrads(dq, dk, dv, dbias, None if a.sinks is None else dsink.reshape(a.sinks.shape))


_backends.loaded(__name__)  # last: the registry hands this module out only once it is complete
