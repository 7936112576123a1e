"""The JAX backend, eager and under jax.jit.

float64 cases must really run in float64, so jax_enable_x64 is switched on here (the variants are
loaded at collection time, before any jax array exists).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from harness import Variant

import refmask

jax.config.update("jax_enable_x64", True)


class JitVariant(Variant):
    """refmask.<fn> inside jax.jit: NumPy-array arguments are traced, everything else is static.

    Static arguments (sizes, policies, dtypes, None) are closed over, so value-dependent checks are
    skipped as they are under a user's jit, and every result is produced by a compiled function.
    """

    def call(self, fn: str, *args: Any, **kwargs: Any) -> Any:
        positions = [n for n, a in enumerate(args) if isinstance(a, np.ndarray)]
        names = [name for name, v in kwargs.items() if isinstance(v, np.ndarray)]

        def traced(dyn_args, dyn_kwargs):
            full = list(args)
            for n, a in zip(positions, dyn_args):
                full[n] = a
            return getattr(refmask, fn)(*full, backend=self.backend, **{**kwargs, **dyn_kwargs})

        dyn_args = [self.asarray(args[n]) for n in positions]
        dyn_kwargs = {name: self.asarray(kwargs[name]) for name in names}
        return self.to_numpy(jax.jit(traced)(dyn_args, dyn_kwargs))


VARIANTS = [Variant("jax"), JitVariant("jax", id="jax-jit")]
