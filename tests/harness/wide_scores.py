"""Scores whose spread makes the rounding of x - max visible in float32 weights: the accuracy tests' draw."""

from __future__ import annotations

import numpy as np


def draw(scale: float, shape: tuple[int, int] = (64, 512)) -> tuple[np.ndarray, np.ndarray]:
    """float32 scores scale * N(0, 1) and a mask keeping about 80% of the keys, key 0 in every row (no
    row fully masked); seeded by the scale, so a scale always draws the same problem."""
    rng = np.random.default_rng(int(scale))
    scores = (scale * rng.standard_normal(shape)).astype(np.float32)
    keep = rng.random(shape) < 0.8
    keep[:, 0] = True
    return scores, keep
