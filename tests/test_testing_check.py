"""check_attention: runs a user's function over the catalogue and generated examples, against the oracle."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

import refmask
from refmask._backends import unavailable_reason
from refmask.testing import MASK_KINDS, CheckError, CheckReport, check_attention
from refmask.testing.cases import ATTENTION_CASES, CASE_KINDS

FAST: dict[str, Any] = {"examples": 0, "dtypes": ["float32"]}


def oracle_bhtd(q, k, v, mask):
    return refmask.attention(q, k, v, mask)


def oracle_bthd(q, k, v, mask):
    t = lambda x: np.swapaxes(x, 1, 2)  # noqa: E731
    return t(refmask.attention(t(q), t(k), t(v), mask))


def numpy_attention(q, k, v, mask, policy="zero"):
    """A plain NumPy kernel (float32 arithmetic for 16-bit inputs) following `policy`."""
    work = np.float64 if q.dtype == np.float64 else np.float32
    s = (q.astype(work) @ np.swapaxes(k.astype(work), -1, -2)) * work(1 / np.sqrt(q.shape[-1]))
    s = np.where(mask, s, -np.inf)
    m = s.max(axis=-1, keepdims=True, initial=-np.inf)
    e = np.exp(s - np.where(np.isfinite(m), m, 0))
    total = e.sum(axis=-1, keepdims=True)
    w = e / np.where(total > 0, total, 1)
    empty = ~np.broadcast_to(mask, s.shape).any(axis=-1, keepdims=True)
    if policy == "uniform":
        w = np.where(empty, work(1 / max(s.shape[-1], 1)), w)
    elif policy == "nan":
        w = np.where(empty, work(np.nan), w)
    return (w @ v.astype(work)).astype(q.dtype)


def test_correct_kernel_passes_and_gets_a_report():
    report = check_attention(numpy_attention)
    assert isinstance(report, CheckReport)
    n_cases = sum(1 for c in ATTENTION_CASES if 0 not in (*c.batch, c.q_len, c.kv_len))
    assert report.cases == 4 * n_cases
    assert report.examples == 50
    assert set(report.worst_output_ulp) == {"float64", "float32", "float16", "bfloat16"}
    assert all(0 <= e <= 32 for e in report.worst_output_ulp.values())
    assert report.worst_weights_ulp == {}
    assert any("zero-length" in s for s in report.skipped)
    assert "catalogue cases and 50 generated examples agree" in str(report)


@pytest.mark.parametrize("policy", ["zero", "uniform", "nan"])
def test_each_fully_masked_policy(policy):
    kernel = lambda q, k, v, mask: numpy_attention(q, k, v, mask, policy)  # noqa: E731
    check_attention(kernel, fully_masked=policy, examples=10)
    other = "uniform" if policy != "uniform" else "zero"
    with pytest.raises(AssertionError, match=f"fully_masked='{other}'(.|\n)*its row is fully masked"):
        check_attention(kernel, fully_masked=other, **FAST)


def test_fully_masked_none_never_shows_a_fully_masked_row():
    def kernel(q, k, v, mask):
        assert np.broadcast_to(mask, (*q.shape[:-1], k.shape[-2])).any(axis=-1).all()
        return numpy_attention(q, k, v, mask)

    report = check_attention(kernel, fully_masked=None, dtypes=["float32"], examples=30)
    assert any("fully-masked rows" in s for s in report.skipped)


def test_bthd_layout():
    seen = []

    def kernel(q, k, v, mask):
        seen.append((q.shape, k.shape, mask.shape))
        return oracle_bthd(q, k, v, mask)

    check_attention(kernel, layout="BTHD", **FAST)
    case = next(c for c in ATTENTION_CASES if c.id == "causal-T<S-bottom_right")  # B=2, H=2, T=3, S=7
    assert ((2, 3, 2, 8), (2, 7, 2, 8), (1, 1, 3, 7)) in seen, case
    with pytest.raises(AssertionError, match=r"output shape .* expected .*\(BTHD: B, T, H, Dv\)"):
        check_attention(lambda q, k, v, mask: np.swapaxes(oracle_bthd(q, k, v, mask), 1, 2), layout="BTHD", **FAST)


def test_mask_is_4d_boolean_in_scores_layout_never_none():
    masks = []

    def kernel(q, k, v, mask):
        masks.append(mask)
        return oracle_bhtd(q, k, v, mask)

    check_attention(kernel, examples=20, dtypes=["float32"], zero_length=True)
    assert all(isinstance(m, np.ndarray) and m.dtype == bool and m.ndim == 4 for m in masks)
    shapes = {m.shape for m in masks}
    assert (1, 1, 5, 5) in shapes  # no mask: all True
    assert (4, 1, 1, 6) in shapes  # key padding stays at its smallest shape


def test_mask_kinds_select_cases():
    report = check_attention(oracle_bhtd, mask_kinds=["causal"], **FAST)
    expected = [
        c for c in ATTENTION_CASES if CASE_KINDS[c.id] == ("causal",) and 0 not in (*c.batch, c.q_len, c.kv_len)
    ]
    assert report.cases == len(expected)
    report = check_attention(oracle_bhtd, mask_kinds=["causal", "padding"], **FAST)
    assert report.cases == len(expected) + sum(
        1 for c in ATTENTION_CASES if set(CASE_KINDS[c.id]) <= {"causal", "padding"} and "padding" in CASE_KINDS[c.id]
    )
    assert set(CASE_KINDS) == {c.id for c in ATTENTION_CASES}, "a catalogue case has no kinds in CASE_KINDS"
    assert {k for kinds in CASE_KINDS.values() for k in kinds} == set(MASK_KINDS)


def test_generated_examples_use_only_selected_kinds():
    def kernel(q, k, v, mask):
        # Key padding only: every query row of a (B, 1, 1, S) mask, T axis of 1.
        assert mask.shape[1:3] == (1, 1), mask.shape
        return oracle_bhtd(q, k, v, mask)

    assert check_attention(kernel, mask_kinds="padding", dtypes=["float32"], examples=25).examples == 25


def test_grouped_query():
    heads = []

    def kernel(q, k, v, mask):
        heads.append((q.shape[1], k.shape[1]))
        return oracle_bhtd(q, k, v, mask)

    check_attention(kernel, **FAST)
    assert all(h == hkv for h, hkv in heads)
    heads.clear()
    check_attention(kernel, grouped_query=True, dtypes=["float32"], examples=20)
    assert any(h != hkv for h, hkv in heads)


def test_weights_fn_is_checked():
    def weights(q, k, mask):
        return refmask.attention_weights(q, k, mask)

    report = check_attention(oracle_bhtd, weights_fn=weights, dtypes=["float32", "float16"], examples=5)
    assert set(report.worst_weights_ulp) == {"float32", "float16"}

    def transposed_mask_weights(q, k, mask):
        return refmask.attention_weights(q, k, np.swapaxes(mask, -1, -2))

    with pytest.raises(AssertionError, match=r"`test_weights_fn_is_checked.<locals>.transposed_mask_weights` "
                                             r"disagrees(.|\n)*weights: \d+ of \d+ entries differ"):
        check_attention(oracle_bhtd, weights_fn=transposed_mask_weights, **FAST)


def test_failure_names_case_dtype_policy_then_the_assert_report():
    def ignores_mask(q, k, v, mask):
        return refmask.attention(q, k, v)

    with pytest.raises(CheckError) as excinfo:
        check_attention(ignores_mask, dtypes=["float16"], examples=0)
    message = str(excinfo.value)
    lines = message.splitlines()
    assert lines[0] == "check_attention: `test_failure_names_case_dtype_policy_then_the_assert_report.<locals>." \
                       "ignores_mask` disagrees with the oracle:"
    assert lines[1] == (
        '  input: catalogue case "causal-T=S", dtype float16, fully_masked=\'zero\', layout BHTD, backend numpy'
    )
    assert "mask (1, 1, 6, 6)" in lines[2]
    assert "  mask[batch=0, head=0] (rows = queries, columns = keys, 1 = attend):" in message
    assert "    1 1 0 0 0 0" in message
    assert "output: " in message and "worst at (batch=" in message and "ULP apart" in message


def test_exception_in_fn_is_reported_with_the_input():
    def broken(q, k, v, mask):
        raise RuntimeError("kaboom")

    with pytest.raises(AssertionError, match=r'failed to run(.|\n)*catalogue case "no-mask"(.|\n)*'
                                             r"it raised RuntimeError: kaboom") as excinfo:
        check_attention(broken, **FAST)
    assert isinstance(excinfo.value.__cause__, RuntimeError)


def test_wrong_output_dtype_is_reported():
    def upcasts(q, k, v, mask):
        return oracle_bhtd(q, k, v, mask).astype(np.float32)

    with pytest.raises(AssertionError, match="output: dtype float32 differs from the expected float16"):
        check_attention(upcasts, dtypes=["float16"], examples=0)


def test_generated_examples_find_what_the_catalogue_misses():
    def wrong_for_two_keys(q, k, v, mask):
        out = oracle_bhtd(q, k, v, mask)
        return out + 1 if k.shape[-2] == 2 else out  # no catalogue case has S = 2

    check_attention(wrong_for_two_keys, examples=0, dtypes=["float32"])
    with pytest.raises(AssertionError) as excinfo:
        check_attention(wrong_for_two_keys, dtypes=["float32"], examples=50)
    message = str(excinfo.value)
    assert "input: generated example" in message
    assert " S=2 " in message
    assert "  values: q=[[[[" in message  # small integers, shrunk towards 0
    # Shrunk: one batch item, one head, one query.
    assert "B=1 H=1 H_kv=1 T=1 S=2" in message


def test_zero_length_cases_run_when_asked():
    report = check_attention(oracle_bhtd, zero_length=True, **FAST)
    assert not any("zero-length" in s for s in report.skipped)
    assert report.cases == len(ATTENTION_CASES)


def test_arguments_are_validated():
    with pytest.raises(ValueError, match="layout must be one of 'BHTD', 'BTHD'"):
        check_attention(oracle_bhtd, layout="BSHD")
    with pytest.raises(ValueError, match="mask_kinds must name some of"):
        check_attention(oracle_bhtd, mask_kinds=["diagonal"])
    with pytest.raises(ValueError, match="dtypes must name some of"):
        check_attention(oracle_bhtd, dtypes=["int8"])
    with pytest.raises(ValueError, match="fully_masked must be one of"):
        check_attention(oracle_bhtd, fully_masked="ignore")
    with pytest.raises(ValueError, match="backend must be one of"):
        check_attention(oracle_bhtd, backend="tensorflow")
    with pytest.raises(ValueError, match="examples must be an int >= 0"):
        check_attention(oracle_bhtd, examples=-1)
    with pytest.raises(TypeError, match="fn must be callable"):
        check_attention(None)  # type: ignore[arg-type]


def test_examples_zero_does_not_import_hypothesis():
    code = (
        "import sys, refmask\n"
        "from refmask.testing import check_attention\n"
        "assert 'hypothesis' not in sys.modules\n"
        "check_attention(lambda q, k, v, m: refmask.attention(q, k, v, m), examples=0, dtypes=['float32'])\n"
        "assert 'hypothesis' not in sys.modules, 'check_attention(examples=0) imported hypothesis'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _framework(name: str) -> None:
    why = unavailable_reason(name)
    if why is not None:
        pytest.skip(why)


@pytest.mark.parametrize("name", ["jax", "torch"])
def test_framework_backend(name):
    _framework(name)
    types = set()

    def kernel(q, k, v, mask):
        types.add(type(q).__module__.split(".")[0])
        return refmask.attention(q, k, v, mask, backend=name)

    # Eager jax compiles each new shape: keep this small.
    check_attention(kernel, backend=name, examples=2, dtypes=["bfloat16"], mask_kinds=["padding"])
    assert types == {"jaxlib" if name == "jax" else "torch"} or types == {name}
    report = check_attention(kernel, backend=name, examples=0, mask_kinds=["none"])
    if name == "jax":
        import jax

        assert ("float64" in report.worst_output_ulp) == bool(jax.config.read("jax_enable_x64"))
    else:
        assert "float64" in report.worst_output_ulp


def test_diagnosis_reads_the_weights_with_v_identity():
    def inverted_mask(q, k, v, mask):
        return refmask.attention(q, k, v, ~mask)

    with pytest.raises(AssertionError) as excinfo:
        check_attention(inverted_mask, mask_kinds=["causal"], **FAST)
    message = str(excinfo.value)
    output_report, diagnosis = message.split("diagnosis: fn's weights, read as its output for v = identity")
    assert "output: " in output_report
    assert "weights: " in diagnosis and "is the mask inverted (True = attend)" in diagnosis


def test_no_diagnosis_when_fn_cannot_take_v_identity():
    def fixed_value_dim(q, k, v, mask):
        assert v.shape[-1] == 4, "this kernel only does Dv = 4"
        return refmask.attention(q, k, v, ~mask)

    with pytest.raises(AssertionError) as excinfo:
        check_attention(fixed_value_dim, mask_kinds=["causal"], **FAST)
    assert "output: " in str(excinfo.value) and "diagnosis:" not in str(excinfo.value)


def test_failure_shows_the_policy_as_passed():
    with pytest.raises(AssertionError, match="fully_masked=None, layout BHTD"):
        check_attention(lambda q, k, v, mask: refmask.attention(q, k, v), fully_masked=None, **FAST)


def test_fn_may_work_in_place():
    def in_place(q, k, v, mask):
        out = refmask.attention(q, k, v, mask)
        q *= 0
        mask &= False
        return out

    check_attention(in_place, **FAST)


# ------------------------------------------------------------------------------------------
# tolerances, values below the smallest normal number, missing extras


def test_a_bad_tolerance_is_refused_before_fn_runs():
    calls = []

    def wrong(q, k, v, mask):
        calls.append(1)
        return 0.5 * oracle_bhtd(q, k, v, mask)

    cases: list[tuple[dict[str, Any], str]] = [
        ({"max_ulp": float("nan")}, "max_ulp must be a finite number >= 0; got NaN"),
        ({"atol": float("nan")}, "atol must be a finite number >= 0; got NaN"),
        ({"rtol": -1e-3}, "rtol must be a finite number >= 0; got -0.001"),
        ({"max_ulp": float("inf")}, "max_ulp must be a finite number >= 0; got inf"),
        ({"max_ulp": 4, "rtol": 1e-3}, "max_ulp and rtol/atol are alternatives"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            check_attention(wrong, **kwargs)
    with pytest.raises(TypeError, match="max_ulp must be a finite number >= 0; got bool True"):
        check_attention(wrong, max_ulp=True)
    assert calls == []
    with pytest.raises(CheckError):  # and with a good tolerance the wrong kernel is caught
        check_attention(wrong, max_ulp=64, **FAST)


def _one_row_catalogue(monkeypatch, k_values):
    """Replace the catalogue by one case: q = [1], keys k_values (D = 1), so the scores are k_values."""
    from refmask.testing import check as check_module
    from refmask.testing.cases import AttentionCase, numpy_dtype

    s = len(k_values)

    class OneRow(AttentionCase):
        def arrays(self, dtype, seed=0):
            d = numpy_dtype(dtype)
            return {"q": np.ones((1, 1, 1, 1), d), "k": np.array(k_values, d).reshape(1, 1, s, 1),
                    "v": np.arange(1, s + 1, dtype=d).reshape(1, 1, s, 1), "scores": np.array(k_values, d)}

    case = OneRow("one-row", (1,), 1, 1, 1, s, 1, 1, lambda: None)
    monkeypatch.setattr(check_module, "ATTENTION_CASES", (case,))


def test_weights_flushed_to_zero_pass_and_count_as_equal(monkeypatch):
    _one_row_catalogue(monkeypatch, [0.0, -90.0])  # weights [1, exp(-90) = 8.2e-40]
    tiny = float(np.finfo(np.float32).tiny)
    subnormal = []

    def flushed_weights(q, k, mask):
        w = refmask.attention_weights(q, k, mask)
        w64 = w.astype(np.float64)
        subnormal.append(bool(((w64 > 0) & (w64 < tiny)).any()))
        return np.where(np.abs(w64) < tiny, 0.0, w64).astype(w.dtype)  # flushed by hand

    report = check_attention(oracle_bhtd, weights_fn=flushed_weights, dtypes=["float32", "bfloat16"], examples=0)
    assert subnormal == [True, True]  # the oracle's weights do hold a subnormal in both dtypes
    assert report.cases == 2
    assert report.worst_weights_ulp == {"float32": 0.0, "bfloat16": 0.0}

    def normal_instead(q, k, mask):
        w = refmask.attention_weights(q, k, mask).astype(np.float64)
        return np.where((w > 0) & (w < tiny), 1e-30, w).astype(q.dtype)

    with pytest.raises(CheckError, match=r"weights: 1 of 2 entries differ \(more than \d+ ULP apart\)"):
        check_attention(oracle_bhtd, weights_fn=normal_instead, dtypes=["float32"], examples=0)


def _run_without(module: str, code: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter in which `module` cannot be imported."""
    prelude = f"import sys\nsys.modules[{module!r}] = None  # import {module} raises ModuleNotFoundError\n"
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, check=False)


