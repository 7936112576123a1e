"""PyTorch's native masking paths, each stated from a refmask case.

Conventions to translate (refmask: bool mask, True = may attend, broadcastable to (B, H, T, S)):

- F.scaled_dot_product_attention: a bool attn_mask means the same as refmask's (True = attend); a
  float attn_mask is *added* to the scores (0 = attend, -inf or finfo.min = masked);
  is_causal=True is the top-left causal mask.
- nn.MultiheadAttention: the opposite bool convention: attn_mask and key_padding_mask True = NOT
  allowed. attn_mask is (T, S) or (B*H, T, S); inputs are (B, T, E) with E = H * D (batch_first).
  MHA projects q, k, v itself, so the adapters set every projection to the identity.
- torch.nn.attention.bias.causal_upper_left / causal_lower_right: causal masks aligned top-left
  (query i sees keys <= i) and bottom-right (the last query sees the last key).
- flex_attention: a mask_mod(b, h, q_idx, kv_idx) -> bool with True = attend, compiled into a
  BlockMask by create_block_mask; a score_mod(score, b, h, q_idx, kv_idx) rewrites each score after
  scaling and before the mask (soft-capping is one). Its eager CPU backward raises NotImplementedError.
- torch.softmax(scores + bias): the hand-written additive idiom (Hugging Face's eager attention), with
  the same additive bias as SDPA's float attn_mask.
- A score bias (ALiBi) is added to the scores: into the additive mask (SDPA's float attn_mask, the
  hand-written idioms) or by a score_mod (flex_attention); a bool attn_mask has no room for it.
- Gradients: torch.autograd of sum(d_out * output) w.r.t. q, k and v (run_forward).
- nn.Transformer.generate_square_subsequent_mask(T): a float (T, T) mask, -inf above the diagonal.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.bias import causal_lower_right, causal_upper_left
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from ._base import NO_FLEX_CPU_BACKWARD, Native, NotExpressible, Path, check_expressible

FRAMEWORK_VERSION = torch.__version__

# ----------------------------------------------------------------------------------------------
# NumPy <-> torch (bfloat16 travels as its 16 bits: torch.from_numpy does not know ml_dtypes')


def to_torch(x: np.ndarray) -> torch.Tensor:
    if x.dtype.name == "bfloat16":
        return torch.from_numpy(x.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(x))


def to_numpy(x: torch.Tensor) -> np.ndarray:
    x = x.detach().contiguous()
    if x.dtype == torch.bfloat16:
        import ml_dtypes

        return x.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return x.numpy()


def _qkv(case):
    return to_torch(case.q), to_torch(case.k), to_torch(case.v)


def _full_mask(case) -> torch.Tensor:
    """The case's canonical mask as a (B, H, T, S) bool tensor, True = attend."""
    return torch.from_numpy(np.broadcast_to(case.mask, case.shape).copy())


# ----------------------------------------------------------------------------------------------
# running a forward, with or without autograd

# forward(q, k, v, case) -> (output, weights or None), on torch tensors in (B, H, T, D) layout.
Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any], tuple[torch.Tensor, torch.Tensor | None]]


def run_forward(forward: Forward, case) -> Native:
    """Run forward(q, k, v, case) on the case's tensors; on a "grad" case also return the gradients
    of sum(d_out * output) w.r.t. q, k and v through torch autograd."""
    q, k, v = _qkv(case)
    if case.d_out is None:
        with torch.no_grad():
            out, weights = forward(q, k, v, case)
        grads = None
    else:
        q, k, v = q.requires_grad_(), k.requires_grad_(), v.requires_grad_()
        out, weights = forward(q, k, v, case)
        dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad_outputs=to_torch(case.d_out))
        grads = (to_numpy(dq), to_numpy(dk), to_numpy(dv))
    return Native(weights=None if weights is None else to_numpy(weights), output=to_numpy(out), grads=grads)


def autograd_path(forward: Forward) -> Callable[[Any], Native]:
    """The adapter fn(case) -> Native that runs `forward` through run_forward (name and docstring kept)."""

    @functools.wraps(forward)
    def fn(case) -> Native:
        return run_forward(forward, case)

    return fn


# ----------------------------------------------------------------------------------------------
# additive masks


def additive_mask(case, fill: str) -> torch.Tensor:
    """The case's mask as an additive bias (B, H, T, S): 0 kept, masked -inf (fill "-inf") or
    finfo.min (fill "min"), built in case.fill_dtype where the case names one (else in the compute
    dtype) and cast to the compute dtype, as a half-precision model that upcasts its softmax does."""
    compute = to_torch(case.q).dtype
    build = compute if case.fill_dtype is None else getattr(torch, case.fill_dtype)
    value = float("-inf") if fill == "-inf" else torch.finfo(build).min
    return torch.zeros(case.shape, dtype=build).masked_fill(~_full_mask(case), value).to(compute)


