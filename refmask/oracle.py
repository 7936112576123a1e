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

import functools
import math
from typing import Any

import numpy as np

from . import _arrays as arrays
from . import _backends, _convert, _dtypes
from . import _validate as check
from ._arrays import NUMPY, ArrayLike, AttentionGrads

Mask = np.ndarray
OPS = NUMPY  # the array operations refmask's shared code (converters, argument parsing) runs on here

__all__ = [
    "alibi_bias",
    "alibi_slopes",
    "and_masks",
    "attention",
    "attention_padding_mask",
    "attention_vjp",
    "attention_weights",
    "causal_mask",
    "chunked_mask",
    "cu_seqlens",
    "cu_seqlens_from_segment_ids",
    "from_additive",
    "from_hf",
    "from_multiplicative",
    "from_torch_mha",
    "masked_softmax",
    "or_masks",
    "pad",
    "padding_mask",
    "padding_mask_from_ids",
    "position_ids_from_padding",
    "positions_in_segments",
    "prefix_lm_mask",
    "segment_ids_from_cu_seqlens",
    "segment_ids_from_positions",
    "segment_mask",
    "sliding_window_mask",
    "to_additive",
    "to_torch_mha",
    "unpad",
    "varlen_mask",
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


def _position_grid(p: arrays.PositionArgs) -> tuple[np.ndarray, np.ndarray]:
    """Query positions q' (..., T, 1) and key positions (..., 1, S) from position arrays, in int64:
    q' = q_positions, or i + shift + offset[b]; key positions = kv_positions, or j."""
    q = np.arange(p.q_len, dtype=np.int64) + p.shift if p.q_positions is None else p.q_positions.astype(np.int64)
    if p.offset is not None:
        q = q + p.offset.astype(np.int64)[:, None]
    kv = np.arange(p.kv_len, dtype=np.int64) if p.kv_positions is None else p.kv_positions.astype(np.int64)
    return q[..., :, None], kv[..., None, :]


def _per_example(keep: np.ndarray) -> np.ndarray:
    """A (B, T, S) mask from per-example positions as (B, 1, T, S) (one mask for every head)."""
    return keep[:, None] if keep.ndim == 3 else keep


_POSITIONS_DOC = """
    Per-example and explicit positions: offset may also be an integer array (B,), one offset per example
    (a KV cache holding a different number of tokens per example); or q_positions (T,) or (B, T) and
    kv_positions (S,) or (B, S) give every query's and key's position (T and S are then their lengths;
    align and offset are refused with them, a missing side is arange). The rule above then reads
    i' = q_positions[b, i] (or i + offset[b] + shift) and j' = kv_positions[b, j] (or j) in place of i' and j,
    and the mask is (B, 1, T, S) when any of them has a batch axis. Such positions must lie in
    [-2^30, 2^30) (an int offset of any size stays exact).
    """


def causal_mask(
    q_len: int | None = None,
    kv_len: int | None = None,
    *,
    align: str = "top_left",
    offset: ArrayLike = 0,
    q_positions: ArrayLike = None,
    kv_positions: ArrayLike = None,
    device: Any = None,
) -> Mask:
    """(T, S) causal mask: keep[i, j] = j <= i', the aligned query position i' = i + offset + shift.

    shift = 0 for align="top_left" (torch `is_causal`, `causal_upper_left`);
    shift = S - T for "bottom_right" (flash-attn, xformers `...FromBottomRight`, KV-cache decoding).
    With T > S and "bottom_right", the first T - S queries see no key (fully-masked rows).
    kv_len defaults to q_len.
    """
    _check_device(device)
    p = arrays.position_args(NUMPY, q_len, kv_len, align, offset, q_positions, kv_positions)
    if p is not None:
        i, j = _position_grid(p)
        return _per_example(j <= i)
    t, s = check.q_kv_lengths(q_len, kv_len)
    i, j = _positions(t, s, check.diagonal(check.aligned_offset(align, t, s, offset), t, s))
    return j <= i


def sliding_window_mask(
    q_len: int | None = None,
    kv_len: int | None = None,
    *,
    window: int | tuple[int | None, int | None],
    align: str = "top_left",
    offset: ArrayLike = 0,
    q_positions: ArrayLike = None,
    kv_positions: ArrayLike = None,
    device: Any = None,
) -> Mask:
    """(T, S) local attention: keep[i, j] iff i' - left <= j <= i' + right, i' = i + offset + shift.

    window=(left, right) counts keys on each side of the aligned query i', either side None for unbounded
    (window=(None, 0) is causal); an int w means (w, w), as `jax.nn.dot_product_attention(local_window_size=w)`,
    so a row sees up to left + right + 1 keys. Hugging Face's sliding_window=w means (w - 1, 0) and
    attention-gym's generate_sliding_window(w) means (w, 0): refmask.conventions maps them.
    """
    _check_device(device)
    left, right = check.window(window)
    p = arrays.position_args(NUMPY, q_len, kv_len, align, offset, q_positions, kv_positions)
    if p is not None:
        i, j = _position_grid(p)
        lo, hi = check.position_window((left, right))
        diff = j - i
        keep = np.ones(diff.shape, bool)
        if lo is not None:
            keep &= diff >= -lo
        if hi is not None:
            keep &= diff <= hi
        return _per_example(keep)
    t, s = check.q_kv_lengths(q_len, kv_len)
    lo_diag, hi_diag = check.window_diagonals(check.aligned_offset(align, t, s, offset), (left, right), t, s)
    i, j = _positions(t, s, 0)
    return (i + lo_diag <= j) & (j <= i + hi_diag)


def chunked_mask(
    q_len: int | None = None,
    kv_len: int | None = None,
    *,
    chunk_size: int,
    align: str = "top_left",
    offset: ArrayLike = 0,
    q_positions: ArrayLike = None,
    kv_positions: ArrayLike = None,
    device: Any = None,
) -> Mask:
    """(T, S) chunked (block-local) attention: keep[i, j] iff floor(i' / c) == floor(j / c).

    Keys are cut into consecutive chunks of c = chunk_size positions starting at key 0; a query
    sees exactly the keys of the chunk its aligned position i' = i + offset + shift falls in. With
    positions, chunks are floor(position / c): chunks anchored at each example's first real token
    (left padding) or a shard of a longer sequence are a matter of the positions passed.
    """
    _check_device(device)
    c = check.integer("chunk_size", chunk_size, minimum=1)
    p = arrays.position_args(NUMPY, q_len, kv_len, align, offset, q_positions, kv_positions)
    if p is not None:
        i, j = _position_grid(p)
        c = check.position_chunk(c)
        return _per_example(np.floor_divide(i, c) == np.floor_divide(j, c))
    t, s = check.q_kv_lengths(q_len, kv_len)
    c, d = check.chunks(check.aligned_offset(align, t, s, offset), c, t, s)
    i, j = _positions(t, s, d)
    return (i // c) == (j // c)


causal_mask.__doc__ += _POSITIONS_DOC  # type: ignore[operator]
sliding_window_mask.__doc__ += _POSITIONS_DOC  # type: ignore[operator]
chunked_mask.__doc__ += _POSITIONS_DOC  # type: ignore[operator]


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
    q_len: int | None = None,
    kv_len: int | None = None,
    *,
    align: str = "top_left",
    offset: ArrayLike = 0,
    q_positions: ArrayLike = None,
    kv_positions: ArrayLike = None,
    device: Any = None,
) -> Mask:
    """(B, 1, T, S) prefix-LM mask: keep[b, i, j] iff j < prefix_lengths[b] or j <= i'.

    Every query sees the whole prefix of its example (bidirectional inside the prefix) and the
    keys up to its own aligned position i' = i + offset + shift (causal after it), with shift as
    causal_mask. Each prefix length must be an integer in [0, S]; with kv_positions a key is in the
    prefix when its position is below the prefix length.
    """
    _check_device(device)
    p = arrays.position_args(NUMPY, q_len, kv_len, align, offset, q_positions, kv_positions)
    t, s = check.q_kv_lengths(q_len, kv_len) if p is None else (p.q_len, p.kv_len)
    prefix = _integers("prefix_lengths", prefix_lengths)
    check.ndim("prefix_lengths", prefix.shape, 1, "(B,)")
    if prefix.size:
        check.lengths_in_range("prefix_lengths", int(prefix.min()), int(prefix.max()), s)
    if p is not None:
        i, j = _position_grid(p)
        check.per_example_batch("prefix_lengths", prefix.shape[0], (i.shape, j.shape))
    else:
        i, j = _positions(t, s, check.diagonal(check.aligned_offset(align, t, s, offset), t, s))
    in_prefix = j[..., None, :, :] < prefix.astype(np.int64)[:, None, None, None]
    return in_prefix | (j <= i)[..., None, :, :]


def and_masks(*masks: ArrayLike) -> Mask | None:
    """Keep where every mask keeps (broadcasting). None means "keep everything" and is skipped; with no
    mask left (all None, or no argument) the result is None.

    The masks must broadcast to one shape; the result has that shape.
    """
    return _convert.and_masks(NUMPY, *masks)


def or_masks(*masks: ArrayLike) -> Mask | None:
    """Keep where any mask keeps (broadcasting). None means "keep everything", so any None argument makes
    the result None (Hugging Face's or_masks(bidirectional, causal) keeps all); no argument at all keeps
    nothing: a 0-d False (as flex_attention's and Hugging Face's or of no mask_mods).

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


def from_additive(bias: ArrayLike, *, threshold: Any = "auto") -> Mask:
    """Mask from an additive mask: keep where bias == 0, mask where bias is a fill, refuse anything else.

    A value is a fill when it is <= threshold:
      "auto" (default): -65504, the most negative float16. Every fill a framework writes is at or below it
        (-inf; finfo.min of float16, bfloat16, float32 or float64, as Flax, Hugging Face and torch write;
        -1e9 or -1e30, as tutorials), and it stays so after upcasting (a Hugging Face float16 or bfloat16
        mask read as float32 or float64), while no fill lies between it and 0;
      "min": finfo(bias.dtype).min only (and -inf), for a strict reading of masks made in bias's dtype;
      a negative number: the fill a mask was made with, e.g. threshold=-1e4 for `(1 - m) * -10000`. It is
        rounded to bias.dtype first, as to_additive writes it (fill=-1e4 is -9984 in bfloat16), so
        from_additive(to_additive(m, dtype, fill=x), threshold=x) is m.
    Every other value must be exactly 0 (kept). A value between the threshold and 0, or above 0, could be a
    real bias (ALiBi, relative positions) or a fill smaller than the threshold: it is refused, never
    guessed (pass the fill as threshold=, or a bias as attention(..., bias=...)); a 1/0 multiplicative mask
    converts with from_multiplicative; NaN and +inf are refused, being neither kept nor masking.
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
    threshold: Any = "auto",
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
# position biases (ALiBi)


def alibi_slopes(num_heads: int, *, dtype: Any = "float32", device: Any = None) -> np.ndarray:
    """(H,) ALiBi slopes, one per head (Press et al., "Train Short, Test Long", 2022).

    For H a power of two, the geometric sequence slope[h] = 2^(-8 (h + 1) / H), h = 0..H-1 (2^(-8/H) down
    to 2^-8). For any other H, with P the largest power of two below H: the P slopes of P heads, followed
    by the first H - P of every other slope of 2P heads, 2^(-8 (2i + 1) / (2P)), i = 0, 1, ... (the rule of
    the paper's reference code `get_slopes`, as Hugging Face's build_alibi_tensor). 8 heads: 1/2, 1/4,
    ..., 1/256; 12 heads: those 8, then 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5.
    Computed in float64 and rounded once to dtype (default "float32"; a floating dtype or its name, as
    to_additive's; jax without x64 makes float32).
    """
    _check_device(device)
    h = check.integer("num_heads", num_heads, minimum=1)
    name = NUMPY.produced_dtype(_dtypes.float_dtype("dtype", dtype))
    return np.exp2(_alibi_exponents(h)).astype(_dtypes.numpy_dtype(name))


def _alibi_exponents(num_heads: int) -> np.ndarray:
    """log2 of the slopes, exact (dyadic fractions): -8 (h + 1) / P for the P heads of the largest power of
    two P <= H, then -8 (2i + 1) / (2P) for the remaining H - P."""
    p = 1 << (num_heads.bit_length() - 1)
    first = [-8.0 * (h + 1) / p for h in range(p)]
    rest = [-8.0 * (2 * i + 1) / (2 * p) for i in range(num_heads - p)]
    return np.array(first + rest, dtype=np.float64)


def alibi_bias(
    num_heads: int,
    q_len: int,
    kv_len: int | None = None,
    *,
    align: str = "top_left",
    offset: int = 0,
    dtype: Any = "float32",
    device: Any = None,
) -> np.ndarray:
    """(H, T, S) ALiBi bias, for attention(..., bias=): bias[h, i, j] = -slope[h] * (i' - j) = slope[h] * (j - i'),
    slope = alibi_slopes(H), i' = i + offset + shift the aligned query position (shift as causal_mask:
    0 for "top_left", S - T for "bottom_right").

    A linear penalty on the distance to earlier keys (0 at the query's own position). For keys after the
    query (j > i') the bias is positive: it is meant for causal attention, with causal_mask (the paper's
    use). Hugging Face's build_alibi_tensor adds slope[h] * j instead, which differs by slope[h] * i', a
    constant per row: the weights are the same, the lse is not. kv_len defaults to q_len.
    Computed in float64 (distances exact up to 2**53) and rounded once to dtype (default "float32").
    """
    _check_device(device)
    h, t, s, d = check.alibi_bias_args(num_heads, q_len, kv_len, align, offset)
    name = NUMPY.produced_dtype(_dtypes.float_dtype("dtype", dtype))
    distance = np.arange(s, dtype=np.float64)[None, :] - (np.arange(t, dtype=np.float64)[:, None] + float(d))
    slopes = np.exp2(_alibi_exponents(h))
    return (slopes[:, None, None] * distance).astype(_dtypes.numpy_dtype(name))


# ----------------------------------------------------------------------------------------------
# varlen batches: flash-attn's packed layout
#
# A varlen (packed) batch lays B sequences end to end along one token axis, as flash-attn's
# flash_attn_varlen_func takes them: cu_seqlens (B + 1,) int32 holds their cumulative lengths, so
# sequence b is tokens cu_seqlens[b] .. cu_seqlens[b + 1] - 1.


def cu_seqlens(lengths: ArrayLike) -> np.ndarray:
    """(B + 1,) int32 cumulative sequence lengths: [0, n0, n0 + n1, ..., n0 + ... + n(B-1)].

    lengths: (B,) integers >= 0 (empty sequences allowed) whose total fits int32, the dtype of
    flash-attn's cu_seqlens and of Hugging Face's (F.pad(torch.cumsum(seqlens, dtype=torch.int32), (1, 0))
    in _unpad_input).
    """
    lengths = arrays.sequence_lengths(NUMPY, "lengths", lengths)
    return np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int32)


