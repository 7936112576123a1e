"""`import refmask` imports NumPy only; backend= dispatch and inference from array types."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from typing import Any

import numpy as np
import pytest

import refmask
from harness.compare import assert_identical
from refmask import _api, _backends, oracle
from refmask.testing.cases import ATTENTION_CASES, MASK_CALLS

FRAMEWORKS = ("jax", "jaxlib", "flax", "torch")


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


def test_import_refmask_and_numpy_calls_import_no_framework():
    result = run_python(f"""
        import sys
        import numpy as np
        import refmask, refmask.testing

        def loaded():
            return sorted(m for m in {FRAMEWORKS!r} if m in sys.modules)

        assert loaded() == [], ("after import refmask", loaded())
        padding = refmask.attention_padding_mask(refmask.padding_mask([4, 2], 4))
        mask = refmask.and_masks(refmask.causal_mask(4), padding)
        refmask.masked_softmax(np.zeros((2, 1, 4, 4), np.float32), mask, fully_masked="uniform")
        q = np.ones((2, 2, 4, 3))
        refmask.attention(q, q, q, mask, return_weights=True)
        refmask.from_torch_mha(*refmask.to_torch_mha(refmask.causal_mask(3)))
        refmask.from_additive(refmask.to_additive(mask, "float16", fill="-inf"))
        refmask.testing.assert_weights_close(np.ones(2), np.ones(2))
        assert refmask.installed_backends()[0] == "numpy"
        assert loaded() == [], ("after numpy-backend calls", loaded())
        print("ok")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_installed_backends_are_those_that_can_run_here():
    installed = refmask.installed_backends()
    assert installed[0] == "numpy"
    for name in refmask.BACKENDS:
        why = _backends.unavailable_reason(name)
        assert (name in installed) == (why is None), (name, why)
        if why is not None:
            assert f"refmask[{name}]" in why, why  # the install hint
            assert importlib.util.find_spec(name) is None


def _one_call_per_public_function():
    """{function name: (args, kwargs)}: the first catalogue call of each mask function, and one
    attention problem for the rest."""
    calls: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}
    for call in MASK_CALLS:
        calls.setdefault(call.fn, (call.args, call.kwargs))
    case = next(c for c in ATTENTION_CASES if c.id == "causal+padding")
    a, mask = case.arrays("float32"), case.mask()
    assert mask is not None
    calls.setdefault("from_multiplicative", ((mask.astype(np.float32),), {}))
    calls["masked_softmax"] = ((a["scores"], mask), {"fully_masked": "uniform"})
    calls["attention_weights"] = ((a["q"], a["k"], mask), {"scale": 0.5})
    calls["attention"] = ((a["q"], a["k"], a["v"], mask), {"is_causal": True, "return_weights": True})
    d_out = np.ones((*a["q"].shape[:-1], a["v"].shape[-1]), np.float32)
    calls["attention_vjp"] = ((a["q"], a["k"], a["v"], mask, d_out), {"bias": np.zeros(mask.shape[-2:], np.float32)})
    # Results the shared catalogue does not hold (unpad's Python int, int64 that jax without x64 makes
    # int32); their other backends are held to the oracle in tests/test_varlen.py.
    calls["alibi_slopes"] = ((12,), {})
    calls["alibi_bias"] = ((4, 3, 5), {"align": "bottom_right", "dtype": "float64"})
    valid = np.array([[True, False, True], [False, True, True]])
    calls["unpad"] = ((np.arange(12.0).reshape(2, 3, 2), valid), {})
    calls["position_ids_from_padding"] = ((valid,), {})
    calls["positions_in_segments"] = ((np.array([[0, 0, 1, 1, -1]]),), {})
    calls["segment_ids_from_positions"] = ((np.array([[0, 1, 0, 1, 2, 0]]),), {})
    return calls


NUMPY_CALLS = _one_call_per_public_function()


@pytest.mark.parametrize("fn", _api.PUBLIC)
def test_numpy_backend_is_the_oracle(fn):
    args, kwargs = NUMPY_CALLS[fn]
    expected = getattr(oracle, fn)(*args, **kwargs)
    for backend in ("numpy", None):
        assert_identical(getattr(refmask, fn)(*args, backend=backend, **kwargs), expected, f"{fn}, backend={backend}")


@pytest.mark.parametrize("arrays", [
    (np.zeros(3),),
    (np.zeros(3), None, [1.0, 2.0]),
    ([[True]], 3.0),
    (),
])
def test_numpy_arrays_lists_and_numbers_infer_numpy(arrays):
    assert _backends.infer_backend(*arrays) == "numpy"
    assert _backends.resolve(None, *arrays) is oracle


def test_public_functions_return_numpy_for_numpy_input():
    out = refmask.masked_softmax(np.zeros((2, 3), np.float32), np.ones((2, 3), bool))
    assert type(out) is np.ndarray and out.dtype == np.float32
    assert type(refmask.causal_mask(3)) is np.ndarray
    assert type(refmask.causal_mask(3, backend="numpy")) is np.ndarray


def _framework(backend, module):
    why = _backends.unavailable_reason(backend)
    if why is not None:
        pytest.skip(why)
    return importlib.import_module(module)


@pytest.fixture
def jnp():
    return _framework("jax", "jax.numpy")


@pytest.fixture
def torch():
    return _framework("torch", "torch")


def test_jax_arrays_are_recognised(jnp):
    assert _backends.infer_backend(jnp.zeros(3)) == "jax"
    assert _backends.infer_backend(np.zeros(3), jnp.zeros(3), None) == "jax"


def test_torch_arrays_are_recognised(torch):
    assert _backends.infer_backend(torch.zeros(3)) == "torch"
    assert _backends.infer_backend(torch.zeros(3), [1.0], np.ones(2)) == "torch"


def test_mixing_jax_and_torch_arrays_is_a_type_error(jnp, torch):
    with pytest.raises(TypeError) as raised:
        refmask.masked_softmax(jnp.zeros((2, 3)), torch.ones((2, 3), dtype=torch.bool))
    message = str(raised.value)
    assert "jax" in message and "torch" in message and "different frameworks" in message and "backend=" in message
    with pytest.raises(TypeError, match="different frameworks"):
        refmask.attention(jnp.zeros((1, 2, 2)), torch.zeros((1, 2, 2)), np.zeros((1, 2, 2)))


def test_public_docstrings_are_the_oracle_definitions():
    for name in ["causal_mask", "masked_softmax", "attention", "from_additive", "from_torch_mha"]:
        public, definition = getattr(refmask, name), getattr(oracle, name)
        assert public.__doc__.startswith(definition.__doc__), name
        assert "backend" in public.__doc__


def test_api_reference_examples_run():
    import doctest
    from pathlib import Path

    api = Path(__file__).resolve().parent.parent / "docs" / "api.md"
    result = doctest.testfile(str(api), module_relative=False, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 20 and result.failed == 0, result


def test_api_reference_documents_every_public_function():
    from pathlib import Path

    api = (Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text()
    for name in refmask.__all__:
        assert f"`{name}" in api or f"refmask.{name}" in api, name
