"""Gradients of a user's attention function by its own framework's autodiff: torch autograd, jax.vjp.

check_attention(..., grads=True) holds them to refmask.attention_vjp. Each function takes the
forward as a function of the differentiated arrays only (everything else bound), the NumPy values
to differentiate at and the cotangent d_out, and returns one NumPy gradient per array, or None
where the framework gave none (the output does not depend on that array through autodiff).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .._backends import from_numpy, to_numpy

AUTODIFF = {"torch": "torch autograd", "jax": "jax.vjp"}


class NotDifferentiable(Exception):
    """The forward's output cannot be differentiated by the framework (computed outside it)."""


def vjp(backend: str, forward: Callable[..., Any], primals: Sequence[np.ndarray],
        d_out: np.ndarray) -> list[np.ndarray | None]:
    """Gradients of sum(d_out * forward(*primals)) with respect to each primal."""
    if backend == "torch":
        return _torch_vjp(forward, primals, d_out)
    if backend == "jax":
        return _jax_vjp(forward, primals, d_out)
    raise ValueError(f"no autodiff for backend {backend!r}: pass backward_fn")


def _torch_vjp(forward: Callable[..., Any], primals: Sequence[np.ndarray],
               d_out: np.ndarray) -> list[np.ndarray | None]:
    import torch

    inputs = [from_numpy(np.array(x, copy=True), "torch").requires_grad_(True) for x in primals]
    out = forward(*inputs)
    if not isinstance(out, torch.Tensor) or not out.requires_grad:
        raise NotDifferentiable(
            f"its output ({type(out).__name__}) does not require grad: computed outside torch autograd (in NumPy, "
            "under torch.no_grad, or detached)")
    torch.autograd.backward(out, from_numpy(np.array(d_out, copy=True), "torch"))
    return [None if x.grad is None else np.asarray(to_numpy(x.grad)) for x in inputs]


def _jax_vjp(forward: Callable[..., Any], primals: Sequence[np.ndarray],
             d_out: np.ndarray) -> list[np.ndarray | None]:
    import jax

    inputs = [from_numpy(np.array(x, copy=True), "jax") for x in primals]
    _, pullback = jax.vjp(forward, *inputs)
    grads = pullback(from_numpy(np.array(d_out, copy=True), "jax"))
    return [np.asarray(to_numpy(g)) for g in grads]
