"""The JAX backend's fused route (refmask/backends/_jax_fused.py): attention on jax.nn.dot_product_attention.

On a GPU the route runs cuDNN's kernel; here, on the CPU, every catalogue case is sent through the same
route with implementation="xla", so what the route adds (the fully-masked rows' fix-up, the fall-back on
non-finite inputs, the gradients through both) is held against the oracle. The kernel is called as
cuDNN is: jax folds the bool mask into the bias as a large negative fill, so what an additive mask lets
through (a bias at a masked entry, a kept entry below the fill) reaches the result here too. float16
is not routed on the CPU (XLA:CPU has no float16 dot accumulating in float32, so the kernel's compile is
refused and the exact path runs); bfloat16 and float32 are. The exact route is covered by
test_cross_backend.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from refmask._backends import unavailable_reason

if (JAX_MISSING := unavailable_reason("jax")) is not None:
    pytest.skip(JAX_MISSING, allow_module_level=True)

import jax
import jax.numpy as jnp

import refmask
from harness import poison
from refmask import oracle
from refmask.backends import _jax_fused as fused
from refmask.testing import assert_attention_close, assert_gradients_close, attention_gradient_terms
from refmask.testing.cases import ATTENTION_CASES

CASES = {c.id: c for c in ATTENTION_CASES}


# cuDNN's fill for a masked entry, as jax's combine_bias_and_mask adds it (float16's; bfloat16's is -2^40).
_CUDNN_FILL = -32768.0


def _as_cudnn_masks(dpa):
    """dot_product_attention with the bool mask folded into the bias, as jax's cuDNN path does."""

    def call(q, k, v, bias=None, mask=None, **kwargs):
        if mask is not None:
            fill = jnp.where(mask, 0.0, _CUDNN_FILL).astype(q.dtype)
            bias = fill if bias is None else bias + fill
        return dpa(q, k, v, bias=bias, mask=None, **kwargs)

    return call


@pytest.fixture
def kernel_calls(monkeypatch) -> list[str]:
    """The route on the CPU (implementation="xla", masks folded in as cuDNN does), fresh compiles, and the
    dot_product_attention calls traced."""
    calls: list[str] = []
    dpa = _as_cudnn_masks(jax.nn.dot_product_attention)

    def counted(*args, **kwargs):
        calls.append(kwargs["implementation"])
        return dpa(*args, **kwargs)

    monkeypatch.setitem(fused.IMPLEMENTATIONS, "cpu", "xla")
    monkeypatch.setattr(jax.nn, "dot_product_attention", counted)
    fused._fused_jit.clear_cache()  # type: ignore[attr-defined]  # jax.jit's wrapper has it; its stub does not
    fused._refused.clear()
    fused._compiled.clear()
    return calls


def _ran(calls: list[str]) -> bool:
    """The kernel was traced and its program compiled (nothing refused): the route ran."""
    return bool(calls) and not fused._refused


def _served(case) -> bool:
    """The route takes (B, H, T, D) problems with no empty axis (and values of the keys' head dim)."""
    return len(case.batch) == 1 and 0 not in (*case.batch, case.q_len, case.kv_len)


def _arrays(case, dtype: str) -> dict[str, np.ndarray]:
    """The case's q, k and v, v with the keys' head dim (the catalogue's values have their own, which the
    kernel does not take)."""
    a = case.arrays(dtype)
    shape = (*case.batch, case.kv_heads, case.kv_len, case.head_dim)
    a["v"] = np.random.default_rng(7).standard_normal(shape).astype(a["q"].dtype)
    return a


def _attention(a, mask, **kwargs):
    arrays = {n: jnp.asarray(a[n]) for n in ("q", "k", "v")}
    return refmask.attention(arrays["q"], arrays["k"], arrays["v"], None if mask is None else jnp.asarray(mask),
                             backend="jax", **kwargs)


