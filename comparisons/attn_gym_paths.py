"""attention-gym's mask_mods and score_mods (attn_gym.masks, attn_gym.mods) run by torch's flex_attention.

attention-gym is a library of flex_attention building blocks: each generator returns a mask_mod or a
score_mod, and the model hands them to torch.nn.attention.flex_attention. Conventions to translate
(refmask: bool mask, True = may attend, broadcastable to (B, H, T, S)):

- A mask_mod(b, h, q_idx, kv_idx) -> bool is True = attend, on raw indices: top-left aligned.
  create_block_mask(mask_mod, B, H, T, S) compiles it into the BlockMask that flex_attention takes;
  create_mask(mask_mod, B, H, T, S) materialises the same mask as a dense bool tensor.
- causal_mask is q_idx >= kv_idx. generate_sliding_window(w) is causal and keeps q_idx - kv_idx <= w:
  w + 1 keys, the window (w, 0) (refmask.conventions.attention_gym_sliding_window); it has no look-ahead.
- generate_doc_mask_mod(inner, offsets) and generate_packed_causal_doc_mask_mod(offsets) are for the
  "sequence stacked format": the batch's sequences laid end to end as one sequence, offsets (N + 1,) the
  cumulative document lengths (cu_seqlens), the inner mask_mod applied to positions within a document.
  The documents are shared by the whole batch (the mask_mod ignores b), so the adapters stack every
  example's documents into one batch-1 row, as the format asks, and unstack the output.
- generate_prefix_lm_mask(p) is or_masks(kv_idx < p, causal_mask): one prefix length for the batch.
- generate_dilated_sliding_window(w, d) keeps |q_idx - kv_idx| <= w with |q_idx - kv_idx| % d == 0: the
  symmetric window (w, w), dilated.
- attention-gym has no padding and no KV-cache-offset mask_mod: those cases are not stated.
- generate_tanh_softcap(c) is the score_mod c * tanh(score / c); flex applies score_mods to the scaled
  score, before the mask.
- generate_alibi_bias(H) is the score_mod score + (kv_idx - q_idx) * 2^(-8 (h + 1) / H): the ALiBi
  slopes of the paper for H a power of two; for other H the paper (and refmask.alibi_slopes) interleave
  the slopes of the powers of two around H instead, so the two differ.
- Sinks: attn_gym.utils.merge_attention merges two attentions over disjoint key sets by their
  log-sum-exp; a sink is a key set of one key with logit sinks[h] and value 0 (output 0, lse sinks[h]),
  merged with flex_attention's output and lse (return_aux=AuxRequest(lse=True)).
- No gradients: flex_attention refuses inputs that require grad on CPU (_validate_device raises
  NotImplementedError, "FlexAttention does not support backward on CPU"), and the matrix runs on CPU.
- flex_attention without torch.compile traces its HOP with dynamo per new mask_mod and shape (the
  unfused reference implementation, which materialises the scores); its warning saying so is silenced.
"""

from __future__ import annotations

import warnings
from importlib.metadata import version

import numpy as np
import torch
from attn_gym.masks import (  # type: ignore[import-untyped]
    causal_mask,
    generate_dilated_sliding_window,
    generate_doc_mask_mod,
    generate_packed_causal_doc_mask_mod,
    generate_prefix_lm_mask,
    generate_sliding_window,
)
from attn_gym.mods import generate_alibi_bias, generate_tanh_softcap  # type: ignore[import-untyped]
from attn_gym.utils import merge_attention  # type: ignore[import-untyped]
from torch.nn.attention.flex_attention import AuxRequest, create_block_mask, flex_attention, noop_mask

from refmask import conventions, oracle

from ._base import NO_FLEX_CPU_BACKWARD, Native, NotExpressible, Path, check_expressible, document_lengths
from .torch_paths import to_numpy, to_torch

FRAMEWORK_VERSION = f"attn-gym {version('attn-gym')}, torch {torch.__version__}"


# ----------------------------------------------------------------------------------------------
# the mask_mods, stated from the case's structure


def sliding_window_size(window: tuple[int, int]) -> int:
    """The w with conventions.attention_gym_sliding_window(w) == window; NotExpressible if none."""
    for w in range(window[0] + 1):
        if conventions.attention_gym_sliding_window(w) == window:
            return w
    raise NotExpressible(f"generate_sliding_window(w) is the window (w, 0): it cannot state {window}")


def stacked_offsets(case) -> torch.Tensor:
    """The (N + 1,) int32 offsets of every example's documents laid end to end: the sequence
    stacked format of one batch-1 row of B * T tokens (without segments, each example is a document)."""
    b, _, t, _ = case.shape
    if case.spec.segments is None:
        return torch.arange(0, b * t + 1, t, dtype=torch.int32)
    lengths = document_lengths(case)
    return torch.tensor(np.concatenate([[0], np.cumsum(lengths)]), dtype=torch.int32)


