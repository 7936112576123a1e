"""Backends under test: each framework contributes *variants* (eager, jitted, autograd, ...).

A variant converts NumPy arguments to its framework, calls the public refmask function with its
backend, and returns NumPy results, so one test body runs unchanged on every variant. VARIANTS
names them all without importing any framework; a variant's module (harness/<backend>_variants.py)
is imported only when a test that uses it is set up, after refmask's registry has said that the
backend can run here. The oracle is not a variant: the suite compares backends with it.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

import refmask
from refmask import oracle
from refmask._backends import from_numpy, to_numpy, unavailable_reason


class Variant:
    """Eager calls through refmask's public API with backend=self.backend."""

    def __init__(self, backend: str, id: str | None = None) -> None:
        self.backend = backend
        self.id = id or backend

    @contextlib.contextmanager
    def configured(self) -> Iterator[None]:
        """The framework's configuration this variant runs in, for the duration of one test."""
        yield

    def computed_input(self, x: Any) -> Any:
        """A NumPy argument as this variant computes on it (the same array unless the framework converts it)."""
        return x

    def expected(self, fn: str, *args: Any, **kwargs: Any) -> Any:
        """The oracle's oracle.<fn>(*args, **kwargs) on the arguments as this variant computes on them."""
        args = tuple(self.computed_input(a) for a in args)
        kwargs = {k: self.computed_input(v) for k, v in kwargs.items()}
        return getattr(oracle, fn)(*args, **kwargs)

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


@dataclass(frozen=True)
class VariantName:
    """A variant named without importing its framework: `id` in harness/<backend>_variants.py."""

    id: str
    backend: str

    def unavailable_reason(self) -> str | None:
        """Why this variant cannot run here (refmask's registry: its framework is missing), or None."""
        return unavailable_reason(self.backend)

    def load(self) -> Variant:
        variants: dict[str, Variant] = importlib.import_module(f"harness.{self.backend}_variants").VARIANTS
        return variants[self.id]


VARIANTS = (
    VariantName("jax", "jax"),
    VariantName("jax-jit", "jax"),
    VariantName("jax-x64off", "jax"),
    VariantName("torch", "torch"),
    VariantName("torch-autograd", "torch"),
)
