"""The JAX backend, eager and under jax.jit, with float64 enabled, and eager in JAX's default configuration.

"jax" and "jax-jit" switch jax_enable_x64 on for the test they run (restored after), so float64
cases really compute in float64. "jax-x64off" runs with it off, as JAX runs unless told otherwise:
there a float64 (int64) input becomes float32 (int32) when it enters JAX, so refmask computes and
returns float32, and the expected result is the oracle's on the inputs rounded the same way.

REFMASK_TEST_DEVICE picks the device: unset, jax's default one; "cpu", the CPU; "cuda" or "cuda:N", that
GPU: every NumPy argument is placed there and it is jax's default device for the test (so what refmask
builds from sizes alone is made there too). `python -m comparisons.gpu` runs the cross-backend suite so.
"""

from __future__ import annotations

import collections
import contextlib
import inspect
import itertools
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

import refmask
from harness import Variant
from harness.environments import DEVICE_ENV


def device_from_env() -> jax.Device | None:
    """The device of REFMASK_TEST_DEVICE: None when unset; a ValueError naming it for anything but
    cpu, cuda or cuda:N, or for a GPU that jax does not have."""
    name = os.environ.get(DEVICE_ENV, "").strip()
    if not name:
        return None
    found = re.fullmatch(r"cpu|cuda(?::(\d+))?", name)
    if found is None:
        raise ValueError(f"{DEVICE_ENV} must be cpu, cuda or cuda:N; got {name!r}")
    platform, index = ("cpu" if name == "cpu" else "gpu"), int(found[1] or 0)
    try:
        devices = jax.devices(platform)
    except RuntimeError as err:  # jax's way of saying it has no such backend
        raise ValueError(f"{DEVICE_ENV}={name}: jax {jax.__version__} has no {platform} device ({err})") from None
    if index >= len(devices):
        raise ValueError(f"{DEVICE_ENV}={name}: jax has {len(devices)} {platform} device(s)")
    return devices[index]


DEVICE = device_from_env()


class JaxVariant(Variant):
    def __init__(self, id: str, *, x64: bool) -> None:
        super().__init__("jax", id)
        self.x64 = x64

    @contextlib.contextmanager
    def configured(self) -> Iterator[None]:
        with jax.enable_x64(self.x64), (jax.default_device(DEVICE) if DEVICE is not None else contextlib.nullcontext()):
            yield

    def asarray(self, x: Any) -> Any:
        y = super().asarray(x)
        return jax.device_put(y, DEVICE) if DEVICE is not None and isinstance(y, jax.Array) else y

    def computed_input(self, x: Any) -> Any:
        if self.x64 or not isinstance(x, np.ndarray):
            return x
        with jax.enable_x64(False):
            return x.astype(jax.dtypes.canonicalize_dtype(x.dtype), copy=False)


# Stands for an array argument in a JitVariant cache key.
_ARRAY = object()


def _static_key(value: Any) -> Any:
    """A hashable key that tells static arguments apart by type as well as value (1, 1.0 and True)."""
    if isinstance(value, np.ndarray):
        return _ARRAY
    if isinstance(value, tuple):
        return (tuple, tuple(_static_key(v) for v in value))
    return (type(value), value)


# Arguments whose values one jitted function runs all of at once (see JitVariant).
_BUNDLED = {"fully_masked": ("zero", "uniform", "nan"), "return_weights": (False, True)}


class JitVariant(JaxVariant):
    """refmask.<fn> inside jax.jit: NumPy-array arguments are traced, everything else is static.

    Static arguments (sizes, policies, dtypes, None) are closed over, so value-dependent checks are
    skipped as they are under a user's jit, and every result is produced by a compiled function.
    Like a user's jitted function, each traces and compiles once per shape and dtype of its arrays.

    A call that passes `fully_masked` (and `return_weights`) runs one jitted function that makes the call
    with every policy (with and without weights) at once and returns the result asked for: each is traced
    and compiled under jit as in a user's program, and a catalogue case compiles one program where it would
    compile six (XLA's compile time, not the arithmetic, is what the suite spends). The most recently used
    functions are kept (calls that share static arguments come from one test, or its neighbours), so the
    executables of the whole catalogue do not pile up in memory.
    """

    CACHED_FUNCTIONS = 256

    def __init__(self, id: str, *, x64: bool) -> None:
        super().__init__(id, x64=x64)
        self._jitted: collections.OrderedDict[Any, Any] = collections.OrderedDict()

    def call(self, fn: str, *args: Any, **kwargs: Any) -> Any:
        bundled = _bundled_values(fn, kwargs)
        fixed = {name: v for name, v in kwargs.items() if name not in bundled}
        key = (
            fn,
            tuple(_static_key(a) for a in args),
            tuple(sorted((name, _static_key(v)) for name, v in fixed.items())),
            tuple(bundled),
        )
        jitted = self._jitted.get(key)
        if jitted is None:
            jitted = self._jitted[key] = self._jit(fn, args, fixed, bundled)
            if len(self._jitted) > self.CACHED_FUNCTIONS:
                self._jitted.popitem(last=False)
        else:
            self._jitted.move_to_end(key)
        dyn_args = [self.asarray(a) for a in args if isinstance(a, np.ndarray)]
        dyn_kwargs = {name: self.asarray(v) for name, v in fixed.items() if isinstance(v, np.ndarray)}
        results = jitted(dyn_args, dyn_kwargs)
        asked = tuple(kwargs.get(name, _default(fn, name)) for name in bundled)
        return self.to_numpy(results[_combinations(bundled).index(asked)])

    def _jit(
        self, fn: str, args: tuple[Any, ...], kwargs: dict[str, Any], bundled: dict[str, tuple[Any, ...]]
    ) -> Callable[..., Any]:
        positions = [n for n, a in enumerate(args) if isinstance(a, np.ndarray)]
        static_args = [None if isinstance(a, np.ndarray) else a for a in args]
        static_kwargs = {name: v for name, v in kwargs.items() if not isinstance(v, np.ndarray)}
        target, backend = getattr(refmask, fn), self.backend
        combinations = _combinations(bundled)

        def traced(dyn_args: list[Any], dyn_kwargs: dict[str, Any]) -> Any:
            full = list(static_args)
            for n, a in zip(positions, dyn_args, strict=True):
                full[n] = a
            return [
                target(*full, backend=backend, **static_kwargs, **dyn_kwargs, **dict(zip(bundled, values, strict=True)))
                for values in combinations
            ]

        return jax.jit(traced)


def _bundled_values(fn: str, kwargs: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    """The arguments of this call whose every value one jitted function computes: the policy when the call
    passes one, and then return_weights too for attention."""
    if "fully_masked" not in kwargs:
        return {}
    names = inspect.signature(getattr(refmask, fn)).parameters
    return {name: values for name, values in _BUNDLED.items() if name in names}


def _combinations(bundled: dict[str, tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return list(itertools.product(*bundled.values()))


def _default(fn: str, name: str) -> Any:
    return inspect.signature(getattr(refmask, fn)).parameters[name].default


VARIANTS = {
    "jax": JaxVariant("jax", x64=True),
    "jax-jit": JitVariant("jax-jit", x64=True),
    "jax-x64off": JaxVariant("jax-x64off", x64=False),
}
