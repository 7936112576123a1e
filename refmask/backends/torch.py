"""The PyTorch backend: refmask's whole public API in idiomatic torch, held against the oracle.

Conventions (the oracle's, see refmask/oracle.py for every definition):

- a mask is a torch.bool tensor, True = may attend, at its smallest broadcastable shape;
- masks are created on `device=` when given, else on the device of the tensors they are built from,
  else on torch's default device; nothing is copied to the host on the hot path (masked_softmax,
  attention_weights, attention);
- inputs may be tensors, NumPy arrays or lists; NumPy inputs go to the device of the tensor inputs;
- float16 / bfloat16 scores are computed and normalised in float32 and rounded once to the input
  dtype; float32 and float64 are computed in their own precision, except masked_softmax of float32
  scores with accuracy="accurate", normalised in float64 and rounded once (within 1 ULP of the
  correctly rounded weights);
- fully-masked rows follow `fully_masked` ("zero", "uniform", "nan") and their gradient is exactly 0;
  masked entries get exactly 0 gradient whatever their scores hold. attention_vjp is autograd of this
  backend's attention on detached copies of the inputs (first order).

The hot path of masked_softmax is the plain-torch idiom `softmax(torch.where(mask, scores, -inf))`
(the softmax in float64 for float32 with accuracy="accurate", see _softmax) plus a fix of the fully-masked rows only
(found from the mask, at the mask's own shape): on CPU (outside torch.compile / torch.func
transforms) the fix is skipped when no row is fully masked (a free check there); elsewhere it is one
broadcast masked_fill_ (a `where` when autograd records), so no device synchronisation happens.
Without autograd, temporaries are reused in place (the masked scores become the weights).
attention runs on SDPA's fused kernels where refmask's promises hold there (_fused_attention).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .. import _arrays as arrays
from .. import _backends, _dtypes
from .. import _validate as check
from . import _torch_ops
from ._torch_ops import TORCH as OPS  # the array operations refmask's shared code runs on, for this backend

Mask = torch.Tensor

_FLOATING = tuple(getattr(torch, name) for name in _dtypes.FLOAT_DTYPES)
_WIDE_UNSIGNED = (torch.uint16, torch.uint32, torch.uint64)
# ----------------------------------------------------------------------------------------------
# inputs (parsed by refmask/_arrays.py over this backend's OPS, shared by every backend)

to_numpy = _torch_ops.to_numpy


def from_numpy(x: Any) -> torch.Tensor:
    """A CPU tensor with x's values and dtype (ml_dtypes.bfloat16 -> torch.bfloat16, bit for bit)."""
    return _torch_ops.from_numpy(np.asarray(x))


def _tensor(x: Any, device: Any = None) -> torch.Tensor:
    return OPS.asarray(x, device)


def _call_device(named: dict[str, Any], device: Any = None) -> torch.device | None:
    """`device`, or else the device the named tensors share; tensors on two devices are refused, naming them."""
    found = OPS.device_of(named)
    return found if device is None else device


def _bool_mask(name: str, mask: Any, device: Any = None) -> torch.Tensor:
    return arrays.bool_mask(OPS, name, mask, device)


def _integers(name: str, x: Any, device: Any = None) -> torch.Tensor:
    return arrays.integers(OPS, name, x, device)


_tracing = _torch_ops.tracing


def _host_checks(*xs: torch.Tensor | None) -> bool:
    """Data-dependent argument checks run except while tracing and on the meta device (they need the values)."""
    return OPS.concrete(*xs)


