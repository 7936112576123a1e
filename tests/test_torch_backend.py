"""What the shared cross-backend suite cannot say about the torch backend: autograd against the
oracle's analytic gradient, gradcheck, torch.compile, torch.func.vmap, half-precision fills,
device placement, the SDPA drop-in (against SDPA itself and the oracle) and FlexAttention mask_mods.
"""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
from typing import Any, cast

import numpy as np
import pytest

from refmask._backends import unavailable_reason

if (TORCH_MISSING := unavailable_reason("torch")) is not None:
    pytest.skip(TORCH_MISSING, allow_module_level=True)

import torch
import torch.nn.functional as F

import refmask
import refmask.torch as rt
from harness import poison, wide_scores
from refmask import _dtypes, oracle
from refmask.backends import torch as tb
from refmask.testing import assert_attention_close, assert_lse_close, assert_weights_close, tolerances
from refmask.testing.cases import ATTENTION_CASES, numpy_dtype

CASES = {c.id: c for c in ATTENTION_CASES}
MASKED_CASES = [c for c in ATTENTION_CASES if c.mask() is not None and c.q_len * c.kv_len > 0]
# Cases with at least one fully-masked row (where gradients are most easily lost to NaN).
FULLY_MASKED_CASES = ["causal-T>S-bottom_right-fully-masked-rows", "fully-masked-batch-item",
                      "padding-queries-and-keys", "segment-packed"]


def t(x, requires_grad=False):
    out = tb.from_numpy(np.asarray(x))
    return out.requires_grad_(True) if requires_grad else out


