"""Case 1: masked_softmax, causal + key padding, against the native masked softmax of each backend."""

from __future__ import annotations

from typing import Any

import numpy as np

import refmask

from ..modes import Sizes
from ..rows import Measure, Ref, Row, rows_from_times
from ..timing import interleaved

SUBJECT = "masked_softmax"
COPY: Ref = ("copy", "memory copy of the scores (bandwidth floor)", {})
# jax and torch: the softmax reads the scores and writes the weights, so a few copies' time is its floor
COPY_TARGET: Ref = (COPY[0], COPY[1], {"max_ratio": 3.0})


def softmax_inputs(shape: tuple[int, ...]) -> tuple[np.ndarray, Any]:
    """float32 scores and a causal + key-padding mask (B, 1, T, S); every row keeps a key."""
    b, _, t, s = shape
    rng = np.random.default_rng(0)
    scores = rng.standard_normal(shape, dtype=np.float32)
    lengths = rng.integers(max(1, s // 2), s + 1, size=b)
    keys = refmask.attention_padding_mask(refmask.padding_mask(lengths, s))
    return scores, refmask.and_masks(refmask.causal_mask(t, s), keys)


def numpy_softmax(x: np.ndarray, mask: np.ndarray, dtype: Any) -> np.ndarray:
    """The textbook masked softmax, computed in `dtype`, returned in x's dtype."""
    y = np.where(mask, x.astype(dtype, copy=False), -np.inf)
    e = np.exp(y - y.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(x.dtype, copy=False)


def _numpy(x: np.ndarray, mask: np.ndarray) -> Measure:
    x64, out64, out32 = x.astype(np.float64), np.empty(x.shape), np.empty_like(x)
    fns = {
        "refmask": lambda: refmask.masked_softmax(x, mask),
        "f64": lambda: numpy_softmax(x, mask, np.float64),
        "f32": lambda: numpy_softmax(x, mask, np.float32),
        "copy": lambda: x.copy(),
        # What bounds any float64 softmax (the oracle's arithmetic) against a float32 one:
        "cast": lambda: x.astype(np.float64),
        "exp64": lambda: np.exp(x64, out=out64),
        "exp32": lambda: np.exp(x, out=out32),
    }
    refs: list[Ref] = [
        ("f64", "plain NumPy where+max+exp+sum, float64", {"max_ratio": 1.0}),
        ("f32", "plain NumPy where+max+exp+sum, float32", {}),
        COPY,
        ("cast", "bound: the float32 -> float64 cast alone", {}),
        ("exp64", "bound: np.exp alone, float64, in place", {}),
        ("exp32", "bound: np.exp alone, float32, in place", {}),
    ]
    return fns, refs, SUBJECT


def _jax(x: np.ndarray, mask: np.ndarray) -> Measure:
    import jax
    import jax.numpy as jnp

    xs, ms = jnp.asarray(x), jnp.asarray(mask)
    mine = jax.jit(lambda s, m: refmask.masked_softmax(s, m, backend="jax"))
    native = jax.jit(lambda s, m: jax.nn.softmax(s, axis=-1, where=m))
    fns = {"refmask": lambda: mine(xs, ms), "native": lambda: native(xs, ms), "copy": lambda: x.copy()}
    refs: list[Ref] = [
        ("native", "jax.nn.softmax(where=mask), jit", {"max_ratio": 1.05}),
        ("copy", "memory copy of the scores, NumPy (bandwidth floor)", COPY_TARGET[2]),
    ]
    return fns, refs, f"{SUBJECT}, jit"


def _torch(x: np.ndarray, mask: np.ndarray) -> Measure:
    import torch

    xt, mt = torch.from_numpy(x), torch.from_numpy(mask)
    fns = {
        "refmask": lambda: refmask.masked_softmax(xt, mt),
        "native": lambda: torch.softmax(xt.masked_fill(~mt, float("-inf")), dim=-1),
        "copy": lambda: xt.clone(),
    }
    return fns, [("native", "softmax(masked_fill(~mask, -inf))", {"max_ratio": 1.05}), COPY_TARGET], SUBJECT


MEASURES = {"numpy": _numpy, "jax": _jax, "torch": _torch}


def torch_worst_ulp(shape: tuple[int, int] = (64, 512), scale: float = 4.0) -> float:
    """The torch backend's float32 masked_softmax, worst ULP distance to the correctly rounded weights
    (the oracle's: float64 arithmetic, one rounding) on scores `scale` * N(0, 1) with 20% of keys masked."""
    import torch

    from refmask import oracle
    from refmask.testing import ulp_distance

    rng = np.random.default_rng(4)
    scores = (scale * rng.standard_normal(shape)).astype(np.float32)
    keep = rng.random(shape) < 0.8
    keep[:, 0] = True
    got = refmask.masked_softmax(torch.from_numpy(scores), torch.from_numpy(keep)).numpy()
    return float(ulp_distance(got, oracle.masked_softmax(scores, keep)).max())


def case_softmax(sizes: Sizes, backends: dict[str, str]) -> list[Row]:
    x, mask = softmax_inputs(sizes.softmax)
    rows: list[Row] = []
    for backend, why in backends.items():
        if why:
            rows.append(Row(1, backend, SUBJECT, "native", skipped=why))
            continue
        fns, refs, subject = MEASURES[backend](x, mask)
        rows += rows_from_times(1, backend, interleaved(fns, sizes.repeats), subject, refs)
        if backend == "torch":
            rows.append(Row(1, "torch", "masked_softmax float32, worst ULP, scores of scale 4 (64, 512)",
                            "correctly rounded weights (the oracle)", torch_worst_ulp(), unit="ULP", max_value=4))
    return rows
