"""The five cases of `refmask bench`, by number: what each measures is in docs/benchmarks.md.

Each case is a function `case_x(sizes, backends) -> list[Row]`, `backends` mapping a backend's name
to why it cannot run here ("" if it can): a backend that cannot run gets one skipped row.
"""

from __future__ import annotations

from collections.abc import Callable

from ..modes import Sizes
from ..rows import Row
from .attention import case_attention
from .masks import case_masks
from .memory import case_memory
from .small_calls import case_small_calls
from .softmax import case_softmax

CASE_TITLES = {
    1: "masked_softmax, causal + padding",
    2: "attention, causal",
    3: "small-call overhead, masked_softmax",
    4: "memory: attention, return_weights=False",
    5: "mask construction",
}
CASE_FUNCTIONS: dict[int, Callable[[Sizes, dict[str, str]], list[Row]]] = {
    1: case_softmax,
    2: case_attention,
    3: case_small_calls,
    4: case_memory,
    5: case_masks,
}
CASES = tuple(CASE_FUNCTIONS)
