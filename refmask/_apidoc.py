"""Writes docs/api.md's per-function definitions from the oracle's docstrings: `python -m refmask._apidoc`.

The definitions live in `refmask.oracle`; docs/api.md shows them between markers

    <!-- generated: causal_mask -->
    ### `causal_mask(q_len, kv_len=None, *, ...)`
    ...the docstring...
    <!-- end generated -->

and everything outside the markers (examples, notes, headings) is written by hand. Every public
oracle function (named in `refmask.__all__` and defined in `refmask.oracle`) gets a block: one that
has none yet is added before the `<!-- generated: new definitions -->` line, from where it can be
moved by hand to its section; a block whose function is no longer public is removed.
`python -m refmask._apidoc --check` exits 1, writing nothing, when docs/api.md is stale.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

API_MD = Path("docs/api.md")  # run from the repository root
COMMAND = "python -m refmask._apidoc"
NEW_DEFINITIONS = "<!-- generated: new definitions -->"
END = "<!-- end generated -->"
_BLOCK = re.compile(r"<!-- generated: (?P<name>\w+) -->\n.*?" + re.escape(END) + r"\n", re.S)


class _DoubleQuoted(str):
    """A string default shown as "text", as the rest of the docs write them."""

    def __repr__(self) -> str:
        return json.dumps(str(self))


def public_oracle_functions() -> list[str]:
    """Names in refmask.__all__ that refmask.oracle defines as functions, in the oracle's source order."""
    import refmask
    from refmask import oracle

    functions: list[Callable[..., Any]] = []
    for name in refmask.__all__:
        fn = getattr(oracle, name, None)
        if inspect.isfunction(fn) and fn.__module__ == oracle.__name__:
            functions.append(fn)
    return [fn.__name__ for fn in sorted(functions, key=lambda fn: fn.__code__.co_firstlineno)]


def call_signature(name: str) -> str:
    """`name(params)` of the public function (the oracle's parameters plus `backend=`), no annotations."""
    import refmask

    sig = inspect.signature(getattr(refmask, name))
    params = [
        p.replace(
            annotation=inspect.Parameter.empty,
            default=_DoubleQuoted(p.default) if isinstance(p.default, str) else p.default,
        )
        for p in sig.parameters.values()
    ]
    return name + str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))


def definition(name: str) -> str:
    """The generated block of one function: its heading and the oracle docstring."""
    from refmask import oracle

    doc = inspect.getdoc(getattr(oracle, name))
    if not doc:
        raise ValueError(f"refmask.oracle.{name} has no docstring, and its docstring is its definition")
    return f"<!-- generated: {name} -->\n### `{call_signature(name)}`\n\n{doc}\n{END}\n"


def render(text: str) -> str:
    """`text` (docs/api.md) with every generated block rewritten from the oracle as it is now."""
    public = public_oracle_functions()
    names = [m["name"] for m in _BLOCK.finditer(text)]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"docs/api.md has more than one generated block for {', '.join(repeated)}")
    present = set(names)
    text = _BLOCK.sub(lambda m: definition(m["name"]) if m["name"] in public else "", text)
    missing = [name for name in public if name not in present]
    if missing:
        if NEW_DEFINITIONS not in text:
            raise ValueError(
                f"docs/api.md has no block for {', '.join(missing)} and no {NEW_DEFINITIONS!r} line to add them before"
            )
        added = "".join(definition(name) + "\n" for name in missing)
        text = text.replace(NEW_DEFINITIONS, added + NEW_DEFINITIONS, 1)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale; write nothing")
    parser.add_argument("path", nargs="?", type=Path, default=API_MD, help="the API reference (default: docs/api.md)")
    args = parser.parse_args(argv)
    if not args.path.is_file():
        parser.error(f"{args.path} not found: run this from the repository root, or pass the file's path")
    text = args.path.read_text()
    new = render(text)
    if new == text:
        return 0
    if args.check:
        print(f"{args.path} is stale; regenerate it with: {COMMAND}", file=sys.stderr)
        return 1
    args.path.write_text(new)
    print(f"wrote {args.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
