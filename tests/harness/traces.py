"""How often refmask's jitted JAX entry points trace, in the style of chex.assert_max_traces.

A jitted function's cache holds one entry per signature it has been traced (and compiled) for,
so the growth of `_cache_size()` across a block is the number of traces the block caused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

ENTRY_POINTS = ("_masked_softmax_jit", "_attention_jit", "_attention_weights_jit")


def _entry_point(name: str):
    from refmask.backends import jax as backend

    if name not in ENTRY_POINTS:
        raise ValueError(f"unknown entry point {name!r}; refmask's are {', '.join(ENTRY_POINTS)}")
    return getattr(backend, name)


@contextlib.contextmanager
def count_traces(*names: str) -> Iterator[Callable[[], int]]:
    """Yields a function that returns how many times the named entry points (default: all) traced
    since the block began."""
    fns = [_entry_point(n) for n in names or ENTRY_POINTS]
    before = sum(fn._cache_size() for fn in fns)
    yield lambda: sum(fn._cache_size() for fn in fns) - before


@contextlib.contextmanager
def assert_max_traces(n: int, *names: str) -> Iterator[Callable[[], int]]:
    """Fails if the block traces the named entry points (default: all) more than `n` times in all;
    yields the running count, so a test can also insist that something was traced at all."""
    with count_traces(*names) as traces:
        yield traces
    assert traces() <= n, f"{', '.join(names or ENTRY_POINTS)} traced {traces()} times in the block, more than {n}"
