"""Case 5: every mask constructor builds its smallest broadcastable shape (bytes and time)."""

from __future__ import annotations

import functools
import os
import struct
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np

import refmask
from refmask._backends import from_numpy, missing_dependency

from ..modes import Sizes
from ..rows import Row, fmt, own_row
from ..timing import interleaved

PNG_MAX_SECONDS = 1.5  # drawing a (T, T) mask as a PNG, whatever T: one image, not a patch per entry


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


def png_row(t: int, repeats: int) -> Row:
    """refmask.show(causal_mask(t), png=...): the time to draw and write the PNG, and its size in pixels."""
    subject = f"show(causal_mask({t}), png=) (drawing)"
    why = missing_dependency("matplotlib", "plot", "drawing a PNG")
    if why is not None:
        return Row(5, "numpy", subject, "", max_value=PNG_MAX_SECONDS, skipped=why)
    mask = refmask.causal_mask(t)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "mask.png")
        times = interleaved({"refmask": lambda: refmask.show(mask, png=path, format="figure")}, repeats)
        with open(path, "rb") as f:
            width, height = struct.unpack(">II", f.read(24)[16:24])  # the PNG's IHDR chunk
    return own_row(5, "numpy", subject, times, PNG_MAX_SECONDS, note=f"{width} x {height} px")


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
        fns = {name: functools.partial(fn, backend, **native) for name, _, fn in calls}
        times = interleaved(fns, sizes.repeats)
        for name, smallest, fn in calls:
            row = Row(5, backend, name, reference, unit="bytes")
            elapsed = times[name]
            if isinstance(elapsed, str):
                row.skipped = elapsed
            else:
                mask = fn(backend, **native)
                shape = tuple(mask.shape)
                row.value, row.ref_value = _nbytes(mask), full
                row.passed = shape == smallest
                row.note = f"shape {shape}, {fmt(elapsed, 's')}"
                if not row.passed:
                    row.note += f"; smallest is {smallest}"
            rows.append(row)
        if backend == "numpy":
            rows.append(png_row(t, min(sizes.repeats, 3)))
    return rows
