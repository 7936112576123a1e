"""The README's convention table, generated from the committed matrix (comparisons/expected.json).

Each row is one native path of the matrix, and each of its last columns is read off that path's measured
cells, so the table cannot say what the matrix does not: what a fully-masked query row gives (the
fully-masked-row and fully-masked-batch cells), whether NaN or +inf scores at masked keys reach kept rows
(the NaN-at-masked and +inf-at-masked cells) and whether the path's gradients agree with
refmask.attention_vjp (the gradients cell). Regenerate the README's table after the matrix with

    python -m comparisons.matrix.readme
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = ROOT / "comparisons" / "expected.json"
README = ROOT / "README.md"
BEGIN = "<!-- convention table: generated from comparisons/expected.json by `python -m comparisons.matrix.readme` -->"
END = "<!-- end of the generated convention table -->"

_POLICY_WORDS = {"zero": "0", "uniform": "uniform 1/S (output: mean of v)", "nan": "NaN"}
_FULLY_MASKED = ("fully-masked-row", "fully-masked-batch")
# Cases whose fully-masked rows come from a half-precision fill: reported where they differ.
_HALF_FILLS = ("float16-fills", "bfloat16-fills", "float16-fills-upcast")
_POISONED = ("nan-at-masked", "inf-at-masked")


def _fully_masked(cells: list[dict[str, Any]], half: list[tuple[str, dict[str, Any]]]) -> str:
    """What a fully-masked row gives, from the cells of the cases that have one, then from the
    half-precision fill cases (`half`: (case title, cell)) where those differ on such rows."""
    seen: list[str] = []
    for cell in cells:
        if cell["status"] == "agrees":
            text = " or ".join(f"{_POLICY_WORDS[p]} (`\"{p}\"`)" for p in cell["policies"])
        elif cell["status"] == "differs":
            text = "differs: " + cell["reason"].split("; ")[-1]
        elif cell["status"] == "error":
            text = "raises"
        else:
            continue
        if text not in seen:
            seen.append(text)
    for title, cell in half:
        if cell["status"] == "differs" and "fully-masked rows" in cell["reason"]:
            seen.append(f"{title}: " + cell["reason"].split("; ")[-1].removeprefix("fully-masked rows "))
    return "; ".join(seen) if seen else "–"


def _poisoned(cells: list[dict[str, Any]]) -> str:
    """Whether NaN / +inf scores at masked keys reach rows with kept keys."""
    statuses = {cell["status"] for cell in cells}
    if statuses <= {"not expressible"}:
        return "–"
    if statuses == {"agrees"}:
        return "never reach kept rows"
    if any("leak" in cell["reason"] for cell in cells):
        return "leak as NaN into kept rows"
    return "differ: " + next(cell["reason"] for cell in cells if cell["status"] != "agrees")


def _gradients(cell: dict[str, Any] | None) -> str:
    if cell is None or cell["status"] == "not expressible":
        return "–"
    if cell["status"] == "agrees":
        policies = "/".join(cell["policies"])
        return f"equal to attention_vjp (`\"{policies}\"`)"
    return cell["reason"] if cell["status"] == "differs" else "raises"


def convention_table(result: dict[str, Any]) -> str:
    """The Markdown table: one row per path of `result` (a matrix as `refmask compare --format json` gives)."""
    titles = {case["id"]: case["title"] for case in result["cases"]}
    by_path: dict[str, dict[str, dict[str, Any]]] = {}
    for cell in result["cells"]:
        by_path.setdefault(cell["path"], {})[cell["case"]] = cell
    lines = [
        "| path | how refmask's mask is stated | a fully-masked row gives | NaN / +inf scores at masked keys "
        "| gradients |",
        "|---|---|---|---|---|",
    ]
    for path in result["paths"]:
        cells = by_path.get(path["id"], {})
        half = [(titles[c], cells[c]) for c in _HALF_FILLS if c in cells]
        fully = _fully_masked([cells[c] for c in _FULLY_MASKED if c in cells], half)
        poisoned = _poisoned([cells[c] for c in _POISONED if c in cells])
        grads = _gradients(cells.get("gradients"))
        lines.append(f"| `{path['id']}`: {path['title']} | {path['convention']} | {fully} | {poisoned} | {grads} |")
    return "\n".join(lines) + "\n"


def readme_block(result: dict[str, Any]) -> str:
    """The README's generated block: the markers around the table."""
    return f"{BEGIN}\n{convention_table(result)}{END}"


def _replace_block(text: str, block: str) -> str:
    pattern = re.escape(BEGIN) + r".*?" + re.escape(END)
    if not re.search(pattern, text, flags=re.S):
        raise ValueError(f"README.md has no generated convention table (no line {BEGIN!r})")
    return re.sub(pattern, lambda _: block, text, count=1, flags=re.S)


def main() -> int:
    result = json.loads(EXPECTED.read_text(encoding="utf-8"))
    README.write_text(_replace_block(README.read_text(encoding="utf-8"), readme_block(result)), encoding="utf-8")
    print(f"rewrote the convention table of {README.name} from {EXPECTED.name} ({len(result['paths'])} paths)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
