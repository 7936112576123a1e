"""Bit-for-bit comparison of results, for what must be identical rather than close (masks, dispatch)."""

from __future__ import annotations

from typing import Any

import numpy as np


def assert_identical(actual: Any, expected: Any, what: str) -> None:
    """Same type structure, shape, dtype and bits (NaN == NaN)."""
    if expected is None:
        assert actual is None, f"{what}: got {type(actual)}, oracle None"
        return
    if isinstance(expected, tuple):
        assert type(actual) is type(expected), f"{what}: got {type(actual)}, oracle {type(expected)}"
        assert len(actual) == len(expected), f"{what}: {len(actual)} results, oracle {len(expected)}"
        for a, e in zip(actual, expected, strict=True):
            assert_identical(a, e, what)
        return
    if isinstance(expected, int):  # a Python int in a result (unpad's max_len)
        assert type(actual) is int and actual == expected, f"{what}: got {actual!r}, oracle {expected!r}"
        return
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, oracle {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype}, oracle {expected.dtype}"
    differs = ~((actual == expected) | (np.isnan(actual) & np.isnan(expected)) if actual.dtype.kind == "f"
                else actual == expected)
    assert not differs.any(), f"{what}: {int(differs.sum())} entries differ, first at {np.argwhere(differs)[0]}"
