"""Hard properties: every backend agrees with the oracle on hostile inputs.

hypothesis draws, for masked_softmax, attention_weights and attention on numpy, jax and torch:

- magnitudes at the edges of each dtype: huge (±1e30 where the dtype has it, ±finfo.max, ±finfo.max/2,
  finfo.min), tiny (subnormals, ±1e-30, the smallest normal), signed zeros, and ordinary values;
- NaN and ±inf at masked positions (in the scores, or in the bias of attention), which must never
  matter, and -inf at kept positions of the bias;
- every mask form, (T, S), (B, 1, 1, S), (B, 1, T, S), (B, H, T, S), or no mask, with fully-masked rows
  and fully-masked batch items;
- float64, float32, float16 and bfloat16, and the three fully_masked policies.

The result must pass refmask.testing.assert_weights_close (with scores=, for masked_softmax) or
assert_attention_close against the oracle on the same NumPy values. q and k hold small integers and
the scale is a power of two, so the scores of attention are exact in every dtype and the comparison
measures the softmax, the mask and the bias, not the rounding of a product.

CI runs a bounded, derandomized number of examples per test (60), plus the shrunk counterexamples
that longer runs found (the @example cases). A long, randomized run:

    REFMASK_PROPERTY_EXAMPLES=10000 python -m pytest tests/test_properties.py -p no:cacheprovider

jax float64 examples run inside `jax.enable_x64(True)`, whatever the global jax_enable_x64 says (a jax
without that context manager runs them only when x64 is on globally, and rejects them otherwise).
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
pytest.importorskip("ml_dtypes")

from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import refmask  # noqa: E402
from harness.environments import jax_x64  # noqa: E402
from refmask import _backends, oracle  # noqa: E402
from refmask.testing import assert_attention_close, assert_weights_close  # noqa: E402
from refmask.testing.cases import DTYPES, POLICIES, numpy_dtype  # noqa: E402

BACKENDS = ("numpy", "jax", "torch")
MASK_FORMS = ("none", "T,S", "B,1,1,S", "B,1,T,S", "B,H,T,S")

_LONG_RUN = os.environ.get("REFMASK_PROPERTY_EXAMPLES")
PROPERTY = settings(
    max_examples=int(_LONG_RUN or 60),
    derandomize=_LONG_RUN is None,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ----------------------------------------------------------------------------------------------
# values at the edges of a dtype


def finfo(dtype: str) -> Any:
    if dtype == "bfloat16":
        import ml_dtypes

        return ml_dtypes.finfo(ml_dtypes.bfloat16)
    return np.finfo(dtype)


def _representable(values: list[float], dtype: str) -> list[float]:
    """The values that are finite and nonzero (unless 0 was meant) once rounded to dtype, rounded."""
    out = []
    for v in values:
        with np.errstate(over="ignore", under="ignore"):
            r = float(np.asarray(v, np.float64).astype(numpy_dtype(dtype)))
        if math.isfinite(r) and (r != 0 or v == 0):
            out.append(r)
    return sorted(set(out))


def huge(dtype: str) -> list[float]:
    big = float(finfo(dtype).max)
    return _representable([s * m for s in (1, -1) for m in (1e30, big, big / 2, big * 0.99)], dtype)


def tiny(dtype: str) -> list[float]:
    f = finfo(dtype)
    subnormal = float(f.smallest_subnormal)
    return _representable([s * m for s in (1, -1) for m in (subnormal, 3 * subnormal, 1e-30, float(f.tiny))], dtype)


def _as(dtype: str, x: Any) -> np.ndarray:
    return np.asarray(x, np.float64).astype(numpy_dtype(dtype))


@st.composite
def edge_values(draw, shape: tuple[int, ...], dtype: str, ordinary: st.SearchStrategy[float]) -> np.ndarray:
    """An array of `dtype` mixing ordinary, huge, tiny and zero values."""
    element = st.one_of(
        ordinary,
        ordinary,
        st.sampled_from(huge(dtype)),
        st.sampled_from(tiny(dtype)),
        st.sampled_from([0.0, -0.0]),
    )
    n = math.prod(shape)
    return _as(dtype, np.array(draw(st.lists(element, min_size=n, max_size=n)), np.float64).reshape(shape))


def small_floats(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, width=32)


def halves(limit: int) -> st.SearchStrategy[float]:
    """Multiples of 1/2 in [-limit, limit]: exact in every dtype, and so are their small sums."""
    return st.integers(-2 * limit, 2 * limit).map(lambda n: n / 2)


# ----------------------------------------------------------------------------------------------
# masks


def mask_shape(form: str, b: int, h: int, t: int, s: int) -> tuple[int, ...]:
    return {"T,S": (t, s), "B,1,1,S": (b, 1, 1, s), "B,1,T,S": (b, 1, t, s), "B,H,T,S": (b, h, t, s)}[form]


@st.composite
def masks(draw, b: int, h: int, t: int, s: int) -> np.ndarray | None:
    """A boolean mask of a drawn form, with some rows and batch items wiped (fully masked)."""
    form = draw(st.sampled_from(MASK_FORMS))
    if form == "none":
        return None
    shape = mask_shape(form, b, h, t, s)
    keep = np.array(draw(st.lists(st.booleans(), min_size=math.prod(shape), max_size=math.prod(shape))), bool)
    keep = keep.reshape(shape)
    if len(shape) == 4:
        for item in draw(st.lists(st.integers(0, b - 1), max_size=b)):
            keep[item] = False
    if shape[-2] > 1 or len(shape) == 2:
        for row in draw(st.lists(st.integers(0, shape[-2] - 1), max_size=2)):
            keep[..., row, :] = False
    return keep


def poison(draw, x: np.ndarray, where: np.ndarray, dtype: str) -> np.ndarray:
    """x with NaN / +inf / -inf written at some of the `where` positions."""
    kind = draw(st.sampled_from(["none", "nan", "+inf", "-inf", "mixed"]))
    if kind == "none" or not where.any():
        return x
    values = {"nan": [np.nan], "+inf": [np.inf], "-inf": [-np.inf], "mixed": [np.nan, np.inf, -np.inf]}[kind]
    chosen = np.array(draw(st.lists(st.sampled_from(values), min_size=x.size, max_size=x.size)), np.float64)
    hit = where & np.array(draw(st.lists(st.booleans(), min_size=x.size, max_size=x.size))).reshape(x.shape)
    out = x.astype(np.float64)
    out[hit] = chosen.reshape(x.shape)[hit]
    return _as(dtype, out)


def masked_positions(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    return np.zeros(shape, bool) if mask is None else ~np.broadcast_to(mask, shape)


# ----------------------------------------------------------------------------------------------
# problems


@dataclass
class Problem:
    dtype: str
    fully_masked: str
    mask: np.ndarray | None
    arrays: dict[str, np.ndarray]
    options: dict[str, Any]

    def __repr__(self) -> str:
        parts = [f"dtype={self.dtype!r}", f"fully_masked={self.fully_masked!r}", f"options={self.options!r}",
                 f"mask={None if self.mask is None else self.mask.astype(int).tolist()}"]
        parts += [f"{name}={np.asarray(a, np.float64).tolist()}" for name, a in self.arrays.items()]
        return "Problem(" + ", ".join(parts) + ")"


sizes = st.tuples(st.integers(1, 2), st.integers(1, 2), st.integers(1, 4), st.integers(1, 5))


@st.composite
def softmax_problems(draw) -> Problem:
    dtype = draw(st.sampled_from(DTYPES))
    b, h, t, s = draw(sizes)
    mask = draw(masks(b, h, t, s))
    scores = draw(edge_values((b, h, t, s), dtype, st.one_of(small_floats(-8, 8), small_floats(-120, 120))))
    scores = poison(draw, scores, masked_positions(mask, scores.shape), dtype)
    return Problem(dtype, draw(st.sampled_from(POLICIES)), mask, {"scores": scores}, {})


@st.composite
def attention_problems(draw, with_values: bool) -> Problem:
    dtype = draw(st.sampled_from(DTYPES))
    b, h, t, s = draw(sizes)
    h_kv = draw(st.sampled_from([h, 1]))
    d = draw(st.integers(1, 4))
    small_ints = st.integers(-3, 3).map(float)
    q = _as(dtype, np.array(draw(st.lists(small_ints, min_size=b * h * t * d, max_size=b * h * t * d))).reshape(
        b, h, t, d))
    k = _as(dtype, np.array(draw(st.lists(small_ints, min_size=b * h_kv * s * d, max_size=b * h_kv * s * d))).reshape(
        b, h_kv, s, d))
    arrays = {"q": q, "k": k}
    # Powers of two (and 1/sqrt(D) where it is one): scale * q @ k^T is exact in every dtype.
    scale = draw(st.sampled_from([1.0, 0.5, 0.25] + ([None] if d in (1, 4) else [])))
    options: dict[str, Any] = {"scale": scale}
    mask = draw(masks(b, h, t, s))
    if with_values:
        dv = draw(st.integers(1, 3))
        big_v = _representable([1e30, -1e30, float(finfo(dtype).max) / (4 * s), -float(finfo(dtype).max) / (4 * s)],
                               dtype)
        element = st.one_of(small_floats(-4, 4), small_floats(-4, 4), st.sampled_from(big_v),
                            st.sampled_from(tiny(dtype)))
        n = b * h_kv * s * dv
        arrays["v"] = _as(dtype, np.array(draw(st.lists(element, min_size=n, max_size=n))).reshape(b, h_kv, s, dv))
        options["is_causal"] = draw(st.booleans())
        options["return_weights"] = draw(st.booleans())
    if draw(st.booleans()):
        shape = (b, h, t, s)
        bias = draw(edge_values(shape, dtype, halves(8)))
        kept = ~masked_positions(mask, shape)
        if draw(st.booleans()):  # -inf at some kept positions: a bias may mask too
            minus_inf = np.array(draw(st.lists(st.booleans(), min_size=bias.size, max_size=bias.size))).reshape(shape)
            bias = np.where(kept & minus_inf, _as(dtype, -np.inf), bias)
        arrays["bias"] = poison(draw, bias, ~kept, dtype)
    return Problem(dtype, draw(st.sampled_from(POLICIES)), mask, arrays, options)


# ----------------------------------------------------------------------------------------------
# running on a backend


@contextlib.contextmanager
def backend_context(backend: str, dtype: str):
    """jax float64 needs x64: enabled for the example, whatever the global setting is."""
    if backend != "jax" or dtype != "float64":
        yield
        return
    with jax_x64():
        yield


def run(fn: str, backend: str, problem: Problem) -> Any:
    """refmask.<fn> on `backend` with the problem's arrays converted to it; results as NumPy arrays."""

    def convert(x: Any) -> Any:
        return _backends.from_numpy(x, backend) if isinstance(x, np.ndarray) else x

    kwargs = {**problem.options, "fully_masked": problem.fully_masked, "backend": backend}
    with backend_context(backend, problem.dtype):
        arrays = {name: convert(a) for name, a in problem.arrays.items()}
        mask = convert(problem.mask)
        if fn == "masked_softmax":
            result = refmask.masked_softmax(arrays["scores"], mask, **kwargs)
        elif fn == "attention_weights":
            result = refmask.attention_weights(arrays["q"], arrays["k"], mask, bias=arrays.get("bias"), **kwargs)
        else:
            result = refmask.attention(arrays["q"], arrays["k"], arrays["v"], mask, bias=arrays.get("bias"), **kwargs)
        if isinstance(result, tuple):
            return tuple(_backends.to_numpy(r) for r in result)
        return _backends.to_numpy(result)


