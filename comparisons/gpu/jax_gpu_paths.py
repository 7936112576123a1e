"""JAX on the GPU, stated from a refmask case: jax.nn.dot_product_attention's cuDNN implementation, and
refmask's jax backend on arrays placed on the GPU.

Conventions to translate (refmask: bool mask, True = may attend, broadcastable to (B, H, T, S)):

- jax.nn.dot_product_attention(implementation="cudnn"): arrays (B, T, N, H) ("BTNH"); float16 or
  bfloat16 only, head dim a multiple of 8 (jax/_src/cudnn/fused_attention_stablehlo.py checks both).
  mask= (bool, True = attend) becomes an additive bias of the dtype's large negative number before
  cuDNN sees it. The structure arguments become cuDNN's own mask types: is_causal=True (CAUSAL),
  query_seq_lengths / key_value_seq_lengths (PADDING: valid tokens first) and local_window_size=(l, r),
  which cuDNN takes as a left window only (sliding_window_length = l + 1): jax refuses a right window
  unless is_causal is set (and then drops it, the causal mask covering it).
- refmask's jax backend: the public API, on the GPU as on the CPU (computations run where their
  arrays are).

Inputs as in torch_cuda_paths (comparisons/gpu/_inputs.py): a float32 case runs in float16 on cuDNN,
the head dim is zero-padded to 16 and the scale passed as 1/sqrt(D) of the case.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import jax
import numpy as np

import refmask
from refmask import conventions

from .._base import Native, NotExpressible, Path, check_expressible
from . import device as gpu_device
from ._inputs import KernelInputs, kernel_inputs

FRAMEWORK_VERSION = jax.__version__

# jax.nn.dot_product_attention's implementation; the tests put "xla" here to run the adapters' own
# logic (layout, padding, rounding, structure) on the CPU, where there is no cuDNN.
IMPLEMENTATION: Literal["xla", "cudnn"] = "cudnn"


def device() -> Any:
    """The GPU the paths run on; NotExpressible("no CUDA device") where jax has none."""
    found = gpu_device.jax_gpu_device()
    if found is None:
        raise NotExpressible(gpu_device.NO_CUDA)
    return found


def _btnh(x: np.ndarray, dev: Any) -> jax.Array:
    """refmask's (B, H, T, D) as jax's (B, T, N, H), on `dev`."""
    return jax.device_put(np.ascontiguousarray(x.transpose(0, 2, 1, 3)), dev)


def _bhtd(x: jax.Array) -> np.ndarray:
    """jax's (B, T, N, H) back to refmask's (B, H, T, D), as NumPy."""
    return np.asarray(x).transpose(0, 2, 1, 3)


def _kernel_result(call: Callable[..., jax.Array], x: KernelInputs, dev: Any) -> Native:
    """call(q, k, v) on the kernel inputs, and for a "grad" case jax.vjp's dq, dk, dv of sum(d_out * out)."""
    q, k, v = (_btnh(a, dev) for a in (x.q, x.k, x.v))
    out = call(q, k, v)
    grads = None
    if x.d_out is not None:
        _, vjp = jax.vjp(call, q, k, v)
        dq, dk, dv = vjp(_btnh(x.d_out, dev))
        grads = (x.unpad(_bhtd(dq)), x.unpad(_bhtd(dk)), x.unpad(_bhtd(dv)))
    return Native(output=x.unpad(_bhtd(out)), qkv=x.rounded, grads=grads)


def cudnn_mask(case) -> Native:
    """jax.nn.dot_product_attention(mask=mask, implementation="cudnn"): the mask means what refmask's means."""
    dev = device()
    x = kernel_inputs(case, half_only=True)
    mask = jax.device_put(np.ascontiguousarray(case.mask), dev)

    def call(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=x.scale, implementation=IMPLEMENTATION)

    return _kernel_result(call, x, dev)


def cudnn_structure(case) -> Native:
    """jax.nn.dot_product_attention(implementation="cudnn") with the mask stated by its structure:
    is_causal, query_seq_lengths / key_value_seq_lengths and local_window_size."""
    check_expressible(
        case, parts={"causal", "window", "kv_lengths", "q_lengths"}, side="right",
        why="cuDNN's mask types state top-left causal, right padding and left windows only",
    )
    spec = case.spec
    if spec.window is not None and spec.window[1] != 0 and spec.causal is None:
        raise NotExpressible("cuDNN takes a left window only: jax refuses a right window without is_causal")
    dev = device()
    x = kernel_inputs(case, half_only=True)
    kwargs: dict[str, Any] = {}
    if spec.causal is not None:
        kwargs["is_causal"] = True
    if spec.window is not None:
        if conventions.jax_local_window_size(spec.window) != spec.window:
            raise NotExpressible(f"no local_window_size means refmask's window={spec.window}")
        kwargs["local_window_size"] = spec.window
    for name, lengths in (("key_value_seq_lengths", spec.kv_lengths), ("query_seq_lengths", spec.q_lengths)):
        if lengths is not None:
            kwargs[name] = jax.device_put(np.asarray(lengths, np.int32), dev)

    def call(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, scale=x.scale, implementation=IMPLEMENTATION, **kwargs)

    return _kernel_result(call, x, dev)


def refmask_jax(case) -> Native:
    """refmask.attention(return_weights=True, backend="jax") on arrays placed on the GPU, and jax.vjp's
    gradients of the attention."""
    dev = device()
    q, k, v = (jax.device_put(a, dev) for a in (case.q, case.k, case.v))
    mask = jax.device_put(np.ascontiguousarray(case.mask), dev)
    sinks = None if case.sinks is None else jax.device_put(case.sinks, dev)
    bias = None if case.bias is None else jax.device_put(case.bias, dev)

    def call(q, k, v, return_weights=False):
        return refmask.attention(q, k, v, mask, bias=bias, softcap=case.softcap, sinks=sinks,
                                 return_weights=return_weights, backend="jax")

    out, weights = call(q, k, v, return_weights=True)
    grads = None
    if case.d_out is not None:
        _, vjp = jax.vjp(call, q, k, v)
        dq, dk, dv = vjp(jax.device_put(case.d_out, dev))
        grads = (np.asarray(dq), np.asarray(dk), np.asarray(dv))
    return Native(weights=np.asarray(weights), output=np.asarray(out), grads=grads)


PATHS = [
    Path("jax-gpu.refmask", "jax-gpu", "refmask.attention(backend=\"jax\") on the GPU", refmask_jax,
         "the canonical mask as is, arrays placed on the GPU; weights and output",
         frozenset({"softcap", "sinks", "bias", "grad"})),
    Path("jax-gpu.dpa-cudnn-mask", "jax-gpu", "jax.nn.dot_product_attention(mask=, implementation=\"cudnn\")",
         cudnn_mask, "bool mask, True = attend; BTNH; float32 cases in float16; D zero-padded to 16",
         frozenset({"grad"})),
    Path("jax-gpu.dpa-cudnn-structure", "jax-gpu",
         "jax.nn.dot_product_attention(is_causal, seq_lengths, local_window_size, implementation=\"cudnn\")",
         cudnn_structure, "cuDNN's mask types: top-left causal, right padding, left windows; float32 cases "
         "in float16; D zero-padded to 16", frozenset({"grad"})),
]
