"""How `refmask bench` measures: interleaved medians of repeated calls, and tracemalloc's peak."""

from __future__ import annotations

import gc
import statistics
import time
import tracemalloc
from collections.abc import Callable, Mapping
from typing import Any


def _sync(x: Any) -> Any:
    """Wait for a jax result (jax dispatches asynchronously); anything else is returned as is."""
    ready = getattr(x, "block_until_ready", None)
    if ready is not None:
        ready()
    elif isinstance(x, tuple):
        for y in x:
            _sync(y)
    return x


def interleaved(fns: Mapping[str, Callable[[], Any]], repeats: int, calls: int = 1) -> dict[str, float | str]:
    """Median seconds per call of each function, timed round-robin so all share the machine's load.

    Each function is called once first (jit compilation, allocator warm-up); one that raises is
    left out and its entry is the error's first line instead of a time. With calls > 1 each timing
    covers up to `calls` back-to-back calls (fewer if they would take over 50 ms), divided by
    their number.
    """
    result: dict[str, float | str] = {}
    loops: dict[str, int] = {}
    for name, fn in fns.items():
        try:
            _sync(fn())
            loops[name] = 1
            if calls > 1:
                start = time.perf_counter()
                _sync(fn())
                loops[name] = max(1, min(calls, int(0.05 / max(time.perf_counter() - start, 1e-9))))
        except Exception as err:  # an unimplemented or failing backend is reported, not fatal
            result[name] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:160]
    live = list(loops)
    times: dict[str, list[float]] = {name: [] for name in live}
    # As timeit does: no collector pauses inside a timing. One collection before them, not one per
    # timing: a collection walks every object of the process, which costs more than a small call.
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(repeats):
            order = live[r % len(live):] + live[: r % len(live)] if live else []
            for name in order:
                fn, n = fns[name], loops[name]
                start = time.perf_counter()
                for _ in range(n):
                    _sync(fn())
                times[name].append((time.perf_counter() - start) / n)
    finally:
        if enabled:
            gc.enable()
    result.update({name: statistics.median(ts) for name, ts in times.items()})
    return result


def peak_traced_bytes(fn: Callable[[], Any]) -> tuple[int, float]:
    """(peak bytes allocated while fn runs, seconds) as tracemalloc sees them.

    NumPy reports its array allocations to tracemalloc, so this counts every temporary the oracle
    makes (and the output); memory that BLAS allocates for itself is not counted.
    """
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return peak, seconds