def oracle_result(fn: str, problem: Problem) -> Any:
    a, kwargs = problem.arrays, {**problem.options, "fully_masked": problem.fully_masked}
    if fn == "masked_softmax":
        return oracle.masked_softmax(a["scores"], problem.mask, **kwargs)
    if fn == "attention_weights":
        return oracle.attention_weights(a["q"], a["k"], problem.mask, bias=a.get("bias"), **kwargs)
    return oracle.attention(a["q"], a["k"], a["v"], problem.mask, bias=a.get("bias"), **kwargs)


def effective_mask(problem: Problem, shape: tuple[int, ...]) -> np.ndarray | None:
    """The mask the result was computed with (is_causal ands the causal mask in)."""
    mask = problem.mask
    if problem.options.get("is_causal"):
        mask = oracle.and_masks(mask, oracle.causal_mask(shape[-2], shape[-1]))
    return mask


def framework(backend: str) -> None:
    if backend != "numpy":
        pytest.importorskip(backend)


# ----------------------------------------------------------------------------------------------
# shrunk counterexamples the random search found once, run on every CI run


def _f(dtype: str, values: Any, shape: tuple[int, ...]) -> np.ndarray:
    return _as(dtype, np.reshape(values, shape))


F32_MAX = float(np.finfo(np.float32).max)
F64_MAX = float(np.finfo(np.float64).max)