INSTALL_HINT = 'pip install "refmask[test]" (from a source checkout: pip install -e ".[test]")'


def test_without_hypothesis_check_attention_says_what_to_install():
    result = _run_without("hypothesis", (
        "import refmask\n"
        "from refmask.testing import check_attention\n"
        "fn = lambda q, k, v, m: refmask.attention(q, k, v, m)\n"
        "print(check_attention(fn, examples=0, dtypes=['float32']).cases)\n"
        "check_attention(fn)\n"
    ))
    assert result.returncode == 1
    assert result.stdout.split() == ["20"]  # examples=0 needs no hypothesis
    last = result.stderr.strip().splitlines()[-1]
    assert last == ("ImportError: check_attention needs hypothesis for examples > 0 (examples=0: the catalogue "
                    f"alone), which is not installed: {INSTALL_HINT}")
    assert "ModuleNotFoundError" not in result.stderr


def test_without_hypothesis_the_strategies_module_says_what_to_install():
    result = _run_without("hypothesis", "from refmask.testing import strategies\n")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"ImportError: refmask.testing.strategies needs hypothesis, which is not installed: {INSTALL_HINT}")
    assert "ModuleNotFoundError" not in result.stderr


def test_without_ml_dtypes_bfloat16_is_skipped_or_refused():
    result = _run_without("ml_dtypes", (
        "import refmask\n"
        "from refmask.testing import check_attention\n"
        "fn = lambda q, k, v, m: refmask.attention(q, k, v, m)\n"
        "report = check_attention(fn, examples=0)\n"
        "print(sorted(report.worst_output_ulp))\n"
        "print([s for s in report.skipped if s.startswith('bfloat16')])\n"
        "check_attention(fn, examples=0, dtypes=['bfloat16'])\n"
    ))
    assert result.returncode == 1
    assert result.stdout.splitlines() == ["['float16', 'float32', 'float64']",
                                          "['bfloat16: ml_dtypes (bfloat16 in NumPy) is not installed']"]
    assert result.stderr.strip().splitlines()[-1] == (
        f"ImportError: check_attention needs ml_dtypes for bfloat16 in NumPy, which is not installed: {INSTALL_HINT}")


