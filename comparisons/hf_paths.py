"""Hugging Face transformers' masks (masking_utils) and attention interfaces, each stated from a refmask case.

Conventions to translate (refmask: bool mask, True = may attend, broadcastable to (B, H, T, S)):

- A model builds its mask once, in masking_utils, for the attention implementation its config names
  (config._attn_implementation), from a 2D attention_mask (B, S) of 1 = real token / 0 = padding,
  the cache and the position ids. Every mask is (B, 1, T, S) and masks keys only: padding_mask_function
  reads padding_mask[b, kv_idx], so a padded query attends to the valid keys (its output is discarded).
  - "eager" (eager_mask): a float mask *added* to the scores: 0 kept, torch.finfo(inputs_embeds.dtype).min
    masked, so a row with no kept key comes out uniform.
  - "sdpa" (sdpa_mask): a bool mask, True = attend (refmask's convention), or None when the mask is plain
    causal (T = S, or one query) without padding: the interface then calls SDPA with is_causal=True
    (top-left) for T > 1 queries on a causal module, and with no mask otherwise.
  - "flex_attention" (flex_attention_mask): a BlockMask built by create_block_mask from the mask
    function (mask_mod(b, h, q_idx, kv_idx) -> True = attend).
- The structure: create_causal_mask keeps kv_idx <= q_idx at absolute positions: with a cache of p past
  tokens the queries sit at p .. p + T - 1 (bottom-right); the cache holds one length for the whole
  batch. create_sliding_window_causal_mask adds kv_idx > q_idx - sliding_window: config.sliding_window=w
  is refmask's window=(w - 1, 0) (refmask.conventions.hf_sliding_window); Mistral's model picks it when
  config.sliding_window is set. create_bidirectional_mask (encoders) is padding only; in
  create_bidirectional_sliding_window_mask the same sliding_window=w keeps |i - j| <= w, i.e. (w, w).
  Packed sequences (several documents in one row, no attention_mask, no cache) are found from position ids
  that restart
  (find_packed_sequence_indices: a new document wherever the position does not grow by 1), and each
  document is causal on its own positions. A prefix LM is create_causal_mask(block_sequence_ids=...):
  blockwise_overlay or-ed with causal, the prefix one block that sees itself both ways.
- The attention interfaces take q, k, v (B, H, T, D) and the mask, and return the output as
  (B, T, H, D) with the softmax weights (eager) or None. Eager adds the mask to scaling * q k^T and takes
  the softmax in float32, cast back to q's dtype; Gemma 2's soft-caps the scores first
  (attn_logit_softcapping); GPT-OSS's appends one sink logit per head (module.sinks) to every row and
  takes the softmax in the logits' dtype. The sdpa interface is F.scaled_dot_product_attention (it refuses
  softcap). The flex interface adds a float mask through a score_mod, or applies a BlockMask; it
  refuses sinks on CPU.
- transformers wraps flex_attention and create_block_mask in torch.compile, which compiles them on first
  use; the flex paths run under torch.compiler.set_stance("force_eager"), where the same calls run torch's
  eager flex_attention (its math reference: scores in float32, a masked entry -inf) and create_block_mask.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is built from configs: no downloads

import functools
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import transformers
from transformers import Gemma2Config, GptOssConfig, MistralConfig
from transformers.cache_utils import DynamicCache
from transformers.masking_utils import (
    create_bidirectional_mask,
    create_bidirectional_sliding_window_mask,
    create_causal_mask,
    create_chunked_causal_mask,
    create_sliding_window_causal_mask,
    packed_sequence_mask_function,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.gemma2 import modeling_gemma2
from transformers.models.gpt_oss import modeling_gpt_oss
from transformers.models.mistral import modeling_mistral

from refmask import conventions, oracle

from ._base import NO_FLEX_CPU_BACKWARD, Native, NotExpressible, Path
from .torch_paths import to_numpy, to_torch

FRAMEWORK_VERSION = transformers.__version__

# ----------------------------------------------------------------------------------------------
# tiny configs and attention modules (only their attention attributes are read; no weights used)


def _sizes(h: int, d: int) -> dict[str, Any]:
    """The config sizes of a one-layer model with H heads of width D (no grouped-query heads)."""
    return {"hidden_size": h * d, "num_attention_heads": h, "num_key_value_heads": h, "head_dim": d,
            "num_hidden_layers": 1, "intermediate_size": 8, "vocab_size": 8}


@functools.cache
def mistral_config(implementation: str, h: int, d: int, sliding_window: int | None = None) -> MistralConfig:
    """A tiny Mistral config (Llama's attention plus an optional sliding_window) for `implementation`."""
    config = MistralConfig(**_sizes(h, d), sliding_window=sliding_window)
    config._attn_implementation = implementation
    return config


@functools.cache
def mistral_attention(h: int, d: int) -> Any:
    """MistralAttention in eval mode: scaling = D**-0.5, num_key_value_groups = 1, is_causal = True."""
    return modeling_mistral.MistralAttention(mistral_config("eager", h, d), layer_idx=0).eval()


@functools.cache
def gemma2_attention(h: int, d: int, softcap: float | None) -> Any:
    """Gemma2Attention with attn_logit_softcapping = softcap and scaling = query_pre_attn_scalar**-0.5 = D**-0.5."""
    config = Gemma2Config(**_sizes(h, d), query_pre_attn_scalar=d, attn_logit_softcapping=softcap)
    config._attn_implementation = "eager"
    return modeling_gemma2.Gemma2Attention(config, layer_idx=0).eval()


@functools.cache
def gpt_oss_attention(h: int, d: int, dtype: torch.dtype) -> Any:
    """GptOssAttention in `dtype` (its sinks parameter too, as in a model loaded in that dtype)."""
    config = GptOssConfig(**_sizes(h, d))
    config._attn_implementation = "eager"
    return modeling_gpt_oss.GptOssAttention(config, layer_idx=0).eval().to(dtype)


# ----------------------------------------------------------------------------------------------
# calling an attention interface


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def _attend(case, call: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, Any]],
            kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> Native:
    """Run `call(q, k, v) -> (output (B, T, H, D), weights or None)` on the case's q, k, v (k, v = kv when
    given: what a cache returned); with the case's d_out, backpropagate sum(d_out * output) through
    torch autograd for (dq, dk, dv)."""
    grad = case.d_out is not None
    k, v = kv or (to_torch(case.k), to_torch(case.v))
    q, kt, vt = (x.detach().requires_grad_(grad) for x in (to_torch(case.q), k, v))
    with torch.set_grad_enabled(grad):
        out, weights = call(q, kt, vt)
        out = out.transpose(1, 2)
        if not grad:
            return Native(weights=None if weights is None else to_numpy(weights), output=to_numpy(out))
        (out * to_torch(case.d_out)).sum().backward()
    dq, dk, dv = (to_numpy(x.grad) for x in (q, kt, vt) if x.grad is not None)
    return Native(weights=None if weights is None else to_numpy(weights), output=to_numpy(out), grads=(dq, dk, dv))