def cotangent(shape, dtype, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(numpy_dtype(dtype))


# ----------------------------------------------------------------------------------------------
# autograd


@pytest.mark.parametrize("case", MASKED_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("fully_masked", ["zero", "uniform", "nan"])
def test_softmax_gradient_matches_oracle_vjp(case, dtype, fully_masked):
    scores, mask = case.arrays(dtype)["scores"], case.mask()
    g = cotangent(scores.shape, dtype)
    x = t(scores, requires_grad=True)
    w = refmask.masked_softmax(x, t(mask), fully_masked=fully_masked)
    (grad,) = torch.autograd.grad(w, x, t(g))
    grad = grad.numpy()
    expected = oracle.masked_softmax_vjp(scores, mask, g, fully_masked=fully_masked)
    keep = np.broadcast_to(mask, scores.shape)
    # exactly 0 at masked entries (whatever the policy), finite everywhere
    assert np.all(grad[~keep] == 0), "masked entries must get exactly 0 gradient"
    assert np.isfinite(grad).all()
    # kept entries: the analytic gradient, to a few ULP of the gradient's scale
    ref = np.abs(expected.astype(np.float64)).max(initial=0.0)
    np.testing.assert_allclose(grad, expected, rtol=0, atol=64 * np.finfo(dtype).eps * max(ref, 1.0))


@pytest.mark.parametrize("fully_masked", ["zero", "uniform", "nan"])
@pytest.mark.parametrize("poison", [np.nan, np.inf, -np.inf])
def test_poisoned_masked_scores_get_zero_gradient(fully_masked, poison):
    case = CASES["fully-masked-batch-item"]
    scores, mask = case.arrays("float32")["scores"], case.mask()
    assert mask is not None
    keep = np.broadcast_to(mask, scores.shape)
    x = t(np.where(keep, scores, np.float32(poison)), requires_grad=True)
    w = refmask.masked_softmax(x, t(mask), fully_masked=fully_masked)
    (grad,) = torch.autograd.grad(w, x, t(cotangent(scores.shape, "float32")))
    assert torch.isfinite(grad).all()
    assert (grad.numpy()[~keep] == 0).all()


@pytest.mark.parametrize("fully_masked", ["zero", "uniform"])
def test_gradcheck_masked_softmax_float64(fully_masked):
    case = CASES["causal-T>S-bottom_right-fully-masked-rows"]
    scores, mask = case.arrays("float64")["scores"], case.mask()
    x = t(scores, requires_grad=True)
    m = t(mask)
    assert torch.autograd.gradcheck(lambda s: tb.masked_softmax(s, m, fully_masked=fully_masked), (x,))
    assert torch.autograd.gradgradcheck(lambda s: tb.masked_softmax(s, m, fully_masked=fully_masked), (x,))


@pytest.mark.parametrize("fully_masked", ["zero", "uniform"])
@pytest.mark.parametrize("case_id", ["padding-queries-and-keys", "gqa-causal"])
def test_gradcheck_attention_float64(case_id, fully_masked):
    case = CASES[case_id]
    a, mask = case.arrays("float64"), case.mask()
    # head and value dims cut to 3 and 2 keep gradcheck's finite differences quick
    q, k, v = (t(a[n][..., :d].copy(), requires_grad=True) for n, d in zip("qkv", (3, 3, 2), strict=False))
    m = t(mask)
    bias = t(0.1 * cotangent(case.scores_shape[-2:], "float64"), requires_grad=True)

    def f(q, k, v, bias):
        return tb.attention(q, k, v, m, bias=bias, fully_masked=fully_masked)

    assert torch.autograd.gradcheck(f, (q, k, v, bias))


@pytest.mark.parametrize("case_id", FULLY_MASKED_CASES)
@pytest.mark.parametrize("fully_masked", ["zero", "uniform"])
def test_attention_gradients_finite_with_fully_masked_rows(case_id, fully_masked):
    case = CASES[case_id]
    for dtype in ("float32", "float16", "bfloat16"):
        a, mask = case.arrays(dtype), case.mask()
        q, k, v = (t(a[n], requires_grad=True) for n in "qkv")
        out, w = refmask.attention(q, k, v, t(mask), fully_masked=fully_masked, return_weights=True)
        (out.float().square().sum() + (w.float() * t(cotangent(w.shape, "float32"))).sum()).backward()
        for x in (q, k, v):
            assert x.grad is not None and x.grad.dtype == x.dtype
            assert torch.isfinite(x.grad).all(), f"{dtype}: non-finite gradient"


def test_fully_masked_rows_gradient_is_exactly_zero():
    case = CASES["fully-masked-batch-item"]  # batch item 1 has no key at all
    a, mask = case.arrays("float64"), case.mask()
    for policy in ("zero", "uniform", "nan"):
        x = t(a["scores"], requires_grad=True)
        w = refmask.masked_softmax(x, t(mask), fully_masked=policy)
        (grad,) = torch.autograd.grad(w, x, t(cotangent(x.shape, "float64")))
        assert (grad[1] == 0).all()


def test_masked_softmax_does_not_modify_its_inputs():
    case = CASES["causal+padding"]
    for dtype in ("float32", "float16"):
        scores, mask = case.arrays(dtype)["scores"], case.mask()
        x, m = t(scores), t(mask)
        x0 = x.clone()
        for policy in ("zero", "uniform", "nan"):
            refmask.masked_softmax(x, m, fully_masked=policy)
            refmask.attention_weights(x[..., :2], x[..., :2], m[..., :5, :5], bias=x, fully_masked=policy)
        assert torch.equal(x, x0)


# ----------------------------------------------------------------------------------------------
# torch.compile and torch.func


def _causal_padding_problem(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 8, 4, generator=g, dtype=dtype) for _ in range(3))
    mask = refmask.and_masks(
        refmask.causal_mask(8, backend="torch"),
        refmask.attention_padding_mask(refmask.padding_mask(torch.tensor([8, 3]), 8, side="left")),
    )
    return q, k, v, mask


COMPILE_BACKEND = os.environ.get("REFMASK_TEST_COMPILE_BACKEND", "aot_eager")


# inductor imports torch.jit internals that warn about their own deprecation (torch 2.13)
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("fully_masked", ["zero", "uniform"])
def test_attention_under_torch_compile_matches_eager(fully_masked):
    # aot_eager traces the whole function (fullgraph=True: no graph break) through AOTAutograd;
    # inductor also compiles C++, which takes far longer, so it runs on request
    # (REFMASK_TEST_COMPILE_BACKEND=inductor).
    torch._dynamo.reset()
    q, k, v, mask = _causal_padding_problem()
    compiled = torch.compile(tb.attention, backend=COMPILE_BACKEND, fullgraph=True)
    out, w = compiled(q, k, v, mask, fully_masked=fully_masked, return_weights=True)
    eager_out, eager_w = tb.attention(q, k, v, mask, fully_masked=fully_masked, return_weights=True)
    torch.testing.assert_close(out, eager_out, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(w, eager_w, rtol=1e-6, atol=1e-6)
    # gradients through the compiled function
    qq = q.clone().requires_grad_(True)
    compiled_out = compiled(qq, k, v, mask, fully_masked=fully_masked)
    assert isinstance(compiled_out, torch.Tensor)  # return_weights=False: the output alone
    compiled_out.sum().backward()
    assert torch.isfinite(qq.grad).all()


def test_public_api_under_torch_compile():
    # Through refmask.attention the backend dispatch (an import) is a graph break outside fullgraph.
    torch._dynamo.reset()
    q, k, v, mask = _causal_padding_problem()
    compiled = torch.compile(lambda q, k, v, m: refmask.attention(q, k, v, m, is_causal=True), backend="aot_eager")
    torch.testing.assert_close(compiled(q, k, v, mask), refmask.attention(q, k, v, mask, is_causal=True))


def test_public_api_compiles_to_one_graph_once_the_backend_is_loaded():
    # A fresh process, so no earlier test has loaded the backend through refmask already.
    program = (
        "import torch, refmask, refmask.backends.torch\n"
        "scores, mask = torch.randn(2, 3, 4, 5), torch.ones(4, 5, dtype=torch.bool).tril()\n"
        "compiled = torch.compile(refmask.masked_softmax, backend='aot_eager', fullgraph=True)\n"
        "torch.testing.assert_close(compiled(scores, mask), refmask.masked_softmax(scores, mask), rtol=0, atol=0)\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("fully_masked", ["nan", "zero"])
def test_masked_softmax_traced_with_symbolic_shapes(fully_masked):
    """make_fx with symbolic shapes hands masked_softmax FakeTensors whose sizes are SymInts: the checks run
    (nothing about them is remembered), and the traced graph computes the eager result on other values."""
    from torch.fx.experimental.proxy_tensor import make_fx

    scores, keep = torch.randn(2, 3, 5), torch.rand(2, 3, 5) > 0.3
    if fully_masked == "zero":  # the host test of the fully-masked rows needs values: without a mask there is none
        graph = make_fx(lambda s: tb.masked_softmax(s, fully_masked="zero"), tracing_mode="symbolic")(scores)
        other = torch.randn(2, 3, 5)
        torch.testing.assert_close(graph(other), tb.masked_softmax(other), rtol=0, atol=0)
        return
    graph = make_fx(lambda s, m: tb.masked_softmax(s, m, fully_masked="nan"), tracing_mode="symbolic")(scores, keep)
    other, other_keep = torch.randn(2, 3, 5), torch.rand(2, 3, 5) > 0.3
    torch.testing.assert_close(graph(other, other_keep), tb.masked_softmax(other, other_keep, fully_masked="nan"),
                               rtol=0, atol=0, equal_nan=True)


def test_masked_softmax_under_torch_compile_fully_masked_rows():
    torch._dynamo.reset()
    case = CASES["fully-masked-batch-item"]
    scores, mask = case.arrays("float32")["scores"], case.mask()
    for policy in ("zero", "uniform", "nan"):
        compiled = torch.compile(tb.masked_softmax, backend="aot_eager", fullgraph=True)
        actual = compiled(t(scores), t(mask), fully_masked=policy)
        assert_weights_close(actual, oracle.masked_softmax(scores, mask, fully_masked=policy), mask=mask,
                             table=tolerances.SOFTMAX_MAX_ULP)


def test_vmap_masked_softmax_and_attention():
    case = CASES["fully-masked-batch-item"]  # (3, 2, 5, 5), batch item 1 fully masked
    for policy in ("zero", "uniform", "nan"):
        a, mask = case.arrays("float32"), case.mask()
        scores, m = t(a["scores"]), t(mask)
        # batched scores and batched mask
        got = torch.func.vmap(lambda s, mm: tb.masked_softmax(s, mm, fully_masked=policy))(scores, m)
        torch.testing.assert_close(got, tb.masked_softmax(scores, m, fully_masked=policy), equal_nan=True)
        # batched scores, one shared mask
        shared = m[1]  # fully masked everywhere
        got = torch.func.vmap(lambda s: tb.masked_softmax(s, shared, fully_masked=policy))(scores)
        torch.testing.assert_close(got, tb.masked_softmax(scores, shared, fully_masked=policy), equal_nan=True)
        # one shared float16 scores tensor, batched masks
        half = scores[0].half()
        got = torch.func.vmap(lambda mm: tb.masked_softmax(half, mm, fully_masked=policy))(m)
        torch.testing.assert_close(got, tb.masked_softmax(half.expand(3, -1, -1, -1), m, fully_masked=policy),
                                   equal_nan=True)
        q, k, v = t(a["q"]), t(a["k"]), t(a["v"])
        got_out = torch.func.vmap(lambda q, k, v, mm: tb.attention(q, k, v, mm, fully_masked=policy))(q, k, v, m)
        torch.testing.assert_close(got_out, tb.attention(q, k, v, m, fully_masked=policy), equal_nan=True)


def test_func_grad_and_vmap_of_grad():
    case = CASES["fully-masked-batch-item"]
    scores, mask = case.arrays("float64")["scores"], case.mask()
    g = cotangent(scores.shape, "float64")
    gt = t(g)

    def loss(s, mm, gg):
        return (tb.masked_softmax(s, mm, fully_masked="uniform") * gg).sum()

    grad = torch.func.grad(loss)(t(scores), t(mask), gt)
    expected = oracle.masked_softmax_vjp(scores, mask, g, fully_masked="uniform")
    np.testing.assert_allclose(grad.numpy(), expected, rtol=0, atol=1e-13)
    per_example = torch.func.vmap(torch.func.grad(loss))(t(scores), t(mask), gt)
    np.testing.assert_allclose(per_example.numpy(), expected, rtol=0, atol=1e-13)


# ----------------------------------------------------------------------------------------------
# float16 / bfloat16


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("fully_masked", ["zero", "uniform", "nan"])
def test_half_precision_stacked_fills(dtype, fully_masked):
    """A finfo.min bias on top of a mask (and an SDPA float mask on top of is_causal): no -inf and
    no NaN where the oracle has none, the oracle's values, the input dtype."""
    case = CASES["padding-queries-and-keys"]
    a = case.arrays(dtype)
    padding = case.mask()  # (2, 1, 4, 4), fully-masked rows
    causal = oracle.causal_mask(4)
    bias = oracle.to_additive(causal, dtype)  # finfo.min where masked by causal
    expected = oracle.attention(a["q"], a["k"], a["v"], padding, bias=bias, fully_masked=fully_masked)
    out = refmask.attention(t(a["q"]), t(a["k"]), t(a["v"]), t(padding), bias=t(bias), fully_masked=fully_masked)
    assert out.dtype == getattr(torch, dtype)
    v_scale = float(np.abs(a["v"].astype(np.float64)).max())
    assert_attention_close(out, expected, scale=v_scale)
    if fully_masked != "nan":
        assert torch.isfinite(out).all()
    # two stacked finfo.min fills in the SDPA drop-in: masked as one
    stacked = oracle.to_additive(padding, dtype)  # (2, 1, 4, 4)
    got = rt.scaled_dot_product_attention(t(a["q"]), t(a["k"]), t(a["v"]), t(stacked), is_causal=True,
                                          fully_masked=fully_masked)
    expected = oracle.attention(a["q"], a["k"], a["v"], padding, is_causal=True, fully_masked=fully_masked)
    assert_attention_close(got, expected, scale=v_scale)
    # masked_softmax of half scores holding finfo.min and -inf at kept positions next to finite ones
    s = case.arrays(dtype)["scores"].copy()
    s[..., 0] = _dtypes.lowest(s.dtype.name)
    w = refmask.masked_softmax(t(s), t(padding), fully_masked=fully_masked)
    assert_weights_close(w, oracle.masked_softmax(s, padding, fully_masked=fully_masked), mask=padding,
                         table=tolerances.SOFTMAX_MAX_ULP)


# ----------------------------------------------------------------------------------------------
# devices and dtypes


DEVICES = ["cpu", "meta"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_constructors_honour_device(device):
    dev = torch.device(device)
    lengths = torch.tensor([3, 1])
    made = [
        refmask.causal_mask(4, 6, backend="torch", device=device),
        refmask.sliding_window_mask(4, backend="torch", window=1, device=dev),
        refmask.chunked_mask(4, backend="torch", chunk_size=2, device=device),
        refmask.padding_mask([3, 1], 4, backend="torch", device=device),
        refmask.padding_mask_from_ids(torch.tensor([[1, 0]]), 0, device=device),
        refmask.attention_padding_mask(np.ones((2, 3), bool), backend="torch", device=device),
        refmask.segment_mask(torch.tensor([[0, 1]]), device=device),
        refmask.prefix_lm_mask([1, 2], 3, backend="torch", device=device),
    ]
    if device != "meta":  # data-dependent checks need values
        made.append(refmask.padding_mask(lengths, 4, device=device))
    for m in made:
        assert isinstance(m, torch.Tensor) and m.dtype == torch.bool and m.device.type == dev.type


@pytest.mark.parametrize("device", DEVICES)
def test_results_follow_the_inputs_device(device):
    scores = torch.empty(2, 2, 4, 4, device="meta") if device == "meta" else torch.randn(2, 2, 4, 4, device=device)
    mask = np.tril(np.ones((4, 4), bool))  # a NumPy mask goes to the scores' device
    for policy in ("zero", "uniform", "nan"):
        w = refmask.masked_softmax(scores, mask, fully_masked=policy)
        assert w.device.type == torch.device(device).type and w.dtype == scores.dtype and w.shape == scores.shape
        out = refmask.attention(scores, scores, scores, mask, is_causal=True, fully_masked=policy)
        assert out.device.type == torch.device(device).type
    if device != "meta":
        lengths = torch.tensor([2, 4], device=device)
        assert refmask.padding_mask(lengths, 4).device == lengths.device
        ids = torch.tensor([[1, 1, 2]], device=device)
        assert refmask.segment_mask(ids).device == ids.device
        assert refmask.to_additive(refmask.causal_mask(3, backend="torch", device=device)).device.type == device


def test_backend_inference_and_numpy_inputs():
    assert isinstance(refmask.causal_mask(3, backend="torch"), torch.Tensor)
    assert isinstance(refmask.masked_softmax(torch.zeros(2, 3)), torch.Tensor)
    assert isinstance(refmask.padding_mask(torch.tensor([1]), 2), torch.Tensor)
    mask = refmask.and_masks(refmask.causal_mask(3, backend="torch"), np.ones((1, 1, 1, 3), bool))
    assert isinstance(mask, torch.Tensor) and mask.shape == (1, 1, 3, 3)
    # lists are accepted wherever arrays are
    assert torch.equal(tb.padding_mask([2, 0], 3), torch.tensor([[True, True, False], [False] * 3]))


@pytest.mark.parametrize("dtype", [torch.float32, "float32", torch.bfloat16, "bfloat16", torch.float16, "float64",
                                   np.float16])
def test_to_additive_dtypes(dtype):
    mask = tb.causal_mask(3)
    bias = refmask.to_additive(mask, dtype)
    want = {torch.float32: torch.float32, "float32": torch.float32, torch.bfloat16: torch.bfloat16,
            "bfloat16": torch.bfloat16, torch.float16: torch.float16, "float64": torch.float64,
            np.float16: torch.float16}[dtype]
    assert bias.dtype == want
    assert (bias[mask] == 0).all() and (bias[~mask] == torch.finfo(want).min).all()
    assert torch.equal(refmask.from_additive(bias), mask)


def test_to_additive_number_fill_rounds_once():
    # 1 + 2**-8 + 2**-24 rounds to 1 + 2**-7 in bfloat16 directly, but to 1 via float32 (twice).
    fill = -(1 + 2**-8 + 2**-30)
    expected = oracle.to_additive(oracle.causal_mask(2), "bfloat16", fill=fill)
    actual = tb.to_numpy(refmask.to_additive(tb.causal_mask(2), "bfloat16", fill=fill))
    assert actual.tobytes() == expected.tobytes()


def test_bfloat16_numpy_round_trip_is_bit_exact():
    import ml_dtypes

    bits = np.arange(-(2**15), 2**15, dtype=np.int64).astype(np.int16)
    x = bits.view(ml_dtypes.bfloat16)
    y = tb.from_numpy(x)
    assert y.dtype == torch.bfloat16
    assert (y.view(torch.int16).numpy() == bits).all()
    assert tb.to_numpy(y).view(np.int16).tobytes() == bits.tobytes()
    assert tb.to_numpy(y.requires_grad_(False)[::2]).view(np.int16).tobytes() == bits[::2].tobytes()


# ----------------------------------------------------------------------------------------------
# refmask.torch.scaled_dot_product_attention


def _rows_not_fully_masked(keep: np.ndarray, shape) -> np.bool | np.ndarray:
    return np.broadcast_to(keep, shape).any(-1)


SDPA_CASES = ["no-mask", "causal-T<S-bottom_right", "causal-T>S-bottom_right-fully-masked-rows", "padding-left",
              "fully-masked-batch-item", "padding-queries-and-keys", "segment-packed", "gqa-causal",
              "mqa-padding", "no-batch-axis", "S=1"]


@pytest.mark.parametrize("case_id", SDPA_CASES)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("form", ["bool", "additive-min", "additive-inf", "additive-bias"])
@pytest.mark.parametrize("is_causal", [False, True])
def test_sdpa_dropin_matches_sdpa_and_oracle(case_id, dtype, form, is_causal):
    case = CASES[case_id]
    a, keep = case.arrays(dtype), case.mask()
    shape = case.scores_shape
    if keep is None:
        keep = np.ones(shape[-2:], bool)
    gqa = case.heads != case.kv_heads
    bias = np.zeros((), numpy_dtype(dtype))
    if form == "bool":
        attn_mask = keep
    elif form == "additive-bias":  # a real bias (ALiBi-like) plus -inf fills
        t_, s_ = shape[-2:]
        bias = (-0.3 * np.abs(np.arange(t_)[:, None] - np.arange(s_)[None, :])).astype(numpy_dtype(dtype))
        attn_mask = np.where(keep, bias, -np.inf).astype(numpy_dtype(dtype))
    else:
        attn_mask = oracle.to_additive(keep, dtype, fill="min" if form == "additive-min" else "-inf")
    full_keep = oracle.and_masks(keep, oracle.causal_mask(*shape[-2:])) if is_causal else keep
    assert full_keep is not None
    q, k, v = (t(a[n]) for n in "qkv")
    scale = 0.7
    for policy in ("zero", "uniform", "nan"):
        got = rt.scaled_dot_product_attention(q, k, v, t(attn_mask), is_causal=is_causal, scale=scale,
                                              enable_gqa=gqa, fully_masked=policy)
        expected = oracle.attention(a["q"], a["k"], a["v"], full_keep, bias=bias, scale=scale, fully_masked=policy)
        v_scale = float(np.abs(a["v"].astype(np.float64)).max(initial=0.0))
        assert_attention_close(got, expected, scale=v_scale)
    # SDPA itself, on rows that are not fully masked (there SDPA's result depends on the fill)
    if any(n == 0 for n in shape):
        return
    try:
        sdpa = F.scaled_dot_product_attention(q, k, v, t(attn_mask), is_causal=is_causal, scale=scale,
                                              enable_gqa=gqa)
    except RuntimeError as err:  # some SDPA paths refuse attn_mask with is_causal; the math one ands them
        assert is_causal and "is_causal" in str(err)
        return
    got = rt.scaled_dot_product_attention(q, k, v, t(attn_mask), is_causal=is_causal, scale=scale, enable_gqa=gqa)
    rows = _rows_not_fully_masked(full_keep, shape)
    assert rows.any()
    tol = {"float64": 1e-12, "float32": 1e-5}[dtype]
    np.testing.assert_allclose(got.numpy()[rows], sdpa.numpy()[rows], rtol=tol, atol=tol)


def test_sdpa_dropin_defaults_and_half_precision():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 4, 6, 8, generator=g) for _ in range(3))
    torch.testing.assert_close(rt.scaled_dot_product_attention(q, k, v), F.scaled_dot_product_attention(q, k, v))
    torch.testing.assert_close(rt.scaled_dot_product_attention(q, k, v, is_causal=True),
                               F.scaled_dot_product_attention(q, k, v, is_causal=True))
    for dtype in (torch.float16, torch.bfloat16):
        qh, kh, vh = q.to(dtype), k.to(dtype), v.to(dtype)
        got = rt.scaled_dot_product_attention(qh, kh, vh, is_causal=True)
        assert got.dtype == dtype
        expected = oracle.attention(*(tb.to_numpy(x) for x in (qh, kh, vh)), is_causal=True)
        assert_attention_close(got, expected, scale=float(vh.abs().max()))


def test_sdpa_dropin_gqa_needs_enable_gqa():
    q, k = torch.zeros(1, 4, 3, 8), torch.zeros(1, 2, 3, 8)
    with pytest.raises(ValueError, match="enable_gqa=True"):
        rt.scaled_dot_product_attention(q, k, k)
    with pytest.raises(RuntimeError):
        F.scaled_dot_product_attention(q, k, k)
    rt.scaled_dot_product_attention(q, torch.zeros(1, 1, 3, 8), torch.zeros(1, 1, 3, 8))  # H_kv = 1 broadcasts


def test_sdpa_dropin_dropout():
    case = CASES["padding-queries-and-keys"]
    a, keep = case.arrays("float64"), case.mask()
    q, k, v = (t(a[n]) for n in "qkv")
    # dropout_p = 1 drops every weight
    assert (rt.scaled_dot_product_attention(q, k, v, t(keep), dropout_p=1.0) == 0).all()
    # dropout_p = 0.5: weights dropped with torch's dropout and scaled by 2, then times v
    for policy in ("zero", "uniform"):
        torch.manual_seed(7)
        got = rt.scaled_dot_product_attention(q, k, v, t(keep), dropout_p=0.5, fully_masked=policy)
        torch.manual_seed(7)
        kept = F.dropout(torch.ones(case.scores_shape, dtype=torch.float64), 0.5, training=True)
        w = t(oracle.attention_weights(a["q"], a["k"], keep, fully_masked=policy))
        torch.testing.assert_close(got, (w * kept) @ v)
    with pytest.raises(ValueError, match="dropout_p"):
        rt.scaled_dot_product_attention(q, k, v, dropout_p=1.5)


def test_sdpa_dropin_refuses_integer_masks():
    q = torch.zeros(1, 1, 2, 4)
    with pytest.raises(TypeError, match="attn_mask must be bool"):
        rt.scaled_dot_product_attention(q, q, q, torch.ones(2, 2, dtype=torch.int64))


# ----------------------------------------------------------------------------------------------
# refmask.torch.mask_mod and FlexAttention

flex: Any
try:
    from torch.nn.attention import flex_attention as flex
except ImportError:  # torch before 2.5
    flex = None
needs_flex = pytest.mark.skipif(flex is None, reason="needs torch.nn.attention.flex_attention (torch >= 2.5)")

LENGTHS = np.array([5, 2, 0])
SEGMENTS = np.array([[0, 0, 1, 1, 1, 2, 2], [0, 0, 0, 0, -1, -1, -1], [3, 3, 3, 4, 4, 4, 4]])
KV_VALID = np.array([[1, 1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1, 1], [1, 0, 1, 0, 1, 0, 1]], bool)
Q_VALID = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 1, 1, 1]], bool)
Q_POSITIONS = np.array([[2, 3, 4, 5, 6], [-1, 0, 1, 2, 3], [0, 0, 4, 4, 9]])
CU_Q, CU_K = np.array([0, 1, 3, 3, 5]), np.array([0, 2, 3, 5, 7])  # a sequence with no query; T = 5, S = 7
KV_POSITIONS = np.array([[0, 1, 2, 3, 4, 5, 6], [-1, -1, 0, 1, 2, 3, 4], [0, 2, 4, 6, 8, 10, 12]])


