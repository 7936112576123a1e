"""Benchmark refmask against the native paths it replaces: times, ratios and memory, side by side.

Full mode (no option) runs the shapes of issue 7 and prints the Markdown table of the README;
--quick is CI-sized (smaller shapes where noted, fewer repeats; under 2 minutes on 2 cores);
--smoke runs tiny shapes once, for the test suite, which only checks that every case runs.
Every time is the median of repeats taken round-robin in this one process (refmask and its native
reference alternate, the order rotating each repeat), so the ratio refmask / native stays
meaningful on a busy machine. The targets of issue 7 are printed as PASS/FAIL; they are goals, not
tests: the command exits 0 whatever the times (--strict exits 1 on a FAIL). A backend whose
framework is not installed, or whose refmask module does not exist yet, is reported as skipped.
What each case measures: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib
import importlib.util
import math
import os
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

import refmask
from refmask import oracle
from refmask._backends import from_numpy

BACKENDS = ("numpy", "jax", "torch")
CASES = (1, 2, 3, 4, 5)
CASE_TITLES = {
    1: "masked_softmax, causal + padding",
    2: "attention, causal",
    3: "small-call overhead, masked_softmax",
    4: "memory: oracle attention, return_weights=False",
    5: "mask construction",
}


@dataclass(frozen=True)
class Sizes:
    """The shapes and repeat counts of one mode."""

    name: str
    softmax: tuple[int, int, int, int]  # (B, H, T, S)
    attention: tuple[int, int, int, int, int]  # (B, H, T, S, D)
    small: tuple[int, int, int, int]
    memory_len: int  # T = S of case 4, (1, 1, T, S, 64)
    masks: tuple[int, int]  # (B, T) of case 5, masks broadcast to (B, 1, T, T)
    repeats: int  # case 1 and 5; case 2 uses max(3, repeats // 2)
    calls: int  # calls per timed loop in case 3


FULL = Sizes("full", (8, 8, 512, 512), (4, 8, 1024, 1024, 64), (1, 1, 8, 8), 8192, (8, 4096), 11, 2000)
QUICK = Sizes("quick", (8, 8, 512, 512), (2, 8, 512, 512, 64), (1, 1, 8, 8), 8192, (8, 2048), 5, 500)
SMOKE = Sizes("smoke", (2, 2, 32, 32), (1, 2, 32, 32, 16), (1, 1, 8, 8), 256, (2, 128), 1, 3)
ISSUE = FULL  # the shapes issue 7 names; a mode that differs says so in its output


# ----------------------------------------------------------------------------------------------
# results


@dataclass
class Row:
    """One measurement: refmask's `value` against `ref_value` (seconds, or bytes for case 4 and 5)."""

    case: int
    backend: str
    subject: str  # what refmask runs
    reference: str  # what it is compared with
    value: float | None = None
    ref_value: float | None = None
    unit: str = "s"  # "s" (time per call) or "bytes"
    max_ratio: float | None = None  # target on value / ref_value
    max_value: float | None = None  # target on value itself
    passed: bool | None = None  # a target judged elsewhere (mask shapes)
    note: str = ""
    skipped: str = ""  # why there is no measurement

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.ref_value:
            return None
        return self.value / self.ref_value

    @property
    def target(self) -> str:
        if self.max_ratio is not None:
            return f"<= {self.max_ratio:.0%}" if self.unit == "bytes" else f"<= {self.max_ratio:.2f}"
        if self.max_value is not None:
            return f"<= {_fmt(self.max_value, self.unit)}"
        if self.passed is not None:
            return "smallest shape"
        return ""

    @property
    def result(self) -> str:
        if self.skipped:
            return "skipped"
        if self.max_ratio is not None and self.ratio is not None:
            return "PASS" if self.ratio <= self.max_ratio else "FAIL"
        if self.max_value is not None and self.value is not None:
            return "PASS" if self.value <= self.max_value else "FAIL"
        if self.passed is not None:
            return "PASS" if self.passed else "FAIL"
        return "info"


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "bytes":
        for size, name in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
            if value >= size:
                return f"{value / size:.1f} {name}"
        return f"{int(value)} B"
    if value >= 1:
        return f"{value:.2f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.1f} ms"
    return f"{value * 1e6:.1f} us"


