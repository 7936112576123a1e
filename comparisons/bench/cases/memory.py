"""Case 4: the oracle's peak memory for attention without weights, against the full weights."""

from __future__ import annotations

import numpy as np

from refmask import oracle

from ..modes import Sizes
from ..rows import Row, fmt
from ..timing import peak_traced_bytes


def case_memory(sizes: Sizes, backends: dict[str, str]) -> list[Row]:
    t = sizes.memory_len
    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal((1, 1, t, 64), dtype=np.float32) for _ in range(3))
    full = t * t * np.dtype(np.float64).itemsize
    reference = f"full (T, S) float64 weights, T = S = {t}"
    rows: list[Row] = []
    for label, causal in (("", False), (", is_causal=True", True)):
        peak, seconds = peak_traced_bytes(lambda: oracle.attention(q, k, v, is_causal=causal))
        note = f"tracemalloc, in process; {fmt(seconds, 's')} per call"
        if causal:
            note += f"; includes the (T, S) bool causal mask, {fmt(t * t, 'bytes')}"
        subject = f"oracle.attention (1, 1, {t}, {t}, 64) float32{label}"
        rows.append(Row(4, "numpy", subject, reference, peak, full, "bytes", max_ratio=0.25, note=note))
    return rows