def segment_ids_from_cu_seqlens(cu_seqlens: ArrayLike, total: int | None = None) -> np.ndarray:
    """(total,) int32 sequence of each packed token: ids[t] = b for cu_seqlens[b] <= t < cu_seqlens[b + 1].

    total defaults to cu_seqlens[-1]; a larger total appends padding tokens (t >= cu_seqlens[-1]) whose
    id is -1: they belong to no sequence (segment_mask(ids[None], pad_id=-1) masks them). An empty
    sequence holds no token, so its index appears nowhere. cu_seqlens: (B + 1,) integers, starting at 0,
    never decreasing. The result's length is total: under jax.jit pass total= (an int).
    """
    cu, last = arrays.cu_seqlens(NUMPY, "cu_seqlens", cu_seqlens)
    n = arrays.packed_total("cu_seqlens", last, "total", total)
    lengths = np.diff(cu.astype(np.int64))
    ids = np.repeat(np.arange(lengths.size), lengths)
    return np.concatenate([ids, np.full(n - ids.size, -1)]).astype(np.int32)


def cu_seqlens_from_segment_ids(segment_ids: ArrayLike, *, num_segments: int | None = None) -> np.ndarray:
    """(B + 1,) int32 cu_seqlens of packed segment ids: cu[b] = the number of tokens whose id is below b.

    The inverse of segment_ids_from_cu_seqlens. segment_ids: (total,) integers, b >= 0 for a token of
    sequence b, non-decreasing (each sequence's tokens contiguous and in order: [0, 1, 0] is refused),
    and -1 for padding, only after every sequence (padding counts in no sequence). B = num_segments,
    by default the largest id + 1; pass it when sequences after the last id are empty, and under jax.jit.
    """
    ids, n = arrays.packed_segment_ids(NUMPY, "segment_ids", segment_ids, num_segments)
    counts = np.bincount(ids[ids >= 0].astype(np.int64), minlength=n)
    return np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int32)


