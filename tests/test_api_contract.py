"""The API contract: every backend function has the oracle's signature, the public API is the oracle's plus
backend=, and the dtype vocabulary means the same on every backend."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import refmask
from refmask import _api, _backends, _convert, _dtypes, oracle


def _without_annotations(sig: inspect.Signature) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


def _backend_module(name: str):
    why = _backends.unavailable_reason(name)
    if why is not None:
        pytest.skip(why)
    return _backends.get_backend(name)


@pytest.mark.parametrize("backend", _backends.BACKENDS)
@pytest.mark.parametrize("fn", [f for f in oracle.__all__ if f not in _convert.SHARED])
def test_every_backend_function_has_the_oracles_signature(backend, fn):
    module = _backend_module(backend)
    expected = _without_annotations(inspect.signature(getattr(oracle, fn)))
    assert _without_annotations(inspect.signature(getattr(module, fn))) == expected


@pytest.mark.parametrize("fn", _convert.SHARED)
def test_shared_converters_take_the_oracles_parameters_after_ops(fn):
    shared = list(inspect.signature(getattr(_convert, fn)).parameters.values())
    assert shared[0].name == "ops"
    expected = _without_annotations(inspect.signature(getattr(oracle, fn)))
    assert [(p.name, p.kind, p.default) for p in shared[1:]] == expected


@pytest.mark.parametrize("fn", oracle.__all__)
def test_public_function_is_the_oracles_signature_plus_backend(fn):
    public = inspect.signature(getattr(refmask, fn))
    params = list(public.parameters.values())
    assert params[-1].name == "backend" and params[-1].kind is inspect.Parameter.KEYWORD_ONLY
    assert params[-1].default is None
    assert _without_annotations(public.replace(parameters=params[:-1])) == _without_annotations(
        inspect.signature(getattr(oracle, fn))
    )
    assert fn in refmask.__all__


def test_every_public_oracle_function_is_generated():
    assert set(_api.PUBLIC) == set(oracle.__all__)
    for fn in oracle.__all__:
        assert getattr(refmask, fn).__doc__.startswith(getattr(oracle, fn).__doc__)


# ----------------------------------------------------------------------------------------------
# the dtype vocabulary, through every backend

ACCEPTED = {
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float32": "float32",
    "fp32": "float32",
    "single": "float32",
    "float64": "float64",
    "fp64": "float64",
    "double": "float64",
}


def _dtype_objects():
    """(label, dtype object, canonical name) for NumPy, ml_dtypes, jax and torch dtype objects."""
    yield "np.float16", np.float16, "float16"
    yield "np.dtype(float32)", np.dtype("float32"), "float32"
    yield "python float", float, "float64"
    yield "ml_dtypes.bfloat16", "ml_dtypes", "bfloat16"
    for name in ("float16", "bfloat16", "float32", "float64"):
        yield f"torch.{name}", ("torch", name), name
        yield f"jnp.{name}", ("jax", name), name


def _resolve_object(obj):
    if obj == "ml_dtypes":
        return pytest.importorskip("ml_dtypes").bfloat16
    if isinstance(obj, tuple):
        framework, name = obj
        if framework == "torch":
            return getattr(pytest.importorskip("torch"), name)
        return getattr(pytest.importorskip("jax.numpy"), name)
    return obj


def _produced(backend: str, name: str) -> str:
    """What the backend makes for `name`: jax without x64 makes float32 for float64 (JAX's convention)."""
    if backend == "jax":
        return _backends.get_backend("jax").OPS.produced_dtype(name)
    return name


@pytest.mark.parametrize("backend", _backends.BACKENDS)
@pytest.mark.parametrize("spelling", list(ACCEPTED))
def test_every_dtype_spelling_means_the_same_on_every_backend(backend, spelling):
    _backend_module(backend)
    mask = refmask.causal_mask(2, backend=backend)
    bias = refmask.to_additive(mask, spelling, fill="min")
    produced = _produced(backend, ACCEPTED[spelling])
    assert _dtypes.name_of(bias.dtype) == produced
    assert float(bias[0, 1]) == _dtypes.lowest(produced)


@pytest.mark.parametrize("backend", _backends.BACKENDS)
@pytest.mark.parametrize(("label", "obj", "name"), [pytest.param(*row, id=row[0]) for row in _dtype_objects()])
def test_dtype_objects_of_any_framework_are_accepted_on_every_backend(backend, label, obj, name):
    _backend_module(backend)
    dtype = _resolve_object(obj)
    bias = refmask.to_additive(refmask.causal_mask(2, backend=backend), dtype)
    assert _dtypes.name_of(bias.dtype) == _produced(backend, name)


@pytest.mark.parametrize("backend", _backends.BACKENDS)
@pytest.mark.parametrize(
    ("dtype", "fragment"),
    [
        ("float", "ambiguous"),
        ("flaot32", "'float16', 'bfloat16', 'float32', 'float64'"),
        (None, "got None"),
        ("int32", "must name a floating dtype"),
        (np.int64, "got int64"),
        (True, "got True"),
    ],
)
def test_bad_dtype_names_are_refused_alike_on_every_backend(backend, dtype, fragment):
    _backend_module(backend)
    mask = refmask.causal_mask(2, backend=backend)
    with pytest.raises(TypeError, match="dtype") as err:
        refmask.to_additive(mask, dtype)
    assert fragment in str(err.value)


def test_typing_stub_is_generated_from_the_oracle():
    from pathlib import Path

    committed = (Path(_api.__file__).with_name("_api.pyi")).read_text()
    assert committed == _api.stub_source(), "refmask/_api.pyi is stale: run python -m refmask._stubgen"
