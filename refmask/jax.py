"""refmask for JAX users: the Flax drop-in attention function.

`dot_product_attention` has the signature and layout of `flax.linen.dot_product_attention`
(query (batch..., q_length, num_heads, qk_depth), key (batch..., kv_length, num_kv_heads, qk_depth),
value (batch..., kv_length, num_kv_heads, v_depth), mask/bias broadcastable to
(batch..., num_heads, q_length, kv_length)), plus `is_causal` and `promote_dtype` as
`flax.nnx.dot_product_attention`, plus refmask's `fully_masked` policy. Use it as

    flax.linen.MultiHeadDotProductAttention(..., attention_fn=refmask.jax.dot_product_attention)
    flax.nnx.MultiHeadAttention(..., attention_fn=refmask.jax.dot_product_attention)

Every row that keeps at least one key gets Flax's result (to rounding: refmask does not fold the
mask into the scores as finfo.min, and computes float32 products at HIGHEST precision); a row whose
keys are all masked gets `fully_masked` ("zero" by default; Flax itself gives "uniform": the mean
of the values). The softmax runs in float32 for float16/bfloat16 whatever force_fp32_for_softmax says.

Flax masks: True / nonzero = attend. Flax's own helpers (make_attention_mask, make_causal_mask,
combine_masks) return float32 1/0 masks, so a non-bool mask is read as `mask != 0` here, as Flax
reads it; refmask's own functions accept only bool masks.

The array API of the JAX backend is refmask's public API with backend="jax" (or jax arrays as input).
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp

import refmask

from . import _arrays as arrays
from . import _validate as check
from .backends._jax_ops import JAX as OPS

__all__ = ["dot_product_attention"]


def _flax_layout_to_refmask(x: jax.Array) -> jax.Array:
    """(batch..., length, heads, features) -> (batch..., heads, length, features)."""
    return jnp.swapaxes(x, -3, -2)


def _promote(
    query: jax.Array, key: jax.Array, value: jax.Array, dtype: Any, promote_dtype: Callable[..., Any] | None
) -> tuple[jax.Array, ...]:
    if promote_dtype is not None:
        return tuple(promote_dtype((query, key, value), dtype=dtype))
    try:
        from flax.linen.dtypes import promote_dtype as linen_promote
    except ImportError:  # jax without flax: linen's rule, written out
        if dtype is None:
            dtype = jnp.result_type(query, key, value)
            if not jnp.issubdtype(dtype, jnp.inexact):
                dtype = jnp.promote_types(jnp.float32, dtype)
        return tuple(jnp.asarray(x, dtype) for x in (query, key, value))
    return tuple(linen_promote(query, key, value, dtype=dtype))


def _sow(module: Any, weights: jax.Array) -> None:
    nnx: ModuleType | None
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover - flax without nnx
        nnx = None
    if nnx is not None and isinstance(module, nnx.Module):
        module.sow(nnx.Intermediate, "attention_weights", weights)
    else:
        module.sow("intermediates", "attention_weights", weights)


def dot_product_attention(
    query: Any,
    key: Any,
    value: Any,
    bias: Any = None,
    mask: Any = None,
    broadcast_dropout: bool = True,
    dropout_rng: Any = None,
    dropout_rate: float = 0.0,
    deterministic: bool = False,
    dtype: Any = None,
    precision: Any = None,
    module: Any = None,
    force_fp32_for_softmax: bool = False,
    einsum_dot_general: Any = None,
    qk_attn_weights_einsum: Any = None,
    attn_weights_value_einsum: Any = None,
    *,
    promote_dtype: Any = None,
    is_causal: bool = False,
    fully_masked: str = "zero",
) -> jax.Array:
    """Dot-product attention with Flax's signature and layout, refmask's masked softmax.

    Returns (batch..., q_length, num_heads, v_depth). Arguments as flax.linen.dot_product_attention:

    - bias: additive, broadcastable to (batch..., num_heads, q_length, kv_length), added before the mask;
    - mask: True/nonzero = attend, broadcastable to the same shape;
    - dropout (deterministic=False and dropout_rate > 0, needs dropout_rng): applied to the weights as
      Flax does (Bernoulli keep with probability 1 - rate, broadcast over batch and heads when
      broadcast_dropout, kept weights scaled by 1 / (1 - rate));
    - dtype: computation dtype (default: promoted from the inputs); precision and
      force_fp32_for_softmax are accepted for compatibility and have no effect (refmask always
      computes float32 products at HIGHEST precision and the softmax in at least float32);
    - module: if given, the weights are sown as "attention_weights" ("intermediates" for Linen,
      nnx.Intermediate for NNX), as Flax does;
    - einsum_dot_general / qk_attn_weights_einsum / attn_weights_value_einsum (custom products,
      e.g. quantized) are not supported: a ValueError says so;
    - is_causal: and the mask with a top-left causal mask (as flax.nnx.dot_product_attention);
    - fully_masked: "zero" (default), "uniform" (what Flax gives) or "nan" for rows with no kept key.

    Grouped-query attention (fewer key/value heads than query heads) works as in refmask.attention.
    """
    custom = {
        "einsum_dot_general": einsum_dot_general,
        "qk_attn_weights_einsum": qk_attn_weights_einsum,
        "attn_weights_value_einsum": attn_weights_value_einsum,
    }
    given = [name for name, fn in custom.items() if fn is not None]
    if given:
        raise ValueError(
            f"refmask.jax.dot_product_attention does not support custom products ({', '.join(given)}); "
            "use flax.linen.dot_product_attention for quantized or custom einsums"
        )
    named = {"query": query, "key": key, "value": value}
    query, key, value = arrays.attention_inputs(OPS, named)
    query, key, value = _promote(query, key, value, dtype, promote_dtype)
    _check_flax_layout(query.shape, key.shape, value.shape)
    q, k, v = (_flax_layout_to_refmask(x) for x in (query, key, value))
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.dtype != jnp.bool_:
            mask = mask != 0
    # A bias keeps its own dtype: the backend adds it in float32 (or float64), so a float32
    # finfo.min bias next to float16 queries does not overflow to -inf.
    dropout = not deterministic and dropout_rate > 0.0
    if not dropout and module is None:
        out = refmask.attention(
            q, k, v, mask, bias=bias, is_causal=is_causal, fully_masked=fully_masked, backend="jax"
        )
        return _flax_layout_to_refmask(out)
    if is_causal:
        mask = refmask.and_masks(mask, refmask.causal_mask(q.shape[-2], k.shape[-2], backend="jax"))
    weights = refmask.attention_weights(q, k, mask, bias=bias, fully_masked=fully_masked, backend="jax")
    if module is not None:
        _sow(module, weights)
    if dropout:
        if dropout_rng is None:
            raise ValueError("dropout_rate > 0 with deterministic=False needs a dropout_rng")
        keep_prob = 1.0 - dropout_rate
        shape = (1,) * (weights.ndim - 2) + weights.shape[-2:] if broadcast_dropout else weights.shape
        keep = jax.random.bernoulli(dropout_rng, keep_prob, shape)
        weights = weights * (keep.astype(weights.dtype) / jnp.asarray(keep_prob, dtype=weights.dtype))
    out = _weighted_values(weights, v)
    return _flax_layout_to_refmask(out)


def _check_flax_layout(q: tuple[int, ...], k: tuple[int, ...], v: tuple[int, ...]) -> None:
    layout = (
        "refmask.jax.dot_product_attention takes Flax's layout: query (batch..., q_length, num_heads, depth), "
        "key (batch..., kv_length, num_kv_heads, depth), value (batch..., kv_length, num_kv_heads, v_depth) "
        "(refmask.attention takes (..., heads, length, depth))"
    )
    if min(len(q), len(k), len(v)) < 3:
        raise ValueError(f"{layout}; got shapes {tuple(q)}, {tuple(k)}, {tuple(v)}: at least 3 dimensions each")
    try:
        check.attention_shapes(*((*x[:-3], x[-2], x[-3], x[-1]) for x in (q, k, v)))
    except ValueError as err:
        raise ValueError(f"{layout}; got shapes {tuple(q)}, {tuple(k)}, {tuple(v)}: {err}") from None


def _weighted_values(weights: jax.Array, v: jax.Array) -> jax.Array:
    """weights (..., H, T, S) @ v (..., H_kv, S, Dv), float32 accumulation, weights' dtype out."""
    if v.shape[-3] != weights.shape[-3]:
        v = jnp.repeat(v, weights.shape[-3] // v.shape[-3], axis=-3)  # grouped-query: head h reads h // G
    acc = jnp.promote_types(weights.dtype, jnp.float32)
    out = jnp.matmul(weights, v, precision=jax.lax.Precision.HIGHEST, preferred_element_type=acc)
    return out.astype(weights.dtype)
