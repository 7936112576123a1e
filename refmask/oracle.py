"""The refmask oracle: the specification of every mask, converter and masked softmax, in NumPy.

This module *is* the definition; the JAX and torch backends are independent implementations
that the test suite holds against it. It is written to be read:

- one short function per concept, the definition in its docstring;
- a mask is a boolean array, True = "this query may attend to this key", broadcastable to the
  scores' shape (..., T, S) (T = query length, S = key length), and built at its smallest
  broadcastable shape ((T, S) for causal, (B, 1, 1, S) for key padding);
- arithmetic runs in float64 and is rounded once, at the end, to the input's floating dtype, so a
  float32, float16 or bfloat16 result is the correctly rounded answer, unless the exact value lies
  within float64 rounding error of a midpoint between two neighbours (then either neighbour may
  come out), or, for attention outputs, unless the sum over keys cancels: the float64 error is then
  relative to the largest term w * v, not to the result (v = [-1e30, 1e30] under equal weights gives
  about 1e13, not 0), so outputs are compared against max|v|; float64 results are accurate to a few
  ULP;
- bad input raises a ValueError or TypeError naming the argument (see refmask/_validate.py).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import _arrays as arrays
from . import _backends, _convert
from . import _validate as check
from ._arrays import NUMPY, ArrayLike

Mask = np.ndarray
OPS = NUMPY  # the array operations refmask's shared code (converters, argument parsing) runs on here

__all__ = [
    "and_masks",
    "attention",
    "attention_padding_mask",
    "attention_weights",
    "causal_mask",
    "chunked_mask",
    "from_additive",
    "from_hf",
    "from_multiplicative",
    "from_torch_mha",
    "masked_softmax",
    "or_masks",
    "padding_mask",
    "padding_mask_from_ids",
    "prefix_lm_mask",
    "segment_mask",
    "sliding_window_mask",
    "to_additive",
    "to_torch_mha",
]

# Query rows processed at once by `attention` when weights are not returned: the float64 scores
# of one block stay near 32 MiB, so peak memory does not grow with T. Smaller blocks mean more
# (smaller) BLAS calls, each of which waits for BLAS's threads, so blocks much smaller than this
# cost time (docs/benchmarks.md).
_ATTENTION_BLOCK_ELEMENTS = 1 << 22


# ----------------------------------------------------------------------------------------------
# array arguments (parsed by refmask/_arrays.py, shared by every backend)


def _floating(name: str, x: Any) -> np.ndarray:
    return arrays.floating(NUMPY, name, x)


def _bool_mask(name: str, mask: Any) -> np.ndarray:
    return arrays.bool_mask(NUMPY, name, mask)


def _integers(name: str, x: Any) -> np.ndarray:
    return arrays.integers(NUMPY, name, x)


def _check_device(device: Any) -> None:
    NUMPY.device(device)


# ----------------------------------------------------------------------------------------------
# masks from positions


def _positions(q_len: int, kv_len: int, shift: int) -> tuple[np.ndarray, np.ndarray]:
    """Query positions i + shift as a (T, 1) column and key positions j as a (1, S) row.

    offset, window and chunk_size may be Python ints of any size: refmask/_validate.py reduces them
    exactly to a small shift (check.diagonal, check.chunks) that gives the same mask.
    """
    i = np.arange(q_len)[:, None] + shift
    j = np.arange(kv_len)[None, :]
    return i, j


def causal_mask(
    q_len: int, kv_len: int | None = None, *, align: str = "top_left", offset: int = 0, device: Any = None
) -> Mask:
    """(T, S) causal mask: keep[i, j] = j <= i + offset + shift.

    shift = 0 for align="top_left" (torch `is_causal`, `causal_upper_left`);
    shift = S - T for "bottom_right" (flash-attn, xformers `...FromBottomRight`, KV-cache decoding).
    With T > S and "bottom_right", the first T - S queries see no key (fully-masked rows).
    kv_len defaults to q_len.
    """
    _check_device(device)
    t, s = check.q_kv_lengths(q_len, kv_len)
    i, j = _positions(t, s, check.diagonal(check.aligned_offset(align, t, s, offset), t, s))
    return j <= i


def sliding_window_mask(
    q_len: int,
    kv_len: int | None = None,
    *,
    window: int | tuple[int, int],
    align: str = "top_left",
    offset: int = 0,
    device: Any = None,
) -> Mask:
    """(T, S) local attention: keep[i, j] iff i' - left <= j <= i' + right, i' = i + offset + shift.

    window=(left, right) counts keys on each side of the aligned query i'; an int w means (w, w),
    as `jax.nn.dot_product_attention(local_window_size=w)`, so a row sees up to left + right + 1 keys.
    For a causal sliding window use window=(w, 0), or combine with causal_mask via and_masks.
    """
    _check_device(device)
    t, s = check.q_kv_lengths(q_len, kv_len)
    left, right = check.window(window)
    d = check.aligned_offset(align, t, s, offset)
    i, j = _positions(t, s, 0)
    return (i + check.diagonal(d - left, t, s) <= j) & (j <= i + check.diagonal(d + right, t, s))


def chunked_mask(
    q_len: int,
    kv_len: int | None = None,
    *,
    chunk_size: int,
    align: str = "top_left",
    offset: int = 0,
    device: Any = None,
) -> Mask:
    """(T, S) chunked (block-local) attention: keep[i, j] iff floor(i' / c) == floor(j / c).

    Keys are cut into consecutive chunks of c = chunk_size positions starting at key 0; a query
    sees exactly the keys of the chunk its aligned position i' = i + offset + shift falls in.
    """
    _check_device(device)
    t, s = check.q_kv_lengths(q_len, kv_len)
    c = check.integer("chunk_size", chunk_size, minimum=1)
    c, d = check.chunks(check.aligned_offset(align, t, s, offset), c, t, s)
    i, j = _positions(t, s, d)
    return (i // c) == (j // c)


# ----------------------------------------------------------------------------------------------
# masks from data

_SEGMENT_IDS = ("q_segment_ids", "kv_segment_ids")


def padding_mask(lengths: ArrayLike, max_len: int, *, side: str = "right", device: Any = None) -> Mask:
    """(B, max_len) validity: True at the lengths[b] real tokens of each sequence.

    side="right": tokens sit at positions 0 .. lengths[b] - 1 (padding after them);
    side="left": tokens sit at the last lengths[b] positions (left-padded batches, as for
    decoder-only generation). Every length must be an integer in [0, max_len]; nothing is clipped.
    """
    _check_device(device)
    max_len = check.integer("max_len", max_len, minimum=0)
    check.choice("side", side, check.SIDES)
    lengths = _integers("lengths", lengths)
    if lengths.size:
        check.lengths_in_range("lengths", int(lengths.min()), int(lengths.max()), max_len)
    # In int64: max_len - lengths must not wrap or overflow in a narrow dtype (uint8 lengths, max_len 300).
    lengths = lengths.astype(np.int64)[..., None]
    position = np.arange(max_len, dtype=np.int64)
    if side == "right":
        return position < lengths
    return position >= max_len - lengths


def padding_mask_from_ids(ids: ArrayLike, pad_id: int, *, device: Any = None) -> Mask:
    """(B, L) validity from token ids: True where ids != pad_id."""
    _check_device(device)
    ids = _integers("ids", ids)
    pad = check.pad_id(pad_id, ids.dtype.name)
    return np.ones(ids.shape, bool) if pad is None else ids != pad


def attention_padding_mask(kv_valid: ArrayLike, q_valid: ArrayLike = None, *, device: Any = None) -> Mask:
    """Key padding as an attention mask: (B, 1, 1, S) = kv_valid[b, j].

    With q_valid (B, T) too, (B, 1, T, S) = q_valid[b, i] and kv_valid[b, j]: padded queries attend
    nowhere (their rows are fully masked, see masked_softmax's fully_masked).
    """
    _check_device(device)
    kv_valid = _bool_mask("kv_valid", kv_valid)
    check.ndim("kv_valid", kv_valid.shape, 2, "(B, S)")
    keep = kv_valid[:, None, None, :]
    if q_valid is None:
        return keep
    q_valid = _bool_mask("q_valid", q_valid)
    check.ndim("q_valid", q_valid.shape, 2, "(B, T)")
    check.same_batch("q_valid", q_valid.shape, "kv_valid", kv_valid.shape)
    return q_valid[:, None, :, None] & keep


def segment_mask(
    q_segment_ids: ArrayLike, kv_segment_ids: ArrayLike = None, *, pad_id: int | None = None, device: Any = None
) -> Mask:
    """(B, 1, T, S) block-diagonal mask for packed sequences: keep iff q_seg[b, i] == kv_seg[b, j].

    kv_segment_ids defaults to q_segment_ids (self-attention). Tokens whose id equals pad_id attend
    nowhere and are attended by nothing.
    """
    _check_device(device)
    q_seg = _integers("q_segment_ids", q_segment_ids)
    kv_seg = q_seg if kv_segment_ids is None else _integers("kv_segment_ids", kv_segment_ids)
    check.ndim("q_segment_ids", q_seg.shape, 2, "(B, T)")
    check.ndim("kv_segment_ids", kv_seg.shape, 2, "(B, S)")
    check.same_batch("q_segment_ids", q_seg.shape, "kv_segment_ids", kv_seg.shape)
    common = check.common_integer_dtype(_SEGMENT_IDS, (q_seg.dtype.name, kv_seg.dtype.name))
    keep = q_seg.astype(common)[:, None, :, None] == kv_seg.astype(common)[:, None, None, :]
    if pad_id is not None:
        # A pad_id outside an array's dtype matches none of its ids (no wrap, no overflow).
        q_pad, kv_pad = check.pad_id(pad_id, q_seg.dtype.name), check.pad_id(pad_id, kv_seg.dtype.name)
        if q_pad is not None:
            keep &= (q_seg != q_pad)[:, None, :, None]
        if kv_pad is not None:
            keep &= (kv_seg != kv_pad)[:, None, None, :]
    return keep


def prefix_lm_mask(
    prefix_lengths: ArrayLike,
    q_len: int,
    kv_len: int | None = None,
    *,
    align: str = "top_left",
    device: Any = None,
) -> Mask:
    """(B, 1, T, S) prefix-LM mask: keep[b, i, j] iff j < prefix_lengths[b] or j <= i'.

    Every query sees the whole prefix of its example (bidirectional inside the prefix) and the
    keys up to its own aligned position i' = i + shift (causal after it), with shift as causal_mask.
    Each prefix length must be an integer in [0, S].
    """
    _check_device(device)
    t, s = check.q_kv_lengths(q_len, kv_len)
    prefix = _integers("prefix_lengths", prefix_lengths)
    check.ndim("prefix_lengths", prefix.shape, 1, "(B,)")
    if prefix.size:
        check.lengths_in_range("prefix_lengths", int(prefix.min()), int(prefix.max()), s)
    i, j = _positions(t, s, check.diagonal(check.aligned_offset(align, t, s, 0), t, s))
    in_prefix = j[None, None] < prefix.astype(np.int64)[:, None, None, None]
    return in_prefix | (j <= i)[None, None]


def and_masks(*masks: ArrayLike) -> Mask | None:
    """Keep where every mask keeps (broadcasting); None arguments are skipped; all None gives None.

    The masks must broadcast to one shape; the result has that shape.
    """
    return _convert.and_masks(NUMPY, *masks)


def or_masks(*masks: ArrayLike) -> Mask | None:
    """Keep where any mask keeps (broadcasting); None arguments are skipped; all None gives None.

    The masks must broadcast to one shape; the result has that shape.
    """
    return _convert.or_masks(NUMPY, *masks)


# ----------------------------------------------------------------------------------------------
# converters between conventions
#
# Converters are not numerics: their flow is written once, in refmask/_convert.py, over each backend's
# array operations; the definitions are the docstrings here.


def to_additive(mask: ArrayLike, dtype: Any = "float32", *, fill: Any = "min") -> np.ndarray:
    """Additive bias from a mask: 0 where kept, `fill` where masked, in `dtype`.

    dtype: a floating dtype of any framework or its name ("float16", "bfloat16", "float32", "float64",
    or "fp16", "half", "bf16", "fp32", "single", "fp64", "double"); "float" is refused as ambiguous
    (float64 in NumPy, float32 in torch), and so is None. With jax without x64, "float64" makes float32
    (JAX's convention) and the fill is checked in float32.
    fill="min": finfo(dtype).min, as Flax and Hugging Face; fill="-inf": as torch
    `generate_square_subsequent_mask`; a negative number (e.g. -1e9, as many tutorials) is rounded to
    dtype once, and refused if it overflows to -inf there (e.g. -1e9 in float16).
    """
    return _convert.to_additive(NUMPY, mask, dtype, fill=fill)


def from_additive(bias: ArrayLike, *, threshold: Any = "min") -> Mask:
    """Mask from an additive mask: keep where bias > threshold, and the bias must be a mask.

    A value counts as masking when it is <= threshold. threshold="min" (default) means
    finfo(bias.dtype).min, so exactly -inf and finfo.min count (the fills of to_additive, and what
    Flax, Hugging Face and torch write; two stacked finfo.min fills give -inf and still count). Pass
    the number a tutorial used (threshold=-1e9) to read such masks; a number must be negative and is
    rounded to bias.dtype first, as to_additive writes it (fill=-1e4 is -9984 in bfloat16), so
    from_additive(to_additive(m, dtype, fill=x), threshold=x) is m.
    Every kept value must be exactly 0: a bias holding other values (ALiBi, a 1/0 multiplicative mask,
    +inf) is not a mask and is refused (pass it as attention(..., bias=...), or convert a 1/0 mask with
    from_multiplicative); NaN is refused, being neither kept nor masking.
    """
    return _convert.from_additive(NUMPY, bias, threshold=threshold)


def from_multiplicative(mask: ArrayLike) -> Mask:
    """Mask from a multiplicative (1/0) mask: keep where mask == 1.

    For masks written as numbers with 1 = attend and 0 = masked, as Flax's make_attention_mask,
    make_causal_mask and combine_masks return them (float32), of any broadcastable shape; the result
    keeps that shape. Ints, floats and bools are accepted; any value other than 0 and 1 is refused.
    """
    return _convert.from_multiplicative(NUMPY, mask)


def from_torch_mha(
    attn_mask: ArrayLike = None,
    key_padding_mask: ArrayLike = None,
    *,
    num_heads: int | None = None,
    threshold: Any = "min",
) -> Mask | None:
    """Canonical mask from `nn.MultiheadAttention`'s attn_mask and key_padding_mask.

    attn_mask: bool (True = NOT allowed) or float additive (read as from_additive, so every non-masking
    value must be 0: a real bias is not a mask), shape (T, S), or (N*H, T, S) / unbatched (H, T, S)
    with num_heads=H, returned as (N, H, T, S).
    key_padding_mask: (N, S) bool (True = ignore this key) or float additive, returned as (N, 1, 1, S);
    unbatched (S,) is returned as (1, S).
    Both: their and. Neither: None (attend everywhere).
    """
    return _convert.from_torch_mha(
        NUMPY, attn_mask, key_padding_mask, num_heads=num_heads, threshold=threshold
    )


def to_torch_mha(
    mask: ArrayLike, *, num_heads: int | None = None, q_len: int | None = None
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(attn_mask, key_padding_mask) for `nn.MultiheadAttention`, both bool with True = NOT allowed.

    (T, S) -> (attn_mask (T, S), None); (B, 1, 1, S) -> (None, key_padding_mask (B, S));
    any other (B, H', T', S) -> (attn_mask (B*num_heads, T, S), None), broadcasting H' = 1 to
    num_heads and T' = 1 to q_len. A 2-D mask is read as (T, S): a (B, S) key-padding array is
    refused when q_len shows it cannot be (T, S) (build (B, 1, 1, S) with attention_padding_mask);
    when B == T shapes alone cannot tell them apart.
    """
    return _convert.to_torch_mha(NUMPY, mask, num_heads=num_heads, q_len=q_len)


def from_hf(attention_mask: ArrayLike) -> Mask:
    """Hugging Face 2-D attention_mask (B, S), 1 = real token and 0 = padding, to (B, 1, 1, S) keys.

    One of the two places where 0/1 numbers are read as a mask (with from_multiplicative), because
    Hugging Face fixes their meaning; any value other than 0 and 1 is refused.
    """
    return _convert.from_hf(NUMPY, attention_mask)


# ----------------------------------------------------------------------------------------------
# masked softmax and attention


def masked_softmax(
    scores: ArrayLike, mask: ArrayLike = None, *, axis: int = -1, fully_masked: str = "zero"
) -> np.ndarray:
    """Softmax of `scores` along `axis` over the kept entries only.

    For a row with kept set K (mask True): w[j] = exp(x[j] - m) / sum_{k in K} exp(x[k] - m) for j in
    K, m = max_{k in K} x[k], and w[j] = 0 exactly for j not in K. Masked scores never influence the
    result, whatever they hold (NaN, +inf, anything).

    A row with no kept entry returns, by fully_masked:
      "zero"    all zeros (SDPA, flex_attention, jax.nn.softmax(where=));
      "uniform" 1/n for every entry, n the row's length, masked or not (Flax, jax.nn.dot_product_attention);
      "nan"     all NaN (softmax over -inf, nn.MultiheadAttention's weights).

    Non-finite *kept* scores follow IEEE arithmetic, as a plain softmax does: a kept NaN or +inf,
    or kept scores that are all -inf, make the whole row NaN; a kept -inf beside a finite kept score
    gets weight 0.

    scores: floating (float16, bfloat16, float32, float64); the result has scores' dtype and shape.
    mask: bool, broadcastable to scores' shape; None keeps everything.
    """
    call = arrays.softmax_call(NUMPY, scores, mask, axis, fully_masked)
    keep = np.broadcast_to(np.ones((), bool) if call.mask is None else call.mask, call.scores.shape)
    x = call.scores.astype(np.float64)
    return _softmax_kept(x, keep, call.axis, call.fully_masked).astype(call.scores.dtype)


def _softmax_kept(x: np.ndarray, keep: np.ndarray, axis: int, fully_masked: str) -> np.ndarray:
    """masked_softmax's arithmetic in float64 (no rounding to the input dtype).

    x (float64, keep's shape) is overwritten with the weights and returned: every caller passes a
    fresh array of its own, and working in place avoids a full-size temporary at each step.
    """
    any_kept = keep.any(axis=axis, keepdims=True)
    np.copyto(x, -np.inf, where=~keep)
    with np.errstate(invalid="ignore", over="ignore"):
        # NaN-propagating max over kept entries; rows with nothing kept get 0 to stay finite.
        m = np.where(any_kept, x.max(axis=axis, keepdims=True, initial=-np.inf), 0.0)
        x -= m
        # Masked entries hold exp(-inf) = 0 wherever the row's weights are numbers; where they are
        # not (a kept NaN, +inf or all kept -inf) the whole row is NaN, as the definition says.
        np.exp(x, out=x)
        x /= x.sum(axis=axis, keepdims=True)
    fully_masked_value = arrays.fully_masked_value(fully_masked, x.shape[axis])
    np.copyto(x, fully_masked_value, where=~any_kept)
    return x


def masked_softmax_vjp(
    scores: Any, mask: Any, cotangent: Any, *, axis: int = -1, fully_masked: str = "zero"
) -> np.ndarray:
    """Gradient of sum(cotangent * masked_softmax(scores, mask)) with respect to scores.

    For a row with kept entries and weights w: grad[j] = w[j] * (g[j] - sum_k w[k] g[k]) for kept j,
    and exactly 0 for masked j. A fully-masked row's weights do not depend on the scores under any
    policy, so its gradient is exactly 0 (finite under "zero" and "uniform" as well as "nan").
    """
    scores, mask, axis, fully_masked = arrays.softmax_call(NUMPY, scores, mask, axis, fully_masked)
    g = _floating("cotangent", cotangent)
    if g.shape != scores.shape:
        raise ValueError(f"cotangent must have the scores' shape {scores.shape}; got {g.shape}")
    keep = np.broadcast_to(np.ones((), bool) if mask is None else mask, scores.shape)
    w = _softmax_kept(scores.astype(np.float64), keep, axis, fully_masked)
    w = np.where(keep.any(axis=axis, keepdims=True), w, 0.0)
    g = g.astype(np.float64)
    grad = w * (g - np.sum(w * g, axis=axis, keepdims=True))
    return np.where(keep, grad, 0.0).astype(scores.dtype)


def _repeat_kv_heads(k: np.ndarray, num_q_heads: int) -> np.ndarray:
    """Grouped-query attention: query head h reads key/value head h // (H // H_kv)."""
    if k.ndim < 3 or k.shape[-3] == num_q_heads:
        return k
    return np.repeat(k, num_q_heads // k.shape[-3], axis=-3)


def _scores(q: np.ndarray, k: np.ndarray, bias: Any, scale: float) -> np.ndarray:
    """float64 scores scale * q @ k^T + bias, (..., H, T, S)."""
    k = _repeat_kv_heads(k, q.shape[-3]) if q.ndim >= 3 else k
    s = np.matmul(q.astype(np.float64, copy=False), np.swapaxes(k.astype(np.float64, copy=False), -1, -2))
    s *= scale
    if bias is not None:
        s += bias.astype(np.float64, copy=False)
    return s


def attention_weights(
    q: ArrayLike,
    k: ArrayLike,
    mask: ArrayLike = None,
    *,
    bias: ArrayLike = None,
    scale: float | None = None,
    fully_masked: str = "zero",
) -> np.ndarray:
    """Attention weights masked_softmax(scale * q @ k^T + bias, mask), (..., H, T, S).

    q: (..., H, T, D), k: (..., H_kv, S, D) with H a multiple of H_kv (grouped-query attention);
    scale defaults to 1/sqrt(D); bias is an additive float bias (ALiBi, relative positions)
    broadcastable to the scores, applied before the mask. The result has q's dtype.
    """
    c = arrays.attention_call(NUMPY, {"q": q, "k": k}, mask, bias, scale, fully_masked)
    keep = np.broadcast_to(np.ones((), bool) if c.mask is None else c.mask, c.shape)
    return _softmax_kept(_scores(c.q, c.k, c.bias, c.scale), keep, -1, c.fully_masked).astype(c.q.dtype)


def attention(
    q: ArrayLike,
    k: ArrayLike,
    v: ArrayLike,
    mask: ArrayLike = None,
    *,
    bias: ArrayLike = None,
    scale: float | None = None,
    is_causal: bool = False,
    fully_masked: str = "zero",
    return_weights: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Scaled dot-product attention: out = attention_weights(q, k, mask, ...) @ v, (..., H, T, Dv).

    v: (..., H_kv, S, Dv). is_causal=True ands the mask with causal_mask(T, S) (top-left, as torch).
    A fully-masked row's output follows its weights: 0 ("zero"), the mean of v ("uniform"), NaN
    ("nan"). With return_weights=True returns (out, weights). The weights are not rounded before
    the product: out is the float64 product of the float64 weights, rounded once, which is the
    correctly rounded value unless the sum over keys cancels (then its error is float64's relative
    to max |w * v|, not to out).
    Without weights, query rows are processed in blocks so memory stays far below (T, S) float64.
    """
    c = arrays.attention_call(
        NUMPY, {"q": q, "k": k, "v": v}, mask, bias, scale, fully_masked, is_causal, return_weights
    )
    q, k, vv, mask, bias, scale, shape, fully_masked = c.q, c.k, c.v, c.mask, c.bias, c.scale, c.shape, c.fully_masked
    if c.is_causal:
        mask = and_masks(mask, causal_mask(shape[-2], shape[-1]))
    # Keys and values are cast (and repeated for grouped-query attention) once, not once per block.
    if q.ndim >= 3:
        k, vv = _repeat_kv_heads(k, q.shape[-3]), _repeat_kv_heads(vv, q.shape[-3])
    k, vv = k.astype(np.float64), vv.astype(np.float64)
    t, s = shape[-2], shape[-1]
    if c.return_weights:
        w = _block_weights(q, k, bias, mask, scale, fully_masked, shape, 0, t)
        return (w @ vv).astype(q.dtype), w.astype(q.dtype)
    rows = max(1, _ATTENTION_BLOCK_ELEMENTS // max(1, math.prod(shape[:-2]) * s))
    out = np.empty((*q.shape[:-1], vv.shape[-1]), dtype=q.dtype)
    for start in range(0, t, rows):
        stop = min(start + rows, t)
        # The weights stay unnamed, so they are freed before the next block's are made.
        block_out = _block_weights(q, k, bias, mask, scale, fully_masked, shape, start, stop) @ vv
        out[..., start:stop, :] = block_out.astype(q.dtype)
    return out


def _query_rows(a: np.ndarray | None, start: int, stop: int) -> np.ndarray | None:
    """Rows start:stop of a mask or bias broadcastable to (..., T, S); a T axis of 1 is shared."""
    if a is None or a.ndim < 2 or a.shape[-2] == 1:
        return a
    return a[..., start:stop, :]


def _block_weights(
    q: np.ndarray,
    k: np.ndarray,
    bias: np.ndarray | None,
    mask: np.ndarray | None,
    scale: float,
    fully_masked: str,
    shape: tuple[int, ...],
    start: int,
    stop: int,
) -> np.ndarray:
    """float64 weights of query rows start:stop."""
    q_rows = q[..., start:stop, :]
    block_shape = (*shape[:-2], stop - start, shape[-1])
    keep = _query_rows(mask, start, stop)
    keep = np.broadcast_to(np.ones((), bool) if keep is None else keep, block_shape)
    scores = _scores(q_rows, k, _query_rows(bias, start, stop), scale)
    return _softmax_kept(scores, keep, -1, fully_masked)


_backends.loaded(__name__)  # last: the registry hands this module out only once it is complete
