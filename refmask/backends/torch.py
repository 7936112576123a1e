"""The PyTorch backend: refmask's whole public API in idiomatic torch, held against the oracle.

Conventions (the oracle's, see refmask/oracle.py for every definition):

- a mask is a torch.bool tensor, True = may attend, at its smallest broadcastable shape;
- masks are created on `device=` when given, else on the device of the tensors they are built from,
  else on torch's default device; nothing is copied to the host on the hot path (masked_softmax,
  attention_weights, attention);
- inputs may be tensors, NumPy arrays or lists; NumPy inputs go to the device of the tensor inputs;
- float16 / bfloat16 scores are computed and normalised in float32 and rounded once to the input
  dtype; float32 and float64 are computed in their own precision;
- fully-masked rows follow `fully_masked` ("zero", "uniform", "nan") and their gradient is exactly 0;
  masked entries get exactly 0 gradient whatever their scores hold.

The hot path of masked_softmax is the plain-torch idiom `softmax(scores.masked_fill(~mask, -inf))`
plus a fix of the fully-masked rows only (found from the mask, at the mask's own shape): on CPU
(outside torch.compile / torch.func transforms) the fix is skipped when no row is fully masked (a
free check there); elsewhere it is one broadcast masked_fill_ (a `where` when autograd records),
so no device synchronisation happens. Without autograd, temporaries are reused in place (the
masked scores become the weights), which on CPU makes it faster than the plain idiom.
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


def causal_mask(
    q_len: int, kv_len: int | None = None, *, align: str = "top_left", offset: int = 0, device: Any = None
) -> Mask:
    t, s = check.q_kv_lengths(q_len, kv_len)
    i, j = _positions(t, s, check.diagonal(check.aligned_offset(align, t, s, offset), t, s), device)
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
    t, s = check.q_kv_lengths(q_len, kv_len)
    left, right = check.window(window)
    d = check.aligned_offset(align, t, s, offset)
    i, j = _positions(t, s, 0, device)
    return (j >= i + check.diagonal(d - left, t, s)) & (j <= i + check.diagonal(d + right, t, s))


def chunked_mask(
    q_len: int,
    kv_len: int | None = None,
    *,
    chunk_size: int,
    align: str = "top_left",
    offset: int = 0,
    device: Any = None,
) -> Mask:
    t, s = check.q_kv_lengths(q_len, kv_len)
    c = check.integer("chunk_size", chunk_size, minimum=1)
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
    q_len: int,
    kv_len: int | None = None,
    *,
    align: str = "top_left",
    device: Any = None,
) -> Mask:
    t, s = check.q_kv_lengths(q_len, kv_len)
    prefix = _integers("prefix_lengths", prefix_lengths)
    check.ndim("prefix_lengths", tuple(prefix.shape), 1, "(B,)")
    prefix = _tensor(_lengths("prefix_lengths", prefix, s), device)
    i, j = _positions(t, s, check.diagonal(check.aligned_offset(align, t, s, 0), t, s), prefix.device)
    return (j < prefix[:, None, None, None]) | (j <= i)


# ----------------------------------------------------------------------------------------------
# converters between conventions


# ----------------------------------------------------------------------------------------------
# masked softmax and attention


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16 / bfloat16 accumulate in float32; float32 and float64 in themselves."""
    return getattr(torch, _dtypes.compute_dtype(_dtypes.name_of(dtype)))


