"""hypothesis strategies for masks and attention problems, built from refmask's own constructors.

    from hypothesis import given
    from refmask.testing import strategies as rst

    @given(rst.attention_cases(kinds=["causal", "padding"]))
    def test_my_attention(case):
        q, k, v, mask, dtype = case
        ...

Everything shrinks towards small, readable counterexamples: lengths, batch and heads towards 1,
padding towards none, windows and chunks towards 1, one segment, "top_left" alignment; q, k and v
hold small integers (-2 .. 2) that shrink towards 0. Sizes and numbers may be given as ints or as
strategies. Needs hypothesis (pip install "refmask[test]").
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._backends import install_hint

try:
    from hypothesis import strategies as st
    from hypothesis.strategies import DrawFn, SearchStrategy
except ModuleNotFoundError as err:
    if err.name != "hypothesis":
        raise
    why = f"refmask.testing.strategies needs hypothesis, which is not installed: {install_hint('test')}"
    raise ImportError(why) from None

from .. import oracle
from .cases import DTYPES, MASK_KINDS, numpy_dtype

__all__ = ["MASK_KINDS", "AttentionExample", "attention_cases", "lengths", "masks", "segment_ids"]

IntLike = int | SearchStrategy[int]


def _ints(x: IntLike, name: str) -> SearchStrategy[int]:
    if isinstance(x, SearchStrategy):
        return x
    if isinstance(x, bool) or not isinstance(x, int | np.integer) or x < 0:
        raise ValueError(f"{name} must be an int >= 0 or a strategy of ints; got {x!r}")
    return st.just(int(x))


def _kind_strategy(kind: Any) -> SearchStrategy[str]:
    if isinstance(kind, SearchStrategy):
        return kind
    names = list(MASK_KINDS) if kind is None else [kind] if isinstance(kind, str) else list(kind)
    for name in names:
        for part in name.split("+"):
            if part not in MASK_KINDS:
                choices = ", ".join(map(repr, MASK_KINDS))
                raise ValueError(f"mask kind must be one of {choices} (or 'a+b'); got {name!r}")
    return st.sampled_from(names)


@st.composite
def _lengths(draw: DrawFn, max_len: int, batch: int, min_len: int) -> np.ndarray:
    # Drawn as padding (max_len - length), which shrinks to 0: "no padding" is the simplest case.
    pads = [draw(st.integers(0, max_len - min_len)) for _ in range(batch)]
    return np.array([max_len - p for p in pads], dtype=np.int64)


def lengths(max_len: IntLike, *, batch: IntLike = st.integers(1, 3), min_len: int = 0) -> SearchStrategy[np.ndarray]:
    """(B,) int64 sequence lengths in [min_len, max_len], for padding_mask(lengths, max_len).

    Shrinks towards batch 1 and no padding (every length max_len).
    """

    @st.composite
    def build(draw: DrawFn) -> np.ndarray:
        b = draw(_ints(batch, "batch"))
        top = draw(_ints(max_len, "max_len"))
        if min_len > top:
            raise ValueError(f"min_len={min_len} exceeds max_len={top}")
        return draw(_lengths(top, b, min_len))

    return build()


@st.composite
def _segments(draw: DrawFn, batch: int, length: int, max_segments: int, pad_id: int | None) -> np.ndarray:
    rows: list[list[int | None]] = []
    for _ in range(batch):
        # Where a new segment starts (False shrinks to one segment), then trailing padding.
        pad = draw(st.integers(0, length)) if pad_id is not None else 0
        ids: list[int | None] = []
        current = 0
        for i in range(length - pad):
            if i and current < max_segments - 1 and draw(st.booleans()):
                current += 1
            ids.append(current)
        rows.append(ids + [pad_id] * pad)
    return np.array(rows, dtype=np.int64).reshape(batch, length)


def segment_ids(
    batch: IntLike = st.integers(1, 2),
    length: IntLike = st.integers(1, 8),
    *,
    max_segments: int = 3,
    pad_id: int | None = None,
) -> SearchStrategy[np.ndarray]:
    """(B, L) int64 segment ids of packed sequences: 0, 0, 1, 1, 1, 2 ... (non-decreasing), for
    segment_mask; with pad_id, each row may end in pad_id tokens (pad_id should be negative).

    Shrinks towards one segment and no padding.
    """
    if max_segments < 1:
        raise ValueError(f"max_segments must be >= 1; got {max_segments}")

    @st.composite
    def build(draw: DrawFn) -> np.ndarray:
        return draw(_segments(draw(_ints(batch, "batch")), draw(_ints(length, "length")), max_segments, pad_id))

    return build()


@st.composite
def _one_mask(draw: DrawFn, kind: str, t: int, s: int, b: int) -> tuple[np.ndarray, dict[str, Any]]:
    """A mask of one kind at the constructor's own shape, and the arguments that built it."""

    def align() -> str:
        return draw(st.sampled_from(("top_left", "bottom_right")))

    a: dict[str, Any]
    if kind == "none":
        return np.ones((t, s), bool), {}
    if kind == "causal":
        a = {"align": align()}
        return oracle.causal_mask(t, s, **a), a
    if kind == "sliding_window":
        a = {"window": (draw(st.integers(0, 3)), draw(st.integers(0, 3))), "align": align()}
        return oracle.sliding_window_mask(t, s, **a), a
    if kind == "chunked":
        a = {"chunk_size": draw(st.integers(1, max(1, s))), "align": align()}
        return oracle.chunked_mask(t, s, **a), a
    if kind == "padding":
        kv = draw(_lengths(s, b, 0))
        a = {"kv_lengths": kv.tolist(), "side": draw(st.sampled_from(("right", "left")))}
        return oracle.attention_padding_mask(oracle.padding_mask(kv, s, side=a["side"])), a
    if kind == "query_padding":
        kv, qs = draw(_lengths(s, b, 0)), draw(_lengths(t, b, 0))
        a = {"kv_lengths": kv.tolist(), "q_lengths": qs.tolist()}
        return oracle.attention_padding_mask(oracle.padding_mask(kv, s), oracle.padding_mask(qs, t)), a
    if kind == "segment":
        pad = -1 if draw(st.booleans()) else None
        q_seg = draw(_segments(b, t, 3, pad))
        kv_seg = q_seg if s == t and not draw(st.booleans()) else draw(_segments(b, s, 3, pad))
        a = {"q_segment_ids": q_seg.tolist(), "kv_segment_ids": kv_seg.tolist(), "pad_id": pad}
        return oracle.segment_mask(q_seg, kv_seg, pad_id=pad), a
    if kind == "prefix_lm":
        prefix = np.array([draw(st.integers(0, s)) for _ in range(b)], dtype=np.int64)
        a = {"prefix_lengths": prefix.tolist(), "align": align()}
        return oracle.prefix_lm_mask(prefix, t, s, align=a["align"]), a
    raise ValueError(f"unknown mask kind {kind!r}")


