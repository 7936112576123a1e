"""assert_weights_close / assert_attention_close: what passes, what fails, and what the report says."""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np
import pytest

from refmask import oracle
from refmask._backends import unavailable_reason
from refmask.testing import (
    MismatchError,
    assert_attention_close,
    assert_lse_close,
    assert_weights_close,
    tolerances,
    ulp_distance,
)
from refmask.testing._assert import index_names
from refmask.testing.cases import numpy_dtype


def _problem(dtype="float32", policy="zero"):
    """(B=2, H=2, T=3, S=4) weights with a padded key, a fully-masked row, and the mask."""
    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, 2, 3, 8)).astype(numpy_dtype(dtype))
    k = rng.standard_normal((2, 2, 4, 8)).astype(numpy_dtype(dtype))
    v = rng.standard_normal((2, 2, 4, 5)).astype(numpy_dtype(dtype))
    mask = oracle.attention_padding_mask(
        oracle.padding_mask(np.array([4, 3]), 4), oracle.padding_mask(np.array([3, 2]), 3)
    )  # (2, 1, 3, 4): batch 1 has key 3 padded and query 2 fully masked
    out, w = oracle.attention(q, k, v, mask, fully_masked=policy, return_weights=True)
    return q, k, v, mask, out, w


def _nudge(x: np.ndarray, index, ulps: int) -> np.ndarray:
    """x with entry `index` moved `ulps` representable values up."""
    y = x.copy()
    for _ in range(ulps):
        y[index] = np.nextafter(y[index], np.inf, dtype=y.dtype)
    return y


def _message(excinfo) -> str:
    return str(excinfo.value)


# ------------------------------------------------------------------------------------------
# passing


def test_equal_arrays_pass_in_every_dtype():
    for dtype in ("float64", "float32", "float16", "bfloat16"):
        _, _, _, mask, out, w = _problem(dtype)
        assert_weights_close(w, w.copy(), mask=mask)
        assert_attention_close(out, out.copy(), mask=mask)


def test_differences_within_the_default_tolerance_pass():
    _, _, _, mask, out, w = _problem("float32")
    bound = tolerances.ATTENTION_WEIGHTS_MAX_ULP["float32"]
    assert_weights_close(_nudge(w, (0, 0, 0, 0), bound), w, mask=mask)
    assert_attention_close(_nudge(out, (0, 1, 2, 3), 3), out)


def test_dtype_argument_compares_with_a_float64_oracle():
    _, _, _, mask, out, w = _problem("float64")
    assert_weights_close(w.astype(np.float16), w, dtype="float16", mask=mask)
    assert_attention_close(out.astype(np.float16), out, dtype=np.float16)


def test_rtol_atol_replace_the_ulp_test():
    _, _, _, mask, _, w = _problem("float32")
    off = _nudge(w, (0, 0, 0, 0), 1000)
    with pytest.raises(AssertionError):
        assert_weights_close(off, w, mask=mask)
    assert_weights_close(off, w, mask=mask, rtol=1e-3)
    with pytest.raises(AssertionError, match=r"beyond atol=1e-09 rtol=None"):
        assert_weights_close(off, w, mask=mask, atol=1e-9)


def test_max_ulp_overrides_the_default():
    w = _problem("float32")[-1]
    off = _nudge(w, (1, 1, 0, 2), 3)
    assert_weights_close(off, w)
    with pytest.raises(AssertionError, match=r"more than 2 ULP apart"):
        assert_weights_close(off, w, max_ulp=2)


# ------------------------------------------------------------------------------------------
# the report


def test_shape_is_checked_first():
    _, _, _, _, out, w = _problem()
    message = "weights: shape (2, 2, 4, 3) differs from the oracle's (2, 2, 3, 4)"
    with pytest.raises(AssertionError, match=re.escape(message)):
        assert_weights_close(np.swapaxes(w, -1, -2), w)
    with pytest.raises(AssertionError, match=re.escape("output: shape (2, 2, 3) differs")):
        assert_attention_close(out[..., 0], out)