def _softmax_kept(x: torch.Tensor, keep: torch.Tensor | None, axis: int, policy: str, *, owned: bool) -> torch.Tensor:
    """masked softmax of x (already in the compute dtype) along `axis`; keep broadcasts to x.

    owned=True: x is a temporary of ours that may be overwritten.
    """
    if keep is None:
        return torch.softmax(x, axis)
    axis %= x.ndim
    grad = torch.is_grad_enabled() and x.requires_grad
    tracing = _tracing(x, keep)
    # A row is fully masked iff its mask row has no True: computed at the mask's own (small) shape.
    k = keep.reshape((1,) * (x.ndim - keep.ndim) + tuple(keep.shape)) if keep.ndim < x.ndim else keep
    any_kept = k.any(dim=axis, keepdim=True) if k.ndim else k
    # masked_fill's backward gives masked entries exactly 0 whatever the softmax's gradient is there
    # (NaN in a fully-masked row); in place on a temporary of ours is autograd-safe.
    t = x.masked_fill_(~keep, -math.inf) if owned and not tracing else x.masked_fill(~keep, -math.inf)
    if grad or tracing or t.device.type != "cpu" or axis != t.ndim - 1 or not t.is_contiguous():
        w = torch.softmax(t, axis)
    else:
        # In place over our temporary: one allocation less (first-touch page faults on the host).
        w = torch.softmax(t, axis, out=t)
    if policy == "nan":
        return w  # the softmax of a row of -inf is already NaN
    if not tracing and w.device.type == "cpu" and bool(any_kept.all()):
        return w  # on the host this check is free: no row is fully masked, nothing to fix
    value = arrays.fully_masked_value(policy, x.shape[axis])
    if grad or tracing:
        return torch.where(any_kept, w, value)
    return w.masked_fill_(~any_kept, value)


def masked_softmax(scores: Any, mask: Any = None, *, axis: int = -1, fully_masked: str = "zero") -> torch.Tensor:
    c = arrays.softmax_call(OPS, scores, mask, axis, fully_masked)
    x = c.scores.to(_compute_dtype(c.scores.dtype))
    w = _softmax_kept(x, c.mask, c.axis, c.fully_masked, owned=x is not c.scores)
    return w.to(c.scores.dtype)


def _grouped(q: torch.Tensor, h_kv: int) -> torch.Tensor:
    """(..., H, T, D) -> (..., H_kv, H // H_kv, T, D): query head h reads key/value head h // G."""
    return torch.unflatten(q, -3, (h_kv, q.shape[-3] // h_kv))


def _scores(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None, scale: float) -> torch.Tensor:
    """scale * q @ k^T + bias in the compute dtype, (..., H, T, S). Grouped-query heads share k
    by broadcasting (no copy of k)."""
    ct = _compute_dtype(q.dtype)
    q, k = q.to(ct), k.to(ct)
    if q.ndim >= 3 and k.shape[-3] != q.shape[-3]:
        s = torch.matmul(_grouped(q, k.shape[-3]), k.unsqueeze(-3).transpose(-1, -2)).flatten(-4, -3)
    else:
        s = torch.matmul(q, k.transpose(-1, -2))
    # s is a fresh temporary: scale (and bias) in place; autograd does not need s itself.
    s = s.mul_(scale) if scale != 1.0 else s
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
) -> torch.Tensor:
    """Attention weights in the compute dtype."""
    s = _scores(q, k, bias, scale)
    return _softmax_kept(s, keep, -1, fully_masked, owned=True)


def _apply_values(w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    v = v.to(w.dtype)
    if v.ndim >= 3 and w.ndim >= 3 and v.shape[-3] != w.shape[-3]:
        return torch.matmul(_grouped(w, v.shape[-3]), v.unsqueeze(-3)).flatten(-4, -3)
    return torch.matmul(w, v)


def attention_weights(
    q: Any, k: Any, mask: Any = None, *, bias: Any = None, scale: float | None = None, fully_masked: str = "zero"
) -> torch.Tensor:
    c = arrays.attention_call(OPS, {"q": q, "k": k}, mask, bias, scale, fully_masked)
    return _weights(c.q, c.k, c.mask, c.bias, c.scale, c.fully_masked).to(c.q.dtype)


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
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    c = arrays.attention_call(OPS, {"q": q, "k": k, "v": v}, mask, bias, scale, fully_masked, is_causal, return_weights)
    keep = c.mask
    if c.is_causal:
        causal = causal_mask(c.shape[-2], c.shape[-1], device=c.q.device)
        keep = causal if keep is None else keep & causal
    return _attend(c.q, c.k, c.v, keep, c.bias, c.scale, c.fully_masked, c.return_weights)


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    keep: torch.Tensor | None,
    bias: torch.Tensor | None,
    scale: float,
    fully_masked: str,
    return_weights: bool,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    w = _weights(q, k, keep, bias, scale, fully_masked)
    out = _apply_values(w, v).to(q.dtype)
    if return_weights:
        return out, w.to(q.dtype)
    return out


_backends.loaded(__name__)  # last: the registry hands this module out only once it is complete