def varlen_mask(
    cu_seqlens_q: ArrayLike,
    cu_seqlens_k: ArrayLike = None,
    *,
    causal: bool = False,
    window: int | tuple[int | None, int | None] | None = None,
    total_q: int | None = None,
    total_k: int | None = None,
) -> Mask:
    """(total_q, total_k) mask of flash-attn's varlen functions: block diagonal over packed sequences.

    Query token i and key token j may attend iff they belong to the same sequence b
    (cu_seqlens_q[b] <= i < cu_seqlens_q[b + 1] and cu_seqlens_k[b] <= j < cu_seqlens_k[b + 1]) and, with
    p = i - cu_seqlens_q[b] and q = j - cu_seqlens_k[b] their positions in it and
    shift = len_k - len_q the difference of its lengths:
      causal=True:          q <= p + shift;
      window=(left, right): p + shift - left <= q <= p + shift + right;
    aligned bottom-right within each sequence, as flash_attn_varlen_func documents (under causal a query
    with p + shift < 0 sees no key: a fully-masked row). Either window side may be None (unbounded); an
    int w means (w, w), as in sliding_window_mask (refmask.conventions maps flash-attn's -1 = unbounded).
    causal and window combine (flash-attn caps the right side at 0 when causal).
    cu_seqlens_k defaults to cu_seqlens_q (self-attention); both are (B + 1,), start at 0, never decrease.
    total_q defaults to cu_seqlens_q[-1], total_k to cu_seqlens_k[-1] (to total_q without cu_seqlens_k);
    larger totals add padding tokens that attend nowhere. They set the shape: under jax.jit pass both.
    """
    cu_q, cu_k, t, s, lo, hi = arrays.varlen_call(NUMPY, cu_seqlens_q, cu_seqlens_k, causal, window, total_q, total_k)
    keep = np.zeros((t, s), bool)
    for b in range(cu_q.shape[0] - 1):
        q0, q1, k0, k1 = int(cu_q[b]), int(cu_q[b + 1]), int(cu_k[b]), int(cu_k[b + 1])
        p, q = np.arange(q1 - q0)[:, None], np.arange(k1 - k0)[None, :]
        d = q - p - ((k1 - k0) - (q1 - q0))
        keep[q0:q1, k0:k1] = (lo <= d) & (d <= hi)
    return keep