def test_dtype_is_checked_before_values():
    _, _, _, _, out, w = _problem()
    with pytest.raises(AssertionError, match="weights: dtype float64 differs from the expected float32"):
        assert_weights_close(w.astype(np.float64), w)
    with pytest.raises(AssertionError, match="output: dtype float16 differs from the expected float32"):
        assert_attention_close(out.astype(np.float16), out)


def test_value_report_names_count_index_values_and_ulps():
    _, _, _, mask, _, w = _problem()
    off = _nudge(w, (1, 0, 1, 2), 40)
    with pytest.raises(MismatchError) as excinfo:
        assert_weights_close(off, w, mask=mask)
    message = _message(excinfo)
    assert f"weights: 1 of {w.size} entries differ (more than 16 ULP apart)" in message
    assert f"worst at (batch=1, head=0, query=1, key=2): actual {float(off[1, 0, 1, 2])!r}, " in message
    assert f"oracle {float(w[1, 0, 1, 2])!r}, 40 ULP apart" in message
    assert "that entry is kept (mask True)" in message
    assert "its row is not fully masked" in message
    assert "that row, actual:" in message and "that row, oracle:" in message
    assert excinfo.value.mismatch.index == (1, 0, 1, 2)
    assert excinfo.value.mismatch.ulp == 40


def test_worst_entry_is_reported_among_several():
    _, _, _, mask, _, w = _problem()
    off = _nudge(_nudge(w, (0, 0, 0, 0), 20), (0, 1, 2, 1), 90)
    with pytest.raises(AssertionError, match=r"2 of 48 entries differ(.|\n)*query=2, key=1\)(.|\n)*90 ULP apart"):
        assert_weights_close(off, w, mask=mask)


def test_masked_entry_with_weight_is_a_structure_error_with_a_hint():
    _, _, _, mask, _, w = _problem()
    off = w.copy()
    off[1, 1, 0, 3] = 0.125  # key 3 of batch 1 is padding
    with pytest.raises(AssertionError) as excinfo:
        assert_weights_close(off, w, mask=mask)
    message = _message(excinfo)
    assert "(exactly 0 in one and not the other)" in message
    assert "worst at (batch=1, head=1, query=0, key=3): actual 0.125, oracle 0.0" in message
    assert "that entry is masked (mask False)" in message
    assert "hint: a masked key got weight" in message


def test_nan_in_a_fully_masked_row_is_reported_as_such():
    _, _, _, mask, _, w = _problem(policy="zero")
    nan_policy = oracle.masked_softmax(np.zeros(w.shape, np.float32), mask, fully_masked="nan")
    actual = np.where(np.isnan(nan_policy), np.float32(np.nan), w)
    with pytest.raises(AssertionError) as excinfo:
        assert_weights_close(actual, w, mask=mask)
    message = _message(excinfo)
    assert "weights: 8 of 48 entries differ (NaN where the oracle has none, or the reverse)" in message
    assert "worst at (batch=1, head=0, query=2, key=0): actual nan, oracle 0.0" in message
    assert "its row is fully masked (no key kept)" in message
    assert "hint: this row has no kept key and yours is NaN" in message


def test_rows_that_do_not_sum_to_one_get_a_hint():
    q, k, _, mask, _, w = _problem()
    plain = oracle.attention_weights(q, k)  # softmax over every key ...
    after = (plain * mask).astype(np.float32)  # ... then masked: the classic bug
    hint = r"hint: this row's weights sum to 0\.\d+, not 1: is the mask applied after"
    with pytest.raises(AssertionError, match=hint):
        assert_weights_close(after, w, mask=mask)


def test_without_mask_the_report_says_nothing_about_masking():
    _, _, _, _, _, w = _problem()
    with pytest.raises(AssertionError) as excinfo:
        assert_weights_close(_nudge(w, (0, 0, 0, 0), 100), w)
    assert "masked" not in _message(excinfo)


def test_output_report_names_dim_and_the_scale():
    _, _, _, mask, out, _ = _problem()
    off = out.copy()
    off[0, 1, 2, 4] += 0.01
    with pytest.raises(AssertionError) as excinfo:
        assert_attention_close(off, out, scale=2.0, mask=mask)
    message = _message(excinfo)
    assert f"output: 1 of {out.size} entries differ (more than 32 * eps * 2 apart)" in message
    assert "worst at (batch=0, head=1, query=2, dim=4):" in message
    assert "its row is not fully masked" in message