def _mask_mod_pairs():
    """(id, mask_mod, the oracle's mask, B, T, S)."""
    T, S = 5, 7
    seg_q = SEGMENTS[:, :T]
    causal_and_padding = oracle.and_masks(oracle.causal_mask(T, S), oracle.attention_padding_mask(KV_VALID))
    pairs = [
        ("causal", rt.mask_mod.causal(T, S), oracle.causal_mask(T, S)),
        ("causal-bottom_right", rt.mask_mod.causal(T, S, align="bottom_right"),
         oracle.causal_mask(T, S, align="bottom_right")),
        ("causal-T>S-offset", rt.mask_mod.causal(S, T, align="bottom_right", offset=-1),
         oracle.causal_mask(S, T, align="bottom_right", offset=-1)),
        ("sliding-window", rt.mask_mod.sliding_window(T, S, window=(2, 1)),
         oracle.sliding_window_mask(T, S, window=(2, 1))),
        ("sliding-window-br", rt.mask_mod.sliding_window(T, S, window=1, align="bottom_right"),
         oracle.sliding_window_mask(T, S, window=1, align="bottom_right")),
        ("chunked", rt.mask_mod.chunked(T, S, chunk_size=3, offset=-2),
         oracle.chunked_mask(T, S, chunk_size=3, offset=-2)),
        ("padding", rt.mask_mod.padding(KV_VALID), oracle.attention_padding_mask(KV_VALID)),
        ("padding-q-kv", rt.mask_mod.padding(KV_VALID, Q_VALID), oracle.attention_padding_mask(KV_VALID, Q_VALID)),
        ("padding-lengths", rt.mask_mod.padding_lengths(LENGTHS, S),
         oracle.attention_padding_mask(oracle.padding_mask(LENGTHS, S))),
        ("padding-lengths-left", rt.mask_mod.padding_lengths(LENGTHS, S, side="left"),
         oracle.attention_padding_mask(oracle.padding_mask(LENGTHS, S, side="left"))),
        ("segment", rt.mask_mod.segment(seg_q, SEGMENTS), oracle.segment_mask(seg_q, SEGMENTS)),
        ("segment-pad", rt.mask_mod.segment(seg_q, SEGMENTS, pad_id=-1),
         oracle.segment_mask(seg_q, SEGMENTS, pad_id=-1)),
        ("prefix-lm", rt.mask_mod.prefix_lm(np.array([2, 0, 7]), T, S, align="bottom_right"),
         oracle.prefix_lm_mask(np.array([2, 0, 7]), T, S, align="bottom_right")),
        ("and", rt.mask_mod.causal(T, S) & rt.mask_mod.padding_lengths(LENGTHS, S),
         oracle.and_masks(oracle.causal_mask(T, S), oracle.attention_padding_mask(oracle.padding_mask(LENGTHS, S)))),
        ("and-three-with-None", rt.mask_mod.and_(rt.mask_mod.sliding_window(T, S, window=(3, 0)), None,
                                                 rt.mask_mod.causal(T, S), rt.mask_mod.segment(seg_q, SEGMENTS)),
         oracle.and_masks(oracle.sliding_window_mask(T, S, window=(3, 0)), oracle.causal_mask(T, S),
                          oracle.segment_mask(seg_q, SEGMENTS))),
        ("or", rt.mask_mod.prefix_lm(np.array([2, 0, 7]), T, S) | rt.mask_mod.chunked(T, S, chunk_size=2),
         oracle.or_masks(oracle.prefix_lm_mask(np.array([2, 0, 7]), T, S), oracle.chunked_mask(T, S, chunk_size=2))),
        ("from-mask", rt.mask_mod.from_mask(causal_and_padding), causal_and_padding),
        ("causal-numpy-int-offset", rt.mask_mod.causal(T, S, offset=np.int64(-1)), oracle.causal_mask(T, S, offset=-1)),
        ("offsets-causal", rt.mask_mod.causal(T, S, offset=np.array([0, 2, -3])),
         oracle.causal_mask(T, S, offset=np.array([0, 2, -3]))),
        ("positions-window-unbounded-left", rt.mask_mod.sliding_window(window=(None, 1), q_positions=Q_POSITIONS,
                                                                       kv_positions=np.arange(S)),
         oracle.sliding_window_mask(window=(None, 1), q_positions=Q_POSITIONS, kv_positions=np.arange(S))),
        ("positions-chunked", rt.mask_mod.chunked(chunk_size=2, q_positions=Q_POSITIONS[0], kv_positions=KV_POSITIONS),
         oracle.chunked_mask(chunk_size=2, q_positions=Q_POSITIONS[0], kv_positions=KV_POSITIONS)),
        ("offsets-prefix-lm", rt.mask_mod.prefix_lm(np.array([2, 0, 7]), T, S, offset=np.array([1, 0, -2])),
         oracle.prefix_lm_mask(np.array([2, 0, 7]), T, S, offset=np.array([1, 0, -2]))),
        ("window-unbounded-right", rt.mask_mod.sliding_window(T, S, window=(1, None)),
         oracle.sliding_window_mask(T, S, window=(1, None))),
        ("varlen-causal", rt.mask_mod.varlen(CU_Q, CU_K, causal=True), oracle.varlen_mask(CU_Q, CU_K, causal=True)),
        ("varlen-window", rt.mask_mod.varlen(CU_Q, CU_K, window=(1, None)),
         oracle.varlen_mask(CU_Q, CU_K, window=(1, None))),
        ("varlen-self-padded", rt.mask_mod.varlen(np.array([0, 2, 4]), causal=True, total_q=T, total_k=S),
         oracle.varlen_mask(np.array([0, 2, 4]), causal=True, total_q=T, total_k=S)),
    ]
    return pairs