def _flex(function: Callable[..., tuple[torch.Tensor, Any]]) -> Callable[..., tuple[torch.Tensor, Any]]:
    """The flex interface run eagerly (torch.compiler.set_stance("force_eager")), its warnings about
    running without torch.compile silenced: that is intended here."""

    def run(*args, **kwargs):
        with torch.compiler.set_stance("force_eager"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return function(*args, **kwargs)

    return run


# ----------------------------------------------------------------------------------------------
# the case's own mask in each interface's convention (what masking_utils would hand the interface)


def bool_mask(case) -> torch.Tensor:
    """The case's mask as sdpa_mask states it: (B, 1, T, S) bool, True = attend."""
    b, _, t, s = case.shape
    return torch.from_numpy(np.broadcast_to(case.mask, (b, 1, t, s)).copy())


def additive_mask(case) -> torch.Tensor:
    """The case's mask as eager_mask states it: 0 kept, finfo.min masked, in case.fill_dtype (else the
    case's dtype), then cast to the case's dtype, as a model in half precision that upcasts does."""
    fill = _dtype(case.fill_dtype or case.dtype)
    bias = torch.where(bool_mask(case), torch.zeros((), dtype=fill), torch.finfo(fill).min)
    return bias.to(_dtype(case.dtype))


def biased_additive_mask(case) -> torch.Tensor:
    """additive_mask(case) plus the case's score bias (H, T, S), if any: eager attention adds its mask to
    the scores, so an ALiBi model (Bloom, Falcon) folds the bias into it."""
    mask = additive_mask(case)
    if case.bias is None:
        return mask
    return mask + torch.from_numpy(case.bias)[None].to(mask.dtype)


def position_bias(case) -> torch.Tensor | None:
    """The case's score bias as flex_attention_forward's position_bias, (B, H, T, S); None without one."""
    return None if case.bias is None else torch.from_numpy(case.bias)[None].expand(case.shape).to(_dtype(case.dtype))


def eager_additive(case) -> Native:
    """Mistral's (Llama's) eager_attention_forward with the additive mask; weights and output."""
    _, h, _, d = case.q.shape
    module, mask = mistral_attention(h, d), biased_additive_mask(case)
    return _attend(case, lambda q, k, v: modeling_mistral.eager_attention_forward(
        module, q, k, v, mask, scaling=module.scaling, dropout=0.0))


def gemma2_eager_additive(case) -> Native:
    """Gemma 2's eager_attention_forward (softcap = attn_logit_softcapping) with the additive mask."""
    _, h, _, d = case.q.shape
    module, mask = gemma2_attention(h, d, case.softcap), biased_additive_mask(case)
    return _attend(case, lambda q, k, v: modeling_gemma2.eager_attention_forward(
        module, q, k, v, mask, dropout=0.0, scaling=module.scaling, softcap=module.attn_logit_softcapping))


def gpt_oss_eager_additive(case) -> Native:
    """GPT-OSS's eager_attention_forward with the additive mask and module.sinks = case.sinks; a case
    without sinks gets sink logits of -inf, whose exp(-inf) = 0 adds nothing to the denominator."""
    _, h, _, d = case.q.shape
    dtype = _dtype(case.dtype)
    module, mask = gpt_oss_attention(h, d, dtype), biased_additive_mask(case)
    sinks = torch.full((h,), float("-inf")) if case.sinks is None else torch.from_numpy(case.sinks)
    with torch.no_grad():
        module.sinks.copy_(sinks.to(dtype))
    return _attend(case, lambda q, k, v: modeling_gpt_oss.eager_attention_forward(
        module, q, k, v, mask, scaling=module.scaling, dropout=0.0))


def sdpa_bool(case) -> Native:
    """ALL_ATTENTION_FUNCTIONS["sdpa"] with the bool mask."""
    _, h, _, d = case.q.shape
    module, mask = mistral_attention(h, d), bool_mask(case)
    return _attend(case, lambda q, k, v: ALL_ATTENTION_FUNCTIONS["sdpa"](
        module, q, k, v, mask, dropout=0.0, scaling=module.scaling))


def flex_additive(case) -> Native:
    """ALL_ATTENTION_FUNCTIONS["flex_attention"] with the additive mask (its score_mod adds it), the
    case's softcap (soft-capped in the same score_mod, before the mask is added) and its score bias as
    position_bias (added there too, per head: the mask is read at head 0 only)."""
    _, h, _, d = case.q.shape
    module, mask = mistral_attention(h, d), additive_mask(case)
    flex = _flex(ALL_ATTENTION_FUNCTIONS["flex_attention"])
    return _attend(case, lambda q, k, v: flex(module, q, k, v, mask, scaling=module.scaling, softcap=case.softcap,
                                              position_bias=position_bias(case)))


# ----------------------------------------------------------------------------------------------
# the case's structure through masking_utils, as Mistral's model states it


def hf_sliding_window(window: tuple[int | None, int | None], longest: int) -> int:
    """The config sliding_window=w whose causal window (refmask.conventions.hf_sliding_window) is `window`."""
    for w in range(1, longest + 2):
        if conventions.hf_sliding_window(w) == tuple(window):
            return w
    raise NotExpressible(f"no sliding_window=w means window={window}: a causal sliding_window=w is (w - 1, 0)")


def _config_window(case) -> int | None:
    """config.sliding_window for the case's window: the causal (w - 1, 0) of create_sliding_window_causal_mask,
    or the symmetric |i - j| <= w, (w, w), of create_bidirectional_sliding_window_mask."""
    window, s = case.spec.window, case.shape[3]
    if window is None:
        return None
    if case.spec.causal is not None:
        return hf_sliding_window(window, s)
    left, right = window
    if left is None or left != right:
        raise NotExpressible(f"window={window} without causality: masking_utils' bidirectional window is "
                             f"symmetric, sliding_window=w keeps |i - j| <= w")
    return left


def _refuse_what_masks_cannot_state(case) -> None:
    """NotExpressible for the parts of a case that masking_utils has no argument for."""
    spec = case.spec
    _, _, t, s = case.shape
    if spec.q_lengths is not None:
        raise NotExpressible("masking_utils pads keys only (padding_mask_function reads kv_idx): "
                             "a padded query still attends to the valid keys")
    if spec.offset is not None:
        raise NotExpressible("a Cache holds one length for the whole batch (its query offset is an int) and the "
                             "2D attention_mask only drops keys: no per-example cache offsets")
    if spec.segments is not None and (spec.kv_lengths is not None or spec.window is not None):
        raise NotExpressible("packed sequences are stated without an attention_mask or a window here")
    if spec.causal is not None and t > s:
        raise NotExpressible("a cache puts the queries after the keys: no T > S")
    if spec.dilation is not None:
        raise NotExpressible("masking_utils has no dilated window (its windows keep every key in range)")
    if spec.prefix is not None and (spec.window is not None or spec.segments is not None or t != s):
        raise NotExpressible("a prefix is stated here as one bidirectional block of a causal mask, without a cache")
    if spec.chunk is not None and (spec.causal is None or spec.window is not None or spec.segments is not None
                                   or spec.prefix is not None or t != s):
        raise NotExpressible("create_chunked_causal_mask states causal chunks, without a window, packing or a cache")


def _padding(case) -> torch.Tensor | None:
    """The 2D attention_mask (B, S): 1 at real tokens, 0 at padding."""
    spec = case.spec
    if spec.kv_lengths is None:
        return None
    valid = oracle.padding_mask(np.array(spec.kv_lengths), case.shape[3], side=spec.side)
    return torch.from_numpy(valid.astype(np.int64))


def model_mask(case, implementation: str) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """What masking_utils builds for the case's structure and `implementation`, as Mistral's forward
    calls it, with the keys and values the attention then reads: (mask, k, v).

    Causal: create_causal_mask, or create_sliding_window_causal_mask with config.sliding_window from the
    window; T < S puts the first S - T keys in a DynamicCache (the queries follow them, and the layer's
    cache.update appends the rest); segments are packed documents whose position ids restart at 0. Not
    causal (an encoder): create_bidirectional_mask, or create_bidirectional_sliding_window_mask for a
    symmetric window, with segments through and_mask_function=packed_sequence_mask_function. A prefix LM:
    create_causal_mask with block_sequence_ids marking the prefix as one block (the overlay multimodal
    models use for bidirectional image tokens). Chunked causal: create_chunked_causal_mask with
    config.attention_chunk_size (Llama 4's), chunks counted from each example's first real token.
    inputs_embeds is in case.fill_dtype (else the case's dtype): the eager mask's fill comes from it.
    """
    _refuse_what_masks_cannot_state(case)
    spec = case.spec
    b, h, t, s = case.shape
    d = case.q.shape[3]
    config = mistral_config(implementation, h, d, _config_window(case))
    embeds = torch.zeros(b, t, h * d, dtype=_dtype(case.fill_dtype or case.dtype))
    k, v = to_torch(case.k), to_torch(case.v)
    attention_mask = _padding(case)
    if spec.causal is None:
        overlay = None if spec.segments is None else packed_sequence_mask_function(torch.tensor(spec.segments))
        create = create_bidirectional_sliding_window_mask if config.sliding_window else create_bidirectional_mask
        return create(config=config, inputs_embeds=embeds, attention_mask=attention_mask,
                      and_mask_function=overlay), k, v
    past = s - t
    cache = DynamicCache(ddp_cache_data=[(k[:, :, :past], v[:, :, :past])]) if past else None
    if spec.segments is not None:
        position_ids = torch.from_numpy(oracle.positions_in_segments(np.array(spec.segments)))
    else:
        position_ids = (torch.arange(t) + past)[None]
    if spec.chunk is not None:
        config.attention_chunk_size = spec.chunk  # Llama 4's config attribute, which the function reads
        return create_chunked_causal_mask(config=config, inputs_embeds=embeds, attention_mask=attention_mask,
                                          cache=None, position_ids=position_ids), k, v
    if spec.prefix is not None:
        # The prefix is a block (id 0) that attends to itself both ways: blockwise_overlay or-ed with causal.
        blocks = torch.where(torch.arange(t) < spec.prefix, 0, -1).expand(b, t)
        return create_causal_mask(config=config, inputs_embeds=embeds, attention_mask=attention_mask, cache=None,
                                  position_ids=position_ids, block_sequence_ids=blocks), k, v
    create = create_causal_mask if config.sliding_window is None else create_sliding_window_causal_mask
    mask = create(config=config, inputs_embeds=embeds, attention_mask=attention_mask, cache=cache,
                  position_ids=position_ids)
    if cache is not None:
        k, v = cache.update(k[:, :, past:], v[:, :, past:], layer_idx=0)
    return mask, k, v


def _with_model_mask(case, implementation: str, interface: Callable[..., tuple[torch.Tensor, Any]]) -> Native:
    """The interface called as a Mistral layer calls it, on model_mask(case, implementation); with
    is_causal=False for a non-causal case (an encoder's module), so SDPA gets no is_causal=True for a None mask."""
    _, h, _, d = case.q.shape
    mask, k, v = model_mask(case, implementation)
    module = mistral_attention(h, d)
    if isinstance(mask, torch.Tensor) and mask.is_floating_point():
        mask = mask.to(_dtype(case.dtype))  # a half-precision model's mask, upcast with its scores
    is_causal = case.spec.causal is not None
    return _attend(case, lambda q, k, v: interface(module, q, k, v, mask, dropout=0.0, scaling=module.scaling,
                                                   is_causal=is_causal), (k, v))


def masks_eager(case) -> Native:
    """masking_utils' eager mask -> eager_attention_forward; weights and output."""
    return _with_model_mask(case, "eager", modeling_mistral.eager_attention_forward)


def masks_sdpa(case) -> Native:
    """masking_utils' sdpa mask (bool, or None = is_causal) -> ALL_ATTENTION_FUNCTIONS["sdpa"]."""
    return _with_model_mask(case, "sdpa", ALL_ATTENTION_FUNCTIONS["sdpa"])


def model_block_mask(case) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """model_mask(case, "flex_attention") with create_block_mask run eagerly (its _compile=True
    deprecation warning silenced): the BlockMask, keys and values."""
    with torch.compiler.set_stance("force_eager"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model_mask(case, "flex_attention")


def masks_flex(case) -> Native:
    """masking_utils' BlockMask -> ALL_ATTENTION_FUNCTIONS["flex_attention"] (mask and call run eagerly)."""
    _, h, _, d = case.q.shape
    mask, k, v = model_block_mask(case)
    module = mistral_attention(h, d)
    flex = _flex(ALL_ATTENTION_FUNCTIONS["flex_attention"])
    return _attend(case, lambda q, k, v: flex(module, q, k, v, mask, scaling=module.scaling), (k, v))


_GRAD = frozenset({"grad"})

PATHS = [
    Path("hf.eager", "transformers", "eager_attention_forward(additive mask)", eager_additive,
         "float mask added to the scores: 0 kept, finfo(dtype).min masked (eager_mask's fill), plus any score bias; "
         "weights and output", features=_GRAD | {"bias"}),
    Path("hf.eager-gemma2", "transformers", "Gemma 2 eager_attention_forward(softcap)", gemma2_eager_additive,
         "as hf.eager, scores soft-capped by attn_logit_softcapping before the mask is added",
         features=frozenset({"softcap", "bias", "grad"})),
    Path("hf.eager-gpt_oss", "transformers", "GPT-OSS eager_attention_forward(sinks)", gpt_oss_eager_additive,
         "as hf.eager, module.sinks appended to each row (-inf without sinks); softmax in the logits' dtype",
         features=frozenset({"sinks", "bias", "grad"})),
    Path("hf.sdpa", "transformers", "ALL_ATTENTION_FUNCTIONS['sdpa'](bool mask)", sdpa_bool,
         "bool mask (B, 1, T, S), True = attend (sdpa_mask's convention)", features=_GRAD),
    Path("hf.flex_attention", "transformers", "ALL_ATTENTION_FUNCTIONS['flex_attention'](additive mask)",
         flex_additive, "float mask added by its score_mod (0 kept, finfo.min masked), after softcap; score bias "
         "as position_bias; run eagerly", features=frozenset({"softcap", "bias"}), no_grads=NO_FLEX_CPU_BACKWARD),
    Path("hf.masks-eager", "transformers", "masking_utils mask (eager) -> eager attention", masks_eager,
         "create_causal / sliding_window / bidirectional mask from 2D padding, cache, position ids; additive",
         features=_GRAD),
    Path("hf.masks-sdpa", "transformers", "masking_utils mask (sdpa) -> sdpa attention", masks_sdpa,
         "as hf.masks-eager, a bool mask, or None and SDPA's is_causal for a plain causal mask", features=_GRAD),
    Path("hf.masks-flex_attention", "transformers", "masking_utils BlockMask -> flex attention", masks_flex,
         "as hf.masks-eager, a BlockMask from the mask function; run eagerly", no_grads=NO_FLEX_CPU_BACKWARD),
]
