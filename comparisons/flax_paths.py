"""Flax's native masking paths (flax.linen), each stated from a refmask case.

Conventions to translate (refmask: bool mask, True = may attend, broadcastable to (B, H, T, S)):

- flax.linen.dot_product_attention(_weights): arrays are (B, T, N, H) (heads after the sequence
  axis); mask (B, N, T, S), nonzero = attend (the same meaning as refmask's). Masked scores are
  replaced by finfo(dtype).min before the softmax (so a fully-masked row comes out uniform).
- Flax builds masks with make_attention_mask(query_input, key_input, pairwise_fn) ->
  pairwise_fn(q[b, i], k[b, j]) as (B, 1, T, S), make_causal_mask(x) (square, top-left) and
  combine_masks(*masks) (their and). A causal mask that is not square and top-left (T != S, a
  per-example KV-cache offset) is make_attention_mask of query and key positions, jnp.greater_equal.
  combine_masks has no "or": a prefix LM is jnp.logical_or(causal, key in the prefix).
- A score bias (ALiBi) is bias=, added to the scaled scores before the mask.
- Gradients: jax.vjp, as in jax_paths (run_forward).
"""

from __future__ import annotations

import flax
import flax.linen as fnn
import jax
import jax.numpy as jnp

from ._base import Path
from .jax_paths import score_bias, to_btnh, vjp_path

FRAMEWORK_VERSION = flax.__version__


def flax_mask(case) -> jax.Array | None:
    """The case's mask built with Flax's own helpers, (B, 1, T, S), from its structure (None: no mask)."""
    spec = case.spec
    b, _, t, s = case.shape
    k_pos = jnp.broadcast_to(jnp.arange(s), (b, s))
    masks = []
    if spec.prefix is not None:
        # Flax combines masks by "and" only: the prefix LM's "or" is jnp.logical_or of two masks.
        in_prefix = fnn.make_attention_mask(jnp.ones((b, t), bool), k_pos < spec.prefix)
        causal = fnn.make_attention_mask(_query_positions(spec, b, t, s), k_pos, jnp.greater_equal)
        masks.append(jnp.logical_or(causal, in_prefix))
    elif spec.causal is not None and t == s and spec.offset is None:
        masks.append(fnn.make_causal_mask(jnp.ones((b, t))))
    elif spec.causal is not None:
        # make_causal_mask is square and top-left; otherwise causal goes through positions.
        masks.append(fnn.make_attention_mask(_query_positions(spec, b, t, s), k_pos, jnp.greater_equal))
    if spec.window is not None:
        left, right = spec.window
        q_pos = jnp.broadcast_to(jnp.arange(t), (b, t))
        masks.append(fnn.make_attention_mask(q_pos, k_pos, lambda i, j: (j >= i - left) & (j <= i + right)))
    if spec.dilation is not None:
        q_pos = jnp.broadcast_to(jnp.arange(t), (b, t))
        masks.append(fnn.make_attention_mask(q_pos, k_pos, lambda i, j: (i - j) % spec.dilation == 0))
    if spec.chunk is not None:
        q_pos = jnp.broadcast_to(jnp.arange(t), (b, t))
        masks.append(fnn.make_attention_mask(q_pos // spec.chunk, k_pos // spec.chunk, jnp.equal))
    if spec.kv_lengths is not None:
        kv_valid = _valid(spec.kv_lengths, s, spec.side)
        q_valid = jnp.ones((b, t), bool) if spec.q_lengths is None else _valid(spec.q_lengths, t, spec.side)
        masks.append(fnn.make_attention_mask(q_valid, kv_valid))
    if spec.segments is not None:
        seg = jnp.asarray(spec.segments)
        masks.append(fnn.make_attention_mask(seg, seg, jnp.equal))
    return fnn.combine_masks(*masks)


def _query_positions(spec, b: int, t: int, s: int) -> jax.Array:
    """(B, T) positions of the queries among the keys: offset[b] + i with a per-example KV-cache offset,
    S - T + i bottom-right (the last query at the last key, as in decoding), else i."""
    if spec.offset is not None:
        return jnp.asarray(spec.offset)[:, None] + jnp.arange(t)[None, :]
    shift = s - t if spec.causal in ("bottom_right", "either") else 0
    return jnp.broadcast_to(jnp.arange(t) + shift, (b, t))


def _valid(lengths, n: int, side: str) -> jax.Array:
    pos = jnp.arange(n)[None, :]
    lengths = jnp.asarray(lengths)[:, None]
    return pos < lengths if side == "right" else pos >= n - lengths


@vjp_path
def flax_weights(q, k, v, case):
    """flax.linen.dot_product_attention_weights(q, k, mask=flax_mask(case)), and weights @ v as the
    output (the one the gradients are of)."""
    weights = fnn.dot_product_attention_weights(to_btnh(q), to_btnh(k), bias=score_bias(case), mask=flax_mask(case),
                                                deterministic=True)
    return weights @ v, weights  # weights are already (B, N, T, S)


@vjp_path
def flax_attention(q, k, v, case):
    """flax.linen.dot_product_attention(q, k, v, mask=flax_mask(case))."""
    out = fnn.dot_product_attention(to_btnh(q), to_btnh(k), to_btnh(v), bias=score_bias(case), mask=flax_mask(case),
                                    deterministic=True)
    return out.transpose(0, 2, 1, 3), None


GRAD_BIAS = frozenset({"grad", "bias"})

PATHS = [
    Path("flax.dot_product_attention_weights", "flax", "flax.linen.dot_product_attention_weights",
         flax_weights, "mask from make_attention_mask / make_causal_mask / combine_masks; score bias as bias=; "
         "weights and weights @ v", GRAD_BIAS),
    Path("flax.dot_product_attention", "flax", "flax.linen.dot_product_attention", flax_attention,
         "mask from make_attention_mask / make_causal_mask / combine_masks; score bias as bias=", GRAD_BIAS),
]