# ------------------------------------------------------------------------------------------
# calling conventions: the mask as a keyword


def test_mask_arg_passes_the_mask_by_keyword():
    calls = []

    def flax_like(query, key, value, bias=None, mask=None):  # Flax's dot_product_attention order
        calls.append(bias is None and mask is not None)
        return refmask.attention(query, key, value, mask, bias=bias)

    def weights(query, key, bias=None, mask=None):
        return refmask.attention_weights(query, key, mask, bias=bias)

    report = check_attention(flax_like, mask_arg="mask", weights_fn=weights, **FAST)
    assert report.cases == 20 and calls and all(calls)
    with pytest.raises(CheckError) as excinfo:
        check_attention(flax_like, **FAST)  # the mask goes in as the bias
    assert ("  note: the mask went in as fn's fourth argument, `bias`, and fn has a parameter `mask`: if that is "
            "where the mask goes, pass mask_arg='mask'") in str(excinfo.value)


def test_mask_arg_is_validated_against_the_functions():
    with pytest.raises(ValueError, match=r"mask_arg must be None .* got 'attn mask'"):
        check_attention(oracle_bhtd, mask_arg="attn mask", **FAST)
    with pytest.raises(TypeError, match=r"mask_arg='mask': `.*<lambda>` takes no keyword 'mask' \(its parameters: "
                                        r"q, k, v, m\)"):
        check_attention(lambda q, k, v, m: None, mask_arg="mask", **FAST)
    with pytest.raises(TypeError, match=r"mask_arg='m': `.*<lambda>` takes no keyword 'm' \(its parameters: q, k, w\)"):
        check_attention(lambda q, k, v, m: None, mask_arg="m", weights_fn=lambda q, k, w: None, **FAST)
    check_attention(lambda q, k, v, **kw: refmask.attention(q, k, v, kw["attn_mask"]), mask_arg="attn_mask", **FAST)


