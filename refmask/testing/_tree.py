"""Nested results compared leaf by leaf: tuples, lists, dicts and NamedTuples of arrays.

A kernel returns (out, lse); a backward (dq, dk, dv) or a NamedTuple of them. refmask.testing's
assertions take such structures whole: `pairs` matches actual's structure to expected's and
yields each pair of leaves with its path, written as jax.tree_util.keystr writes it ("[1]",
"['dq']", ".dq"), so a report can say which leaf differs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from numbers import Number
from typing import Any


def _is_named_tuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(type(x), "_fields")


def is_container(x: Any) -> bool:
    """A Mapping, or a tuple/list holding an array, None or another container. A list of numbers
    (or of lists of numbers) is an array written in Python, a leaf."""
    if isinstance(x, Mapping):
        return True
    if not isinstance(x, tuple | list):
        return False
    if _is_named_tuple(x):
        return True
    return any(not (isinstance(item, Number) or (isinstance(item, tuple | list) and not is_container(item)))
               for item in x)


def _describe(x: Any) -> str:
    if x is None:
        return "None"
    if isinstance(x, Mapping):
        return f"a {type(x).__name__} with keys [{', '.join(sorted(map(repr, x)))}]"
    if _is_named_tuple(x):
        return f"a {type(x).__name__}{tuple(type(x)._fields)}"
    if is_container(x):
        return f"a {type(x).__name__} of {len(x)}"
    shape = getattr(x, "shape", None)
    return f"an array of shape {tuple(shape)}" if shape is not None else f"{type(x).__name__} {x!r}"


def _differs(what: str, path: str, actual: Any, expected: Any, why: str = "") -> AssertionError:
    where = f"{what}{path}" if path else what
    return AssertionError(f"{where}: structure differs: actual is {_describe(actual)}, the oracle's is "
                          f"{_describe(expected)}{why}")


def pairs(actual: Any, expected: Any, what: str, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(path, actual leaf, expected leaf) for each leaf of `expected`, depth first; AssertionError
    naming the path where actual's structure differs. Leaves that are None on both sides are left
    out (a gradient that does not exist, such as dbias without a bias). A NamedTuple matches a
    plain tuple of its length (a backward returning (dq, dk, dv) for the oracle's named tuple)."""
    if expected is None or actual is None:
        if (expected is None) != (actual is None):
            raise _differs(what, path, actual, expected)
        return
    if isinstance(expected, Mapping):
        if not isinstance(actual, Mapping):
            raise _differs(what, path, actual, expected)
        missing = [key for key in expected if key not in actual]
        extra = [key for key in actual if key not in expected]
        if missing or extra:
            why = "".join([f"; missing in actual: {missing!r}" if missing else "",
                           f"; not in the oracle's: {extra!r}" if extra else ""])
            raise _differs(what, path, actual, expected, why)
        for key in expected:
            yield from pairs(actual[key], expected[key], what, f"{path}[{key!r}]")
        return
    if is_container(expected):
        if not is_container(actual) or isinstance(actual, Mapping) or len(actual) != len(expected):
            raise _differs(what, path, actual, expected)
        fields = getattr(type(expected), "_fields", None) if _is_named_tuple(expected) else None
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            yield from pairs(a, e, what, f"{path}.{fields[i]}" if fields else f"{path}[{i}]")
        return
    if is_container(actual):
        raise _differs(what, path, actual, expected)
    yield path, actual, expected


def with_message(err_msg: str, report: str) -> str:
    """A report with the caller's err_msg as its first line, as numpy.testing puts it first after
    its header (here the first line is what pytest shows in its summary)."""
    return f"{err_msg}\n{report}" if err_msg else report