def unpad(x: ArrayLike, valid: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(packed, indices, cu_seqlens, max_len): the valid tokens of a padded batch, packed for varlen kernels.

    x: (B, L, ...), any dtype; valid: (B, L) bool, True = a real token. indices (total,) int64 are the
    flat positions b * L + t of the valid tokens in row-major order, packed = x.reshape(B * L, ...)[indices],
    cu_seqlens = cu_seqlens(valid.sum(-1)) and max_len the longest sequence's length as a Python int (0
    when B = 0), as Hugging Face's _unpad_input returns them (indices from torch.nonzero(mask.flatten())).
    The packed length is the number of True in valid, so valid must be concrete (not traced by jax.jit).
    pad(packed, indices, B, L) is the inverse.
    """
    x, valid = arrays.unpad_args(NUMPY, x, valid)
    b, n = valid.shape
    indices = np.flatnonzero(valid).astype(np.int64)
    lengths = valid.sum(axis=-1)
    return x.reshape(b * n, *x.shape[2:])[indices], indices, cu_seqlens(lengths), int(lengths.max(initial=0))


def pad(packed: ArrayLike, indices: ArrayLike, batch: int, max_len: int) -> np.ndarray:
    """(batch, max_len, ...) from packed tokens: row indices[r] of the flat layout is packed[r], zeros elsewhere.

    The inverse of unpad, as Hugging Face's _pad_input: out.reshape(batch * max_len, ...)[indices] = packed.
    packed: (total, ...), any dtype (kept); indices: (total,) distinct integers in [0, batch * max_len).
    batch and max_len are Python ints (they set the shape, so they are static under jax.jit).
    """
    packed, indices, b, n = arrays.pad_args(NUMPY, packed, indices, batch, max_len)
    out = np.zeros((b * n, *packed.shape[1:]), packed.dtype)
    out[indices] = packed
    return out.reshape(b, n, *packed.shape[1:])


# ----------------------------------------------------------------------------------------------
# positions: Hugging Face's position ids and packed-sequence detection


def position_ids_from_padding(valid: ArrayLike) -> np.ndarray:
    """(B, L) int64 position ids of a padded batch: the count of valid tokens up to t, minus 1; 1 at padding.

    pos[b, t] = valid[b, :t + 1].sum() - 1 where valid[b, t], else 1: Hugging Face's rule in generation
    (prepare_inputs_for_generation: position_ids = attention_mask.long().cumsum(-1) - 1, then
    position_ids.masked_fill_(attention_mask == 0, 1)). Each sequence counts 0, 1, 2, ... over its own
    tokens whatever side it is padded on; padding gets 1, which is masked anyway.
    valid: (B, L) bool, True = a real token (a 1/0 attention_mask converts with from_hf(m)[:, 0, 0]).
    """
    valid = _bool_mask("valid", valid)
    check.ndim("valid", valid.shape, 2, "(B, L)")
    return np.where(valid, np.cumsum(valid, axis=-1, dtype=np.int64) - 1, 1)


def positions_in_segments(segment_ids: ArrayLike) -> np.ndarray:
    """(B, L) int64 position of each token within its segment, restarting at 0 at every change of id along L.

    pos[b, t] = t - s, s the first token of the run of equal ids that holds t: the largest s <= t with
    s = 0 or segment_ids[b, s] != segment_ids[b, s - 1]. These are the position ids of a packed batch (each
    sequence numbered from 0); a padding id is one more run. segment_ids: (B, L) integers.
    """
    ids = _integers("segment_ids", segment_ids)
    check.ndim("segment_ids", ids.shape, 2, "(B, L)")
    t = np.arange(ids.shape[1], dtype=np.int64)
    starts = np.ones(ids.shape, bool)
    starts[:, 1:] = ids[:, 1:] != ids[:, :-1]
    return t - np.maximum.accumulate(np.where(starts, t, 0), axis=-1)


def segment_ids_from_positions(position_ids: ArrayLike) -> np.ndarray:
    """(B, L) int64 index of each token's packed sequence, detected from position ids as Hugging Face does.

    ids[b, 0] = 0 and ids[b, t] = ids[b, t - 1] + 1 where position_ids[b, t] != position_ids[b, t - 1] + 1,
    else ids[b, t - 1]: a new sequence starts wherever the position does not grow by exactly 1 (a restart
    at 0, or any other jump). That is transformers' find_packed_sequence_indices (masking_utils.py):
    (torch.diff(position_ids, prepend=position_ids[:, :1] - 1) != 1).cumsum(-1), compared in int64.
    position_ids: (B, L) integers; no sequence spans two rows.
    """
    pos = _integers("position_ids", position_ids)
    check.ndim("position_ids", pos.shape, 2, "(B, L)")
    pos = pos.astype(np.int64)
    starts = np.zeros(pos.shape, np.int64)
    starts[:, 1:] = pos[:, 1:] != pos[:, :-1] + 1
    return np.cumsum(starts, axis=-1)


# ----------------------------------------------------------------------------------------------
# masked softmax and attention


def masked_softmax(
    scores: ArrayLike,
    mask: ArrayLike = None,
    *,
    axis: int = -1,
    fully_masked: str = "zero",
    sinks: ArrayLike = None,
    accuracy: str = "fast",
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

    sinks: one logit z per row that joins the row's denominator and takes no weight itself (attention
    sinks, as gpt-oss; a softmax "offset"): w[j] = exp(x[j] - m) / (exp(z - m) + sum_{k in K} exp(x[k] - m)),
    m = max(z, max_{k in K} x[k]), so a row's weights sum to less than 1. The sink is kept like a score:
    a NaN or +inf sink makes its row NaN, a -inf sink changes nothing. A row with no kept entry has
    weights exactly 0 under every policy, whatever its sink (the sink takes everything): with sinks,
    fully_masked does not apply. Shape: broadcastable to the rows, the scores' shape without `axis`
    ((..., H, T) for (..., H, T, S) scores); when the scores have at least 3 axes and are normalised
    along the last, a 1-D sinks is one logit per head, (H,) = scores.shape[-3] (a logit per query row
    is then (1, T) or (H, T)). dtype: floating, any; rounded to the precision the scores are computed in
    (float32 for float16/bfloat16 scores, else the scores' dtype) before use.

    accuracy: how far float32 weights may be from the correctly rounded ones (the exact weights rounded
    once), on every backend:
      "fast"     (default) the backend's fastest arithmetic: float32 weights may also carry the rounding
                 of x[j] - m, which exp magnifies to up to |x[j] - m| / 2 ULP beyond "accurate"'s bound
                 (the error of the plain softmax(masked_fill(~mask, -inf)); refmask.testing.tolerances.
                 softmax_max_ulp bounds it);
      "accurate" within 4 ULP of the correctly rounded weights, whatever the spread of the scores.
    The argument governs float32 weights only: float64 weights are computed in float64 under both
    (with float64's own |x - m| / 2 ULP rounding, the oracle's included), and float16/bfloat16 ones in
    float32, whose error is far below their ULP. The oracle computes in float64 and rounds its float32,
    float16 and bfloat16 weights once (within 1 ULP) under both.

    scores: floating (float16, bfloat16, float32, float64); the result has scores' dtype and shape.
    mask: bool, broadcastable to scores' shape; None keeps everything.
    """
    call = arrays.softmax_call(NUMPY, scores, mask, axis, fully_masked, sinks, accuracy)
    keep = call.mask
    if keep is None or keep.shape != call.scores.shape:  # np.broadcast_to costs more than a small softmax
        keep = np.broadcast_to(np.ones((), bool) if keep is None else keep, call.scores.shape)
    x = call.scores.astype(np.float64)
    column = _sink_column(call.sinks, call.scores.shape, call.axis, call.scores.dtype)
    return _softmax_kept(x, keep, call.axis, call.fully_masked, column).astype(call.scores.dtype)


