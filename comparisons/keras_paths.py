"""Keras 3's native masking paths on its JAX backend, each stated from a refmask case.

Conventions to translate (refmask: bool mask, True = may attend, broadcastable to (B, H, T, S)):

- keras.layers.MultiHeadAttention: inputs (B, T, E), E = H * D; attention_mask is bool (B, T, S),
  True (1) = attend, the same meaning as refmask's, shared by the heads (no per-head mask). The layer
  projects q, k and v itself, so the adapters set every projection to the identity (num_heads=H,
  key_dim=D, no biases). It scales by 1/sqrt(key_dim).
- Its two computations: without return_attention_scores (and without dropout) it calls
  keras.ops.dot_product_attention, which on the JAX backend off TPU is jax.nn.dot_product_attention
  (implementation "xla"; cuDNN only where flash attention is possible); with return_attention_scores=True
  it runs its own masked softmax (keras.layers.Softmax: masked scores -> -1e9, -3e4 in float16, then
  the masked weights set to 0, so a row with no kept key is all zeros).
- Its structure arguments: use_causal_mask=True (top-left: row index >= column index; alone, routed
  as is_causal=True), sliding_window=w (a symmetric band |i - j| < w, i.e. (w - 1, w - 1); with
  use_causal_mask it is Hugging Face's sliding_window=w, (w - 1, 0)), and the masks of the inputs:
  value_mask (B, S) for padded keys and query_mask (B, T) for padded queries, True = real token.
  call() replaces query_mask by the query tensor's own Keras mask (backend.get_keras_mask(query)),
  so a query_mask passed as an argument to a tensor without one is dropped.
- keras.ops.dot_product_attention: (B, T, N, H) layout; mask bool broadcastable to (B, N, T, S),
  True = attend; is_causal=True top-left; attn_logits_soft_cap is refused off TPU.
Keras picks its backend at import: KERAS_BACKEND is set to "jax" here unless already set, and a
Keras imported with another backend is refused.
"""

from __future__ import annotations

import functools
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import jax.numpy as jnp
import keras  # type: ignore[import-untyped]
import numpy as np

from refmask import conventions

from ._base import Native, NotExpressible, Path, check_expressible

if keras.backend.backend() != "jax":
    raise RuntimeError(f"keras runs on the {keras.backend.backend()!r} backend here; these adapters need "
                       f"KERAS_BACKEND=jax set before keras is first imported")

FRAMEWORK_VERSION = keras.__version__

# ----------------------------------------------------------------------------------------------
# layouts and layers


def _to_embed(x: jax.Array) -> jax.Array:
    """(B, H, T, D) -> MHA's (B, T, H*D): head h reads embedding columns h*D .. (h+1)*D - 1."""
    b, h, t, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, t, h * d)