def _lengths(name: str, lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """0 <= lengths <= max_len, with one read of (min, max) (a sync on an accelerator); returned as int64,
    in which positions and max_len - lengths never wrap (int8 lengths, max_len 200)."""
    if lengths.numel() and _host_checks(lengths):
        if lengths.dtype in _WIDE_UNSIGNED:  # torch has no min/max for them: read on the host
            host = to_numpy(lengths)
            lo, hi = int(host.min()), int(host.max())
        else:
            lo, hi = (int(v) for v in torch.stack([lengths.min(), lengths.max()]).tolist())
        check.lengths_in_range(name, lo, hi, max_len)
    return lengths.to(torch.int64)


# ----------------------------------------------------------------------------------------------
# masks from positions


def _positions(q_len: int, kv_len: int, shift: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Query positions i + shift (T, 1) and key positions j (S,); shift is small (check.diagonal, check.chunks)."""
    device = OPS.device(device)
    i = torch.arange(q_len, device=device).unsqueeze(-1) + shift
    j = torch.arange(kv_len, device=device)
    return i, j


def _position_grid(p: arrays.PositionArgs, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Query positions (..., T, 1) and key positions (..., 1, S) from position arrays, in int64."""
    q = torch.arange(p.q_len, device=device) + p.shift if p.q_positions is None else p.q_positions.to(torch.int64)
    if p.offset is not None:
        q = q + p.offset.to(torch.int64)[:, None]
    kv = torch.arange(p.kv_len, device=q.device) if p.kv_positions is None else p.kv_positions.to(torch.int64)
    return q[..., :, None], kv[..., None, :]


def _position_args(q_len: Any, kv_len: Any, align: Any, offset: Any, q_positions: Any, kv_positions: Any,
                   device: Any) -> tuple[arrays.PositionArgs | None, Any]:
    device = OPS.device(device)
    p = arrays.position_args(OPS, q_len, kv_len, align, offset, q_positions, kv_positions, device)
    if p is not None and device is None:
        device = next(a.device for a in (p.offset, p.q_positions, p.kv_positions) if a is not None)
    return p, device


def _per_example(keep: torch.Tensor) -> torch.Tensor:
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
) -> Mask:
    p, device = _position_args(q_len, kv_len, align, offset, q_positions, kv_positions, device)
    if p is not None:
        i, j = _position_grid(p, device)
        return _per_example(j <= i)
    t, s = check.q_kv_lengths(q_len, kv_len)
    i, j = _positions(t, s, check.diagonal(check.aligned_offset(align, t, s, offset), t, s), device)
    return j <= i


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
) -> Mask:
    window = check.window(window)
    p, device = _position_args(q_len, kv_len, align, offset, q_positions, kv_positions, device)
    if p is not None:
        i, j = _position_grid(p, device)
        left, right = check.position_window(window)
        diff = j - i
        keep = torch.ones(diff.shape, dtype=torch.bool, device=diff.device)
        if left is not None:
            keep &= diff >= -left
        if right is not None:
            keep &= diff <= right
        return _per_example(keep)
    t, s = check.q_kv_lengths(q_len, kv_len)
    lo, hi = check.window_diagonals(check.aligned_offset(align, t, s, offset), window, t, s)
    i, j = _positions(t, s, 0, device)
    return (j >= i + lo) & (j <= i + hi)


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
) -> Mask:
    c = check.integer("chunk_size", chunk_size, minimum=1)
    p, device = _position_args(q_len, kv_len, align, offset, q_positions, kv_positions, device)
    if p is not None:
        i, j = _position_grid(p, device)
        c = check.position_chunk(c)
        return _per_example(torch.div(i, c, rounding_mode="floor") == torch.div(j, c, rounding_mode="floor"))
    t, s = check.q_kv_lengths(q_len, kv_len)
    c, d = check.chunks(check.aligned_offset(align, t, s, offset), c, t, s)
    i, j = _positions(t, s, d, device)
    # floor division, as the oracle (negative aligned positions fall in chunk -1, -2, ...)
    return torch.div(i, c, rounding_mode="floor") == torch.div(j, c, rounding_mode="floor")


# ----------------------------------------------------------------------------------------------
# masks from data


def padding_mask(lengths: Any, max_len: int, *, side: str = "right", device: Any = None) -> Mask:
    max_len = check.integer("max_len", max_len, minimum=0)
    check.choice("side", side, check.SIDES)
    lengths = _lengths("lengths", _integers("lengths", lengths), max_len)  # checked where it is (NumPy: host)
    lengths = _tensor(lengths, device)
    position = torch.arange(max_len, device=lengths.device)
    if side == "right":
        return position < lengths.unsqueeze(-1)
    return position >= max_len - lengths.unsqueeze(-1)


def padding_mask_from_ids(ids: Any, pad_id: int, *, device: Any = None) -> Mask:
    ids = _integers("ids", ids, device)
    pad = check.pad_id(pad_id, _dtypes.name_of(ids.dtype))
    return torch.ones_like(ids, dtype=torch.bool) if pad is None else ids != pad


