"""The one registry of backends: which exist, which can run here and why not, and the module of each.

- The core never imports a framework. An array is recognised as a jax or torch array only when that
  framework is already in sys.modules (if it is not imported, no array of it can exist).
- Every backend module implements the whole public API with the oracle's signatures (see
  refmask/_api.py); the oracle itself is the "numpy" backend.
- Mixing arrays of two frameworks in one call is an error; NumPy arrays (and lists, numbers) may
  accompany a framework's arrays and are converted by that framework's backend.
- A backend's first use imports it under a lock, so threads that all make their first call at once
  see it only when its import has finished (a module is in sys.modules while it is still importing).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from types import ModuleType
from typing import Any

import numpy as np

BACKENDS: tuple[str, ...] = ("numpy", "jax", "torch")

_MODULES = {"numpy": "refmask.oracle", "jax": "refmask.backends.jax", "torch": "refmask.backends.torch"}
# The frameworks each backend imports; the extra that installs them has the backend's name.
_REQUIRED = {"numpy": ("numpy",), "jax": ("jax",), "torch": ("torch",)}

_loaded: dict[str, ModuleType] = {}
_import_lock = threading.RLock()


def install_hint(extra: str) -> str:
    """How to install refmask's `extra`, from a release and from a source checkout."""
    return f'pip install "refmask[{extra}]" (from a source checkout: pip install -e ".[{extra}]")'


def missing_dependency(module: str, extra: str, what: str) -> str | None:
    """A one-line reason why `what` cannot run (its `module` is not installed), or None if it can."""
    if module in sys.modules or importlib.util.find_spec(module.partition(".")[0]) is not None:
        return None
    return f"{what} needs {module}, which is not installed: {install_hint(extra)}"


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import `module` for `what`, or raise ImportError with the one-line install hint."""
    why = missing_dependency(module, extra, what)
    if why is not None:
        raise ImportError(why)
    return importlib.import_module(module)


def unavailable_reason(name: str) -> str | None:
    """Why backend `name` cannot run here (its framework is not installed), or None if it can."""
    check_name(name)
    for module in _REQUIRED[name]:
        why = missing_dependency(module, name, f'backend "{name}"')
        if why is not None:
            return why
    return None


def installed_backends() -> tuple[str, ...]:
    """Backends whose framework can be imported here (numpy always)."""
    return tuple(name for name in BACKENDS if unavailable_reason(name) is None)


def check_name(name: object) -> str:
    if not isinstance(name, str) or name not in _MODULES:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))} or None; got {name!r}")
    return name


def get_backend(name: str) -> ModuleType:
    """The backend module called `name`; a clear error if unknown or its framework is missing."""
    # A plain dict lookup on the hot path: it also lets torch.compile(fullgraph=True) go through the
    # public API once a backend is loaded (dynamo does not trace importlib or locks).
    module = _loaded.get(name)
    if module is not None:
        return module
    return _load(name)


def loaded(module_name: str) -> None:
    """Called by each backend module as its last statement: from then on it is handed out.

    A module is in sys.modules from the start of its import, so a registry that looked there would hand
    another thread a half-imported module; one registered here has finished.
    """
    name = next(n for n, m in _MODULES.items() if m == module_name)
    _loaded[name] = sys.modules[module_name]


def _load(name: str) -> ModuleType:
    check_name(name)
    with _import_lock:
        if name in _loaded:
            return _loaded[name]
        why = unavailable_reason(name)
        if why is not None:
            raise ImportError(why)
        importlib.import_module(_MODULES[name])
        return _loaded[name]


# array_backend's answer per type: it depends on the type alone (a framework's array types exist only once
# it is imported), and isinstance against jax.Array, an ABC, costs more than a small call's arithmetic.
_BACKEND_OF_TYPE: dict[type, str] = {type(None): "numpy", np.ndarray: "numpy"}


def array_backend(x: Any) -> str:
    """ "jax", "torch" or "numpy" (for NumPy arrays, lists, numbers and anything else)."""
    kind = type(x)
    name = _BACKEND_OF_TYPE.get(kind)
    if name is None:
        name = _BACKEND_OF_TYPE[kind] = _backend_of_type(kind)
    return name


def _backend_of_type(kind: type) -> str:
    torch = sys.modules.get("torch")
    if torch is not None and issubclass(kind, torch.Tensor):
        return "torch"
    jax = sys.modules.get("jax")
    # Tracers are jax.Array instances by jax.Array's instance check, not as subclasses.
    if jax is not None and (issubclass(kind, jax.Array) or issubclass(kind, jax.core.Tracer)):
        return "jax"
    return "numpy"


def infer_backend(*arrays: Any) -> str:
    """The one framework the arrays belong to ("numpy" if none is a framework's array)."""
    found = "numpy"
    for a in arrays:
        name = array_backend(a)
        if name != "numpy" and name != found:
            if found != "numpy":
                raise TypeError(
                    f"arrays from different frameworks ({', '.join(sorted((found, name)))}) in one call; "
                    "convert them to one framework or pass backend="
                )
            found = name
    return found


def resolve(backend: str | None, *arrays: Any) -> ModuleType:
    return get_backend(infer_backend(*arrays) if backend is None else backend)


def to_numpy(x: Any) -> Any:
    """A NumPy array from a NumPy, jax or torch array (bfloat16 as ml_dtypes.bfloat16)."""
    name = array_backend(x)
    if name == "numpy":
        return np.asarray(x)
    return get_backend(name).to_numpy(x)


def from_numpy(x: Any, backend: str) -> Any:
    """The array `x` (NumPy) as an array of `backend`, same dtype."""
    module = get_backend(backend)
    if backend == "numpy":
        return np.asarray(x)
    return module.from_numpy(x)