def _fmt_ratio(row: Row) -> str:
    r = row.ratio
    if r is None:
        return "-"
    return f"{r:.1%}" if row.unit == "bytes" else f"{r:.2f}"


# ----------------------------------------------------------------------------------------------
# measuring


def _sync(x: Any) -> Any:
    """Wait for a jax result (jax dispatches asynchronously); anything else is returned as is."""
    ready = getattr(x, "block_until_ready", None)
    if ready is not None:
        ready()
    elif isinstance(x, tuple):
        for y in x:
            _sync(y)
    return x


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, calls: int = 1) -> dict[str, float | str]:
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
    for r in range(repeats):
        order = live[r % len(live):] + live[: r % len(live)] if live else []
        for name in order:
            fn, n = fns[name], loops[name]
            gc.collect()
            start = time.perf_counter()
            for _ in range(n):
                _sync(fn())
            times[name].append((time.perf_counter() - start) / n)
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


def backend_unavailable(name: str) -> str:
    """Why backend `name` cannot be benchmarked here, or "" if it can."""
    if name == "numpy":
        return ""
    if importlib.util.find_spec(name) is None:
        return f"{name} is not installed"
    if importlib.util.find_spec(f"refmask.backends.{name}") is None:
        return f"refmask's {name} backend is not implemented yet"
    try:
        importlib.import_module(f"refmask.backends.{name}")
    except Exception as err:
        return f"refmask.backends.{name} does not import: {type(err).__name__}: {err}"
    return ""


def _rows_from_times(
    case: int, backend: str, times: dict[str, float | str], subject: str, refs: list[tuple[str, str, dict]]
) -> list[Row]:
    """One row per native reference: refmask's time `times["refmask"]` against `times[key]`."""
    rows = []
    for key, label, extra in refs:
        row = Row(case, backend, subject, label, **extra)
        mine, theirs = times.get("refmask"), times.get(key)
        if isinstance(mine, str):
            row.skipped = f"refmask: {mine}"
        elif isinstance(theirs, str):
            row.skipped = f"reference: {theirs}"
        else:
            row.value, row.ref_value = mine, theirs
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------
# case 1: masked_softmax


