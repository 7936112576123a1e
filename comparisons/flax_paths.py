"""Flax's native masking paths (flax.linen), each stated from a refmask case.

Conventions to translate (refmask: bool mask, True = may attend, broadcastable to (B, H, T, S)):

- flax.linen.dot_product_attention(_weights): arrays are (B, T, N, H) (heads after the sequence
  axis); mask (B, N, T, S), nonzero = attend (the same meaning as refmask's). Masked scores are
  replaced by finfo(dtype).min before the softmax (so a fully-masked row comes out uniform).
- Flax builds masks with make_attention_mask(query_input, key_input, pairwise_fn) ->
  pairwise_fn(q[b, i], k[b, j]) as (B, 1, T, S), make_causal_mask(x) (square, top-left) and
  combine_masks(*masks) (their and).
"""

from __future__ import annotations

import flax
import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np

from ._base import Native, Path
from .jax_paths import btnh_qkv, to_bhtd

FRAMEWORK_VERSION = flax.__version__


def flax_mask(case) -> jax.Array | None:
    """The case's mask built with Flax's own helpers, (B, 1, T, S), from its structure (None: no mask)."""
    spec = case.spec
    b, _, t, s = case.shape
    masks = []
    if spec.causal is not None:
        if t == s:
            masks.append(fnn.make_causal_mask(jnp.ones((b, t))))
        else:
            # make_causal_mask is square; T != S goes through positions (bottom-right: the last
            # query sits at the last key, as in KV-cache decoding).
            shift = s - t if spec.causal in ("bottom_right", "either") else 0
            q_pos = jnp.broadcast_to(jnp.arange(t) + shift, (b, t))
            k_pos = jnp.broadcast_to(jnp.arange(s), (b, s))
            masks.append(fnn.make_attention_mask(q_pos, k_pos, jnp.greater_equal))
    if spec.window is not None:
        left, right = spec.window
        q_pos, k_pos = jnp.broadcast_to(jnp.arange(t), (b, t)), jnp.broadcast_to(jnp.arange(s), (b, s))
        masks.append(fnn.make_attention_mask(q_pos, k_pos, lambda i, j: (j >= i - left) & (j <= i + right)))
    if spec.kv_lengths is not None:
        kv_valid = _valid(spec.kv_lengths, s, spec.side)
        q_valid = jnp.ones((b, t), bool) if spec.q_lengths is None else _valid(spec.q_lengths, t, spec.side)
        masks.append(fnn.make_attention_mask(q_valid, kv_valid))
    if spec.segments is not None:
        seg = jnp.asarray(spec.segments)
        masks.append(fnn.make_attention_mask(seg, seg, jnp.equal))
    return fnn.combine_masks(*masks)


def _valid(lengths, n: int, side: str) -> jax.Array:
    pos = jnp.arange(n)[None, :]
    lengths = jnp.asarray(lengths)[:, None]
    return pos < lengths if side == "right" else pos >= n - lengths


def flax_weights(case) -> Native:
    """flax.linen.dot_product_attention_weights(q, k, mask=flax_mask(case))."""
    q, k, _ = btnh_qkv(case)
    weights = fnn.dot_product_attention_weights(q, k, mask=flax_mask(case), deterministic=True)
    return Native(weights=np.asarray(weights))  # already (B, N, T, S)


def flax_attention(case) -> Native:
    """flax.linen.dot_product_attention(q, k, v, mask=flax_mask(case))."""
    q, k, v = btnh_qkv(case)
    out = fnn.dot_product_attention(q, k, v, mask=flax_mask(case), deterministic=True)
    return Native(output=to_bhtd(out))


PATHS = [
    Path("flax.dot_product_attention_weights", "flax", "flax.linen.dot_product_attention_weights",
         flax_weights, "mask from make_attention_mask / make_causal_mask / combine_masks"),
    Path("flax.dot_product_attention", "flax", "flax.linen.dot_product_attention", flax_attention,
         "mask from make_attention_mask / make_causal_mask / combine_masks"),
]
