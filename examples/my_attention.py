"""A user's hand-written attention, in NumPy: one correct version and three with classic bugs.

All take q (B, H, T, D), k (B, H, S, D), v (B, H, S, Dv) and a boolean mask broadcastable to the
scores (B, H, T, S), True = attend, and return (B, H, T, Dv) in q's dtype. test_my_attention.py
holds them to refmask's oracle with refmask.testing.check_attention.
"""

from __future__ import annotations

import numpy as np


def _work_dtype(dtype: np.dtype) -> type:
    # float16 and bfloat16 inputs are computed in float32 and rounded once at the end, as fused
    # attention kernels do; float64 stays float64.
    return np.float64 if dtype == np.float64 else np.float32


def _scores(q: np.ndarray, k: np.ndarray, work: type) -> np.ndarray:
    scale = work(1.0 / np.sqrt(q.shape[-1]))
    return (q.astype(work) @ np.swapaxes(k.astype(work), -1, -2)) * scale


def attention(q, k, v, mask):
    """Correct: masked scores are dropped before the softmax; a row with no kept key gives 0."""
    work = _work_dtype(q.dtype)
    scores = np.where(mask, _scores(q, k, work), -np.inf)
    row_max = scores.max(axis=-1, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, 0)  # fully-masked rows: all -inf
    e = np.exp(scores - row_max)  # exactly 0 where masked
    total = e.sum(axis=-1, keepdims=True)
    weights = e / np.where(total > 0, total, 1)  # fully-masked rows stay 0
    return (weights @ v.astype(work)).astype(q.dtype)


def attention_mask_after_softmax(q, k, v, mask):
    """Bug (a): softmax over every key, then the mask zeroes weights -- rows no longer sum to 1."""
    work = _work_dtype(q.dtype)
    scores = _scores(q, k, work)
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    weights = e / e.sum(axis=-1, keepdims=True)
    weights = weights * mask
    return (weights @ v.astype(work)).astype(q.dtype)


def padded_attention(q, k, v, key_valid):
    """Correct attention with a (B, S) key-padding mask (True = real token)."""
    return attention(q, k, v, key_valid[:, None, None, :])


def padded_attention_broadcast_along_t(q, k, v, key_valid):
    """Bug (b): the (B, S) padding mask is broadcast as (B, 1, S, 1): it masks *queries* (it only
    runs at all when T == S)."""
    return attention(q, k, v, key_valid[:, None, :, None])


def attention_fill_minus_1e9(q, k, v, mask):
    """Bug (c): masked scores are set to -1e9 in the input's dtype.

    In float32 and bfloat16 this works, and a fully-masked row gets uniform weights (the mean of
    v, as Flax does). In float16 -1e9 overflows to -inf, so a fully-masked row is exp(-inf - -inf)
    = NaN. (NumPy warns about that overflow; the kernel silences NumPy's warnings, as much
    production code does.)
    """
    with np.errstate(over="ignore", invalid="ignore"):
        scores = _scores(q, k, np.float64).astype(q.dtype)
        scores = np.where(mask, scores, np.asarray(-1e9).astype(q.dtype))
        x = scores.astype(np.float64)
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        weights = e / e.sum(axis=-1, keepdims=True)
        return (weights @ v.astype(np.float64)).astype(q.dtype)
