"""xformers' attention biases (xformers.ops.fmha.attn_bias), materialised and applied by xformers' reference.

xformers' memory_efficient_attention kernels run on GPUs only. What runs on CPU is the bias library:
every AttentionBias class materialises its mask (`bias.materialize(shape, dtype)`, "for debugging &
testing": an additive tensor, 0 where a query may attend and -inf where not, whatever the dtype), and
xformers.attn_bias_utils.ref_attention_bmhk, the reference its benchmarks check the kernels with, adds
that tensor to the scores and takes torch's softmax. So these rows measure the masks xformers' classes
state and what an additive -inf bias does, not the kernels: for a padded-keys bias the flash kernel reads
only the keys in use (flash.py, _convert_input_format passes seqused_k = kv_seqlen), so a NaN key in the
padded area never reaches it, while the reference adds -inf to its NaN score, which stays NaN.
Conventions to translate (refmask: bool mask, True = may attend, broadcastable to (B, H, T, S)):

- Layout BMHK: q (B, T, H, D), k and v (B, S, H, D): heads after the sequence axis.
- LowerTriangularMask: causal, top-left (materialize: tril(diagonal=0)); the docstring's "cannot
  attend to a key farther from the initial key than Q is from the initial query".
- LowerTriangularFromBottomRightMask: causal, bottom-right (the last query sees the last key).
- LocalAttentionFromBottomRightMask(window_left, window_right): keys q - window_left .. q +
  window_right, bottom-right aligned (refmask.conventions.xformers_local_attention).
- The BlockDiagonal* biases are for packed batches: the examples' sequences laid end to end in one
  batch-1 row, (1, sum of lengths, H, D), each block a sequence that attends within itself only.
  BlockDiagonalMask.from_seqlens(q_seqlen, kv_seqlen) packs keys without padding (a padded batch is
  unpadded first); make_causal() makes each block top-left causal, make_causal_from_bottomright()
  bottom-right. BlockDiagonalPaddedKeysMask.from_seqlens(q_seqlen, kv_padding, kv_seqlen) keeps the
  keys in fixed slots of kv_padding (a KV cache), the first kv_seqlen[b] of slot b in use (right
  padding); its causal form BlockDiagonalCausalWithOffsetPaddedKeysMask is bottom-right from the last
  key in use: the decoding convention, where query i of example b sits at kv_seqlen[b] - T + i.
- A query row that no key may attend is all -inf: torch's softmax gives NaN. The reference scores every
  query against every key of the row, so in a packed row one NaN key (NaN + -inf = NaN) makes every
  query's row NaN, the other examples' too.
- The reference computes in float32 (it upcasts q, k, v); the kernels return q's dtype, so the
  adapters cast the output to it. It has no soft-capping and no sinks.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from refmask import conventions

from ._base import Native, NotExpressible, Path, check_expressible, document_lengths
from .torch_paths import to_numpy, to_torch


@contextlib.contextmanager
def _quiet_import():
    """Silence xformers' import-time warning that its C++/CUDA extensions do not load (no GPU build
    matches this torch): the biases and the reference are pure Python and need none of them."""
    logger = logging.getLogger("xformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


with _quiet_import():
    import xformers  # type: ignore[import-untyped]
    from xformers.attn_bias_utils import ref_attention_bmhk  # type: ignore[import-untyped]
    from xformers.ops.fmha import attn_bias  # type: ignore[import-untyped]

FRAMEWORK_VERSION = f"xformers {xformers.__version__}, torch {torch.__version__}"

CPU = torch.device("cpu")


# ----------------------------------------------------------------------------------------------
# layouts and the reference


def to_bmhk(x: np.ndarray) -> torch.Tensor:
    """refmask's (B, H, T, D) -> xformers' (B, T, H, D)."""
    return to_torch(x).permute(0, 2, 1, 3)


def packed(x: np.ndarray, used: list[slice] | None = None) -> torch.Tensor:
    """(B, H, N, D) -> (1, total, H, D): each example's tokens (its `used` slice) end to end."""
    rows = to_bmhk(x)
    parts = [rows[b] for b in range(rows.shape[0])] if used is None else [rows[b, u] for b, u in enumerate(used)]
    return torch.cat(parts)[None]


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias, case) -> torch.Tensor:
    """ref_attention_bmhk(q, k, v, bias materialised as (B, H, T, S)) in q's dtype. The bias is built
    in case.fill_dtype when the case names one (then cast up by the reference), else in float32."""
    b, t, h, _ = q.shape
    fill = torch.float32 if case.fill_dtype is None else getattr(torch, case.fill_dtype)
    tensor = bias.materialize((b, h, t, k.shape[1]), dtype=fill, device=CPU)
    return ref_attention_bmhk(q, k, v, attn_bias=tensor).to(q.dtype)


