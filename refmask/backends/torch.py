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

from .. import _validate as check

Mask = torch.Tensor

_FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_REDUCED = (torch.float16, torch.bfloat16)
_DTYPE_NAMES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
                "float64": torch.float64, "half": torch.float16, "float": torch.float32,
                "double": torch.float64}


# ----------------------------------------------------------------------------------------------
# conversion to and from NumPy (used by the test harness and refmask.testing)


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy array holding the same values; bfloat16 becomes ml_dtypes.bfloat16 bit for bit."""
    if not isinstance(x, torch.Tensor):
        return np.asarray(x)
    x = x.detach().resolve_conj().resolve_neg().cpu()
    if x.dtype == torch.bfloat16:
        import ml_dtypes

        return x.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return x.numpy()


def from_numpy(x: Any) -> torch.Tensor:
    """A CPU tensor with x's values and dtype (ml_dtypes.bfloat16 -> torch.bfloat16, bit for bit)."""
    return _from_numpy_array(np.asarray(x))


def _from_numpy_array(a: np.ndarray) -> torch.Tensor:
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(np.array(a, copy=True, order="C").view(np.int16)).view(torch.bfloat16)
    if not (a.flags.writeable and a.flags.c_contiguous) or a.dtype.byteorder == ">":
        a = np.array(a, dtype=a.dtype.newbyteorder("=") if a.dtype.byteorder == ">" else a.dtype, order="C")
    return torch.from_numpy(a)


# ----------------------------------------------------------------------------------------------
# inputs


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _is_integer(dtype: torch.dtype) -> bool:
    return not dtype.is_floating_point and not dtype.is_complex and dtype != torch.bool


def _tensor(x: Any, device: Any = None) -> torch.Tensor:
    """x as a tensor on `device` if given; NumPy arrays and lists are converted (to torch's default
    device when no device is given), tensors otherwise stay where they are."""
    if not isinstance(x, torch.Tensor):
        x = _from_numpy_array(np.asarray(x))
        if device is None:
            device = torch.get_default_device()
    if device is not None and x.device != torch.device(device):
        x = x.to(device)
    return x


def _device_of(*xs: Any) -> torch.device | None:
    for x in xs:
        if isinstance(x, torch.Tensor):
            return x.device
    return None


def _floating(name: str, x: Any, device: Any = None) -> torch.Tensor:
    x = _tensor(x, device)
    check.float_dtype(name, _name(x.dtype), x.dtype in _FLOATING)
    return x


def _bool_mask(name: str, mask: Any, device: Any = None) -> torch.Tensor:
    mask = _tensor(mask, device)
    check.bool_mask(name, _name(mask.dtype), mask.dtype == torch.bool)
    return mask


def _integers(name: str, x: Any, device: Any = None) -> torch.Tensor:
    x = _tensor(x, device)
    check.integer_dtype(name, _name(x.dtype), _is_integer(x.dtype))
    return x


def _as_dtype(dtype: Any) -> torch.dtype:
    """A floating torch dtype from a torch dtype, a NumPy dtype or a name ("float32", "bfloat16")."""
    if isinstance(dtype, torch.dtype):
        out = dtype
    elif isinstance(dtype, str) and dtype in _DTYPE_NAMES:
        out = _DTYPE_NAMES[dtype]
    else:
        try:
            name = np.dtype(dtype).name
        except TypeError as err:
            raise TypeError(f"dtype must be a floating dtype or its name; got {dtype!r}") from err
        out = _DTYPE_NAMES.get(name)
        if out is None:
            check.float_dtype("dtype", name, False)
    check.float_dtype("dtype", _name(out), out in _FLOATING)
    return out


def _tracing(*xs: torch.Tensor | None) -> bool:
    """True under torch.compile or when a tensor is wrapped by a torch.func transform (vmap, grad):
    then values may not be read on the host (no .item(), no data-dependent checks)."""
    if torch.compiler.is_compiling():
        return True
    wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    return any(x is not None and wrapped(x) for x in xs)


def _host_checks(*xs: torch.Tensor | None) -> bool:
    """Data-dependent argument checks run except while tracing and on the meta device (they need
    the values)."""
    return not _tracing(*xs) and not any(x is not None and x.device.type == "meta" for x in xs)


def _check_lengths(name: str, lengths: torch.Tensor, max_len: int) -> None:
    """0 <= lengths <= max_len, with one read of (min, max) (a sync on an accelerator)."""
    if lengths.numel() and _host_checks(lengths):
        lo, hi = torch.stack([lengths.min(), lengths.max()]).tolist()
        check.lengths_in_range(name, lo, hi, max_len)