def attention_padding_mask(kv_valid: Any, q_valid: Any = None, *, device: Any = None) -> Mask:
    device = _call_device({"kv_valid": kv_valid, "q_valid": q_valid}, device)
    kv_valid = _bool_mask("kv_valid", kv_valid, device)
    check.ndim("kv_valid", tuple(kv_valid.shape), 2, "(B, S)")
    keep = kv_valid[:, None, None, :]
    if q_valid is None:
        return keep
    q_valid = _bool_mask("q_valid", q_valid, device)
    check.ndim("q_valid", tuple(q_valid.shape), 2, "(B, T)")
    check.same_batch("q_valid", tuple(q_valid.shape), "kv_valid", tuple(kv_valid.shape))
    return q_valid[:, None, :, None] & keep


def segment_mask(
    q_segment_ids: Any, kv_segment_ids: Any = None, *, pad_id: int | None = None, device: Any = None
) -> Mask:
    device = _call_device({"q_segment_ids": q_segment_ids, "kv_segment_ids": kv_segment_ids}, device)
    q_seg = _integers("q_segment_ids", q_segment_ids, device)
    kv_seg = q_seg if kv_segment_ids is None else _integers("kv_segment_ids", kv_segment_ids, device)
    check.ndim("q_segment_ids", tuple(q_seg.shape), 2, "(B, T)")
    check.ndim("kv_segment_ids", tuple(kv_seg.shape), 2, "(B, S)")
    check.same_batch("q_segment_ids", tuple(q_seg.shape), "kv_segment_ids", tuple(kv_seg.shape))
    common = check.common_integer_dtype(
        ("q_segment_ids", "kv_segment_ids"), (_dtypes.name_of(q_seg.dtype), _dtypes.name_of(kv_seg.dtype))
    )
    q, kv = q_seg[:, None, :, None], kv_seg[:, None, None, :]
    keep = q.to(getattr(torch, common)) == kv.to(getattr(torch, common))
    if pad_id is not None:
        # A pad_id outside an array's dtype matches none of its ids (no wrap, no overflow).
        q_pad, kv_pad = check.pad_id(pad_id, _dtypes.name_of(q.dtype)), check.pad_id(pad_id, _dtypes.name_of(kv.dtype))
        if q_pad is not None:
            keep = keep & (q != q_pad)
        if kv_pad is not None:
            keep = keep & (kv != kv_pad)
    return keep


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
) -> Mask:
    p, device = _position_args(q_len, kv_len, align, offset, q_positions, kv_positions, device)
    t, s = check.q_kv_lengths(q_len, kv_len) if p is None else (p.q_len, p.kv_len)
    prefix = _integers("prefix_lengths", prefix_lengths)
    check.ndim("prefix_lengths", tuple(prefix.shape), 1, "(B,)")
    prefix = _tensor(_lengths("prefix_lengths", prefix, s), device)
    if p is not None:
        i, j = _position_grid(p, prefix.device)
        check.per_example_batch("prefix_lengths", prefix.shape[0], (tuple(i.shape), tuple(j.shape)))
        return (j[..., None, :, :] < prefix[:, None, None, None]) | (j <= i)[..., None, :, :]
    i, j = _positions(t, s, check.diagonal(check.aligned_offset(align, t, s, offset), t, s), prefix.device)
    return (j < prefix[:, None, None, None]) | (j <= i)


# ----------------------------------------------------------------------------------------------
# converters between conventions


# ----------------------------------------------------------------------------------------------
# varlen batches and positions
#
# Results are made on the device of their array arguments. Values that set a result's shape
# (cu_seqlens[-1], the count of valid tokens) are read on the host (one synchronisation), unless the
# size is given (total=, total_q=, total_k=, num_segments=); under torch.compile it must be.


def _cu_seqlens(name: str, x: Any) -> tuple[torch.Tensor, int | None]:
    return arrays.cu_seqlens(OPS, name, x)


