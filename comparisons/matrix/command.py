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
import sys

from refmask._backends import missing_dependency

from .frameworks import FRAMEWORKS, nothing_to_compare
from .render import SHORT, render


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("text", "md", "json"), default="text", help="output format")
    parser.add_argument("--output", metavar="FILE", help="write the result to FILE instead of stdout")
    parser.add_argument("--framework", action="append", choices=tuple(FRAMEWORKS),
                        help="only this framework's paths (repeatable)")
    parser.add_argument("--path", action="append", metavar="SUBSTRING",
                        help="only paths whose id contains SUBSTRING (repeatable)")
    parser.add_argument("--case", action="append", metavar="ID",
                        choices=list(SHORT), help="only this case family (repeatable)")
    parser.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                        help="progress bar on stderr (auto: when stderr is a terminal)")


def run(args: argparse.Namespace) -> int:
    # ml_dtypes: the bfloat16 case's NumPy dtype; the torch extra installs it (jax depends on it).
    why = nothing_to_compare(args.framework) or missing_dependency("ml_dtypes", "torch", "the bfloat16 case")
    if why is not None:
        print(f"refmask compare: {why}", file=sys.stderr)
        return 1
    from .engine import run_matrix

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
