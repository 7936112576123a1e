"""refmask.torch: refmask's masks and masked softmax where PyTorch code expects them.

- `scaled_dot_product_attention`: a drop-in for `torch.nn.functional.scaled_dot_product_attention`
  (same signature, same mask conventions) whose fully-masked rows follow `fully_masked=` and whose
  half-precision scores are accumulated in float32;
- `mask_mod`: FlexAttention `mask_mod` callables `(b, h, q_idx, kv_idx) -> bool` that agree exactly
  with refmask's mask constructors (causal, sliding window, chunked, padding, segments, prefix-LM)
  and their and/or combinations;
- `score_mod`: FlexAttention `score_mod` callables `(score, b, h, q_idx, kv_idx) -> score` for refmask's
  softcap and ALiBi bias (`score_mod.softcap`, `score_mod.alibi`, `score_mod.chain`).

Importing this module imports torch. Every other function is reached through refmask's public API
(`refmask.masked_softmax(scores, mask)` picks the torch backend for torch tensors).
"""

from __future__ import annotations

from typing import cast

import torch

import refmask

from . import _arrays as arrays
from . import _dtypes
from . import _torch_mask_mod as mask_mod
from . import _torch_score_mod as score_mod
from . import _validate as check
from ._torch_mask_mod import MaskMod
from ._torch_score_mod import ScoreMod
from .backends._torch_ops import TORCH as OPS

__all__ = ["MaskMod", "ScoreMod", "mask_mod", "scaled_dot_product_attention", "score_mod"]


# ----------------------------------------------------------------------------------------------
# SDPA drop-in


def scaled_dot_product_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    *,
    fully_masked: str = "zero",
) -> torch.Tensor:
    """`torch.nn.functional.scaled_dot_product_attention` with refmask's masked softmax.

    Same signature and conventions as SDPA: query (N, ..., H, L, E), key (N, ..., H_kv, S, E),
    value (N, ..., H_kv, S, Ev); attn_mask broadcastable to (N, ..., H, L, S), either bool
    (True = attend) or float (added to the scores); is_causal ands a top-left causal mask (with
    attn_mask too, as SDPA); scale defaults to 1/sqrt(E); enable_gqa lets H be a multiple of H_kv
    (query head h reads key/value head h // (H // H_kv)); dropout_p > 0 drops attention weights
    with probability dropout_p and scales the rest by 1 / (1 - dropout_p), always (as SDPA, which
    has no training flag); the random stream is torch's, not SDPA's kernels'.

    Where they differ: a float attn_mask entry <= finfo(attn_mask.dtype).min (including -inf, the
    fills of refmask.to_additive, Hugging Face and torch) masks its key, so a row whose keys are all
    masked follows `fully_masked` ("zero" as SDPA since torch 2.5, "uniform" or "nan") instead of
    depending on how the fills stack; every other float value is an additive bias. float16 and
    bfloat16 scores, softmax and the product with value run in float32 and are rounded once.
    On rows that are not fully masked the result equals SDPA's up to rounding.
    """
    q, k, v = arrays.attention_inputs(OPS, {"query": query, "key": key, "value": value}, {"attn_mask": attn_mask})
    check.choice("fully_masked", fully_masked, check.FULLY_MASKED_POLICIES)
    shape = check.attention_shapes(tuple(q.shape), tuple(k.shape), tuple(v.shape))
    if not enable_gqa and q.ndim >= 3 and k.shape[-3] not in (q.shape[-3], 1):
        raise ValueError(
            f"query has {q.shape[-3]} heads and key/value {k.shape[-3]}: pass enable_gqa=True for "
            "grouped-query attention (as torch.nn.functional.scaled_dot_product_attention)"
        )
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, int | float) or not 0.0 <= dropout_p <= 1.0:
        raise ValueError(f"dropout_p must be a number in [0, 1]; got {dropout_p!r}")
    keep, bias = None, None
    if attn_mask is not None:
        attn_mask = arrays.array(OPS, "attn_mask", attn_mask, q.device)
        check.broadcasts_to("attn_mask", tuple(attn_mask.shape), shape)
        dtype = OPS.dtype_name(attn_mask)
        if dtype == "bool":
            keep = attn_mask
        elif _dtypes.is_floating(dtype):
            bias = attn_mask
            # NaN stays kept (and poisons its row, as in SDPA); -inf and finfo.min mask.
            keep = ~(attn_mask <= _dtypes.lowest(dtype))
        else:
            raise TypeError(f"attn_mask must be bool (True = attend) or a float additive mask; got dtype {dtype}")
    is_causal = check.flag("is_causal", is_causal)
    if dropout_p == 0:
        out = refmask.attention(
            q, k, v, keep, bias=bias, scale=scale, is_causal=is_causal, fully_masked=fully_masked, backend="torch"
        )
        return cast(torch.Tensor, out)  # without return_weights, attention returns the output alone
    if is_causal:
        keep = refmask.and_masks(keep, refmask.causal_mask(shape[-2], shape[-1], device=q.device, backend="torch"))
    weights = refmask.attention_weights(q, k, keep, bias=bias, scale=scale, fully_masked=fully_masked, backend="torch")
    dropped = torch.nn.functional.dropout(weights, float(dropout_p), training=True)
    if v.ndim >= 3 and v.shape[-3] != q.shape[-3]:
        v = v.repeat_interleave(q.shape[-3] // v.shape[-3], dim=-3)  # grouped-query: head h reads h // G
    return torch.matmul(dropped.to(_compute(q.dtype)), v.to(_compute(q.dtype))).to(q.dtype)


def _compute(dtype: torch.dtype) -> torch.dtype:
    return getattr(torch, _dtypes.compute_dtype(_dtypes.name_of(dtype)))