def test_output_of_a_fully_masked_row_must_be_exactly_zero_under_zero():
    q, k, v, mask, out, _ = _problem(policy="zero")
    uniform = oracle.attention(q, k, v, mask, fully_masked="uniform")
    with pytest.raises(AssertionError) as excinfo:
        assert_attention_close(uniform, out, mask=mask)
    message = _message(excinfo)
    assert "(exactly 0 in one and not the other)" in message
    assert "query=2" in message and "its row is fully masked" in message
    # Without the mask the value test still catches it.
    with pytest.raises(AssertionError, match="entries differ"):
        assert_attention_close(uniform, out)


def test_index_names():
    assert index_names((1, 0, 2, 3)) == "(batch=1, head=0, query=2, key=3)"
    assert index_names((0, 2, 3), "dim") == "(head=0, query=2, dim=3)"
    assert index_names((2, 3)) == "(query=2, key=3)"
    assert index_names((1, 2, 0, 2, 3)) == "(batch0=1, batch1=2, head=0, query=2, key=3)"


def test_ulp_distance():
    x = np.array([1.0, 0.0, -0.0, 1.0], np.float32)
    y = np.array([np.nextafter(np.float32(1), np.float32(2)), -0.0, np.float32(1e-45), np.nan], np.float32)
    d = ulp_distance(x, y)
    assert d[0] == 1 and d[1] == 0 and d[2] == 1 and np.isnan(d[3])
    b = np.array([1.0, -1.0], numpy_dtype("bfloat16"))
    assert ulp_distance(b, b).tolist() == [0.0, 0.0]
    with pytest.raises(TypeError):
        ulp_distance(x, x.astype(np.float64))


@pytest.mark.parametrize("dtype", ["int32", "int64", "uint8", "bool", "complex64", "complex128", "object"])
def test_ulp_distance_counts_only_floats(dtype):
    x = np.zeros(3, dtype)
    with pytest.raises(TypeError, match=rf"ulp_distance: a must be an array of float16, bfloat16, float32 or "
                                        rf"float64; got dtype {dtype}"):
        ulp_distance(x, x)
    with pytest.raises(TypeError, match=rf"ulp_distance: b must be an array of .*; got dtype {dtype}"):
        ulp_distance(np.zeros(3, np.float32), x)


def test_ulp_distance_refuses_two_dtypes_naming_both():
    x = np.ones(2, np.float32)
    with pytest.raises(TypeError, match=r"ulp_distance: a and b must have one dtype .*got a float32 and b float64"):
        ulp_distance(x, x.astype(np.float64))
    with pytest.raises(TypeError, match="got a bfloat16 and b float16"):
        ulp_distance(x.astype(numpy_dtype("bfloat16")), x.astype(np.float16))


def test_integer_arrays_are_not_weights():
    w = np.array([[0, 1]], np.int64)
    with pytest.raises(TypeError, match="actual must be an array of float16, bfloat16, float32 or float64; got "
                                        "dtype int64"):
        assert_weights_close(w, w)


# ------------------------------------------------------------------------------------------
# tolerance arguments (every entry point: tests/test_tolerances.py)


def test_a_nan_tolerance_no_longer_passes_a_wrong_answer():
    _, _, _, mask, out, w = _problem()
    nan = float("nan")
    with pytest.raises(ValueError, match="max_ulp must be a finite number >= 0; got NaN"):
        assert_weights_close(0.5 * w, w, mask=mask, max_ulp=nan)
    with pytest.raises(ValueError, match="rtol must be a finite number >= 0; got NaN"):
        assert_weights_close(0.5 * w, w, mask=mask, rtol=nan)
    with pytest.raises(ValueError, match="atol must be a finite number >= 0; got NaN"):
        assert_weights_close(0.5 * w, w, mask=mask, atol=nan)
    with pytest.raises(ValueError, match="max_ulp must be a finite number >= 0; got NaN"):
        assert_attention_close(0.5 * out, out, max_ulp=float("nan"))
    with pytest.raises(ValueError, match="scale must be a finite number >= 0; got NaN"):
        assert_attention_close(0.5 * out, out, scale=float("nan"))


