"""The `refmask` command (also `python -m refmask`): one subcommand per module.

Each subcommand module defines `add_arguments(parser)` and `run(args) -> int`, and its docstring's
first line is the subcommand's help; modules are imported only when their subcommand runs (or for
--help), so `refmask show` never imports jax or torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ._version import __version__

# `comparisons` is installed with refmask as a top-level package of its own (see pyproject.toml).
COMMANDS = {
    "compare": "comparisons.matrix.command",
    "show": "refmask._show_cli",
    "bench": "comparisons.bench.command",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `refmask` command with `argv` (default: sys.argv[1:]); its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="refmask", description="refmask: attention masks, one meaning everywhere")
    parser.add_argument("--version", action="version", version=f"refmask {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, module_name in COMMANDS.items():
        if chosen is not None and name != chosen:
            sub.add_parser(name)
            continue
        module = importlib.import_module(module_name)
        doc = (module.__doc__ or "").strip().splitlines()
        command = sub.add_parser(name, help=doc[0] if doc else None, description=(module.__doc__ or "").strip())
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    args = parser.parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