# ----------------------------------------------------------------------------------------------
# masks from positions


def _aligned_positions(q_len: int, kv_len: int, align: str, offset: int, device: Any):
    shift = check.align_shift(align, q_len, kv_len)
    offset = check.integer("offset", offset)
    i = torch.arange(q_len, device=device).unsqueeze(-1) + (offset + shift)
    j = torch.arange(kv_len, device=device)
    return i, j


def causal_mask(
    q_len: int, kv_len: int | None = None, *, align: str = "top_left", offset: int = 0, device: Any = None
) -> Mask:
    t, s = check.q_kv_lengths(q_len, kv_len)
    i, j = _aligned_positions(t, s, align, offset, device)
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
    i, j = _aligned_positions(t, s, align, offset, device)
    return (j >= i - left) & (j <= i + right)


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
    i, j = _aligned_positions(t, s, align, offset, device)
    # floor division, as the oracle (negative aligned positions fall in chunk -1, -2, ...)
    return torch.div(i, c, rounding_mode="floor") == torch.div(j, c, rounding_mode="floor")


# ----------------------------------------------------------------------------------------------
# masks from data


def padding_mask(lengths: Any, max_len: int, *, side: str = "right", device: Any = None) -> Mask:
    max_len = check.integer("max_len", max_len, minimum=0)
    check.choice("side", side, check.SIDES)
    lengths = _integers("lengths", lengths)  # checked where it is (NumPy input: on the host)
    _check_lengths("lengths", lengths, max_len)
    lengths = _tensor(lengths, device)
    position = torch.arange(max_len, device=lengths.device)
    if side == "right":
        return position < lengths.unsqueeze(-1)
    return position >= max_len - lengths.unsqueeze(-1)


def padding_mask_from_ids(ids: Any, pad_id: int, *, device: Any = None) -> Mask:
    ids = _integers("ids", ids, device)
    pad_id = check.integer("pad_id", pad_id)
    return ids != pad_id


def attention_padding_mask(kv_valid: Any, q_valid: Any = None, *, device: Any = None) -> Mask:
    device = device if device is not None else _device_of(kv_valid, q_valid)
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
    device = device if device is not None else _device_of(q_segment_ids, kv_segment_ids)
    q_seg = _integers("q_segment_ids", q_segment_ids, device)
    kv_seg = q_seg if kv_segment_ids is None else _integers("kv_segment_ids", kv_segment_ids, device)
    check.ndim("q_segment_ids", tuple(q_seg.shape), 2, "(B, T)")
    check.ndim("kv_segment_ids", tuple(kv_seg.shape), 2, "(B, S)")
    check.same_batch("q_segment_ids", tuple(q_seg.shape), "kv_segment_ids", tuple(kv_seg.shape))
    q, kv = q_seg[:, None, :, None], kv_seg[:, None, None, :]
    keep = q == kv
    if pad_id is not None:
        pad_id = check.integer("pad_id", pad_id)
        keep = keep & (q != pad_id) & (kv != pad_id)
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
    _check_lengths("prefix_lengths", prefix, s)
    prefix = _tensor(prefix, device)
    i, j = _aligned_positions(t, s, align, 0, prefix.device)
    return (j < prefix[:, None, None, None]) | (j <= i)


def _combine(op, masks: tuple[Any, ...]) -> Mask | None:
    device = _device_of(*masks)
    present = [_bool_mask(f"masks[{n}]", m, device) for n, m in enumerate(masks) if m is not None]
    if not present:
        return None
    if len(present) == 1:
        return present[0]
    out = present[0]
    for m in present[1:]:
        out = op(out, m)  # broadcasts to the masks' common shape
    return out


def and_masks(*masks: Any) -> Mask | None:
    return _combine(torch.logical_and, masks)


def or_masks(*masks: Any) -> Mask | None:
    return _combine(torch.logical_or, masks)


# ----------------------------------------------------------------------------------------------
# converters between conventions


def _fill_value(fill: Any, dtype: torch.dtype) -> float:
    if isinstance(check.additive_fill(fill), str):
        return torch.finfo(dtype).min if fill == "min" else -math.inf
    # Rounded from float64 once, straight to the target dtype (as NumPy / ml_dtypes do).
    rounded = _round_from_float64(float(fill), dtype)
    check.fill_stays_finite(fill, rounded, _name(dtype), torch.finfo(dtype).min)
    return rounded


