"""Draw a mask in the terminal (and with --png as an image): refmask show causal --q-len 8 --kv-len 12.

KIND is one of causal, sliding_window, chunked, padding, segment, prefix_lm, or several joined by
"+" (their and, e.g. causal+padding). Rows are queries i, columns keys j; a filled block means
"query i may attend to key j" (the refmask convention, True = attend). Batched masks (padding,
segment, prefix_lm) draw one grid per batch item. A mask wider than the terminal (or --width) is
aggregated: each character then stands for a block of queries x keys, full (every entry may attend),
partial or empty. An option the kinds do not use is refused. --png writes PNG only (FILE must end in
.png). Examples:

  refmask show causal --q-len 8 --kv-len 12 --align bottom_right
  refmask show sliding_window --q-len 16 --window 3,0
  refmask show segment --segments 0,0,1,1,1,2
  refmask show padding --lengths 4,1,6,3 --max-len 6
  refmask show chunked --q-len 10 --chunk-size 4
  refmask show prefix_lm --prefix-lengths 2,4 --q-len 6
  refmask show causal+padding --q-len 4 --lengths 5,3 --png mask.png
  refmask show sliding_window --q-len 4096 --window 256,0 --png window.png

From Python, refmask.show(mask) draws any mask you have, and refmask.show(a, compare_to=b) where two
masks disagree.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

from . import _show, oracle

KINDS = ("causal", "sliding_window", "chunked", "padding", "segment", "prefix_lm")

# The kinds each structure option applies to; any other kind refuses it.
OPTION_KINDS = {
    "align": ("causal", "sliding_window", "chunked", "prefix_lm"),
    "offset": ("causal", "sliding_window", "chunked"),
    "window": ("sliding_window",),
    "chunk_size": ("chunked",),
    "lengths": ("padding",),
    "max_len": ("padding",),
    "side": ("padding",),
    "pad_queries": ("padding",),
    "segments": ("segment",),
    "pad_id": ("segment",),
    "prefix_lengths": ("prefix_lm",),
}


class ShowError(ValueError):
    """Bad or missing options for the requested kind."""


def _ints(text: str | None, name: str) -> list[int] | None:
    """"4,1,6" -> [4, 1, 6]."""
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
    """"3" -> 3, "3,0" -> (3, 0)."""
    values = _ints(text, "--window")
    if not values or len(values) > 2:
        raise ShowError("sliding_window needs --window W or --window LEFT,RIGHT (e.g. --window 3,0)")
    return values[0] if len(values) == 1 else (values[0], values[1])


def parse_kinds(kind: str) -> list[str]:
    """"causal+sliding-window" -> ["causal", "sliding_window"]."""
    parts = [p.strip().replace("-", "_") for p in kind.split("+")]
    for p in parts:
        if p not in KINDS:
            raise ShowError(f"unknown mask kind {p!r}; choose from {', '.join(KINDS)} (join several with '+')")
    return parts


def _refuse_unused(args: argparse.Namespace, kinds: list[str]) -> None:
    """An option given that none of the kinds uses is an error, not silently ignored."""
    for option, users in OPTION_KINDS.items():
        if getattr(args, option) in (None, False) or any(k in users for k in kinds):
            continue
        flag = "--" + option.replace("_", "-")
        raise ShowError(f"{flag} does not apply to {'+'.join(kinds)} (it is an option of {', '.join(users)})")


def _lengths(args: argparse.Namespace, segments: np.ndarray | None, lengths: list[int] | None) -> tuple[int, int]:
    """T and S: given, else from the data (segment ids, --max-len, the largest of --lengths), else 8 and T."""
    if segments is not None:
        n = segments.shape[1]
        t = n if args.q_len is None else args.q_len
        s = n if args.kv_len is None else args.kv_len
        if not t == s == n:
            raise ShowError(f"segment masks are self-attention: --q-len and --kv-len must equal the {n} segment ids")
        return t, s
    if args.max_len is not None and args.kv_len is not None and args.max_len != args.kv_len:
        raise ShowError(f"--max-len (the padded length, S) and --kv-len must agree; got {args.max_len} and "
                        f"{args.kv_len}")
    from_data = args.max_len if args.max_len is not None else (max(lengths, default=0) if lengths else None)
    t = args.q_len if args.q_len is not None else (from_data if from_data is not None else 8)
    s = args.kv_len if args.kv_len is not None else (from_data if from_data is not None else t)
    return t, s


def build_mask(args: argparse.Namespace) -> tuple[np.ndarray, str]:
    """The mask the options describe, (T, S) or (B, 1, T, S), and a one-line description."""
    kinds = parse_kinds(args.kind)
    _refuse_unused(args, kinds)
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
    t, s = _lengths(args, segments, lengths)
    align = args.align or "top_left"
    offset = args.offset or 0
    side = args.side or "right"

    masks: list[Any] = []
    described = []
    for kind in kinds:
        if kind == "causal":
            masks.append(oracle.causal_mask(t, s, align=align, offset=offset))
            described.append(f"causal align={align}" + (f" offset={offset}" if offset else ""))
        elif kind == "sliding_window":
            window = _window(args.window)
            masks.append(oracle.sliding_window_mask(t, s, window=window, align=align, offset=offset))
            described.append(f"sliding_window window={window}")
        elif kind == "chunked":
            masks.append(oracle.chunked_mask(t, s, chunk_size=args.chunk_size, align=align, offset=offset))
            described.append(f"chunked chunk_size={args.chunk_size}")
        elif kind == "padding":
            kv_valid = oracle.padding_mask(np.array(lengths), s, side=side)
            q_valid = oracle.padding_mask(np.array(lengths), t, side=side) if args.pad_queries else None
            masks.append(oracle.attention_padding_mask(kv_valid, q_valid))
            queries = " (queries too)" if args.pad_queries else ""
            described.append(f"padding lengths={lengths} side={side}{queries}")
        elif kind == "segment":
            masks.append(oracle.segment_mask(segments, pad_id=args.pad_id))
            described.append("segment" + (f" pad_id={args.pad_id}" if args.pad_id is not None else ""))
        elif kind == "prefix_lm":
            masks.append(oracle.prefix_lm_mask(np.array(prefix), t, s, align=align))
            described.append(f"prefix_lm prefix_lengths={prefix}")
    mask = oracle.and_masks(*masks)
    assert mask is not None  # parse_kinds gives at least one kind
    mask = np.broadcast_to(mask, (mask.shape[0], 1, t, s) if mask.ndim == 4 else (t, s))
    return mask, f"{' + '.join(described)}; T={t} queries, S={s} keys"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `refmask show`."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("kind", metavar="KIND", help=f"{', '.join(KINDS)}, or several joined by '+'")
    parser.add_argument("--q-len", type=int,
                        help="T, the number of queries (default: from the data: the segment ids, --max-len or "
                             "the largest of --lengths; else 8)")
    parser.add_argument("--kv-len", type=int,
                        help="S, the number of keys (default: --max-len, else the largest of --lengths, else T)")
    parser.add_argument("--align", choices=("top_left", "bottom_right"),
                        help="causal / window / chunk / prefix alignment when T != S (default: top_left)")
    parser.add_argument("--offset", type=int, help="shift of the query positions (causal, window, chunked)")
    parser.add_argument("--window", metavar="W|LEFT,RIGHT", help="sliding_window: keys i-LEFT .. i+RIGHT")
    parser.add_argument("--chunk-size", type=int, help="chunked: keys per chunk")
    parser.add_argument("--lengths", metavar="L1,L2,...", help="padding: valid tokens per batch item")
    parser.add_argument("--max-len", type=int, help="padding: the padded length S (default: the largest of --lengths)")
    parser.add_argument("--side", choices=("right", "left"), help="padding side (default: right)")
    parser.add_argument("--pad-queries", action="store_true", help="padding: padded queries attend nowhere too")
    parser.add_argument("--segments", metavar="IDS", help="segment: ids, batch items separated by ';' (0,0,1;0,1,1)")
    parser.add_argument("--pad-id", type=int, help="segment: the id of padding tokens")
    parser.add_argument("--prefix-lengths", metavar="P1,P2,...", help="prefix_lm: prefix length per batch item")
    parser.add_argument("--ascii", action="store_true", help="plain ASCII instead of block characters")
    parser.add_argument("--width", type=int, metavar="COLUMNS",
                        help="width of the text (default: the terminal's); wider grids are aggregated")
    parser.add_argument("--png", metavar="FILE.png", help="also write the picture as a PNG (needs matplotlib)")
    parser.add_argument("--title", help="title of the PNG (default: the mask's description)")


def run(args: argparse.Namespace) -> int:
    """Draw the mask; 2 on bad options, 1 when the picture cannot be written."""
    try:
        mask, description = build_mask(args)
        _show.png_arg(args.png)
        text = _show.show(mask, title=description, width=args.width, ascii=args.ascii)
    except (ShowError, ValueError, TypeError) as err:
        print(f"refmask show: {err}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    if args.png:
        try:
            _show.show(mask, title=args.title or description, format="figure", png=args.png)
        except ImportError as err:
            print(f"refmask show: {err}", file=sys.stderr)
            return 1
        except OSError as err:
            print(f"refmask show: cannot write {args.png}: {err.strerror or err}", file=sys.stderr)
            return 1
        print(f"wrote {args.png}", file=sys.stderr)
    return 0