def _softmax_inputs(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """float32 scores and a causal + key-padding mask (B, 1, T, S); every row keeps a key."""
    b, _, t, s = shape
    rng = np.random.default_rng(0)
    scores = rng.standard_normal(shape, dtype=np.float32)
    lengths = rng.integers(max(1, s // 2), s + 1, size=b)
    keys = refmask.attention_padding_mask(refmask.padding_mask(lengths, s))
    return scores, refmask.and_masks(refmask.causal_mask(t, s), keys)


def numpy_softmax(x: np.ndarray, mask: np.ndarray, dtype: Any) -> np.ndarray:
    """The textbook masked softmax, computed in `dtype`, returned in x's dtype."""
    y = np.where(mask, x.astype(dtype, copy=False), -np.inf)
    e = np.exp(y - y.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(x.dtype, copy=False)


def case_softmax(sizes: Sizes, backends: dict[str, str]) -> list[Row]:
    x, mask = _softmax_inputs(sizes.softmax)
    subject = "masked_softmax"
    floor = ("copy", "memory copy of the scores (bandwidth floor)", {})
    rows: list[Row] = []
    for backend, why in backends.items():
        if why:
            rows.append(Row(1, backend, subject, "native", skipped=why))
            continue
        if backend == "numpy":
            x64, out64, out32 = x.astype(np.float64), np.empty(x.shape), np.empty_like(x)
            fns = {
                "refmask": lambda: refmask.masked_softmax(x, mask),
                "f64": lambda: numpy_softmax(x, mask, np.float64),
                "f32": lambda: numpy_softmax(x, mask, np.float32),
                "copy": lambda: x.copy(),
                # What bounds any float64 softmax (the oracle's arithmetic) against a float32 one:
                "cast": lambda: x.astype(np.float64),
                "exp64": lambda: np.exp(x64, out=out64),
                "exp32": lambda: np.exp(x, out=out32),
            }
            refs = [
                ("f64", "plain NumPy where+max+exp+sum, float64", {"max_ratio": 1.0}),
                ("f32", "plain NumPy where+max+exp+sum, float32", {}),
                floor,
                ("cast", "bound: the float32 -> float64 cast alone", {}),
                ("exp64", "bound: np.exp alone, float64, in place", {}),
                ("exp32", "bound: np.exp alone, float32, in place", {}),
            ]
        elif backend == "jax":
            import jax
            import jax.numpy as jnp

            xs, ms = jnp.asarray(x), jnp.asarray(mask)
            mine = jax.jit(lambda s, m: refmask.masked_softmax(s, m, backend="jax"))
            native = jax.jit(lambda s, m: jax.nn.softmax(s, axis=-1, where=m))
            fns = {"refmask": lambda: mine(xs, ms), "native": lambda: native(xs, ms), "copy": lambda: x.copy()}
            refs = [
                ("native", "jax.nn.softmax(where=mask), jit", {"max_ratio": 1.05}),
                ("copy", "memory copy of the scores, NumPy (bandwidth floor)", {}),
            ]
            subject = "masked_softmax, jit"
        else:
            import torch

            xt, mt = torch.from_numpy(x), torch.from_numpy(mask)
            fns = {
                "refmask": lambda: refmask.masked_softmax(xt, mt),
                "native": lambda: torch.softmax(xt.masked_fill(~mt, float("-inf")), dim=-1),
                "copy": lambda: xt.clone(),
            }
            refs = [("native", "softmax(masked_fill(~mask, -inf))", {"max_ratio": 1.05}), floor]
            subject = "masked_softmax"
        rows += _rows_from_times(1, backend, interleaved(fns, sizes.repeats), subject, refs)
    return rows


# ----------------------------------------------------------------------------------------------
# case 2: attention


def numpy_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: np.ndarray, dtype: Any) -> np.ndarray:
    """Textbook causal attention in `dtype`: softmax(where(causal, q k^T / sqrt(D), -inf)) v."""
    q, k, v = (a.astype(dtype, copy=False) for a in (q, k, v))
    s = np.where(causal, q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1]), -np.inf)
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return ((e / e.sum(axis=-1, keepdims=True)) @ v).astype(np.float32, copy=False)


def case_attention(sizes: Sizes, backends: dict[str, str]) -> list[Row]:
    b, h, t, s, d = sizes.attention
    rng = np.random.default_rng(1)
    q = rng.standard_normal((b, h, t, d), dtype=np.float32)
    k, v = (rng.standard_normal((b, h, s, d), dtype=np.float32) for _ in range(2))
    causal = refmask.causal_mask(t, s)
    repeats = max(1, (sizes.repeats + 1) // 2)
    rows: list[Row] = []
    for backend, why in backends.items():
        if why:
            rows.append(Row(2, backend, "attention(is_causal=True)", "native", skipped=why))
            continue
        subject = "attention(is_causal=True)"
        if backend == "numpy":
            fns = {
                "refmask": lambda: refmask.attention(q, k, v, is_causal=True),
                "f64": lambda: numpy_attention(q, k, v, causal, np.float64),
                "f32": lambda: numpy_attention(q, k, v, causal, np.float32),
            }
            refs = [
                ("f64", "plain NumPy, same math in float64", {}),
                ("f32", "plain NumPy, same math in float32", {}),
            ]
        elif backend == "jax":
            import flax.linen as nn
            import jax
            import jax.numpy as jnp

            qj, kj, vj = (jnp.asarray(a) for a in (q, k, v))
            # Flax and jax.nn take (B, T, H, D): transposed here, outside the timing.
            qn, kn, vn = (jnp.asarray(a.transpose(0, 2, 1, 3)) for a in (q, k, v))
            cj = jnp.asarray(causal)
            mine = jax.jit(lambda q, k, v: refmask.attention(q, k, v, is_causal=True, backend="jax"))
            flax_fn = jax.jit(lambda q, k, v: nn.dot_product_attention(q, k, v, mask=cj[None, None]))
            jnn = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla"))
            fns = {
                "refmask": lambda: mine(qj, kj, vj),
                "flax": lambda: flax_fn(qn, kn, vn),
                "jnn": lambda: jnn(qn, kn, vn),
            }
            refs = [
                ("flax", "flax.linen.dot_product_attention(mask=causal), jit", {"max_ratio": 1.05}),
                ("jnn", 'jax.nn.dot_product_attention(is_causal=True, "xla"), jit', {"max_ratio": 1.05}),
            ]
            subject = "attention(is_causal=True), jit"
        else:
            import torch
            import torch.nn.functional as F

            qt, kt, vt = (torch.from_numpy(a) for a in (q, k, v))
            masked_t = ~torch.from_numpy(causal)
            scale = 1.0 / math.sqrt(d)

            def torch_math():
                scores = (qt @ kt.transpose(-2, -1)) * scale
                return torch.softmax(scores.masked_fill(masked_t, float("-inf")), dim=-1) @ vt

            fns = {
                "refmask": lambda: refmask.attention(qt, kt, vt, is_causal=True),
                "math": torch_math,
                "sdpa": lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=True),
            }
            refs = [
                ("math", "same math in plain torch (matmul, masked_fill, softmax, matmul)", {"max_ratio": 1.05}),
                ("sdpa", "F.scaled_dot_product_attention(is_causal=True)", {}),
            ]
        rows += _rows_from_times(2, backend, interleaved(fns, repeats), subject, refs)
    return rows


# ----------------------------------------------------------------------------------------------
# case 3: small calls


SMALL_CALL_TARGET = {"numpy": 15e-6, "torch": 30e-6, "jax": 60e-6}


def case_small_calls(sizes: Sizes, backends: dict[str, str]) -> list[Row]:
    x, mask = _softmax_inputs(sizes.small)
    target = SMALL_CALL_TARGET
    rows: list[Row] = []
    for backend, why in backends.items():
        subject = f"masked_softmax {sizes.small}, per call"
        if why:
            rows.append(Row(3, backend, subject, "native", skipped=why))
            continue
        note = ""
        if backend == "numpy":
            fns = {
                "refmask": lambda: refmask.masked_softmax(x, mask),
                "oracle": lambda: oracle.masked_softmax(x, mask),
                "native": lambda: numpy_softmax(x, mask, np.float64),
                "arithmetic": lambda: oracle._softmax_kept(x.astype(np.float64), keep, -1, "zero"),
            }
            keep = np.broadcast_to(mask, x.shape)
            labels = {
                "oracle": "refmask.oracle.masked_softmax (no dispatch)",
                "native": "plain NumPy, float64",
                "arithmetic": "bound: the oracle's arithmetic alone (no checks, no dispatch)",
            }
        elif backend == "jax":
            import jax
            import jax.numpy as jnp

            xs, ms = jnp.asarray(x), jnp.asarray(mask)
            compiled = jax.jit(lambda s, m: refmask.masked_softmax(s, m, backend="jax"))
            native = jax.jit(lambda s, m: jax.nn.softmax(s, axis=-1, where=m))
            fns = {
                "refmask": lambda: compiled(xs, ms),
                "eager": lambda: refmask.masked_softmax(xs, ms),
                "native": lambda: native(xs, ms),
            }
            labels = {
                "eager": "refmask.masked_softmax, eager call (public API)",
                "native": "jax.nn.softmax(where=mask), jit",
            }
            subject = f"masked_softmax {sizes.small}, jit, per call"
        else:
            import torch

            xt, mt = torch.from_numpy(x), torch.from_numpy(mask)
            fns = {
                "refmask": lambda: refmask.masked_softmax(xt, mt),
                "native": lambda: torch.softmax(xt.masked_fill(~mt, float("-inf")), dim=-1),
            }
            labels = {"native": "softmax(masked_fill(~mask, -inf))"}
        times = interleaved(fns, sizes.repeats, calls=sizes.calls)
        if backend == "jax" and not isinstance(times.get("refmask"), str):
            cache_size = getattr(compiled, "_cache_size", None)
            if cache_size is not None:
                note = f"compiled {cache_size()} time(s) over all calls"
        own = Row(3, backend, subject, "", max_value=target[backend], note=note)
        if isinstance(times.get("refmask"), str):
            own.skipped = str(times["refmask"])
        else:
            own.value = times["refmask"]
        rows.append(own)
        refs = [(key, label, {}) for key, label in labels.items()]
        rows += _rows_from_times(3, backend, times, subject, refs)
        if backend == "torch":
            rows += _torch_single_thread(fns, sizes, subject)
    return rows


def _torch_single_thread(fns: dict[str, Callable[[], Any]], sizes: Sizes, subject: str) -> list[Row]:
    """Case 3 again with torch.set_num_threads(1): on a busy machine, waking torch's intra-op thread
    pool costs milliseconds even for an (8, 8) tensor, so the default-threads time measures the load."""
    import torch

    threads = torch.get_num_threads()
    if threads == 1:
        return []
    torch.set_num_threads(1)
    try:
        times = interleaved(fns, sizes.repeats, calls=sizes.calls)
    finally:
        torch.set_num_threads(threads)
    subject = f"{subject}, torch.set_num_threads(1)"
    own = Row(3, "torch", subject, "", max_value=SMALL_CALL_TARGET["torch"])
    if isinstance(times.get("refmask"), str):
        own.skipped = str(times["refmask"])
    else:
        own.value = times["refmask"]
    return [own] + _rows_from_times(3, "torch", times, subject, [("native", "softmax(masked_fill(~mask, -inf))", {})])


# ----------------------------------------------------------------------------------------------
# case 4: memory


def case_memory(sizes: Sizes, backends: dict[str, str]) -> list[Row]:
    t = sizes.memory_len
    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal((1, 1, t, 64), dtype=np.float32) for _ in range(3))
    full = t * t * np.dtype(np.float64).itemsize
    reference = f"full (T, S) float64 weights, T = S = {t}"
    rows = []
    for label, kwargs in (("", {}), (", is_causal=True", {"is_causal": True})):
        peak, seconds = peak_traced_bytes(lambda: oracle.attention(q, k, v, **kwargs))
        note = f"tracemalloc, in process; {_fmt(seconds, 's')} per call"
        if kwargs:
            note += f"; includes the (T, S) bool causal mask, {_fmt(t * t, 'bytes')}"
        subject = f"oracle.attention (1, 1, {t}, {t}, 64) float32{label}"
        rows.append(Row(4, "numpy", subject, reference, peak, full, "bytes", max_ratio=0.25, note=note))
    return rows


