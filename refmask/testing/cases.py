"""The shared catalogue of cases that every backend (and a user's kernel) is held against the oracle on.

- MASK_CALLS: calls of the public mask constructors, converters and varlen helpers, with NumPy
  arguments; a backend's result must equal the oracle's bit for bit.
- ATTENTION_CASES: attention problems (shapes + a canonical mask built by the oracle) covering every
  mask kind, T != S, T = 1, S = 1, zero-length axes, left and right padding, grouped-query heads, a
  fully-masked row and a fully-masked batch item. `arrays()` draws q, k, v and scores from a seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import _dtypes, oracle
from .._validate import FULLY_MASKED_POLICIES

# Widest first: hypothesis shrinks a drawn dtype towards the first.
DTYPES: tuple[str, ...] = tuple(reversed(_dtypes.FLOAT_DTYPES))
POLICIES: tuple[str, ...] = FULLY_MASKED_POLICIES

# Mask kinds, as check_attention's mask_kinds= and strategies.masks(kind=) name them. A case may
# combine kinds ("causal+padding"); it runs when every one of its kinds is selected.
MASK_KINDS = (
    "none",  # no mask: an all-True mask
    "causal",  # causal_mask, top-left or bottom-right aligned
    "sliding_window",  # sliding_window_mask
    "chunked",  # chunked_mask
    "padding",  # key padding, (B, 1, 1, S) from attention_padding_mask(padding_mask(...))
    "query_padding",  # query and key padding, (B, 1, T, S): padded queries attend nowhere
    "segment",  # segment_mask, packed sequences
    "prefix_lm",  # prefix_lm_mask
)

# The kinds of each catalogue case. A case added to the catalogue without an entry here counts as
# kind "other" and runs only when mask_kinds is None (every kind).
CASE_KINDS: dict[str, tuple[str, ...]] = {
    "no-mask": ("none",),
    "causal-T=S": ("causal",),
    "causal-T<S-bottom_right": ("causal",),
    "causal-T>S-bottom_right-fully-masked-rows": ("causal",),
    "causal-T=1-decode": ("causal",),
    "S=1": ("causal",),
    "sliding-window": ("sliding_window",),
    "causal-sliding-window": ("causal", "sliding_window"),
    "chunked": ("chunked",),
    "padding-right": ("padding",),
    "padding-left": ("padding",),
    "fully-masked-batch-item": ("padding",),
    "padding-queries-and-keys": ("padding", "query_padding"),
    "causal+padding": ("causal", "padding"),
    "segment-packed": ("segment",),
    "prefix-lm": ("prefix_lm",),
    "gqa-causal": ("causal",),
    "mqa-padding": ("padding",),
    "no-batch-axis": ("causal",),
    "two-batch-axes": ("causal",),
    "T=0": ("causal",),
    "S=0": ("causal",),
    "B=0": ("causal",),
}



numpy_dtype = _dtypes.numpy_dtype  # NumPy dtype for a name; bfloat16 comes from ml_dtypes


@dataclass(frozen=True)
class MaskCall:
    """One call `refmask.<fn>(*args, **kwargs)`; array arguments are NumPy arrays."""

    id: str
    fn: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)


def _a(*rows: Any, dtype: Any = np.int64) -> np.ndarray:
    return np.array(rows, dtype=dtype)


_LENGTHS = _a(4, 1, 6, 3, 0)
_SEGMENTS = _a([0, 0, 1, 1, 1, 2], [3, 3, 3, 3, -1, -1])
_VALID = _a([True, True, True, False, False, False], [True] * 6, dtype=bool)
_Q_VALID = _a([True, True, False, False], [True, False, False, False], dtype=bool)
_CAUSAL_4x6 = oracle.causal_mask(4, 6)

MASK_CALLS: tuple[MaskCall, ...] = (
    MaskCall("causal-square", "causal_mask", (5,)),
    MaskCall("causal-T<S-top_left", "causal_mask", (3, 7)),
    MaskCall("causal-T<S-bottom_right", "causal_mask", (3, 7), {"align": "bottom_right"}),
    MaskCall("causal-T>S-bottom_right", "causal_mask", (7, 3), {"align": "bottom_right"}),
    MaskCall("causal-offset", "causal_mask", (4, 6), {"offset": -2}),
    MaskCall("causal-T1", "causal_mask", (1, 9), {"align": "bottom_right"}),
    MaskCall("causal-S1", "causal_mask", (4, 1)),
    MaskCall("causal-empty", "causal_mask", (0, 3)),
    MaskCall("window-int", "sliding_window_mask", (8,), {"window": 2}),
    MaskCall("window-causal", "sliding_window_mask", (8,), {"window": (3, 0)}),
    MaskCall("window-bottom_right", "sliding_window_mask", (3, 9), {"window": (2, 1), "align": "bottom_right"}),
    MaskCall("window-zero", "sliding_window_mask", (5, 5), {"window": 0}),
    MaskCall("chunked", "chunked_mask", (10,), {"chunk_size": 4}),
    MaskCall("chunked-bottom_right", "chunked_mask", (3, 10), {"chunk_size": 4, "align": "bottom_right"}),
    MaskCall("chunked-negative-offset", "chunked_mask", (5, 5), {"chunk_size": 2, "offset": -3}),
    # per-example offsets: a static KV cache with nonpad lengths (3, 5) and T = 2 queries (ONNX nonpad_kv_seqlen)
    MaskCall("causal-per-example-offset", "causal_mask", (2, 5), {"offset": _a(1, 3)}),
    MaskCall("window-per-example-offset-unbounded-left", "sliding_window_mask", (3, 6),
             {"window": (None, 0), "offset": _a(0, 3)}),
    MaskCall("window-unbounded-right", "sliding_window_mask", (4, 6), {"window": (1, None)}),
    MaskCall("window-positions", "sliding_window_mask", (), {"window": (2, 0), "q_positions": _a([4, 5], [1, 2]),
                                                              "kv_positions": _a(0, 1, 2, 3, 4, 5)}),
    # chunks anchored at the first real token of a left-padded example (position -1 is the padding)
    MaskCall("chunked-positions-left-padding", "chunked_mask", (),
             {"chunk_size": 2, "q_positions": _a([1]), "kv_positions": _a([-1, 0, 1])}),
    MaskCall("chunked-per-example-offset", "chunked_mask", (3, 5),
             {"chunk_size": 2, "offset": _a(2, -3, dtype=np.int8)}),
    MaskCall("causal-positions-shard", "causal_mask", (),
             {"q_positions": _a(4, 5, 6, 7), "kv_positions": _a(*range(8))}),
    MaskCall("prefix-lm-per-example-offset", "prefix_lm_mask", (_a(2, 0), 3, 5), {"offset": _a(0, 2)}),
    MaskCall("padding-right", "padding_mask", (_LENGTHS, 6)),
    MaskCall("padding-left", "padding_mask", (_LENGTHS, 6), {"side": "left"}),
    MaskCall("padding-empty-batch", "padding_mask", (_a(dtype=np.int64).reshape(0), 4)),
    MaskCall("padding-zero-len", "padding_mask", (_a(0, 0), 0)),
    MaskCall("padding-from-ids", "padding_mask_from_ids", (_a([1, 2, 3, 0, 0, 0], [1, 2, 3, 4, 5, 6]), 0)),
    MaskCall("attention-padding-kv", "attention_padding_mask", (_VALID,)),
    MaskCall("attention-padding-q-and-kv", "attention_padding_mask", (_VALID, _Q_VALID)),
    MaskCall("segment-self", "segment_mask", (_SEGMENTS,)),
    MaskCall("segment-pad", "segment_mask", (_SEGMENTS,), {"pad_id": -1}),
    MaskCall("segment-cross", "segment_mask", (_SEGMENTS[:, :3], _SEGMENTS)),
    MaskCall("prefix-lm", "prefix_lm_mask", (_a(2, 0, 5), 5)),
    MaskCall("prefix-lm-T<S", "prefix_lm_mask", (_a(2, 6), 3, 7), {"align": "bottom_right"}),
    MaskCall("and", "and_masks", (_CAUSAL_4x6, None, oracle.attention_padding_mask(_VALID[:, :6]))),
    MaskCall("or", "or_masks", (_CAUSAL_4x6, oracle.sliding_window_mask(4, 6, window=(0, 2)))),
    MaskCall("to-additive-min", "to_additive", (_CAUSAL_4x6, "float32")),
    MaskCall("to-additive-inf", "to_additive", (_CAUSAL_4x6, "float16"), {"fill": "-inf"}),
    MaskCall("to-additive-number", "to_additive", (_CAUSAL_4x6, "float32"), {"fill": -1e9}),
    MaskCall("from-additive", "from_additive", (oracle.to_additive(_CAUSAL_4x6, "float32"),)),
    MaskCall(
        "from-additive-threshold",
        "from_additive",
        (oracle.to_additive(_CAUSAL_4x6, "float32", fill=-1e9),),
        {"threshold": -1e9},
    ),
    MaskCall(
        "from-additive-threshold-rounded-to-float16",  # -10001 is -10000 in float16 (spacing 8)
        "from_additive",
        (oracle.to_additive(_CAUSAL_4x6, "float16", fill=-10001.0),),
        {"threshold": -10001.0},
    ),
    MaskCall("from-torch-mha-bool", "from_torch_mha", (~_CAUSAL_4x6, ~_VALID)),
    MaskCall(
        "from-torch-mha-3d",
        "from_torch_mha",
        (np.broadcast_to(~_CAUSAL_4x6, (6, 4, 6)).copy(),),
        {"num_heads": 3},
    ),
    MaskCall("from-torch-mha-3d-empty", "from_torch_mha", (np.zeros((6, 0, 0), bool),), {"num_heads": 3}),
    MaskCall(
        "from-torch-mha-float",
        "from_torch_mha",
        (oracle.to_additive(_CAUSAL_4x6, "float32", fill="-inf"), ~_VALID),
    ),
    MaskCall("to-torch-mha-causal", "to_torch_mha", (_CAUSAL_4x6,)),
    MaskCall("to-torch-mha-padding", "to_torch_mha", (oracle.attention_padding_mask(_VALID),)),
    MaskCall(
        "to-torch-mha-heads",
        "to_torch_mha",
        (oracle.and_masks(_CAUSAL_4x6, oracle.attention_padding_mask(_VALID)),),
        {"num_heads": 2},
    ),
    MaskCall("from-hf", "from_hf", (_a([1, 1, 1, 0], [0, 1, 1, 1]),)),
    # varlen batches (flash-attn's packed layout); sizes set by values are passed, as under jax.jit
    MaskCall("cu-seqlens", "cu_seqlens", (_a(3, 0, 2),)),
    MaskCall("segment-ids-from-cu-seqlens-padded", "segment_ids_from_cu_seqlens", (_a(0, 3, 3, 5),), {"total": 7}),
    MaskCall("cu-seqlens-from-segment-ids", "cu_seqlens_from_segment_ids", (_a(0, 0, 2, 2, -1),), {"num_segments": 4}),
    MaskCall("varlen-causal-seqlen-q-differs-from-k", "varlen_mask", (_a(0, 1, 3), _a(0, 2, 3)),
             {"causal": True, "total_q": 3, "total_k": 3}),
    MaskCall("varlen-window-empty-sequence-padding", "varlen_mask", (_a(0, 3, 3, 7),),
             {"window": (1, None), "total_q": 8}),
    MaskCall("pad", "pad", (np.arange(8, dtype=np.float32).reshape(4, 2), _a(0, 2, 4, 5), 2, 3)),
)


@dataclass(frozen=True)
class AttentionCase:
    """An attention problem: q (*batch, H, T, D), k/v (*batch, H_kv, S, D/Dv) and a canonical mask."""

    id: str
    batch: tuple[int, ...]
    heads: int
    kv_heads: int
    q_len: int
    kv_len: int
    head_dim: int
    value_dim: int
    make_mask: Callable[[], np.ndarray | None]

    @property
    def scores_shape(self) -> tuple[int, ...]:
        return (*self.batch, self.heads, self.q_len, self.kv_len)

    def mask(self) -> np.ndarray | None:
        return self.make_mask()

    def arrays(self, dtype: str, seed: int = 0) -> dict[str, np.ndarray]:
        """q, k, v and raw scores drawn from N(0, 1) by `seed`, rounded to `dtype`."""
        rng = np.random.default_rng(seed)
        d = numpy_dtype(dtype)
        q = rng.standard_normal((*self.batch, self.heads, self.q_len, self.head_dim)).astype(d)
        k = rng.standard_normal((*self.batch, self.kv_heads, self.kv_len, self.head_dim)).astype(d)
        v = rng.standard_normal((*self.batch, self.kv_heads, self.kv_len, self.value_dim)).astype(d)
        scores = (2.0 * rng.standard_normal(self.scores_shape)).astype(d)
        return {"q": q, "k": k, "v": v, "scores": scores}


def _case(
    id_: str,
    batch: tuple[int, ...],
    heads: int,
    kv_heads: int,
    t: int,
    s: int,
    make_mask: Callable[[], np.ndarray | None],
    d: int = 8,
    dv: int = 4,
) -> AttentionCase:
    return AttentionCase(id_, tuple(batch), heads, kv_heads, t, s, d, dv, make_mask)


def _padding(lengths: list[int], s: int, side: str = "right") -> Callable[[], np.ndarray]:
    return lambda: oracle.attention_padding_mask(oracle.padding_mask(np.array(lengths), s, side=side))


ATTENTION_CASES: tuple[AttentionCase, ...] = (
    _case("no-mask", (2,), 2, 2, 5, 5, lambda: None),
    _case("causal-T=S", (2,), 2, 2, 6, 6, lambda: oracle.causal_mask(6)),
    _case("causal-T<S-bottom_right", (2,), 2, 2, 3, 7, lambda: oracle.causal_mask(3, 7, align="bottom_right")),
    _case("causal-T>S-bottom_right-fully-masked-rows", (1,), 2, 2, 6, 3,
          lambda: oracle.causal_mask(6, 3, align="bottom_right")),
    _case("causal-T=1-decode", (2,), 4, 2, 1, 9, lambda: oracle.causal_mask(1, 9, align="bottom_right")),
    _case("S=1", (2,), 2, 2, 4, 1, lambda: oracle.causal_mask(4, 1)),
    _case("sliding-window", (1,), 2, 2, 8, 8, lambda: oracle.sliding_window_mask(8, window=(2, 1))),
    _case("causal-sliding-window", (1,), 2, 2, 8, 8,
          lambda: oracle.and_masks(oracle.causal_mask(8), oracle.sliding_window_mask(8, window=(3, 0)))),
    _case("chunked", (1,), 2, 2, 8, 8, lambda: oracle.chunked_mask(8, chunk_size=3)),
    _case("padding-right", (4,), 2, 2, 6, 6, _padding([4, 1, 6, 3], 6)),
    _case("padding-left", (4,), 2, 2, 6, 6, _padding([4, 1, 6, 3], 6, side="left")),
    _case("fully-masked-batch-item", (3,), 2, 2, 5, 5, _padding([5, 0, 2], 5)),
    _case("padding-queries-and-keys", (2,), 2, 2, 4, 4,
          lambda: oracle.attention_padding_mask(oracle.padding_mask(np.array([2, 4]), 4),
                                                oracle.padding_mask(np.array([3, 1]), 4))),
    _case("causal+padding", (3,), 2, 2, 5, 5,
          lambda: oracle.and_masks(oracle.causal_mask(5), _padding([5, 3, 1], 5)())),
    _case("segment-packed", (2,), 2, 2, 6, 6,
          lambda: oracle.segment_mask(np.array([[0, 0, 1, 1, 1, 2], [0, 0, 0, 1, 1, -1]]), pad_id=-1)),
    _case("prefix-lm", (2,), 2, 2, 6, 6, lambda: oracle.prefix_lm_mask(np.array([2, 4]), 6)),
    _case("gqa-causal", (2,), 4, 2, 5, 5, lambda: oracle.causal_mask(5)),
    _case("mqa-padding", (2,), 4, 1, 4, 6, _padding([6, 2], 6)),
    _case("no-batch-axis", (), 2, 2, 4, 4, lambda: oracle.causal_mask(4)),
    _case("two-batch-axes", (2, 3), 2, 2, 3, 4, lambda: oracle.causal_mask(3, 4, align="bottom_right")),
    _case("T=0", (2,), 2, 2, 0, 5, lambda: oracle.causal_mask(0, 5)),
    _case("S=0", (2,), 2, 2, 3, 0, lambda: oracle.causal_mask(3, 0)),
    _case("B=0", (0,), 2, 2, 3, 3, lambda: oracle.causal_mask(3)),
)


@dataclass(frozen=True)
class VarlenCase:
    """A varlen batch, as flash-attn's varlen functions take it: sequences packed along one token axis,
    q (total_q, H, D), k (total_k, H_kv, D), v (total_k, H_kv, Dv), cu_seqlens (B + 1,) int32, and the
    mask of oracle.varlen_mask (block diagonal, causal and window aligned bottom-right per sequence).

    window: (left, right) as flash-attn's window_size (finite here; None: no window).
    """

    id: str
    q_lengths: tuple[int, ...]
    kv_lengths: tuple[int, ...]
    heads: int = 2
    kv_heads: int = 2
    causal: bool = False
    window: tuple[int, int] | None = None
    head_dim: int = 8
    value_dim: int = 4

    @property
    def kinds(self) -> tuple[str, ...]:
        kinds = (("causal",) if self.causal else ()) + (("sliding_window",) if self.window is not None else ())
        return kinds or ("none",)

    @property
    def total_q(self) -> int:
        return sum(self.q_lengths)

    @property
    def total_k(self) -> int:
        return sum(self.kv_lengths)

    def cu_seqlens(self) -> tuple[np.ndarray, np.ndarray]:
        """(cu_seqlens_q, cu_seqlens_k), int32."""
        return oracle.cu_seqlens(np.array(self.q_lengths)), oracle.cu_seqlens(np.array(self.kv_lengths))

    def mask(self) -> np.ndarray:
        """(total_q, total_k): which packed query token may attend which packed key token."""
        cu_q, cu_k = self.cu_seqlens()
        return oracle.varlen_mask(cu_q, cu_k, causal=self.causal, window=self.window)

    def arrays(self, dtype: str, seed: int = 0) -> dict[str, np.ndarray]:
        """Packed q, k, v drawn from N(0, 1) by `seed`, rounded to `dtype`."""
        rng = np.random.default_rng(seed)
        d = numpy_dtype(dtype)
        return {
            "q": rng.standard_normal((self.total_q, self.heads, self.head_dim)).astype(d),
            "k": rng.standard_normal((self.total_k, self.kv_heads, self.head_dim)).astype(d),
            "v": rng.standard_normal((self.total_k, self.kv_heads, self.value_dim)).astype(d),
        }


# Varlen batches: what the catalogue's masks become when sequences are packed (no mask, causal T = S,
# T < S and T > S bottom-right, windows, key padding as shorter key sequences, grouped heads) and what
# only packing has: sequences with no query (seqlen_q = 0, whose keys get no gradient) or no key.
VARLEN_CASES: tuple[VarlenCase, ...] = (
    VarlenCase("varlen-no-mask", (3, 5), (3, 5)),
    VarlenCase("varlen-cross-lengths", (2, 3), (4, 1)),
    VarlenCase("varlen-causal", (4, 2, 5), (4, 2, 5), causal=True),
    VarlenCase("varlen-causal-T<S-decode", (1, 2), (5, 3), causal=True),
    VarlenCase("varlen-causal-T>S-fully-masked-rows", (5, 1), (2, 1), causal=True),
    VarlenCase("varlen-sliding-window", (6, 3), (6, 3), window=(2, 1)),
    VarlenCase("varlen-causal-sliding-window", (7,), (7,), causal=True, window=(3, 0)),
    VarlenCase("varlen-empty-key-sequence", (3, 2), (4, 0)),
    VarlenCase("varlen-empty-query-sequences", (0, 3, 0), (2, 3, 4), causal=True),
    VarlenCase("varlen-one-token-sequences", (1, 1, 1), (1, 1, 1)),
    VarlenCase("varlen-gqa-causal", (3, 4), (3, 4), heads=4, kv_heads=2, causal=True),
    VarlenCase("varlen-no-queries", (0, 0), (3, 2), causal=True),
    VarlenCase("varlen-no-tokens", (0,), (0,)),
)
