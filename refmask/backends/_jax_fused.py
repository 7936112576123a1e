"""The JAX backend's attention on jax.nn.dot_product_attention's fused kernel, refmask's promises kept.

The backend's attention is an exact composite (scores, masked softmax, values, in the compute dtype). On
an NVIDIA GPU, jax.nn.dot_product_attention(implementation="cudnn") is one fused kernel; attention runs on
it when refmask's promises can be kept there, with the fix-ups in the same compiled program:

- The fully-masked rows (found from the mask at its own shape, causality included) get the policy's
  output, fill * sum_j v[j] with fill the policy's weight (0, 1/S or NaN): one program serves all three
  policies. Their weights being constants, those rows pass gradients to v only (fill * d_out), as
  through the exact path.
- cuDNN masks by adding a large negative number to the scores (jax folds the bool mask into the bias), so
  the bias handed to the kernel is 0 at masked entries, and a NaN or inf in q, k, v or a kept bias entry,
  a score large enough to outrank the fill (|q_i| |k_j| scale above 2^13, by Cauchy-Schwarz) or a kept
  bias entry low enough to rank below it (below -2^14) would reach rows that do not see it: such inputs
  (a few reductions per input, on the device) take the exact path, by lax.cond.
- Weights, the lse, softcap and sinks are not what the kernel returns or computes, and a bias of another
  dtype than q would be rounded to q's (the exact path adds it in float32): those calls take the exact
  path, as do shapes the kernel refuses. Each new shape is compiled ahead of time once, on its own (a
  refusal raised while jax traces or XLA compiles is caught there, also when the call sits in a
  caller's jax.jit), and a refused shape is not tried again.
- Known costs: the scale is a static argument of the kernel (a new scale compiles anew), and under
  jax.vmap lax.cond becomes a select, so both paths run.

On the CPU jax.nn.dot_product_attention is XLA's composite, which the exact path already matches in speed
(`refmask bench`, case 2), so no platform but the GPU routes by default; the tests route every case on
the CPU through implementation="xla".
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
from jax import lax

from ._jax_ops import JAX as OPS

Kernel = Literal["xla", "cudnn"]  # dot_product_attention's implementation=

# The platform -> the implementation attention routes to there; a platform not named takes the exact path.
IMPLEMENTATIONS: dict[str, Kernel] = {"gpu": "cudnn"}
# cuDNN's fused attention takes half precision only.
_DTYPES = {"cudnn": frozenset({jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16)})}
# The (shapes, dtypes, static arguments) compiled ahead of time: those that compiled, and those refused.
_compiled: set[tuple[Any, ...]] = set()
_refused: set[tuple[Any, ...]] = set()
# Every score must stay below this in magnitude (Cauchy-Schwarz: |q_i . k_j| * scale <= |q_i| |k_j| scale),
# so that a masked score plus the fill stays below every kept score plus a kept bias above _LOWEST_KEPT_BIAS.
_LARGEST_SCORE = 2.0**13
# A kept bias entry must stay above this for the kernel's additive mask (its fill: -32768 in float16,
# about -2^40 in bfloat16) to rank every masked entry below every kept one.
_LOWEST_KEPT_BIAS = -(2.0**14)


def implementation(q: Any, k: Any, v: Any, *, weights: bool, lse: bool, softcap: Any, sinks: Any,
                   bias: Any = None) -> Kernel | None:
    """The implementation attention runs on for these inputs, or None for the exact path."""
    if weights or lse or softcap is not None or sinks is not None:
        return None
    if bias is not None and bias.dtype != q.dtype:
        return None  # the kernel would round it to q's dtype
    if q.ndim != 4 or k.ndim != 4 or 0 in (*q.shape, *k.shape, *v.shape):
        return None  # the kernel takes (B, T, N, H) only; empty axes are the exact path's
    if v.shape[-1] != k.shape[-1]:
        return None  # nor values of another head dim than the keys'
    name = IMPLEMENTATIONS.get(_platform(q))
    if name is None or (name in _DTYPES and q.dtype not in _DTYPES[name]):
        return None
    return name


def _platform(x: Any) -> str:
    """The platform x lives on: its device's, or under a trace the default backend's."""
    if OPS.concrete(x) and isinstance(x, jax.Array):
        return next(iter(x.devices())).platform
    return jax.default_backend()


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None,
    bias: jax.Array | None,
    scale: float,
    fill: jax.Array,
    *,
    is_causal: bool,
    name: Kernel,
) -> jax.Array | None:
    """attention's output on jax.nn.dot_product_attention(implementation=name), or the exact path's where
    the inputs are not all finite; None where the kernel refuses these inputs (the caller goes exact)."""
    args = (q, k, v, mask, bias, fill)
    static = {"scale": scale, "is_causal": is_causal, "name": name}
    key = (tuple(None if a is None else (a.shape, a.dtype) for a in args), tuple(static.items()))
    if key in _refused:
        return None
    if key not in _compiled:
        abstract = [None if a is None else jax.ShapeDtypeStruct(a.shape, a.dtype) for a in args]  # type: ignore[no-untyped-call]
        try:
            _fused_jit.lower(*abstract, **static).compile()
        except (ValueError, NotImplementedError, TypeError, RuntimeError):  # the kernel refuses this shape
            _refused.add(key)
            return None
        _compiled.add(key)
    return _fused_jit(*args, **static)


def _largest_norm(x: jax.Array) -> jax.Array:
    """The largest Euclidean norm of x's rows (its last axis), in float32 (inf if it overflows)."""
    return jnp.sqrt(jnp.square(x.astype(jnp.float32)).sum(axis=-1).max())


