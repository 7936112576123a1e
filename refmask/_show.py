"""refmask.show: draw a mask a user already has (or where two masks disagree) as text or as a picture.

The text is a grid, rows = queries i, columns = keys j. A mask too wide for the terminal is
aggregated: each character then stands for a block of R queries x C keys (C chosen so the grid fits,
R = 2C so a block looks square in a terminal) and says whether every entry of the block may attend
(full), some (partial) or none (empty). Rows with no kept key are noted after the row. Pictures go
through refmask._plot (matplotlib, imported only when a picture is asked for). NumPy only.
"""

from __future__ import annotations

import math
import os
import shutil
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _arrays
from . import _validate as check

FORMATS = ("text", "figure")
MIN_WIDTH = 20  # columns: a row label, a few cells and a note


@dataclass(frozen=True)
class Palette:
    """How a grid of categories 0..K-1 (one per entry) is drawn.

    cells: the 2-character glyph of each category, one entry per character pair (full resolution).
    blocks: the 1-character glyph of each set of categories a block holds, indexed by the set as a
      bitmask (category k present: bit k), so 2**K entries (entry 0, an empty block, is unused).
    legend, block_legend: what the glyphs mean, at full resolution and aggregated.
    """

    cells: tuple[str, ...]
    blocks: tuple[str, ...]
    legend: str
    block_legend: str


def mask_palette(ascii: bool) -> Palette:
    """Categories 0 = masked, 1 = may attend."""
    kept, masked, some = ("#", ".", "+") if ascii else ("█", "·", "▒")
    return Palette((f" {masked}", kept * 2), ("", masked, kept, some),
                   f"{kept * 2} query i may attend to key j   {masked} masked",
                   f"{kept} every entry may attend   {some} some   {masked} none")


def diff_palette(labels: tuple[str, str], ascii: bool) -> Palette:
    """Categories 0 = both masked, 1 = both attend, 2 = only labels[0] attends, 3 = only labels[1]."""
    plain = mask_palette(ascii)
    both_kinds = "*" if ascii else "±"
    blocks = []
    for bits in range(16):
        if bits & 12 == 12:
            blocks.append(both_kinds)
        elif bits & 4:
            blocks.append("+")
        elif bits & 8:
            blocks.append("-")
        else:
            blocks.append(plain.blocks[bits & 3])
    a, b = labels
    kept, masked = plain.cells[1], plain.cells[0].strip()
    return Palette((plain.cells[0], kept, "++", "--"), tuple(blocks),
                   f"{kept} both attend   {masked} both masked   ++ only {a} attends   -- only {b} attends",
                   f"+ only {a} attends somewhere in the block   - only {b}   {both_kinds} both kinds   "
                   f"{plain.blocks[2]} / {plain.blocks[3]} / {plain.blocks[1]} they agree: all / some / none attend")


@dataclass(frozen=True)
class Layout:
    """Rows and columns of entries per character (r, c), and characters per grid cell (2 at full resolution)."""

    r: int
    c: int
    cell_width: int

    @property
    def aggregated(self) -> bool:
        return self.cell_width == 1


def terminal_width() -> int:
    """The terminal's width in columns (COLUMNS, else the terminal of stdout, else 80)."""
    return shutil.get_terminal_size((80, 24)).columns


def _margin(t: int) -> int:
    """Characters before the first cell of a row: "query " (6), the row number, a space."""
    return 6 + len(str(max(t - 1, 0))) + 1