def _from_embed(x: jax.Array, h: int) -> jax.Array:
    b, t, e = x.shape
    return x.reshape(b, t, h, e // h).transpose(0, 2, 1, 3)


class IdentityKernel(keras.initializers.Initializer):
    """MHA's kernels, (E, H, D) and (H, D, E), as the identity of E = H * D reshaped (and no random draws,
    which would compile a sampler per layer)."""

    def __call__(self, shape, dtype=None):
        e = round(float(np.sqrt(np.prod(shape))))
        return jnp.asarray(np.eye(e).reshape(shape), dtype=dtype)

    def get_config(self):
        return {}


@functools.cache
def identity_mha(num_heads: int, key_dim: int, dtype: str, sliding_window: int | None = None):
    """A MultiHeadAttention whose q/k/v and output projections are the identity, so it computes plain
    attention on the case's q, k, v. Built once per shape, dtype and window."""
    mha = keras.layers.MultiHeadAttention(num_heads=num_heads, key_dim=key_dim, use_bias=False, dtype=dtype,
                                          sliding_window=sliding_window, kernel_initializer=IdentityKernel())
    e = num_heads * key_dim
    mha.build((1, 1, e), (1, 1, e), (1, 1, e))
    return mha


def _mha(case, sliding_window: int | None = None):
    _, h, _, _ = case.shape
    return identity_mha(h, case.q.shape[-1], case.dtype, sliding_window)


def _layer_mask(case) -> jax.Array:
    """The case's mask as MHA's attention_mask (B, T, S): one mask for every head."""
    mask = case.mask
    if mask.shape[1] != 1:
        raise NotExpressible("attention_mask is (B, T, S): one mask for all heads")
    b, _, t, s = case.shape
    return jnp.asarray(np.broadcast_to(mask[:, 0], (b, t, s)))


def _run(case, fn, *arrays, **kwargs) -> Native:
    """fn(q, k, v, *arrays, **kwargs) -> (output (B, H, T, D), weights or None) on the case's arrays, called
    eagerly as a layer called directly runs; with the case's d_out, also jax.vjp's (dq, dk, dv) of
    sum(d_out * output) through the Keras call."""
    q, k, v = (jnp.asarray(x) for x in (case.q, case.k, case.v))

    def attend(q, k, v):
        return fn(q, k, v, *arrays, **kwargs)

    if case.d_out is None:
        out, weights = attend(q, k, v)
        grads = None
    else:
        (out, weights), vjp = jax.vjp(attend, q, k, v)
        cotangent = (jnp.asarray(case.d_out, out.dtype), None if weights is None else jnp.zeros_like(weights))
        dq, dk, dv = vjp(cotangent)
        grads = (np.asarray(dq), np.asarray(dk), np.asarray(dv))
    return Native(output=np.asarray(out), weights=None if weights is None else np.asarray(weights), grads=grads)


# ----------------------------------------------------------------------------------------------
# MultiHeadAttention


def _mha_call(q, k, v, attention_mask, *, mha, scores: bool):
    """mha(query, value, key=key, attention_mask=...) on (B, H, T, D) arrays -> (output, weights or None)."""
    xq, xk, xv = (_to_embed(x) for x in (q, k, v))
    if scores:
        out, weights = mha(xq, xv, key=xk, attention_mask=attention_mask, return_attention_scores=True)
        return _from_embed(out, mha.num_heads), weights
    return _from_embed(mha(xq, xv, key=xk, attention_mask=attention_mask), mha.num_heads), None


def mha_fast(case) -> Native:
    """MultiHeadAttention(query, value, key, attention_mask=mask): its dot_product_attention path."""
    return _run(case, _mha_call, _layer_mask(case), mha=_mha(case), scores=False)


def mha_scores(case) -> Native:
    """MultiHeadAttention(..., attention_mask=mask, return_attention_scores=True): its own masked softmax."""
    return _run(case, _mha_call, _layer_mask(case), mha=_mha(case), scores=True)


def keras_sliding_window(case) -> int | None:
    """MHA's sliding_window=w for the case's window, None without one: |i - j| < w is (w - 1, w - 1), and
    with use_causal_mask=True it is Hugging Face's (w - 1, 0) (the layer's docstring: Mistral's window)."""
    spec = case.spec
    if spec.window is None:
        return None
    left = spec.window[0]
    if not isinstance(left, int):
        raise NotExpressible(f"sliding_window=w cannot state window={spec.window}")
    w = left + 1
    causal = spec.causal is not None
    band = conventions.hf_sliding_window(w) if causal else conventions.jax_local_window_size(w - 1)
    if band != tuple(spec.window):
        raise NotExpressible(f"sliding_window=w is the band (w - 1, w - 1){' & causal' if causal else ''}: "
                             f"it cannot state window={spec.window}")
    return w


def _lengths_mask(lengths, n: int, side: str) -> jax.Array:
    """(B, n) bool, True at the real tokens: what a Keras mask (Masking, Embedding(mask_zero)) holds."""
    pos = np.arange(n)[None, :]
    lengths = np.asarray(lengths)[:, None]
    return jnp.asarray(pos < lengths if side == "right" else pos >= n - lengths)


def _mha_structure_call(q, k, v, value_mask, query_mask, *, mha, use_causal_mask: bool):
    """mha(query, value, key=key, value_mask=..., query_mask=..., use_causal_mask=...) on (B, H, T, D)."""
    xq, xk, xv = (_to_embed(x) for x in (q, k, v))
    out = mha(xq, xv, key=xk, value_mask=value_mask, query_mask=query_mask, use_causal_mask=use_causal_mask)
    return _from_embed(out, mha.num_heads), None


def mha_structure(case) -> Native:
    """MultiHeadAttention with the mask stated by its structure: use_causal_mask=True, sliding_window=w,
    value_mask= (padded keys) and query_mask= (padded queries); the dot_product_attention path."""
    check_expressible(case, parts={"causal", "window", "kv_lengths", "q_lengths"},
                      why="use_causal_mask / sliding_window / value_mask / query_mask state top-left causal, "
                          "symmetric or causal windows and padding only")
    spec = case.spec
    mha = _mha(case, keras_sliding_window(case))
    _, _, t, s = case.shape
    value_mask = None if spec.kv_lengths is None else _lengths_mask(spec.kv_lengths, s, spec.side)
    query_mask = None if spec.q_lengths is None else _lengths_mask(spec.q_lengths, t, spec.side)
    return _run(case, _mha_structure_call, value_mask, query_mask, mha=mha, use_causal_mask=spec.causal is not None)


# ----------------------------------------------------------------------------------------------
# keras.ops


def _ops_dpa(q, k, v, mask):
    """keras.ops.dot_product_attention on (B, H, T, D) arrays, in its (B, T, N, H) layout."""
    btnh = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
    out = keras.ops.dot_product_attention(*btnh, mask=mask, flash_attention=None)
    return out.transpose(0, 2, 1, 3), None


def ops_dpa_mask(case) -> Native:
    """keras.ops.dot_product_attention(q, k, v, mask=mask, flash_attention=None)."""
    return _run(case, _ops_dpa, jnp.asarray(case.mask))


_GRAD = frozenset({"grad"})

PATHS = [
    Path("keras.mha", "keras", "keras MultiHeadAttention(attention_mask=)", mha_fast,
         "bool (B, T, S), True = attend (same); identity projections; via ops.dot_product_attention",
         features=_GRAD),
    Path("keras.mha-scores", "keras", "keras MultiHeadAttention(return_attention_scores=True)", mha_scores,
         "bool (B, T, S), True = attend (same); identity projections; its masked softmax, weights too",
         features=_GRAD),
    Path("keras.mha-structure", "keras", "keras MultiHeadAttention(use_causal_mask, sliding_window, value_mask, "
         "query_mask)", mha_structure,
         "structure: top-left causal, sliding_window=w band, padding as value_mask / query_mask", features=_GRAD),
    Path("keras.ops.dpa-mask", "keras", "keras.ops.dot_product_attention(mask=)", ops_dpa_mask,
         "bool mask, True = attend (same); BTNH layout; flash_attention=None", features=_GRAD),
]