# A kept score so large that m - 128 rounds to m in float32.
HUGE_KEPT_SCORE = Problem("float32", "zero", None, {"scores": _f("float32", [0.0, 0.0, 0.0, 1e30], (1, 1, 2, 2))}, {})
# Scores whose difference overflows float64 (x - m = -inf for a kept finite x).
SPREAD_BEYOND_FLOAT64 = Problem(
    "float64", "zero", None, {"scores": _f("float64", [0.0, 0.0, -F64_MAX, F64_MAX / 2], (1, 1, 2, 2))}, {})
# A row whose kept scores are all huge and negative (a bias of -1e30 and -finfo.max).
HUGE_NEGATIVE_ROW = Problem(
    "float32", "zero", None,
    {"q": np.zeros((1, 1, 1, 1), np.float32), "k": np.zeros((1, 1, 3, 1), np.float32),
     "v": _f("float32", [0.0, 0.0, 1.0], (1, 1, 3, 1)), "bias": _f("float32", [-1e30, -1e30, -F32_MAX], (1, 1, 1, 3))},
    {"scale": 1.0, "is_causal": False, "return_weights": True})
# Equal weights over v = [.., -x, x]: the exact output is 0; the oracle's float64 sum leaves a rounding error.
CANCELLING_VALUES = Problem(
    "float32", "zero", None,
    {"q": np.zeros((1, 1, 1, 1), np.float32), "k": np.zeros((1, 1, 5, 1), np.float32),
     "v": _f("float32", [0.0, 0.0, 0.0, -1e30, 1e30], (1, 1, 5, 1))},
    {"scale": 1.0, "is_causal": False, "return_weights": False})