def _round_from_float64(x: float, dtype: torch.dtype) -> float:
    """x rounded to nearest-even in dtype in one step (torch goes through float32 for the halves,
    which can round twice); returned as a Python float that converts to dtype exactly."""
    if dtype == torch.float64:
        return x
    with np.errstate(over="ignore"):
        if dtype == torch.float32:
            return float(np.float32(x))
        if dtype == torch.float16:
            return float(np.float16(x))
        import ml_dtypes

        return float(np.asarray(x, np.float64).astype(ml_dtypes.bfloat16))


def to_additive(mask: Any, dtype: Any = "float32", *, fill: Any = "min") -> torch.Tensor:
    mask = _bool_mask("mask", mask)
    dtype = _as_dtype(dtype)
    value = _fill_value(fill, dtype)
    out = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return out.masked_fill_(~mask, value)


def _threshold(threshold: Any, bias: torch.Tensor) -> Any:
    """finfo.min for "min"; a number is rounded to the bias dtype, as to_additive writes a fill."""
    if isinstance(check.additive_threshold(threshold), str):
        return torch.finfo(bias.dtype).min
    return torch.tensor(_round_from_float64(float(threshold), bias.dtype), dtype=bias.dtype, device=bias.device)


def from_additive(bias: Any, *, threshold: Any = "min") -> Mask:
    bias = _floating("bias", bias)
    if _host_checks(bias) and bool(torch.isnan(bias).any()):
        raise ValueError("bias contains NaN, which is neither a kept (0) nor a masking value")
    return bias > _threshold(threshold, bias)


def _mha_keep(name: str, m: Any, threshold: Any, device: Any) -> torch.Tensor:
    m = _tensor(m, device)
    if m.dtype == torch.bool:
        return ~m
    if m.dtype not in _FLOATING:
        raise TypeError(f"{name} must be bool (True = masked) or a float additive mask; got dtype {_name(m.dtype)}")
    keep = from_additive(m, threshold=threshold)
    if _host_checks(m) and bool((m.masked_fill(~keep, 0) != 0).any()):
        raise ValueError(
            f"{name} holds additive values other than 0 and masking values: that is a bias, not a "
            "mask; pass it as attention(..., bias=...)"
        )
    return keep


