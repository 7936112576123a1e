"""Hold every native masking path of the installed frameworks against the oracle, and print the matrix.

For each native path (a row) and each case family (a column), the path's own call is run on the
case and its weights and/or output are compared with the oracle's under each fully_masked policy
("zero", "uniform", "nan"), with refmask.testing's assertions and default per-dtype tolerances.
A cell says "✓" (agrees; the case has no fully-masked row, so the policy does not matter),
"✓ zero" / "✓ uniform" / "✓ nan" (agrees under that policy), "✓ top_left" / "✓ bottom_right"
(the causal alignment the path uses when T != S), "✗ [n]" (differs: note n gives the max error and
the reason), "–" (the path cannot express the case) or "ERR [n]" (the native call raised).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from refmask import oracle
from refmask.testing import assert_attention_close, assert_weights_close

from ._base import NotExpressible, Path
from .cases import Case, all_cases

POLICIES = ("zero", "uniform", "nan")
FORMAT_VERSION = 1

# framework -> (the modules it needs, the adapter module)
FRAMEWORKS = {
    "torch": (("torch",), "torch_paths"),
    "jax": (("jax",), "jax_paths"),
    "flax": (("jax", "flax"), "flax_paths"),
}

# Short column headings for the terminal table.
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
}


@dataclass
class Cell:
    path: str
    case: str
    status: str  # "agrees" | "differs" | "not expressible" | "error"
    policies: list[str] = field(default_factory=list)  # the fully_masked policies it agrees under
    alignment: str = ""  # for T != S causal cases: the alignment it agrees with
    max_error: float | str | None = None  # differs: max |native - oracle| over rows with a kept key, or "NaN"
    reason: str = ""

    def text(self, note: int | None = None) -> str:
        if self.status == "agrees":
            parts = [] if len(self.policies) == len(POLICIES) else ["/".join(self.policies)]
            parts += [self.alignment] if self.alignment else []
            return " ".join(["✓", ", ".join(parts)]).strip()
        if self.status == "not expressible":
            return "–"
        mark = "✗" if self.status == "differs" else "ERR"
        return f"{mark} [{note}]" if note is not None else mark


# ----------------------------------------------------------------------------------------------
# comparing one path on one case


def _fully_masked_rows(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(B, H, T) bool: the query rows with no kept key."""
    return ~np.broadcast_to(mask, shape).any(axis=-1)


def _agrees(native, q, k, v, mask: np.ndarray, policy: str) -> bool:
    out, weights = oracle.attention(q, k, v, mask, fully_masked=policy, return_weights=True)
    try:
        if native.weights is not None:
            assert_weights_close(native.weights, weights, mask=mask)
        if native.output is not None:
            assert_attention_close(native.output, out)
    except AssertionError:
        return False
    return True


def _max_abs(a: np.ndarray, e: np.ndarray) -> float:
    a64, e64 = a.astype(np.float64), e.astype(np.float64)
    if a64.size == 0:
        return 0.0
    if (np.isnan(a64) != np.isnan(e64)).any():
        return float("inf")
    d = np.abs(np.where(np.isnan(e64), 0.0, a64 - e64))
    return float(np.nan_to_num(d, nan=np.inf).max())


def _row_behaviour(native, rows: np.ndarray, q, k, v, mask) -> str:
    """What the path gives on fully-masked rows: "zero", "uniform", "nan", "mixed" or "other"."""
    kinds = set()
    for policy in (*POLICIES, "unmasked"):
        if policy == "unmasked":  # the row's plain softmax, as if nothing were masked
            out, weights = oracle.attention(q, k, v, None, return_weights=True)
        else:
            out, weights = oracle.attention(q, k, v, mask, fully_masked=policy, return_weights=True)
        ok = True
        for got, want in ((native.weights, weights), (native.output, out)):
            if got is None:
                continue
            g, w = got[rows].astype(np.float64), want[rows].astype(np.float64)
            same_nan = np.array_equal(np.isnan(g), np.isnan(w))
            close = np.allclose(np.nan_to_num(g), np.nan_to_num(w), rtol=1e-2, atol=1e-2)
            ok &= bool(same_nan and close)
        if ok:
            kinds.add(policy)
    if len(kinds) == 1:
        return kinds.pop()
    if native.weights is not None:
        g = native.weights[rows].astype(np.float64)
    else:
        g = native.output[rows].astype(np.float64)
    return "mixed" if np.isnan(g).any() and not np.isnan(g).all() else "other"


_ROW_WORDS = {
    "zero": "gives 0 (zero)",
    "uniform": "gives uniform 1/S weights (uniform)",
    "nan": "gives NaN (nan)",
    "unmasked": "give the softmax of their raw scores, as if unmasked (the fill cancels out)",
    "mixed": "gives NaN in some entries only",
    "other": "gives neither 0, uniform nor NaN",
}