def _four_d(x: jax.Array) -> jax.Array:
    """x with leading axes of size 1 up to 4 dimensions: dot_product_attention's masks and biases are 4-D."""
    return x.reshape((1,) * (4 - x.ndim) + x.shape)


def _btnh(x: jax.Array) -> jax.Array:
    """(B, N, T, H) <-> (B, T, N, H): refmask's layout and dot_product_attention's."""
    return x.swapaxes(-2, -3)


def _fused(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None,
    bias: jax.Array | None,
    fill: jax.Array,
    *,
    scale: float,
    is_causal: bool,
    name: Kernel,
) -> jax.Array:
    # The backend module imports this one; by the time a call is traced it is complete.
    from .jax import _attention_impl, causal_mask

    keep = mask
    if is_causal and keep is not None:
        keep = keep & causal_mask(q.shape[-2], k.shape[-2])
    kept_bias = None if bias is None else bias if keep is None else jnp.where(keep, bias, 0)
    sums = jnp.stack([x.sum(dtype=jnp.float32) for x in (q, k, v)])
    safe = jnp.isfinite(sums).all() & (_largest_norm(q) * _largest_norm(k) * scale < _LARGEST_SCORE)
    if kept_bias is not None:
        safe = safe & jnp.isfinite(kept_bias.sum(dtype=jnp.float32)) & (kept_bias.min() > _LOWEST_KEPT_BIAS)

    def on_the_kernel(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None, fill: jax.Array) -> jax.Array:
        out = _btnh(jax.nn.dot_product_attention(
            _btnh(q), _btnh(k), _btnh(v), bias=None if kept_bias is None else _four_d(kept_bias),
            mask=None if mask is None else _four_d(mask), scale=scale, is_causal=is_causal, implementation=name,
        ))
        if keep is None:
            return out  # no mask: every row keeps a key (top-left causality keeps key 0)
        compute = fill.dtype
        total = v.astype(compute).sum(axis=-2, keepdims=True)  # a row whose weights are all `fill`
        total = jnp.repeat(total, q.shape[-3] // k.shape[-3], axis=-3)  # grouped-query heads
        any_kept = _four_d(keep.any(axis=-1, keepdims=True))
        # The fill on the fully-masked rows only, 0 elsewhere: a NaN fill must not reach the other rows'
        # gradients through the unselected side of the where.
        fixed = jnp.where(any_kept, 0, fill) * total
        return jnp.where(any_kept, out, fixed.astype(q.dtype))

    def on_the_exact_path(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None,
                          fill: jax.Array) -> Any:  # the output alone: return_weights=False
        return _attention_impl(q, k, v, mask, bias, jnp.asarray(scale, fill.dtype), fill, is_causal=is_causal,
                               return_weights=False)

    return lax.cond(safe, on_the_kernel, on_the_exact_path, q, k, v, bias, fill)


_fused_jit = jax.jit(_fused, static_argnames=("scale", "is_causal", "name"))
