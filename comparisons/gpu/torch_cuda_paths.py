"""PyTorch's CUDA attention kernels, each forced and stated from a refmask case, and refmask's torch
backend on CUDA tensors.

Conventions to translate (refmask: bool mask, True = may attend, broadcastable to (B, H, T, S)):

- F.scaled_dot_product_attention picks a kernel per call; torch.nn.attention.sdpa_kernel(SDPBackend.X)
  forces one: FLASH_ATTENTION (float16/bfloat16 only), EFFICIENT_ATTENTION (memory-efficient; float32
  too), CUDNN_ATTENTION (float16/bfloat16 only) or MATH (the composite of plain ops). A bool attn_mask
  means what refmask's means (True = attend); a float attn_mask is added to the scores (0 = attend,
  finfo.min = masked); is_causal=True is the top-left causal mask. A forced kernel that cannot run a
  call warns why and raises "No available kernel": the path reports torch's reason as not expressible.
- refmask's torch backend takes CUDA tensors as it takes CPU ones (its attention runs on SDPA's
  kernels where refmask's promises hold there).

What the adapters do that a caller of these kernels does too (comparisons/gpu/_inputs.py):
- a float32 case runs in float16 on the half-precision-only kernels (flash, cuDNN): its inputs are
  rounded first, and the matrix holds the oracle on the rounded inputs;
- the head dim is zero-padded to a multiple of 16 (the cases' D is 4, below what cuDNN and flex
  accept), with scale=1/sqrt(D) of the case passed: zero columns add 0 to every score, and the
  output's padded columns are dropped.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import refmask
from refmask._backends import from_numpy, to_numpy

from .._base import Native, NotExpressible, Path, check_expressible
from . import device as gpu_device
from ._inputs import KernelInputs, additive_mask, kernel_inputs

FRAMEWORK_VERSION = torch.__version__

KERNELS = {
    "math": SDPBackend.MATH,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}
HALF_ONLY = frozenset({"flash", "cudnn"})
# How SDPA says that the enabled kernels refuse a call (CUDA's wording, then the CPU's).
_NO_KERNEL = re.compile(r"No available kernel|No viable backend")
# The heading SDPA warns before each kernel's reasons ("Flash attention kernel not used because:").
_HEADINGS = {"math": "math", "efficient": "memory efficient", "flash": "flash attention", "cudnn": "cudnn attention"}
# What torch appends to a warning raised in C++: where, not why.
_TRIGGERED = re.compile(r"\s*\(Triggered internally at [^)]*\)\s*$")


def device() -> torch.device:
    """The CUDA device the paths run on; NotExpressible("no CUDA device") where there is none."""
    found = gpu_device.torch_cuda_device()
    if found is None:
        raise NotExpressible(gpu_device.NO_CUDA)
    return found


def on(x: np.ndarray, dev: torch.device, grad: bool = False) -> torch.Tensor:
    """The NumPy array x as a tensor on `dev` (a leaf that requires grad when `grad`)."""
    t = from_numpy(x, "torch").to(dev)
    return t.requires_grad_(True) if grad else t


def host(x: torch.Tensor) -> np.ndarray:
    """The tensor as NumPy, copied to the host (bfloat16 as ml_dtypes')."""
    return np.asarray(to_numpy(x.detach()))


def kernel_result(out: torch.Tensor, x: KernelInputs, leaves: tuple[torch.Tensor, ...]) -> Native:
    """The kernel's output (and, for a "grad" case, autograd's dq, dk, dv of sum(d_out * out)), unpadded."""
    grads = None
    if x.d_out is not None:
        dq, dk, dv = torch.autograd.grad(out, leaves, on(x.d_out, out.device))
        grads = (x.unpad(host(dq)), x.unpad(host(dk)), x.unpad(host(dv)))
    return Native(output=x.unpad(host(out)), qkv=x.rounded, grads=grads)


# ----------------------------------------------------------------------------------------------
# scaled_dot_product_attention, one kernel forced


def _refusal(kernel: str, messages: list[str], err: Exception) -> str:
    """torch's reasons why `kernel` refused the call: the warnings under its own heading, else all."""
    messages = [_TRIGGERED.sub("", m).strip() for m in messages]
    mine: list[str] = []
    under_mine = False
    for message in messages:
        if "kernel not used because" in message:
            under_mine = message.lower().startswith(_HEADINGS[kernel])
        elif under_mine:
            mine.append(message)
    return "; ".join(mine or messages) or str(err).splitlines()[0]


def forced(kernel: str, call: Callable[[], torch.Tensor]) -> torch.Tensor:
    """call() with SDPA restricted to `kernel`; NotExpressible with torch's reason if the kernel refuses."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        try:
            with sdpa_kernel([KERNELS[kernel]]):
                return call()
        except RuntimeError as err:
            if not _NO_KERNEL.search(str(err)):
                raise
            reason = _refusal(kernel, [str(w.message) for w in seen], err)
    raise NotExpressible(f"SDPA's {kernel} kernel refuses the call: {reason}"[:300])


def sdpa(case, kernel: str, mask: str) -> Native:
    """F.scaled_dot_product_attention under sdpa_kernel(kernel); `mask`: "bool" (attn_mask = the case's
    mask), "additive" (attn_mask = 0 / finfo.min) or "is_causal"."""
    if mask == "is_causal":
        check_expressible(case, parts={"causal"}, why="is_causal states a top-left causal mask only")
    dev = device()
    x = kernel_inputs(case, half_only=kernel in HALF_ONLY)
    leaves = tuple(on(a, dev, grad=x.d_out is not None) for a in (x.q, x.k, x.v))
    kwargs: dict[str, Any] = {"scale": x.scale}
    if mask == "bool":
        kwargs["attn_mask"] = on(np.ascontiguousarray(case.mask), dev)
    elif mask == "additive":
        kwargs["attn_mask"] = on(additive_mask(case, x.dtype), dev)
    else:
        kwargs["is_causal"] = True
    q, k, v = leaves
    out = forced(kernel, lambda: F.scaled_dot_product_attention(q, k, v, **kwargs))
    return kernel_result(out, x, leaves)


def _sdpa_path(kernel: str, mask: str) -> Path:
    """The matrix row of SDPA under `kernel` with `mask` ("bool", "additive" or "is_causal")."""

    def fn(case) -> Native:
        return sdpa(case, kernel, mask)

    fn.__doc__ = f"F.scaled_dot_product_attention with {mask} under sdpa_kernel(SDPBackend.{KERNELS[kernel].name})."
    stated = {"bool": "bool attn_mask, True = attend", "additive": "float attn_mask: 0 kept, finfo.min masked "
              "(in fill_dtype, cast)", "is_causal": "is_causal=True, top-left causal only"}[mask]
    half = "; float32 cases run in float16" if kernel in HALF_ONLY else ""
    return Path(f"torch-cuda.sdpa-{kernel}-{mask}", "torch-cuda",
                f"SDPA {KERNELS[kernel].name} kernel, {mask} (CUDA)", fn,
                f"{stated}; D zero-padded to 16, scale 1/sqrt(D){half}", frozenset({"grad"}))


# ----------------------------------------------------------------------------------------------
# refmask's torch backend on CUDA


def refmask_torch(case) -> Native:
    """refmask.attention and refmask.attention_weights with CUDA tensors (backend="torch"), and
    autograd's gradients of the attention."""
    dev = device()
    grad = case.d_out is not None
    q, k, v = (on(a, dev, grad) for a in (case.q, case.k, case.v))
    mask = on(np.ascontiguousarray(case.mask), dev)
    kwargs: dict[str, Any] = {"softcap": case.softcap, "backend": "torch"}
    if case.sinks is not None:
        kwargs["sinks"] = on(case.sinks, dev)
    if case.bias is not None:
        kwargs["bias"] = on(case.bias, dev)
    out = refmask.attention(q, k, v, mask, **kwargs)
    with torch.no_grad():
        weights = refmask.attention_weights(q, k, mask, **kwargs)
    grads = None
    if grad:
        dq, dk, dv = torch.autograd.grad(out, (q, k, v), on(case.d_out, dev))
        grads = (host(dq), host(dk), host(dv))
    return Native(weights=host(weights), output=host(out), grads=grads)


PATHS = [
    Path("torch-cuda.refmask", "torch-cuda", "refmask.attention(backend=\"torch\") on CUDA tensors", refmask_torch,
         "the canonical mask as is; attention on SDPA's kernels where refmask's promises hold; weights from "
         "attention_weights", frozenset({"softcap", "sinks", "bias", "grad"})),
    *(_sdpa_path(kernel, mask) for kernel in KERNELS for mask in ("bool", "additive", "is_causal")),
]
