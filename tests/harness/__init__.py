"""Backends under test: each framework contributes *variants* (eager, jitted, autograd, ...).

A variant converts NumPy arguments to its framework, calls the public refmask function with its
backend, and returns NumPy results, so one test body runs unchanged on every variant. Each
framework's variants live in their own module (harness/<framework>_variants.py), listed in
VARIANT_MODULES; a framework that is not installed contributes one skipped parameter.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

import numpy as np

import refmask
from refmask._backends import from_numpy, to_numpy

VARIANT_MODULES = {
    "numpy": "harness.numpy_variants",
    "jax": "harness.jax_variants",
    "torch": "harness.torch_variants",
}


class Variant:
    """Eager calls through refmask's public API with backend=self.backend."""

    def __init__(self, backend: str, id: str | None = None) -> None:
        self.backend = backend
        self.id = id or backend

    def asarray(self, x: Any) -> Any:
        return from_numpy(x, self.backend) if isinstance(x, np.ndarray) else x

    def to_numpy(self, x: Any) -> Any:
        if x is None:
            return None
        if isinstance(x, tuple):
            return tuple(self.to_numpy(y) for y in x)
        return np.asarray(to_numpy(x))

    def call(self, fn: str, *args: Any, **kwargs: Any) -> Any:
        """refmask.<fn>(*args, **kwargs, backend=...) with NumPy arrays converted; NumPy results."""
        args = tuple(self.asarray(a) for a in args)
        kwargs = {k: self.asarray(v) for k, v in kwargs.items()}
        return self.to_numpy(getattr(refmask, fn)(*args, backend=self.backend, **kwargs))

    def __repr__(self) -> str:
        return self.id


def load_variants(framework: str) -> list[Variant] | str:
    """The framework's variants, or the reason they are skipped."""
    if importlib.util.find_spec(framework) is None:
        return f"{framework} is not installed (pip install 'refmask[{framework}]')"
    if importlib.util.find_spec(VARIANT_MODULES[framework]) is None:
        return f"no refmask backend for {framework} yet"
    return list(importlib.import_module(VARIANT_MODULES[framework]).VARIANTS)