def mask_mod(case):
    """The case's mask as attention-gym's mask_mods: causal_mask, generate_sliding_window(w),
    generate_prefix_lm_mask(p), generate_dilated_sliding_window(w, d) or, for packed documents,
    generate_doc_mask_mod(causal_mask or noop_mask, offsets) over the stacked row."""
    check_expressible(case, parts={"causal", "window", "segments", "prefix", "dilation"},
                      why="attention-gym has no padding or cache-offset mask_mod; its causal_mask is top-left")
    spec = case.spec
    if spec.prefix is not None:
        if spec.window is not None or spec.segments is not None:
            raise NotExpressible("generate_prefix_lm_mask is a prefix and causal_mask only")
        return generate_prefix_lm_mask(spec.prefix)
    if spec.dilation is not None:
        left, right = spec.window or (None, None)
        if left is None or left != right or spec.causal is not None or spec.segments is not None:
            raise NotExpressible("generate_dilated_sliding_window(w, d) is the symmetric window (w, w) only")
        return generate_dilated_sliding_window(left, spec.dilation)
    if spec.segments is not None:
        if spec.window is not None:
            raise NotExpressible("no case stacks windowed documents")
        return generate_doc_mask_mod(causal_mask if spec.causal else noop_mask, stacked_offsets(case))
    if spec.window is not None:
        left, right = spec.window
        # Top-left causal caps the look-ahead at 0: causal & window (l, r) is the window (l, 0).
        if spec.causal is not None:
            right = 0
        return generate_sliding_window(sliding_window_size((left, right)))
    return causal_mask if spec.causal is not None else noop_mask


def _alibi_heads(case) -> int:
    """H, for a case whose score bias is refmask.alibi_bias(H, T, S): what generate_alibi_bias takes."""
    _, h, t, s = case.shape
    if not np.array_equal(case.bias, oracle.alibi_bias(h, t, s)):
        raise NotExpressible("attention-gym's score_mods state ALiBi only, not another score bias")
    return h


def score_mod(case):
    """generate_tanh_softcap(c) for a soft-capped case, then generate_alibi_bias(H) for an ALiBi case;
    None for neither (flex's identity)."""
    mods = []
    if case.softcap is not None:
        mods.append(generate_tanh_softcap(case.softcap))
    if case.bias is not None:
        mods.append(generate_alibi_bias(_alibi_heads(case)))
    if len(mods) < 2:
        return mods[0] if mods else None
    first, second = mods

    def softcap_then_alibi(score, b, h, q_idx, kv_idx):
        return second(first(score, b, h, q_idx, kv_idx), b, h, q_idx, kv_idx)

    return softcap_then_alibi


# ----------------------------------------------------------------------------------------------
# running flex_attention


def _stacked(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, D) -> (1, H, B * T, D): the examples end to end, one batch-1 row."""
    b, h, t, d = x.shape
    return x.permute(1, 0, 2, 3).reshape(1, h, b * t, d)


def _unstacked(x: torch.Tensor, b: int) -> torch.Tensor:
    """(1, H, B * T, D) -> (B, H, T, D): _stacked undone."""
    _, h, bt, d = x.shape
    return x.reshape(h, b, bt // b, d).permute(1, 0, 2, 3)


def run_flex(case, fn, *, stacked: bool) -> Native:
    """flex_attention(q, k, v, score_mod, block_mask=create_block_mask(fn, ...)) on the case (its
    examples stacked into one row if `stacked`), the sinks merged in by merge_attention."""
    q, k, v = (to_torch(x) for x in (case.q, case.k, case.v))
    b = q.shape[0]
    if stacked:
        q, k, v = _stacked(q), _stacked(k), _stacked(v)
    nb, h, t, s = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    block_mask = create_block_mask(fn, nb, h, t, s, device="cpu")
    with warnings.catch_warnings():
        # Eager flex_attention warns that it runs unfused without torch.compile; that is intended here.
        warnings.simplefilter("ignore")
        out, aux = flex_attention(q, k, v, score_mod=score_mod(case), block_mask=block_mask,
                                  return_aux=AuxRequest(lse=True))
    if case.sinks is not None:
        sink_lse = torch.from_numpy(case.sinks)[None, :, None].expand(nb, h, t)
        out, _ = merge_attention(out, aux.lse, torch.zeros_like(out), sink_lse)
        out = out.to(q.dtype)
    return Native(output=to_numpy(_unstacked(out, b) if stacked else out))


def mask_mods(case) -> Native:
    """flex_attention with attention-gym's mask_mods and score_mods stated from the case's structure."""
    return run_flex(case, mask_mod(case), stacked=case.spec.segments is not None)


def packed_causal_doc(case) -> Native:
    """flex_attention with generate_packed_causal_doc_mask_mod(offsets) over the stacked batch: causal
    documents as one interval of keys per query (doc start <= kv_idx <= q_idx); a causal batch with
    T = S is its examples stacked, one document each."""
    why = "generate_packed_causal_doc_mask_mod states causal packed documents only"
    check_expressible(case, parts={"causal", "segments"}, square=True, why=why)
    if case.spec.causal is None:
        raise NotExpressible(why)
    return run_flex(case, generate_packed_causal_doc_mask_mod(stacked_offsets(case)), stacked=True)


_FEATURES = frozenset({"softcap", "sinks"})

PATHS = [
    Path("attn_gym.mask_mods", "attn_gym", "flex_attention + attn_gym.masks / attn_gym.mods", mask_mods,
         "causal_mask, generate_sliding_window(w) (w from conventions), generate_prefix_lm_mask, "
         "generate_dilated_sliding_window, generate_doc_mask_mod over the stacked batch; generate_tanh_softcap, "
         "generate_alibi_bias; sinks by merge_attention", features=_FEATURES | {"bias"}, no_grads=NO_FLEX_CPU_BACKWARD),
    Path("attn_gym.packed-causal-doc", "attn_gym", "flex_attention + generate_packed_causal_doc_mask_mod",
         packed_causal_doc, "causal documents as one key interval per query, offsets = cu_seqlens of the "
         "stacked batch (an example per document without segments)", features=_FEATURES, no_grads=NO_FLEX_CPU_BACKWARD),
]
