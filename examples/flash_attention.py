"""A flash-style attention kernel in NumPy, with its own backward, and two variants with classic bugs.

flash_attention(q, k, v, mask) -> (out, lse) walks the keys in blocks with an online softmax: it
keeps each query row's running maximum m, running sum l and unnormalised output, rescales them when
a block raises the maximum, and never holds a (T, S) weight matrix. It returns the log-sum-exp of
each row, lse = m + log(l), which its backward uses to recompute the weights block by block,
w = exp(s - lse), as flash attention does. Arrays are (B, H, T, D) / (B, H_kv, S, D) /
(B, H_kv, S, Dv), the mask boolean and broadcastable to (B, H, T, S) (True = attend); a row with no
kept key gives out 0 and lse -inf. float16 and bfloat16 inputs are computed in float32, whose lse
is float32; float64 stays float64.

flash_attention_grads(q, k, v, mask, d_out) runs both, as check_attention's backward_fn;
flash_attention_varlen and flash_attention_varlen_backward take flash-attn's varlen arguments
(packed sequences, cu_seqlens) and run the kernel on each sequence. The two bugs:
flash_attention_lse_inf (lse +inf on a row with no kept key) and flash_attention_backward_nan_dv
(the backward without its empty-row guard, NaN in dv).

test_flash_attention.py holds them to refmask's oracle with refmask.testing.check_attention.
"""

from __future__ import annotations

import numpy as np

BLOCK = 4  # keys per block: small, so that the catalogue's cases (S up to 9) span several blocks


def _work_dtype(dtype: np.dtype) -> type:
    return np.float64 if dtype == np.float64 else np.float32


def _inputs(q, k, v, mask):
    """q, k, v in the work dtype (key/value heads repeated for grouped-query attention), the mask
    broadcast to the scores (B, H, T, S), and the scale."""
    work = _work_dtype(q.dtype)
    heads = q.shape[1]
    k, v = (np.repeat(x, heads // x.shape[1], axis=1) for x in (k, v))
    keep = np.broadcast_to(mask, (*q.shape[:-1], k.shape[-2]))
    return q.astype(work), k.astype(work), v.astype(work), keep, work(1 / np.sqrt(q.shape[-1]))


def _blocks(s_len: int):
    return [(start, min(start + BLOCK, s_len)) for start in range(0, s_len, BLOCK)]


def _forward(q, k, v, mask):
    """The blockwise forward; (out, m, l) in the work dtype (l: each row's sum, `total` here)."""
    q, k, v, keep, scale = _inputs(q, k, v, mask)
    work = q.dtype.type
    m = np.full((*q.shape[:-1], 1), -np.inf, work)  # running maximum of each row's kept scores
    total = np.zeros_like(m)  # running sum of exp(s - m)
    acc = np.zeros((*q.shape[:-1], v.shape[-1]), work)  # running sum of exp(s - m) * v
    for start, stop in _blocks(k.shape[-2]):
        s = np.where(keep[..., start:stop], (q @ np.swapaxes(k[..., start:stop, :], -1, -2)) * scale, -np.inf)
        m_new = np.maximum(m, s.max(axis=-1, keepdims=True))
        m_safe = np.where(np.isfinite(m_new), m_new, 0)  # a row with no kept key yet: all -inf
        alpha = np.exp(m - m_safe)  # rescales what came before; exp(-inf) = 0 at the start
        p = np.exp(s - m_safe)  # exactly 0 where masked
        total = alpha * total + p.sum(axis=-1, keepdims=True)
        acc = alpha * acc + p @ v[..., start:stop, :]
        m = m_new
    return acc / np.where(total > 0, total, 1), m, total


def flash_attention(q, k, v, mask):
    """Correct: (out in q's dtype, lse (B, H, T)); a row with no kept key has out 0 and lse -inf."""
    out, m, total = _forward(q, k, v, mask)
    lse = np.where(total > 0, m + np.log(np.where(total > 0, total, 1)), -np.inf)  # log(0) = -inf, no warning
    return out.astype(q.dtype), lse[..., 0]


def flash_attention_backward(q, k, v, mask, out, lse, d_out):
    """Correct: (dq, dk, dv) of sum(d_out * out), the weights recomputed from lse block by block.

    w = exp(s - lse) is 0 at masked keys; a row with no kept key has lse = -inf, and exp(-inf - -inf)
    would be NaN there, so its weights are taken as 0 (it contributes no gradient).
    """
    return _backward(q, k, v, mask, out, lse, d_out, guard_empty_rows=True)


def _backward(q, k, v, mask, out, lse, d_out, *, guard_empty_rows):
    q_in, k_in, v_in = q, k, v
    q, k, v, keep, scale = _inputs(q, k, v, mask)
    work = q.dtype.type
    g = d_out.astype(work)
    delta = (g * out.astype(work)).sum(axis=-1, keepdims=True)  # sum_j w_j dw_j, from the output
    lse = lse.astype(work)[..., None]
    if guard_empty_rows:
        lse = np.where(np.isfinite(lse), lse, 0)
    dq = np.zeros_like(q)
    dk, dv = np.zeros_like(k), np.zeros((*k.shape[:-1], v.shape[-1]), work)
    for start, stop in _blocks(k.shape[-2]):
        kept = keep[..., start:stop]
        s = (q @ np.swapaxes(k[..., start:stop, :], -1, -2)) * scale
        p = np.exp(np.where(kept, s, -np.inf) - lse)
        if guard_empty_rows:
            p = np.where(kept, p, 0)
        dv[..., start:stop, :] = np.swapaxes(p, -1, -2) @ g
        dp = g @ np.swapaxes(v[..., start:stop, :], -1, -2)
        ds = np.where(kept, p * (dp - delta), 0)
        dq += scale * (ds @ k[..., start:stop, :])
        dk[..., start:stop, :] = scale * (np.swapaxes(ds, -1, -2) @ q)
    groups = q.shape[1] // k_in.shape[1]
    dk, dv = (x.reshape(x.shape[0], k_in.shape[1], groups, *x.shape[2:]).sum(axis=2) for x in (dk, dv))
    return dq.astype(q_in.dtype), dk.astype(k_in.dtype), dv.astype(v_in.dtype)


def flash_attention_grads(q, k, v, mask, d_out):
    """(dq, dk, dv): the forward, then its backward from the saved out and lse (check_attention's
    backward_fn: fn's arguments, then d_out)."""
    out, lse = flash_attention(q, k, v, mask)
    return flash_attention_backward(q, k, v, mask, out, lse, d_out)


def flash_attention_lse_inf(q, k, v, mask):
    """Bug (a): a row with no kept key gets lse = +inf (flash-attn's CUDA convention outside
    split-KV), where log(0) = -inf. Outputs are right; a merge of partial results by logaddexp
    (split-KV, ring attention) then drops every key of the other part."""
    out, m, total = _forward(q, k, v, mask)
    lse = np.where(total > 0, m + np.log(np.where(total > 0, total, 1)), np.inf)
    return out.astype(q.dtype), lse[..., 0]


def flash_attention_backward_nan_dv(q, k, v, mask, out, lse, d_out):
    """Bug (b): the weights exp(s - lse) are recomputed without the empty-row guard. The score
    gradient is zeroed at masked keys, which hides it from dq and dk, but dv = w^T @ d_out takes
    exp(-inf - -inf) = NaN from a row with no kept key. (NumPy would warn; the kernel silences it,
    as an accelerator does not warn at all.)"""
    with np.errstate(invalid="ignore"):
        return _backward(q, k, v, mask, out, lse, d_out, guard_empty_rows=False)


def flash_attention_grads_nan_dv(q, k, v, mask, d_out):
    """flash_attention_grads with bug (b)."""
    out, lse = flash_attention(q, k, v, mask)
    return flash_attention_backward_nan_dv(q, k, v, mask, out, lse, d_out)


def _sequences(cu_seqlens_q, cu_seqlens_k, causal, window_size):
    """(query slice, key slice, mask) of each packed sequence: causal and window aligned bottom-right,
    as flash-attn's varlen functions align them (window_size sides of -1 are unbounded)."""
    import refmask

    for b in range(len(cu_seqlens_q) - 1):
        qs = slice(int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1]))
        ks = slice(int(cu_seqlens_k[b]), int(cu_seqlens_k[b + 1]))
        t, s = qs.stop - qs.start, ks.stop - ks.start
        mask = refmask.causal_mask(t, s, align="bottom_right") if causal else np.ones((t, s), bool)
        if window_size is not None:
            left, right = (None if w < 0 else w for w in window_size)
            mask = mask & refmask.sliding_window_mask(t, s, window=(left, right), align="bottom_right")
        yield qs, ks, mask