MASK_MODS = _mask_mod_pairs()


@needs_flex
@pytest.mark.parametrize("name, mod, expected", MASK_MODS, ids=[p[0] for p in MASK_MODS])
def test_mask_mod_is_the_refmask_mask(name, mod, expected):
    B, H = 3, 2
    T, S = expected.shape[-2:]
    dense = flex.create_mask(mod, B, H, T, S, device="cpu")
    assert torch.equal(dense, torch.from_numpy(np.broadcast_to(expected, (B, H, T, S)).copy()))


@needs_flex
@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile:UserWarning")
@pytest.mark.parametrize("name, mod, expected", MASK_MODS, ids=[p[0] for p in MASK_MODS])
def test_flex_attention_with_mask_mod_matches_oracle(name, mod, expected):
    B, H, D = 3, 2, 8
    T, S = expected.shape[-2:]
    g = np.random.default_rng(0)
    q, k, v = (g.standard_normal(shape) for shape in ((B, H, T, D), (B, H, S, D), (B, H, S, D)))
    if name.startswith("causal"):  # plain create_block_mask, broadcast over batch and heads
        block_mask = flex.create_block_mask(mod, None, None, T, S, device="cpu")
    else:
        block_mask = mod.block_mask(B, H, T, S, device="cpu")
    out = flex.flex_attention(t(q), t(k), t(v), block_mask=block_mask)
    expected_out = oracle.attention(q, k, v, expected, fully_masked="zero")
    assert_attention_close(out, expected_out, scale=float(np.abs(v).max()))


