"""The public API, generated from the oracle: each function picks a backend and calls its function of the same name.

For every public oracle function, a function with the oracle's exact signature plus a keyword-only
`backend=None` is generated (as dataclasses generate __init__: plain Python source, so a call costs one
backend lookup and one call, and `inspect.signature` and tracebacks show real parameters). backend=None
infers the backend from the array arguments (NumPy if there are none); "numpy" is the oracle. The
parameters that hold arrays are those the oracle annotates as `ArrayLike`; the docstring is the oracle's.
The converters (refmask._convert.SHARED) are written once over each backend's array operations (its `OPS`),
so for them the generated function calls the shared converter with the chosen backend's operations.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable
from typing import Any

from . import _convert, oracle
from ._backends import resolve
from ._convert import SHARED

PUBLIC: tuple[str, ...] = tuple(oracle.__all__)

_BACKEND_DOC = (
    '\n\n    backend: None (infer from the arrays; NumPy if there are none), "numpy" (the oracle), "jax" or "torch".\n'
)


def array_parameters(fn: Callable[..., Any]) -> tuple[str, ...]:
    """The parameters of an oracle function that hold arrays (annotated `ArrayLike`)."""
    return tuple(
        p.name for p in inspect.signature(fn).parameters.values() if str(p.annotation).startswith("ArrayLike")
    )


def public_signature(fn: Callable[..., Any]) -> inspect.Signature:
    """The oracle function's signature with the keyword-only `backend: str | None = None` added."""
    sig = inspect.signature(fn)
    backend = inspect.Parameter("backend", inspect.Parameter.KEYWORD_ONLY, default=None, annotation="str | None")
    return sig.replace(parameters=[*sig.parameters.values(), backend])


def _generate(fn: Callable[..., Any]) -> Callable[..., Any]:
    sig = inspect.signature(fn)
    namespace: dict[str, Any] = {"_resolve": resolve}
    params, call, star_seen = [], [], False
    for p in sig.parameters.values():
        default = ""
        if p.default is not inspect.Parameter.empty:
            namespace[f"_default_{p.name}"] = p.default
            default = f"=_default_{p.name}"
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            params.append(f"*{p.name}")
            call.append(f"*{p.name}")
            star_seen = True
        elif p.kind is inspect.Parameter.KEYWORD_ONLY:
            if not star_seen:
                params.append("*")
                star_seen = True
            params.append(p.name + default)
            call.append(f"{p.name}={p.name}")
        else:
            params.append(p.name + default)
            call.append(p.name)
    if not star_seen:
        params.append("*")
    params.append("backend=None")
    star = {p.name for p in sig.parameters.values() if p.kind is inspect.Parameter.VAR_POSITIONAL}
    arrays = [f"*{p}" if p in star else p for p in array_parameters(fn)]
    backend_module = f"_resolve(backend, {', '.join(arrays)})"
    if fn.__name__ in SHARED:
        namespace["_shared"] = getattr(_convert, fn.__name__)
        target = f"_shared({backend_module}.OPS, "
    else:
        target = f"{backend_module}.{fn.__name__}("
    source = f"def {fn.__name__}({', '.join(params)}):\n    return {target}{', '.join(call)})\n"
    exec(compile(source, f"<refmask public {fn.__name__}>", "exec"), namespace)
    public = namespace[fn.__name__]
    public.__doc__ = (fn.__doc__ or "") + _BACKEND_DOC
    public.__module__ = "refmask"
    public.__qualname__ = fn.__name__
    public.__signature__ = public_signature(fn)
    return public


for _name in PUBLIC:
    globals()[_name] = _generate(getattr(oracle, _name))


# ----------------------------------------------------------------------------------------------
# the typing stub (refmask/_api.pyi), generated from the same signatures

_ARRAY_TYPES = {"torch": "torch.Tensor", "jax": "jax.Array", "numpy": "np.ndarray[Any, Any]"}


def _stub_def(fn: Callable[..., Any], annotate: Callable[[inspect.Parameter], tuple[str, str]], returns: str) -> str:
    """One `@overload def` of fn's public signature; annotate(p) gives each parameter's annotation and
    default ("" or " = ...")."""
    params, star_seen = [], False
    for p in public_signature(fn).parameters.values():
        annotation, default = annotate(p)
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            params.append(f"*{p.name}: {annotation}")
            star_seen = True
            continue
        if p.kind is inspect.Parameter.KEYWORD_ONLY and not star_seen:
            params.append("*")
            star_seen = True
        params.append(f"{p.name}: {annotation}{default}")
    return f"@overload\ndef {fn.__name__}({', '.join(params)}) -> {returns}: ..."