def _batch_of_one(x):
    return np.swapaxes(x, 0, 1)[None]  # (L, H, D) -> (1, H, L, D)


def flash_attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=False,
                           window_size=None):
    """The kernel over a packed batch, as flash_attn_varlen_func is called: q (total_q, H, D), k and v
    (total_k, H_kv, D or Dv); returns (out (total_q, H, Dv), lse (H, total_q)). A sequence may be empty."""
    out = np.zeros((q.shape[0], q.shape[1], v.shape[-1]), q.dtype)
    lse = np.full((q.shape[1], q.shape[0]), -np.inf, _work_dtype(q.dtype))
    for qs, ks, mask in _sequences(cu_seqlens_q, cu_seqlens_k, causal, window_size):
        o, s = flash_attention(_batch_of_one(q[qs]), _batch_of_one(k[ks]), _batch_of_one(v[ks]), mask)
        out[qs], lse[:, qs] = np.swapaxes(o[0], 0, 1), s[0]
    return out, lse


def flash_attention_varlen_backward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, d_out,
                                    causal=False, window_size=None):
    """(dq, dk, dv) of the packed batch, each sequence by flash_attention_backward; the keys of a
    sequence with no query get 0."""
    grads = [np.zeros_like(x) for x in (q, k, v)]
    for qs, ks, mask in _sequences(cu_seqlens_q, cu_seqlens_k, causal, window_size):
        qb, kb, vb, gb = (_batch_of_one(x) for x in (q[qs], k[ks], v[ks], d_out[qs]))
        dq, dk, dv = flash_attention_grads(qb, kb, vb, mask, gb)
        grads[0][qs], grads[1][ks], grads[2][ks] = (np.swapaxes(g[0], 0, 1) for g in (dq, dk, dv))
    return tuple(grads)
