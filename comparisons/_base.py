"""What every adapter shares: the Path record, the NotExpressible signal and the result type.

An adapter is a function `fn(case) -> Native`: it turns a `comparisons.cases.Case` (NumPy q, k, v in
the case's dtype, a canonical mask with True = attend, and the mask's structure as a `Spec`) into
one native framework call, and returns what that call returned as NumPy arrays in (B, H, T, S) /
(B, H, T, D) layout. A case the native path cannot state raises NotExpressible with the reason.

A case may also ask for kernel features (`Case.features()`: "softcap", "sinks", "grad", "bias"); a path states
the ones it can in `Path.features`, and the matrix does not call it on a case that needs another. A
"grad" case carries `d_out`: the path returns, in `Native.grads`, the gradients of sum(d_out * output)
with respect to q, k and v, through the framework's own autodiff. A "bias" case carries `bias`, (H, T, S)
float32 added to the scores (after soft-capping, before the mask): a path states it as its own bias
argument, a float mask or a score_mod.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from refmask import cu_seqlens_from_segment_ids

FEATURES = ("softcap", "sinks", "grad", "bias")


class NotExpressible(Exception):
    """The native path has no way to state this case's mask (e.g. is_causal cannot pad)."""


@dataclass
class Native:
    """What a native call returned, as NumPy; `qkv` when the path had to use other inputs."""

    weights: np.ndarray | None = None
    output: np.ndarray | None = None
    qkv: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    grads: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # (dq, dk, dv) for a "grad" case


# Path.no_grads of the FlexAttention paths: torch's flex_attention raises on a CPU backward.
NO_FLEX_CPU_BACKWARD = "flex_attention has no CPU backward"


@dataclass(frozen=True)
class Path:
    """One row of the matrix: a native masking/attention path of one framework."""

    id: str
    framework: str
    title: str
    fn: Callable[..., Native]
    convention: str  # one line: how refmask's mask is translated for this path
    features: frozenset[str] = frozenset()  # the kernel features it states: "softcap", "sinks", "grad", "bias"
    no_grads: str | None = None  # without "grad": why the matrix takes no gradients through it


def check_expressible(case, *, parts: set[str], causal: tuple[str, ...] = ("top_left", "either"),
                      square: bool = False, side: str | None = None, why: str) -> None:
    """Raise NotExpressible unless the case's structure uses only `parts` (and the causal
    alignments / padding side / T = S the path supports); `why` says what the path lacks."""
    spec = case.spec
    extra = spec.parts() - parts
    _, _, t, s = case.shape
    if extra or (spec.causal is not None and spec.causal not in causal) or (square and t != s) \
            or (side is not None and spec.kv_lengths is not None and spec.side != side):
        raise NotExpressible(why)


def document_lengths(case) -> list[int]:
    """Every example's documents (runs of one segment id) end to end: the blocks of one packed row.
    NotExpressible when a row's ids are not contiguous increasing runs (not a pack of sequences)."""
    lengths: list[int] = []
    for row in case.spec.segments:
        try:
            cu = cu_seqlens_from_segment_ids(np.asarray(row))
        except ValueError as err:
            raise NotExpressible(f"segment ids {row} are not contiguous sequences") from err
        lengths += [int(n) for n in np.diff(cu) if n > 0]
    return lengths
