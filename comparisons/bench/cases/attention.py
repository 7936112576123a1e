"""Case 2: causal attention against the same math in each framework and its native attention."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

import refmask
from refmask._backends import missing_dependency

from ..modes import Sizes
from ..rows import Measure, Ref, Row, rows_from_times
from ..timing import interleaved

SUBJECT = "attention(is_causal=True)"


def numpy_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: np.ndarray, dtype: Any) -> np.ndarray:
    """Textbook causal attention in `dtype`: softmax(where(causal, q k^T / sqrt(D), -inf)) v."""
    q, k, v = (a.astype(dtype, copy=False) for a in (q, k, v))
    s = np.where(causal, q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1]), -np.inf)
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return ((e / e.sum(axis=-1, keepdims=True)) @ v).astype(np.float32, copy=False)


def _numpy(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: np.ndarray) -> Measure:
    fns = {
        "refmask": lambda: refmask.attention(q, k, v, is_causal=True),
        "f64": lambda: numpy_attention(q, k, v, causal, np.float64),
        "f32": lambda: numpy_attention(q, k, v, causal, np.float32),
    }
    refs: list[Ref] = [
        ("f64", "plain NumPy, same math in float64", {}),
        ("f32", "plain NumPy, same math in float32", {}),
    ]
    return fns, refs, SUBJECT


def _flax_attention(causal: Any) -> Any:
    """flax.linen.dot_product_attention with the causal mask, jitted; a function that raises the
    install hint when flax is missing (the row is then reported as skipped)."""
    why = missing_dependency("flax", "jax", "the Flax reference")
    if why is not None:

        def missing(*_: Any) -> Any:
            raise ImportError(why)

        return missing
    import flax.linen as nn
    import jax

    return jax.jit(lambda q, k, v: nn.dot_product_attention(q, k, v, mask=causal[None, None]))


def _jax(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: np.ndarray) -> Measure:
    import jax
    import jax.numpy as jnp

    qj, kj, vj = (jnp.asarray(a) for a in (q, k, v))
    # Flax and jax.nn take (B, T, H, D): transposed here, outside the timing.
    qn, kn, vn = (jnp.asarray(a.transpose(0, 2, 1, 3)) for a in (q, k, v))
    mine = jax.jit(lambda q, k, v: refmask.attention(q, k, v, is_causal=True, backend="jax"))
    flax_fn = _flax_attention(jnp.asarray(causal))
    jnn = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla"))
    fns = {
        "refmask": lambda: mine(qj, kj, vj),
        "flax": lambda: flax_fn(qn, kn, vn),
        "jnn": lambda: jnn(qn, kn, vn),
    }
    refs: list[Ref] = [
        ("flax", "flax.linen.dot_product_attention(mask=causal), jit", {"max_ratio": 1.05}),
        ("jnn", 'jax.nn.dot_product_attention(is_causal=True, "xla"), jit', {"max_ratio": 1.05}),
    ]
    return fns, refs, f"{SUBJECT}, jit"


def _torch(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: np.ndarray) -> Measure:
    import torch
    import torch.nn.functional as F

    qt, kt, vt = (torch.from_numpy(a) for a in (q, k, v))
    masked_t = ~torch.from_numpy(causal)
    scale = 1.0 / math.sqrt(q.shape[-1])

    def torch_math() -> Any:
        scores = (qt @ kt.transpose(-2, -1)) * scale
        return torch.softmax(scores.masked_fill(masked_t, float("-inf")), dim=-1) @ vt

    fns = {
        "refmask": lambda: refmask.attention(qt, kt, vt, is_causal=True),
        "math": torch_math,
        "sdpa": lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=True),
    }
    refs: list[Ref] = [
        ("math", "same math in plain torch (matmul, masked_fill, softmax, matmul)", {"max_ratio": 1.05}),
        ("sdpa", "F.scaled_dot_product_attention(is_causal=True)", {"max_ratio": 1.10}),
    ]
    return fns, refs, SUBJECT


MEASURES = {"numpy": _numpy, "jax": _jax, "torch": _torch}


def case_attention(sizes: Sizes, backends: dict[str, str]) -> list[Row]:
    b, h, t, s, d = sizes.attention
    rng = np.random.default_rng(1)
    q = rng.standard_normal((b, h, t, d), dtype=np.float32)
    k, v = (rng.standard_normal((b, h, s, d), dtype=np.float32) for _ in range(2))
    causal = refmask.causal_mask(t, s)
    repeats = max(1, (sizes.repeats + 1) // 2)
    rows: list[Row] = []
    for backend, why in backends.items():
        if why:
            rows.append(Row(2, backend, SUBJECT, "native", skipped=why))
            continue
        fns, refs, subject = MEASURES[backend](q, k, v, causal)
        rows += rows_from_times(2, backend, interleaved(fns, repeats), subject, refs)
    return rows