# ----------------------------------------------------------------------------------------------
# case 5: mask construction


def mask_calls(b: int, t: int) -> tuple[list[tuple[str, tuple[int, ...], Callable[..., Any]]], dict[str, np.ndarray]]:
    """(name, smallest broadcast shape, call(api, **arrays), arrays) for every mask kind at (B, 1, T, T)."""
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, t + 1, size=b)
    valid = np.arange(t) < lengths[:, None]
    arrays = {
        "lengths": lengths,
        "prefix": rng.integers(0, t + 1, size=b),
        "ids": np.where(valid, rng.integers(1, 1000, size=(b, t)), 0),
        "segments": np.sort(rng.integers(0, 4, size=(b, t)), axis=1),
        "valid": valid,
        "hf": valid.astype(np.int64),
    }
    r = refmask

    def key_padding(a: str, lengths: Any) -> Any:
        return r.attention_padding_mask(r.padding_mask(lengths, t, backend=a), backend=a)

    calls: list[tuple[str, tuple[int, ...], Callable[..., Any]]] = [
        ("causal_mask", (t, t), lambda a, **_: r.causal_mask(t, backend=a)),
        ("sliding_window_mask(window=(256, 0))", (t, t),
         lambda a, **_: r.sliding_window_mask(t, window=(256, 0), backend=a)),
        ("chunked_mask(chunk_size=512)", (t, t), lambda a, **_: r.chunked_mask(t, chunk_size=512, backend=a)),
        ("padding_mask", (b, t), lambda a, lengths, **_: r.padding_mask(lengths, t, backend=a)),
        ("padding_mask_from_ids", (b, t), lambda a, ids, **_: r.padding_mask_from_ids(ids, 0, backend=a)),
        ("attention_padding_mask(kv_valid)", (b, 1, 1, t),
         lambda a, valid, **_: r.attention_padding_mask(valid, backend=a)),
        ("attention_padding_mask(kv_valid, q_valid)", (b, 1, t, t),
         lambda a, valid, **_: r.attention_padding_mask(valid, valid, backend=a)),
        ("from_hf", (b, 1, 1, t), lambda a, hf, **_: r.from_hf(hf, backend=a)),
        ("segment_mask", (b, 1, t, t), lambda a, segments, **_: r.segment_mask(segments, backend=a)),
        ("prefix_lm_mask", (b, 1, t, t), lambda a, prefix, **_: r.prefix_lm_mask(prefix, t, backend=a)),
        ("and_masks(causal, key padding)", (b, 1, t, t),
         lambda a, lengths, **_: r.and_masks(r.causal_mask(t, backend=a), key_padding(a, lengths), backend=a)),
        ("or_masks(causal, chunked)", (t, t),
         lambda a, **_: r.or_masks(r.causal_mask(t, backend=a), r.chunked_mask(t, chunk_size=512, backend=a),
                                   backend=a)),
    ]
    return calls, arrays


