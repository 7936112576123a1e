"""The failing slice of a comparison drawn as a small grid of characters, for a report.

Where the differing entries lie says what went wrong more quickly than any count: a column
(one key), the lower triangle (a causal mask off by one), every row past a length (padding), one
row (a fully-masked row). So a report draws the last two axes at the worst entry's leading
indices, one character per entry, at most MAX x MAX entries around the worst one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MAX = 16

DIFFERS, AGREES, MASKED, MASKED_DIFFERS = "x", ".", "-", "!"


def _window(i: int, n: int) -> tuple[int, int]:
    start = min(max(i - MAX // 2, 0), max(n - MAX, 0))
    return start, min(start + MAX, n)


def _span(name: str, start: int, stop: int, n: int) -> str:
    return f"{name} {start}..{stop - 1}" + ("" if (start, stop) == (0, n) else f" (of {n})")


def draw(bad: np.ndarray, index: tuple[int, ...], names: Sequence[str], *, masked: np.ndarray | None = None,
         fully_masked_rows: np.ndarray | None = None, masked_label: str = "masked") -> str:
    """The grid of `bad` (True = differs) over its last two axes at `index`'s leading indices.

    names: the axes' names, one per axis of bad ("batch", "head", "query", "key").
    masked: bad's shape, True where the mask drops the entry (weights: "-" or "!").
    fully_masked_rows: bad.shape[:-1], True for rows with no kept key (noted after the row).
    masked_label: what "-" stands for in the legend.
    "" for a 0-d array or an empty slice.
    """
    if bad.ndim == 0 or bad.size == 0:
        return ""
    if bad.ndim == 1:
        bad, index = bad[None], (0, *index)
        masked = None if masked is None else masked[None]
        fully_masked_rows = None if fully_masked_rows is None else fully_masked_rows[None]
        names = ("", *names)
    lead, (r, c) = index[:-2], index[-2:]
    plane = bad[lead]
    keep_out = None if masked is None else np.broadcast_to(masked, bad.shape)[lead]
    empty_rows = None if fully_masked_rows is None else np.broadcast_to(fully_masked_rows, bad.shape[:-1])[lead]
    r0, r1 = _window(r, plane.shape[0])
    c0, c1 = _window(c, plane.shape[1])
    used: set[str] = set()
    width = len(str(r1 - 1))
    lines = []
    for i in range(r0, r1):
        cells = []
        for j in range(c0, c1):
            dropped = keep_out is not None and bool(keep_out[i, j])
            differs = bool(plane[i, j])
            mark = (MASKED_DIFFERS if differs else MASKED) if dropped else (DIFFERS if differs else AGREES)
            used.add(mark)
            cells.append(mark)
        notes = []
        if empty_rows is not None and bool(empty_rows[i]):
            notes.append("(fully masked)")
        if i == r:
            notes.append(f"<- worst ({names[-1]} {c})" if names[-1] else f"<- worst ({c})")
        row_name = f"{i:>{width}}  " if names[-2] else ""
        lines.append(f"    {row_name}{' '.join(cells)}" + (f"  {' '.join(notes)}" if notes else ""))
    where = ", ".join(f"{name}={i}" for name, i in zip(names[:-2], lead, strict=True))
    rows = f"rows {_span(names[-2], r0, r1, plane.shape[0])}, " if names[-2] else ""
    meaning = {DIFFERS: "x differs", AGREES: ". agrees", MASKED: f"- {masked_label}",
               MASKED_DIFFERS: f"! {masked_label}, differs"}
    legend = ", ".join(meaning[m] for m in (DIFFERS, AGREES, MASKED, MASKED_DIFFERS) if m in used)
    head = f"  where they differ{f' in ({where})' if where else ''}: {rows}columns " \
           f"{_span(names[-1], c0, c1, plane.shape[1])}; {legend}:"
    return "\n".join([head, *lines])
