"""What only the JAX backend has: compile caching, jit/vmap/grad, low precision fills, sharding, Flax.

The oracle comparisons of every public function on the shared catalogue live in
test_cross_backend.py (variants "jax", "jax-jit" and "jax-x64off"); this file covers the JAX-specific
promises. Tests run in JAX's default configuration; those marked jax_x64 run with float64 enabled.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest

from refmask._backends import missing_dependency, unavailable_reason

if (JAX_MISSING := unavailable_reason("jax")) is not None:
    pytest.skip(JAX_MISSING, allow_module_level=True)

import jax
import jax.numpy as jnp

import refmask
import refmask.jax as rjax
from harness.traces import assert_max_traces, count_traces
from refmask import oracle
from refmask.backends import jax as B
from refmask.testing import assert_attention_close, assert_weights_close, tolerances
from refmask.testing.cases import ATTENTION_CASES

FLAX_MISSING = missing_dependency("flax", "jax", "this test")
needs_flax = pytest.mark.skipif(FLAX_MISSING is not None, reason=str(FLAX_MISSING))
if FLAX_MISSING is None:
    import flax.linen as nn

POLICIES = ("zero", "uniform", "nan")


def _case(case_id):
    return next(c for c in ATTENTION_CASES if c.id == case_id)


def _causal_padding(b, t, s, lengths):
    return oracle.and_masks(
        oracle.causal_mask(t, s), oracle.attention_padding_mask(oracle.padding_mask(np.array(lengths), s))
    )


# ----------------------------------------------------------------------------------------------
# dispatch, devices, masks


def test_jax_inputs_select_the_jax_backend():
    x = jnp.zeros((2, 3), jnp.float32)
    out = refmask.masked_softmax(x, jnp.array([True, False, True]))
    assert isinstance(out, jax.Array)
    assert isinstance(refmask.padding_mask(jnp.array([1, 2]), 3), jax.Array)


def test_lists_and_numpy_arrays_are_accepted():
    w = refmask.masked_softmax([[1.0, 2.0, 3.0]], [[True, False, True]], backend="jax")
    assert isinstance(w, jax.Array)
    np.testing.assert_allclose(np.asarray(w), oracle.masked_softmax([[1.0, 2.0, 3.0]], [[True, False, True]]))
    np.testing.assert_array_equal(np.asarray(refmask.padding_mask([1, 3], 3, backend="jax")),
                                  oracle.padding_mask([1, 3], 3))


def test_device_places_masks():
    device = jax.devices()[-1]
    m = refmask.causal_mask(4, backend="jax", device=device)
    assert m.devices() == {device}
    m = refmask.padding_mask(np.array([1, 2]), 3, backend="jax", device="cpu")
    assert m.devices() == {jax.devices("cpu")[0]}


@pytest.mark.parametrize("align", ["top_left", "bottom_right"])
@pytest.mark.parametrize("t,s", [(1, 1), (3, 7), (7, 3), (5, 5), (0, 4), (4, 0)])
def test_position_masks_bit_identical_for_any_offset(t, s, align):
    offsets = [-10**12, -9, -3, -1, 0, 1, 2, 5, 11, 10**12]
    for offset in offsets:
        mask_fns: list[tuple[str, dict[str, Any]]] = [
            ("causal_mask", {}),
            ("sliding_window_mask", {"window": (2, 1)}),
            ("sliding_window_mask", {"window": 0}),
        ]
        for fn, kw in mask_fns:
            expected = getattr(oracle, fn)(t, s, align=align, offset=offset, **kw)
            actual = np.asarray(getattr(B, fn)(t, s, align=align, offset=offset, **kw))
            np.testing.assert_array_equal(actual, expected, err_msg=f"{fn} {kw} offset={offset}")
        for c in (1, 2, 3, 4, 8, 10**12):
            expected = oracle.chunked_mask(t, s, chunk_size=c, align=align, offset=offset)
            actual = np.asarray(B.chunked_mask(t, s, chunk_size=c, align=align, offset=offset))
            np.testing.assert_array_equal(actual, expected, err_msg=f"chunk {c} offset={offset}")


def test_value_checks_run_eagerly_and_are_skipped_under_jit():
    lengths = jnp.array([1, 7])
    with pytest.raises(ValueError, match="max_len=6"):
        refmask.padding_mask(lengths, 6)
    # Traced lengths have no values to check: the mask is computed as defined (all True at 7).
    out = jax.jit(lambda n: refmask.padding_mask(n, 6))(lengths)
    assert out.shape == (2, 6) and bool(out[1].all())
    with pytest.raises(ValueError, match="only 1"):
        refmask.from_hf(jnp.array([[1, 2]]))
    jax.jit(refmask.from_hf)(jnp.array([[1, 2]]))


# ----------------------------------------------------------------------------------------------
# compile caching


def test_eager_calls_in_a_loop_compile_once():
    rng = np.random.default_rng(0)
    shape = (3, 2, 7, 11)  # a shape no other test uses
    mask = jnp.asarray(_causal_padding(3, 7, 11, [11, 4, 0]))
    for expected, policy in ((1, "zero"), (0, "uniform"), (0, "nan")):  # the policy's fill is data: no retrace
        with count_traces("_masked_softmax_jit") as traces:
            refmask.masked_softmax(jnp.asarray(rng.standard_normal(shape), jnp.float32), mask, fully_masked=policy)
        assert traces() == expected
        with assert_max_traces(0):
            for _ in range(4):
                x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
                refmask.masked_softmax(x, mask, backend="jax", fully_masked=policy)



def test_fill_first_made_under_a_callers_jit_serves_later_eager_calls():
    # The fully-masked fill is made once per (policy, n, dtype); one first made while the caller's
    # jax.jit traces must be a concrete array, or the eager call after it would see a leaked tracer.
    B._fill_array.cache_clear()
    scores = jnp.asarray(np.arange(10.0).reshape(2, 5), jnp.float32)
    mask = jnp.asarray([[True, False, True, False, False], [False] * 5])
    expected = oracle.masked_softmax(np.asarray(scores), np.asarray(mask), fully_masked="uniform")
    traced = jax.jit(lambda s, m: refmask.masked_softmax(s, m, fully_masked="uniform"))(scores, mask)
    assert not isinstance(B._fill("uniform", 5, scores.dtype), jax.core.Tracer)
    eager = refmask.masked_softmax(scores, mask, fully_masked="uniform")
    for got in (traced, eager):
        np.testing.assert_array_equal(np.asarray(got)[1], np.full(5, 1 / 5, np.float32))  # 1/n on the empty row
        assert_weights_close(got, expected)

def test_attention_loop_compiles_once_even_with_new_scales():
    rng = np.random.default_rng(1)
    q = jnp.asarray(rng.standard_normal((2, 3, 5, 6)), jnp.float32)
    mask = jnp.asarray(oracle.causal_mask(5))
    with count_traces("_attention_jit") as traces:
        refmask.attention(q, q, q, mask)
    assert traces() == 1  # a shape no other test uses
    with assert_max_traces(0):
        for scale in (0.5, 0.25, 0.125):
            refmask.attention(q, q, q, mask, scale=scale)


# ----------------------------------------------------------------------------------------------
# grad, vmap, jit


def _fully_masked_problem(dtype):
    """(B, H, T, S) scores with fully-masked rows (T > S bottom-right) and a fully-masked batch item."""
    rng = np.random.default_rng(2)
    scores = (2 * rng.standard_normal((3, 2, 6, 4))).astype(dtype)
    mask = oracle.and_masks(
        oracle.causal_mask(6, 4, align="bottom_right"),
        oracle.attention_padding_mask(oracle.padding_mask(np.array([4, 0, 3]), 4)),
    )
    cot = rng.standard_normal(scores.shape).astype(dtype)
    return scores, mask, cot


@pytest.mark.parametrize("fully_masked", POLICIES)
@pytest.mark.parametrize("dtype", [pytest.param("float64", marks=pytest.mark.jax_x64), "float32"])
@pytest.mark.parametrize("jit", [False, True])
def test_grad_matches_oracle_vjp(fully_masked, dtype, jit):
    scores, mask, cot = _fully_masked_problem(dtype)
    assert not mask.any(-1).all(), "the problem must have fully-masked rows"

    def loss(x):
        return jnp.sum(jnp.asarray(cot) * refmask.masked_softmax(x, jnp.asarray(mask), fully_masked=fully_masked))

    grad_fn = jax.jit(jax.grad(loss)) if jit else jax.grad(loss)
    g = np.asarray(grad_fn(jnp.asarray(scores)))
    expected = oracle.masked_softmax_vjp(scores, mask, cot, fully_masked=fully_masked)
    assert np.isfinite(g).all()
    keep = np.broadcast_to(mask, g.shape)
    assert (g[~keep] == 0).all(), "masked positions must get exactly 0 gradient"
    rtol = {"float64": 1e-12, "float32": 2e-6}[dtype]
    np.testing.assert_allclose(g, expected, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("with_sinks", [False, True])
def test_second_derivatives_through_accurate_masked_softmax(with_sinks):
    """accuracy="accurate" differentiates twice (its compensated row sum has a JVP of its own), and the
    Hessian of one weight is the formula's: for kept i, j,
    d2 w_k / dx_i dx_j = w_k (d_ki - w_i)(d_kj - w_j) - w_k w_i (d_ij - w_j), and 0 wherever i or j is
    masked (a sink is a constant: the formula is the same). Each term is at most w_k in magnitude."""
    rng = np.random.default_rng(3)
    x = (3 * rng.standard_normal(6)).astype(np.float32)
    keep = np.array([True, True, False, True, True, True])
    sinks = np.array(0.5, np.float32) if with_sinks else None
    k = 1
    w = oracle.masked_softmax(x.astype(np.float64), keep, sinks=sinks)
    d = np.eye(6)
    expected = w[k] * (d[k][:, None] - w[:, None]) * (d[k][None, :] - w[None, :]) - w[k] * w[:, None] * (d - w[None, :])
    expected[~keep] = 0.0
    expected[:, ~keep] = 0.0

    def weight(y):
        sink = None if sinks is None else jnp.asarray(sinks)
        return refmask.masked_softmax(y[None], jnp.asarray(keep)[None], sinks=sink, accuracy="accurate")[0, k]

    hessian = np.asarray(jax.hessian(weight)(jnp.asarray(x)))
    allowance = tolerances.GRADIENT_MAX_ULP["float32"] * np.finfo(np.float32).eps * 2 * w[k]
    np.testing.assert_allclose(hessian, expected, rtol=0, atol=allowance)
    assert (hessian[~keep] == 0).all() and (hessian[:, ~keep] == 0).all()


@pytest.mark.parametrize("fully_masked", ["zero", "uniform"])
def test_attention_gradients_finite_with_fully_masked_rows(fully_masked):
    case = _case("fully-masked-batch-item")
    a = {k: jnp.asarray(v) for k, v in case.arrays("float32").items()}
    mask = jnp.asarray(case.mask())

    def loss(q, k, v):
        return jnp.sum(refmask.attention(q, k, v, mask, fully_masked=fully_masked) ** 2)

    grads = jax.grad(loss, argnums=(0, 1, 2))(a["q"], a["k"], a["v"])
    for g in grads:
        assert np.isfinite(np.asarray(g)).all()
    # The fully-masked batch item's queries and keys do not influence anything.
    assert (np.asarray(grads[0])[1] == 0).all() and (np.asarray(grads[1])[1] == 0).all()


def test_poisoned_masked_scores_give_finite_zero_gradient():
    scores, mask, cot = _fully_masked_problem("float32")
    poisoned = np.where(mask, scores, np.float32(np.inf))
    for policy in ("zero", "uniform"):
        g = jax.grad(lambda x: jnp.sum(cot * refmask.masked_softmax(x, jnp.asarray(mask), fully_masked=policy)))(
            jnp.asarray(poisoned)
        )
        g = np.asarray(g)
        assert np.isfinite(g).all() and (g[~np.broadcast_to(mask, g.shape)] == 0).all()


@pytest.mark.parametrize("fully_masked", POLICIES)
def test_vmap_matches_oracle(fully_masked):
    scores, mask, _ = _fully_masked_problem("float32")
    full_mask = np.broadcast_to(mask, (3, 1, 6, 4))
    out = jax.vmap(lambda x, m: refmask.masked_softmax(x, m, fully_masked=fully_masked))(
        jnp.asarray(scores), jnp.asarray(full_mask)
    )
    expected = oracle.masked_softmax(scores, mask, fully_masked=fully_masked)
    assert_weights_close(out, expected, mask=mask, table=tolerances.SOFTMAX_MAX_ULP)

    case = _case("padding-right")
    a = case.arrays("float32")
    m = np.broadcast_to(case.mask(), (4, 1, 6, 6))
    q, k, v = (jnp.asarray(a[n]) for n in "qkv")
    out = jax.vmap(lambda q, k, v, mm: refmask.attention(q, k, v, mm, fully_masked=fully_masked))(
        q, k, v, jnp.asarray(m)
    )
    expected_out = oracle.attention(a["q"], a["k"], a["v"], case.mask(), fully_masked=fully_masked)
    assert_attention_close(out, expected_out, scale=float(np.abs(a["v"]).max()))


def test_masks_build_inside_jit_from_static_sizes():
    @jax.jit
    def f(x, lengths):
        t, s = x.shape[-2:]
        mask = refmask.and_masks(
            refmask.causal_mask(t, s, backend="jax"),
            refmask.attention_padding_mask(refmask.padding_mask(lengths, s)),
        )
        return refmask.masked_softmax(x, mask)

    scores = np.random.default_rng(3).standard_normal((2, 1, 4, 4)).astype(np.float32)
    out = f(jnp.asarray(scores), jnp.array([4, 2]))
    expected = oracle.masked_softmax(scores, _causal_padding(2, 4, 4, [4, 2]))
    assert_weights_close(out, expected, table=tolerances.SOFTMAX_MAX_ULP)


# ----------------------------------------------------------------------------------------------
# float16 / bfloat16


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_stacked_min_fills(dtype):
    """Two finfo.min fills on one entry must not turn into -inf - -inf = NaN or an all -inf row."""
    case = _case("causal+padding")
    a = case.arrays(dtype)
    np_dtype = a["q"].dtype
    causal = oracle.causal_mask(5)
    padding = oracle.attention_padding_mask(oracle.padding_mask(np.array([5, 3, 1]), 5))
    bias_causal = oracle.to_additive(causal, np_dtype)
    bias_padding = oracle.to_additive(padding, np_dtype)

    # Bias and mask together: the masked entries carry finfo.min in the bias and are masked again.
    q, k, v = (jnp.asarray(a[n]) for n in "qkv")
    out = refmask.attention(q, k, v, jnp.asarray(padding), bias=jnp.asarray(bias_padding), is_causal=True)
    expected = oracle.attention(a["q"], a["k"], a["v"], padding, bias=bias_padding, is_causal=True)
    assert not np.isnan(np.asarray(out, np.float64)).any()
    assert_attention_close(out, expected, scale=float(np.abs(a["v"].astype(np.float64)).max()))

    # Two stacked finfo.min biases (summed in float32 by the backend): every row still has a kept key.
    stacked_f32 = jnp.asarray(bias_causal).astype(jnp.float32) + jnp.asarray(bias_padding).astype(jnp.float32)
    w = refmask.attention_weights(jnp.asarray(a["q"]), jnp.asarray(a["k"]), bias=stacked_f32)
    w64 = np.asarray(w).astype(np.float64)
    assert np.isfinite(w64).all()
    np.testing.assert_allclose(w64.sum(-1), 1.0, atol=0.02)

    # Stacked in the input dtype, min + min overflows to -inf; from_additive still reads a mask.
    stacked = jnp.asarray(bias_causal) + jnp.asarray(bias_padding)
    assert bool(jnp.isinf(stacked).any())
    np.testing.assert_array_equal(np.asarray(refmask.from_additive(stacked)), oracle.and_masks(causal, padding))
    scores = jnp.asarray(a["scores"]) + stacked
    got = refmask.masked_softmax(scores, refmask.from_additive(stacked))
    assert_weights_close(got, oracle.masked_softmax(a["scores"], oracle.and_masks(causal, padding)),
                         table=tolerances.SOFTMAX_MAX_ULP)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_returns_input_dtype_and_accumulates_in_float32(dtype):
    # 4096 equal scores: a float16/bfloat16 running sum would stall far below 4096.
    x = jnp.zeros((1, 4096), dtype)
    w = refmask.masked_softmax(x)
    assert w.dtype == x.dtype
    expected = oracle.masked_softmax(np.asarray(x), None)
    assert_weights_close(w, expected, table=tolerances.SOFTMAX_MAX_ULP)


# ----------------------------------------------------------------------------------------------
# sharding


def test_attention_on_a_batch_sharded_over_four_devices():
    if jax.device_count() < 4:
        pytest.skip("needs 4 devices (XLA_FLAGS=--xla_force_host_platform_device_count=4, set in conftest)")
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = jax.make_mesh((4,), ("batch",), devices=jax.devices()[:4])
    rng = np.random.default_rng(4)
    q = rng.standard_normal((8, 4, 16, 8)).astype(np.float32)
    k = rng.standard_normal((8, 2, 16, 8)).astype(np.float32)
    v = rng.standard_normal((8, 2, 16, 8)).astype(np.float32)
    lengths = np.array([16, 3, 0, 9, 16, 1, 8, 12])
    mask = oracle.attention_padding_mask(oracle.padding_mask(lengths, 16))

    def f(q, k, v, m):
        return refmask.attention(q, k, v, m, is_causal=True, return_weights=True)

    expected_out, expected_w = jax.jit(f)(*(jnp.asarray(x) for x in (q, k, v, mask)))
    batch = NamedSharding(mesh, P("batch"))
    sharded = [jax.device_put(x, batch) for x in (q, k, v, mask)]
    out, w = jax.jit(f)(*sharded)
    assert len(out.sharding.device_set) == 4
    np.testing.assert_allclose(np.asarray(out), np.asarray(expected_out), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(w), np.asarray(expected_w), rtol=1e-6, atol=1e-7)
    ref = oracle.attention(q, k, v, mask, is_causal=True)
    assert_attention_close(out, ref, scale=float(np.abs(v).max()))


def _shard_order(t: int, shards: int, split: str) -> np.ndarray:
    """The global positions each shard holds, shard after shard: contiguous blocks, or the load-balanced
    "zigzag" split of causal context parallelism (shard r holds chunks r and 2 * shards - 1 - r)."""
    if split == "contiguous":
        return np.arange(t)
    chunks = np.arange(t).reshape(2 * shards, -1)
    return np.concatenate([np.concatenate([chunks[r], chunks[2 * shards - 1 - r]]) for r in range(shards)])


@pytest.mark.parametrize("split", ["contiguous", "zigzag"])
@pytest.mark.parametrize("kind", ["causal", "sliding_window"])
def test_sequence_sharded_attention_builds_each_block_from_global_positions(split, kind):
    # Context parallelism: the query sequence is split over 4 devices; every device holds all keys
    # (gathered), builds its block of the mask from the global positions of its queries and the keys,
    # and computes its rows of attention. Put back in order, the rows are the unsharded oracle's.
    if jax.device_count() < 4:
        pytest.skip("needs 4 devices (XLA_FLAGS=--xla_force_host_platform_device_count=4, set in conftest)")
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = jax.make_mesh((4,), ("seq",), devices=jax.devices()[:4])
    t, rng = 32, np.random.default_rng(7)
    q, k, v = (rng.standard_normal((2, 2, t, 8)).astype(np.float32) for _ in range(3))
    order = _shard_order(t, 4, split)

    def block(q_rows, q_pos, k, v, kv_pos):
        if kind == "causal":
            mask = refmask.causal_mask(q_positions=q_pos, kv_positions=kv_pos, backend="jax")
        else:
            mask = refmask.sliding_window_mask(window=(5, 0), q_positions=q_pos, kv_positions=kv_pos, backend="jax")
        return refmask.attention(q_rows, k, v, mask, backend="jax")

    specs = (P(None, None, "seq"), P("seq"), P(), P(), P())
    sharded = jax.jit(jax.shard_map(block, mesh=mesh, in_specs=specs, out_specs=P(None, None, "seq")))
    inputs = (q[:, :, order], order.astype(np.int32), k, v, np.arange(t, dtype=np.int32))
    placed = [jax.device_put(x, NamedSharding(mesh, spec)) for x, spec in zip(inputs, specs, strict=True)]
    out = np.asarray(sharded(*placed))
    unsharded = np.empty_like(out)
    unsharded[:, :, order] = out
    mask = oracle.causal_mask(t) if kind == "causal" else oracle.sliding_window_mask(t, window=(5, 0))
    assert_attention_close(unsharded, oracle.attention(q, k, v, mask), scale=float(np.abs(v).max()))


# ----------------------------------------------------------------------------------------------
# Flax


@needs_flax
def test_signature_extends_flax_linen():
    import inspect

    ours = inspect.signature(rjax.dot_product_attention).parameters
    theirs = inspect.signature(nn.dot_product_attention).parameters
    assert list(ours)[: len(theirs)] == list(theirs)
    for name, p in theirs.items():
        assert ours[name].default == p.default or (ours[name].default is None and p.default is None), name
    assert ours["fully_masked"].default == "zero"


def _oracle_mha(x, mask_bool, proj, fully_masked):
    """The oracle's attention on the module's own projections (float64), then the output projection."""
    x = np.asarray(x, np.float64)

    def dense(name):
        kernel = np.asarray(proj[name]["kernel"], np.float64)
        return np.einsum("btf,fhd->bhtd", x, kernel) + np.asarray(proj[name]["bias"], np.float64)[:, None, :]

    q, k, v = dense("query"), dense("key"), dense("value")
    out = oracle.attention(q, k, v, mask_bool, fully_masked=fully_masked)  # (B, H, T, D)
    kernel = np.asarray(proj["out"]["kernel"], np.float64)  # (H, D, F)
    return np.einsum("bhtd,hdf->btf", out, kernel) + np.asarray(proj["out"]["bias"], np.float64)


def _flax_problem():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 5, 8)).astype(np.float32)
    valid = oracle.padding_mask(np.array([5, 3, 0]), 5)  # batch item 2: every key masked
    flax_mask = nn.combine_masks(nn.make_attention_mask(jnp.asarray(valid), jnp.asarray(valid)),
                                 nn.make_causal_mask(jnp.ones((3, 5))))  # float32 1/0, Flax's convention
    mask_bool = oracle.and_masks(oracle.attention_padding_mask(valid, valid), oracle.causal_mask(5))
    return x, flax_mask, mask_bool, valid


@needs_flax
@pytest.mark.parametrize("fully_masked", ["zero", "uniform"])
def test_linen_multi_head_attention(fully_masked):
    import functools

    x, flax_mask, mask_bool, _valid = _flax_problem()
    fn = functools.partial(rjax.dot_product_attention, fully_masked=fully_masked)
    ours = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=16, attention_fn=fn)
    theirs = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=16)
    params = theirs.init(jax.random.key(0), x, mask=flax_mask)
    got = np.asarray(ours.apply(params, x, mask=flax_mask))
    flax_out = np.asarray(theirs.apply(params, x, mask=flax_mask))

    expected = _oracle_mha(x, mask_bool, params["params"], fully_masked)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    rows = mask_bool.any(-1)[:, 0, :]  # (B, T): query rows with a kept key
    assert not rows.all() and rows.any()
    np.testing.assert_allclose(got[rows], flax_out[rows], rtol=1e-5, atol=1e-5)
    if fully_masked == "uniform":  # Flax's own behaviour on fully-masked rows
        np.testing.assert_allclose(got, flax_out, rtol=1e-5, atol=1e-5)


@needs_flax
def test_linen_sow_and_dropout_like_flax():
    rng = np.random.default_rng(6)
    q, k, v = (jnp.asarray(rng.standard_normal((2, 5, 2, 4)), jnp.float32) for _ in range(3))
    mask = jnp.asarray(oracle.causal_mask(5))[None, None]
    key = jax.random.key(7)
    kwargs: dict[str, Any] = dict(mask=mask, dropout_rng=key, dropout_rate=0.3, deterministic=False)
    np.testing.assert_allclose(
        np.asarray(rjax.dot_product_attention(q, k, v, **kwargs)),
        np.asarray(nn.dot_product_attention(q, k, v, **kwargs)),
        rtol=1e-5, atol=1e-6,
    )
    with pytest.raises(ValueError, match="dropout_rng"):
        rjax.dot_product_attention(q, k, v, mask=mask, dropout_rate=0.3)
    with pytest.raises(ValueError, match="custom products"):
        rjax.dot_product_attention(q, k, v, einsum_dot_general=jax.lax.dot_general)

    module = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8, attention_fn=rjax.dot_product_attention)
    x = jnp.asarray(rng.standard_normal((2, 5, 8)), jnp.float32)
    params = module.init(jax.random.key(0), x)
    _, state = module.apply(params, x, sow_weights=True, mutable=["intermediates"])
    (weights,) = state["intermediates"]["attention_weights"]
    assert weights.shape == (2, 2, 5, 5)
    np.testing.assert_allclose(np.asarray(weights).sum(-1), 1.0, rtol=1e-6)


@needs_flax
def test_nnx_multi_head_attention():
    nnx = pytest.importorskip("flax.nnx")
    x, flax_mask, mask_bool, valid = _flax_problem()
    kwargs = dict(num_heads=2, in_features=8, qkv_features=16, decode=False)
    ours = nnx.MultiHeadAttention(**kwargs, attention_fn=rjax.dot_product_attention, rngs=nnx.Rngs(0))
    theirs = nnx.MultiHeadAttention(**kwargs, rngs=nnx.Rngs(0))
    got = np.asarray(ours(jnp.asarray(x), mask=flax_mask))
    flax_out = np.asarray(theirs(jnp.asarray(x), mask=flax_mask))

    def p(layer):
        return {"kernel": np.asarray(layer.kernel[...]), "bias": np.asarray(layer.bias[...])}

    proj = {name: p(getattr(ours, name)) for name in ("query", "key", "value", "out")}
    expected = _oracle_mha(x, mask_bool, proj, "zero")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    rows = mask_bool.any(-1)[:, 0, :]
    np.testing.assert_allclose(got[rows], flax_out[rows], rtol=1e-5, atol=1e-5)
    # is_causal, as nnx passes it to attention_fn: the same as and-ing the causal mask.
    padding = nn.make_attention_mask(jnp.asarray(valid), jnp.asarray(valid))
    got_causal = np.asarray(ours(jnp.asarray(x), mask=padding, is_causal=True))
    np.testing.assert_allclose(got_causal, got, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("axis", [0, 1, -2])
def test_softmax_along_other_axes(axis):
    rng = np.random.default_rng(8)
    scores = rng.standard_normal((4, 3, 5)).astype(np.float32)
    mask = rng.random((4, 1, 5)) < 0.5
    for policy in POLICIES:
        expected = oracle.masked_softmax(scores, mask, axis=axis, fully_masked=policy)
        got = refmask.masked_softmax(jnp.asarray(scores), jnp.asarray(mask), axis=axis, fully_masked=policy)
        assert_weights_close(got, expected, table=tolerances.SOFTMAX_MAX_ULP)


# ----------------------------------------------------------------------------------------------
# softcap, sinks and lse under autodiff


@pytest.mark.jax_x64
@pytest.mark.parametrize("with_sinks, fully_masked", [(True, "nan"), (False, "zero")])  # with sinks: 0 whatever
def test_gradients_through_softcap_sinks_and_lse_are_exact_and_zero_where_masked(with_sinks, fully_masked):
    from jax.test_util import check_grads

    case = _case("causal-T>S-bottom_right-fully-masked-rows")  # its first queries keep no key
    a = {k: jnp.asarray(v) for k, v in case.arrays("float64").items()}
    mask = case.mask()
    bias = jnp.asarray(oracle.alibi_bias(case.heads, case.q_len, case.kv_len, align="bottom_right", dtype="float64"))
    sinks = jnp.array([0.3, -0.5]) if with_sinks else None
    rng = np.random.default_rng(3)
    cot_out = jnp.asarray(rng.standard_normal((*case.batch, case.heads, case.q_len, case.value_dim)))
    cot_lse = jnp.asarray(rng.standard_normal((*case.batch, case.heads, case.q_len)))

    def loss(q, k, v, bias, sinks):
        out, lse = refmask.attention(q, k, v, jnp.asarray(mask), bias=bias, softcap=2.0, sinks=sinks,
                                     fully_masked=fully_masked, return_lse=True)
        return jnp.sum(cot_out * out) + jnp.sum(cot_lse * jnp.where(jnp.isfinite(lse), lse, 0.0))

    args = (a["q"], a["k"], a["v"], bias, sinks)
    assert np.isfinite(float(loss(*args)))
    # The softmax core's custom JVP, transposed (reverse mode), against central differences.
    check_grads(loss, args, order=1, modes=("rev",), eps=1e-6, atol=1e-7, rtol=1e-7)
    # Masked biases holding NaN change nothing: their gradient is exactly 0, every gradient finite.
    poisoned = jnp.where(jnp.asarray(mask), bias, jnp.nan)
    grads = jax.grad(loss, argnums=(0, 1, 2, 3) + ((4,) if with_sinks else ()))(*args[:3], poisoned, sinks)
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)
    assert (np.asarray(grads[3])[:, ~np.broadcast_to(mask, grads[3].shape[1:])] == 0).all()


@needs_flax
@pytest.mark.parametrize("dtypes", [("float32", "float32", "float32"), ("bfloat16", "float32", "float16"),
                                    ("int32", "int32", "int32"), ("float16", "float16", "float16")])
@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_the_drop_in_promotes_dtypes_as_flax_without_flax(monkeypatch, dtypes, dtype):
    # With jax but not flax installed, the drop-in applies linen's promote_dtype rule written out.
    from flax.linen.dtypes import promote_dtype

    arrays = [jnp.ones((1, 2, 1, 4), d) for d in dtypes]
    expected = [x.dtype for x in promote_dtype(*arrays, dtype=dtype)]
    monkeypatch.setitem(sys.modules, "flax.linen.dtypes", None)  # `import` now raises ImportError
    q, k, v = arrays
    assert [x.dtype for x in rjax._promote(q, k, v, dtype=dtype, promote_dtype=None)] == expected