# The case last in the test id: the suite's scheduler gives each catalogue case one worker.
@pytest.mark.parametrize("case", ATTENTION_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("dtype", ["bfloat16"])  # a dtype cuDNN takes; the other tests run float32
def test_every_case_through_the_route_matches_the_oracle(kernel_calls, case, dtype):
    a, mask = _arrays(case, dtype), case.mask()
    bias = (0.5 * np.random.default_rng(5).standard_normal((case.q_len, case.kv_len))).astype(a["q"].dtype)
    fully_masked_rows = mask is not None and not np.broadcast_to(mask, case.scores_shape).any(axis=-1).all()
    policies = ("zero", "uniform", "nan") if fully_masked_rows else ("zero",)
    v_scale = float(np.abs(a["v"].astype(np.float64)).max(initial=0.0))
    for policy in policies:
        for b, scale in ((None, None), (bias, 0.3)):
            out = _attention(a, mask, bias=None if b is None else jnp.asarray(b), scale=scale, fully_masked=policy)
            want = oracle.attention(a["q"], a["k"], a["v"], mask, bias=b, scale=scale, fully_masked=policy)
            assert_attention_close(np.asarray(out), want, scale=v_scale)
    assert _ran(kernel_calls) == _served(case)


def test_is_causal_with_a_mask_through_the_route(kernel_calls):
    case = CASES["padding-queries-and-keys"]
    a, mask = _arrays(case, "float32"), case.mask()
    for policy in ("zero", "uniform", "nan"):
        out = _attention(a, mask, is_causal=True, fully_masked=policy)
        causal = oracle.causal_mask(case.q_len, case.kv_len)
        want = oracle.attention(a["q"], a["k"], a["v"], oracle.and_masks(mask, causal), fully_masked=policy)
        assert_attention_close(np.asarray(out), want)
    assert _ran(kernel_calls)


@pytest.mark.parametrize("policy", ["zero", "uniform", "nan"])
@pytest.mark.parametrize("case_id", ["padding-queries-and-keys", "mqa-padding"])
def test_gradients_through_the_route_match_attention_vjp(kernel_calls, case_id, policy):
    case = CASES[case_id]
    a, mask = _arrays(case, "float32"), case.mask()
    d_out = np.random.default_rng(3).standard_normal((*case.batch, case.heads, case.q_len, case.head_dim))
    d_out = d_out.astype(np.float32)
    m = None if mask is None else jnp.asarray(mask)

    def out(q, k, v):
        return refmask.attention(q, k, v, m, fully_masked=policy, backend="jax")

    _, pullback = jax.vjp(out, *(jnp.asarray(a[n]) for n in ("q", "k", "v")))
    grads = pullback(jnp.asarray(d_out))
    assert _ran(kernel_calls), "the route was not taken"
    want = oracle.attention_vjp(a["q"], a["k"], a["v"], mask, d_out, fully_masked=policy)
    terms = attention_gradient_terms(a["q"], a["k"], a["v"], mask, d_out, fully_masked=policy)
    for name, g, e, term in zip(("dq", "dk", "dv"), grads, want, terms, strict=False):
        assert_gradients_close(np.asarray(g), e, terms=term, name=f"{name} ({policy})")


@pytest.mark.parametrize("where", [*poison.SITES, "a kept bias below the fill"])
@pytest.mark.parametrize("value", [math.nan, math.inf, 1e30])
def test_non_finite_inputs_take_the_exact_path_and_never_leak(kernel_calls, where, value):
    """One program holds both paths: lax.cond picks the exact one, so what no row sees stays unseen (the
    NaNs of the result are the oracle's, no more)."""
    case = CASES["padding-queries-and-keys"]  # batch 0 keeps keys 0-1 and queries 0-2
    a, mask = _arrays(case, "float32"), case.mask()
    bias = np.zeros((case.q_len, case.kv_len), np.float32)
    if where in poison.SITES:
        poison.plant(a, bias, where, value)
    else:
        bias[0, 1] = 4 * _CUDNN_FILL
    with np.errstate(invalid="ignore"):  # the oracle's float64 matmul meets the inf
        want = oracle.attention(a["q"], a["k"], a["v"], mask, bias=bias, fully_masked="uniform")
    out = _attention(a, mask, bias=jnp.asarray(bias), fully_masked="uniform")
    assert_attention_close(np.asarray(out), want, scale=float(np.abs(a["v"]).max()))
    assert _ran(kernel_calls)


def test_only_the_calls_the_kernel_can_serve_take_the_route(kernel_calls):
    """Weights, the lse, softcap, sinks, values of another head dim and platforms without a kernel go exact."""
    q, ones = jnp.ones((1, 2, 3, 4)), np.ones((1, 2, 3, 4), np.float32)
    assert fused.implementation(q, q, q, weights=False, lse=False, softcap=None, sinks=None) == "xla"
    for flags in ({"weights": True}, {"lse": True}, {"softcap": 1.0}, {"sinks": jnp.zeros(2)}):
        args = {"weights": False, "lse": False, "softcap": None, "sinks": None} | flags
        assert fused.implementation(q, q, q, **args) is None
    assert fused.implementation(q, q, jnp.ones((1, 2, 3, 5)), weights=False, lse=False, softcap=None,
                                sinks=None) is None
    del fused.IMPLEMENTATIONS["cpu"]
    assert fused.implementation(q, q, q, weights=False, lse=False, softcap=None, sinks=None) is None
    out = refmask.attention(q, q, q, backend="jax")
    assert_attention_close(np.asarray(out), oracle.attention(ones, ones, ones))
    assert kernel_calls == []


def test_a_bias_of_another_dtype_takes_the_exact_path():
    """The kernel would round a float32 bias to bfloat16 q's dtype; the exact path adds it in float32."""
    q = jnp.ones((1, 2, 3, 8), jnp.bfloat16)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(fused.IMPLEMENTATIONS, "cpu", "xla")
        for bias, name in ((jnp.ones((3, 3), jnp.bfloat16), "xla"), (jnp.ones((3, 3), jnp.float32), None)):
            assert fused.implementation(q, q, q, weights=False, lse=False, softcap=None, sinks=None,
                                        bias=bias) == name


def test_cudnn_takes_half_precision_only(monkeypatch):
    monkeypatch.setitem(fused.IMPLEMENTATIONS, "cpu", "cudnn")
    for dtype, name in ((jnp.float16, "cudnn"), (jnp.bfloat16, "cudnn"), (jnp.float32, None)):
        q = jnp.ones((1, 2, 3, 8), dtype)
        assert fused.implementation(q, q, q, weights=False, lse=False, softcap=None, sinks=None) == name


@pytest.mark.parametrize("kernel, refused_when", [("cudnn", "traced"), ("xla", "compiled")])
def test_a_refusal_falls_back_under_a_callers_jit_too_and_is_remembered(monkeypatch, kernel_calls, kernel,
                                                                        refused_when):
    """cuDNN refuses on the CPU while jax traces the call, XLA:CPU while it compiles float16's: each new
    shape is compiled ahead of time, so either refusal is caught, eagerly and inside a caller's jax.jit,
    the exact path answers, and the shape is not tried again."""
    monkeypatch.setitem(fused.IMPLEMENTATIONS, "cpu", kernel)
    case = CASES["padding-queries-and-keys"]
    a, mask = _arrays(case, "float16"), case.mask()
    want = oracle.attention(a["q"], a["k"], a["v"], mask, fully_masked="uniform")
    jitted = jax.jit(lambda q, k, v, m: refmask.attention(q, k, v, m, fully_masked="uniform", backend="jax"))
    for _ in range(2):
        assert_attention_close(np.asarray(_attention(a, mask, fully_masked="uniform")), want)
        out = jitted(*(jnp.asarray(a[n]) for n in ("q", "k", "v")), jnp.asarray(mask))
        assert_attention_close(np.asarray(out), want)
    assert kernel_calls == [kernel]
    assert len(fused._refused) == 1
