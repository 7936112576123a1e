"""The jax table of array operations (refmask._arrays.ArrayOps) that refmask's shared code runs on."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import _dtypes


class JaxOps:
    name = "jax"

    def asarray(self, x: Any, device: Any = None) -> Any:
        # Without jax_enable_x64, a float64 (int64) NumPy array becomes float32 (int32): JAX's convention,
        # followed here; every later check reads the dtype of the array this returns.
        if isinstance(x, jax.Array):
            return x
        from .._backends import to_numpy  # another framework's array (torch) converts through NumPy

        return jnp.asarray(to_numpy(x))

    def device(self, device: Any) -> Any:
        """`device=` as a jax Device or Sharding; a platform name ("cpu", "gpu") means its first device."""
        if device is None or not isinstance(device, str):
            return device
        try:
            return jax.devices(device)[0]
        except RuntimeError:
            available = sorted({d.platform for d in jax.devices()})
            raise ValueError(
                f"device={device!r} is not available to jax here (available: {', '.join(available)})"
            ) from None

    def device_of(self, named: dict[str, Any]) -> Any:
        return None

    def signature(self, x: Any) -> Any:
        # Concrete arrays only: a traced call runs its checks once per trace anyway, and a tracer's shape may
        # be symbolic (jax.export's shape polymorphism).
        if not isinstance(x, jax.Array) or isinstance(x, jax.core.Tracer):
            return None
        return x.shape, x.dtype

    def dtype_name(self, x: Any) -> str:
        dtype = x.dtype
        return _dtypes.numpy_name(dtype if isinstance(dtype, np.dtype) else np.dtype(dtype))

    def shape(self, x: Any) -> tuple[int, ...]:
        return tuple(x.shape)

    def concrete(self, *xs: Any) -> bool:
        return not any(isinstance(x, jax.core.Tracer) for x in xs)

    def to_numpy(self, x: Any) -> np.ndarray[Any, Any]:
        return np.asarray(x)

    def produced_dtype(self, name: str) -> str:
        return np.dtype(jax.dtypes.canonicalize_dtype(_dtypes.numpy_dtype(name))).name

    def where(self, cond: Any, kept: float, masked: float, dtype: str) -> Any:
        dt = _dtypes.numpy_dtype(dtype)
        return jnp.where(cond, jnp.asarray(kept, dt), jnp.asarray(masked, dt))

    def broadcast_to(self, x: Any, shape: tuple[int, ...]) -> Any:
        return jnp.broadcast_to(x, shape)


JAX = JaxOps()
