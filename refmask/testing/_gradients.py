"""The magnitude of the terms each of attention's gradients sums: the scale its rounding errors are relative to.

A gradient entry is a sum that cancels (the ds of a row sums to 0), so it can be 0, or any fraction of
its terms, while a correct implementation is off by a few roundings of the terms themselves.
assert_gradients_close compares against these magnitudes (tolerances.GRADIENT_MAX_ULP says why).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _arrays, oracle
from .._arrays import AttentionGrads
from .._backends import to_numpy


def attention_gradient_terms(
    q: Any,
    k: Any,
    v: Any,
    mask: Any,
    d_out: Any,
    *,
    bias: Any = None,
    attention_scale: float | None = None,
    softcap: float | None = None,
    sinks: Any = None,
    fully_masked: str = "zero",
) -> AttentionGrads[np.ndarray]:
    """For each entry of attention_vjp's gradients, the sum of the magnitudes of the terms it sums (float64).

    The backward pass with every factor replaced by its absolute value: with W the float64 weights,
    wk = W at the kept entries of rows that keep a key (0 elsewhere) and G = d_out,
      dv: W^T @ |G|;  m = |G| @ |v|^T;  ds = wk * (m + sum_k wk[k] m[k]);  dbias: ds;
      dq: |attention_scale| * ds @ |k|;  dk: |attention_scale| * ds^T @ |q|;
      dsinks: (1 - sum_k wk[k]) * sum_k wk[k] m[k];
    grouped-query heads and broadcast shapes summed as attention_vjp sums them (the softcap's factor,
    at most 1, is left out). NaN where the weights are NaN (dv under fully_masked="nan"); exactly 0
    where the gradient has no term at all (masked entries, rows with no kept key).
    The arguments are attention_vjp's, attention's `scale` named attention_scale (in refmask.testing a
    `scale` is a tolerance's). Arrays may be NumPy, jax or torch, of any floating dtype.
    """
    q64, k64, v64, g = (np.asarray(to_numpy(x)).astype(np.float64) for x in (q, k, v, d_out))
    bias64 = None if bias is None else np.asarray(to_numpy(bias)).astype(np.float64)
    sinks64 = None if sinks is None else np.asarray(to_numpy(sinks)).astype(np.float64)
    keep_given = None if mask is None else np.asarray(to_numpy(mask))
    w = oracle.attention_weights(
        q64, k64, keep_given, bias=bias64, scale=attention_scale, softcap=softcap, sinks=sinks64,
        fully_masked=fully_masked,
    )
    s = abs(_arrays.scale_value(attention_scale, q64.shape[-1]))
    heads = q64.shape[-3] if q64.ndim >= 3 else None
    kv_heads = k64.shape[-3] if heads is not None else None
    ka, va = (np.abs(_repeat(x, heads)) for x in (k64, v64))
    keep = np.broadcast_to(np.ones((), bool) if keep_given is None else keep_given, w.shape)
    wk = np.where(keep & keep.any(axis=-1, keepdims=True), w, 0.0)
    ga = np.abs(g)
    dv = np.swapaxes(w, -1, -2) @ ga
    m = ga @ np.swapaxes(va, -1, -2)
    row = np.sum(wk * m, axis=-1, keepdims=True)
    ds = wk * (m + row)
    dq = s * (ds @ ka)
    dk = s * (np.swapaxes(ds, -1, -2) @ np.abs(q64))
    if kv_heads is not None:
        dk, dv = _sum_groups(dk, kv_heads), _sum_groups(dv, kv_heads)
    dbias = None if bias64 is None else _sum_to(ds, bias64.shape)
    dsinks = None
    if sinks64 is not None:
        rows = (1.0 - wk.sum(axis=-1)) * row[..., 0]
        per_head = sinks64.ndim == 1 and heads is not None
        dsinks = _sum_to(rows, (sinks64.shape[0], 1) if per_head else sinks64.shape).reshape(sinks64.shape)
    return AttentionGrads(dq, dk, dv, dbias, dsinks)


def _repeat(x: np.ndarray, heads: int | None) -> np.ndarray:
    if heads is None or x.shape[-3] == heads:
        return x
    return np.repeat(x, heads // x.shape[-3], axis=-3)


def _sum_groups(x: np.ndarray, kv_heads: int) -> np.ndarray:
    return x.reshape(*x.shape[:-3], kv_heads, x.shape[-3] // kv_heads, *x.shape[-2:]).sum(axis=-3)


def _sum_to(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    x = x.sum(axis=tuple(range(x.ndim - len(shape))))
    return x.sum(axis=tuple(i for i, n in enumerate(shape) if n == 1), keepdims=True).reshape(shape)