def fit(t: int, s: int, width: int | None, note_width: int, bound_width: int) -> Layout:
    """The layout of a (T, S) grid in `width` columns: full resolution (2 characters per entry) when
    it fits with its widest note (`note_width`), else one character per block of entries, fitting
    with `bound_width` (a bound on the widest note of any block)."""
    margin = _margin(t)
    if width is None or margin + 2 * s + note_width <= width:
        return Layout(1, 1, 2)
    # Notes take what the grid leaves, but never more than half the row (a longer note is cut).
    available = max(width - margin - bound_width, (width - margin) // 2, 8)
    c = max(1, math.ceil(s / available))
    return Layout(1 if c == 1 else 2 * c, c, 1)


def presence(cats: np.ndarray, r: int, c: int, k: int) -> np.ndarray:
    """(ceil(T/r), ceil(S/c)) uint8: bit j set where category j occurs in the block of r x c entries."""
    t, s = cats.shape
    bits = np.zeros((math.ceil(t / r), math.ceil(s / c)), np.uint8)
    if t == 0 or s == 0:
        return bits
    starts_r, starts_c = np.arange(0, t, r), np.arange(0, s, c)
    for j in range(k):
        hit = cats == j
        if not hit.any():
            continue
        if r > 1:
            hit = np.logical_or.reduceat(hit, starts_r, axis=0)
        if c > 1:
            hit = np.logical_or.reduceat(hit, starts_c, axis=1)
        bits |= hit.astype(np.uint8) << j
    return bits


def row_notes(empty: Sequence[np.ndarray], labels: Sequence[str], r: int) -> list[str]:
    """The note after each block of r rows: its rows with no kept key.

    empty: one (T,) bool array (rows with no kept key) per mask drawn: one, or two for a diff
    (labels name them). "(no key)" for a row (or a block of rows) with none, "(k no key)" for a
    block where k rows have none; in a diff, rows with no key in only one mask say which.
    """
    if not empty or empty[0].size == 0:
        return []
    t = empty[0].shape[0]
    starts = np.arange(0, t, r)
    sizes = np.diff(np.append(starts, t))

    def counts(x: np.ndarray) -> np.ndarray:
        return np.add.reduceat(x.astype(np.int64), starts) if r > 1 else x.astype(np.int64)

    if len(empty) == 1:
        groups = [(counts(empty[0]), "no key")]
    else:
        a, b = empty
        groups = [(counts(a & b), "no key"), (counts(a & ~b), f"no key in {labels[0]} only"),
                  (counts(~a & b), f"no key in {labels[1]} only")]
    notes = []
    for i, n in enumerate(sizes):
        parts = [words if (k == n and len(groups) == 1) or n == 1 else f"{k} {words}"
                 for count, words in groups if (k := int(count[i]))]
        notes.append(f"  ({'; '.join(parts)})" if parts else "")
    return notes


def _tick_row(n_chars: int, c: int) -> str:
    """Index labels every 10 characters: the first entry of the block under each label."""
    row = [" "] * n_chars
    for p in range(0, n_chars, 10):
        label = str(p * c)
        if p + len(label) <= n_chars:
            row[p:p + len(label)] = label
    return "".join(row).rstrip()


def grid_lines(cats: np.ndarray, palette: Palette, layout: Layout, notes: Sequence[str], *,
               rows: tuple[str, str] = ("query", "i"), cols: str = "key j", ascii: bool = False,
               width: int | None = None) -> list[str]:
    """One (T, S) grid of categories as text lines, with axis labels and the notes after each row (a note
    that does not fit in `width` is cut)."""
    t, s = cats.shape
    digits = len(str(max(t - 1, 0)))
    arrow_down, arrow_right = ("v", "->") if ascii else ("↓", "→")
    margin = " " * _margin(t)
    header = [f"{cols} {arrow_right}"]
    if layout.aggregated:
        bits = presence(cats, layout.r, layout.c, len(palette.cells))
        glyphs = np.array(palette.blocks)[bits]
        header.append(_tick_row(bits.shape[1], layout.c))
        texts = ["".join(row) for row in glyphs]
    else:
        if s > 10:  # a tens row above the units row, so every column keeps its 2 characters
            header.append("".join(f"{(j // 10) % 10:>2d}" if j >= 10 else "  " for j in range(s)))
        header.append("".join(f"{j % 10:>2d}" for j in range(s)))
        table = np.array(palette.cells)
        texts = ["".join(table[row]) for row in cats]
    lines = [(margin + h).rstrip() for h in header]
    for n, text in enumerate(texts):
        name = rows[0] if n == 0 else (f"{rows[1]} {arrow_down}" if n == 1 else "")
        note = notes[n] if n < len(notes) else ""
        line = f"{name:<6}{n * layout.r:>{digits}} {text}{note}".rstrip()
        if width is not None and len(line) > width and note:
            line = line[:max(width - 1, len(line) - len(note))] + "…"
        lines.append(line)
    return lines


def draw_panels(panels: Sequence[tuple[str, np.ndarray, Sequence[np.ndarray]]], palette: Palette, *,
                width: int | None, labels: Sequence[str] = (), rows: tuple[str, str] = ("query", "i"),
                cols: str = "key j", units: tuple[str, str] = ("queries", "keys"), ascii: bool = False) -> list[str]:
    """Grids of one shape, one per panel (label, (T, S) categories, rows with no kept key per mask),
    in one shared layout, followed by the legend; lines at most `width` columns (None: no limit)."""
    t, s = panels[0][1].shape
    full_notes = [row_notes(empty, labels, 1) for _, _, empty in panels]
    bound_notes = [row_notes(empty, labels, max(t, 1)) for _, _, empty in panels]
    widest = max((len(n) for notes in full_notes for n in notes), default=0)
    bound = max((len(n) for notes in bound_notes for n in notes), default=0)
    layout = fit(t, s, width, widest, bound)
    out: list[str] = []
    for label, cats, empty in panels:
        notes = row_notes(empty, labels, layout.r) if layout.aggregated else row_notes(empty, labels, 1)
        if label:
            out += wrap(f"{label}:", width)
        out += grid_lines(cats, palette, layout, notes, rows=rows, cols=cols, ascii=ascii, width=width)
        out.append("")
    out.pop()
    legend = palette.legend
    if layout.aggregated:
        block = (layout.r, layout.c) != (1, 1)
        unit = f"each character: {layout.r} {units[0]} x {layout.c} {units[1]}; " if block else ""
        legend = unit + palette.block_legend
    out += ["", *wrap(legend, width)]
    return out


def wrap(text: str, width: int | None, indent: str = "") -> list[str]:
    """`text` as lines of at most `width` columns (one line when width is None)."""
    if width is None:
        return [text]
    return textwrap.wrap(text, width, subsequent_indent=indent, break_on_hyphens=False) or [""]


# ----------------------------------------------------------------------------------------------
# the public function


def _mask_arg(name: str, x: Any) -> np.ndarray:
    m = np.asarray(_arrays.bool_mask(_arrays.NUMPY, name, x))
    if m.ndim < 2:
        raise ValueError(
            f"{name} must have at least 2 dimensions (..., T, S): queries by keys; got shape {m.shape}"
            + (" (a (S,) key validity array draws as x[None, :])" if m.ndim == 1 else "")
        )
    return m


def _labels_arg(labels: object) -> tuple[str, str]:
    if (not isinstance(labels, tuple | list) or len(labels) != 2
            or not all(isinstance(x, str) for x in labels)):
        raise TypeError(f"labels must be a pair of strings (mask's, compare_to's); got {labels!r}")
    if not all(labels) or labels[0] == labels[1]:
        raise ValueError(f"labels must be two different non-empty strings; got {tuple(labels)!r}")
    return labels[0], labels[1]


def _batch_arg(batch: object, lead: tuple[int, ...]) -> tuple[int, ...]:
    """`batch` (an int or a tuple of ints) as an index into the leading axes `lead`, from 0."""
    if batch is None:
        return ()
    index = batch if isinstance(batch, tuple) else (batch,)
    values = tuple(check.integer("batch", b) for b in index)
    if len(values) > len(lead):
        raise ValueError(f"batch indexes the leading axes {lead} of the mask (..., T, S); got {batch!r}, "
                         f"{len(values)} indices for {len(lead)} axes")
    for v, n in zip(values, lead, strict=False):
        if not 0 <= v < n:
            raise ValueError(f"batch {batch!r} is out of range for the leading axes {lead} of the mask")
    return values


def png_arg(png: object) -> str | None:
    if png is None:
        return None
    if not isinstance(png, str | os.PathLike):
        raise TypeError(f"png must be a file path (str or os.PathLike); got {type(png).__name__} {png!r}")
    path = os.fspath(png)
    if not isinstance(path, str) or not path.lower().endswith(".png"):
        raise ValueError(f"png must name a .png file (the picture is written as PNG only); got {path!r}")
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise ValueError(f"png: the folder {folder!r} does not exist (got png={path!r})")
    return path


def _width_arg(width: object) -> int:
    if width is None:
        return terminal_width()
    return check.integer("width", width, minimum=MIN_WIDTH)


def panel_label(index: tuple[int, ...], shape: tuple[int, ...]) -> str:
    """How a grid of a batched mask is named: by batch and head for (B, H, T, S), else by index."""
    if len(shape) == 4:
        return f"batch {index[0]}" + (f", head {index[1]}" if shape[1] > 1 else "")
    if len(shape) == 3:
        return f"head {index[0]}"
    return "mask[" + ", ".join(map(str, index)) + "]"


def _diff_summary(a: np.ndarray, b: np.ndarray, labels: tuple[str, str]) -> str:
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    total = a.size
    if only_a + only_b == 0:
        return f"{labels[0]} and {labels[1]} agree at all {total} entries"
    return (f"{labels[0]} and {labels[1]} differ at {only_a + only_b} of {total} entries: "
            f"{only_a} only {labels[0]} attends (++), {only_b} only {labels[1]} attends (--)")


def show(mask: Any, *, compare_to: Any = None, labels: Sequence[str] = ("mask", "compare_to"), batch: Any = None,
         title: str | None = None, format: str = "text", png: Any = None, width: int | None = None,
         ascii: bool = False) -> Any:
    """Draw a boolean mask (True = may attend, (..., T, S)), or where it and `compare_to` disagree.

    mask, compare_to: boolean arrays (NumPy, jax, torch, or anything numpy.asarray reads) of at
      least 2 dimensions; with compare_to, the two are broadcast together and every entry where
      they differ is drawn: "++" where only mask attends, "--" where only compare_to does.
    labels: the names of mask and compare_to in the legend and the notes (e.g. ("torch", "refmask")).
    batch: an int or a tuple of ints indexing the leading axes (batch, head, ...): draw only that
      part; by default every leading index gets a grid (or a panel of the picture) of its own.
    title: the first line of the text and the picture's title (default: the shape and T, S).
    format: "text" returns the drawing as a str; "figure" returns a matplotlib Figure (needs
      matplotlib: pip install "refmask[plot]").
    png: also write the picture to this .png file (any format).
    width: the text's width in columns (default: the terminal's); a grid wider than that is
      aggregated, each character standing for a block of entries: full (every entry attends),
      partial or empty.
    ascii: plain ASCII characters instead of block characters.
    Rows with no kept key are noted "(no key)" after the row (and marked in the picture).
    """
    a = _mask_arg("mask", mask)
    check.choice("format", format, FORMATS)
    check.flag("ascii", ascii)
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title must be a str or None; got {type(title).__name__} {title!r}")
    names = _labels_arg(labels)
    path = png_arg(png)
    cols = _width_arg(width) if format == "text" else None
    b = None
    if compare_to is not None:
        b = _mask_arg("compare_to", compare_to)
        try:
            shape = np.broadcast_shapes(a.shape, b.shape)
        except ValueError:
            raise ValueError(f"mask of shape {a.shape} and compare_to of shape {b.shape} do not broadcast "
                             "together") from None
        a, b = np.broadcast_to(a, shape), np.broadcast_to(b, shape)
    shape = a.shape
    chosen = _batch_arg(batch, shape[:-2])
    a = a[chosen]
    b = None if b is None else b[chosen]
    t, s = shape[-2:]
    if title is None:
        what = f"{names[0]} against {names[1]}" if b is not None else "mask"
        title = f"{what}, shape {shape}" + (f", batch {batch!r}" if chosen else "") + f": T={t} queries, S={s} keys"
    panels = []
    for rest in np.ndindex(a.shape[:-2]):
        label = panel_label(chosen + rest, shape) if len(shape) > 2 else ""
        x = a[rest]
        if b is None:
            panels.append((label, x.astype(np.int8), [~x.any(axis=-1)]))
        else:
            y = b[rest]
            cats = np.where(x == y, x.astype(np.int8), np.where(x, np.int8(2), np.int8(3)))
            panels.append((label, cats, [~x.any(axis=-1), ~y.any(axis=-1)]))
    figure = None
    if format == "figure" or path is not None:
        from . import _plot

        if t == 0 or s == 0:
            raise ValueError(f"mask of shape {shape} has no entries to draw as a picture (T={t}, S={s})")
        if len(panels) > _plot.MAX_PANELS:
            raise ValueError(f"a picture holds at most {_plot.MAX_PANELS} grids; this mask has {len(panels)} "
                             f"(leading axes {a.shape[:-2]}): choose some with batch=")

        figure = _plot.figure(panels, "mask" if b is None else "diff", names, title)
        if path is not None:
            _plot.save(figure, path)
    if format == "figure":
        return figure
    palette = mask_palette(ascii) if b is None else diff_palette(names, ascii)
    lines = [*wrap(title, cols)]
    if b is not None:
        lines += wrap(_diff_summary(a, b, names), cols)
    lines.append("")
    lines += draw_panels(panels, palette, width=cols, labels=names, ascii=ascii)
    return "\n".join(lines) + "\n"