@needs_flex
def test_mask_mod_or_follows_or_masks_for_none_and_for_nothing():
    causal = rt.mask_mod.causal(3)
    assert rt.mask_mod.or_(None, causal) is None and oracle.or_masks(None, oracle.causal_mask(3)) is None
    nothing = flex.create_mask(rt.mask_mod.or_(), 1, 1, 3, 4, device="cpu")
    expected = oracle.or_masks()
    assert expected is not None
    assert torch.equal(nothing, torch.from_numpy(np.broadcast_to(expected, (1, 1, 3, 4)).copy()))


@needs_flex  # block_mask() is create_block_mask
def test_mask_mod_errors_are_the_constructors():
    with pytest.raises(ValueError) as expected:
        oracle.padding_mask(np.array([9]), 4)
    with pytest.raises(ValueError) as actual:
        rt.mask_mod.padding_lengths(np.array([9]), 4)
    assert str(actual.value) == str(expected.value)
    with pytest.raises(ValueError, match="align"):
        rt.mask_mod.causal(3, align="middle")
    with pytest.raises(TypeError, match="segment_ids must be an integer"):
        rt.mask_mod.segment(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="different q_lens"):
        rt.mask_mod.causal(3) & rt.mask_mod.causal(4)
    assert rt.mask_mod.and_(None, None) is None
    with pytest.raises(ValueError, match="Q_LEN"):
        rt.mask_mod.padding_lengths(np.array([1]), 3).block_mask()