def test_flax_dot_product_attention_with_mask_arg():
    _framework("jax")
    nn = pytest.importorskip("flax.linen", reason="Flax's own dot_product_attention needs flax")
    import jax

    # Key padding: 4 cases, a fully-masked batch item (uniform weights in Flax) and one key/value head among them.
    report = check_attention(jax.jit(nn.dot_product_attention), layout="BTHD", mask_arg="mask", fully_masked="uniform",
                             backend="jax", mask_kinds=["padding"], dtypes=["float32"], examples=0)
    assert report.cases == sum(1 for kinds in CASE_KINDS.values() if kinds == ("padding",))


# ------------------------------------------------------------------------------------------
# lse=True: kernels that return (out, lse)


def with_lse(q, k, v, mask):
    return refmask.attention(q, k, v, mask, return_lse=True)


def test_lse_is_checked_and_reported():
    report = check_attention(with_lse, lse=True, dtypes=["float32", "float16"], examples=5)
    assert set(report.worst_lse_ulp) == {"float32", "float16"}
    assert "lse " in str(report)

    def lse_off_by_log2(q, k, v, mask):
        out, lse = with_lse(q, k, v, mask)
        return out, lse + np.float32(np.log(2))  # the row sum doubled: a block counted twice

    with pytest.raises(CheckError) as excinfo:
        check_attention(lse_off_by_log2, lse=True, **FAST)
    message = str(excinfo.value)
    assert "returns an lse that disagrees with the oracle's:" in message
    assert re.search(r"lse: 20 of 20 entries differ \(more than 32 \* eps \* [\d.]+ apart\)", message)
    assert "worst at (batch=" in message and "query=" in message


