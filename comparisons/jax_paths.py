"""JAX's native masking paths, each stated from a refmask case.

Conventions to translate (refmask: bool mask, True = may attend, broadcastable to (B, H, T, S)):

- jax.nn.dot_product_attention: arrays are (B, T, N, H) ("BTNH": heads after the sequence axis);
  mask= is bool with True = attend, broadcastable to (B, N, T, S), the same as refmask's.
  is_causal=True is the top-left causal mask; query_seq_lengths / key_value_seq_lengths (B,) state
  right padding (valid tokens first); local_window_size=(left, right) keeps keys i-left .. i+right.
  refmask.conventions.jax_local_window_size says what each local_window_size means.
- jax.nn.softmax(x, where=mask): True = included in the softmax (the same as refmask's keep).
- A score bias (ALiBi): dot_product_attention's bias= (added to the scaled scores before the mask),
  or added to the scores by hand before jax.nn.softmax.
- Gradients: jax.vjp of the output, pulled back from d_out (the gradient of sum(d_out * output)).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from refmask import conventions

from ._base import Native, NotExpressible, Path, check_expressible

FRAMEWORK_VERSION = jax.__version__


def to_btnh(x: np.ndarray | jax.Array) -> jax.Array:
    """refmask's (B, H, T, D) -> JAX's and Flax's (B, T, N, H) layout."""
    return jnp.asarray(x).transpose(0, 2, 1, 3)


def to_bhtd(x: jax.Array) -> np.ndarray:
    return np.asarray(x.transpose(0, 2, 1, 3))


def btnh_qkv(case):
    return to_btnh(case.q), to_btnh(case.k), to_btnh(case.v)


# ----------------------------------------------------------------------------------------------
# running a forward, with or without jax.vjp

# forward(q, k, v, case) -> (output, weights or None), on jax arrays in refmask's (B, H, T, D) layout.
Forward = Callable[[jax.Array, jax.Array, jax.Array, Any], tuple[jax.Array, jax.Array | None]]


def run_forward(forward: Forward, case) -> Native:
    """Run forward(q, k, v, case) on the case's arrays; on a "grad" case also return the gradients of
    sum(d_out * output) w.r.t. q, k and v: jax.vjp's pullback of d_out, under jax.jit (as a training
    step runs; eager, each primitive of the backward would compile on its own, many times slower)."""
    q, k, v = (jnp.asarray(x) for x in (case.q, case.k, case.v))
    if case.d_out is None:
        out, weights = forward(q, k, v, case)
        return Native(weights=None if weights is None else np.asarray(weights), output=np.asarray(out))

    @jax.jit
    def forward_and_pullback(q, k, v, d_out):
        out, pullback, weights = jax.vjp(lambda q, k, v: forward(q, k, v, case), q, k, v, has_aux=True)
        return out, weights, pullback(d_out)

    out, weights, (dq, dk, dv) = forward_and_pullback(q, k, v, jnp.asarray(case.d_out))
    return Native(weights=None if weights is None else np.asarray(weights), output=np.asarray(out),
                  grads=(np.asarray(dq), np.asarray(dk), np.asarray(dv)))


def vjp_path(forward: Forward) -> Callable[[Any], Native]:
    """The adapter fn(case) -> Native that runs `forward` through run_forward (name and docstring kept)."""

    @functools.wraps(forward)
    def fn(case) -> Native:
        return run_forward(forward, case)

    return fn


def score_bias(case) -> jax.Array | None:
    """The case's score bias as (1, H, T, S), broadcastable to the scores; None when it has none."""
    return None if case.bias is None else jnp.asarray(case.bias)[None]


def _dpa(q, k, v, **kwargs) -> jax.Array:
    """jax.nn.dot_product_attention on (B, H, T, D) arrays (it takes and returns (B, T, N, H))."""
    out = jax.nn.dot_product_attention(to_btnh(q), to_btnh(k), to_btnh(v), implementation="xla", **kwargs)
    return out.transpose(0, 2, 1, 3)


def local_window_size(window: tuple[int, int]) -> int | tuple[int, int]:
    """jax's local_window_size for refmask's window=(left, right): the int w, else the pair (l, r), that
    refmask.conventions.jax_local_window_size maps to it; NotExpressible where none does."""
    left, right = window
    candidates: list[int | tuple[int, int]] = [left] if left == right else []
    for arg in [*candidates, (left, right)]:
        try:
            if conventions.jax_local_window_size(arg) == window:
                return arg
        except (TypeError, ValueError):  # e.g. an unbounded (None) side: jax has none
            continue
    raise NotExpressible(f"no local_window_size means window={window}")


# ----------------------------------------------------------------------------------------------
# jax.nn


@vjp_path
def jax_dpa_mask(q, k, v, case):
    """jax.nn.dot_product_attention(mask=mask): the mask means what refmask's means."""
    return _dpa(q, k, v, mask=jnp.asarray(case.mask), bias=score_bias(case)), None


@vjp_path
def jax_dpa_structure(q, k, v, case):
    """jax.nn.dot_product_attention with the mask stated by its structure: is_causal=True (causal),
    key_value_seq_lengths / query_seq_lengths (right padding), local_window_size (the window, through
    refmask.conventions.jax_local_window_size); it has no per-example offset and no segment ids."""
    check_expressible(
        case, parts={"causal", "window", "kv_lengths", "q_lengths"}, side="right",
        why="is_causal / seq lengths / local_window_size state top-left causal, right padding and windows only "
            "(no per-example offset, no segment ids, no left padding)",
    )
    spec = case.spec
    kwargs: dict[str, Any] = {"bias": score_bias(case)}
    if spec.causal is not None:
        kwargs["is_causal"] = True
    if spec.window is not None:
        kwargs["local_window_size"] = local_window_size(spec.window)
    if spec.kv_lengths is not None:
        kwargs["key_value_seq_lengths"] = jnp.asarray(spec.kv_lengths, jnp.int32)
    if spec.q_lengths is not None:
        kwargs["query_seq_lengths"] = jnp.asarray(spec.q_lengths, jnp.int32)
    return _dpa(q, k, v, **kwargs), None


@vjp_path
def jax_softmax_where(q, k, v, case):
    """jax.nn.softmax(scores, where=mask): mask entries True are the ones the softmax sees."""
    scores = jnp.einsum("bhtd,bhsd->bhts", q, k) * (1.0 / math.sqrt(q.shape[-1]))
    bias = score_bias(case)
    if bias is not None:
        scores = scores + bias.astype(scores.dtype)
    weights = jax.nn.softmax(scores, axis=-1, where=jnp.asarray(case.mask))
    return weights @ v, weights


GRAD_BIAS = frozenset({"grad", "bias"})

PATHS = [
    Path("jax.softmax-where", "jax", "jax.nn.softmax(where=mask)", jax_softmax_where,
         "where = keep mask (same convention); a score bias added first; weights and output", GRAD_BIAS),
    Path("jax.dpa-mask", "jax", "jax.nn.dot_product_attention(mask=)", jax_dpa_mask,
         "bool mask, True = attend (same); score bias as bias=; BTNH layout; implementation=\"xla\"", GRAD_BIAS),
    Path("jax.dpa-structure", "jax", "jax.nn.dot_product_attention(is_causal, seq_lengths, local_window_size)",
         jax_dpa_structure, "structure instead of a mask: top-left causal, right padding, windows; bias=",
         GRAD_BIAS),
]