def from_torch_mha(
    attn_mask: Any = None, key_padding_mask: Any = None, *, num_heads: int | None = None, threshold: Any = "min"
) -> Mask | None:
    device = _device_of(attn_mask, key_padding_mask)
    keep = None
    if attn_mask is not None:
        keep = _mha_keep("attn_mask", attn_mask, threshold, device)
        heads = check.mha_attn_mask_heads(keep.shape, num_heads)
        if heads is not None:
            keep = keep.reshape(keep.shape[0] // heads, heads, *keep.shape[1:])  # not -1: T or S may be 0
    if key_padding_mask is not None:
        kp = _mha_keep("key_padding_mask", key_padding_mask, threshold, device)
        check.mha_key_padding_mask(kp.shape)
        kp = kp[None, :] if kp.ndim == 1 else kp[:, None, None, :]
        keep = kp if keep is None else and_masks(keep, kp)
    return keep


def to_torch_mha(
    mask: Any, *, num_heads: int | None = None, q_len: int | None = None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    keep = _bool_mask("mask", mask)
    argument, full, final = check.torch_mha_form(tuple(keep.shape), num_heads, q_len)
    if argument == "key_padding_mask":
        return None, ~keep.reshape(final)
    return ~keep.expand(full).reshape(final), None


def from_hf(attention_mask: Any) -> Mask:
    m = _tensor(attention_mask)
    check.ndim("attention_mask", tuple(m.shape), 2, "(B, S)")
    if m.dtype != torch.bool:
        if not (_is_integer(m.dtype) or m.dtype.is_floating_point):
            raise TypeError(f"attention_mask must hold 0/1 numbers or bools; got dtype {_name(m.dtype)}")
        if _host_checks(m):
            bad = (m != 0) & (m != 1)
            if bool(bad.any()):
                value = to_numpy(m[bad].reshape(-1)[:1])[0]  # a NumPy scalar: the oracle's message
                raise ValueError(f"attention_mask must hold only 1 (attend) and 0 (padding); got {value!r}")
    return (m == 1)[:, None, None, :]


# ----------------------------------------------------------------------------------------------
# masked softmax and attention


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16 / bfloat16 accumulate in float32; float32 and float64 in themselves."""
    return torch.float32 if dtype in _REDUCED else dtype


def _checked_mask(mask: Any, shape: tuple[int, ...], device: torch.device) -> torch.Tensor | None:
    if mask is None:
        return None
    mask = _bool_mask("mask", mask, device)
    check.broadcasts_to("mask", tuple(mask.shape), tuple(shape))
    return mask


def _fully_masked_value(policy: str, n: int) -> float:
    return {"zero": 0.0, "uniform": 1.0 / max(n, 1), "nan": math.nan}[policy]


def _softmax_kept(x: torch.Tensor, keep: torch.Tensor | None, axis: int, policy: str, *, owned: bool) -> torch.Tensor:
    """masked softmax of x (already in the compute dtype) along `axis`; keep broadcasts to x.

    owned=True: x is a temporary of ours that may be overwritten.
    """
    if keep is None:
        return torch.softmax(x, axis)
    axis = axis % x.ndim if x.ndim else 0
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
    value = _fully_masked_value(policy, x.shape[axis])
    if grad or tracing:
        return torch.where(any_kept, w, value)
    return w.masked_fill_(~any_kept, value)


def masked_softmax(scores: Any, mask: Any = None, *, axis: int = -1, fully_masked: str = "zero") -> torch.Tensor:
    scores = _floating("scores", scores, _device_of(scores, mask))
    check.choice("fully_masked", fully_masked, check.FULLY_MASKED_POLICIES)
    keep = _checked_mask(mask, tuple(scores.shape), scores.device)
    dtype = scores.dtype
    x = scores.to(_compute_dtype(dtype))
    w = _softmax_kept(x, keep, axis, fully_masked, owned=x is not scores)
    return w.to(dtype)


def _default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim) if head_dim > 0 else 1.0


def _attention_inputs(*named: tuple[str, Any]) -> list[torch.Tensor]:
    device = _device_of(*(x for _, x in named))
    arrays = [_floating(n, x, device) for n, x in named]
    check.same_dtype([n for n, _ in named], [_name(a.dtype) for a in arrays])
    return arrays


def _checked_bias(bias: Any, shape: tuple[int, ...], device: torch.device) -> torch.Tensor | None:
    if bias is None:
        return None
    bias = _floating("bias", bias, device)
    check.broadcasts_to("bias", tuple(bias.shape), tuple(shape))
    return bias


def _grouped(q: torch.Tensor, h_kv: int) -> torch.Tensor:
    """(..., H, T, D) -> (..., H_kv, H // H_kv, T, D): query head h reads key/value head h // G."""
    return q.unflatten(-3, (h_kv, q.shape[-3] // h_kv))


def _scores(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None, scale: float | None) -> torch.Tensor:
    """scale * q @ k^T + bias in the compute dtype, (..., H, T, S). Grouped-query heads share k
    by broadcasting (no copy of k)."""
    ct = _compute_dtype(q.dtype)
    scale = _default_scale(q.shape[-1]) if scale is None else float(scale)
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


def _weights(q, k, keep, bias, scale, fully_masked) -> torch.Tensor:
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
    q, k = _attention_inputs(("q", q), ("k", k))
    check.choice("fully_masked", fully_masked, check.FULLY_MASKED_POLICIES)
    shape = check.attention_shapes(tuple(q.shape), tuple(k.shape))
    bias = _checked_bias(bias, shape, q.device)
    keep = _checked_mask(mask, shape, q.device)
    return _weights(q, k, keep, bias, scale, fully_masked).to(q.dtype)


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
    q, k, v = _attention_inputs(("q", q), ("k", k), ("v", v))
    check.choice("fully_masked", fully_masked, check.FULLY_MASKED_POLICIES)
    shape = check.attention_shapes(tuple(q.shape), tuple(k.shape), tuple(v.shape))
    bias = _checked_bias(bias, shape, q.device)
    keep = _checked_mask(mask, shape, q.device)
    if is_causal:
        causal = causal_mask(shape[-2], shape[-1], device=q.device)
        keep = causal if keep is None else keep & causal
    return _attend(q, k, v, keep, bias, scale, fully_masked, return_weights)


def _attend(q, k, v, keep, bias, scale, fully_masked, return_weights, dropout_p: float = 0.0):
    w = _weights(q, k, keep, bias, scale, fully_masked)
    wd = torch.nn.functional.dropout(w, dropout_p, training=True) if dropout_p > 0 else w
    out = _apply_values(wd, v).to(q.dtype)
    if return_weights:
        return out, w.to(q.dtype)
    return out