def test_lse_must_be_returned_in_the_expected_shape_and_dtype():
    with pytest.raises(CheckError, match=r"with lse=True fn must return \(out, lse\); it returned ndarray"):
        check_attention(oracle_bhtd, lse=True, **FAST)
    def lse_in_bthd(q, k, v, mask):  # flash-attn's softmax_lse is (B, H, T) for (B, T, H, D) inputs
        t = lambda x: np.swapaxes(x, 1, 2)  # noqa: E731
        out, lse = refmask.attention(t(q), t(k), t(v), mask, return_lse=True)
        return t(out), t(lse)

    with pytest.raises(CheckError, match=re.escape("lse shape (2, 5, 2), expected (2, 2, 5) (BTHD: B, H, T)")):
        check_attention(lse_in_bthd, layout="BTHD", lse=True, **FAST)
    with pytest.raises(CheckError, match="lse: dtype float16 differs from the expected float32"):
        check_attention(lambda q, k, v, m: (lambda o, lse: (o, lse.astype(q.dtype)))(*with_lse(q, k, v, m)),
                        lse=True, dtypes=["float16"], examples=0)


# ------------------------------------------------------------------------------------------
# grads=True: backward_fn, torch autograd, jax.vjp


def vjp_backward(q, k, v, mask, d_out):
    return refmask.attention_vjp(q, k, v, mask, d_out)[:3]


