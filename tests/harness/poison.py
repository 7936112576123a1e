"""Non-finite values planted in the catalogue case "padding-queries-and-keys" (batch 0 keeps keys 0-1 and
queries 0-2), where a fused route must not let them reach rows that do not see them."""

from __future__ import annotations

import math

import numpy as np

# Where the value goes: a key no query sees, a query that sees no key, a masked bias entry; and -inf
# at a kept bias entry (the value is then unused).
SITES = ("k at a masked key", "q at a fully-masked row", "bias at a masked entry", "-inf bias at a kept entry")


def plant(arrays: dict[str, np.ndarray], bias: np.ndarray, where: str, value: float) -> None:
    """Put `value` at the site `where` (one of SITES) of the case's q, k (arrays) or its (T, S) bias, in place."""
    if where == SITES[0]:
        arrays["k"][0, :, 3] = value
    elif where == SITES[1]:
        arrays["q"][0, :, 3] = value
    elif where == SITES[2]:
        bias[0, 3] = value
    elif where == SITES[3]:
        bias[0, 0] = -math.inf
    else:
        raise ValueError(f"where must be one of {SITES}; got {where!r}")