# ----------------------------------------------------------------------------------------------
# refmask.torch.score_mod with FlexAttention; softcap, sinks and lse under autograd

T_S = (5, 7)


def _score_mods():
    """(id, score_mod, the attention(...) arguments it stands for)."""
    t, s = T_S
    alibi = oracle.alibi_bias(2, t, s, align="bottom_right", dtype="float64")
    return [
        ("softcap", rt.score_mod.softcap(1.5), {"softcap": 1.5}),
        ("alibi-bottom_right", rt.score_mod.alibi(2, t, s, align="bottom_right"), {"bias": alibi}),
        ("softcap-then-alibi", rt.score_mod.chain(rt.score_mod.softcap(1.5),
                                                   rt.score_mod.alibi(2, t, s, align="bottom_right")),
         {"softcap": 1.5, "bias": alibi}),
    ]


SCORE_MODS = _score_mods()


@needs_flex
@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile:UserWarning")
@pytest.mark.parametrize("name, mod, kwargs", SCORE_MODS, ids=[m[0] for m in SCORE_MODS])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_flex_attention_with_score_mod_matches_oracle(name, mod, kwargs, dtype):
    t, s = T_S
    g = np.random.default_rng(0)
    d = numpy_dtype(dtype)
    q, k, v = (2 * g.standard_normal(shape).astype(d) for shape in ((2, 2, t, 8), (2, 2, s, 8), (2, 2, s, 8)))
    causal = rt.mask_mod.causal(t, s, align="bottom_right")
    block_mask = flex.create_block_mask(causal, None, None, t, s, device="cpu")
    if hasattr(flex, "AuxRequest"):  # return_lse= is deprecated in favour of return_aux=
        out, aux = flex.flex_attention(t_(q), t_(k), t_(v), score_mod=mod, block_mask=block_mask,
                                       return_aux=flex.AuxRequest(lse=True))
        lse = aux.lse
    else:
        out, lse = flex.flex_attention(t_(q), t_(k), t_(v), score_mod=mod, block_mask=block_mask, return_lse=True)
    mask = oracle.causal_mask(t, s, align="bottom_right")
    expected_out, expected_lse = oracle.attention(q, k, v, mask, return_lse=True, **kwargs)
    assert_attention_close(out, expected_out, scale=float(np.abs(v).max()))
    # flex_attention's lse is refmask's: natural log of the softmax denominator of the modified scores
    assert_lse_close(lse, expected_lse)


