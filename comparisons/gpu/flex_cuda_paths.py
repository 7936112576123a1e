"""flex_attention compiled with torch.compile on CUDA, stated from a refmask case.

Conventions to translate (refmask: bool mask, True = may attend, broadcastable to (B, H, T, S)):

- flex_attention(q, k, v, score_mod=, block_mask=, scale=): block_mask = create_block_mask(mask_mod, B, H,
  T, S, device=...) with mask_mod(b, h, q_idx, kv_idx) -> True = attend, on raw indices (top-left);
  score_mod(score, b, h, q_idx, kv_idx) receives the scaled score before the mask, so soft-capping is
  c * tanh(score / c) and a score bias is score + bias[h, q_idx, kv_idx]. Both are the CPU matrix's
  (torch_paths.flex_mask_mod and flex_score_mod), their tensors on the kernel's device.
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
from ..torch_paths import flex_mask_mod, flex_score_mod
from ._inputs import kernel_inputs
from .torch_cuda_paths import device, kernel_result, on

FRAMEWORK_VERSION = torch.__version__

# What compiles flex_attention; the tests put the identity here to run the adapter eagerly on the CPU.
compile_flex: Callable[[Any], Any] = torch.compile


def flex_compiled(case) -> Native:
    """torch.compile(flex_attention)(q, k, v, block_mask=create_block_mask(mask_mod, ..., device="cuda"),
    score_mod=the case's softcap and score bias): the CPU matrix's mask_mod and score_mod (torch_paths)."""
    # Imported here: flex_attention brings torch._dynamo in, seconds of importing that a run with no GPU
    # (every cell "no CUDA device") does without.
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    dev = device()
    x = kernel_inputs(case, half_only=False)
    b, h, t, s = case.shape
    block_mask = create_block_mask(flex_mask_mod(case, dev), b, h, t, s, device=str(dev))
    score_mod = flex_score_mod(case, dev)
    leaves = tuple(on(a, dev, grad=x.d_out is not None) for a in (x.q, x.k, x.v))
    torch._dynamo.reset()
    out = compile_flex(flex_attention)(*leaves, score_mod=score_mod, block_mask=block_mask, scale=x.scale)
    return kernel_result(out, x, leaves)


PATHS = [
    Path("torch-cuda.flex_attention-compiled", "torch-cuda-compile", "torch.compile(flex_attention) on CUDA",
         flex_compiled, "mask_mod(b, h, q_idx, kv_idx) -> True = attend, from the structure; softcap and score "
         "bias as a score_mod; D zero-padded to 16, scale 1/sqrt(D)", frozenset({"softcap", "bias", "grad"})),
]