def test_a_negative_tolerance_is_refused_not_failed():
    _, _, _, _, out, w = _problem()
    with pytest.raises(ValueError, match="max_ulp must be a finite number >= 0; got -1, which even identical"):
        assert_weights_close(w, w.copy(), max_ulp=-1)
    with pytest.raises(ValueError, match="atol must be a finite number >= 0; got -1e-06"):
        assert_attention_close(out, out.copy(), atol=-1e-6)


def test_zero_tolerances_mean_exact():
    _, _, _, mask, out, w = _problem()
    assert_weights_close(w, w.copy(), max_ulp=0, mask=mask)
    assert_weights_close(w, w.copy(), rtol=0, atol=0, mask=mask)
    assert_attention_close(out, out.copy(), max_ulp=0)
    with pytest.raises(AssertionError, match="more than 0 ULP apart"):
        assert_weights_close(_nudge(w, (0, 0, 0, 0), 1), w, max_ulp=0)
    with pytest.raises(AssertionError, match="beyond atol=0 rtol=0"):
        assert_weights_close(_nudge(w, (0, 0, 0, 0), 1), w, rtol=0, atol=0)


def test_max_ulp_and_rtol_atol_are_alternatives():
    _, _, _, _, out, w = _problem()
    with pytest.raises(ValueError, match=r"max_ulp and rtol/atol are alternatives .*max_ulp=4, rtol=0.001"):
        assert_weights_close(w, w, max_ulp=4, rtol=1e-3)
    with pytest.raises(ValueError, match="max_ulp and rtol/atol are alternatives"):
        assert_attention_close(out, out, max_ulp=4, atol=1e-6)


# ------------------------------------------------------------------------------------------
# values below the smallest normal number (tolerances.flush_to_zero_bound)


def _row(values, dtype):
    return np.array([values], dtype=numpy_dtype(dtype))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_weight_flushed_to_zero_is_not_a_mismatch(dtype):
    # Row [0, -90]: the oracle's second weight is exp(-90) ~ 8.2e-40, below the smallest normal
    # number of float32 and bfloat16 (1.2e-38); arithmetic that flushes subnormals gives 0.
    scores, keep = _row([0.0, -90.0], dtype), np.ones((1, 2), bool)
    expected = oracle.masked_softmax(scores, keep)
    assert 0 < float(expected[0, 1]) < np.finfo(np.float32).tiny
    flushed = expected.copy()
    flushed[0, 1] = 0
    # Further apart in ULPs than the bound: only the rule passes it.
    assert ulp_distance(flushed, expected)[0, 1] > tolerances.ATTENTION_WEIGHTS_MAX_ULP[dtype]
    assert_weights_close(flushed, expected, mask=keep)
    assert_weights_close(flushed, expected)
    assert_weights_close(flushed, expected, mask=keep, scores=scores)
    assert_weights_close(flushed, expected, mask=keep, rtol=1e-6)


def test_a_smallest_subnormal_where_the_oracle_rounds_to_zero_is_not_a_mismatch():
    expected = _row([1.0, 0.0], "float32")
    actual = _row([1.0, 1.4e-45], "float32")  # the smallest float32 subnormal
    keep = np.ones((1, 2), bool)
    assert_weights_close(actual, expected, mask=keep)
    assert_weights_close(actual, expected)


def test_below_the_bound_on_one_side_only_is_still_a_mismatch():
    tiny = float(np.finfo(np.float32).tiny)
    with pytest.raises(AssertionError, match=r"exactly 0 in one and not the other"):
        assert_weights_close(_row([1.0, 0.0], "float32"), _row([1.0, tiny], "float32"))
    with pytest.raises(AssertionError, match=r"more than 16 ULP apart"):
        assert_weights_close(_row([1.0, 8.2e-40], "float32"), _row([1.0, 4 * tiny], "float32"))


