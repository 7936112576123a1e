"""Draw a mask in the terminal (and with --png as an image): refmask show causal --q-len 8 --kv-len 12.

KIND is one of causal, sliding_window, chunked, padding, segment, prefix_lm, or several joined by
"+" (their and, e.g. causal+padding). Rows are queries i, columns keys j; a filled block means
"query i may attend to key j" (the refmask convention, True = attend). Batched masks (padding,
segment, prefix_lm) draw one grid per batch item. Examples:

  refmask show causal --q-len 8 --kv-len 12 --align bottom_right
  refmask show sliding_window --q-len 16 --window 3,0
  refmask show segment --segments 0,0,1,1,1,2
  refmask show padding --lengths 4,1,6,3 --max-len 6
  refmask show chunked --q-len 10 --chunk-size 4
  refmask show prefix_lm --prefix-lengths 2,4 --q-len 6
  refmask show causal+padding --lengths 5,3 --max-len 5 --png mask.png
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

from . import oracle

KINDS = ("causal", "sliding_window", "chunked", "padding", "segment", "prefix_lm")

CELLS = {"unicode": ("██", " ·"), "ascii": ("##", " .")}


class ShowError(ValueError):
    """Bad or missing options for the requested kind."""


def _ints(text: str | None, name: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError as err:
        raise ShowError(f"{name} must be comma-separated integers; got {text!r}") from err


def _segments(text: str | None) -> np.ndarray | None:
    """"0,0,1,1" -> [[0,0,1,1]]; batch items separated by ";" or "/": "0,0,1;0,1,1"."""
    if text is None:
        return None
    rows = [_ints(r, "--segments") or [] for r in text.replace("/", ";").split(";") if r.strip()]
    if len({len(r) for r in rows}) != 1:
        raise ShowError("every batch item of --segments must have the same length")
    return np.array(rows, dtype=np.int64)


def _window(text: str | None) -> int | tuple[int, int]:
    values = _ints(text, "--window")
    if not values or len(values) > 2:
        raise ShowError("sliding_window needs --window W or --window LEFT,RIGHT (e.g. --window 3,0)")
    return values[0] if len(values) == 1 else (values[0], values[1])


def parse_kinds(kind: str) -> list[str]:
    parts = [p.strip().replace("-", "_") for p in kind.split("+")]
    for p in parts:
        if p not in KINDS:
            raise ShowError(f"unknown mask kind {p!r}; choose from {', '.join(KINDS)} (join several with '+')")
    return parts


def build_mask(args: argparse.Namespace) -> tuple[np.ndarray, str]:
    """The mask the options describe, (T, S) or (B, 1, T, S), and a one-line description."""
    kinds = parse_kinds(args.kind)
    segments = _segments(args.segments)
    lengths = _ints(args.lengths, "--lengths")
    prefix = _ints(args.prefix_lengths, "--prefix-lengths")
    if "segment" in kinds and segments is None:
        raise ShowError("segment needs --segments, e.g. --segments 0,0,1,1,1,2")
    if "padding" in kinds and lengths is None:
        raise ShowError("padding needs --lengths, e.g. --lengths 4,1,6,3 --max-len 6")
    if "prefix_lm" in kinds and prefix is None:
        raise ShowError("prefix_lm needs --prefix-lengths, e.g. --prefix-lengths 2,4")
    if "chunked" in kinds and args.chunk_size is None:
        raise ShowError("chunked needs --chunk-size")

    # Lengths: explicit, else from the data (segments, padding), else 8.
    default = 8
    if segments is not None:
        default = segments.shape[1]
    elif args.max_len is not None:
        default = args.max_len
    elif lengths is not None:
        default = max(lengths)
    t = args.q_len if args.q_len is not None else default
    s = args.kv_len if args.kv_len is not None else (args.max_len if args.max_len is not None else t)
    if segments is not None and not (t == s == segments.shape[1]):
        raise ShowError(f"segment masks are self-attention: --q-len and --kv-len must equal the "
                        f"{segments.shape[1]} segment ids")

    masks: list[Any] = []
    described = []
    for kind in kinds:
        if kind == "causal":
            masks.append(oracle.causal_mask(t, s, align=args.align, offset=args.offset))
            described.append(f"causal align={args.align}" + (f" offset={args.offset}" if args.offset else ""))
        elif kind == "sliding_window":
            window = _window(args.window)
            masks.append(oracle.sliding_window_mask(t, s, window=window, align=args.align, offset=args.offset))
            described.append(f"sliding_window window={window}")
        elif kind == "chunked":
            masks.append(oracle.chunked_mask(t, s, chunk_size=args.chunk_size, align=args.align, offset=args.offset))
            described.append(f"chunked chunk_size={args.chunk_size}")
        elif kind == "padding":
            kv_valid = oracle.padding_mask(np.array(lengths), s, side=args.side)
            q_valid = oracle.padding_mask(np.array(lengths), t, side=args.side) if args.pad_queries else None
            masks.append(oracle.attention_padding_mask(kv_valid, q_valid))
            queries = " (queries too)" if args.pad_queries else ""
            described.append(f"padding lengths={lengths} side={args.side}{queries}")
        elif kind == "segment":
            masks.append(oracle.segment_mask(segments, pad_id=args.pad_id))
            described.append("segment" + (f" pad_id={args.pad_id}" if args.pad_id is not None else ""))
        elif kind == "prefix_lm":
            masks.append(oracle.prefix_lm_mask(np.array(prefix), t, s, align=args.align))
            described.append(f"prefix_lm prefix_lengths={prefix}")
    mask = oracle.and_masks(*masks)
    assert mask is not None  # parse_kinds gives at least one kind
    mask = np.broadcast_to(mask, (mask.shape[0], 1, t, s) if mask.ndim == 4 else (t, s))
    return mask, f"{' + '.join(described)}; T={t} queries, S={s} keys"


def render_grid(mask: np.ndarray, *, ascii: bool = False) -> str:
    """One (T, S) mask as text: rows = queries i, columns = keys j, a block where i may attend j."""
    kept, masked = CELLS["ascii" if ascii else "unicode"]
    t, s = mask.shape
    digits = len(str(max(t - 1, 0)))
    arrow_down, arrow_right = ("v", "->") if ascii else ("↓", "→")
    margin = " " * (6 + digits + 1)
    lines = [margin + f"key j {arrow_right}"]
    if s > 10:  # a tens row above the units row, so every column keeps its 2 characters
        lines.append(margin + "".join(f"{(j // 10) % 10:>2d}" if j >= 10 else "  " for j in range(s)))
    lines.append(margin + "".join(f"{j % 10:>2d}" for j in range(s)))
    for i in range(t):
        name = "query" if i == 0 else (f"i {arrow_down}" if i == 1 else "")
        row = "".join(kept if mask[i, j] else masked for j in range(s))
        empty = "  (no key)" if s and not mask[i].any() else ""
        lines.append(f"{name:<6}{i:>{digits}} {row}{empty}")
    return "\n".join(lines)


def render(mask: np.ndarray, description: str, *, ascii: bool = False) -> str:
    """The whole picture: a title, one grid per batch item, the legend."""
    kept, masked = CELLS["ascii" if ascii else "unicode"]
    out = [description, ""]
    if mask.ndim == 2:
        out.append(render_grid(mask, ascii=ascii))
    else:
        for b in range(mask.shape[0]):
            out += [f"batch {b}:", render_grid(mask[b, 0], ascii=ascii), ""]
        out.pop()
    out += ["", f"{kept.strip()} query i may attend to key j   {masked.strip()} masked"]
    return "\n".join(out) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("kind", metavar="KIND", help=f"{', '.join(KINDS)}, or several joined by '+'")
    parser.add_argument("--q-len", type=int, help="T, the number of queries (default: from the data, else 8)")
    parser.add_argument("--kv-len", type=int, help="S, the number of keys (default: --max-len, else T)")
    parser.add_argument("--align", choices=("top_left", "bottom_right"), default="top_left",
                        help="causal / window / chunk / prefix alignment when T != S")
    parser.add_argument("--offset", type=int, default=0, help="shift of the query positions (causal, window, chunked)")
    parser.add_argument("--window", metavar="W|LEFT,RIGHT", help="sliding_window: keys i-LEFT .. i+RIGHT")
    parser.add_argument("--chunk-size", type=int, help="chunked: keys per chunk")
    parser.add_argument("--lengths", metavar="L1,L2,...", help="padding: valid tokens per batch item")
    parser.add_argument("--max-len", type=int, help="padding: the padded length (default: max of --lengths)")
    parser.add_argument("--side", choices=("right", "left"), default="right", help="padding side")
    parser.add_argument("--pad-queries", action="store_true", help="padding: padded queries attend nowhere too")
    parser.add_argument("--segments", metavar="IDS", help="segment: ids, batch items separated by ';' (0,0,1;0,1,1)")
    parser.add_argument("--pad-id", type=int, help="segment: the id of padding tokens")
    parser.add_argument("--prefix-lengths", metavar="P1,P2,...", help="prefix_lm: prefix length per batch item")
    parser.add_argument("--ascii", action="store_true", help="plain ASCII instead of block characters")
    parser.add_argument("--png", metavar="FILE", help="also write the picture as a PNG (needs matplotlib)")
    parser.add_argument("--title", help="title of the PNG (default: the mask's description)")


def run(args: argparse.Namespace) -> int:
    try:
        mask, description = build_mask(args)
    except (ShowError, ValueError, TypeError) as err:
        print(f"refmask show: {err}", file=sys.stderr)
        return 2
    sys.stdout.write(render(mask, description, ascii=args.ascii))
    if args.png:
        from . import _plot

        try:
            _plot.save_png(mask, args.png, title=args.title or description)
        except ImportError as err:
            print(f"refmask show: {err}", file=sys.stderr)
            return 1
        print(f"wrote {args.png}", file=sys.stderr)
    return 0
