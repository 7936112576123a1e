"""Hold every native masking path of the installed frameworks against the oracle, and print the matrix.

For each native path (a row) and each case family (a column), the path's own call is run on the
case and its weights and/or output are compared with the oracle's under each fully_masked policy
("zero", "uniform", "nan"), with refmask.testing's assertions and default per-dtype tolerances.
A cell says "✓" (agrees; the case has no fully-masked row, so the policy does not matter),
"✓ zero" / "✓ uniform" / "✓ nan" (agrees under that policy), "✓ top_left" / "✓ bottom_right"
(the causal alignment the path uses when T != S), "✗ [n]" (differs: note n gives the max error and
the reason), "–" (the path cannot express the case) or "ERR [n]" (the native call raised).
--path, --case and --framework select part of the matrix (a selection that matches nothing is an
error that lists what there is); with one path and one case, --draw draws where that cell's weights
(query x key) or output (query x dim) are beyond tolerance, entry by entry.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from refmask._backends import missing_dependency

from ..cases import all_cases
from .frameworks import FRAMEWORKS, load_paths, nothing_to_compare
from .render import render


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `refmask compare`."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--format", choices=("text", "md", "json"), default="text", help="output format")
    parser.add_argument("--output", metavar="FILE", help="write the result to FILE instead of stdout")
    parser.add_argument("--framework", action="append", choices=tuple(FRAMEWORKS),
                        help="only this framework's paths (repeatable)")
    parser.add_argument("--path", action="append", metavar="SUBSTRING",
                        help="only paths whose id contains SUBSTRING (repeatable)")
    parser.add_argument("--case", action="append", metavar="ID",
                        help="only this case family (repeatable; an unknown ID lists the cases)")
    parser.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                        help="progress bar on stderr (auto: when stderr is a terminal)")
    parser.add_argument("--draw", action="store_true",
                        help="with one path and one case: draw, entry by entry, where the native weights or "
                             "output are beyond tolerance of the oracle's")


def _selection(args: argparse.Namespace) -> tuple[list, list] | str:
    """The chosen paths and cases, or why the options select nothing (with what there is)."""
    cases = all_cases()
    unknown = [c for c in args.case or [] if c not in {case.id for case in cases}]
    if unknown:
        return f"no case {', '.join(map(repr, unknown))}; the cases are: {', '.join(c.id for c in cases)}"
    paths, _, _ = load_paths(args.framework)
    where = f" of {', '.join(args.framework)}" if args.framework else ""
    chosen = [p for p in paths if not args.path or any(f in p.id for f in args.path)]
    if not chosen:
        asked = " or ".join(map(repr, args.path or []))
        return (f"no path{where} matched --path {asked}; the installed paths{where} are: "
                f"{', '.join(p.id for p in paths) or 'none'}")
    return chosen, [c for c in cases if not args.case or c.id in args.case]


def _subset_command(args: argparse.Namespace) -> str | None:
    """The command line of a selection (None for the whole matrix), as the Markdown header quotes it."""
    if not (args.framework or args.path or args.case):
        return None
    words = ["refmask", "compare"]
    for option in ("framework", "path", "case"):
        for value in getattr(args, option) or []:
            words += [f"--{option}", value]
    return shlex.join([*words, "--format", "md"])


def run(args: argparse.Namespace) -> int:
    """Run the matrix (or the selected part) and print it; 1 when nothing can be compared or selected."""
    # ml_dtypes: the bfloat16 case's NumPy dtype; the torch extra installs it (jax depends on it).
    why = nothing_to_compare(args.framework) or missing_dependency("ml_dtypes", "torch", "the bfloat16 case")
    if why is not None:
        print(f"refmask compare: {why}", file=sys.stderr)
        return 1
    if args.draw and args.format != "text":
        print("refmask compare: --draw draws in the terminal; use it with --format text", file=sys.stderr)
        return 2
    selected = _selection(args)
    if isinstance(selected, str):
        print(f"refmask compare: {selected}", file=sys.stderr)
        return 1
    paths, cases = selected
    if args.draw and (len(paths), len(cases)) != (1, 1):
        print(f"refmask compare: --draw draws one cell: select one path with --path and one case with --case; "
              f"selected {len(paths)} paths ({', '.join(p.id for p in paths)}) and {len(cases)} cases",
              file=sys.stderr)
        return 1
    from .engine import run_matrix

    show = args.progress == "always" or (args.progress == "auto" and sys.stderr.isatty())
    result = run_matrix(args.framework, args.path, args.case, progress=show)
    text = render(result, args.format, _subset_command(args))
    if args.draw:
        from .draw import draw_cell

        text += "\n" + draw_cell(paths[0], cases[0])
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"wrote {args.output} ({len(result['cells'])} cells, {result['runtime_s']} s)", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