def test_float16_subnormals_are_compared_in_ulps():
    # float16 is computed in float32, where its subnormals are normal numbers: no flush to forgive.
    expected = _row([1.0, 4.5e-5], "float16")  # below float16's smallest normal, 6.1e-5
    assert expected[0, 1] < np.finfo(np.float16).tiny
    with pytest.raises(AssertionError, match=r"more than 1 ULP apart"):
        assert_weights_close(_nudge(expected, (0, 1), 3), expected)
    with pytest.raises(AssertionError, match=r"exactly 0 in one and not the other"):
        assert_weights_close(_row([1.0, 0.0], "float16"), expected)


def test_where_the_mask_decides_a_subnormal_is_still_a_structure_error():
    smallest = 1.4e-45
    kept_then_masked = np.array([[True, False]])
    with pytest.raises(AssertionError, match=r"exactly 0 in one and not the other(.|\n)*that entry is masked"):
        assert_weights_close(_row([1.0, smallest], "float32"), _row([1.0, 0.0], "float32"), mask=kept_then_masked)
    # A fully-masked row under "zero" is exactly 0, with the mask and without it.
    fully_masked = np.array([[False, False]])
    for mask in (fully_masked, None):
        with pytest.raises(AssertionError, match=r"exactly 0 in one and not the other"):
            assert_weights_close(_row([smallest, 0.0], "float32"), _row([0.0, 0.0], "float32"), mask=mask)


def test_outputs_below_the_bound_agree_except_in_fully_masked_rows():
    expected = _row([8.2e-40, -1.0], "float32")
    flushed = _row([0.0, -1.0], "float32")
    assert_attention_close(flushed, expected, rtol=1e-6)  # relative: only the rule passes it
    # Flushed products: two subnormal w * v terms summing to the smallest normal may come back as 0.
    tiny = float(np.finfo(np.float32).tiny)
    assert_attention_close(flushed, _row([tiny, -1.0], "float32"), rtol=1e-6)
    beyond = 2 * tolerances.output_flush_allowance("float32")
    with pytest.raises(AssertionError, match=r"worst at \(query=0, dim=0\): actual 0\.0, "):
        assert_attention_close(flushed, _row([beyond, -1.0], "float32"), rtol=1e-6)
    # A fully-masked row's output under "zero" is exactly 0.
    fully_masked = np.zeros((1, 1, 3), bool)  # scores (1, T=1, S=3): no key kept
    with pytest.raises(AssertionError, match=r"exactly 0 in one and not the other(.|\n)*its row is fully masked"):
        assert_attention_close(_row([1.4e-45, 0.0], "float32")[None], _row([0.0, 0.0], "float32")[None],
                               mask=fully_masked, rtol=1e-6)


# ------------------------------------------------------------------------------------------
# float64 computed in float32


def test_float64_computed_in_float32_is_named_in_the_report():
    q, k, v, mask, out, w = _problem("float64")
    # What jax with jax_enable_x64 off computes, cast back to float64.
    q32, k32, v32 = (x.astype(np.float32) for x in (q, k, v))
    out32, w32 = oracle.attention(q32, k32, v32, mask, return_weights=True)
    hint = "hint: float64 expected, values agree to float32: computed in float32?"
    with pytest.raises(MismatchError, match=r"more than 32 ULP apart(.|\n)*" + re.escape(hint)):
        assert_weights_close(w32.astype(np.float64), w, mask=mask)
    with pytest.raises(MismatchError, match=r"more than 64 \* eps(.|\n)*" + re.escape(hint)):
        assert_attention_close(out32.astype(np.float64), out, mask=mask)
    # Values that are wrong in float32 too get no such hint.
    with pytest.raises(MismatchError) as excinfo:
        assert_weights_close(_nudge(w32, (0, 0, 0, 0), 100).astype(np.float64), w, mask=mask)
    assert "computed in float32" not in _message(excinfo)


def test_a_float32_result_for_a_float64_oracle_names_jax_x64():
    _, _, _, _, out, _ = _problem("float64")
    with pytest.raises(AssertionError, match=re.escape(
            "output: dtype float32 differs from the expected float64 (jax turns float64 into float32 unless "
            "jax_enable_x64 is on)")):
        assert_attention_close(out.astype(np.float32), out)


# ------------------------------------------------------------------------------------------
# framework arrays