def _nbytes(x: Any) -> int:
    if hasattr(x, "nbytes"):
        return int(x.nbytes)
    return int(x.numel() * x.element_size())  # torch


def case_masks(sizes: Sizes, backends: dict[str, str]) -> list[Row]:
    b, t = sizes.masks
    calls, arrays = mask_calls(b, t)
    full = b * t * t  # bytes of the (B, 1, T, T) bool mask every kind broadcasts to
    reference = f"(B, 1, T, T) = {(b, 1, t, t)} bool"
    rows: list[Row] = []
    for backend, why in backends.items():
        if why:
            rows.append(Row(5, backend, "every mask kind", reference, skipped=why))
            continue
        native = {key: from_numpy(value, backend) for key, value in arrays.items()}
        fns = {name: (lambda fn=fn: fn(backend, **native)) for name, _, fn in calls}
        times = interleaved(fns, sizes.repeats)
        for name, smallest, fn in calls:
            row = Row(5, backend, name, reference, unit="bytes")
            if isinstance(times[name], str):
                row.skipped = str(times[name])
            else:
                mask = fn(backend, **native)
                shape = tuple(mask.shape)
                row.value, row.ref_value = _nbytes(mask), full
                row.passed = shape == smallest
                row.note = f"shape {shape}, {_fmt(times[name], 's')}"
                if not row.passed:
                    row.note += f"; smallest is {smallest}"
            rows.append(row)
    return rows