def _and(masks: list[np.ndarray]) -> np.ndarray:
    out = oracle.and_masks(*masks)
    assert out is not None
    return out


def masks(
    kind: Any = "causal",
    *,
    q_len: IntLike = st.integers(1, 8),
    kv_len: IntLike | None = None,
    batch: IntLike = st.integers(1, 2),
) -> SearchStrategy[np.ndarray]:
    """Canonical boolean masks (True = attend) of `kind`, at the constructor's smallest shape:
    (T, S) for "none", "causal", "sliding_window", "chunked"; (B, 1, 1, S) for "padding";
    (B, 1, T, S) for "query_padding", "segment", "prefix_lm" and combinations.

    kind: one of MASK_KINDS, a combination "causal+padding" (and_masks of both), a list of these
      (one is drawn), a strategy of names, or None (any single kind).
    q_len, kv_len, batch: ints or strategies; kv_len defaults to an independent 1 .. 8.
    """
    kinds = _kind_strategy(kind)
    kv = st.integers(1, 8) if kv_len is None else kv_len

    @st.composite
    def build(draw: DrawFn) -> np.ndarray:
        name = draw(kinds)
        t, s, b = draw(_ints(q_len, "q_len")), draw(_ints(kv, "kv_len")), draw(_ints(batch, "batch"))
        return _and([draw(_one_mask(part, t, s, b))[0] for part in name.split("+")])

    return build()