def t_(x):
    return tb.from_numpy(np.asarray(x))


def test_score_mods_name_what_they_compute():
    assert repr(rt.score_mod.softcap(30)) == "ScoreMod(softcap(30.0))"
    assert repr(rt.score_mod.alibi(4, 3, 5, align="bottom_right")) == "ScoreMod(alibi(4, 3, 5, shift=2))"
    with pytest.raises(TypeError, match="callables"):
        rt.score_mod.chain(rt.score_mod.softcap(1.0), cast(Any, "tanh"))


@pytest.mark.parametrize("with_sinks, fully_masked", [(True, "nan"), (False, "zero")])
def test_gradcheck_through_softcap_sinks_and_lse(with_sinks, fully_masked):
    case = CASES["causal-T>S-bottom_right-fully-masked-rows"]  # its first queries keep no key
    a = case.arrays("float64")
    mask = t(case.mask())
    bias = oracle.alibi_bias(case.heads, case.q_len, case.kv_len, align="bottom_right", dtype="float64")
    inputs = [t(a["q"], True), t(a["k"], True), t(a["v"], True), t(bias, True)]
    if with_sinks:
        inputs.append(t(np.array([0.3, -0.5]), True))

    def fn(q, k, v, bias, sinks=None):
        out, lse = refmask.attention(q, k, v, mask, bias=bias, softcap=2.0, sinks=sinks,
                                     fully_masked=fully_masked, return_lse=True)
        return out, torch.where(torch.isfinite(lse), lse, 0.0)

    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)
    # Masked biases holding NaN change nothing: their gradient is exactly 0, every gradient finite.
    keep = case.mask()
    assert keep is not None
    poisoned = t(np.where(keep, bias, np.nan), True)
    out, lse = fn(*[*inputs[:3], poisoned, *inputs[4:]])
    grads = torch.autograd.grad((out.sum() + lse.sum(),), [*inputs[:3], poisoned, *inputs[4:]])
    assert all(bool(torch.isfinite(g).all()) for g in grads)
    assert (grads[3][~mask.expand(grads[3].shape)] == 0).all()


# ----------------------------------------------------------------------------------------------
# the fused route: attention on F.scaled_dot_product_attention, against the math route and the oracle


@pytest.mark.parametrize("kernel", ["FLASH_ATTENTION", "MATH"])
@pytest.mark.parametrize("form", ["bool", "additive-inf"])
def test_sdpa_kernels_give_fully_masked_rows_zero_and_finite_zero_gradients(kernel, form):
    # What the fused route's "zero" policy and its gradients rest on, per kernel of the pinned torch.
    from torch.nn.attention import SDPBackend, sdpa_kernel

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 4, 8, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3))
    keep = torch.ones(4, 5, dtype=torch.bool)[:, :4].clone()
    keep[1] = False  # query 1 keeps no key
    keep[:, 3] = False  # no query keeps key 3
    mask = keep if form == "bool" else torch.zeros(4, 4, dtype=torch.float64).masked_fill(~keep, -math.inf)
    with sdpa_kernel(getattr(SDPBackend, kernel)):
        out = F.scaled_dot_product_attention(q, k, v, mask)
        dq, dk, dv = torch.autograd.grad(out, (q, k, v), torch.randn(out.shape, generator=gen, dtype=out.dtype))
    assert torch.equal(out[:, :, 1], torch.zeros_like(out[:, :, 1]))
    assert all(bool(torch.isfinite(g).all()) for g in (dq, dk, dv))
    assert torch.equal(dq[:, :, 1], torch.zeros_like(dq[:, :, 1]))
    assert torch.equal(dk[:, :, 3], torch.zeros_like(dk[:, :, 3]))
    assert torch.equal(dv[:, :, 3], torch.zeros_like(dv[:, :, 3]))


def _sdpa_calls(monkeypatch) -> list[int]:
    calls: list[int] = []
    sdpa = F.scaled_dot_product_attention

    def counted(*args, **kwargs):
        calls.append(1)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted)
    return calls


def _fused_serves(case) -> bool:
    """The fused route takes (B, H, T, D) problems with no empty axis."""
    return len(case.batch) == 1 and 0 not in (*case.batch, case.q_len, case.kv_len)