CASE_FUNCTIONS = {1: case_softmax, 2: case_attention, 3: case_small_calls, 4: case_memory, 5: case_masks}


# ----------------------------------------------------------------------------------------------
# report


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return "not installed"


def environment(backends: dict[str, str]) -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    threads = ""
    if backends.get("torch") == "":  # available: it is imported anyway
        import torch

        threads = f" (torch threads: {torch.get_num_threads()})"
    versions = ", ".join(
        f"{name} {_version(dist)}"
        for name, dist in (("refmask", "refmask"), ("numpy", "numpy"), ("jax", "jax"), ("jaxlib", "jaxlib"),
                           ("flax", "flax"), ("torch", "torch"))
    )
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}",
        "versions": f"Python {platform.python_version()}, {versions}{threads}",
    }


def _shape_note(sizes: Sizes, case: int) -> str:
    issue = {1: ISSUE.softmax, 2: ISSUE.attention, 3: ISSUE.small, 4: ISSUE.memory_len, 5: ISSUE.masks}[case]
    mine = {1: sizes.softmax, 2: sizes.attention, 3: sizes.small, 4: sizes.memory_len, 5: sizes.masks}[case]
    if mine == issue:
        return ""
    return f"  [{sizes.name} mode: smaller than the issue's {issue}]"


def print_case(case: int, rows: list[Row], sizes: Sizes, seconds: float, out: Any) -> None:
    b, t = sizes.masks
    shape = {1: sizes.softmax, 2: sizes.attention, 3: sizes.small,
             4: (1, 1, sizes.memory_len, sizes.memory_len, 64), 5: (b, 1, t, t)}
    print(f"\ncase {case}: {CASE_TITLES[case]} {shape[case]}{_shape_note(sizes, case)}  ({seconds:.0f} s)", file=out)
    header = f"  {'backend':<7} {'refmask':>10} {'reference':>10} {'ratio':>7}  {'target':<14} {'result':<7} what"
    print(header, file=out)
    for row in rows:
        if row.skipped:
            print(f"  {row.backend:<7} {'':>10} {'':>10} {'':>7}  {row.target:<14} {'skipped':<7} "
                  f"{row.subject}: {row.skipped}", file=out)
            continue
        what = row.subject if row.ref_value is None else f"{row.subject} vs {row.reference}"
        line = (f"  {row.backend:<7} {_fmt(row.value, row.unit):>10} {_fmt(row.ref_value, row.unit):>10} "
                f"{_fmt_ratio(row):>7}  {row.target:<14} {row.result:<7} {what}")
        print(line + (f" ({row.note})" if row.note else ""), file=out)


