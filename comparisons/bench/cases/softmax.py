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
    accurate = jax.jit(lambda s, m: refmask.masked_softmax(s, m, backend="jax", accuracy="accurate"))
    native = jax.jit(lambda s, m: jax.nn.softmax(s, axis=-1, where=m))
    # What bounds any softmax under XLA on this machine, against the copy: its exp, its whole unmasked softmax.
    exp, unmasked = jax.jit(jnp.exp), jax.jit(lambda s: jax.nn.softmax(s, axis=-1))
    fns = {
        "refmask": lambda: mine(xs, ms),
        "accurate": lambda: accurate(xs, ms),
        "native": lambda: native(xs, ms),
        "copy": lambda: x.copy(),
        "exp": lambda: exp(xs),
        "unmasked": lambda: unmasked(xs),
    }
    refs: list[Ref] = [
        ("native", "jax.nn.softmax(where=mask), jit", {"max_ratio": 1.05}),
        ("copy", "memory copy of the scores, NumPy (bandwidth floor)", COPY_TARGET[2]),
        ("exp", "bound: jnp.exp alone, jit", {}),
        ("unmasked", "bound: jax.nn.softmax without a mask, jit", {}),
    ]
    return fns, refs, f"{SUBJECT}, jit"


TORCH_IDIOM = "softmax(masked_fill(~mask, -inf))"


def _torch(x: np.ndarray, mask: np.ndarray) -> Measure:
    import torch

    xt, mt = torch.from_numpy(x), torch.from_numpy(mask)
    fns = {
        "refmask": lambda: refmask.masked_softmax(xt, mt),
        "accurate": lambda: refmask.masked_softmax(xt, mt, accuracy="accurate"),
        "native": lambda: torch.softmax(xt.masked_fill(~mt, float("-inf")), dim=-1),
        "copy": lambda: xt.clone(),
    }
    refs: list[Ref] = [("native", TORCH_IDIOM, {"max_ratio": 1.05}), COPY_TARGET]
    return fns, refs, SUBJECT


MEASURES = {"numpy": _numpy, "jax": _jax, "torch": _torch}


def worst_ulp(backend: str, accuracy: str, shape: tuple[int, int] = (64, 512), scale: float = 4.0) -> float:
    """The backend's float32 masked_softmax at `accuracy`, worst ULP distance to the correctly rounded
    weights (the oracle's: float64 arithmetic, one rounding) on scores `scale` * N(0, 1), 20% of keys masked."""
    from refmask import oracle
    from refmask._backends import to_numpy
    from refmask.testing import ulp_distance

    rng = np.random.default_rng(4)
    scores = (scale * rng.standard_normal(shape)).astype(np.float32)
    keep = rng.random(shape) < 0.8
    keep[:, 0] = True
    got = to_numpy(refmask.masked_softmax(scores, keep, backend=backend, accuracy=accuracy))
    return float(ulp_distance(got, oracle.masked_softmax(scores, keep)).max())


def accurate_rows(case: int, backend: str, times: dict[str, float | str], subject: str, native: str) -> list[Row]:
    """The time of times["accurate"] (masked_softmax(accuracy="accurate")) beside times["native"], reported."""
    accurate = {"refmask": times.get("accurate", "not measured"), "native": times.get("native", "not measured")}
    return rows_from_times(case, backend, accurate, f'{subject}, accuracy="accurate"', [("native", native, {})])


def _accuracy_rows(backend: str, times: dict[str, float | str], subject: str, native: str) -> list[Row]:
    """The accurate path's cost beside the native idiom, and both accuracies' worst ULP (only "accurate"
    has a target: the torch backend's, <= 4 ULP; jax's is reported)."""
    rows = accurate_rows(1, backend, times, subject, native)
    what = "float32, worst ULP, scores of scale 4 (64, 512)"
    for accuracy, target in (("accurate", 4.0 if backend == "torch" else None), ("fast", None)):
        rows.append(Row(1, backend, f'masked_softmax(accuracy="{accuracy}") {what}',
                        "correctly rounded weights (the oracle)", worst_ulp(backend, accuracy), unit="ULP",
                        max_value=target))
    return rows


def case_softmax(sizes: Sizes, backends: dict[str, str]) -> list[Row]:
    x, mask = softmax_inputs(sizes.softmax)
    rows: list[Row] = []
    for backend, why in backends.items():
        if why:
            rows.append(Row(1, backend, SUBJECT, "native", skipped=why))
            continue
        fns, refs, subject = MEASURES[backend](x, mask)
        times = interleaved(fns, sizes.repeats)
        rows += rows_from_times(1, backend, times, subject, refs)
        if backend != "numpy":
            rows += _accuracy_rows(backend, times, subject, refs[0][1])
    return rows
