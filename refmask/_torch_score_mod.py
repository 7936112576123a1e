"""`refmask.torch.score_mod`: FlexAttention score_mods that compute refmask's softcap and ALiBi.

    score_mod.softcap(value)                                            ~ attention(..., softcap=value)
    score_mod.alibi(num_heads, q_len, kv_len=None, *, align, offset)    ~ attention(..., bias=alibi_bias(...))
    score_mod.chain(*mods): each applied to the previous one's result, in order

flex_attention hands a score_mod the score after its scale, scale * q @ k^T, which is what attention's
softcap caps; attention adds its bias after the cap, so softcap with ALiBi is
chain(softcap(c), alibi(H, T, S)). Arguments are checked as by attention and alibi_bias (same errors).

Importing this module imports torch; it is reached as `refmask.torch.score_mod`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from . import _arrays as arrays
from . import _validate as check
from .backends import torch as _tb
from .backends._torch_ops import TORCH as OPS

__all__ = ["ScoreMod", "alibi", "chain", "softcap"]

Index = torch.Tensor


class ScoreMod:
    """A FlexAttention `score_mod`: called as fn(score, b, h, q_idx, kv_idx) it returns the modified score."""

    def __init__(self, fn: Callable[[torch.Tensor, Index, Index, Index, Index], torch.Tensor], name: str) -> None:
        self.fn = fn
        self.name = name
        self.__name__ = name

    def __call__(self, score: torch.Tensor, b: Index, h: Index, q_idx: Index, kv_idx: Index) -> torch.Tensor:
        return self.fn(score, b, h, q_idx, kv_idx)

    def __repr__(self) -> str:
        return f"ScoreMod({self.name})"


def softcap(value: float) -> ScoreMod:
    """score -> value * tanh(score / value), as attention(..., softcap=value); value a finite number > 0."""
    cap = arrays.softcap_value(value)
    if cap is None:
        raise TypeError("softcap must be a real number > 0; got None (for no cap, pass no score_mod)")

    def softcap(score: torch.Tensor, b: Index, h: Index, q_idx: Index, kv_idx: Index) -> torch.Tensor:
        return torch.tanh(score / cap) * cap

    return ScoreMod(softcap, f"softcap({cap!r})")


def alibi(
    num_heads: int,
    q_len: int,
    kv_len: int | None = None,
    *,
    align: str = "top_left",
    offset: int = 0,
    device: Any = None,
) -> ScoreMod:
    """score + slope[h] * (kv_idx - q_idx'), as attention(..., bias=alibi_bias(num_heads, q_len, kv_len, ...)).

    The bias is computed in float64 (the slopes are alibi_slopes' float64 values) and rounded once to the
    score's dtype, as alibi_bias(..., dtype=<the score's dtype>) writes it. The slopes are kept on `device`
    (default: torch's default device), where flex_attention runs.
    """
    heads = check.integer("num_heads", num_heads, minimum=1)
    t, s = check.q_kv_lengths(q_len, kv_len)
    d = check.aligned_offset(align, t, s, offset)
    check.alibi_distances(d, t, s)
    slopes = _tb._alibi_slopes(heads, OPS.device(device) or torch.get_default_device())

    def alibi(score: torch.Tensor, b: Index, h: Index, q_idx: Index, kv_idx: Index) -> torch.Tensor:
        return score + (slopes[h] * (kv_idx - q_idx - d)).to(score.dtype)

    return ScoreMod(alibi, f"alibi({heads}, {t}, {s}, shift={d})")


def chain(*mods: Callable[..., torch.Tensor]) -> ScoreMod:
    """The score_mods applied in order, each to the previous one's score (chain(f, g): g(f(score)))."""
    if not mods:
        raise TypeError("chain needs at least one score_mod")
    for m in mods:
        if not callable(m):
            raise TypeError(
                f"score_mods must be callables (score, b, h, q_idx, kv_idx) -> score; got {type(m).__name__}"
            )

    def chained(score: torch.Tensor, b: Index, h: Index, q_idx: Index, kv_idx: Index) -> torch.Tensor:
        for m in mods:
            score = m(score, b, h, q_idx, kv_idx)
        return score

    return ScoreMod(chained, " -> ".join(getattr(m, "name", repr(m)) for m in mods))
