"""Backend registry: name -> module, imported on first use; and inference from array types.

- The core never imports a framework. An array is recognised as a jax or torch array only when that
  framework is already in sys.modules (if it is not imported, no array of it can exist).
- Every backend module implements the whole public API with the oracle's signatures (see
  refmask/_api.py); the oracle itself is the "numpy" backend.
- Mixing arrays of two frameworks in one call is an error; NumPy arrays (and lists, numbers) may
  accompany a framework's arrays and are converted by that framework's backend.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType
from typing import Any

_MODULES = {"numpy": "refmask.oracle", "jax": "refmask.backends.jax", "torch": "refmask.backends.torch"}
_FRAMEWORK = {"numpy": "numpy", "jax": "jax", "torch": "torch"}

BACKENDS = tuple(_MODULES)


def get_backend(name: str) -> ModuleType:
    """The backend module called `name`; a clear error if unknown or its framework is missing."""
    # An imported backend is taken straight from sys.modules: besides skipping the import machinery
    # on every call, the plain dict lookup lets torch.compile(fullgraph=True) go through the public
    # API (dynamo does not trace importlib).
    loaded = sys.modules.get(_MODULES.get(name, ""))
    if loaded is not None:
        return loaded
    if name not in _MODULES:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))} or None; got {name!r}")
    framework = _FRAMEWORK[name]
    if framework not in sys.modules and importlib.util.find_spec(framework) is None:
        raise ImportError(f'backend "{name}" needs {framework}, which is not installed: pip install "refmask[{name}]"')
    return importlib.import_module(_MODULES[name])


def array_backend(x: Any) -> str:
    """"jax", "torch" or "numpy" (for NumPy arrays, lists, numbers and anything else)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return "torch"
    jax = sys.modules.get("jax")
    if jax is not None and isinstance(x, jax.Array):
        return "jax"
    return "numpy"


def infer_backend(*arrays: Any) -> str:
    """The one framework the arrays belong to ("numpy" if none is a framework's array)."""
    found = {array_backend(a) for a in arrays if a is not None} - {"numpy"}
    if len(found) > 1:
        raise TypeError(
            f"arrays from different frameworks ({', '.join(sorted(found))}) in one call; "
            "convert them to one framework or pass backend="
        )
    return found.pop() if found else "numpy"


def resolve(backend: str | None, *arrays: Any) -> ModuleType:
    return get_backend(infer_backend(*arrays) if backend is None else backend)


def installed_backends() -> tuple[str, ...]:
    """Backends whose framework can be imported here (numpy always)."""
    return tuple(
        name for name, fw in _FRAMEWORK.items() if fw in sys.modules or importlib.util.find_spec(fw) is not None
    )


def to_numpy(x: Any) -> Any:
    """A NumPy array from a NumPy, jax or torch array (bfloat16 as ml_dtypes.bfloat16)."""
    name = array_backend(x)
    if name == "numpy":
        import numpy as np

        return np.asarray(x)
    return get_backend(name).to_numpy(x)


def from_numpy(x: Any, backend: str) -> Any:
    """The array `x` (NumPy) as an array of `backend`, same dtype."""
    module = get_backend(backend)
    if backend == "numpy":
        import numpy as np

        return np.asarray(x)
    return module.from_numpy(x)
