"""flex_attention compiled with torch.compile on CUDA, stated from a refmask case.

Conventions to translate (refmask: bool mask, True = may attend, broadcastable to (B, H, T, S)):

- flex_attention(q, k, v, score_mod=, block_mask=, scale=): block_mask = create_block_mask(mask_mod, B, H,
  T, S, device=...) with mask_mod(b, h, q_idx, kv_idx) -> True = attend, on raw indices (top-left);
  score_mod(score, b, h, q_idx, kv_idx) receives the scaled score before the mask, so soft-capping is
  c * tanh(score / c).
- torch.compile(flex_attention) generates one Triton kernel for the mask_mod and score_mod: that kernel
  is this row (the CPU matrix's torch.flex_attention runs flex's eager reference). Each case compiles
  afresh (torch._dynamo.reset()), so no case runs a kernel compiled for another one's mask_mod.
- Inputs as in torch_cuda_paths: the head dim zero-padded to 16 with the case's scale; float32 stays float32.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .._base import Native, Path
from ._inputs import kernel_inputs
from .torch_cuda_paths import device, kernel_result, on

FRAMEWORK_VERSION = torch.__version__

# What compiles flex_attention; the tests put the identity here to run the adapter eagerly on the CPU.
compile_flex: Callable[[Any], Any] = torch.compile


def mask_mod_for(case, dev: torch.device) -> Callable[..., Any]:
    """refmask's mask of the case as a mask_mod (True = attend), built from its structure; the tensors
    it reads (offsets, lengths, segment ids) live on the kernel's device."""
    spec = case.spec
    _, _, t, s = case.shape
    shift = s - t if spec.causal in ("bottom_right", "either") else 0

    def tensor(values: Any) -> torch.Tensor | None:
        return None if values is None else torch.tensor(values, device=dev)

    offset, kv_len, q_len, segments = map(tensor, (spec.offset, spec.kv_lengths, spec.q_lengths, spec.segments))

    def mask_mod(b, h, q_idx, kv_idx):
        keep = q_idx >= 0  # all True, as a tensor
        if offset is not None:  # query i of example b sits at position offset[b] + i
            keep = keep & (kv_idx <= q_idx + offset[b])
        elif spec.causal is not None:
            keep = keep & (kv_idx <= q_idx + shift)
        if spec.window is not None:
            left, right = spec.window
            keep = keep & (kv_idx >= q_idx - left) & (kv_idx <= q_idx + right)
        if kv_len is not None:
            keep = keep & (kv_idx < kv_len[b] if spec.side == "right" else kv_idx >= s - kv_len[b])
        if q_len is not None:
            keep = keep & (q_idx < q_len[b] if spec.side == "right" else q_idx >= t - q_len[b])
        if segments is not None:
            keep = keep & (segments[b, q_idx] == segments[b, kv_idx])
        return keep

    return mask_mod


def _softcap_mod(cap: float) -> Callable[..., Any]:
    """A score_mod soft-capping the (scaled) score: cap * tanh(score / cap)."""

    def score_mod(score, b, h, q_idx, kv_idx):
        return cap * torch.tanh(score / cap)

    return score_mod


def flex_compiled(case) -> Native:
    """torch.compile(flex_attention)(q, k, v, block_mask=create_block_mask(mask_mod, ..., device="cuda"),
    score_mod=softcap when the case caps its scores)."""
    # Imported here: flex_attention brings torch._dynamo in, seconds of importing that a run with no GPU
    # (every cell "no CUDA device") does without.
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    dev = device()
    x = kernel_inputs(case, half_only=False)
    b, h, t, s = case.shape
    block_mask = create_block_mask(mask_mod_for(case, dev), b, h, t, s, device=str(dev))
    score_mod = None if case.softcap is None else _softcap_mod(case.softcap)
    leaves = tuple(on(a, dev, grad=x.d_out is not None) for a in (x.q, x.k, x.v))
    torch._dynamo.reset()
    out = compile_flex(flex_attention)(*leaves, score_mod=score_mod, block_mask=block_mask, scale=x.scale)
    return kernel_result(out, x, leaves)


PATHS = [
    Path("torch-cuda.flex_attention-compiled", "torch-cuda-compile", "torch.compile(flex_attention) on CUDA",
         flex_compiled, "mask_mod(b, h, q_idx, kv_idx) -> True = attend, from the structure; softcap as a "
         "score_mod; D zero-padded to 16, scale 1/sqrt(D)", frozenset({"softcap", "grad"})),
]