def _framework(name: str) -> None:
    why = unavailable_reason(name)
    if why is not None:
        pytest.skip(why)


@pytest.mark.parametrize("name", ["jax", "torch"])
def test_framework_arrays_are_accepted(name):
    _framework(name)
    from refmask._backends import from_numpy

    _, _, _, mask, out, w = _problem("float32")
    assert_weights_close(from_numpy(w, name), w, mask=from_numpy(mask, name))
    assert_attention_close(from_numpy(out, name), from_numpy(out, name))
    with pytest.raises(AssertionError, match=r"worst at \(batch=0, head=0, query=0, key=0\)"):
        assert_weights_close(from_numpy(_nudge(w, (0, 0, 0, 0), 50), name), w, mask=mask)


# ------------------------------------------------------------------------------------------
# numpy.testing's conventions: positional rtol/atol, err_msg


def test_rtol_and_atol_may_be_positional_as_in_numpy_testing():
    _, _, _, mask, out, w = _problem("float32")
    off = _nudge(w, (0, 0, 0, 0), 1000)
    assert_weights_close(off, w, 1e-3)  # assert_allclose(actual, desired, rtol, atol)
    with pytest.raises(AssertionError, match=r"beyond atol=1e-09 rtol=0"):
        assert_weights_close(off, w, 0, 1e-9, mask=mask)
    off_out = out.copy()
    off_out[0, 0, 0, 0] += 1e-3
    assert_attention_close(off_out, out, 0, 2e-3)
    with pytest.raises(AssertionError, match=r"beyond atol=1e-06 rtol=None"):
        assert_attention_close(off_out, out, None, 1e-6)
    # The one tolerance checker still refuses what cannot be a bound, positional or not.
    with pytest.raises(ValueError, match="rtol must be a finite number >= 0; got NaN"):
        assert_attention_close(off_out, out, float("nan"))
    with pytest.raises(ValueError, match="atol must be a finite number >= 0; got -1"):
        assert_weights_close(off, w, None, -1)
    with pytest.raises(ValueError, match="max_ulp and rtol/atol are alternatives"):
        assert_weights_close(off, w, 1e-3, max_ulp=4)


def test_err_msg_is_the_first_line_of_every_report():
    _, _, _, mask, out, w = _problem("float32")
    with pytest.raises(MismatchError) as excinfo:
        assert_weights_close(_nudge(w, (1, 0, 1, 2), 40), w, mask=mask, err_msg="my kernel, seed 3")
    lines = _message(excinfo).splitlines()
    assert lines[0] == "my kernel, seed 3"
    assert lines[1].startswith("weights: 1 of 48 entries differ")
    assert excinfo.value.mismatch.index == (1, 0, 1, 2)  # still a MismatchError with its worst entry
    with pytest.raises(AssertionError) as shape_info:
        assert_attention_close(out[..., :2], out, err_msg="block 7")
    assert _message(shape_info).splitlines() == ["block 7", "output: shape (2, 2, 3, 2) differs from the oracle's "
                                                         "(2, 2, 3, 5)"]
    with pytest.raises(TypeError, match="err_msg must be a str; got int 3"):
        assert_attention_close(out, out, err_msg=3)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------
# nested structures, leaf by leaf


class Grads(NamedTuple):
    dq: np.ndarray
    dk: np.ndarray


def test_nested_structures_are_compared_leaf_by_leaf_with_the_path():
    _, _, _, mask, out, w = _problem("float32")
    other = out[:, :, :, ::-1].copy()
    assert_attention_close((out, other), (out.copy(), other.copy()), mask=mask)
    assert_attention_close({"a": [out], "b": None}, {"a": [out], "b": None})
    off = _nudge(other, (1, 1, 0, 2), 1000)
    with pytest.raises(MismatchError, match=r"^output\[1\]: 1 of 60 entries differ"):
        assert_attention_close((out, off), (out, other))
    with pytest.raises(MismatchError, match=r"^output\['b'\]\[0\]: 1 of 60 entries differ"):
        assert_attention_close({"a": out, "b": [off]}, {"a": out, "b": [other]})
    with pytest.raises(MismatchError, match=r"^weights\.dk: 1 of 48 entries differ"):
        assert_weights_close(Grads(w, _nudge(w, (0, 0, 0, 0), 100)), Grads(w, w))
    # A plain tuple is compared with a NamedTuple of its length, the report naming the fields.
    with pytest.raises(MismatchError, match=r"^weights\.dk: "):
        assert_weights_close((w, _nudge(w, (0, 0, 0, 0), 100)), Grads(w, w))
    # Each leaf's own dtype and shape checks, with its path.
    with pytest.raises(AssertionError, match=re.escape("output[0]: dtype float64 differs from the expected float32")):
        assert_attention_close((out.astype(np.float64), other), (out, other))


