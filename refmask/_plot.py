"""Masks as pictures (matplotlib, the optional extra "plot"; imported only when a picture is asked for).

Each grid is one image (imshow of an RGB array, never one patch per entry), so drawing costs the same
at 8 x 8 and at 4096 x 4096: a grid larger than its panel's pixels is first reduced to blocks, as the
text is (refmask._show.presence), and each block is coloured full, partial or empty. Small grids keep a
cell look: a tick per entry and white lines between entries. Rows with no kept key are marked by a red
bar right of the grid. Draws with matplotlib's object API (Figure + the Agg canvas), never pyplot, so it
needs no display, leaves no global state behind and works the same in a test, a notebook or a terminal.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._backends import install_hint
from ._show import presence

KEPT_COLOR = "#1f4e99"  # query i may attend to key j
MASKED_COLOR = "#f2f2f2"
PARTIAL_COLOR = "#9db3d9"  # a block where some entries may attend
ONLY_A_COLOR = "#e8871e"  # a diff: only the first mask attends
ONLY_B_COLOR = "#17a589"  # a diff: only the second
BOTH_KINDS_COLOR = "#222222"  # a diff block holding both kinds of disagreement
NO_KEY_COLOR = "#d62728"  # rows with no kept key

DPI = 110
CELL_INCHES = 0.32  # per entry, for grids of at most SMALL entries a side
SMALL = 32
MAX_PANELS = 64


def _matplotlib() -> Any:
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(f"drawing a picture needs matplotlib ({err}): {install_hint('plot')}") from err
    return Figure, FigureCanvasAgg


def _rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def _colors(kind: str) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """The colour of each set of categories (indexed by bitmask, as Palette.blocks) and the legend."""
    plain = [MASKED_COLOR, MASKED_COLOR, KEPT_COLOR, PARTIAL_COLOR]
    if kind == "mask":
        table = plain
        legend = [(KEPT_COLOR, "may attend"), (MASKED_COLOR, "masked"), (PARTIAL_COLOR, "block: some may attend")]
    else:
        table = [BOTH_KINDS_COLOR if bits & 12 == 12 else ONLY_A_COLOR if bits & 4 else ONLY_B_COLOR if bits & 8
                 else plain[bits & 3] for bits in range(16)]
        legend = [(KEPT_COLOR, "both attend"), (MASKED_COLOR, "both masked"), (ONLY_A_COLOR, "only {a} attends"),
                  (ONLY_B_COLOR, "only {b} attends"), (PARTIAL_COLOR, "block: they agree, some attend"),
                  (BOTH_KINDS_COLOR, "block: both kinds differ")]
    return np.array([_rgb(c) for c in table], np.uint8), legend


def _panel_inches(t: int, s: int, columns: int) -> tuple[float, float]:
    """(width, height) of one grid in inches: CELL_INCHES per entry when small, else a fixed size."""
    if max(t, s) <= SMALL:
        return max(1.6, s * CELL_INCHES), max(1.2, t * CELL_INCHES)
    side = 7.0 if columns == 1 else max(3.0, 14.0 / columns)
    if s >= t:
        return side, max(1.5, side * t / s)
    return max(1.5, side * s / t), side


def figure(panels: Sequence[tuple[str, np.ndarray, Sequence[np.ndarray]]], kind: str, labels: Sequence[str],
           title: str) -> Any:
    """A matplotlib Figure of the grids `panels` ((label, (T, S) categories, rows with no kept key per
    mask), as refmask._show builds them), `kind` "mask" or "diff"."""
    Figure, FigureCanvasAgg = _matplotlib()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    t, s = panels[0][1].shape
    columns = min(len(panels), 4)
    rows = math.ceil(len(panels) / columns)
    width, height = _panel_inches(t, s, columns)
    small = max(t, s) <= SMALL
    colors, legend = _colors(kind)
    title = textwrap.fill(title, max(40, int(columns * (width + 1.1) * 13)))
    fig = Figure(figsize=(columns * (width + 1.1), rows * (height + 0.9) + 0.5 + 0.2 * title.count("\n")),
                 dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    any_empty = False
    for ax, (label, cats, empty) in zip(axes, panels, strict=False):
        r = 1 if small else max(1, math.ceil(t / (height * DPI)))
        c = 1 if small else max(1, math.ceil(s / (width * DPI)))
        bits = presence(cats, r, c, 2 if kind == "mask" else 4)
        extent = (-0.5, bits.shape[1] * c - 0.5, bits.shape[0] * r - 0.5, -0.5)
        elongated = max(t, s) > 4 * max(min(t, s), 1)
        ax.imshow(colors[bits], extent=extent, interpolation="nearest", aspect="auto" if elongated else "equal")
        ax.set_xlim(-0.5, s - 0.5)
        ax.set_ylim(t - 0.5, -0.5)
        ax.xaxis.tick_top()
        ax.xaxis.set_label_position("top")
        ax.set_xlabel("key j", fontsize=9)
        ax.set_ylabel("query i", fontsize=9)
        ax.tick_params(length=0 if small else 3, labelsize=8)
        if small:
            ax.set_xticks(range(s))
            ax.set_yticks(range(t))
            ax.set_xticks(np.arange(-0.5, s, 1), minor=True)
            ax.set_yticks(np.arange(-0.5, t, 1), minor=True)
            ax.grid(which="minor", color="white", linewidth=1.0)
            ax.tick_params(which="minor", length=0)
        if label:
            ax.text(0.5, -0.02, label, fontsize=9, ha="center", va="top", transform=ax.transAxes)
        no_key = empty[0] & empty[1] if kind == "diff" else empty[0]
        any_empty |= bool(no_key.any())
        _mark_rows(ax, no_key, r, t)
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    names = dict(zip("ab", labels, strict=False))
    handles: list[Any] = [Patch(facecolor=color, edgecolor="#999999", label=text.format(**names))
                          for color, text in legend if not small or "block" not in text]
    if any_empty:
        handles.append(Line2D([], [], color=NO_KEY_COLOR, linewidth=4, label="row with no kept key"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles) if len(handles) <= 4 else 3,
               fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _mark_rows(ax: Any, no_key: np.ndarray, r: int, t: int) -> None:
    """A red bar right of the grid beside each block of r rows that holds a row with no kept key."""
    if not no_key.any():
        return
    blocks = np.logical_or.reduceat(no_key, np.arange(0, no_key.size, r)) if r > 1 else no_key
    strip = np.full((blocks.size, 1, 4), 0, np.uint8)
    strip[blocks] = (*_rgb(NO_KEY_COLOR), 255)
    bar = ax.inset_axes((1.015, 0.0, 0.025, 1.0))  # follows the grid's box, whatever its aspect
    bar.imshow(strip, extent=(0, 1, blocks.size * r - 0.5, -0.5), interpolation="nearest", aspect="auto")
    bar.set_ylim(t - 0.5, -0.5)
    bar.set_axis_off()


def save(fig: Any, path: str) -> None:
    """Write the figure as a PNG at `path`."""
    fig.savefig(path, format="png")