def _sink_column(sinks: np.ndarray | None, shape: tuple[int, ...], axis: int, dtype: np.dtype) -> np.ndarray | None:
    """float64 sinks, rounded to the compute precision of `dtype`, shaped as the scores with `axis` of size 1."""
    if sinks is None:
        return None
    compute = _dtypes.numpy_dtype(_dtypes.compute_dtype(dtype.name))
    return arrays.sink_column(NUMPY, sinks, shape, axis).astype(compute).astype(np.float64)


def _softmax_kept(
    x: np.ndarray, keep: np.ndarray, axis: int, fully_masked: str, sinks: np.ndarray | None = None
) -> np.ndarray:
    """masked_softmax's arithmetic in float64 (no rounding to the input dtype).

    x (float64, keep's shape) is overwritten with the weights and returned: every caller passes a
    fresh array of its own, and working in place avoids a full-size temporary at each step.
    sinks: None, or float64 sink logits broadcastable to x's shape with `axis` of size 1.
    """
    any_kept = keep.any(axis=axis, keepdims=True)
    every_row_kept = bool(any_kept.all())  # then the fully-masked fix-ups below have nothing to do
    np.copyto(x, -np.inf, where=~keep)
    with np.errstate(invalid="ignore", over="ignore"):
        # NaN-propagating max over kept entries (and the sink); rows with nothing kept get 0 to stay finite.
        m = x.max(axis=axis, keepdims=True, initial=-np.inf)
        if sinks is not None:
            m = np.maximum(m, sinks)
        if not every_row_kept:
            m = np.where(any_kept, m, 0.0)
        x -= m
        # Masked entries hold exp(-inf) = 0 wherever the row's weights are numbers; where they are
        # not (a kept NaN, +inf or all kept -inf) the whole row is NaN, as the definition says.
        np.exp(x, out=x)
        total = x.sum(axis=axis, keepdims=True)
        if sinks is not None:
            total += np.exp(sinks - m)
        x /= total
    if not every_row_kept:
        fully_masked_value = 0.0 if sinks is not None else arrays.fully_masked_value(fully_masked, x.shape[axis])
        np.copyto(x, fully_masked_value, where=~any_kept)
    return x


