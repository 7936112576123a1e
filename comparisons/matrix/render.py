"""The matrix as a terminal table, as Markdown (comparisons/RESULTS.md) or as JSON (comparisons/expected.json)."""

from __future__ import annotations

import json
import shutil
import textwrap
from typing import Any

from .cell import POLICIES, Cell

FULL_COMMAND = "refmask compare --format md --output comparisons/RESULTS.md"

# Short column headings for the terminal table (a legend under it names each column's case id).
SHORT = {
    "causal-square": "causal",
    "causal-rectangular": "causal T<S",
    "sliding-window": "window",
    "padding-left": "pad left",
    "padding-right": "pad right",
    "segment": "segment",
    "fully-masked-row": "empty row",
    "fully-masked-batch": "empty item",
    "nan-at-masked": "NaN masked",
    "inf-at-masked": "inf masked",
    "float16-fills": "float16",
    "bfloat16-fills": "bfloat16",
    "float16-fills-upcast": "f16 upcast",
    "causal-window": "causal win",
    "decode-offset": "decode",
    "varlen-packed": "varlen",
    "softcap": "softcap",
    "sinks": "sinks",
    "gradients": "grads",
    "prefix-lm": "prefix LM",
    "dilated-window": "dilated",
    "chunked-causal": "chunked",
    "alibi": "ALiBi",
}


def _cell_grid(result: dict[str, Any]) -> tuple[list[list[str]], list[str]]:
    """Cell texts (rows = paths) and the numbered notes of the cells that differ or raised."""
    by_key = {(c["path"], c["case"]): Cell(**c) for c in result["cells"]}
    notes: list[str] = []
    grid = []
    for p in result["paths"]:
        row = []
        for c in result["cases"]:
            cell = by_key[(p["id"], c["id"])]
            note = None
            if cell.status in ("differs", "error"):
                notes.append(_note_text(cell, c["title"]))
                note = len(notes)
            row.append(cell.text(note))
        grid.append(row)
    return grid, notes


def _note_text(cell: Cell, case_title: str) -> str:
    if cell.status == "error":
        return f"{cell.path} × {case_title}: the native call raised {cell.reason}"
    err = cell.max_error if isinstance(cell.max_error, str) else f"{cell.max_error:.3g}"
    return f"{cell.path} × {case_title}: {cell.reason} (max error {err})"


def _summary(result: dict[str, Any]) -> list[str]:
    """One line per path: the fully_masked policy it follows where it matters."""
    lines = []
    for p in result["paths"]:
        seen = set()
        for c in result["cells"]:
            if c["path"] == p["id"] and c["status"] == "agrees" and len(c["policies"]) < len(POLICIES):
                seen.update(c["policies"])
        if seen:
            lines.append(f"{p['id']}: {'/'.join(q for q in POLICIES if q in seen)}")
    return lines


def _wrap(text: str, width: int, indent: str = "") -> list[str]:
    return textwrap.wrap(text, width, subsequent_indent=indent, break_on_hyphens=False) or [""]


def _column_blocks(first: int, widths: list[int], width: int) -> list[list[int]]:
    """The table's columns split into blocks that fit `width` beside the path column (at least one each)."""
    blocks: list[list[int]] = [[]]
    used = first
    for i, w in enumerate(widths):
        if blocks[-1] and used + 2 + w > width:
            blocks.append([])
            used = first
        blocks[-1].append(i)
        used += 2 + w
    return blocks