def _max_error(native, q, k, v, mask) -> float:
    """max |native - oracle| over every entry, under the policy that makes it smallest (inf: a NaN
    where the oracle has a number, or the reverse)."""
    best = float("inf")
    for policy in POLICIES:
        out, weights = oracle.attention(q, k, v, mask, fully_masked=policy, return_weights=True)
        errors = [_max_abs(got, want) for got, want in ((native.weights, weights), (native.output, out))
                  if got is not None]
        best = min(best, max(errors))
    return best


def _explain(native, case: Case, q, k, v, mask) -> tuple[float, str]:
    """Max error and a one-line reason the path differs from the oracle under every policy."""
    full = _fully_masked_rows(mask, case.shape)
    kept = ~full
    out, weights = oracle.attention(q, k, v, mask, fully_masked="zero", return_weights=True)
    found: dict[str, list[str]] = {}  # reason -> the returned arrays ("weights", "output") it applies to
    for name, got, want in (("weights", native.weights, weights), ("output", native.output, out)):
        if got is None:
            continue
        g, w = got[kept], want[kept]
        if np.isnan(g.astype(np.float64)).any():
            if case.poison == "nan":
                found.setdefault("masked NaN scores leak into the {} of rows with kept keys", []).append(name)
            elif case.poison == "inf":
                found.setdefault("masked +inf scores leak (as NaN) into the {} of rows with kept keys", []).append(name)
            else:
                found.setdefault("NaN in the {} of rows with kept keys", []).append(name)
            continue
        try:
            if name == "weights":
                assert_weights_close(g, w)
            else:
                assert_attention_close(g, w)
        except AssertionError as err:
            # "weights: 4 of 100 entries differ (more than 1 ULP apart)" -> "4 of 100 entries more than 1 ULP apart"
            first = str(err).splitlines()[0].split(": ", 1)[-1]
            first = first.replace(" differ (", " ").rstrip(")")
            found.setdefault(f"{{}} of rows with kept keys beyond tolerance: {first}", []).append(name)
    reasons = [template.format(" and ".join(names)) for template, names in found.items()]
    if full.any():
        behaviour = _row_behaviour(native, full, q, k, v, mask)
        if behaviour in ("unmasked", "mixed", "other") or not reasons:
            reasons.append(f"fully-masked rows {_ROW_WORDS[behaviour]}")
    return _max_error(native, q, k, v, mask), "; ".join(reasons) or "differs from the oracle"


def evaluate(path: Path, case: Case) -> Cell:
    """Run one native path on one case and compare it with the oracle under every policy."""
    try:
        native = path.fn(case)
    except NotExpressible as err:
        return Cell(path.id, case.id, "not expressible", reason=str(err))
    except Exception as err:  # a native call that raises is a finding, not a crash of the matrix
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return Cell(path.id, case.id, "error", reason=f"{type(err).__name__}: {message}"[:200])
    q, k, v = native.qkv or (case.q, case.k, case.v)
    for label, mask in case.masks.items():
        policies = [p for p in POLICIES if _agrees(native, q, k, v, mask, p)]
        if policies:
            return Cell(path.id, case.id, "agrees", policies, alignment=label)
    max_error, reason = _explain(native, case, q, k, v, case.mask)
    # JSON has no inf: a NaN where the oracle has a number is recorded as the string "NaN".
    return Cell(path.id, case.id, "differs", max_error=max_error if np.isfinite(max_error) else "NaN", reason=reason)


# ----------------------------------------------------------------------------------------------
# running the matrix


def load_paths(frameworks: list[str] | None = None) -> tuple[list[Path], list[dict[str, str]], dict[str, str]]:
    """The installed frameworks' paths, the skipped frameworks (with why) and the versions."""
    paths: list[Path] = []
    skipped: list[dict[str, str]] = []
    versions: dict[str, str] = {"numpy": np.__version__}
    for name, (needs, module_name) in FRAMEWORKS.items():
        if frameworks and name not in frameworks:
            continue
        missing = [m for m in needs if m not in sys.modules and importlib.util.find_spec(m) is None]
        if missing:
            skipped.append({"framework": name, "reason": f"{', '.join(missing)} not installed"})
            continue
        try:
            module = importlib.import_module(f"{__package__}.{module_name}")
        except Exception as err:  # installed but broken: say so, run the rest
            skipped.append({"framework": name, "reason": f"import failed: {type(err).__name__}: {err}"[:200]})
            continue
        versions[name] = module.FRAMEWORK_VERSION
        paths.extend(module.PATHS)
    return paths, skipped, versions


class Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, total: int, enabled: bool, width: int = 30):
        self.total, self.enabled, self.width, self.done = total, enabled, width, 0

    def step(self, label: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        filled = self.width * self.done // max(self.total, 1)
        bar = "█" * filled + "░" * (self.width - filled)
        sys.stderr.write(f"\r{bar} {self.done}/{self.total} {label[:60]:<60}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * (self.width + 75) + "\r")
            sys.stderr.flush()


def run_matrix(
    frameworks: list[str] | None = None,
    paths_filter: list[str] | None = None,
    cases_filter: list[str] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """The matrix as a JSON-ready dict (see `render`)."""
    started = time.perf_counter()
    paths, skipped, versions = load_paths(frameworks)
    if paths_filter:
        paths = [p for p in paths if any(f in p.id for f in paths_filter)]
    cases = [c for c in all_cases() if not cases_filter or c.id in cases_filter]
    bar = Progress(len(paths) * len(cases), progress)
    cells = []
    with np.errstate(all="ignore"):
        for path in paths:
            for case in cases:
                bar.step(f"{path.id} × {case.id}")
                cells.append(asdict(evaluate(path, case)))
    bar.close()
    return {
        "refmask_compare": FORMAT_VERSION,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "runtime_s": round(time.perf_counter() - started, 1),
        "versions": versions,
        "platform": f"Python {platform.python_version()}, {platform.machine()} CPU",
        "skipped": skipped,
        "cases": [{"id": c.id, "title": c.title, "dtype": c.dtype, "notes": c.notes} for c in cases],
        "paths": [{"id": p.id, "framework": p.framework, "title": p.title, "convention": p.convention}
                  for p in paths],
        "cells": cells,
    }


# ----------------------------------------------------------------------------------------------
# rendering


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


def render_text(result: dict[str, Any]) -> str:
    grid, notes = _cell_grid(result)
    heads = [SHORT.get(c["id"], c["id"]) for c in result["cases"]]
    first = max([len("path")] + [len(p["id"]) for p in result["paths"]])
    widths = [max(len(h), *(len(r[i]) for r in grid)) if grid else len(h) for i, h in enumerate(heads)]
    lines = [_header_line(result), ""]
    lines.append("  ".join(["path".ljust(first)] + [h.ljust(w) for h, w in zip(heads, widths)]).rstrip())
    lines.append("  ".join(["─" * first] + ["─" * w for w in widths]))
    for p, row in zip(result["paths"], grid):
        lines.append("  ".join([p["id"].ljust(first)] + [t.ljust(w) for t, w in zip(row, widths)]).rstrip())
    lines += ["", "✓ agrees (policy-independent)  ✓ zero/uniform/nan: agrees under that fully_masked policy  "
              "✗ differs  – not expressible"]
    lines += [f"[{n}] {t}" for n, t in enumerate(notes, 1)]
    summary = _summary(result)
    if summary:
        lines += ["", "fully-masked rows follow:"] + [f"  {s}" for s in summary]
    lines += [f"skipped: {s['framework']} ({s['reason']})" for s in result["skipped"]]
    return "\n".join(lines) + "\n"


def _header_line(result: dict[str, Any]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in result["versions"].items())
    return f"refmask compare: {versions}; {result['platform']}; {result['date']}; {result['runtime_s']} s"


def render_markdown(result: dict[str, Any]) -> str:
    grid, notes = _cell_grid(result)
    v = result["versions"]
    lines = [
        "# Native paths against the refmask oracle",
        "",
        "Generated by `refmask compare --format md --output comparisons/RESULTS.md`; do not edit by hand.",
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
    for p, row in zip(result["paths"], grid):
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


def render(result: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(result, indent=1, ensure_ascii=False) + "\n"
    if fmt == "md":
        return render_markdown(result)
    return render_text(result)


# ----------------------------------------------------------------------------------------------
# the `refmask compare` command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("text", "md", "json"), default="text", help="output format")
    parser.add_argument("--output", metavar="FILE", help="write the result to FILE instead of stdout")
    parser.add_argument("--framework", action="append", choices=tuple(FRAMEWORKS),
                        help="only this framework's paths (repeatable)")
    parser.add_argument("--path", action="append", metavar="SUBSTRING",
                        help="only paths whose id contains SUBSTRING (repeatable)")
    parser.add_argument("--case", action="append", metavar="ID",
                        choices=[c for c in SHORT], help="only this case family (repeatable)")
    parser.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                        help="progress bar on stderr (auto: when stderr is a terminal)")


def run(args: argparse.Namespace) -> int:
    show = args.progress == "always" or (args.progress == "auto" and sys.stderr.isatty())
    result = run_matrix(args.framework, args.path, args.case, progress=show)
    text = render(result, args.format)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"wrote {args.output} ({len(result['cells'])} cells, {result['runtime_s']} s)", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