def _log_sum_exp(x: np.ndarray, keep: np.ndarray, axis: int, sinks: np.ndarray | None = None) -> np.ndarray:
    """The log of the softmax denominator, float64, `axis` kept with size 1:

    lse = m + log(exp(z - m) + sum_{k in K} exp(x[k] - m)), m = max(z, max_{k in K} x[k]) (z the sink,
    absent without sinks), and lse = m where m is not finite: -inf for a row with no kept entry and no
    sink (whatever the policy) or only -inf, +inf where a kept score or the sink is +inf, NaN where one
    is NaN (as log-sum-exp: the log of the sum of exp over the kept scores and the sink).
    """
    kept = np.where(keep, x, -np.inf)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        m = kept.max(axis=axis, keepdims=True, initial=-np.inf)
        if sinks is not None:
            m = np.maximum(m, sinks)
        finite = np.isfinite(m)
        m0 = np.where(finite, m, 0.0)
        total = np.exp(kept - m0).sum(axis=axis, keepdims=True)
        if sinks is not None:
            total = total + np.exp(sinks - m0)
        return np.where(finite, m0 + np.log(total), m)


def masked_softmax_vjp(
    scores: Any, mask: Any, cotangent: Any, *, axis: int = -1, fully_masked: str = "zero"
) -> np.ndarray:
    """Gradient of sum(cotangent * masked_softmax(scores, mask)) with respect to scores.

    For a row with kept entries and weights w: grad[j] = w[j] * (g[j] - sum_k w[k] g[k]) for kept j,
    and exactly 0 for masked j. A fully-masked row's weights do not depend on the scores under any
    policy, so its gradient is exactly 0 (finite under "zero" and "uniform" as well as "nan").
    """
    scores, mask, axis, fully_masked = arrays.softmax_call(NUMPY, scores, mask, axis, fully_masked)[:4]
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


def _scores(q: np.ndarray, k: np.ndarray, bias: Any, scale: float, softcap: float | None = None) -> np.ndarray:
    """float64 scores _softcap(scale * q @ k^T, softcap) + bias, (..., H, T, S)."""
    k = _repeat_kv_heads(k, q.shape[-3]) if q.ndim >= 3 else k
    s = np.matmul(q.astype(np.float64, copy=False), np.swapaxes(k.astype(np.float64, copy=False), -1, -2))
    s *= scale
    if softcap is not None:
        _softcap(s, softcap)
    if bias is not None:
        s += bias.astype(np.float64, copy=False)
    return s


def _softcap(s: np.ndarray, softcap: float) -> np.ndarray:
    """Logit soft-capping, in place: s = softcap * tanh(s / softcap), so scores stay in (-softcap, softcap)
    (Gemma 2's attn_logit_softcapping, Grok's 30 * tanh(s / 30))."""
    s /= softcap
    np.tanh(s, out=s)
    s *= softcap
    return s


def attention_weights(
    q: ArrayLike,
    k: ArrayLike,
    mask: ArrayLike = None,
    *,
    bias: ArrayLike = None,
    scale: float | None = None,
    softcap: float | None = None,
    sinks: ArrayLike = None,
    fully_masked: str = "zero",
) -> np.ndarray:
    """Attention weights masked_softmax(s, mask, sinks=sinks), (..., H, T, S), of the scores
    s = scale * q @ k^T + bias, or with softcap, s = softcap * tanh(scale * q @ k^T / softcap) + bias.

    q: (..., H, T, D), k: (..., H_kv, S, D) with H a multiple of H_kv (grouped-query attention);
    scale defaults to 1/sqrt(D); bias is an additive float bias (ALiBi: alibi_bias, relative positions)
    broadcastable to the scores, added after the softcap and before the mask (ONNX Attention's and
    Gemma 2's order: the cap bounds q @ k^T alone, and a masked entry stays masked, never becomes -softcap).
    softcap: None (no cap) or a finite number > 0.
    sinks: one logit per row in each softmax denominator (masked_softmax's sinks): (H,), one per query
    head (gpt-oss), or broadcastable to (..., H, T). With sinks a row with no kept key has weights
    exactly 0 under every policy. The result has q's dtype.
    """
    c = arrays.attention_call(NUMPY, {"q": q, "k": k}, mask, bias, scale, fully_masked, softcap=softcap, sinks=sinks)
    keep = np.broadcast_to(np.ones((), bool) if c.mask is None else c.mask, c.shape)
    column = _sink_column(c.sinks, c.shape, -1, c.q.dtype)
    w = _softmax_kept(_scores(c.q, c.k, c.bias, c.scale, c.softcap), keep, -1, c.fully_masked, column)
    return w.astype(c.q.dtype)