def render_text(result: dict[str, Any], width: int | None = None) -> str:
    """The matrix as a terminal table at most `width` columns wide (default: the terminal's): a table too
    wide is wrapped into blocks of columns, each repeating the path column."""
    width = width or shutil.get_terminal_size((80, 24)).columns
    grid, notes = _cell_grid(result)
    heads = [SHORT.get(c["id"], c["id"]) for c in result["cases"]]
    first = max([len("path")] + [len(p["id"]) for p in result["paths"]])
    widths = [max(len(h), *(len(r[i]) for r in grid)) if grid else len(h) for i, h in enumerate(heads)]

    def line(label: str, texts: list[str], columns: list[int]) -> str:
        cells = [texts[i].ljust(widths[i]) for i in columns]
        return "  ".join([label.ljust(first), *cells]).rstrip()

    lines = [*_wrap(_header_line(result), width)]
    for columns in _column_blocks(first, widths, width):
        lines += ["", line("path", heads, columns), "  ".join(["─" * first] + ["─" * widths[i] for i in columns])]
        lines += [line(p["id"], row, columns) for p, row in zip(result["paths"], grid, strict=True)]
    named = [f"{h} = {c['id']}" for h, c in zip(heads, result["cases"], strict=True) if h != c["id"]]
    if named:
        lines += ["", *_wrap("columns (--case ID): " + ", ".join(named), width, "  ")]
    legend = ("✓ agrees (policy-independent)  ✓ zero/uniform/nan: agrees under that fully_masked policy  "
              "✗ differs  – not expressible")
    lines += ["", *_wrap(legend, width)]
    for n, t in enumerate(notes, 1):
        lines += _wrap(f"[{n}] {t}", width, "    ")
    summary = _summary(result)
    if summary:
        lines += ["", "fully-masked rows follow:"] + [x for s in summary for x in _wrap(f"  {s}", width, "    ")]
    for s in result["skipped"]:
        lines += _wrap(f"skipped: {s['framework']} ({s['reason']})", width, "    ")
    return "\n".join(lines) + "\n"


def _header_line(result: dict[str, Any]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in result["versions"].items())
    return f"refmask compare: {versions}; {result['platform']}; {result['date']}; {result['runtime_s']} s"


def render_markdown(result: dict[str, Any], subset: str | None = None) -> str:
    """The Markdown report; `subset`: the command that selected part of the matrix (None: the whole
    matrix, whose header says how to regenerate comparisons/RESULTS.md)."""
    grid, notes = _cell_grid(result)
    v = result["versions"]
    made = (f"Generated by `{FULL_COMMAND}`; do not edit by hand." if subset is None
            else f"A subset of the matrix, made by `{subset}`.")
    lines = [
        "# Native paths against the refmask oracle",
        "",
        made,
        "See docs/comparisons.md for how to read it.",
        "",
        f"- date: {result['date']} ({result['platform']}, {result['runtime_s']} s)",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
    ]
    lines += [f"- skipped: {s['framework']} ({s['reason']})" for s in result["skipped"]]
    lines += ["", *_markdown_body(result, grid, notes)]
    return "\n".join(lines) + "\n"


def _markdown_body(result: dict[str, Any], grid: list[list[str]], notes: list[str]) -> list[str]:
    """Everything of the Markdown report below its header (it depends only on the cells)."""
    lines = ["## Matrix", ""]
    lines.append("| path | " + " | ".join(c["title"] for c in result["cases"]) + " |")
    lines.append("|---|" + "---|" * len(result["cases"]))
    for p, row in zip(result["paths"], grid, strict=True):
        lines.append(f"| `{p['id']}` | " + " | ".join(row) + " |")
    lines += ["", "✓ agrees for every policy (no fully-masked row); ✓ zero / uniform / nan: agrees under that "
              "`fully_masked` policy only; ✓ top_left / bottom_right: the causal alignment it agrees with; "
              "✗ [n]: differs, see note n; –: the path cannot express the case.", ""]
    if notes:
        lines += ["## Differences", ""] + [f"{n}. {t}" for n, t in enumerate(notes, 1)] + [""]
    summary = _summary(result)
    if summary:
        lines += ["## fully_masked policy per path", ""] + [f"- `{s.split(': ')[0]}`: {s.split(': ')[1]}"
                                                          for s in summary] + [""]
    lines += ["## Paths", ""]
    lines += [f"- `{p['id']}`: {p['title']} ({p['convention']})" for p in result["paths"]]
    lines += ["", "## Cases", ""]
    lines += [f"- {c['title']} (`{c['id']}`, {c['dtype']})" + (f": {c['notes']}" if c["notes"] else "")
              for c in result["cases"]]
    return lines


def render(result: dict[str, Any], fmt: str, subset: str | None = None, width: int | None = None) -> str:
    """The result in format `fmt` ("json", "md" or "text"); `subset` as for render_markdown, `width` as
    for render_text."""
    if fmt == "json":
        return json.dumps(result, indent=1, ensure_ascii=False) + "\n"
    if fmt == "md":
        return render_markdown(result, subset)
    return render_text(result, width)