@dataclass(frozen=True)
class Stated:
    """An AttentionBias stating a case, and the layout it is for."""

    bias: Any
    packed: bool = False  # the batch end to end in one row, (1, B * T, H, D): the block-diagonal biases
    used: list[slice] | None = None  # each example's keys in that row (None: all S of them)


def run(case, stated: Stated) -> Native:
    """The reference on the case's q, k, v in the stated layout, the output back in (B, H, T, D)."""
    if not stated.packed:
        out = reference(to_bmhk(case.q), to_bmhk(case.k), to_bmhk(case.v), stated.bias, case)
        return Native(output=to_numpy(out.permute(0, 2, 1, 3)))
    q, k, v = packed(case.q), packed(case.k, stated.used), packed(case.v, stated.used)
    out = reference(q, k, v, stated.bias, case)
    b, h, t, _ = case.shape
    return Native(output=to_numpy(out.reshape(b, t, h, -1).permute(0, 2, 1, 3)))


def bias_path(state: Callable[[Any], Stated]) -> Callable[[Any], Native]:
    """The adapter fn(case) -> Native running the bias that state(case) builds (name and docstring kept)."""

    @functools.wraps(state)
    def fn(case) -> Native:
        return run(case, state(case))

    return fn


# ----------------------------------------------------------------------------------------------
# the biases on the batch as it is


def lower_triangular(case) -> Stated:
    """attn_bias.LowerTriangularMask(): causal, top-left."""
    check_expressible(case, parts={"causal"}, why="LowerTriangularMask states a top-left causal mask only")
    return Stated(attn_bias.LowerTriangularMask())


def lower_triangular_bottom_right(case) -> Stated:
    """attn_bias.LowerTriangularFromBottomRightMask(): causal, bottom-right."""
    _, _, t, s = case.shape
    aligns = ("bottom_right", "either") + (("top_left",) if t == s else ())
    check_expressible(case, parts={"causal"}, causal=aligns,
                      why="LowerTriangularFromBottomRightMask states a bottom-right causal mask only")
    return Stated(attn_bias.LowerTriangularFromBottomRightMask())


def local_window(window: tuple[int, int], s: int) -> tuple[int, int]:
    """The (window_left, window_right) with conventions.xformers_local_attention(...) == window."""
    for left, right in itertools.product(range(s), repeat=2):
        if conventions.xformers_local_attention(left, right) == window:
            return left, right
    raise NotExpressible(f"no LocalAttentionFromBottomRightMask keeps the window {window}")


def local_attention(case) -> Stated:
    """attn_bias.LocalAttentionFromBottomRightMask(window_left, window_right) (bottom-right, so T = S);
    a causal mask without a window is the window (S - 1, 0)."""
    check_expressible(case, parts={"window", "causal"}, square=True,
                      why="LocalAttentionFromBottomRightMask states a window (and a causal one), bottom-right")
    spec = case.spec
    if spec.window is None and spec.causal is None:
        raise NotExpressible("LocalAttentionFromBottomRightMask is a window: it cannot state an unmasked case")
    s = case.shape[-1]
    # Causal alone (T = S) is the window (S - 1, 0); top-left causal caps a window's look-ahead at 0.
    left, right = (s - 1, 0) if spec.window is None else spec.window
    window = (left, 0) if spec.causal is not None else (left, right)
    window_left, window_right = local_window(window, s)
    return Stated(attn_bias.LocalAttentionFromBottomRightMask(window_left, window_right))


def tensor_bias(case) -> Native:
    """A torch.Tensor attn_bias, (B, H, T, S): 0 where the case's mask keeps, -inf where it masks (the
    "zeros and negative infinities" of AttentionBias's docstring), built in case.fill_dtype if any, plus
    the case's score bias (ALiBi), which a tensor attn_bias is for."""
    fill = torch.float32 if case.fill_dtype is None else getattr(torch, case.fill_dtype)
    keep = torch.from_numpy(np.broadcast_to(case.mask, case.shape).copy())
    bias = torch.zeros(case.shape, dtype=fill).masked_fill(~keep, float("-inf"))
    if case.bias is not None:
        bias = bias + torch.from_numpy(case.bias)[None].to(fill)
    q, k, v = to_bmhk(case.q), to_bmhk(case.k), to_bmhk(case.v)
    out = ref_attention_bmhk(q, k, v, attn_bias=bias).to(q.dtype)
    return Native(output=to_numpy(out.permute(0, 2, 1, 3)))


# ----------------------------------------------------------------------------------------------
# the packed (block-diagonal) biases


def used_keys(case) -> list[slice]:
    """Each example's keys in use: its valid keys (padding) or the cache up to its last query (offset)."""
    spec = case.spec
    _, _, t, s = case.shape
    if spec.offset is not None:
        if max(spec.offset) + t > s:
            raise NotExpressible("a cache offset whose queries run past the S key slots")
        return [slice(0, o + t) for o in spec.offset]
    if spec.kv_lengths is not None:
        right = spec.side == "right"
        return [slice(0, n) if right else slice(s - n, s) for n in spec.kv_lengths]
    return [slice(0, s)] * case.shape[0]