def test_gradients_by_backward_fn():
    report = check_attention(oracle_bhtd, grads=True, backward_fn=vjp_backward, dtypes=["float32", "bfloat16"],
                             examples=5, zero_length=True)
    assert set(report.worst_gradient_ulp) == {"float32", "bfloat16"}

    def transposed_mask_backward(q, k, v, mask, d_out):
        return refmask.attention_vjp(q, k, v, np.swapaxes(mask, -1, -2), d_out)[:3]

    with pytest.raises(CheckError) as excinfo:
        check_attention(oracle_bhtd, grads=True, backward_fn=transposed_mask_backward, mask_kinds=["causal"], **FAST)
    message = str(excinfo.value)
    assert message.startswith("check_attention: `test_gradients_by_backward_fn.<locals>.transposed_mask_backward` "
                              "(backward_fn) gives gradients that disagree with the oracle's (refmask.attention_vjp):")
    assert "  d_out: N(0, 1) in q's dtype; the gradients are those of sum(d_out * out)" in message
    assert re.search(r"\ndq: \d+ of \d+ entries differ", message)


def test_gradients_in_bthd_layout_come_back_in_that_layout():
    def backward_bthd(q, k, v, mask, d_out):
        t = lambda x: np.swapaxes(x, 1, 2)  # noqa: E731
        return tuple(t(g) for g in refmask.attention_vjp(t(q), t(k), t(v), mask, t(d_out))[:3])

    check_attention(oracle_bthd, layout="BTHD", grads=True, backward_fn=backward_bthd, **FAST)
    def backward_in_bhtd(q, k, v, mask, d_out):
        t = lambda x: np.swapaxes(x, 1, 2)  # noqa: E731
        return refmask.attention_vjp(t(q), t(k), t(v), mask, t(d_out))[:3]  # not swapped back

    with pytest.raises(CheckError, match=re.escape("dq shape (2, 2, 5, 8), expected (2, 5, 2, 8), q's (BTHD)")):
        check_attention(oracle_bthd, layout="BTHD", grads=True, backward_fn=backward_in_bhtd, **FAST)


def test_backward_fn_must_return_one_gradient_per_input():
    with pytest.raises(CheckError, match=r"backward_fn must return \(dq, dk, dv\); it returned a AttentionGrads of 5"):
        check_attention(oracle_bhtd, grads=True, backward_fn=lambda q, k, v, m, g: refmask.attention_vjp(q, k, v, m, g),
                        **FAST)


def test_grads_arguments_are_validated():
    with pytest.raises(ValueError, match=r'grads=True with backend="numpy" needs backward_fn\(q, k, v, mask, d_out\)'):
        check_attention(oracle_bhtd, grads=True, **FAST)
    with pytest.raises(ValueError, match="backward_fn is for grads=True"):
        check_attention(oracle_bhtd, backward_fn=vjp_backward, **FAST)
    with pytest.raises(TypeError, match="grads must be True or False; got 1"):
        check_attention(oracle_bhtd, grads=1, **FAST)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="backward_fn must be callable or None"):
        check_attention(oracle_bhtd, grads=True, backward_fn="vjp", **FAST)  # type: ignore[arg-type]


def test_gradients_by_torch_autograd():
    _framework("torch")

    def kernel(q, k, v, mask, sinks):  # (out, lse), autograd through both the keys and the sinks
        return refmask.attention(q, k, v, mask, sinks=sinks, return_lse=True)

    report = check_attention(kernel, backend="torch", grads=True, lse=True, sinks=True, mask_kinds=["padding"],
                             **FAST)
    assert "float32" in report.worst_gradient_ulp and "float32" in report.worst_lse_ulp

    def right_values_wrong_gradients(q, k, v, mask):
        # The value of the correct kernel, the gradients of one whose mask is inverted.
        right, wrong = refmask.attention(q, k, v, mask), refmask.attention(q, k, v, ~mask)
        return right.detach() + (wrong - wrong.detach())

    with pytest.raises(CheckError, match=r"has gradients by torch autograd that disagree(.|\n)*\ndq: "):
        check_attention(right_values_wrong_gradients, backend="torch", grads=True, mask_kinds=["padding"], **FAST)
    with pytest.raises(CheckError, match=r"dk: torch autograd gave no gradient for k: fn's output does not depend"):
        check_attention(lambda q, k, v, mask: refmask.attention(q, k.detach(), v, mask), backend="torch", grads=True,
                        mask_kinds=["padding"], **FAST)
    with pytest.raises(CheckError, match=r"could not be computed:(.|\n)*it raised NotDifferentiable: its output "
                                         r"\(ndarray\) does not require grad"):
        check_attention(lambda q, k, v, mask: refmask.attention(q.detach().numpy(), k.detach().numpy(),
                                                                v.detach().numpy(), mask.numpy()),
                        backend="torch", grads=True, mask_kinds=["none"], **FAST)


