"""Masks as PNG pictures (matplotlib, the optional extra "plot"; imported only when a PNG is asked for).

Draws with matplotlib's object API (Figure + the Agg canvas), never pyplot, so it needs no display,
leaves no global state behind and works the same in a test, a notebook or a terminal.
"""

from __future__ import annotations

import textwrap
from typing import Any

import numpy as np

from ._backends import install_hint

KEPT_COLOR = "#1f4e99"  # query i may attend to key j
MASKED_COLOR = "#f2f2f2"


def _matplotlib() -> Any:
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.colors import ListedColormap
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(f"drawing a PNG needs matplotlib ({err}): {install_hint('plot')}") from err
    return Figure, FigureCanvasAgg, ListedColormap


def save_png(mask: np.ndarray, path: str, *, title: str = "", dpi: int = 110) -> None:
    """Write `mask` ((T, S), or (B, 1, T, S): one panel per batch item) as a PNG at `path`."""
    Figure, FigureCanvasAgg, ListedColormap = _matplotlib()
    mask = np.asarray(mask, dtype=bool)
    panels = [mask] if mask.ndim == 2 else [mask[b, 0] for b in range(mask.shape[0])]
    t, s = panels[0].shape
    cell = 0.32  # inches per mask entry
    width = max(2.6, s * cell + 1.0)
    height = max(2.2, t * cell + 1.2)
    fig_width = width * len(panels)
    title = textwrap.fill(title, max(28, int(fig_width * 11)))
    fig = Figure(figsize=(fig_width, height + 0.25 * (title.count("\n") + 1) * bool(title)), dpi=dpi)
    FigureCanvasAgg(fig)
    cmap = ListedColormap([MASKED_COLOR, KEPT_COLOR])
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for b, (ax, m) in enumerate(zip(axes, panels, strict=True)):
        ax.imshow(m.astype(np.int8), cmap=cmap, vmin=0, vmax=1, interpolation="nearest", aspect="equal")
        ax.set_xticks(range(s))
        ax.set_yticks(range(t))
        ax.tick_params(length=0, labelsize=8)
        ax.xaxis.tick_top()
        ax.xaxis.set_label_position("top")
        ax.set_xlabel("key j", fontsize=9)
        ax.set_ylabel("query i", fontsize=9)
        ax.set_xticks(np.arange(-0.5, s, 1), minor=True)
        ax.set_yticks(np.arange(-0.5, t, 1), minor=True)
        ax.grid(which="minor", color="white", linewidth=1.0)
        ax.tick_params(which="minor", length=0)
        if len(panels) > 1:
            ax.set_title(f"batch {b}", fontsize=9, y=-0.12)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png")