def markdown(rows: list[Row], env: dict[str, str], sizes: Sizes) -> str:
    lines = [
        f"Measured {env['date']} on {env['machine']}; {env['versions']}; `refmask bench` ({sizes.name} mode), "
        "medians of interleaved repeats, ratio = refmask / reference.",
        "",
        "| case | backend | refmask | reference | refmask | reference | ratio | target | result |",
        "|---|---|---|---|---:|---:|---:|---|---|",
    ]
    for row in rows:
        if row.skipped:
            lines.append(f"| {row.case} | {row.backend} | {row.subject} | {row.reference} | | | | "
                         f"{row.target} | skipped: {row.skipped} |")
            continue
        value = _fmt(row.value, row.unit) + (f" ({row.note})" if row.note else "")
        lines.append(
            f"| {row.case} | {row.backend} | {row.subject} | {row.reference} | {value} | "
            f"{_fmt(row.ref_value, row.unit)} | {_fmt_ratio(row)} | {row.target} | {row.result} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="CI-sized run: smaller attention shapes, fewer repeats")
    mode.add_argument("--smoke", action="store_true", help="tiny shapes, 2 repeats: checks that every case runs")
    parser.add_argument("--cases", default="1,2,3,4,5", help="comma-separated case numbers (default: all)")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated backends (default: all)")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per measurement (default: by mode)")
    parser.add_argument("--markdown", action="store_true", help="also print the Markdown table (always in full mode)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")


def run(args: argparse.Namespace) -> int:
    sizes = SMOKE if args.smoke else QUICK if args.quick else FULL
    if args.repeats is not None:
        sizes = Sizes(**{**sizes.__dict__, "repeats": max(1, args.repeats)})
    try:
        cases = [int(c) for c in args.cases.split(",") if c.strip()]
        if any(c not in CASES for c in cases):
            raise ValueError
    except ValueError:
        print(f"refmask bench: --cases must list numbers among {CASES}; got {args.cases!r}", file=sys.stderr)
        return 2
    wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
    if any(b not in BACKENDS for b in wanted):
        print(f"refmask bench: --backends must list names among {BACKENDS}; got {args.backends!r}", file=sys.stderr)
        return 2
    backends = {name: backend_unavailable(name) for name in wanted}
    env = environment(backends)
    out = sys.stdout
    print(f"refmask bench, {sizes.name} mode: {env['date']}", file=out)
    print(f"machine: {env['machine']}\nversions: {env['versions']}", file=out)
    print("times: median of interleaved repeats, per call; ratio = refmask / reference; targets are goals", file=out)
    started = time.perf_counter()
    rows_of: dict[int, list[Row]] = {case: [] for case in cases}
    seconds_of = dict.fromkeys(cases, 0.0)
    # Backend by backend (all of numpy's cases first, torch's last), not case by case: after a
    # torch op its idle OpenMP threads keep spinning for a while, and on 2 cores the oracle's
    # attention (multithreaded BLAS) run right after one took 6.3 s instead of 0.96 s.
    for backend, why in backends.items():
        print(f"refmask bench: measuring {backend} ...", file=sys.stderr, flush=True)
        for case in cases:
            if case == 4 and backend != wanted[0]:
                continue  # the oracle's memory: measured once, whatever the backends
            case_start = time.perf_counter()
            rows_of[case] += CASE_FUNCTIONS[case](sizes, {backend: why})
            seconds_of[case] += time.perf_counter() - case_start
    all_rows: list[Row] = []
    for case in cases:
        print_case(case, rows_of[case], sizes, seconds_of[case], out)
        all_rows += rows_of[case]
    judged = [r for r in all_rows if r.result in ("PASS", "FAIL")]
    failed = [r for r in judged if r.result == "FAIL"]
    print(f"\n{len(judged) - len(failed)} of {len(judged)} targets met; "
          f"{sum(r.result == 'skipped' for r in all_rows)} skipped; {time.perf_counter() - started:.0f} s", file=out)
    if args.markdown or sizes.name == "full":
        print("\n" + markdown(all_rows, env, sizes), file=out)
    return 1 if (args.strict and failed) else 0
