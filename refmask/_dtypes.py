"""The dtype vocabulary of every backend: names, spellings, the ml_dtypes bridge, rounding to a dtype.

Inside refmask a dtype is its canonical *name* ("float16", "bfloat16", "float32", "float64", "int8",
"bool", ...), whatever framework it came from, so one decision serves every backend. A user may name a
floating dtype by its canonical name, one of the usual spellings below, or a NumPy, jax or torch dtype
object; "float" is refused, because it means float64 in NumPy and Python but float32 in torch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

FLOAT_DTYPES: tuple[str, ...] = ("float16", "bfloat16", "float32", "float64")
# float16 and bfloat16 are computed in float32 and rounded once, on every backend.
LOW_PRECISION: tuple[str, ...] = ("float16", "bfloat16")

SPELLINGS = {
    "fp16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "fp32": "float32",
    "single": "float32",
    "fp64": "float64",
    "double": "float64",
}
AMBIGUOUS = {"float": "float64 in NumPy and Python, float32 in torch"}

_ACCEPTED = ", ".join(repr(n) for n in (*FLOAT_DTYPES, *SPELLINGS))


def name_of(dtype: Any) -> str:
    """The canonical name of a dtype object of any framework ("float32", "int64", "bool", ...)."""
    if isinstance(dtype, np.dtype):
        return numpy_name(dtype)
    module = type(dtype).__module__
    if module == "torch":  # torch.float32 prints as "torch.float32"
        return str(dtype).removeprefix("torch.")
    return numpy_name(np.dtype(dtype))


_NUMPY_NAMES: dict[np.dtype[Any], str] = {}


def numpy_name(dtype: np.dtype[Any]) -> str:
    """dtype.name, remembered: NumPy builds the name in Python on every access (microseconds on a small call).
    A plain dict, not functools.lru_cache, so torch.compile traces through it without a warning."""
    name = _NUMPY_NAMES.get(dtype)
    if name is None:
        name = _NUMPY_NAMES[dtype] = str(dtype.name)
    return name


def float_dtype(arg: str, dtype: Any) -> str:
    """The canonical name of the floating dtype that `dtype` names; TypeError naming `arg` otherwise."""
    if isinstance(dtype, str):
        if dtype in AMBIGUOUS:
            raise TypeError(
                f'{arg}={dtype!r} is ambiguous ({AMBIGUOUS[dtype]}); name it: "float32" or "float64"'
            )
        name = SPELLINGS.get(dtype, dtype)
        if name not in FLOAT_DTYPES:
            raise TypeError(f"{arg} must name a floating dtype, one of {_ACCEPTED}; got {dtype!r}")
        return name
    if dtype is None or isinstance(dtype, bool):
        raise TypeError(f"{arg} must be a floating dtype or its name ({_ACCEPTED}); got {dtype!r}")
    try:
        name = name_of(dtype)
    except TypeError:
        raise TypeError(f"{arg} must be a floating dtype or its name ({_ACCEPTED}); got {dtype!r}") from None
    if name not in FLOAT_DTYPES:
        raise TypeError(f"{arg} must be a floating dtype (float16, bfloat16, float32 or float64); got {name}")
    return name


def is_floating(name: str) -> bool:
    return name in FLOAT_DTYPES


def is_integer(name: str) -> bool:
    return name.startswith(("int", "uint"))


def compute_dtype(name: str) -> str:
    """The precision a backend computes `name`'s softmax and products in."""
    return "float32" if name in LOW_PRECISION else name


def numpy_dtype(name: str) -> np.dtype[Any]:
    """The NumPy dtype called `name`; "bfloat16" is ml_dtypes' (installed by the jax, torch and test extras)."""
    if name == "bfloat16":
        try:
            import ml_dtypes
        except ImportError as err:
            from ._backends import install_hint

            hint = f"{install_hint('test')}, or pip install ml_dtypes"
            raise ImportError(f"bfloat16 in NumPy needs ml_dtypes: {hint}") from err
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def finfo(name: str) -> Any:
    """finfo of a floating dtype (NumPy's, or ml_dtypes' for bfloat16)."""
    if name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.finfo(ml_dtypes.bfloat16)  # type: ignore[no-untyped-call]
    return np.finfo(name)


def eps(name: str) -> float:
    """Machine epsilon of a floating dtype (bfloat16's 2**-7 needs no ml_dtypes)."""
    return 2.0**-7 if name == "bfloat16" else float(np.finfo(name).eps)


def lowest(name: str) -> float:
    """finfo(name).min, the most negative finite value, as a Python float."""
    return float(finfo(name).min)


def round_to(value: float, name: str) -> float:
    """`value` rounded to nearest-even in dtype `name` in one step, as a Python float (-inf/inf on overflow).

    torch rounds Python floats to float16/bfloat16 through float32, which can round twice; NumPy and
    ml_dtypes round once, so every backend takes its fill and threshold values from here.
    """
    if name == "float64" or math.isnan(value) or math.isinf(value):
        return float(value)
    with np.errstate(over="ignore"):
        return float(np.asarray(value, np.float64).astype(numpy_dtype(name)))