def test_gradients_by_jax_vjp():
    _framework("jax")
    import jax

    def kernel(q, k, v, mask):
        return refmask.attention(q, k, v, mask)

    report = check_attention(jax.jit(kernel), backend="jax", grads=True, mask_kinds=["padding"], **FAST)
    assert "float32" in report.worst_gradient_ulp

    def values_only(q, k, v, mask):
        return refmask.attention(q, jax.lax.stop_gradient(k), v, mask)

    with pytest.raises(CheckError, match=r"has gradients by jax.vjp that disagree(.|\n)*\ndk: "):
        check_attention(jax.jit(values_only), backend="jax", grads=True, mask_kinds=["none"], **FAST)


# ------------------------------------------------------------------------------------------
# softcap and sinks


def test_softcap_is_passed_and_held_to_the_capped_oracle():
    seen = []

    def capped(q, k, v, mask, softcap):
        seen.append(softcap)
        return refmask.attention(q, k, v, mask, softcap=softcap)

    check_attention(capped, softcap=0.5, **FAST)
    assert set(seen) == {0.5}
    with pytest.raises(CheckError, match=r"input: catalogue case \"no-mask\", .*, softcap=0.5\n"):
        check_attention(lambda q, k, v, mask, softcap: oracle_bhtd(q, k, v, mask), softcap=0.5, **FAST)
    with pytest.raises(ValueError, match="softcap must be a finite number > 0"):
        check_attention(capped, softcap=0.0, **FAST)


def test_sinks_are_passed_per_head_and_their_gradient_checked():
    def with_sinks(q, k, v, mask, sinks):
        assert sinks.shape == (q.shape[1],) and sinks.dtype == q.dtype
        return refmask.attention(q, k, v, mask, sinks=sinks, return_lse=True)

    def backward(q, k, v, mask, d_out, sinks):
        grads = refmask.attention_vjp(q, k, v, mask, d_out, sinks=sinks)
        return grads.dq, grads.dk, grads.dv, grads.dsinks

    check_attention(with_sinks, sinks=True, lse=True, grads=True, backward_fn=backward, **FAST)
    with pytest.raises(CheckError, match=r"sinks \[.*\]\n(.|\n)*\noutput: "):
        check_attention(lambda q, k, v, mask, sinks: with_lse(q, k, v, mask), sinks=True, lse=True, **FAST)

    def no_sink_gradient(q, k, v, mask, d_out, sinks):
        return (*backward(q, k, v, mask, d_out, sinks)[:3], np.zeros_like(sinks))

    with pytest.raises(CheckError, match=r"\ndsinks: [12] of 2 entries differ"):
        check_attention(with_sinks, sinks=True, lse=True, grads=True, backward_fn=no_sink_gradient, **FAST)


# ------------------------------------------------------------------------------------------
# layout="varlen": flash-attn's varlen interface


def _sequence_masks(cu_q, cu_k, causal, window_size, align="bottom_right"):
    """(query slice, key slice, mask) of each packed sequence, flash-attn's alignment by default."""
    for b in range(len(cu_q) - 1):
        qs, ks = slice(int(cu_q[b]), int(cu_q[b + 1])), slice(int(cu_k[b]), int(cu_k[b + 1]))
        lq, lk = qs.stop - qs.start, ks.stop - ks.start
        mask = np.ones((lq, lk), bool)
        if causal:
            mask &= refmask.causal_mask(lq, lk, align=align)
        if window_size is not None:
            mask &= refmask.sliding_window_mask(lq, lk, window=window_size, align=align)
        yield qs, ks, mask


def _heads_first(x):
    return np.swapaxes(x, 0, 1)


def varlen_attention(q, k, v, cu_q, cu_k, max_q, max_k, causal=False, window_size=None, align="bottom_right"):
    out = np.zeros((q.shape[0], q.shape[1], v.shape[-1]), q.dtype)
    for qs, ks, mask in _sequence_masks(cu_q, cu_k, causal, window_size, align):
        t = _heads_first
        out[qs] = t(refmask.attention(t(q[qs]), t(k[ks]), t(v[ks]), mask))
    return out


def varlen_backward(q, k, v, cu_q, cu_k, max_q, max_k, d_out, causal=False, window_size=None, empty_q_nan=False):
    grads = [np.zeros_like(x) for x in (q, k, v)]
    for qs, ks, mask in _sequence_masks(cu_q, cu_k, causal, window_size):
        t = _heads_first
        dq, dk, dv = refmask.attention_vjp(t(q[qs]), t(k[ks]), t(v[ks]), mask, t(d_out[qs]))[:3]
        grads[0][qs], grads[1][ks], grads[2][ks] = t(dq), t(dk), t(dv)
        if empty_q_nan and qs.stop == qs.start:
            grads[1][ks] = grads[2][ks] = np.nan  # never written: what a kernel skipping empty sequences leaves
    return tuple(grads)


