"""A case's arrays as a GPU kernel takes them: rounded to half precision where the kernel computes
nothing else, the head dim zero-padded to what the kernel accepts, and the additive mask.

NumPy only: the torch and the jax adapters share it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from refmask._dtypes import lowest, numpy_dtype

from .._base import NotExpressible

HALF = ("float16", "bfloat16")
# The case's head dim is 4; cuDNN wants a multiple of 8, SDPA's memory-efficient kernel 8 in half
# precision, flex_attention at least 16: one multiple for every kernel.
HEAD_DIM_MULTIPLE = 16


@dataclass(frozen=True)
class KernelInputs:
    """q, k, v (and d_out) as the kernel gets them, (B, H, T|S, D padded), in `dtype`."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    d_out: np.ndarray | None
    head_dim: int  # the case's D: the scale's, and the columns of the result that are kept
    dtype: str
    rounded: tuple[np.ndarray, np.ndarray, np.ndarray] | None  # the case's q, k, v rounded to dtype, if they were

    @property
    def scale(self) -> float:
        """1 / sqrt(D) of the case (the padded D would give another default scale)."""
        return 1.0 / math.sqrt(self.head_dim)

    def unpad(self, x: np.ndarray) -> np.ndarray:
        """A result's head-dim columns of the case (the padded ones are dropped)."""
        return np.ascontiguousarray(x[..., : self.head_dim])


def pad_head_dim(x: np.ndarray, multiple: int = HEAD_DIM_MULTIPLE) -> np.ndarray:
    """x with zero columns appended on its last axis up to a multiple of `multiple`: a zero column
    of q and k adds 0 to every score, and a zero column of v gives an output column that is dropped."""
    extra = -x.shape[-1] % multiple
    if not extra:
        return x
    return np.concatenate([x, np.zeros((*x.shape[:-1], extra), x.dtype)], axis=-1)


def kernel_inputs(case, *, half_only: bool) -> KernelInputs:
    """The case's arrays for a kernel; `half_only`: it computes float16/bfloat16 only, so a float32 case
    runs in float16 (its inputs rounded first; the matrix holds the oracle on the rounded inputs)."""
    dtype = case.dtype if not half_only or case.dtype in HALF else "float16"
    if dtype != case.dtype and case.d_out is not None:
        raise NotExpressible(f"the gradients case is {case.dtype}; the kernel computes float16/bfloat16 only")
    rounded = None
    q, k, v = case.q, case.k, case.v
    if dtype != case.dtype:
        dt = numpy_dtype(dtype)
        q, k, v = rounded = (q.astype(dt), k.astype(dt), v.astype(dt))
    d_out = None if case.d_out is None else pad_head_dim(case.d_out)
    return KernelInputs(pad_head_dim(q), pad_head_dim(k), pad_head_dim(v), d_out, case.q.shape[-1], dtype, rounded)


def additive_mask(case, dtype: str) -> np.ndarray:
    """The case's mask as a float attn_mask in `dtype`: 0 kept, finfo.min masked, built in the case's
    fill dtype (else `dtype`) and cast to `dtype`, as a model in half precision that upcasts does."""
    fill = case.fill_dtype or dtype
    bias = np.where(case.mask, 0.0, lowest(fill)).astype(numpy_dtype(fill))
    return bias.astype(numpy_dtype(dtype))
