"""assert_weights_close / assert_attention_close: what passes, what fails, and what the report says."""

from __future__ import annotations

import importlib.util
import re

import numpy as np
import pytest

from refmask import oracle
from refmask.testing import MismatchError, assert_attention_close, assert_weights_close, tolerances, ulp_distance
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
    _, _, _, mask, _, w = _problem("float32")
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
    _, _, v, mask, out, _ = _problem()
    off = out.copy()
    off[0, 1, 2, 4] += 0.01
    with pytest.raises(AssertionError) as excinfo:
        assert_attention_close(off, out, scale=2.0, mask=mask)
    message = _message(excinfo)
    assert f"output: 1 of {out.size} entries differ (more than 32 * eps * 2 apart)" in message
    assert "worst at (batch=0, head=1, query=2, dim=4):" in message
    assert "its row is not fully masked" in message


def test_output_of_a_fully_masked_row_must_be_exactly_zero_under_zero():
    _, _, v, mask, out, _ = _problem(policy="zero")
    uniform = oracle.attention(*_problem()[:3], mask, fully_masked="uniform")
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


# ------------------------------------------------------------------------------------------
# framework arrays


def _framework(name: str) -> None:
    pytest.importorskip(name)
    if importlib.util.find_spec(f"refmask.backends.{name}") is None:
        pytest.skip(f"refmask has no {name} backend yet")


@pytest.mark.parametrize("name", ["jax", "torch"])
def test_framework_arrays_are_accepted(name):
    _framework(name)
    from refmask._backends import from_numpy

    _, _, _, mask, out, w = _problem("float32")
    assert_weights_close(from_numpy(w, name), w, mask=from_numpy(mask, name))
    assert_attention_close(from_numpy(out, name), from_numpy(out, name))
    with pytest.raises(AssertionError, match=r"worst at \(batch=0, head=0, query=0, key=0\)"):
        assert_weights_close(from_numpy(_nudge(w, (0, 0, 0, 0), 50), name), w, mask=mask)
