"""The torch table of array operations (refmask._arrays.ArrayOps) that refmask's shared code runs on."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def to_numpy(x: Any) -> np.ndarray[Any, Any]:
    """A NumPy array holding the same values; bfloat16 becomes ml_dtypes.bfloat16 bit for bit."""
    if not isinstance(x, torch.Tensor):
        return np.asarray(x)
    x = x.detach().resolve_conj().resolve_neg().cpu()
    if x.dtype == torch.bfloat16:
        import ml_dtypes

        return x.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return x.numpy()


def from_numpy(a: np.ndarray[Any, Any]) -> torch.Tensor:
    """A CPU tensor with a's values and dtype (ml_dtypes.bfloat16 -> torch.bfloat16, bit for bit)."""
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(np.array(a, copy=True, order="C").view(np.int16)).view(torch.bfloat16)
    if not (a.flags.writeable and a.flags.c_contiguous) or a.dtype.byteorder == ">":
        a = np.array(a, dtype=a.dtype.newbyteorder("=") if a.dtype.byteorder == ">" else a.dtype, order="C")
    return torch.from_numpy(a)


def tracing(*xs: Any) -> bool:
    """True under torch.compile or when a tensor is wrapped by a torch.func transform (vmap, grad):
    then values may not be read on the host (no .item(), no data-dependent checks)."""
    if torch.compiler.is_compiling():
        return True
    wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    for x in xs:  # noqa: SIM110 (a loop, not any(generator): this runs on every call)
        if isinstance(x, torch.Tensor) and wrapped(x):
            return True
    return False


def _available() -> str:
    names = ["cpu"]
    for kind in ("cuda", "mps", "xpu"):
        module = getattr(torch, kind, None)
        if module is not None and module.is_available():
            names += [f"{kind}:{n}" for n in range(module.device_count())]
    return ", ".join(names)


def _host_array(x: Any) -> np.ndarray[Any, Any]:
    """A NumPy array from NumPy input, lists, numbers, or another framework's array (jax)."""
    from .._backends import to_numpy as any_to_numpy

    return np.asarray(any_to_numpy(x))


class TorchOps:
    name = "torch"

    def device(self, device: Any) -> torch.device | None:
        """`device=` as a torch.device; a ValueError naming it when torch cannot use it here."""
        if device is None:
            return None
        try:
            d = torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(f"device={device!r} is not a torch device (such as 'cpu', 'cuda', 'cuda:1')") from None
        module = getattr(torch, d.type, None)
        if d.type not in ("cpu", "meta") and not (module is not None and module.is_available()):
            raise ValueError(f"device={device!r} is not available to torch here (available: {_available()})")
        if d.type != "cpu" and d.index is not None and module is not None and d.index >= module.device_count():
            raise ValueError(f"device={device!r} is not available to torch here (available: {_available()})")
        return d

    def asarray(self, x: Any, device: Any = None) -> Any:
        """Tensors stay where they are unless `device` is given; NumPy arrays and lists go to `device`, or to
        torch's default device."""
        if isinstance(x, torch.Tensor) and (device is None or (type(device) is torch.device and x.device == device)):
            return x  # already where it must be (device_of found it there): nothing to check or move
        device = self.device(device)
        if not isinstance(x, torch.Tensor):
            x = from_numpy(_host_array(x))
            if device is None:
                device = torch.get_default_device()
        if device is not None and x.device != torch.device(device):
            x = x.to(device)
        return x

    def device_of(self, named: dict[str, Any]) -> Any:
        device = None
        for x in named.values():  # a plain loop: this runs on every call, and most calls pass one device
            if isinstance(x, torch.Tensor):
                if device is None:
                    device = x.device
                elif x.device != device:
                    found = {n: t.device for n, t in named.items() if isinstance(t, torch.Tensor)}
                    got = ", ".join(f"{n} on {d}" for n, d in found.items())
                    raise ValueError(
                        f"tensors of one call must be on one device; got {got}: move them with .to(device)"
                    )
        return device

    def dtype_name(self, x: Any) -> str:
        return str(x.dtype).removeprefix("torch.")

    def shape(self, x: Any) -> tuple[int, ...]:
        return tuple(x.shape)

    def concrete(self, *xs: Any) -> bool:
        return not tracing(*xs) and not any(isinstance(x, torch.Tensor) and x.device.type == "meta" for x in xs)

    def to_numpy(self, x: Any) -> np.ndarray[Any, Any]:
        return to_numpy(x)

    def produced_dtype(self, name: str) -> str:
        return name

    def where(self, cond: Any, kept: float, masked: float, dtype: str) -> Any:
        # Both values are exact in `dtype` (rounded there once), so torch's own conversion cannot round again.
        out = torch.full(tuple(cond.shape), masked, dtype=getattr(torch, dtype), device=cond.device)
        return out.masked_fill_(cond, kept)

    def broadcast_to(self, x: Any, shape: tuple[int, ...]) -> Any:
        return x.expand(shape)

    def signature(self, x: Any) -> Any:
        # Plain tensors only: a FakeTensor (make_fx, torch.export) may have symbolic sizes, which cannot key
        # a table. And not under torch.compile: dynamo would guard on the table instead of tracing the checks.
        if type(x) is not torch.Tensor or torch.compiler.is_compiling():
            return None
        return x.shape, x.dtype, x.device


TORCH = TorchOps()
