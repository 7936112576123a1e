"""refmask.torch: refmask's masks and masked softmax where PyTorch code expects them.

- `scaled_dot_product_attention`: a drop-in for `torch.nn.functional.scaled_dot_product_attention`
  (same signature, same mask conventions) whose fully-masked rows follow `fully_masked=` and whose
  half-precision scores are accumulated in float32;
- `mask_mod`: FlexAttention `mask_mod` callables `(b, h, q_idx, kv_idx) -> bool` that agree exactly
  with refmask's mask constructors (causal, sliding window, chunked, padding, segments, prefix-LM)
  and their and/or combinations.

Importing this module imports torch. Every other function is reached through refmask's public API
(`refmask.masked_softmax(scores, mask)` picks the torch backend for torch tensors).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

import refmask

from . import _arrays as arrays
from . import _dtypes
from . import _validate as check
from .backends import torch as _tb
from .backends._torch_ops import TORCH as OPS

__all__ = ["MaskMod", "mask_mod", "scaled_dot_product_attention"]


# ----------------------------------------------------------------------------------------------
# SDPA drop-in


def scaled_dot_product_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    *,
    fully_masked: str = "zero",
) -> torch.Tensor:
    """`torch.nn.functional.scaled_dot_product_attention` with refmask's masked softmax.

    Same signature and conventions as SDPA: query (N, ..., H, L, E), key (N, ..., H_kv, S, E),
    value (N, ..., H_kv, S, Ev); attn_mask broadcastable to (N, ..., H, L, S), either bool
    (True = attend) or float (added to the scores); is_causal ands a top-left causal mask (with
    attn_mask too, as SDPA); scale defaults to 1/sqrt(E); enable_gqa lets H be a multiple of H_kv
    (query head h reads key/value head h // (H // H_kv)); dropout_p > 0 drops attention weights
    with probability dropout_p and scales the rest by 1 / (1 - dropout_p), always (as SDPA, which
    has no training flag); the random stream is torch's, not SDPA's kernels'.

    Where they differ: a float attn_mask entry <= finfo(attn_mask.dtype).min (including -inf, the
    fills of refmask.to_additive, Hugging Face and torch) masks its key, so a row whose keys are all
    masked follows `fully_masked` ("zero" as SDPA since torch 2.5, "uniform" or "nan") instead of
    depending on how the fills stack; every other float value is an additive bias. float16 and
    bfloat16 scores, softmax and the product with value run in float32 and are rounded once.
    On rows that are not fully masked the result equals SDPA's up to rounding.
    """
    q, k, v = arrays.attention_inputs(OPS, {"query": query, "key": key, "value": value}, {"attn_mask": attn_mask})
    check.choice("fully_masked", fully_masked, check.FULLY_MASKED_POLICIES)
    shape = check.attention_shapes(tuple(q.shape), tuple(k.shape), tuple(v.shape))
    if not enable_gqa and q.ndim >= 3 and k.shape[-3] not in (q.shape[-3], 1):
        raise ValueError(
            f"query has {q.shape[-3]} heads and key/value {k.shape[-3]}: pass enable_gqa=True for "
            "grouped-query attention (as torch.nn.functional.scaled_dot_product_attention)"
        )
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, int | float) or not 0.0 <= dropout_p <= 1.0:
        raise ValueError(f"dropout_p must be a number in [0, 1]; got {dropout_p!r}")
    keep, bias = None, None
    if attn_mask is not None:
        attn_mask = arrays.array(OPS, "attn_mask", attn_mask, q.device)
        check.broadcasts_to("attn_mask", tuple(attn_mask.shape), shape)
        dtype = OPS.dtype_name(attn_mask)
        if dtype == "bool":
            keep = attn_mask
        elif _dtypes.is_floating(dtype):
            bias = attn_mask
            # NaN stays kept (and poisons its row, as in SDPA); -inf and finfo.min mask.
            keep = ~(attn_mask <= _dtypes.lowest(dtype))
        else:
            raise TypeError(f"attn_mask must be bool (True = attend) or a float additive mask; got dtype {dtype}")
    options = {"bias": bias, "scale": scale, "fully_masked": fully_masked, "backend": "torch"}
    if dropout_p == 0:
        return refmask.attention(q, k, v, keep, is_causal=bool(is_causal), **options)
    if is_causal:
        keep = refmask.and_masks(keep, refmask.causal_mask(shape[-2], shape[-1], device=q.device))
    weights = refmask.attention_weights(q, k, keep, **options)
    dropped = torch.nn.functional.dropout(weights, float(dropout_p), training=True)
    if v.ndim >= 3 and v.shape[-3] != q.shape[-3]:
        v = v.repeat_interleave(q.shape[-3] // v.shape[-3], dim=-3)  # grouped-query: head h reads h // G
    return torch.matmul(dropped.to(_compute(q.dtype)), v.to(_compute(q.dtype))).to(q.dtype)


def _compute(dtype: torch.dtype) -> torch.dtype:
    return getattr(torch, _dtypes.compute_dtype(_dtypes.name_of(dtype)))


# ----------------------------------------------------------------------------------------------
# FlexAttention mask_mods


Index = torch.Tensor


class MaskMod:
    """A FlexAttention `mask_mod`: called as fn(b, h, q_idx, kv_idx) it returns True where the query
    may attend to the key, exactly as the refmask mask it was built from.

    It also knows the sizes it was built for (batch, q_len, kv_len; None where any size works),
    combines with `&` and `|`, and builds its BlockMask with `.block_mask(...)`.
    """

    def __init__(
        self,
        fn: Callable[[Index, Index, Index, Index], Index],
        name: str,
        *,
        batch: int | None = None,
        q_len: int | None = None,
        kv_len: int | None = None,
    ) -> None:
        self.fn = fn
        self.name = name
        self.batch = batch
        self.q_len = q_len
        self.kv_len = kv_len
        self.__name__ = name

    def __call__(self, b: Index, h: Index, q_idx: Index, kv_idx: Index) -> Index:
        return self.fn(b, h, q_idx, kv_idx)

    def __and__(self, other: MaskMod) -> MaskMod:
        return mask_mod.and_(self, other)

    def __or__(self, other: MaskMod) -> MaskMod:
        return mask_mod.or_(self, other)

    def __repr__(self) -> str:
        return f"MaskMod({self.name})"

    def block_mask(
        self,
        B: int | None = None,
        H: int | None = None,
        Q_LEN: int | None = None,
        KV_LEN: int | None = None,
        *,
        device: Any = "cpu",
        BLOCK_SIZE: int | tuple[int, int] = 128,
    ) -> Any:
        """`create_block_mask(self, B, H, Q_LEN, KV_LEN, device=...)`, sizes defaulting to the ones
        this mask_mod was built for (B and H default to None: broadcast over batch and heads when
        the mask does not depend on them)."""
        from torch.nn.attention.flex_attention import create_block_mask

        q_len = self.q_len if Q_LEN is None else Q_LEN
        kv_len = self.kv_len if KV_LEN is None else KV_LEN
        if q_len is None or kv_len is None:
            raise ValueError(f"{self!r} does not know its lengths: pass Q_LEN= and KV_LEN=")
        batch = self.batch if B is None else B
        return create_block_mask(self, batch, H, q_len, kv_len, device=device, BLOCK_SIZE=BLOCK_SIZE)


def _agree(name: str, values: list[int | None]) -> int | None:
    known = {v for v in values if v is not None}
    if len(known) > 1:
        raise ValueError(f"mask_mods built for different {name}s ({sorted(known)}) cannot be combined")
    return known.pop() if known else None


def _clamped(i: Index, n: int) -> Index:
    """Indices clamped into [0, n): kernels may evaluate a mask_mod on the padding of a last,
    partial block; those entries are discarded, but the lookup must stay in bounds."""
    return i.clamp(0, max(n - 1, 0))


class _MaskModFactory:
    """`refmask.torch.mask_mod`: FlexAttention mask_mods that agree exactly with refmask's masks.

        mask_mod.causal(q_len, kv_len=None, *, align="top_left", offset=0)      ~ causal_mask
        mask_mod.sliding_window(q_len, kv_len=None, *, window, align, offset)   ~ sliding_window_mask
        mask_mod.chunked(q_len, kv_len=None, *, chunk_size, align, offset)      ~ chunked_mask
        mask_mod.padding(kv_valid, q_valid=None)                                ~ attention_padding_mask
        mask_mod.padding_lengths(lengths, max_len, *, side="right")
                                     ~ attention_padding_mask(padding_mask(lengths, max_len, side=side))
        mask_mod.segment(q_segment_ids, kv_segment_ids=None, *, pad_id=None)    ~ segment_mask
        mask_mod.prefix_lm(prefix_lengths, q_len, kv_len=None, *, align)        ~ prefix_lm_mask
        mask_mod.and_(*mods), mask_mod.or_(*mods)  (also m1 & m2, m1 | m2)      ~ and_masks, or_masks
        mask_mod(mask) == mask_mod.from_mask(mask): any dense refmask mask (..., T, S), by lookup

    Arguments are checked exactly as by the constructors (same errors). Data (lengths, ids, masks)
    is kept as tensors on `device` (default: where it is) and indexed by b, q_idx, kv_idx.
    """

    # positions -------------------------------------------------------------------------------

    @staticmethod
    def _aligned(q_len: int, kv_len: int | None, align: str, offset: int) -> tuple[int, int, int]:
        t, s = check.q_kv_lengths(q_len, kv_len)
        shift = check.align_shift(align, t, s) + check.integer("offset", offset)
        return t, s, shift

    def causal(self, q_len: int, kv_len: int | None = None, *, align: str = "top_left", offset: int = 0) -> MaskMod:
        t, s, shift = self._aligned(q_len, kv_len, align, offset)

        def causal(b, h, q_idx, kv_idx):
            return kv_idx <= q_idx + shift

        return MaskMod(causal, f"causal({t}, {s}, shift={shift})", q_len=t, kv_len=s)

    def sliding_window(
        self,
        q_len: int,
        kv_len: int | None = None,
        *,
        window: int | tuple[int, int],
        align: str = "top_left",
        offset: int = 0,
    ) -> MaskMod:
        t, s, shift = self._aligned(q_len, kv_len, align, offset)
        left, right = check.window(window)

        def sliding_window(b, h, q_idx, kv_idx):
            i = q_idx + shift
            return (kv_idx >= i - left) & (kv_idx <= i + right)

        return MaskMod(sliding_window, f"sliding_window({t}, {s}, window=({left}, {right}), shift={shift})",
                       q_len=t, kv_len=s)

    def chunked(
        self, q_len: int, kv_len: int | None = None, *, chunk_size: int, align: str = "top_left", offset: int = 0
    ) -> MaskMod:
        t, s, shift = self._aligned(q_len, kv_len, align, offset)
        c = check.integer("chunk_size", chunk_size, minimum=1)

        def chunked(b, h, q_idx, kv_idx):
            return torch.div(q_idx + shift, c, rounding_mode="floor") == torch.div(kv_idx, c, rounding_mode="floor")

        return MaskMod(chunked, f"chunked({t}, {s}, chunk_size={c}, shift={shift})", q_len=t, kv_len=s)

    # data --------------------------------------------------------------------------------------

    def padding(self, kv_valid: Any, q_valid: Any = None, *, device: Any = None) -> MaskMod:
        # attention_padding_mask's checks, without building the dense mask
        device = device if device is not None else _tb._device_of(kv_valid, q_valid)
        kv = _tb._bool_mask("kv_valid", kv_valid, device)
        check.ndim("kv_valid", tuple(kv.shape), 2, "(B, S)")
        b_n, s = kv.shape
        if q_valid is None:

            def padding(b, h, q_idx, kv_idx):
                return kv[b, _clamped(kv_idx, s)]

            return MaskMod(padding, f"padding(B={b_n}, S={s})", batch=b_n, kv_len=s)
        qv = _tb._bool_mask("q_valid", q_valid, device)
        check.ndim("q_valid", tuple(qv.shape), 2, "(B, T)")
        check.same_batch("q_valid", tuple(qv.shape), "kv_valid", tuple(kv.shape))
        t = qv.shape[1]

        def padding_q_kv(b, h, q_idx, kv_idx):
            return qv[b, _clamped(q_idx, t)] & kv[b, _clamped(kv_idx, s)]

        return MaskMod(padding_q_kv, f"padding(B={b_n}, T={t}, S={s})", batch=b_n, q_len=t, kv_len=s)

    def padding_lengths(self, lengths: Any, max_len: int, *, side: str = "right", device: Any = None) -> MaskMod:
        # padding_mask's checks, without building the dense mask; lengths must be (B,)
        s = check.integer("max_len", max_len, minimum=0)
        check.choice("side", side, check.SIDES)
        n = _tb._integers("lengths", lengths)
        _tb._check_lengths("lengths", n, s)
        check.ndim("lengths", tuple(n.shape), 1, "(B,)")
        n = _tb._tensor(n, device)
        if side == "right":

            def padding_right(b, h, q_idx, kv_idx):
                return kv_idx < n[b]

            fn = padding_right
        else:
            start = s - n

            def padding_left(b, h, q_idx, kv_idx):
                return kv_idx >= start[b]

            fn = padding_left
        return MaskMod(fn, f"padding_lengths(B={n.shape[0]}, max_len={s}, side={side})", batch=n.shape[0], kv_len=s)

    def segment(
        self, q_segment_ids: Any, kv_segment_ids: Any = None, *, pad_id: int | None = None, device: Any = None
    ) -> MaskMod:
        # segment_mask's checks, without building the dense (B, 1, T, S) mask
        device = device if device is not None else _tb._device_of(q_segment_ids, kv_segment_ids)
        q_seg = _tb._integers("q_segment_ids", q_segment_ids, device)
        kv_seg = q_seg if kv_segment_ids is None else _tb._integers("kv_segment_ids", kv_segment_ids, device)
        check.ndim("q_segment_ids", tuple(q_seg.shape), 2, "(B, T)")
        check.ndim("kv_segment_ids", tuple(kv_seg.shape), 2, "(B, S)")
        check.same_batch("q_segment_ids", tuple(q_seg.shape), "kv_segment_ids", tuple(kv_seg.shape))
        b_n, t = q_seg.shape
        s = kv_seg.shape[1]
        if pad_id is None:

            def segment(b, h, q_idx, kv_idx):
                return q_seg[b, _clamped(q_idx, t)] == kv_seg[b, _clamped(kv_idx, s)]

            fn = segment
        else:
            pad = check.integer("pad_id", pad_id)

            def segment_pad(b, h, q_idx, kv_idx):
                qs = q_seg[b, _clamped(q_idx, t)]
                return (qs == kv_seg[b, _clamped(kv_idx, s)]) & (qs != pad)

            fn = segment_pad
        return MaskMod(fn, f"segment(B={b_n}, T={t}, S={s}, pad_id={pad_id})", batch=b_n, q_len=t, kv_len=s)

    def prefix_lm(
        self, prefix_lengths: Any, q_len: int, kv_len: int | None = None, *, align: str = "top_left",
        device: Any = None,
    ) -> MaskMod:
        t, s = check.q_kv_lengths(q_len, kv_len)
        prefix = _tb._integers("prefix_lengths", prefix_lengths)
        check.ndim("prefix_lengths", tuple(prefix.shape), 1, "(B,)")
        _tb._check_lengths("prefix_lengths", prefix, s)
        prefix = _tb._tensor(prefix, device)
        shift = check.align_shift(align, t, s)

        def prefix_lm(b, h, q_idx, kv_idx):
            return (kv_idx < prefix[b]) | (kv_idx <= q_idx + shift)

        return MaskMod(prefix_lm, f"prefix_lm(B={prefix.shape[0]}, {t}, {s}, shift={shift})",
                       batch=prefix.shape[0], q_len=t, kv_len=s)

    def from_mask(self, mask: Any, *, device: Any = None) -> MaskMod:
        """A mask_mod that looks entries up in a dense refmask mask broadcastable to (B, H, T, S)."""
        m = _tb._bool_mask("mask", mask, device)
        if m.ndim > 4:
            raise ValueError(f"mask must have at most 4 dimensions (B, H, T, S); got shape {tuple(m.shape)}")
        m = m.reshape((1,) * (4 - m.ndim) + tuple(m.shape))
        sizes = tuple(m.shape)

        def pick(i: Index, n: int) -> Index | int:
            return 0 if n == 1 else _clamped(i, n)

        def dense(b, h, q_idx, kv_idx):
            return m[pick(b, sizes[0]), pick(h, sizes[1]), pick(q_idx, sizes[2]), pick(kv_idx, sizes[3])]

        return MaskMod(
            dense,
            f"from_mask{sizes}",
            batch=sizes[0] if sizes[0] != 1 else None,
            q_len=sizes[2] if sizes[2] != 1 else None,
            kv_len=sizes[3] if sizes[3] != 1 else None,
        )

    __call__ = from_mask

    # combinations ------------------------------------------------------------------------------

    def _combine(self, word: str, op: Callable[[Index, Index], Index], mods: tuple[Any, ...]) -> MaskMod | None:
        present = [m for m in mods if m is not None]
        for m in present:
            if not callable(m):
                raise TypeError(f"mask_mods must be callables (b, h, q_idx, kv_idx) -> bool; got {type(m).__name__}")
        if not present:
            return None
        if len(present) == 1:
            return present[0] if isinstance(present[0], MaskMod) else MaskMod(present[0], repr(present[0]))

        def combined(b, h, q_idx, kv_idx):
            out = present[0](b, h, q_idx, kv_idx)
            for m in present[1:]:
                out = op(out, m(b, h, q_idx, kv_idx))
            return out

        def size(attr: str) -> int | None:
            return _agree(attr, [getattr(m, attr, None) for m in present])

        name = f" {word} ".join(getattr(m, "name", repr(m)) for m in present)
        return MaskMod(combined, f"({name})", batch=size("batch"), q_len=size("q_len"), kv_len=size("kv_len"))

    def and_(self, *mods: Any) -> MaskMod | None:
        """Keep where every mask_mod keeps; None arguments are skipped; all None gives None."""
        return self._combine("&", torch.logical_and, mods)

    def or_(self, *mods: Any) -> MaskMod | None:
        """Keep where any mask_mod keeps; None arguments are skipped; all None gives None."""
        return self._combine("|", torch.logical_or, mods)

    def __repr__(self) -> str:
        return "refmask.torch.mask_mod"


mask_mod = _MaskModFactory()
mask_mod.__doc__ = _MaskModFactory.__doc__
