"""The torch backend as the shared suite sees it: eager, and with autograd recording.

"torch-autograd" passes every floating tensor with requires_grad=True, so the backend takes its
autograd-safe path (no in-place softmax, out-of-place fixes of fully-masked rows); it then runs a
backward pass through each floating result and checks that the gradients exist and, under the
"zero" and "uniform" policies, are finite everywhere (fully-masked rows included, and also when
masked scores hold NaN or inf). Results are detached before they are compared with the oracle.
"""

from __future__ import annotations

from typing import Any

import torch

from harness import Variant


class AutogradVariant(Variant):
    def __init__(self) -> None:
        super().__init__("torch", id="torch-autograd")

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
            ((torch.arange(o.numel(), dtype=torch.float64) % 7 - 3) / 4).reshape(o.shape).to(o.dtype)
            for o in outputs
        ]
        grads = torch.autograd.grad(outputs, inputs, cotangents, allow_unused=True)
        for x, g in zip(inputs, grads, strict=True):
            assert g is not None, "an input that requires grad got no gradient"
            assert g.shape == x.shape and g.dtype == x.dtype
            if policy in ("zero", "uniform"):
                assert bool(torch.isfinite(g).all()), f'non-finite gradient under fully_masked="{policy}"'


VARIANTS = {"torch": Variant("torch"), "torch-autograd": AutogradVariant()}
