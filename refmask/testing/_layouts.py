"""The array layouts check_attention hands a user's function, from and back to the oracle's (B, H, T, D).

- "BHTD": q (B, H, T, D), as the oracle; out (B, H, T, Dv).
- "BTHD": q (B, T, H, D) (flash-attn, Flax); out (B, T, H, Dv).
- "varlen": flash-attn's varlen functions, sequences packed along one token axis: q (total_q, H, D),
  out (total_q, H, Dv). The oracle sees the packed batch as one batch item, (1, H, total_q, D), with
  the block-diagonal mask of oracle.varlen_mask.

The lse is (B, H, T) in both padded layouts (flash-attn's softmax_lse, flex_attention's lse) and
(H, total_q) in varlen.
"""

from __future__ import annotations

import numpy as np

LAYOUTS = ("BHTD", "BTHD", "varlen")

# The leading axes of q and of the output, as a report names them.
AXES = {"BHTD": "B, H, T", "BTHD": "B, T, H", "varlen": "total_q, H"}
LSE_AXES = {"BHTD": "B, H, T", "BTHD": "B, H, T", "varlen": "H, total_q"}


def to_layout(x: np.ndarray, layout: str) -> np.ndarray:
    """A (B, H, T, D) array (q, k, v, out, d_out or a gradient) in `layout`."""
    if layout == "BHTD":
        return x
    if layout == "BTHD":
        return np.ascontiguousarray(np.swapaxes(x, 1, 2))
    return np.ascontiguousarray(np.swapaxes(x[0], 0, 1))


def from_layout(x: np.ndarray, layout: str) -> np.ndarray:
    """The inverse of to_layout."""
    if layout == "BHTD":
        return x
    if layout == "BTHD":
        return np.swapaxes(x, 1, 2)
    return np.swapaxes(x, 0, 1)[None]


def shape_in(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    """The shape a (B, H, T, D) array has in `layout`."""
    if layout == "BHTD":
        return shape
    if layout == "BTHD":
        return (shape[0], shape[2], shape[1], *shape[3:])
    return (shape[2], shape[1], *shape[3:])


def lse_shape_in(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    """The shape a (B, H, T) lse has in `layout`."""
    return (shape[1], shape[2]) if layout == "varlen" else shape


def lse_from_layout(x: np.ndarray, layout: str) -> np.ndarray:
    return x[None] if layout == "varlen" else x