def _token_segments(cu: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each of `total` packed tokens t: its sequence (-1 from cu[-1] on), its position t - cu[b] in it,
    and b clipped to a real sequence (for gathers; cu holds at least one sequence)."""
    cu = cu.to(torch.int64)
    t = torch.arange(total, device=cu.device)
    b = (torch.searchsorted(cu, t, right=True) - 1).clamp(0, cu.shape[0] - 2)
    return torch.where(t < cu[-1], b, -1), t - cu[b], b


def cu_seqlens(lengths: Any) -> torch.Tensor:
    lengths = arrays.sequence_lengths(OPS, "lengths", lengths)
    counts = torch.cumsum(lengths.to(torch.int64), dim=0).to(torch.int32)
    return torch.nn.functional.pad(counts, (1, 0))


def segment_ids_from_cu_seqlens(cu_seqlens: Any, total: int | None = None) -> torch.Tensor:
    cu, last = _cu_seqlens("cu_seqlens", cu_seqlens)
    n = arrays.packed_total("cu_seqlens", last, "total", total)
    if cu.shape[0] == 1:
        return torch.full((n,), -1, dtype=torch.int32, device=cu.device)
    ids, _, _ = _token_segments(cu, n)
    return ids.to(torch.int32)


def cu_seqlens_from_segment_ids(segment_ids: Any, *, num_segments: int | None = None) -> torch.Tensor:
    ids, n = arrays.packed_segment_ids(OPS, "segment_ids", segment_ids, num_segments)
    ids = ids.to(torch.int64)
    # Padding (-1) sorts after every sequence as n: the ids are then sorted, and cu[b] counts those below b.
    ordered = torch.where(ids < 0, n, ids)
    bounds = torch.arange(n + 1, device=ids.device)
    return torch.searchsorted(ordered, bounds).to(torch.int32)


def varlen_mask(
    cu_seqlens_q: Any,
    cu_seqlens_k: Any = None,
    *,
    causal: bool = False,
    window: int | tuple[int | None, int | None] | None = None,
    total_q: int | None = None,
    total_k: int | None = None,
) -> Mask:
    cu_q, cu_k, t, s, lo, hi = arrays.varlen_call(OPS, cu_seqlens_q, cu_seqlens_k, causal, window, total_q, total_k)
    if cu_q.shape[0] == 1:  # no sequence: every token is padding
        return torch.zeros((t, s), dtype=torch.bool, device=cu_q.device)
    seg_q, p, b = _token_segments(cu_q, t)
    seg_k, q, _ = _token_segments(cu_k, s)
    cu_q, cu_k = cu_q.to(torch.int64), cu_k.to(torch.int64)
    shift = (cu_k[b + 1] - cu_k[b]) - (cu_q[b + 1] - cu_q[b])  # len_k - len_q of each query's sequence
    d = q[None, :] - (p + shift)[:, None]
    same = (seg_q[:, None] == seg_k[None, :]) & (seg_q >= 0)[:, None]
    return same & (d >= lo) & (d <= hi)


def unpad(x: Any, valid: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    x, valid = arrays.unpad_args(OPS, x, valid)
    b, n = valid.shape
    indices = torch.nonzero(valid.flatten(), as_tuple=False).flatten()
    lengths = valid.sum(dim=-1, dtype=torch.int32)
    max_len = int(lengths.max()) if b else 0
    return x.reshape(b * n, *x.shape[2:])[indices], indices, cu_seqlens(lengths), max_len


def pad(packed: Any, indices: Any, batch: int, max_len: int) -> torch.Tensor:
    packed, indices, b, n = arrays.pad_args(OPS, packed, indices, batch, max_len)
    rows = tuple(packed.shape[1:])
    # int64 indices: index_put reads a uint8 or bool index tensor as a mask.
    out = packed.new_zeros((b * n, *rows)).index_put((indices.to(torch.int64),), packed)
    return out.reshape(b, n, *rows)


def position_ids_from_padding(valid: Any) -> torch.Tensor:
    valid = _bool_mask("valid", valid)
    check.ndim("valid", tuple(valid.shape), 2, "(B, L)")
    return (valid.cumsum(dim=-1, dtype=torch.int64) - 1).masked_fill(~valid, 1)


def positions_in_segments(segment_ids: Any) -> torch.Tensor:
    ids = _integers("segment_ids", segment_ids).to(torch.int64)
    check.ndim("segment_ids", tuple(ids.shape), 2, "(B, L)")
    t = torch.arange(ids.shape[1], device=ids.device)
    starts = torch.ones(ids.shape, dtype=torch.bool, device=ids.device)
    starts[:, 1:] = ids[:, 1:] != ids[:, :-1]
    return t - torch.cummax(torch.where(starts, t, 0), dim=1).values


def segment_ids_from_positions(position_ids: Any) -> torch.Tensor:
    pos = _integers("position_ids", position_ids)
    check.ndim("position_ids", tuple(pos.shape), 2, "(B, L)")
    pos = pos.to(torch.int64)
    # transformers' find_packed_sequence_indices, in int64.
    diff = torch.diff(pos, dim=-1, prepend=pos[:, :1] - 1)
    return (diff != 1).cumsum(dim=-1)


# ----------------------------------------------------------------------------------------------
# position biases (ALiBi)


def _alibi_slopes(num_heads: int, device: torch.device | None) -> torch.Tensor:
    """2^e per head: e = -8 h / P for h = 1..P (P the largest power of two <= H), then -8 (2i + 1) / (2P).

    A table of H constants, made on the host from Python floats (as the paper's code makes them), in
    float64 (float32 on MPS, which has no float64).
    """
    dtype = torch.float32 if device is not None and device.type == "mps" else torch.float64
    p = 1 << (num_heads.bit_length() - 1)
    exponents = [-8.0 * h / p for h in range(1, p + 1)] + [-4.0 * (2 * i + 1) / p for i in range(num_heads - p)]
    return torch.tensor([2.0**e for e in exponents], dtype=dtype, device=device)


def alibi_slopes(num_heads: int, *, dtype: Any = "float32", device: Any = None) -> torch.Tensor:
    h = check.integer("num_heads", num_heads, minimum=1)
    name = _dtypes.float_dtype("dtype", dtype)
    return _alibi_slopes(h, OPS.device(device)).to(getattr(torch, name))


def alibi_bias(
    num_heads: int,
    q_len: int,
    kv_len: int | None = None,
    *,
    align: str = "top_left",
    offset: int = 0,
    dtype: Any = "float32",
    device: Any = None,
) -> torch.Tensor:
    h, t, s, d = check.alibi_bias_args(num_heads, q_len, kv_len, align, offset)
    name = _dtypes.float_dtype("dtype", dtype)
    slopes = _alibi_slopes(h, OPS.device(device))
    i = torch.arange(t, dtype=slopes.dtype, device=slopes.device)
    j = torch.arange(s, dtype=slopes.dtype, device=slopes.device)
    distance = j[None, :] - (i[:, None] + float(d))
    return (slopes[:, None, None] * distance).to(getattr(torch, name))


# ----------------------------------------------------------------------------------------------
# masked softmax and attention


# A table, not a cache decorator: torch.compile traces a dict lookup, and warns about lru_cache.
_COMPUTE_DTYPES = {getattr(torch, n): getattr(torch, _dtypes.compute_dtype(n)) for n in _dtypes.FLOAT_DTYPES}


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16 / bfloat16 accumulate in float32; float32 and float64 in themselves."""
    return _COMPUTE_DTYPES[dtype]


_ACCURATE_BLOCK = 1 << 16  # elements per float64 block: a block stays in cache between its passes


def _softmax(t: torch.Tensor, axis: int, *, accurate: bool, into: bool) -> torch.Tensor:
    """softmax of t along `axis`; into=True: written into t (no autograd, contiguous, last axis).

    accurate=True, for float32: normalised in float64 and rounded once, so within 1 ULP of the
    correctly rounded weights; float32 arithmetic is off by up to |x - max| / 2 ULP (the rounding of
    x - max, which exp magnifies). In place on the host, rows go through float64 in blocks that stay
    in cache, so it costs no more memory traffic than the float32 softmax.
    """
    if not (accurate and t.dtype == torch.float32):
        return torch.softmax(t, axis, out=t) if into else torch.softmax(t, axis)
    if not into:
        return torch.softmax(t, axis, dtype=torch.float64).to(torch.float32)
    if t.numel() == 0:
        return t
    rows = t.view(-1, t.shape[-1])
    n = max(1, _ACCURATE_BLOCK // t.shape[-1])
    if rows.shape[0] <= n:
        return t.copy_(torch.softmax(t, -1, dtype=torch.float64))
    block = torch.empty((n, t.shape[-1]), dtype=torch.float64)
    for start in range(0, rows.shape[0], n):
        r = rows[start : start + n]
        b = block[: r.shape[0]]
        r.copy_(torch.softmax(b.copy_(r), -1, out=b))
    return t


def _rows_kept(keep: torch.Tensor, ndim: int, axis: int) -> torch.Tensor:
    """Whether each row along `axis` of `ndim`-D scores keeps a key (axis kept, size 1): a row is fully
    masked iff its mask row has no True, so the mask is reduced at its own (small) shape."""
    k = keep.reshape((1,) * (ndim - keep.ndim) + tuple(keep.shape)) if keep.ndim < ndim else keep
    return k.any(dim=axis, keepdim=True) if k.ndim else k


def _softmax_kept(
    x: torch.Tensor, keep: torch.Tensor | None, axis: int, policy: str, *, owned: bool, accurate: bool = False
) -> torch.Tensor:
    """masked softmax of x (already in the compute dtype) along `axis`; keep broadcasts to x.

    owned=True: x is a temporary of ours that may be overwritten. accurate: as _softmax.
    """
    if keep is None:
        return _softmax(x, axis, accurate=accurate, into=False)
    axis %= x.ndim
    grad = torch.is_grad_enabled() and x.requires_grad
    tracing = _tracing(x, keep)
    host = not tracing and x.device.type == "cpu"
    # where's (and masked_fill's) backward gives masked entries exactly 0 whatever the softmax's gradient
    # is there (NaN in a fully-masked row); in place on a temporary of ours is autograd-safe.
    t = x.masked_fill_(~keep, -math.inf) if owned and not tracing else torch.where(keep, x, -math.inf)
    # In place over our temporary where it can be: one allocation less (first-touch page faults on the host).
    into = host and not grad and axis == t.ndim - 1 and t.is_contiguous()
    w = _softmax(t, axis, accurate=accurate, into=into)
    if policy == "nan":
        return w  # the softmax of a row of -inf is already NaN
    any_kept = _rows_kept(keep, x.ndim, axis)
    if host and bool(any_kept.all()):
        return w  # on the host this check is free: no row is fully masked, nothing to fix
    value = arrays.fully_masked_value(policy, x.shape[axis])
    if grad or tracing:
        return torch.where(any_kept, w, value)
    return w.masked_fill_(~any_kept, value)


def masked_softmax(
    scores: Any,
    mask: Any = None,
    *,
    axis: int = -1,
    fully_masked: str = "zero",
    sinks: Any = None,
    accuracy: str = "fast",
) -> torch.Tensor:
    c = arrays.softmax_call(OPS, scores, mask, axis, fully_masked, sinks, accuracy)
    # float16 / bfloat16 compute in float32, whose error their ULPs dwarf: only float32 scores differ.
    accurate = c.accuracy == "accurate" and c.scores.dtype == torch.float32
    if accurate and c.scores.device.type == "mps":
        raise ValueError('accuracy="accurate" needs float64 arithmetic, which torch lacks on mps; use "fast"')
    compute = _compute_dtype(c.scores.dtype)
    x = c.scores if compute == c.scores.dtype else c.scores.to(compute)
    if c.sinks is not None:
        sink = arrays.sink_column(OPS, c.sinks, tuple(c.scores.shape), c.axis)
        w, _ = _softmax_with_sinks(x, c.mask, c.axis, sink.to(x.dtype), with_lse=False, accurate=accurate)
        return w.to(c.scores.dtype)
    w = _softmax_kept(x, c.mask, c.axis, c.fully_masked, owned=x is not c.scores, accurate=accurate)
    return w if w.dtype == c.scores.dtype else w.to(c.scores.dtype)


def _softmax_with_sinks(
    x: torch.Tensor,
    keep: torch.Tensor | None,
    axis: int,
    sink: torch.Tensor,
    *,
    with_lse: bool,
    accurate: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """masked softmax of x along `axis` with a sink logit per row (broadcastable to x with `axis` of size 1),
    and with_lse its log-sum-exp (axis kept, size 1): gpt-oss's idiom, the sink as one more kept column
    whose weight is dropped. A row that keeps no key gets weights 0, whatever its sink. accurate: as _softmax."""
    axis %= x.ndim
    t = x if keep is None else x.masked_fill(~keep, -math.inf)
    column_shape = list(t.shape)
    column_shape[axis] = 1
    full = torch.cat([t, sink.expand(column_shape)], dim=axis)
    w = _softmax(full, axis, accurate=accurate, into=False).narrow(axis, 0, t.shape[axis])
    lse = torch.logsumexp(full, axis, keepdim=True) if with_lse else None
    if keep is not None:
        w = torch.where(_rows_kept(keep, x.ndim, axis), w, 0.0)
    return w, lse


def _log_sum_exp(s: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """The log of each row's softmax denominator over the kept scores (last axis), -inf for a row that keeps none."""
    return torch.logsumexp(s if keep is None else s.masked_fill(~keep, -math.inf), -1)


def _grouped(q: torch.Tensor, h_kv: int) -> torch.Tensor:
    """(..., H, T, D) -> (..., H_kv, H // H_kv, T, D): query head h reads key/value head h // G."""
    return torch.unflatten(q, -3, (h_kv, q.shape[-3] // h_kv))


def _scores(
    q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None, scale: float, softcap: float | None = None
) -> torch.Tensor:
    """softcap * tanh(scale * q @ k^T / softcap) + bias (without softcap: scale * q @ k^T + bias) in the
    compute dtype, (..., H, T, S). Grouped-query heads share k by broadcasting (no copy of k)."""
    ct = _compute_dtype(q.dtype)
    q, k = q.to(ct), k.to(ct)
    if q.ndim >= 3 and k.shape[-3] != q.shape[-3]:
        s = torch.matmul(_grouped(q, k.shape[-3]), k.unsqueeze(-3).transpose(-1, -2)).flatten(-4, -3)
    else:
        s = torch.matmul(q, k.transpose(-1, -2))
    # s is a fresh temporary: scale (and bias) in place; autograd does not need s itself.
    s = s.mul_(scale) if scale != 1.0 else s
    if softcap is not None:
        if torch.is_grad_enabled() and s.requires_grad:
            s = torch.tanh(s.div_(softcap)).mul(softcap)  # tanh's backward reads its output: not in place
        else:
            s = s.div_(softcap).tanh_().mul_(softcap)
    if bias is not None:
        s = s.add_(bias.to(ct))
    return s


def _weights(
    q: torch.Tensor,
    k: torch.Tensor,
    keep: torch.Tensor | None,
    bias: torch.Tensor | None,
    scale: float,
    fully_masked: str,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    with_lse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention weights in the compute dtype, and with_lse their log-sum-exp (..., H, T) (else None).
    sinks: as checked by arrays.checked_sinks (any floating dtype)."""
    s = _scores(q, k, bias, scale, softcap)
    if sinks is not None:
        sink = arrays.sink_column(OPS, sinks, tuple(s.shape)).to(s.dtype)
        w, lse = _softmax_with_sinks(s, keep, -1, sink, with_lse=with_lse)
        return w, None if lse is None else lse.squeeze(-1)
    lse = _log_sum_exp(s, keep) if with_lse else None  # before the softmax, which may overwrite s
    return _softmax_kept(s, keep, -1, fully_masked, owned=True), lse


def _apply_values(w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    v = v.to(w.dtype)
    if v.ndim >= 3 and w.ndim >= 3 and v.shape[-3] != w.shape[-3]:
        return torch.matmul(_grouped(w, v.shape[-3]), v.unsqueeze(-3)).flatten(-4, -3)
    return torch.matmul(w, v)


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
) -> torch.Tensor:
    c = arrays.attention_call(OPS, {"q": q, "k": k}, mask, bias, scale, fully_masked, softcap=softcap, sinks=sinks)
    w, _ = _weights(c.q, c.k, c.mask, c.bias, c.scale, c.fully_masked, c.softcap, c.sinks)
    return w.to(c.q.dtype)


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
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    c = arrays.attention_call(
        OPS, {"q": q, "k": k, "v": v}, mask, bias, scale, fully_masked, is_causal, return_weights,
        softcap=softcap, sinks=sinks, return_lse=return_lse,
    )
    if not (c.return_weights or c.return_lse or c.softcap is not None or c.sinks is not None):
        out = _fused_attention(c.q, c.k, c.v, c.mask, c.bias, c.scale, c.fully_masked, c.is_causal)
        if out is not None:
            return out
    keep = c.mask
    if c.is_causal:
        causal = causal_mask(c.shape[-2], c.shape[-1], device=c.q.device)
        keep = causal if keep is None else keep & causal
    return _attend(
        c.q, c.k, c.v, keep, c.bias, c.scale, c.fully_masked, c.return_weights,
        softcap=c.softcap, sinks=c.sinks, return_lse=c.return_lse,
    )


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    keep: torch.Tensor | None,
    bias: torch.Tensor | None,
    scale: float,
    fully_masked: str,
    return_weights: bool,
    *,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    w, lse = _weights(q, k, keep, bias, scale, fully_masked, softcap, sinks, return_lse)
    out = _apply_values(w, v).to(q.dtype)
    parts = [out] + ([w.to(q.dtype)] if return_weights else []) + ([lse] if lse is not None else [])
    return parts[0] if len(parts) == 1 else tuple(parts)


# ----------------------------------------------------------------------------------------------
# attention on SDPA's fused kernels
#
# Checked for the pinned torch, on CPU (flash and math kernels; tests/test_torch_backend.py keeps the
# check): a row whose keys are all masked (a bool mask, or -inf in a float mask) gets output 0 and a
# finite gradient, exactly 0 for the scores it does not see. So "zero" needs no fix, "uniform" and
# "nan" are a fix of those rows only, found from the mask at its own shape. SDPA adds the mask to the
# scores, so a NaN or inf anywhere in q, k, v or a kept bias entry could reach kept rows: such calls
# take the math path (_attend), as do calls the kernels cannot serve with refmask's promises.

_FUSED_ATTENTION = True  # private switch: the tests run every case through both routes


def _all_finite(xs: list[torch.Tensor]) -> bool:
    """True when every entry of every x is finite: one sum each, one read on the host. A sum of finite
    values that overflows reads as not finite (the caller then takes the exact path)."""
    with torch.no_grad():
        sums = torch.stack([x.sum(dtype=torch.float64 if x.dtype == torch.float64 else torch.float32) for x in xs])
        return bool(torch.isfinite(sums).all())


def _fused_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    keep: torch.Tensor | None,
    bias: torch.Tensor | None,
    scale: float,
    fully_masked: str,
    is_causal: bool,
) -> torch.Tensor | None:
    """attention's output from F.scaled_dot_product_attention in the compute dtype, rounded once; None
    where refmask's promises cannot be kept there (the caller takes the math path)."""
    if not _FUSED_ATTENTION or q.ndim != 4 or 0 in q.shape or 0 in k.shape or 0 in v.shape:
        return None  # SDPA's fused kernels take (B, H, T, D) only; empty axes are the math path's
    if bias is not None and torch.is_grad_enabled() and bias.requires_grad:
        return None  # no fused kernel takes a mask that requires grad
    if not _host_checks(q, k, v, keep, bias):
        return None  # the finiteness check reads values
    if is_causal and (keep is not None or bias is not None):  # SDPA takes is_causal or a mask, not both
        causal = causal_mask(q.shape[-2], k.shape[-2], device=q.device)
        keep, is_causal = causal if keep is None else keep & causal, False
    kept_bias = None if bias is None else bias if keep is None else bias.masked_fill(~keep, 0.0)
    if not _all_finite([q, k, v] + ([] if kept_bias is None else [kept_bias])):
        return None
    ct = _compute_dtype(q.dtype)
    qc, kc, vc = q.to(ct), k.to(ct), v.to(ct)
    attn_mask = keep
    if bias is not None:
        attn_mask = bias.to(ct) if keep is None else bias.to(ct).masked_fill(~keep, -math.inf)
    out = torch.nn.functional.scaled_dot_product_attention(
        qc, kc, vc, attn_mask, is_causal=is_causal, scale=scale, enable_gqa=kc.shape[-3] != qc.shape[-3]
    )
    if keep is not None and fully_masked != "zero":
        any_kept = _rows_kept(keep, 4, -1)  # (.., T, 1): False on a fully-masked row
        if out.device.type != "cpu" or not bool(any_kept.all()):  # on the host the check is free
            # "uniform": weights 1/S, out = the mean of v; "nan": NaN weights, so (as the math path) a NaN
            # gradient for v and none for q and k.
            mean = vc.mean(dim=-2, keepdim=True).repeat_interleave(qc.shape[-3] // vc.shape[-3], dim=-3)
            if fully_masked == "nan":  # NaN on the fully-masked rows only (so only their v gets a NaN gradient)
                mean = mean * torch.where(any_kept, 1.0, math.nan).to(mean.dtype)
            out = torch.where(any_kept, out, mean)
    return out.to(q.dtype)


# ----------------------------------------------------------------------------------------------
# gradients of attention


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
) -> arrays.AttentionGrads[torch.Tensor]:
    c = arrays.attention_vjp_call(OPS, {"q": q, "k": k, "v": v}, mask, d_out, bias, scale, fully_masked, softcap, sinks)
    a = c.attention
    given = {"q": a.q, "k": a.k, "v": a.v, "bias": a.bias, "sinks": a.sinks}
    with torch.enable_grad():
        # Leaves of our own: the gradient is of this call alone, whatever graph the inputs belong to.
        leaves = {name: x.detach().requires_grad_(True) for name, x in given.items() if x is not None}
        out = _attend(
            leaves["q"], leaves["k"], leaves["v"], a.mask, leaves.get("bias"), a.scale, a.fully_masked, False,
            softcap=a.softcap, sinks=leaves.get("sinks"),
        )
        grads = torch.autograd.grad(out, list(leaves.values()), c.d_out, allow_unused=True, materialize_grads=True)
    named = dict(zip(leaves, grads, strict=True))
    return arrays.AttentionGrads(named["q"], named["k"], named["v"], named.get("bias"), named.get("sinks"))


_backends.loaded(__name__)  # last: the registry hands this module out only once it is complete