def test_varlen_layout_calls_fn_as_flash_attn_varlen():
    calls = []

    def kernel(q, k, v, cu_q, cu_k, max_q, max_k, causal=False, window_size=None):
        calls.append((q.shape, cu_q.dtype, cu_q.tolist(), cu_k.tolist(), max_q, max_k, causal, window_size))
        return varlen_attention(q, k, v, cu_q, cu_k, max_q, max_k, causal, window_size)

    report = check_attention(kernel, layout="varlen", grads=True, backward_fn=varlen_backward, lse=False,
                             zero_length=True, grouped_query=True, **FAST)
    from refmask.testing.cases import VARLEN_CASES

    assert report.cases == len(VARLEN_CASES)
    assert ((3, 2, 8), np.int32, [0, 1, 3], [0, 5, 8], 2, 5, True, None) in calls  # causal T < S
    assert ((9, 2, 8), np.int32, [0, 6, 9], [0, 6, 9], 6, 6, False, (2, 1)) in calls  # window
    assert ((3, 2, 8), np.int32, [0, 0, 3, 3], [0, 2, 5, 9], 3, 4, True, None) in calls  # empty query sequences
    assert any(shape[1] == 4 for shape, *_ in calls)  # grouped-query heads: H = 4, H_kv = 2


def test_varlen_top_left_causal_is_caught():
    def top_left(q, k, v, cu_q, cu_k, max_q, max_k, causal=False, window_size=None):
        return varlen_attention(q, k, v, cu_q, cu_k, max_q, max_k, causal, window_size, align="top_left")

    with pytest.raises(CheckError) as excinfo:
        check_attention(top_left, layout="varlen", **FAST)
    message = str(excinfo.value)
    assert 'input: varlen case "varlen-causal-T<S-decode", dtype float32' in message
    assert ("  sequences: q lengths [1, 2], k lengths [5, 3], causal=True (bottom-right within each)") in message
    assert "shapes: q (3, 2, 8), k (8, 2, 8), v (8, 2, 4)\n" in message
    assert "(indices below take the packed batch as one batch item, (batch=0, head, query, dim)" in message


def test_varlen_backward_leaving_empty_query_sequences_unwritten_is_caught():
    def backward(*args, **kwargs):
        return varlen_backward(*args, **{**kwargs, "empty_q_nan": True})

    check_attention(varlen_attention, layout="varlen", grads=True, backward_fn=varlen_backward, **FAST)
    with pytest.raises(CheckError) as excinfo:
        check_attention(varlen_attention, layout="varlen", grads=True, backward_fn=backward, **FAST)
    message = str(excinfo.value)
    assert 'varlen case "varlen-empty-query-sequences"' in message
    assert re.search(r"\ndk: \d+ of \d+ entries differ \(NaN where the oracle has none", message)
    assert "a sequence here has no query (seqlen_q = 0): its keys get no gradient" in message


def test_varlen_lse_is_heads_by_tokens():
    def kernel(q, k, v, cu_q, cu_k, max_q, max_k, causal=False, window_size=None):
        lse = np.full((q.shape[1], q.shape[0]), -np.inf, np.float32)
        for qs, ks, mask in _sequence_masks(cu_q, cu_k, causal, window_size):
            t = _heads_first
            lse[:, qs] = refmask.attention(t(q[qs]), t(k[ks]), t(v[ks]), mask, return_lse=True)[1]
        return varlen_attention(q, k, v, cu_q, cu_k, max_q, max_k, causal, window_size), lse

    assert set(check_attention(kernel, layout="varlen", lse=True, **FAST).worst_lse_ulp) == {"float32"}
    with pytest.raises(CheckError, match=re.escape("lse shape (8, 2), expected (2, 8) (varlen: H, total_q)")):
        check_attention(lambda *a, **kw: (lambda o, lse: (o, lse.T))(*kernel(*a, **kw)), layout="varlen", lse=True,
                        **FAST)


def test_varlen_arguments_are_validated():
    with pytest.raises(ValueError, match='weights_fn is not for layout="varlen"'):
        check_attention(varlen_attention, layout="varlen", weights_fn=lambda q, k, m: None)
    with pytest.raises(ValueError, match='mask_arg is not for layout="varlen"'):
        check_attention(varlen_attention, layout="varlen", mask_arg="mask")
    with pytest.raises(ValueError, match="selects none of them"):
        check_attention(varlen_attention, layout="varlen", mask_kinds=["chunked"])
    report = check_attention(varlen_attention, layout="varlen", mask_kinds=["causal"], dtypes=["float32"])
    assert "generated examples: layout varlen runs its catalogue only" in report.skipped