@dataclass(frozen=True, repr=False)
class AttentionExample:
    """One generated attention problem in BHTD layout; unpacks as `q, k, v, mask, dtype = example`.

    q (B, H, T, D), k (B, H_kv, S, D), v (B, H_kv, S, Dv), all of dtype `dtype` (a name); mask a
    4-D boolean array broadcastable to (B, H, T, S). kind and params say how the mask was built.
    """

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    mask: np.ndarray
    dtype: str
    kind: str
    params: tuple[tuple[str, Any], ...]

    # Any: the items are four arrays and then a dtype name, which an Iterator cannot type one by one.
    def __iter__(self) -> Iterator[Any]:
        return iter((self.q, self.k, self.v, self.mask, self.dtype))

    def describe(self) -> str:
        b, h, t, d = self.q.shape
        params = ", ".join(f"{k}={v!r}" for k, v in self.params)
        return (f"{self.kind}({params}) B={b} H={h} H_kv={self.k.shape[1]} T={t} S={self.k.shape[2]} "
                f"D={d} Dv={self.v.shape[3]}")

    def values(self, limit: int = 96) -> str:
        """q, k, v and the mask as nested lists of small numbers (empty when they hold more than
        `limit` numbers in all)."""
        if self.q.size + self.k.size + self.v.size > limit:
            return ""

        def show(x: np.ndarray) -> str:
            x64 = x.astype(np.float64)
            return str((x64.astype(np.int64) if _integral(x) else x64).tolist())

        return (f"  values: q={show(self.q)}, k={show(self.k)}, v={show(self.v)}, "
                f"mask(1 = attend)={self.mask.astype(np.int8).tolist()}")

    def __repr__(self) -> str:
        values = self.values(limit=10**6).strip().removeprefix("values: ")
        return f"AttentionExample({self.describe()}, dtype={self.dtype!r}, {values})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        # hypothesis prints falsifying examples with this (it would list every field otherwise).
        printer.text(repr(self))


def _integral(x: np.ndarray) -> bool:
    x64 = x.astype(np.float64)
    return bool(np.all(np.isfinite(x64)) and np.all(x64 == np.round(x64)))


def _small_ints(draw: DrawFn, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    n = int(np.prod(shape))
    values = draw(st.lists(st.integers(-2, 2), min_size=n, max_size=n))
    return np.array(values, dtype=np.float64).reshape(shape).astype(numpy_dtype(dtype))


def attention_cases(
    *,
    kinds: Any = None,
    dtypes: Any = DTYPES,
    batch: IntLike = st.integers(1, 2),
    heads: IntLike = st.integers(1, 2),
    q_len: IntLike = st.integers(1, 6),
    kv_len: IntLike = st.integers(1, 6),
    head_dim: IntLike = st.integers(1, 4),
    value_dim: IntLike = st.integers(1, 3),
    grouped_query: bool = False,
    allow_fully_masked: bool = True,
) -> SearchStrategy[AttentionExample]:
    """Attention problems (AttentionExample: q, k, v, mask, dtype) with a mask of one of `kinds`,
    sometimes combined (and_masks) with a second one of `kinds`.

    kinds: names among MASK_KINDS (default: all); dtypes: names among DTYPES (shrinks to the first).
    batch, heads, q_len, kv_len, head_dim, value_dim: ints or strategies (B, H, T, S, D, Dv).
    grouped_query: `heads` is then H_kv, the key/value heads, and q gets H = H_kv or 2 * H_kv.
    allow_fully_masked=False: rows with no kept key get key 0 kept (for code that follows no
      fully_masked policy).
    """
    names: list[str] = list(MASK_KINDS) if kinds is None else [kinds] if isinstance(kinds, str) else list(kinds)
    _kind_strategy(names)
    dtype_names = [dtypes] if isinstance(dtypes, str) else list(dtypes)
    for d in dtype_names:
        if d not in DTYPES:
            raise ValueError(f"dtypes must be among {', '.join(map(repr, DTYPES))}; got {d!r}")

    @st.composite
    def build(draw: DrawFn) -> AttentionExample:
        dtype = draw(st.sampled_from(dtype_names))
        b, t, s = draw(_ints(batch, "batch")), draw(_ints(q_len, "q_len")), draw(_ints(kv_len, "kv_len"))
        h_kv = draw(_ints(heads, "heads"))
        h = h_kv * (draw(st.integers(1, 2)) if grouped_query else 1)
        d, dv = draw(_ints(head_dim, "head_dim")), draw(_ints(value_dim, "value_dim"))
        first = draw(st.sampled_from(names))
        parts = [first]
        others = [n for n in names if n not in ("none", first)]
        if len(others) > 0 and draw(st.booleans()):
            parts.append(draw(st.sampled_from(others)))
        built = [draw(_one_mask(part, t, s, b)) for part in parts]
        mask = _and([m for m, _ in built])
        mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
        if not allow_fully_masked and s > 0:
            empty = ~mask.any(axis=-1, keepdims=True)
            mask = mask | (empty & (np.arange(s) == 0))
        params = tuple((f"{part}.{k}" if len(parts) > 1 else k, v) for part, (_, a) in zip(parts, built, strict=False)
                       for k, v in a.items())
        q = _small_ints(draw, (b, h, t, d), dtype)
        k = _small_ints(draw, (b, h_kv, s, d), dtype)
        v = _small_ints(draw, (b, h_kv, s, dv), dtype)
        return AttentionExample(q, k, v, mask, dtype, "+".join(parts), params)

    return build()