# A fully-masked row under "uniform" whose mean of v is exactly 0 in exact arithmetic.
UNIFORM_ROW_MEAN_ZERO = Problem(
    "float16", "uniform", np.zeros((1, 1, 1, 5), bool),
    {"q": np.zeros((1, 1, 1, 1), np.float16), "k": np.zeros((1, 1, 5, 1), np.float16),
     "v": _f("float16", [0.0, 0.0, 0.0, -3276.0, 3276.0], (1, 1, 5, 1))},
    {"scale": 1.0, "is_causal": False, "return_weights": False})
# The same row whose mean of v is subnormal (XLA on CPU flushes it to 0).
UNIFORM_ROW_MEAN_SUBNORMAL = Problem(
    "float64", "uniform", np.zeros((1, 2), bool),
    {"q": np.zeros((1, 2, 1, 4)), "k": np.zeros((1, 1, 2, 4)),
     "v": _f("float64", [0.0, -float(np.finfo(np.float64).tiny)], (1, 1, 2, 1))},
    {"scale": 1.0, "is_causal": False, "return_weights": False})

# Each product 1/2 * -tiny is subnormal: with flush-to-zero (jax on CPU) the output -tiny comes out 0.
FLUSHED_PRODUCTS = Problem(
    "float64", "zero", None,
    {"q": np.zeros((1, 2, 1, 1)), "k": np.zeros((1, 2, 2, 1)),
     "v": _f("float64", [0.0, 0.0, -float(np.finfo(np.float64).tiny), -float(np.finfo(np.float64).tiny)],
             (1, 2, 2, 1))},
    {"scale": 1.0, "is_causal": False, "return_weights": False})


# ----------------------------------------------------------------------------------------------
# the properties


@pytest.mark.parametrize("backend", BACKENDS)
@PROPERTY
@given(problem=softmax_problems())
@example(problem=HUGE_KEPT_SCORE)
@example(problem=SPREAD_BEYOND_FLOAT64)
def test_masked_softmax_matches_the_oracle(backend, problem):
    framework(backend)
    actual = run("masked_softmax", backend, problem)
    expected = oracle_result("masked_softmax", problem)
    assert_weights_close(actual, expected, mask=problem.mask, scores=problem.arrays["scores"])


@pytest.mark.parametrize("backend", BACKENDS)
@PROPERTY
@given(problem=attention_problems(with_values=False))
def test_attention_weights_match_the_oracle(backend, problem):
    framework(backend)
    actual = run("attention_weights", backend, problem)
    expected = oracle_result("attention_weights", problem)
    assert_weights_close(actual, expected, mask=problem.mask)


@pytest.mark.parametrize("backend", BACKENDS)
@PROPERTY
@given(problem=attention_problems(with_values=True))
@example(problem=HUGE_NEGATIVE_ROW)
@example(problem=CANCELLING_VALUES)
@example(problem=UNIFORM_ROW_MEAN_ZERO)
@example(problem=UNIFORM_ROW_MEAN_SUBNORMAL)
@example(problem=FLUSHED_PRODUCTS)
def test_attention_matches_the_oracle(backend, problem):
    framework(backend)
    actual = run("attention", backend, problem)
    expected = oracle_result("attention", problem)
    q, k = problem.arrays["q"], problem.arrays["k"]
    mask = effective_mask(problem, (*q.shape[:-1], k.shape[-2]))
    if problem.options["return_weights"]:
        (out, weights), (expected_out, expected_weights) = actual, expected
        assert_weights_close(weights, expected_weights, mask=mask)
    else:
        out, expected_out = actual, expected
    # Outputs can cancel to near 0 (v = [-x, x] under equal weights): the error is measured against
    # max|v|, as assert_attention_close's docstring says, not against the output's own size.
    v_scale = float(np.max(np.abs(problem.arrays["v"].astype(np.float64)), initial=0.0))
    assert_attention_close(
        out, expected_out, mask=mask, scale=v_scale, fully_masked=problem.fully_masked
    )