def attention(
    q: ArrayLike,
    k: ArrayLike,
    v: ArrayLike,
    mask: ArrayLike = None,
    *,
    bias: ArrayLike = None,
    scale: float | None = None,
    softcap: float | None = None,
    sinks: ArrayLike = None,
    is_causal: bool = False,
    fully_masked: str = "zero",
    return_weights: bool = False,
    return_lse: bool = False,
) -> np.ndarray | tuple[np.ndarray, ...]:
    """Scaled dot-product attention: out = attention_weights(q, k, mask, ...) @ v, (..., H, T, Dv).

    v: (..., H_kv, S, Dv). is_causal=True ands the mask with causal_mask(T, S) (top-left, as torch).
    bias, scale, softcap, sinks: as attention_weights.
    A fully-masked row's output follows its weights: 0 ("zero"), the mean of v ("uniform"), NaN
    ("nan"); with sinks it is 0 under every policy.
    return_weights=True adds the weights, return_lse=True the log-sum-exp: the result is out alone, or
    the tuple of what was asked in the order (out, weights, lse) (return_lse alone gives (out, lse)).
    lse: (..., H, T), the log of each row's softmax denominator in the units of the scores s (after
    scale, softcap and bias), the sink included: lse = m + log(exp(sink - m) + sum_{kept k} exp(s[k] - m)),
    m the largest kept score or sink, so exp(s[j] - lse) is weight j (flash-attn's softmax_lse,
    flex_attention's lse). -inf for a row with no kept key and no sink, whatever the policy; the sink
    for a row with no kept key; +inf / NaN where a kept score (or the sink) is +inf / NaN. dtype float32
    for float16, bfloat16 and float32 inputs, float64 for float64 (flash-attn and flex_attention keep it
    in float32); jax without x64: float32.
    The weights are not rounded before the product: out is the float64 product of the float64 weights,
    rounded once, which is the correctly rounded value unless the sum over keys cancels (then its error
    is float64's relative to max |w * v|, not to out).
    Without weights, query rows are processed in blocks so memory stays far below (T, S) float64.
    """
    c = arrays.attention_call(
        NUMPY, {"q": q, "k": k, "v": v}, mask, bias, scale, fully_masked, is_causal, return_weights,
        softcap=softcap, sinks=sinks, return_lse=return_lse,
    )
    q, k, vv, mask, bias, scale, shape, fully_masked = c.q, c.k, c.v, c.mask, c.bias, c.scale, c.shape, c.fully_masked
    if c.is_causal:
        mask = and_masks(mask, causal_mask(shape[-2], shape[-1]))
    # Keys and values are cast (and repeated for grouped-query attention) once, not once per block.
    if q.ndim >= 3:
        k, vv = _repeat_kv_heads(k, q.shape[-3]), _repeat_kv_heads(vv, q.shape[-3])
    k, vv = k.astype(np.float64), vv.astype(np.float64)
    sinks64 = _sink_column(c.sinks, shape, -1, q.dtype)
    lse_dtype = _dtypes.numpy_dtype(_dtypes.compute_dtype(q.dtype.name))
    t, s = shape[-2], shape[-1]
    block = functools.partial(
        _block_weights, q, k, bias, mask, scale, fully_masked, shape, softcap=c.softcap, sinks=sinks64
    )
    if c.return_weights:
        w, lse = block(0, t, with_lse=c.return_lse)
        return _results((w @ vv).astype(q.dtype), w.astype(q.dtype), lse, lse_dtype)
    rows = max(1, _ATTENTION_BLOCK_ELEMENTS // max(1, math.prod(shape[:-2]) * s))
    out = np.empty((*q.shape[:-1], vv.shape[-1]), dtype=q.dtype)
    lse_all = np.empty(shape[:-1], dtype=lse_dtype) if c.return_lse else None
    for start in range(0, t, rows):
        stop = min(start + rows, t)
        # The weights stay unnamed, so they are freed before the next block's are made.
        w_block, lse = block(start, stop, with_lse=c.return_lse)
        out[..., start:stop, :] = (w_block @ vv).astype(q.dtype)
        del w_block
        if lse_all is not None and lse is not None:
            lse_all[..., start:stop] = lse
    return _results(out, None, lse_all, lse_dtype)


def _results(
    out: np.ndarray, weights: np.ndarray | None, lse: np.ndarray | None, lse_dtype: np.dtype
) -> np.ndarray | tuple[np.ndarray, ...]:
    """out alone, or (out, weights, lse) with only the parts asked for (those not None)."""
    parts = [out] + [x for x in (weights, None if lse is None else lse.astype(lse_dtype)) if x is not None]
    return parts[0] if len(parts) == 1 else tuple(parts)


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
    *,
    softcap: float | None = None,
    sinks: np.ndarray | None = None,
    with_lse: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """float64 weights of query rows start:stop, and with_lse their float64 log-sum-exp (..., H, rows)."""
    q_rows = q[..., start:stop, :]
    block_shape = (*shape[:-2], stop - start, shape[-1])
    keep = _query_rows(mask, start, stop)
    keep = np.broadcast_to(np.ones((), bool) if keep is None else keep, block_shape)
    scores = _scores(q_rows, k, _query_rows(bias, start, stop), scale, softcap)
    sink_rows = _query_rows(sinks, start, stop)
    lse = _log_sum_exp(scores, keep, -1, sink_rows)[..., 0] if with_lse else None
    return _softmax_kept(scores, keep, -1, fully_masked, sink_rows), lse


# ----------------------------------------------------------------------------------------------
# gradients of attention


def attention_vjp(
    q: ArrayLike,
    k: ArrayLike,
    v: ArrayLike,
    mask: ArrayLike,
    d_out: ArrayLike,
    *,
    bias: ArrayLike = None,
    scale: float | None = None,
    softcap: float | None = None,
    sinks: ArrayLike = None,
    fully_masked: str = "zero",
) -> AttentionGrads[np.ndarray]:
    """Gradients of sum(d_out * attention(q, k, v, mask, bias=, scale=, softcap=, sinks=, fully_masked=)).

    Returns AttentionGrads(dq, dk, dv, dbias, dsinks), each of its input's shape and dtype; dbias is None
    without a bias and dsinks None without sinks. With u = scale * q @ k^T, s = c * tanh(u / c) + bias
    (softcap c; s = u + bias without), w the weights (attention_weights; with sinks w[j] = exp(s[j] - m) /
    (exp(sink - m) + sum_k exp(s[k] - m))), sums over a row's kept keys, and G = d_out:
      dv = w^T @ G;  dw = G @ v^T;
      ds[j] = w[j] * (dw[j] - sum_k w[k] dw[k]) at kept j, exactly 0 at masked j;  dbias = ds;
      du = ds * (1 - tanh(u / c)^2) (du = ds without softcap);  dq = scale * du @ k;  dk = scale * du^T @ q;
      dsinks = -p * sum_k w[k] dw[k], p = exp(sink - m) / (the same denominator) = 1 - sum_k w[k].
    Grouped-query heads sum dk and dv over each group into its key/value head; dbias and dsinks are
    summed over the axes along which bias and sinks broadcast ((H,) sinks: all but the head axis).
    A row with no kept key contributes nothing to dq, dk, dbias and dsinks (its weights do not depend
    on the scores), and w^T @ G with its policy's weights to dv: nothing under "zero" or with sinks,
    G / S to every key under "uniform" (its output is the mean of v), and under "nan" NaN to every dv
    entry of its batch item and key/value head (its weights are NaN and NaN * 0 is NaN: what autodiff
    of the forward gives). Everything else is finite wherever the forward is.
    d_out: floating, of the output's shape (..., H, T, Dv) and dtype (q's). Computed in float64 at the
    inputs as attention reads them (sinks rounded to q's compute precision), each gradient rounded
    once to its input's dtype.
    """
    c = arrays.attention_vjp_call(
        NUMPY, {"q": q, "k": k, "v": v}, mask, d_out, bias, scale, fully_masked, softcap, sinks
    )
    a = c.attention
    sink = _sink_column(a.sinks, a.shape, -1, a.q.dtype)  # the sinks as the forward reads them
    heads = a.q.shape[-3] if a.q.ndim >= 3 else None
    q64 = a.q.astype(np.float64)
    k64, v64 = (x.astype(np.float64) if heads is None else _repeat_kv_heads(x, heads).astype(np.float64)
                for x in (a.k, a.v))
    keep = np.broadcast_to(np.ones((), bool) if a.mask is None else a.mask, a.shape)
    u = _scores(q64, k64, None, a.scale)
    s, du_ds = _softcapped(u, a.softcap)
    if a.bias is not None:
        s += a.bias.astype(np.float64)
    if sink is None:
        w, p_sink = _softmax_kept(s, keep, -1, a.fully_masked), None
    else:
        w, p_sink = _softmax_with_sinks(s, keep, sink)
    g = c.d_out.astype(np.float64)
    dv = np.swapaxes(w, -1, -2) @ g
    ds, row_dot = _softmax_rows_vjp(w, keep, g @ np.swapaxes(v64, -1, -2))
    du = ds if du_ds is None else ds * du_ds
    dq = a.scale * (du @ k64)
    dk = a.scale * (np.swapaxes(du, -1, -2) @ q64)
    if heads is not None:
        dk, dv = _sum_kv_groups(dk, a.k.shape[-3]), _sum_kv_groups(dv, a.k.shape[-3])
    dbias = None if a.bias is None else _sum_to(ds, a.bias.shape).astype(a.bias.dtype)
    dsinks = None
    if a.sinks is not None and p_sink is not None:
        column_shape = check.sinks_shape(a.sinks.shape, a.shape)
        dsinks = _sum_to(-p_sink * row_dot, column_shape).reshape(a.sinks.shape).astype(a.sinks.dtype)
    return AttentionGrads(dq.astype(a.q.dtype), dk.astype(a.k.dtype), dv.astype(a.v.dtype), dbias, dsinks)


def _softcapped(u: np.ndarray, softcap: float | None) -> tuple[np.ndarray, np.ndarray | None]:
    """c * tanh(u / c) and its derivative 1 - tanh(u / c)^2 (u itself and None without a cap)."""
    if softcap is None:
        return u, None
    t = np.tanh(u / softcap)
    return softcap * t, 1.0 - t * t


def _softmax_with_sinks(s: np.ndarray, keep: np.ndarray, sink: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 weights with a sink logit in each row's denominator, and the sink's share p of it (a column).

    w[j] = exp(s[j] - m) / (exp(sink - m) + sum_k exp(s[k] - m)) over kept j, k, m the largest of the
    sink and the kept scores; p = exp(sink - m) / (the same). A row with no kept key: w = 0, p = 0.
    sink: float64, broadcastable to s with the key axis of size 1.
    """
    any_kept = keep.any(axis=-1, keepdims=True)
    x = np.where(keep, s, -np.inf)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        m = np.where(any_kept, np.maximum(x.max(axis=-1, keepdims=True, initial=-np.inf), sink), 0.0)
        e, e_sink = np.exp(x - m), np.exp(sink - m)
        z = e_sink + e.sum(axis=-1, keepdims=True)
        w, p = e / z, e_sink / z
    return np.where(any_kept, w, 0.0), np.where(any_kept, p, 0.0)


def _softmax_rows_vjp(w: np.ndarray, keep: np.ndarray, dw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ds = w * (dw - sum_k w[k] dw[k]) over kept entries, exactly 0 at masked entries and on rows with
    no kept key, and the row sums sum_k w[k] dw[k] (float64)."""
    depends = keep & keep.any(axis=-1, keepdims=True)
    wk = np.where(depends, w, 0.0)
    row_dot = np.sum(wk * dw, axis=-1, keepdims=True)
    return np.where(depends, wk * (dw - row_dot), 0.0), row_dot


def _sum_kv_groups(x: np.ndarray, kv_heads: int) -> np.ndarray:
    """(..., H, A, B) summed over each group of H // H_kv query heads into its key/value head."""
    return x.reshape(*x.shape[:-3], kv_heads, x.shape[-3] // kv_heads, *x.shape[-2:]).sum(axis=-3)


def _sum_to(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """x summed over the axes along which an array of `shape` broadcasts to x's shape, as `shape`."""
    lead = x.ndim - len(shape)
    x = x.sum(axis=tuple(range(lead)))
    return x.sum(axis=tuple(i for i, n in enumerate(shape) if n == 1), keepdims=True).reshape(shape)


_backends.loaded(__name__)  # last: the registry hands this module out only once it is complete