@pytest.mark.parametrize("route", ["fused", "math"])
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
@pytest.mark.parametrize("case", ATTENTION_CASES, ids=lambda c: c.id)
def test_attention_routes_match_oracle(monkeypatch, case, dtype, route):
    monkeypatch.setattr(tb, "_FUSED_ATTENTION", route == "fused")
    calls = _sdpa_calls(monkeypatch)
    a, mask = case.arrays(dtype), case.mask()
    bias = (0.5 * np.random.default_rng(5).standard_normal((case.q_len, case.kv_len))).astype(numpy_dtype(dtype))
    fully_masked_rows = mask is not None and not np.broadcast_to(mask, case.scores_shape).any(axis=-1).all()
    policies = ("zero", "uniform", "nan") if fully_masked_rows else ("zero",)  # the others cannot matter
    for fully_masked, with_bias in itertools.product(policies, (False, True)):
        b, scale = (bias, 0.3) if with_bias else (None, None)
        expected = oracle.attention(a["q"], a["k"], a["v"], mask, bias=b, scale=scale, fully_masked=fully_masked)
        out = tb.attention(t(a["q"]), t(a["k"]), t(a["v"]), None if mask is None else t(mask),
                           bias=None if b is None else t(b), scale=scale, fully_masked=fully_masked)
        v_scale = float(np.abs(a["v"].astype(np.float64)).max(initial=0.0))
        assert_attention_close(tb.to_numpy(out), expected, scale=v_scale)
    assert len(calls) == (2 * len(policies) if route == "fused" and _fused_serves(case) else 0)


@pytest.mark.parametrize("fully_masked", ["zero", "uniform", "nan"])
@pytest.mark.parametrize("case_id", [*FULLY_MASKED_CASES, "gqa-causal", "mqa-padding"])
def test_autograd_through_the_fused_route_matches_oracle_attention_vjp(monkeypatch, case_id, fully_masked):
    from refmask.testing import assert_gradients_close, attention_gradient_terms

    calls = _sdpa_calls(monkeypatch)
    case = CASES[case_id]
    a, mask = case.arrays("float64"), case.mask()
    d_out = np.random.default_rng(3).standard_normal((*case.batch, case.heads, case.q_len, case.value_dim))
    leaves = [t(a[n], requires_grad=True) for n in ("q", "k", "v")]
    q, k, v = leaves
    out = tb.attention(q, k, v, None if mask is None else t(mask), fully_masked=fully_masked)
    grads = torch.autograd.grad(out, leaves, t(d_out))
    assert calls, "the fused route was not taken"
    expected = oracle.attention_vjp(a["q"], a["k"], a["v"], mask, d_out, fully_masked=fully_masked)
    terms = attention_gradient_terms(a["q"], a["k"], a["v"], mask, d_out, fully_masked=fully_masked)
    for name, g, e, term in zip(("dq", "dk", "dv"), grads, expected, terms, strict=False):
        assert_gradients_close(g.numpy(), e, terms=term, name=f"{name} ({fully_masked})")


@pytest.mark.parametrize("where", poison.SITES)
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_inputs_take_the_math_route_and_never_leak(monkeypatch, where, value):
    calls = _sdpa_calls(monkeypatch)
    case = CASES["padding-queries-and-keys"]  # batch 0 keeps keys 0-1 and queries 0-2; batch 1 one query
    a, mask = case.arrays("float32"), case.mask()
    bias = np.zeros((case.q_len, case.kv_len), np.float32)
    poison.plant(a, bias, where, value)
    with np.errstate(invalid="ignore"):  # the oracle's float64 matmul meets the inf
        expected = oracle.attention(a["q"], a["k"], a["v"], mask, bias=bias, fully_masked="uniform")
    out = tb.attention(t(a["q"]), t(a["k"]), t(a["v"]), t(mask), bias=t(bias), fully_masked="uniform")
    assert_attention_close(tb.to_numpy(out), expected, scale=float(np.abs(a["v"]).max()))
    assert not calls, "a non-finite input reached the fused kernel"


def test_sdpa_dropin_takes_the_fused_route_for_float_masks(monkeypatch):
    calls = _sdpa_calls(monkeypatch)
    case = CASES["padding-queries-and-keys"]
    a, mask = case.arrays("float32"), case.mask()
    assert mask is not None
    additive = torch.zeros(mask.shape).masked_fill(~t(mask), -math.inf)  # -inf at masked keys: the fused route
    out = rt.scaled_dot_product_attention(t(a["q"]), t(a["k"]), t(a["v"]), additive, fully_masked="nan")
    assert calls
    expected = oracle.attention(a["q"], a["k"], a["v"], mask, fully_masked="nan")
    assert_attention_close(out.numpy(), expected, scale=float(np.abs(a["v"]).max()))


# ----------------------------------------------------------------------------------------------
# float32 masked_softmax: normalised in float64 on CPU, so within 1 ULP of the correctly rounded weights


@pytest.mark.parametrize("scale", [1.0, 4.0, 16.0])
@pytest.mark.parametrize("path", ["in place, one block", "in place, blocks", "autograd", "sinks"])
def test_float32_accurate_masked_softmax_is_within_one_ulp_of_correctly_rounded(path, scale):
    from refmask.testing import ulp_distance

    rows = 300 if path == "in place, blocks" else 8  # 300 x 512 spans three blocks, the last one partial
    rng = np.random.default_rng(int(scale))
    scores = (scale * rng.standard_normal((rows, 512))).astype(np.float32)
    keep = rng.random(scores.shape) < 0.8
    keep[:, 0] = True
    keep[1] = False  # a fully-masked row
    sinks = (scale * rng.standard_normal(rows)).astype(np.float32) if path == "sinks" else None
    x = t(scores, requires_grad=path == "autograd")
    w = tb.masked_softmax(x, t(keep), sinks=None if sinks is None else t(sinks), accuracy="accurate")
    expected = oracle.masked_softmax(scores, keep, sinks=sinks)
    distance = ulp_distance(w.detach().numpy(), expected)
    assert distance.max() <= 1, f"worst {distance.max()} ULP"


@pytest.mark.parametrize("scale", [4.0, 16.0])
def test_float32_fast_masked_softmax_is_the_native_idiom(scale):
    """accuracy="fast" is bit for bit softmax(masked_fill(~mask, -inf)) where a row keeps a key, so
    within the error model of a float32 softmax (softmax_max_ulp) and beyond "accurate"'s flat 4 ULP
    at these spreads."""
    from refmask.testing import ulp_distance

    scores, keep = wide_scores.draw(scale)
    w = tb.masked_softmax(t(scores), t(keep))
    idiom = torch.softmax(t(scores).masked_fill(~t(keep), -math.inf), dim=-1)
    torch.testing.assert_close(w, idiom, rtol=0, atol=0)
    distance = ulp_distance(w.numpy(), oracle.masked_softmax(scores, keep))
    assert (distance <= tolerances.softmax_max_ulp("float32", scores, keep)).all()
    assert distance.max() > tolerances.SOFTMAX_MAX_ULP["float32"]
