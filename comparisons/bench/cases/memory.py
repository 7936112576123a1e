"""Case 4: peak memory of attention without weights: the oracle against the full weights, and the torch
backend against SDPA's fused path."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from refmask import oracle

from ..modes import Sizes
from ..rows import Row, fmt
from ..timing import peak_traced_bytes

# Run in a fresh process: the peak resident set (VmHWM, reset after the inputs are made) that one call adds.
_TORCH_PEAK = """
import sys, torch, refmask, torch.nn.functional as F
t = int(sys.argv[2])
q, k, v = (torch.randn(1, 8, t, 64) for _ in range(3))
fn = {"refmask": lambda: refmask.attention(q, k, v), "sdpa": lambda: F.scaled_dot_product_attention(q, k, v)}
def rss(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))
refmask.attention(q[..., :16, :], k[..., :16, :], v[..., :16, :])  # imports and first-call setup
F.scaled_dot_product_attention(q[..., :16, :], k[..., :16, :], v[..., :16, :])
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base = rss("VmRSS:")
out = fn[sys.argv[1]]()
print(rss("VmHWM:") - base)
"""


def _torch_peak(which: str, t: int) -> int:
    done = subprocess.run([sys.executable, "-c", _TORCH_PEAK, which, str(t)], capture_output=True, text=True,
                          check=True)
    return int(done.stdout.split()[-1])


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
    if "torch" not in backends:
        return rows
    subject = f"attention (1, 8, {t}, {t}, 64) float32"
    if backends["torch"] or not sys.platform.startswith("linux"):
        why = backends["torch"] or "peak resident set read from /proc (Linux only)"
        rows.append(Row(4, "torch", subject, "F.scaled_dot_product_attention", skipped=why))
    else:
        mine, theirs = _torch_peak("refmask", t), _torch_peak("sdpa", t)
        rows.append(Row(4, "torch", subject, "F.scaled_dot_product_attention (fused)", mine, theirs, "bytes",
                        max_ratio=1.25, note="peak resident set one call adds, in a fresh process"))
    return rows
