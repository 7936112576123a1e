"""JAX's native masking paths, each stated from a refmask case.

Conventions to translate (refmask: bool mask, True = may attend, broadcastable to (B, H, T, S)):

- jax.nn.dot_product_attention: arrays are (B, T, N, H) ("BTNH": heads after the sequence axis);
  mask= is bool with True = attend, broadcastable to (B, N, T, S), the same as refmask's.
  is_causal=True is the top-left causal mask; query_seq_lengths / key_value_seq_lengths (B,) state
  right padding (valid tokens first); local_window_size=(left, right) keeps keys i-left .. i+right.
- jax.nn.softmax(x, where=mask): True = included in the softmax (the same as refmask's keep).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._base import Native, Path, check_expressible

FRAMEWORK_VERSION = jax.__version__


def to_btnh(x: np.ndarray) -> jax.Array:
    """refmask's (B, H, T, D) -> JAX's and Flax's (B, T, N, H) layout."""
    return jnp.asarray(x).transpose(0, 2, 1, 3)


def to_bhtd(x: jax.Array) -> np.ndarray:
    return np.asarray(x.transpose(0, 2, 1, 3))


def btnh_qkv(case):
    return to_btnh(case.q), to_btnh(case.k), to_btnh(case.v)


# ----------------------------------------------------------------------------------------------
# jax.nn


def jax_dpa_mask(case) -> Native:
    """jax.nn.dot_product_attention(mask=mask): the mask means what refmask's means."""
    q, k, v = btnh_qkv(case)
    out = jax.nn.dot_product_attention(q, k, v, mask=jnp.asarray(case.mask), implementation="xla")
    return Native(output=to_bhtd(out))


def jax_dpa_structure(case) -> Native:
    """jax.nn.dot_product_attention with the mask stated by its structure: is_causal=True (causal),
    key_value_seq_lengths / query_seq_lengths (right padding), local_window_size=(left, right)."""
    check_expressible(
        case, parts={"causal", "window", "kv_lengths", "q_lengths"}, side="right",
        why="is_causal / seq lengths / local_window_size state top-left causal, right padding and windows only",
    )
    spec = case.spec
    q, k, v = btnh_qkv(case)
    kwargs: dict[str, Any] = {}
    if spec.causal is not None:
        kwargs["is_causal"] = True
    if spec.window is not None:
        kwargs["local_window_size"] = spec.window
    if spec.kv_lengths is not None:
        kwargs["key_value_seq_lengths"] = jnp.asarray(spec.kv_lengths, jnp.int32)
    if spec.q_lengths is not None:
        kwargs["query_seq_lengths"] = jnp.asarray(spec.q_lengths, jnp.int32)
    out = jax.nn.dot_product_attention(q, k, v, implementation="xla", **kwargs)
    return Native(output=to_bhtd(out))


def jax_softmax_where(case) -> Native:
    """jax.nn.softmax(scores, where=mask): mask entries True are the ones the softmax sees."""
    q, k, v = (jnp.asarray(x) for x in (case.q, case.k, case.v))
    scores = jnp.einsum("bhtd,bhsd->bhts", q, k) * (1.0 / math.sqrt(q.shape[-1]))
    weights = jax.nn.softmax(scores, axis=-1, where=jnp.asarray(case.mask))
    return Native(weights=np.asarray(weights), output=np.asarray(weights @ v))


PATHS = [
    Path("jax.softmax-where", "jax", "jax.nn.softmax(where=mask)", jax_softmax_where,
         "where = keep mask (same convention); weights and output"),
    Path("jax.dpa-mask", "jax", "jax.nn.dot_product_attention(mask=)", jax_dpa_mask,
         "bool mask, True = attend (same); BTNH layout; implementation=\"xla\""),
    Path("jax.dpa-structure", "jax", "jax.nn.dot_product_attention(is_causal, seq_lengths, local_window_size)",
         jax_dpa_structure, "structure instead of a mask: top-left causal, right padding, windows"),
]