def score_bias(case, dtype: torch.dtype) -> torch.Tensor | float:
    """The case's score bias as (1, H, T, S) in `dtype`, to add to the scores; 0.0 when it has none."""
    return 0.0 if case.bias is None else torch.from_numpy(case.bias)[None].to(dtype)


def biased_additive_mask(case, fill: str) -> torch.Tensor:
    """additive_mask(case, fill) plus the case's score bias: SDPA's float attn_mask for both at once."""
    mask = additive_mask(case, fill)
    return mask + score_bias(case, mask.dtype)


# ----------------------------------------------------------------------------------------------
# plain softmax


def _scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))


@autograd_path
def softmax_masked_fill(q, k, v, case):
    """softmax(scores.masked_fill(~mask, -inf)): the textbook way; refmask's mask is the keep mask."""
    scores = _scores(q, k) + score_bias(case, q.dtype)
    weights = torch.softmax(scores.masked_fill(~_full_mask(case), float("-inf")), dim=-1)
    return weights @ v, weights


@autograd_path
def softmax_additive_inf(q, k, v, case):
    """torch.softmax(scores + bias), bias = 0 where kept, -inf where masked: the hand-written additive mask."""
    weights = torch.softmax(_scores(q, k) + biased_additive_mask(case, "-inf"), dim=-1)
    return weights @ v, weights


@autograd_path
def softmax_additive_min(q, k, v, case):
    """torch.softmax(scores + bias), bias = 0 kept, finfo.min masked (Hugging Face's eager attention)."""
    weights = torch.softmax(_scores(q, k) + biased_additive_mask(case, "min"), dim=-1)
    return weights @ v, weights


# ----------------------------------------------------------------------------------------------
# scaled_dot_product_attention


@autograd_path
def sdpa_bool(q, k, v, case):
    """F.scaled_dot_product_attention(attn_mask=mask): a bool mask means what refmask's means."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=_full_mask(case)), None


@autograd_path
def sdpa_additive_inf(q, k, v, case):
    """F.scaled_dot_product_attention(attn_mask=bias), bias = 0 where kept, -inf where masked."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=biased_additive_mask(case, "-inf")), None


@autograd_path
def sdpa_additive_min(q, k, v, case):
    """F.scaled_dot_product_attention(attn_mask=bias), bias = 0 kept, finfo(dtype).min masked (as HF)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=biased_additive_mask(case, "min")), None


@autograd_path
def sdpa_is_causal(q, k, v, case):
    """F.scaled_dot_product_attention(is_causal=True): causal only, aligned top-left."""
    check_expressible(case, parts={"causal"}, why="is_causal states a top-left causal mask only")
    return F.scaled_dot_product_attention(q, k, v, is_causal=True), None


@autograd_path
def sdpa_causal_upper_left(q, k, v, case):
    """attn_mask=causal_upper_left(T, S): the top-left causal mask as a CausalBias."""
    check_expressible(case, parts={"causal"}, why="causal_upper_left states a top-left causal mask only")
    bias = causal_upper_left(q.shape[-2], k.shape[-2])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias), None


@autograd_path
def sdpa_causal_lower_right(q, k, v, case):
    """attn_mask=causal_lower_right(T, S): the bottom-right causal mask as a CausalBias."""
    _, _, t, s = case.shape
    aligns = ("bottom_right", "either") + (("top_left",) if t == s else ())
    check_expressible(case, parts={"causal"}, causal=aligns,
                      why="causal_lower_right states a bottom-right causal mask only")
    bias = causal_lower_right(q.shape[-2], k.shape[-2])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias), None


# ----------------------------------------------------------------------------------------------
# nn.MultiheadAttention


def identity_mha(embed_dim: int, num_heads: int, dtype: torch.dtype) -> nn.MultiheadAttention:
    """An MHA whose q/k/v and output projections are the identity, so it computes plain attention."""
    mha = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True, dtype=dtype)
    with torch.no_grad():
        eye = torch.eye(embed_dim, dtype=dtype)
        mha.in_proj_weight.copy_(torch.cat([eye, eye, eye]))
        mha.in_proj_bias.zero_()
        mha.out_proj.weight.copy_(eye)
        mha.out_proj.bias.zero_()
    return mha


def _heads_to_embed(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, D) -> (B, T, H*D): MHA's head h reads embedding columns h*D .. (h+1)*D - 1."""
    b, h, t, d = x.shape
    return x.permute(0, 2, 1, 3).reshape(b, t, h * d)


