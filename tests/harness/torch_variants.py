"""The torch backend as the shared suite sees it: eager, and with autograd recording.

"torch-autograd" passes every floating tensor with requires_grad=True, so the backend takes its
autograd-safe path (no in-place softmax, out-of-place fixes of fully-masked rows); it then runs a
backward pass through each floating result and checks that the gradients exist and, under the
"zero" and "uniform" policies, are finite everywhere (fully-masked rows included, and also when
masked scores hold NaN or inf). Results are detached before they are compared with the oracle.

REFMASK_TEST_DEVICE picks the device: unset (or "cpu"), torch's default, the CPU; "cuda" or "cuda:N",
every NumPy argument becomes a tensor on that GPU and torch's factory functions default to it for the
test (so a mask refmask builds from sizes alone is made there too). `python -m comparisons.gpu` runs
the cross-backend suite so.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from typing import Any

import torch

from harness import Variant
from harness.environments import DEVICE_ENV


def device_from_env() -> torch.device | None:
    """The device of REFMASK_TEST_DEVICE: None when unset; a ValueError naming it for anything but
    cpu, cuda or cuda:N, or for CUDA where torch has none."""
    name = os.environ.get(DEVICE_ENV, "").strip()
    if not name:
        return None
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise ValueError(f"{DEVICE_ENV} must be cpu, cuda or cuda:N; got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"{DEVICE_ENV}={name} asks for CUDA, but this torch ({torch.__version__}) sees no CUDA device")
    return torch.device(name)


DEVICE = device_from_env()


class TorchVariant(Variant):
    """Eager calls with backend="torch"; NumPy arguments as tensors on DEVICE."""

    def __init__(self, id: str = "torch") -> None:
        super().__init__("torch", id)

    @contextlib.contextmanager
    def configured(self) -> Iterator[None]:
        if DEVICE is None:
            yield
            return
        with torch.device(DEVICE):
            yield

    def asarray(self, x: Any) -> Any:
        y = super().asarray(x)
        return y.to(DEVICE) if DEVICE is not None and isinstance(y, torch.Tensor) else y


class AutogradVariant(TorchVariant):
    def __init__(self) -> None:
        super().__init__(id="torch-autograd")

    def call(self, fn: str, *args: Any, **kwargs: Any) -> Any:
        import refmask

        args = tuple(self._leaf(self.asarray(a)) for a in args)
        kwargs = {k: self._leaf(self.asarray(v)) for k, v in kwargs.items()}
        result = getattr(refmask, fn)(*args, backend=self.backend, **kwargs)
        outputs = [r for r in (result if isinstance(result, tuple) else (result,))
                   if isinstance(r, torch.Tensor) and r.requires_grad]
        inputs = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor) and a.requires_grad]
        if outputs and inputs:
            self._check_backward(outputs, inputs, kwargs.get("fully_masked", "zero"))
        return self.to_numpy(result)

    @staticmethod
    def _leaf(x: Any) -> Any:
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            return x.detach().requires_grad_(True)
        return x

    @staticmethod
    def _check_backward(outputs: list[torch.Tensor], inputs: list[torch.Tensor], policy: str) -> None:
        # A fixed, non-constant cotangent (a constant one has a zero softmax gradient).
        cotangents = [
            ((torch.arange(o.numel(), dtype=torch.float64, device=o.device) % 7 - 3) / 4).reshape(o.shape).to(o.dtype)
            for o in outputs
        ]
        grads = torch.autograd.grad(outputs, inputs, cotangents, allow_unused=True)
        for x, g in zip(inputs, grads, strict=True):
            assert g is not None, "an input that requires grad got no gradient"
            assert g.shape == x.shape and g.dtype == x.dtype
            if policy in ("zero", "uniform"):
                assert bool(torch.isfinite(g).all()), f'non-finite gradient under fully_masked="{policy}"'


VARIANTS = {"torch": TorchVariant(), "torch-autograd": AutogradVariant()}