# Flags that decide the result's form: each True one adds an array to the result, (out, extra, ...); with none
# True the result is the array alone.
_RESULT_FLAGS = {"attention": ("return_weights", "return_lse")}


def _stub_overload(fn: Callable[..., Any], backend: str, flags: tuple[bool, ...] = ()) -> str:
    """fn's overload for `backend`: its first array argument (or, without one, `backend=`) selects it;
    for a function of _RESULT_FLAGS, `flags` (one value per flag) pick the overload of those values."""
    array_type = _ARRAY_TYPES[backend]
    first = next(iter(array_parameters(fn)), None)
    given = dict(zip(_RESULT_FLAGS.get(fn.__name__, ()), flags, strict=False))

    def annotate(p: inspect.Parameter) -> tuple[str, str]:
        default = "" if p.default is inspect.Parameter.empty else " = ..."
        if p.name in given:
            return (f"Literal[{given[p.name]}]", "" if given[p.name] else default)
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            return (array_type if backend != "numpy" else "ArrayLike"), ""
        if p.name == "backend":
            if first is None and backend != "numpy":
                return f'Literal["{backend}"]', ""  # no array to tell: backend= is required
            return f'Literal["{backend}"] | None', default
        if backend == "numpy" and _optional_array(fn, p):
            # numpy comes first for such functions (stub_source): it must not claim other frameworks' arrays
            return f"{array_type} | {'None' if p.default is None else type(p.default).__name__}", default
        return (array_type if p.name == first else str(p.annotation)), default

    if given:
        parts = 1 + sum(flags)
        returns = array_type if parts == 1 else f"tuple[{', '.join([array_type] * parts)}]"
    else:
        returns = str(inspect.signature(fn).return_annotation).replace("np.ndarray", array_type)
    return _stub_def(fn, annotate, returns.replace("Mask", array_type))


def _optional_array(fn: Callable[..., Any], p: inspect.Parameter) -> bool:
    return p.name in array_parameters(fn) and p.default is not inspect.Parameter.empty and _optional_arrays_only(fn)


def _optional_arrays_only(fn: Callable[..., Any]) -> bool:
    """Whether every array parameter of fn has a default (and fn has some, not *masks)."""
    params = inspect.signature(fn).parameters
    names = array_parameters(fn)
    return bool(names) and all(
        params[n].default is not inspect.Parameter.empty and params[n].kind is not inspect.Parameter.VAR_POSITIONAL
        for n in names
    )


def _stub_fallback(fn: Callable[..., Any]) -> str:
    """The last overload: any array-likes and any backend, result untyped."""

    def annotate(p: inspect.Parameter) -> tuple[str, str]:
        default = "" if p.default is inspect.Parameter.empty or p.kind is inspect.Parameter.VAR_POSITIONAL else " = ..."
        return ("str | None" if p.name == "backend" else str(p.annotation)), default

    return _stub_def(fn, annotate, "Any")


def stub_source() -> str:
    """The text of refmask/_api.pyi: per public function, one overload per backend's array type."""
    head = (
        '"""Types of the public API generated in refmask/_api.py (regenerate: python -m refmask._stubgen)."""\n\n'
        "import inspect\n"
        "from collections.abc import Callable\n"
        "from typing import Any, Literal, overload\n\n"
        "import jax\nimport numpy as np\nimport torch\n\n"
        "from ._arrays import ArrayLike, AttentionGrads\n\n"
        "PUBLIC: tuple[str, ...]\n\n"
        "def array_parameters(fn: Callable[..., Any]) -> tuple[str, ...]: ...\n"
        "def public_signature(fn: Callable[..., Any]) -> inspect.Signature: ...\n"
        "def stub_source() -> str: ...\n"
    )
    blocks = []
    for name in PUBLIC:
        fn = getattr(oracle, name)
        combos = list(itertools.product((True, False), repeat=len(_RESULT_FLAGS.get(name, ()))))
        # Without a required array argument, a call with none (causal_mask(4)) is NumPy's: its overload first.
        order = ("numpy", "torch", "jax") if _optional_arrays_only(fn) else ("torch", "jax", "numpy")
        overloads = [_stub_overload(fn, b, f) for b in order for f in combos]
        blocks.append("\n".join([*overloads, _stub_fallback(fn)]))
    return head + "\n\n" + "\n\n".join(blocks) + "\n"
