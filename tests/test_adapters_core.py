"""The torch, jax and flax adapters on the newer case families: additive masks built in the case's fill
dtype, windows through refmask.conventions, flex's soft-capping score_mod, and gradients through each
library's autodiff (torch autograd, jax.vjp) equal to refmask.attention_vjp's.

The structure helpers (flex_mask_mod, flax_mask) are checked against every case's mask in
tests/test_comparisons.py; the matrix itself, against comparisons/expected.json.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest

from comparisons._base import NotExpressible
from comparisons.cases import Case, all_cases
from comparisons.matrix.frameworks import load_paths, missing_reason
from comparisons.matrix.reference import assert_gradients_agree
from refmask._backends import missing_dependency


def needs(framework: str) -> None:
    """Skip the test, with the install hint, unless `framework`'s adapters can run here."""
    why = missing_reason(framework) or missing_dependency("ml_dtypes", "test", "the bfloat16 case")
    if why is not None:
        pytest.skip(why)


@functools.cache
def _cases() -> dict[str, Case]:
    return {c.id: c for c in all_cases()}


def case(case_id: str) -> Case:
    return _cases()[case_id]


@functools.cache
def _paths(framework: str) -> dict:
    paths, _, _ = load_paths([framework])
    return {p.id: p for p in paths}


def test_additive_mask_is_built_in_the_fill_dtype_then_cast():
    """float16-fills-upcast: masked entries are float16's finfo.min (-65504) as float32, not float32's."""
    needs("torch")
    import torch

    from comparisons.torch_paths import additive_mask

    upcast = case("float16-fills-upcast")
    bias = additive_mask(upcast, "min")
    assert bias.dtype == torch.float32
    mask = np.broadcast_to(upcast.mask, upcast.shape)
    np.testing.assert_array_equal(bias.numpy(), np.where(mask, np.float32(0), np.float32(-65504)))
    np.testing.assert_array_equal(additive_mask(upcast, "-inf").numpy(), np.where(mask, 0, -np.inf))
    plain = case("padding-right")  # no fill dtype: the compute dtype's own finfo.min
    assert additive_mask(plain, "min").min().item() == torch.finfo(torch.float32).min


def test_local_window_size_is_the_argument_conventions_maps_to_the_window():
    """An asymmetric window is jax's pair, a symmetric one its int; each maps back through conventions."""
    needs("jax")
    from comparisons.jax_paths import local_window_size
    from refmask import conventions

    assert local_window_size((2, 0)) == (2, 0)
    assert local_window_size((3, 3)) == 3
    for window in ((2, 0), (3, 3), (0, 4)):
        assert conventions.jax_local_window_size(local_window_size(window)) == window


def test_local_window_size_refuses_an_unbounded_side():
    needs("jax")
    from comparisons.jax_paths import local_window_size

    with pytest.raises(NotExpressible, match="local_window_size"):
        local_window_size((None, 0))  # type: ignore[arg-type]


def test_flex_score_mod_soft_caps_the_scaled_scores():
    needs("torch")
    import torch

    from comparisons.torch_paths import flex_score_mod

    assert flex_score_mod(case("causal-square")) is None
    score_mod = flex_score_mod(case("softcap"))
    assert score_mod is not None
    scores = torch.tensor([-50.0, -2.0, 0.0, 0.5, 50.0])
    torch.testing.assert_close(score_mod(scores, 0, 0, 0, 0), 2.0 * torch.tanh(scores / 2.0))
    assert score_mod(scores, 0, 0, 0, 0).abs().max() <= 2.0  # never beyond softcap = 2


def _with_cotangent(c: Case) -> Case:
    """The case as a "grad" case: a fixed d_out of the output's shape."""
    d_out = np.random.default_rng(0).standard_normal(c.q.shape).astype(c.q.dtype)
    return dataclasses.replace(c, d_out=d_out)


GRADIENT_PATHS = [
    ("torch", "torch.softmax-masked_fill"), ("torch", "torch.softmax-additive-inf"),
    ("torch", "torch.mha-weights"), ("torch", "torch.sdpa-bool"), ("torch", "torch.sdpa-additive-min"),
    ("jax", "jax.dpa-structure"), ("flax", "flax.dot_product_attention_weights"),
]


@pytest.mark.parametrize("framework, path_id", GRADIENT_PATHS)
def test_gradients_equal_the_oracle_where_every_row_keeps_a_key(framework, path_id):
    """Causal T=S (no fully-masked row, so every policy agrees): the path's (dq, dk, dv) through its
    library's autodiff, in (B, H, T, D) / (B, H, S, D), equal refmask.attention_vjp's."""
    needs(framework)
    c = _with_cotangent(case("causal-square"))
    native = _paths(framework)[path_id].fn(c)
    assert native.grads is not None
    assert [g.shape for g in native.grads] == [c.q.shape, c.k.shape, c.v.shape]
    assert_gradients_agree(native.grads, c, c.q, c.k, c.v, c.mask, "zero")


def test_masked_fill_blocks_the_gradient_an_additive_mask_passes():
    """The gradients case: masked_fill(-inf) and + (-inf) have the same NaN forward on fully-masked
    rows, but masked_fill's backward zeroes the masked scores' gradient (dq 0 there, dk finite),
    while the addition passes the NaN on to dq and dk."""
    needs("torch")
    paths = _paths("torch")
    c = case("gradients")
    fully_masked = np.broadcast_to(~c.mask.any(axis=-1, keepdims=True), c.q.shape)
    dq, dk, _ = paths["torch.softmax-masked_fill"].fn(c).grads
    assert np.all(dq[fully_masked] == 0) and np.isfinite(dk).all()
    dq, dk, _ = paths["torch.softmax-additive-inf"].fn(c).grads
    assert np.isnan(dq[fully_masked]).all() and np.isnan(dk).any()