def block_diagonal(case) -> Stated:
    """attn_bias.BlockDiagonalMask.from_seqlens(q_seqlen, kv_seqlen) on the packed batch (keys
    unpadded), .make_causal() (top-left in each block) or .make_causal_from_bottomright() (offsets)."""
    check_expressible(case, parts={"causal", "kv_lengths", "segments", "offset"},
                      why="a block-diagonal bias states packed sequences, causal or not; no windows, and "
                          "packing drops padded queries")
    spec = case.spec
    b, _, t, _ = case.shape
    if spec.segments is not None:
        lengths = document_lengths(case)
        bias = attn_bias.BlockDiagonalMask.from_seqlens(lengths, device=CPU)
        used = None
    else:
        if spec.causal is not None and spec.offset is None and spec.side == "left" \
                and spec.kv_lengths is not None:
            raise NotExpressible("make_causal() counts from a block's first key: with left padding that is "
                                 "not position 0")
        used = used_keys(case)
        bias = attn_bias.BlockDiagonalMask.from_seqlens([t] * b, [u.stop - u.start for u in used], device=CPU)
    if spec.offset is not None:
        bias = bias.make_causal_from_bottomright()
    elif spec.causal is not None:
        bias = bias.make_causal()
    return Stated(bias, packed=True, used=used)


def padded_keys(case) -> Stated:
    """attn_bias.BlockDiagonalPaddedKeysMask / BlockDiagonalCausalWithOffsetPaddedKeysMask
    .from_seqlens([T] * B, kv_padding=S, kv_seqlen): keys in their S slots, the first kv_seqlen used."""
    _, _, t, s = case.shape
    # A cache offset's causal mask is top-left on positions offset[b] + i: the bias's bottom-right one.
    aligns = ("bottom_right", "either") + (("top_left",) if t == s or case.spec.offset is not None else ())
    check_expressible(case, parts={"causal", "kv_lengths", "offset"}, causal=aligns, side="right",
                      why="padded-keys biases state right-padded keys, causal bottom-right from the last "
                          "key in use (a cache offset)")
    spec = case.spec
    b = case.shape[0]
    if spec.causal is not None and spec.offset is None and spec.kv_lengths is not None:
        raise NotExpressible("the causal padded-keys bias is bottom-right from each example's last key in "
                             "use, not top-left")
    kv_seqlen = [u.stop for u in used_keys(case)]  # right-aligned: slot b's first kv_seqlen[b] keys
    kind = attn_bias.BlockDiagonalPaddedKeysMask
    if spec.causal is not None or spec.offset is not None:
        kind = attn_bias.BlockDiagonalCausalWithOffsetPaddedKeysMask
    return Stated(kind.from_seqlens([t] * b, s, kv_seqlen, device=CPU), packed=True)


# Path.no_grads of xformers' rows: its reference is torch autograd over the materialised bias; the kernels,
# whose backward would be worth comparing, need a GPU.
XFORMERS_GRADS = "not taken: the CPU reference is plain torch autograd"

PATHS = [
    Path("xformers.tensor-bias", "xformers", "xformers reference, attn_bias = torch.Tensor", tensor_bias,
         "additive (B, H, T, S) tensor: 0 kept, -inf masked, plus any score bias; ref_attention_bmhk, BMHK layout",
         frozenset({"bias"}), no_grads=XFORMERS_GRADS),
    Path("xformers.LowerTriangularMask", "xformers", "LowerTriangularMask", bias_path(lower_triangular),
         "materialize() -> 0 / -inf, causal top-left; ref_attention_bmhk", no_grads=XFORMERS_GRADS),
    Path("xformers.LowerTriangularFromBottomRightMask", "xformers", "LowerTriangularFromBottomRightMask",
         bias_path(lower_triangular_bottom_right), "materialize() -> 0 / -inf, causal bottom-right",
         no_grads=XFORMERS_GRADS),
    Path("xformers.LocalAttentionFromBottomRightMask", "xformers", "LocalAttentionFromBottomRightMask",
         bias_path(local_attention), "window_left, window_right by conventions.xformers_local_attention; T = S",
         no_grads=XFORMERS_GRADS),
    Path("xformers.BlockDiagonalMask", "xformers", "BlockDiagonal(Causal)Mask.from_seqlens (packed)",
         bias_path(block_diagonal), "batch packed in one row, padded keys dropped; make_causal (top-left), "
         "make_causal_from_bottomright (offsets)", no_grads=XFORMERS_GRADS),
    Path("xformers.PaddedKeysMask", "xformers", "BlockDiagonal(CausalWithOffset)PaddedKeysMask.from_seqlens",
         bias_path(padded_keys), "queries packed, keys kept in S-slot blocks, kv_seqlen in use (right padding, "
         "cache offsets); causal bottom-right", no_grads=XFORMERS_GRADS),
]