def test_structures_that_differ_are_reported_as_such():
    _, _, _, _, out, _ = _problem("float32")
    cases = [
        ((out, out), (out, out, out),
         "output: structure differs: actual is a tuple of 2, the oracle's is a tuple of 3"),
        (out, (out, out), "output: structure differs: actual is an array of shape (2, 2, 3, 5), the oracle's is a "
                          "tuple of 2"),
        ({"dq": out}, {"dq": out, "dk": out}, "output: structure differs: actual is a dict with keys ['dq'], the "
                                              "oracle's is a dict with keys ['dk', 'dq']; missing in actual: ['dk']"),
        ({"dq": out, "x": out}, {"dq": out}, "not in the oracle's: ['x']"),
        ((out, None), (out, out), "output[1]: structure differs: actual is None, the oracle's is an array"),
        (Grads(out, out), (out, [out]), "output[1]: structure differs: actual is an array of shape (2, 2, 3, 5), "
                                        "the oracle's is a list of 1"),
    ]
    for actual, expected, message in cases:
        with pytest.raises(AssertionError, match=re.escape(message)):
            assert_attention_close(actual, expected)


def test_a_list_of_numbers_is_one_array():
    assert_weights_close([[0.25, 0.75]], np.array([[0.25, 0.75]]))
    with pytest.raises(MismatchError, match=r"^weights: 1 of 2 entries differ(.|\n)*worst at \(query=0, key=1\)"):
        assert_weights_close([[0.25, 0.7]], np.array([[0.25, 0.75]]))


# ------------------------------------------------------------------------------------------
# the grid of where entries differ


def test_the_report_draws_where_entries_differ():
    keep = oracle.causal_mask(3, 4)
    w = oracle.masked_softmax(np.zeros((3, 4), np.float32), keep)
    off = _nudge(_nudge(w, (1, 0), 100), (2, 1), 200)
    with pytest.raises(MismatchError) as excinfo:
        assert_weights_close(off, w, mask=keep)
    grid = _message(excinfo).split("\n  that row, oracle: ")[1].splitlines()[1:5]
    assert grid == [
        "  where they differ: rows query 0..2, columns key 0..3; x differs, . agrees, - masked:",
        "    0  . - - -",
        "    1  x . - -",
        "    2  . x . -  <- worst (key 1)",
    ]


def test_the_grid_names_the_slice_and_masked_entries_that_differ():
    _, _, _, mask, _, w = _problem()  # batch 1: key 3 padded, query 2 fully masked
    off = w.copy()
    off[1, 1, 0, 3] = 0.125
    with pytest.raises(MismatchError) as excinfo:
        assert_weights_close(off, w, mask=mask)
    message = _message(excinfo)
    assert ("  where they differ in (batch=1, head=1): rows query 0..2, columns key 0..3; . agrees, - masked, "
            "! masked, differs:\n"
            "    0  . . . !  <- worst (key 3)\n"
            "    1  . . . -\n"
            "    2  - - - -  (fully masked)\n") in message


def test_the_grid_is_cut_to_16_by_16_around_the_worst_entry():
    w = np.full((40, 40), 1 / 40, np.float32)
    off = _nudge(w, (30, 35), 100)
    with pytest.raises(MismatchError) as excinfo:
        assert_weights_close(off, w)
    lines = _message(excinfo).splitlines()
    start = next(i for i, line in enumerate(lines) if "where they differ" in line)
    assert lines[start] == ("  where they differ: rows query 22..37 (of 40), columns key 24..39 (of 40); "
                            "x differs, . agrees:")
    rows = lines[start + 1 : start + 17]
    assert [int(r.split()[0]) for r in rows] == list(range(22, 38))
    assert all(len(r.split()[1:17]) == 16 for r in rows)
    assert rows[8] == "    30  . . . . . . . . . . . x . . . .  <- worst (key 35)"


