"""Case 3: the cost of one small masked_softmax call (checks and dispatch), per call.

Each backend's public call is the subject: against the call a user would otherwise write (plain NumPy
float64, torch's softmax(masked_fill), a jitted jax.nn.softmax(where=)) it has a target on the ratio.
For jax the eager public call is what a model pays; the same call under the caller's jax.jit is reported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

import refmask
from refmask import oracle

from ..modes import Sizes
from ..rows import Ref, Row, own_row, rows_from_times
from ..timing import interleaved
from .softmax import TORCH_IDIOM, accurate_rows, numpy_softmax, softmax_inputs

# What case 3 times on one backend, and (jax) how often refmask's jitted function was compiled.
SmallMeasure = tuple[dict[str, Callable[[], Any]], list[Ref], Callable[[], int] | None]

SMALL_CALL_TARGET = {"numpy": 15e-6, "torch": 30e-6, "jax": 60e-6}
# refmask's public call over the native idiom's, per backend
SMALL_CALL_RATIO = {"numpy": 2.0, "torch": 2.0, "jax": 1.5}


def _numpy(x: np.ndarray, mask: np.ndarray) -> SmallMeasure:
    keep = np.broadcast_to(mask, x.shape)
    fns = {
        "refmask": lambda: refmask.masked_softmax(x, mask),
        "oracle": lambda: oracle.masked_softmax(x, mask),
        "native": lambda: numpy_softmax(x, mask, np.float64),
        "arithmetic": lambda: oracle._softmax_kept(x.astype(np.float64), keep, -1, "zero"),
    }
    refs: list[Ref] = [
        ("oracle", "refmask.oracle.masked_softmax (no dispatch)", {}),
        ("native", "plain NumPy, float64", {"max_ratio": SMALL_CALL_RATIO["numpy"]}),
        ("arithmetic", "bound: the oracle's arithmetic alone (no checks, no dispatch)", {}),
    ]
    return fns, refs, None


def _jax(x: np.ndarray, mask: np.ndarray) -> SmallMeasure:
    import jax
    import jax.numpy as jnp

    xs, ms = jnp.asarray(x), jnp.asarray(mask)
    compiled = jax.jit(lambda s, m: refmask.masked_softmax(s, m, backend="jax"))
    native = jax.jit(lambda s, m: jax.nn.softmax(s, axis=-1, where=m))
    fns = {
        "refmask": lambda: refmask.masked_softmax(xs, ms),
        "accurate": lambda: refmask.masked_softmax(xs, ms, accuracy="accurate"),
        "compiled": lambda: compiled(xs, ms),
        "native": lambda: native(xs, ms),
    }
    refs: list[Ref] = [
        ("native", "jax.nn.softmax(where=mask), jit", {"max_ratio": SMALL_CALL_RATIO["jax"]}),
        ("compiled", "refmask.masked_softmax under the caller's jax.jit", {}),
    ]
    from refmask.backends import jax as jax_backend  # the eager call's own compiled program

    return fns, refs, getattr(jax_backend._masked_softmax_jit, "_cache_size", None)


def _torch(x: np.ndarray, mask: np.ndarray) -> SmallMeasure:
    import torch

    xt, mt = torch.from_numpy(x), torch.from_numpy(mask)

    def tensor_ops() -> Any:
        # The tensor operations refmask's masked_softmax needs: one more than the idiom (the fully-masked check)
        w = torch.softmax(torch.where(mt, xt, float("-inf")), dim=-1)
        return w, bool(mt.any(dim=-1, keepdim=True).all())

    fns = {
        "refmask": lambda: refmask.masked_softmax(xt, mt),
        "accurate": lambda: refmask.masked_softmax(xt, mt, accuracy="accurate"),
        "native": lambda: torch.softmax(xt.masked_fill(~mt, float("-inf")), dim=-1),
        "ops": tensor_ops,
    }
    refs: list[Ref] = [
        ("native", TORCH_IDIOM, {"max_ratio": SMALL_CALL_RATIO["torch"]}),
        ("ops", "bound: refmask's tensor ops alone (where, softmax, any, all), no checks", {}),
    ]
    return fns, refs, None


MEASURES = {"numpy": _numpy, "jax": _jax, "torch": _torch}


def case_small_calls(sizes: Sizes, backends: dict[str, str]) -> list[Row]:
    x, mask = softmax_inputs(sizes.small)
    rows: list[Row] = []
    for backend, why in backends.items():
        if why:
            rows.append(Row(3, backend, f"masked_softmax {sizes.small}, per call", "native", skipped=why))
            continue
        subject = f"masked_softmax {sizes.small}{', eager' if backend == 'jax' else ''}, per call"
        fns, refs, compilations = MEASURES[backend](x, mask)
        times = interleaved(fns, sizes.repeats, calls=sizes.calls)
        note = ""
        if compilations is not None and not isinstance(times.get("refmask"), str):
            note = f"backend program compiled {compilations()} time(s) in this process"
        rows.append(own_row(3, backend, subject, times, SMALL_CALL_TARGET[backend], note))
        rows += rows_from_times(3, backend, times, subject, refs)
        if backend != "numpy":
            rows += accurate_rows(3, backend, times, subject, refs[0][1])
        if backend == "torch":
            rows += _torch_single_thread(fns, refs, sizes, subject)
    return rows


def _torch_single_thread(
    fns: dict[str, Callable[[], Any]], refs: list[Ref], sizes: Sizes, subject: str
) -> list[Row]:
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
    own = own_row(3, "torch", subject, times, SMALL_CALL_TARGET["torch"])
    return [own, *rows_from_times(3, "torch", times, subject, refs)]
