"""`refmask.torch.mask_mod`: FlexAttention mask_mods that agree exactly with refmask's masks.

    mask_mod.causal(q_len, kv_len=None, *, align="top_left", offset=0)      ~ causal_mask
    mask_mod.sliding_window(q_len, kv_len=None, *, window, align, offset)   ~ sliding_window_mask
    mask_mod.chunked(q_len, kv_len=None, *, chunk_size, align, offset)      ~ chunked_mask
      (each also with offset= a (B,) tensor, q_positions= / kv_positions=, as the constructors)
    mask_mod.padding(kv_valid, q_valid=None)                                ~ attention_padding_mask
    mask_mod.padding_lengths(lengths, max_len, *, side="right")
                                 ~ attention_padding_mask(padding_mask(lengths, max_len, side=side))
    mask_mod.segment(q_segment_ids, kv_segment_ids=None, *, pad_id=None)    ~ segment_mask
    mask_mod.prefix_lm(prefix_lengths, q_len, kv_len=None, *, align, offset, q_positions, kv_positions)
                                                                            ~ prefix_lm_mask
    mask_mod.and_(*mods), mask_mod.or_(*mods)  (also m1 & m2, m1 | m2)      ~ and_masks, or_masks
    mask_mod.varlen(cu_seqlens_q, cu_seqlens_k=None, *, causal, window)   ~ varlen_mask (packed, B = 1)
    mask_mod.from_mask(mask): any dense refmask mask (..., T, S), by lookup

Arguments are checked exactly as by the constructors (same errors). Data (lengths, ids, masks)
is kept as tensors on `device` (default: where it is) and indexed by b, q_idx, kv_idx.

Importing this module imports torch; it is reached as `refmask.torch.mask_mod`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from . import _arrays as arrays
from . import _validate as check
from .backends import torch as _tb
from .backends._torch_ops import TORCH as OPS

__all__ = [
    "MaskMod",
    "and_",
    "causal",
    "chunked",
    "from_mask",
    "or_",
    "padding",
    "padding_lengths",
    "prefix_lm",
    "segment",
    "sliding_window",
    "varlen",
]

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
        return _combine("&", torch.logical_and, (self, other))

    def __or__(self, other: MaskMod) -> MaskMod:
        return _combine("|", torch.logical_or, (self, other))

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


def _clamped(i: Index, n: int) -> Index:
    """Indices clamped into [0, n): kernels may evaluate a mask_mod on the padding of a last,
    partial block; those entries are discarded, but the lookup must stay in bounds."""
    return i.clamp(0, max(n - 1, 0))


# ----------------------------------------------------------------------------------------------
# positions


def _device(named: dict[str, Any], device: Any) -> Any:
    """`device`, else the one device of the named tensors (tensors on two devices are refused)."""
    found = OPS.device_of(named)
    return found if device is None else OPS.device(device)


def _aligned(q_len: object, kv_len: object, align: str, offset: object) -> tuple[int, int, int]:
    """T, S and the exact shift of query positions (any Python int: the constructors' reductions apply)."""
    t, s = check.q_kv_lengths(q_len, kv_len)
    return t, s, check.aligned_offset(align, t, s, offset)


def _positions(
    q_len: Any, kv_len: Any, align: Any, offset: Any, q_positions: Any, kv_positions: Any, device: Any
) -> tuple[arrays.PositionArgs, Callable[[Index, Index], Index], Callable[[Index, Index], Index], int | None]:
    """Position arrays as lookups: (args, query position (b, q_idx), key position (b, kv_idx), batch)."""
    named = {"offset": offset, "q_positions": q_positions, "kv_positions": kv_positions}
    p = arrays.position_args(OPS, q_len, kv_len, align, offset, q_positions, kv_positions, _device(named, device))
    assert p is not None
    t, s = p.q_len, p.kv_len
    batch = next((a.shape[0] for a in (p.offset, p.q_positions, p.kv_positions) if a is not None and a.ndim == 2), None)
    if p.offset is not None:
        off, shift = p.offset.to(torch.int64), p.shift
        batch = off.shape[0]

        def q_pos(b: Index, q_idx: Index) -> Index:
            return q_idx + shift + off[b]
    elif p.q_positions is None:
        def q_pos(b: Index, q_idx: Index) -> Index:
            return q_idx
    else:
        qp = p.q_positions.to(torch.int64)

        def q_pos(b: Index, q_idx: Index) -> Index:
            return qp[_clamped(q_idx, t)] if qp.ndim == 1 else qp[b, _clamped(q_idx, t)]

    if p.kv_positions is None:
        def kv_pos(b: Index, kv_idx: Index) -> Index:
            return kv_idx
    else:
        kp = p.kv_positions.to(torch.int64)

        def kv_pos(b: Index, kv_idx: Index) -> Index:
            return kp[_clamped(kv_idx, s)] if kp.ndim == 1 else kp[b, _clamped(kv_idx, s)]

    return p, q_pos, kv_pos, batch


def causal(
    q_len: int | None = None,
    kv_len: int | None = None,
    *,
    align: str = "top_left",
    offset: Any = 0,
    q_positions: Any = None,
    kv_positions: Any = None,
    device: Any = None,
) -> MaskMod:
    if arrays.uses_positions(offset, q_positions, kv_positions):
        p, q_pos, kv_pos, batch = _positions(q_len, kv_len, align, offset, q_positions, kv_positions, device)

        def causal_at(b: Index, h: Index, q_idx: Index, kv_idx: Index) -> Index:
            return kv_pos(b, kv_idx) <= q_pos(b, q_idx)

        return MaskMod(causal_at, f"causal({p.q_len}, {p.kv_len}, positions)", batch=batch, q_len=p.q_len,
                       kv_len=p.kv_len)
    t, s, shift = _aligned(q_len, kv_len, align, offset)
    d = check.diagonal(shift, t, s)

    def causal(b: Index, h: Index, q_idx: Index, kv_idx: Index) -> Index:
        return kv_idx - q_idx <= d

    return MaskMod(causal, f"causal({t}, {s}, shift={shift})", q_len=t, kv_len=s)


def sliding_window(
    q_len: int | None = None,
    kv_len: int | None = None,
    *,
    window: int | tuple[int | None, int | None],
    align: str = "top_left",
    offset: Any = 0,
    q_positions: Any = None,
    kv_positions: Any = None,
    device: Any = None,
) -> MaskMod:
    left, right = check.window(window)
    if arrays.uses_positions(offset, q_positions, kv_positions):
        p, q_pos, kv_pos, batch = _positions(q_len, kv_len, align, offset, q_positions, kv_positions, device)
        lo, hi = check.position_window((left, right))

        def window_at(b: Index, h: Index, q_idx: Index, kv_idx: Index) -> Index:
            diff = kv_pos(b, kv_idx) - q_pos(b, q_idx)
            keep = torch.ones_like(diff, dtype=torch.bool)
            if lo is not None:
                keep = keep & (diff >= -lo)
            if hi is not None:
                keep = keep & (diff <= hi)
            return keep

        return MaskMod(window_at, f"sliding_window({p.q_len}, {p.kv_len}, window=({left}, {right}), positions)",
                       batch=batch, q_len=p.q_len, kv_len=p.kv_len)
    t, s, shift = _aligned(q_len, kv_len, align, offset)
    lo_d, hi_d = check.window_diagonals(shift, (left, right), t, s)

    def sliding_window(b: Index, h: Index, q_idx: Index, kv_idx: Index) -> Index:
        diff = kv_idx - q_idx
        return (diff >= lo_d) & (diff <= hi_d)

    return MaskMod(sliding_window, f"sliding_window({t}, {s}, window=({left}, {right}), shift={shift})",
                   q_len=t, kv_len=s)


def chunked(
    q_len: int | None = None,
    kv_len: int | None = None,
    *,
    chunk_size: int,
    align: str = "top_left",
    offset: Any = 0,
    q_positions: Any = None,
    kv_positions: Any = None,
    device: Any = None,
) -> MaskMod:
    size = check.integer("chunk_size", chunk_size, minimum=1)
    if arrays.uses_positions(offset, q_positions, kv_positions):
        p, q_pos, kv_pos, batch = _positions(q_len, kv_len, align, offset, q_positions, kv_positions, device)
        cp = check.position_chunk(size)

        def chunked_at(b: Index, h: Index, q_idx: Index, kv_idx: Index) -> Index:
            return torch.div(q_pos(b, q_idx), cp, rounding_mode="floor") == torch.div(
                kv_pos(b, kv_idx), cp, rounding_mode="floor"
            )

        return MaskMod(chunked_at, f"chunked({p.q_len}, {p.kv_len}, chunk_size={size}, positions)", batch=batch,
                       q_len=p.q_len, kv_len=p.kv_len)
    t, s, shift = _aligned(q_len, kv_len, align, offset)
    c, d = check.chunks(shift, size, t, s)

    def chunked(b: Index, h: Index, q_idx: Index, kv_idx: Index) -> Index:
        return torch.div(q_idx + d, c, rounding_mode="floor") == torch.div(kv_idx, c, rounding_mode="floor")

    return MaskMod(chunked, f"chunked({t}, {s}, chunk_size={chunk_size}, shift={shift})", q_len=t, kv_len=s)


# ----------------------------------------------------------------------------------------------
# data


def padding(kv_valid: Any, q_valid: Any = None, *, device: Any = None) -> MaskMod:
    # attention_padding_mask's checks, without building the dense mask
    device = _device({"kv_valid": kv_valid, "q_valid": q_valid}, device)
    kv = arrays.bool_mask(OPS, "kv_valid", kv_valid, device)
    check.ndim("kv_valid", tuple(kv.shape), 2, "(B, S)")
    b_n, s = kv.shape
    if q_valid is None:

        def padding(b: Index, h: Index, q_idx: Index, kv_idx: Index) -> Index:
            return kv[b, _clamped(kv_idx, s)]

        return MaskMod(padding, f"padding(B={b_n}, S={s})", batch=b_n, kv_len=s)
    qv = arrays.bool_mask(OPS, "q_valid", q_valid, device)
    check.ndim("q_valid", tuple(qv.shape), 2, "(B, T)")
    check.same_batch("q_valid", tuple(qv.shape), "kv_valid", tuple(kv.shape))
    t = qv.shape[1]

    def padding_q_kv(b: Index, h: Index, q_idx: Index, kv_idx: Index) -> Index:
        return qv[b, _clamped(q_idx, t)] & kv[b, _clamped(kv_idx, s)]

    return MaskMod(padding_q_kv, f"padding(B={b_n}, T={t}, S={s})", batch=b_n, q_len=t, kv_len=s)


def padding_lengths(lengths: Any, max_len: int, *, side: str = "right", device: Any = None) -> MaskMod:
    # padding_mask's checks, without building the dense mask; lengths must be (B,)
    s = check.integer("max_len", max_len, minimum=0)
    check.choice("side", side, check.SIDES)
    n = _tb._lengths("lengths", arrays.integers(OPS, "lengths", lengths), s)
    check.ndim("lengths", tuple(n.shape), 1, "(B,)")
    n = OPS.asarray(n, device)
    if side == "right":

        def padding_right(b: Index, h: Index, q_idx: Index, kv_idx: Index) -> Index:
            return kv_idx < n[b]

        fn = padding_right
    else:
        start = s - n

        def padding_left(b: Index, h: Index, q_idx: Index, kv_idx: Index) -> Index:
            return kv_idx >= start[b]

        fn = padding_left
    return MaskMod(fn, f"padding_lengths(B={n.shape[0]}, max_len={s}, side={side})", batch=n.shape[0], kv_len=s)


def segment(
    q_segment_ids: Any, kv_segment_ids: Any = None, *, pad_id: int | None = None, device: Any = None
) -> MaskMod:
    # segment_mask's checks, without building the dense (B, 1, T, S) mask
    device = _device({"q_segment_ids": q_segment_ids, "kv_segment_ids": kv_segment_ids}, device)
    q_seg = arrays.integers(OPS, "q_segment_ids", q_segment_ids, device)
    kv_seg = q_seg if kv_segment_ids is None else arrays.integers(OPS, "kv_segment_ids", kv_segment_ids, device)
    check.ndim("q_segment_ids", tuple(q_seg.shape), 2, "(B, T)")
    check.ndim("kv_segment_ids", tuple(kv_seg.shape), 2, "(B, S)")
    check.same_batch("q_segment_ids", tuple(q_seg.shape), "kv_segment_ids", tuple(kv_seg.shape))
    b_n, t = q_seg.shape
    s = kv_seg.shape[1]
    # Compared in the ids' common integer dtype, as segment_mask does (refused where none holds both).
    common = getattr(torch, check.common_integer_dtype(
        ("q_segment_ids", "kv_segment_ids"), (OPS.dtype_name(q_seg), OPS.dtype_name(kv_seg))
    ))
    q_seg, kv_seg = q_seg.to(common), kv_seg.to(common)
    # A pad_id that no id of the q side can equal matches nothing (segment_mask's rule): no pad test.
    pad = None if pad_id is None else check.pad_id(pad_id, OPS.dtype_name(q_seg))
    if pad is None:

        def segment(b: Index, h: Index, q_idx: Index, kv_idx: Index) -> Index:
            return q_seg[b, _clamped(q_idx, t)] == kv_seg[b, _clamped(kv_idx, s)]

        fn = segment
    else:

        def segment_pad(b: Index, h: Index, q_idx: Index, kv_idx: Index) -> Index:
            qs = q_seg[b, _clamped(q_idx, t)]
            return (qs == kv_seg[b, _clamped(kv_idx, s)]) & (qs != pad)

        fn = segment_pad
    return MaskMod(fn, f"segment(B={b_n}, T={t}, S={s}, pad_id={pad_id})", batch=b_n, q_len=t, kv_len=s)


def prefix_lm(
    prefix_lengths: Any,
    q_len: int | None = None,
    kv_len: int | None = None,
    *,
    align: str = "top_left",
    offset: Any = 0,
    q_positions: Any = None,
    kv_positions: Any = None,
    device: Any = None,
) -> MaskMod:
    if arrays.uses_positions(offset, q_positions, kv_positions):
        p, q_pos, kv_pos, batch = _positions(q_len, kv_len, align, offset, q_positions, kv_positions, device)
        t, s = p.q_len, p.kv_len
    else:
        t, s = check.q_kv_lengths(q_len, kv_len)
        shift = check.diagonal(check.aligned_offset(align, t, s, offset), t, s)

        def q_pos(b: Index, q_idx: Index) -> Index:
            return q_idx + shift

        def kv_pos(b: Index, kv_idx: Index) -> Index:
            return kv_idx

        batch = None
    prefix = arrays.integers(OPS, "prefix_lengths", prefix_lengths)
    check.ndim("prefix_lengths", tuple(prefix.shape), 1, "(B,)")
    prefix = OPS.asarray(_tb._lengths("prefix_lengths", prefix, s), device)
    if batch is not None:
        check.per_example_batch("prefix_lengths", prefix.shape[0], ((batch, t, s),))

    def prefix_lm(b: Index, h: Index, q_idx: Index, kv_idx: Index) -> Index:
        key = kv_pos(b, kv_idx)
        return (key < prefix[b]) | (key <= q_pos(b, q_idx))

    return MaskMod(prefix_lm, f"prefix_lm(B={prefix.shape[0]}, {t}, {s})", batch=prefix.shape[0], q_len=t, kv_len=s)


def varlen(
    cu_seqlens_q: Any,
    cu_seqlens_k: Any = None,
    *,
    causal: bool = False,
    window: int | tuple[int | None, int | None] | None = None,
    total_q: int | None = None,
    total_k: int | None = None,
    device: Any = None,
) -> MaskMod:
    """The packed (document) mask_mod of varlen_mask: flash-attn's varlen masks over one packed batch (B = 1)."""
    device = _device({"cu_seqlens_q": cu_seqlens_q, "cu_seqlens_k": cu_seqlens_k}, device)
    cu_q, cu_k, t, s, lo, hi = arrays.varlen_call(
        OPS, cu_seqlens_q, cu_seqlens_k, causal, window, total_q, total_k, device
    )
    seg_q = _tb.segment_ids_from_cu_seqlens(cu_q, t).to(torch.int64)
    seg_k = _tb.segment_ids_from_cu_seqlens(cu_k, s).to(torch.int64)
    # Each token's distance from its sequence's end, in queries or keys: bottom-right alignment compares them.
    end_q, end_k = cu_q.to(torch.int64)[1:], cu_k.to(torch.int64)[1:]
    from_end_q = torch.arange(t, device=seg_q.device) - end_q[seg_q.clamp(min=0)] if t else seg_q
    from_end_k = torch.arange(s, device=seg_k.device) - end_k[seg_k.clamp(min=0)] if s else seg_k

    def varlen(b: Index, h: Index, q_idx: Index, kv_idx: Index) -> Index:
        qi, ki = _clamped(q_idx, t), _clamped(kv_idx, s)
        d = from_end_k[ki] - from_end_q[qi]
        return (seg_q[qi] == seg_k[ki]) & (seg_q[qi] >= 0) & (d >= lo) & (d <= hi)

    return MaskMod(varlen, f"varlen(B={cu_q.shape[0] - 1}, {t}, {s}, causal={causal}, window={window})",
                   q_len=t, kv_len=s)


def from_mask(mask: Any, *, device: Any = None) -> MaskMod:
    """A mask_mod that looks entries up in a dense refmask mask broadcastable to (B, H, T, S)."""
    m = arrays.bool_mask(OPS, "mask", mask, device)
    if m.ndim > 4:
        raise ValueError(f"mask must have at most 4 dimensions (B, H, T, S); got shape {tuple(m.shape)}")
    m = m.reshape((1,) * (4 - m.ndim) + tuple(m.shape))
    sizes = tuple(m.shape)

    def pick(i: Index, n: int) -> Index | int:
        return 0 if n == 1 else _clamped(i, n)

    def dense(b: Index, h: Index, q_idx: Index, kv_idx: Index) -> Index:
        return m[pick(b, sizes[0]), pick(h, sizes[1]), pick(q_idx, sizes[2]), pick(kv_idx, sizes[3])]

    return MaskMod(
        dense,
        f"from_mask{sizes}",
        batch=sizes[0] if sizes[0] != 1 else None,
        q_len=sizes[2] if sizes[2] != 1 else None,
        kv_len=sizes[3] if sizes[3] != 1 else None,
    )


# ----------------------------------------------------------------------------------------------
# combinations


def _agree(name: str, values: list[int | None]) -> int | None:
    known = {v for v in values if v is not None}
    if len(known) > 1:
        raise ValueError(f"mask_mods built for different {name}s ({sorted(known)}) cannot be combined")
    return known.pop() if known else None


def _combine(word: str, op: Callable[[Index, Index], Index], present: tuple[Any, ...]) -> MaskMod:
    """The mask_mods `present` (at least one, none None) joined by `op`."""
    for m in present:
        if not callable(m):
            raise TypeError(f"mask_mods must be callables (b, h, q_idx, kv_idx) -> bool; got {type(m).__name__}")
    if len(present) == 1:
        return present[0] if isinstance(present[0], MaskMod) else MaskMod(present[0], repr(present[0]))

    def combined(b: Index, h: Index, q_idx: Index, kv_idx: Index) -> Index:
        out = present[0](b, h, q_idx, kv_idx)
        for m in present[1:]:
            out = op(out, m(b, h, q_idx, kv_idx))
        return out

    def size(attr: str) -> int | None:
        return _agree(attr, [getattr(m, attr, None) for m in present])

    name = f" {word} ".join(getattr(m, "name", repr(m)) for m in present)
    return MaskMod(combined, f"({name})", batch=size("batch"), q_len=size("q_len"), kv_len=size("kv_len"))


def and_(*mods: Any) -> MaskMod | None:
    """Keep where every mask_mod keeps; None (keep everything) is skipped; nothing left gives None."""
    present = tuple(m for m in mods if m is not None)
    return _combine("&", torch.logical_and, present) if present else None


def _keep_nothing(b: Index, h: Index, q_idx: Index, kv_idx: Index) -> Index:
    return torch.zeros_like(q_idx - kv_idx, dtype=torch.bool)


def or_(*mods: Any) -> MaskMod | None:
    """Keep where any mask_mod keeps, as or_masks: a None argument (keep everything) makes the result None;
    no argument at all keeps nothing (as flex_attention's or_masks())."""
    present = tuple(m for m in mods if m is not None)
    if len(present) < len(mods):
        return None
    return _combine("|", torch.logical_or, present) if present else MaskMod(_keep_nothing, "nothing")