# ------------------------------------------------------------------------------------------
# assert_lse_close


def _lse(q, k, mask):
    """log sum_j exp(s_j) over each row's kept scores, -inf for a row with none: in float64, then
    rounded to float32 (float64 for float64 inputs), as kernels keep it."""
    s = (q.astype(np.float64) @ np.swapaxes(k.astype(np.float64), -1, -2)) / np.sqrt(q.shape[-1])
    s = np.where(np.broadcast_to(mask, s.shape), s, -np.inf)
    return np.logaddexp.reduce(s, axis=-1).astype(np.float64 if q.dtype == np.float64 else np.float32)


def test_lse_equal_and_within_tolerance_pass():
    q, k, _, mask, _, _ = _problem("float16")
    lse = _lse(q, k, mask)
    assert lse.dtype == np.float32 and lse.shape == (2, 2, 3)
    assert np.isneginf(lse[1, :, 2]).all() and np.isfinite(lse[0]).all()
    assert_lse_close(lse, lse.copy(), mask=mask)
    ref = max(1.0, float(np.abs(lse[np.isfinite(lse)]).max()))
    within = lse + np.float32(tolerances.LSE_MAX_ULP["float32"] * tolerances.eps("float32") * ref * 0.9)
    assert_lse_close(within, lse, mask=mask)
    beyond = lse.copy()
    beyond[0, 1, 1] += np.float32(40 * tolerances.eps("float32") * ref)
    with pytest.raises(MismatchError, match=rf"^lse: 1 of 12 entries differ \(more than 32 \* eps \* {ref:g} apart\)"
                                            r"(.|\n)*worst at \(batch=0, head=1, query=1\)"):
        assert_lse_close(beyond, lse, mask=mask)


@pytest.mark.parametrize("value, hint", [
    (np.inf, "+inf (flash-attn's convention outside split-KV) makes a merge of partial results"),
    (-1e30, "a finite value comes from a guarded row sum"),
])
def test_lse_of_a_row_with_no_kept_key_must_be_minus_inf(value, hint):
    q, k, _, mask, _, _ = _problem("float32")
    lse = _lse(q, k, mask)
    wrong = np.where(np.isneginf(lse), np.float32(value), lse)
    with pytest.raises(MismatchError) as excinfo:
        assert_lse_close(wrong, lse, mask=mask)
    message = _message(excinfo)
    assert message.startswith("lse: 2 of 12 entries differ (infinite in one and not the other, or of the other sign)")
    assert "worst at (batch=1, head=0, query=2): actual " in message and ", oracle -inf" in message
    assert "its row is fully masked (no key kept)" in message
    assert ("  where they differ in (batch=1): rows head 0..1, columns query 0..2; . agrees, "
            "! no kept key, differs:\n    0  . . !  <- worst (query 2)\n    1  . . !\n") in message
    assert f"hint: this row has no kept key, so its lse is log(0) = -inf; {hint}" in message


def test_lse_nan_and_dtype_are_structure():
    q, k, _, mask, _, _ = _problem("float32")
    lse = _lse(q, k, mask)
    nan = lse.copy()
    nan[0, 0, 0] = np.nan
    with pytest.raises(MismatchError, match=r"NaN where the oracle has none(.|\n)*hint: NaN lse in a row with a kept"):
        assert_lse_close(nan, lse)
    with pytest.raises(AssertionError, match="lse: dtype float16 differs from the expected float32"):
        assert_lse_close(lse.astype(np.float16), lse)
    with pytest.raises(ValueError, match="max_ulp must be a finite number >= 0; got NaN"):
        assert_lse_close(lse, lse, max_ulp=float("nan"))
    with pytest.raises(MismatchError, match=r"^lse\[1\]: "):
        assert_lse_close((lse, nan), (lse, lse))
