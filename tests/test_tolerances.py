"""The tolerance model itself: ULP distances are exact, and the softmax bound is both needed and
sufficient for a plain float32 softmax (the idiom every framework uses)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refmask import oracle
from refmask.testing import tolerances, ulp_distance


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_ulp_distance_counts_neighbours_exactly(dtype):
    x = np.array([1.0, 3.5, -2.25, 1e-3], dtype=dtype)
    up = np.nextafter(x, dtype(np.inf))
    assert ulp_distance(x, up).tolist() == [1.0] * 4
    assert ulp_distance(x, np.nextafter(up, dtype(np.inf))).tolist() == [2.0] * 4


def test_ulp_distance_across_zero_and_at_the_extremes():
    tiny = np.array([5e-324])
    assert ulp_distance(tiny, -tiny).tolist() == [2.0]
    assert ulp_distance(np.array([0.0]), np.array([-0.0])).tolist() == [0.0]
    big = np.finfo(np.float64).max
    assert ulp_distance(np.array([big]), np.array([-big]))[0] == pytest.approx(2.0 * (2**63 - 2**52 - 1))


def plain_float32_softmax(scores, keep):
    """softmax(masked_fill(~keep, -inf)) in float32 arithmetic, as torch and jax compute it."""
    x = np.where(keep, scores, np.float32(-np.inf))
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), spread=st.sampled_from([1.0, 4.0, 16.0]), s=st.integers(2, 64))
def test_plain_float32_softmax_is_within_softmax_max_ulp(seed, spread, s):
    rng = np.random.default_rng(seed)
    scores = (spread * rng.standard_normal((4, s))).astype(np.float32)
    keep = rng.random((4, s)) < 0.8
    keep[:, 0] = True
    expected = oracle.masked_softmax(scores, keep)
    distance = ulp_distance(plain_float32_softmax(scores, keep), expected)
    assert (distance <= tolerances.softmax_max_ulp("float32", scores, keep)).all()


def test_a_flat_four_ulp_bound_is_not_enough_for_float32():
    rng = np.random.default_rng(0)
    scores = (16.0 * rng.standard_normal((64, 64))).astype(np.float32)
    keep = np.ones(scores.shape, bool)
    distance = ulp_distance(plain_float32_softmax(scores, keep), oracle.masked_softmax(scores, keep))
    assert distance.max() > tolerances.SOFTMAX_MAX_ULP["float32"]


# ------------------------------------------------------------------------------------------
# tolerance arguments: one checker for every entry point of refmask.testing

NAN, INF = float("nan"), float("inf")

# (bad value, the exception, words the message must hold besides the argument's name)
BAD_TOLERANCES = [
    (NAN, ValueError, "NaN"),
    (-1, ValueError, "-1"),
    (-0.5, ValueError, "-0.5"),
    (INF, ValueError, "inf"),
    (-INF, ValueError, "inf"),
    (True, TypeError, "bool True"),
    (np.bool_(False), TypeError, "False"),
    ("2", TypeError, "str '2'"),
    ([1.0], TypeError, "list"),
    (1 + 0j, TypeError, "complex"),
]


def _tolerance_parameters():
    """(qualified name, function, parameter) for every public function of refmask.testing that takes
    a parameter named like a tolerance: what a new entry point would add to this list."""
    import importlib
    import inspect

    found: dict[tuple[object, str], str] = {}
    for module_name in ("refmask.testing", "refmask.testing.tolerances", "refmask.testing._assert",
                        "refmask.testing.check", "refmask.testing.cases", "refmask.testing.strategies",
                        "refmask.testing.plugin"):
        module = importlib.import_module(module_name)
        for name, obj in sorted(vars(module).items()):
            if name.startswith("_") or not inspect.isfunction(obj) or not obj.__module__.startswith("refmask.testing"):
                continue
            for parameter in inspect.signature(obj).parameters:
                if parameter in tolerances.TOLERANCE_ARGUMENTS:
                    found[obj, parameter] = f"{obj.__module__}.{name}"
    return [(qualified, fn, parameter) for (fn, parameter), qualified in found.items()]


TOLERANCE_PARAMETERS = _tolerance_parameters()


def test_the_known_entry_points_are_among_those_checked():
    names = {(qualified.rsplit(".", 1)[1], parameter) for qualified, _, parameter in TOLERANCE_PARAMETERS}
    for fn in ("assert_weights_close", "assert_attention_close", "check_attention"):
        assert {(fn, "max_ulp"), (fn, "rtol"), (fn, "atol")} <= names
    assert {("assert_attention_close", "scale"), ("output_error", "scale"), ("assert_weights_close", "table"),
            ("tolerance", "table")} <= names


@pytest.mark.parametrize("bad, error, words", BAD_TOLERANCES, ids=[repr(b) for b, _, _ in BAD_TOLERANCES])
@pytest.mark.parametrize("qualified, fn, parameter", TOLERANCE_PARAMETERS,
                         ids=[f"{q.rsplit('.', 1)[1]}-{p}" for q, _, p in TOLERANCE_PARAMETERS])
def test_every_entry_point_refuses_a_bad_tolerance_before_it_runs(qualified, fn, parameter, bad, error, words):
    import inspect

    # Every other required argument is None: only a check that runs before the body can answer
    # with a message about the tolerance.
    others = {p: None for p, spec in inspect.signature(fn).parameters.items()
              if spec.default is inspect.Parameter.empty and p != parameter}
    value = {"float32": bad} if parameter == "table" else bad
    name = "table['float32']" if parameter == "table" else parameter
    with pytest.raises(error) as excinfo:
        fn(**others, **{parameter: value})
    message = str(excinfo.value)
    assert message.startswith(f"{name} must be a finite number >= 0; got "), message
    assert words in message


def test_a_table_must_be_a_mapping():
    with pytest.raises(TypeError, match=r"table must be a dict of dtype name -> tolerance(.|\n)*got list"):
        tolerances.tolerance([1, 2], "float32")  # type: ignore[arg-type]


def test_good_tolerances_are_accepted_as_floats():
    for value, expected in [(0, 0.0), (3, 3.0), (2.5, 2.5), (np.float32(4), 4.0), (np.int64(7), 7.0),
                            (np.array(2.0), 2.0)]:
        got = tolerances.check_tolerance("max_ulp", value)
        assert type(got) is float and got == expected


def test_a_new_entry_point_is_checked_by_the_decorator():
    calls = []

    @tolerances.checks_tolerances
    def compare(actual, expected, *, max_ulp=None, atol=None, rtol=None):
        calls.append(max_ulp)

    compare(1, 2, max_ulp=3)
    with pytest.raises(ValueError, match="max_ulp must be a finite number >= 0; got NaN"):
        compare(1, 2, max_ulp=NAN)
    with pytest.raises(ValueError, match="atol must be"):
        compare(1, 2, atol=-1e-9)
    with pytest.raises(ValueError, match="max_ulp and rtol/atol are alternatives"):
        compare(1, 2, max_ulp=2, rtol=1e-3)
    assert calls == [3]
    with pytest.raises(TypeError, match="takes none of"):
        tolerances.checks_tolerances(lambda actual, expected: None)


# ------------------------------------------------------------------------------------------
# the flush-to-zero rule


def test_flush_to_zero_bound_is_the_smallest_normal_of_the_compute_precision():
    import ml_dtypes

    assert tolerances.flush_to_zero_bound("float64") == np.finfo(np.float64).tiny
    assert tolerances.flush_to_zero_bound(np.float32) == np.finfo(np.float32).tiny
    assert tolerances.flush_to_zero_bound("bfloat16") == float(ml_dtypes.finfo(ml_dtypes.bfloat16).tiny)
    # float16 is computed in float32: its subnormals are normal float32 numbers, never flushed.
    smallest_float16_subnormal = float(np.nextafter(np.float16(0), np.float16(1)))
    assert tolerances.flush_to_zero_bound("float16") < smallest_float16_subnormal


def test_subnormals_agree_only_when_both_sides_are_below_the_bound():
    tiny = np.finfo(np.float32).tiny
    below = np.float32(8.2e-40)
    actual = np.array([0.0, below, 1.4e-45, tiny, 0.0, np.nan], np.float32)
    expected = np.array([below, 0.0, 0.0, below, tiny, 0.0], np.float32)
    assert tolerances.subnormals_agree(actual, expected).tolist() == [True, True, True, False, False, False]