def _embed_to_heads(x: torch.Tensor, h: int) -> torch.Tensor:
    b, t, e = x.shape
    return x.reshape(b, t, h, e // h).permute(0, 2, 1, 3)


@autograd_path
def mha_weights(q, k, v, case):
    """nn.MultiheadAttention(need_weights=True): attn_mask = ~mask as (B*H, T, S), True = masked."""
    b, h, t, s = case.shape
    mha = identity_mha(h * q.shape[-1], h, q.dtype)
    attn_mask = ~_full_mask(case).reshape(b * h, t, s)
    out, weights = mha(_heads_to_embed(q), _heads_to_embed(k), _heads_to_embed(v), attn_mask=attn_mask,
                       need_weights=True, average_attn_weights=False)
    return _embed_to_heads(out, h), weights


def mha_fast_path(case) -> Native:
    """nn.MultiheadAttention's fast path (eval, inference_mode, need_weights=False).

    The fast path runs only for self-attention (query, key and value the same tensor), so the
    adapter attends x = q to itself; attn_mask = ~mask as (B*H, T, S), True = masked.
    """
    b, h, t, s = case.shape
    if t != s or case.poison:
        raise NotExpressible("the fast path is self-attention only (q = k = v): no T != S, no poisoned keys")
    x = to_torch(case.q)
    mha = identity_mha(h * x.shape[-1], h, x.dtype).eval()
    attn_mask = ~_full_mask(case).reshape(b * h, t, s)
    with torch.inference_mode():
        xe = _heads_to_embed(x)
        out, _ = mha(xe, xe, xe, attn_mask=attn_mask, need_weights=False)
    return Native(output=to_numpy(_embed_to_heads(out, h)), qkv=(case.q, case.q, case.q))


@autograd_path
def mha_square_subsequent(q, k, v, case):
    """MHA with attn_mask=nn.Transformer.generate_square_subsequent_mask(T) (float, -inf above the
    diagonal) and key padding as a float key_padding_mask (-inf at padded keys)."""
    check_expressible(case, parts={"causal", "kv_lengths"}, square=True, side="right",
                      why="generate_square_subsequent_mask states a square causal mask only (plus key padding)")
    if case.spec.causal is None:
        raise NotExpressible("generate_square_subsequent_mask is a causal mask: it cannot state a non-causal case")
    b, h, t, s = case.shape
    mha = identity_mha(h * q.shape[-1], h, q.dtype)
    attn_mask = nn.Transformer.generate_square_subsequent_mask(t, dtype=q.dtype)
    key_padding_mask = None
    if case.spec.kv_lengths is not None:
        padded = torch.arange(s)[None, :] >= torch.tensor(case.spec.kv_lengths)[:, None]
        key_padding_mask = torch.zeros(b, s, dtype=q.dtype).masked_fill(padded, float("-inf"))
    out, weights = mha(_heads_to_embed(q), _heads_to_embed(k), _heads_to_embed(v), attn_mask=attn_mask,
                       key_padding_mask=key_padding_mask, need_weights=True, average_attn_weights=False)
    return _embed_to_heads(out, h), weights


# ----------------------------------------------------------------------------------------------
# flex_attention


def flex_mask_mod(case, device: torch.device | str = "cpu"):
    """refmask's mask of the case written as a flex mask_mod (True = attend), from its structure; the
    tensors it reads (offsets, lengths, segment ids) live on `device`, the kernel's.

    Causal compares raw indices, shifted by S - T for bottom-right alignment or by a per-example
    offset[b] (a query of example b sits at position offset[b] + q_idx in a KV cache), or-ed with
    kv_idx < prefix for a prefix LM; a dilated window also asks (q_idx - kv_idx) % dilation == 0, a
    chunked mask q_idx // chunk == kv_idx // chunk; packed documents are a document mask: same segment id.
    """
    spec = case.spec
    _, _, t, s = case.shape
    shift = s - t if spec.causal in ("bottom_right", "either") else 0

    def tensor(values: Any) -> torch.Tensor | None:
        return None if values is None else torch.tensor(values, device=device)

    offset, kv_len, q_len, segments = map(tensor, (spec.offset, spec.kv_lengths, spec.q_lengths, spec.segments))

    def mask_mod(b, h, q_idx, kv_idx):
        keep = q_idx >= 0  # all True, as a tensor
        if offset is not None or spec.causal is not None:
            causal = kv_idx <= q_idx + (shift if offset is None else offset[b])
            keep = keep & (causal if spec.prefix is None else causal | (kv_idx < spec.prefix))
        if spec.window is not None:
            left, right = spec.window
            keep = keep & (kv_idx >= q_idx - left) & (kv_idx <= q_idx + right)
        if spec.dilation is not None:
            keep = keep & ((q_idx - kv_idx) % spec.dilation == 0)
        if spec.chunk is not None:
            keep = keep & (q_idx // spec.chunk == kv_idx // spec.chunk)
        if kv_len is not None:
            kv_ok = kv_idx < kv_len[b] if spec.side == "right" else kv_idx >= s - kv_len[b]
            keep = keep & kv_ok
        if q_len is not None:
            q_ok = q_idx < q_len[b] if spec.side == "right" else q_idx >= t - q_len[b]
            keep = keep & q_ok
        if segments is not None:
            keep = keep & (segments[b, q_idx] == segments[b, kv_idx])
        return keep

    return mask_mod


def flex_score_mod(case, device: torch.device | str = "cpu"):
    """The case's soft-capping, c * tanh(score / c), then its score bias, score + bias[h, q_idx, kv_idx]
    (a tensor on `device`), as one flex score_mod (flex applies it to the scaled score, before the mask);
    None when the case has neither."""
    if case.softcap is None and case.bias is None:
        return None
    cap = case.softcap
    bias = None if case.bias is None else torch.from_numpy(case.bias).to(device)

    def score_mod(score, b, h, q_idx, kv_idx):
        if cap is not None:
            score = cap * torch.tanh(score / cap)
        if bias is not None:
            score = score + bias[h, q_idx, kv_idx].to(score.dtype)
        return score

    return score_mod


@autograd_path
def flex(q, k, v, case):
    """flex_attention(q, k, v, score_mod=flex_score_mod(case),
    block_mask=create_block_mask(mask_mod, B, H, T, S, device="cpu"))."""
    b, h, t, s = case.shape
    block_mask = create_block_mask(flex_mask_mod(case), b, h, t, s, device="cpu")
    with warnings.catch_warnings():
        # Eager flex_attention warns that it runs unfused without torch.compile; that is intended here.
        warnings.simplefilter("ignore")
        return flex_attention(q, k, v, score_mod=flex_score_mod(case), block_mask=block_mask), None


GRAD = frozenset({"grad"})
GRAD_BIAS = frozenset({"grad", "bias"})

PATHS = [
    Path("torch.softmax-masked_fill", "torch", "softmax(scores.masked_fill(~mask, -inf))", softmax_masked_fill,
         "keep mask inverted for masked_fill; a score bias added first; weights and output", GRAD_BIAS),
    Path("torch.softmax-additive-inf", "torch", "torch.softmax(scores + additive -inf)", softmax_additive_inf,
         "hand-written additive mask: 0 kept, -inf masked; weights and output", GRAD_BIAS),
    Path("torch.softmax-additive-min", "torch", "torch.softmax(scores + additive finfo.min)", softmax_additive_min,
         "hand-written additive mask: 0 kept, finfo(dtype).min masked (HF eager); weights and output", GRAD_BIAS),
    Path("torch.mha-weights", "torch", "nn.MultiheadAttention(need_weights=True)", mha_weights,
         "attn_mask = ~mask, (B*H, T, S), True = masked; identity projections", GRAD),
    Path("torch.mha-fast-path", "torch", "nn.MultiheadAttention fast path", mha_fast_path,
         "eval + inference_mode + need_weights=False; self-attention x = q only",
         no_grads="the fast path runs under inference_mode only"),
    Path("torch.mha-square-subsequent", "torch", "MHA + generate_square_subsequent_mask", mha_square_subsequent,
         "float -inf causal (T, T) attn_mask, float -inf key_padding_mask", GRAD),
    Path("torch.sdpa-bool", "torch", "F.scaled_dot_product_attention(bool attn_mask)", sdpa_bool,
         "bool attn_mask, True = attend (same as refmask)", GRAD),
    Path("torch.sdpa-additive-inf", "torch", "F.scaled_dot_product_attention(additive -inf)", sdpa_additive_inf,
         "float attn_mask: 0 kept, -inf masked, plus any score bias", GRAD_BIAS),
    Path("torch.sdpa-additive-min", "torch", "F.scaled_dot_product_attention(additive finfo.min)",
         sdpa_additive_min, "float attn_mask: 0 kept, finfo(dtype).min masked, plus any score bias", GRAD_BIAS),
    Path("torch.sdpa-is_causal", "torch", "F.scaled_dot_product_attention(is_causal=True)", sdpa_is_causal,
         "causal only, top-left", GRAD),
    Path("torch.sdpa-causal_upper_left", "torch", "SDPA + causal_upper_left(T, S)", sdpa_causal_upper_left,
         "CausalBias, top-left", GRAD),
    Path("torch.sdpa-causal_lower_right", "torch", "SDPA + causal_lower_right(T, S)", sdpa_causal_lower_right,
         "CausalBias, bottom-right", GRAD),
    Path("torch.flex_attention", "torch", "flex_attention + create_block_mask", flex,
         "mask_mod(b, h, q_idx, kv_idx) -> True = attend, from the mask's structure; softcap and score bias as "
         "a score_mod",
         frozenset({"softcap", "bias"}), no_grads=NO_FLEX_CPU_BACKWARD),
]
