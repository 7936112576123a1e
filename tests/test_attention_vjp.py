"""attention_vjp, the gradient of attention: the oracle against finite differences of its own forward and
against torch autograd of a plain attention written out here; every backend's gradients (its attention_vjp,
and its framework's autodiff of its attention) against the oracle's on the shared catalogue.

Gradients are compared with refmask.testing.assert_gradients_close against the magnitude of the terms each
entry sums (attention_gradient_terms, tolerances.GRADIENT_MAX_ULP): a gradient cancels, so its error is
relative to its terms, not to its value. Where an entry has no term at all (masked, or a row with no kept
key) it must be exactly the oracle's 0.
JAX compiles one program per shape, dtype and argument structure (the policies share it, as data), so
every dtype runs on one problem with grouped heads, fully-masked rows and a fully-masked batch item, and a
selection of catalogue cases (each mask layout and edge) in one dtype each; torch runs the whole catalogue
in every dtype. Cases without a fully-masked row run one policy (none can matter there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import refmask
from refmask import oracle
from refmask._backends import from_numpy, to_numpy, unavailable_reason
from refmask.testing import MismatchError, assert_gradients_close, attention_gradient_terms, tolerances
from refmask.testing.cases import ATTENTION_CASES, DTYPES, POLICIES, numpy_dtype

CASES = {c.id: c for c in ATTENTION_CASES}
GRAD_NAMES = ("dq", "dk", "dv", "dbias", "dsinks")


def _needs(backend: str) -> None:
    why = unavailable_reason(backend)
    if why is not None:
        pytest.skip(why)


def _rng(seed: int = 7) -> np.random.Generator:
    return np.random.default_rng(seed)


def _d_out(shape: tuple[int, ...], dtype: str, seed: int = 3) -> np.ndarray:
    return _rng(seed).standard_normal(shape).astype(numpy_dtype(dtype))


def _case_problem(case, dtype: str) -> dict[str, Any]:
    """A catalogue case's q, k, v and mask, a cotangent and a (T, S) bias (broadcast over batch and heads)."""
    a = case.arrays(dtype)
    bias = (0.5 * _rng(11).standard_normal((case.q_len, case.kv_len))).astype(numpy_dtype(dtype))
    d_out = _d_out((*case.batch, case.heads, case.q_len, case.value_dim), dtype)
    return {"q": a["q"], "k": a["k"], "v": a["v"], "mask": case.mask(), "d_out": d_out, "bias": bias}


def _args(p: dict[str, Any]) -> tuple[Any, ...]:
    return p["q"], p["k"], p["v"], p["mask"], p["d_out"]


def _keywords(p: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {n: p[n] for n in ("bias", "softcap", "sinks", "scale") if p.get(n) is not None} | kw


def _terms(p: dict[str, Any], fully_masked: str):
    """attention_gradient_terms of problem p (which names attention's scale attention_scale)."""
    kw = _keywords(p, fully_masked=fully_masked)
    if "scale" in kw:
        kw["attention_scale"] = kw.pop("scale")
    return attention_gradient_terms(*_args(p), **kw)


def _assert_grads_match(actual, p: dict[str, Any], fully_masked: str, what: str) -> None:
    """Every part of `actual` (AttentionGrads of any backend) against the oracle's, within the gradient tolerance."""
    expected = oracle.attention_vjp(*_args(p), **_keywords(p, fully_masked=fully_masked))
    terms = _terms(p, fully_masked)
    # Computed in q's precision: a wider bias or sinks gets a gradient only that accurate.
    precision = tolerances.COMPUTE_DTYPE[tolerances.dtype_name(p["q"].dtype)]
    assert isinstance(actual, refmask.AttentionGrads), f"{what}: got {type(actual).__name__}"
    for name, a, e, t in zip(GRAD_NAMES, actual, expected, terms, strict=True):
        if e is None:
            assert a is None, f"{what}: {name} should be None (that input was not given)"
            continue
        assert_gradients_close(np.asarray(to_numpy(a)), e, terms=t, precision=precision,
                               name=f"{what} {name} ({fully_masked})")


def _fully_masked_rows(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return np.asarray(~np.broadcast_to(mask, shape).any(axis=-1))


def _policies(case) -> tuple[str, ...]:
    """Every policy for a case with a row that keeps no key; one for the others, where none can matter."""
    mask = case.mask()
    has_fully_masked = mask is not None and bool(_fully_masked_rows(mask, case.scores_shape).any())
    return POLICIES if has_fully_masked else POLICIES[:1]


# ----------------------------------------------------------------------------------------------
# the oracle against central finite differences of oracle.attention (float64)


@dataclass(frozen=True)
class Problem:
    id: str
    q: tuple[int, ...]
    kv_heads: int | None  # None: no head axis
    kv_len: int
    value_dim: int
    mask: Any
    bias_shape: tuple[int, ...] | None = None
    softcap: float | None = None
    sinks_shape: tuple[int, ...] | None = None
    scale: float | None = None

    def arrays(self) -> dict[str, Any]:
        rng = _rng(5)
        *lead, t, d = self.q
        kv_lead = lead if self.kv_heads is None else [*lead[:-1], self.kv_heads]
        p = {
            "q": rng.standard_normal(self.q),
            "k": rng.standard_normal((*kv_lead, self.kv_len, d)),
            "v": rng.standard_normal((*kv_lead, self.kv_len, self.value_dim)),
            "mask": self.mask,
            "d_out": rng.standard_normal((*lead, t, self.value_dim)),
            "softcap": self.softcap,
            "scale": self.scale,
        }
        p["bias"] = None if self.bias_shape is None else rng.standard_normal(self.bias_shape)
        p["sinks"] = None if self.sinks_shape is None else rng.standard_normal(self.sinks_shape)
        return p


def _padding(lengths: list[int], s: int) -> np.ndarray:
    return oracle.attention_padding_mask(oracle.padding_mask(np.array(lengths), s))


PROBLEMS = (
    Problem("gqa-causal+fully-masked-batch-item-bias(H,1,S)-softcap", (2, 4, 3, 3), 2, 5, 2,
            oracle.and_masks(oracle.causal_mask(3, 5, align="bottom_right"), _padding([5, 0], 5)),
            bias_shape=(4, 1, 5), softcap=1.5),
    Problem("fully-masked-rows-bias(T,S)-sinks(H,)", (1, 2, 4, 2), 2, 2, 3,
            oracle.causal_mask(4, 2, align="bottom_right"), bias_shape=(4, 2), sinks_shape=(2,)),
    Problem("mqa-query-and-key-padding-bias(B,1,1,S)-sinks(H,T)", (2, 2, 3, 2), 1, 4, 2,
            oracle.attention_padding_mask(oracle.padding_mask(np.array([3, 2]), 4),
                                          oracle.padding_mask(np.array([2, 3]), 3)),
            bias_shape=(2, 1, 1, 4), sinks_shape=(2, 3)),
    Problem("segment-full-bias-softcap-sinks(B,H,T)", (2, 2, 4, 2), 2, 4, 2,
            oracle.segment_mask(np.array([[0, 0, 1, 1], [0, 1, 1, -1]]), pad_id=-1),
            bias_shape=(2, 2, 4, 4), softcap=0.7, sinks_shape=(2, 2, 4), scale=-0.8),
    Problem("no-head-axis-no-mask", (3, 2), None, 4, 2, None, bias_shape=(3, 4)),
)


def _finite_difference(f, x: np.ndarray) -> np.ndarray:
    h = tolerances.VJP_FINITE_DIFFERENCE_STEP
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        saved = x[index]
        x[index] = saved + h
        up = f()
        x[index] = saved - h
        down = f()
        x[index] = saved
        grad[index] = (up - down) / (2 * h)
    return grad


def _nan_dv(p: dict[str, Any], fully_masked: str) -> np.ndarray:
    """Where dv must be NaN under "nan": every entry of a (batch, key/value head) with a fully-masked row."""
    out_shape = p["d_out"].shape
    if fully_masked != "nan" or p.get("sinks") is not None or p["mask"] is None:
        return np.zeros(p["v"].shape, bool)
    rows = _fully_masked_rows(p["mask"], (*out_shape[:-1], p["k"].shape[-2]))  # (..., H, T)
    per_head = np.asarray(rows.any(axis=-1))
    if p["q"].ndim >= 3:
        kv_heads = p["k"].shape[-3]
        per_head = np.asarray(per_head.reshape(*per_head.shape[:-1], kv_heads, -1).any(axis=-1))
    return np.broadcast_to(per_head[..., None, None], p["v"].shape)


@pytest.mark.parametrize("fully_masked", POLICIES)
@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.id)
def test_oracle_matches_finite_differences_of_its_attention(problem, fully_masked):
    p = problem.arrays()
    kw = _keywords(p, fully_masked=fully_masked)
    grads = oracle.attention_vjp(*_args(p), **kw)

    def loss() -> float:
        # Under "nan" the fully-masked rows are NaN whatever the inputs: the rest is what is differentiated.
        out = oracle.attention(p["q"], p["k"], p["v"], p["mask"], **kw)
        return float(np.nansum(p["d_out"] * out))

    nan_dv = _nan_dv(p, fully_masked)
    for name in ("q", "k", "v", "bias", "sinks"):
        if p.get(name) is None:
            assert getattr(grads, "d" + name) is None
            continue
        got = getattr(grads, "d" + name)
        assert got.shape == p[name].shape and got.dtype == np.float64
        expected = _finite_difference(loss, p[name])
        if name == "v":
            assert (np.isnan(got) == nan_dv).all(), "dv must be NaN exactly on the key/value heads with a NaN row"
            got, expected = np.where(nan_dv, 0.0, got), np.where(nan_dv, 0.0, expected)
        else:
            assert np.isfinite(got).all()
        np.testing.assert_allclose(got, expected, rtol=0, atol=tolerances.VJP_FINITE_DIFFERENCE_ATOL, err_msg=name)


def test_a_uniform_fully_masked_row_gives_dv_its_cotangent_over_s_and_nothing_else():
    case = CASES["fully-masked-batch-item"]  # batch item 1 keeps no key
    p = _case_problem(case, "float64")
    grads = oracle.attention_vjp(*_args(p), bias=p["bias"], fully_masked="uniform")
    s = case.kv_len
    # out[1] = mean of v[1] for every query: dv[1, h, j] = sum_i d_out[1, h, i] / S for every key j
    expected_dv = np.broadcast_to(p["d_out"][1].sum(axis=-2, keepdims=True) / s, grads.dv[1].shape)
    np.testing.assert_allclose(grads.dv[1], expected_dv, rtol=1e-15, atol=1e-15)
    assert (grads.dq[1] == 0).all() and (grads.dk[1] == 0).all()
    zero = oracle.attention_vjp(*_args(p), bias=p["bias"], fully_masked="zero")
    assert (zero.dv[1] == 0).all()
    np.testing.assert_array_equal(zero.dbias, grads.dbias)  # that row's weights do not depend on the scores


# ----------------------------------------------------------------------------------------------
# the oracle against torch autograd of a plain float64 attention written out here


def _plain_attention(q, k, v, keep, bias, scale, softcap, sinks, fully_masked):
    """softmax(s + additive) @ v in torch float64, with the sinks as an extra column of each row."""
    import torch

    if q.dim() >= 3 and k.shape[-3] != q.shape[-3]:
        group = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(group, dim=-3), v.repeat_interleave(group, dim=-3)
    s = scale * (q @ k.transpose(-1, -2))
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    if bias is not None:
        s = s + bias
    keep = torch.broadcast_to(keep, s.shape)
    any_kept = keep.any(dim=-1, keepdim=True)
    additive = torch.where(keep, 0.0, -torch.inf).to(s.dtype)
    if sinks is not None:
        column = sinks[:, None] if sinks.dim() == 1 and q.dim() >= 3 else sinks
        column = torch.broadcast_to(column, s.shape[:-1]).unsqueeze(-1)
        # A row with no kept key is all -inf beside its finite sink: weights exactly 0.
        w = torch.softmax(torch.cat([s + additive, column], dim=-1), dim=-1)[..., :-1]
    else:
        # A row with no kept key: a softmax over its (finite) raw scores, replaced by the policy's constant,
        # so no NaN enters the backward pass.
        w = torch.softmax(s + torch.where(any_kept, additive, 0.0), dim=-1)
        fill = {"zero": 0.0, "uniform": 1.0 / max(s.shape[-1], 1), "nan": float("nan")}[fully_masked]
        w = torch.where(any_kept, w, torch.full((), fill, dtype=s.dtype))
    return w @ v


def _torch_reference_grads(p: dict[str, Any], fully_masked: str) -> tuple[Any, ...]:
    import torch

    names = [n for n in ("q", "k", "v", "bias", "sinks") if p.get(n) is not None]
    leaves = {n: torch.tensor(p[n], dtype=torch.float64, requires_grad=True) for n in names}
    keep = torch.tensor(np.ones((), bool) if p["mask"] is None else p["mask"])
    scale = p.get("scale") or (1 / np.sqrt(p["q"].shape[-1]) if p["q"].shape[-1] else 1.0)
    out = _plain_attention(leaves["q"], leaves["k"], leaves["v"], keep, leaves.get("bias"), scale, p.get("softcap"),
                           leaves.get("sinks"), fully_masked)
    grads = torch.autograd.grad(out, list(leaves.values()), torch.tensor(p["d_out"]), allow_unused=True,
                                materialize_grads=True)
    by_name = dict(zip(names, (g.numpy() for g in grads), strict=True))
    return tuple(by_name.get(n) for n in ("q", "k", "v", "bias", "sinks"))


def _with_softcap_and_sinks(p: dict[str, Any], heads: int) -> dict[str, Any]:
    return p | {"softcap": 1.2, "sinks": _rng(13).standard_normal((heads,)), "scale": 0.3}


@pytest.mark.parametrize("extras", ["bias", "bias+softcap+sinks"])
@pytest.mark.parametrize(("case", "fully_masked"),
                         [pytest.param(c, f, id=f"{c.id}-{f}") for c in ATTENTION_CASES for f in _policies(c)])
def test_oracle_matches_torch_autograd_of_a_plain_attention(case, fully_masked, extras):
    _needs("torch")
    p = _case_problem(case, "float64")
    if extras != "bias":
        p = _with_softcap_and_sinks(p, case.heads)
    expected = oracle.attention_vjp(*_args(p), **_keywords(p, fully_masked=fully_masked))
    terms = _terms(p, fully_masked)
    for name, a, e, t in zip(GRAD_NAMES, _torch_reference_grads(p, fully_masked), expected, terms, strict=True):
        if e is None:
            assert a is None
            continue
        assert_gradients_close(a, e, terms=t, name=name)


# ----------------------------------------------------------------------------------------------
# every backend's gradients against the oracle's


def _backend_vjp(backend: str, p: dict[str, Any], **kw: Any):
    """The backend's attention_vjp on its own array q (the other NumPy arguments are converted there)."""
    q = from_numpy(p["q"], backend)
    return refmask.attention_vjp(q, p["k"], p["v"], p["mask"], p["d_out"], backend=backend, **_keywords(p, **kw))


def _rich_problem(dtype: str, *, softcap_and_sinks: bool = False) -> dict[str, Any]:
    """Grouped heads (H = 4, H_kv = 2), a fully-masked first row (causal, offset -1) and a fully-masked
    batch item, a (T, S) bias; optionally a softcap, (H,) float32 sinks and a scale of 0.3."""
    case = CASES["gqa-causal"]
    p = _case_problem(case, dtype)
    p["mask"] = oracle.and_masks(oracle.causal_mask(5, 5, offset=-1), _padding([5, 0], 5))
    if softcap_and_sinks:
        p |= {"softcap": 1.2, "sinks": _rng(13).standard_normal(case.heads).astype(np.float32), "scale": 0.3}
    return p


@pytest.mark.jax_x64
@pytest.mark.parametrize("backend", ["jax", "torch"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_backend_attention_vjp_matches_oracle_with_grouped_heads_and_fully_masked_rows(backend, dtype):
    _needs(backend)
    p = _rich_problem(dtype)
    for policy in POLICIES:  # one compiled JAX program serves the three policies
        _assert_grads_match(_backend_vjp(backend, p, fully_masked=policy), p, policy, f"{backend} attention_vjp")


# JAX compiles per case and dtype: the softcap and sinks on the float32 (compensated) and float64 paths.
@pytest.mark.jax_x64
@pytest.mark.parametrize(("backend", "dtype"), [("jax", "float64"), ("jax", "float32")]
                         + [("torch", d) for d in DTYPES])
def test_backend_attention_vjp_with_softcap_and_sinks_matches_oracle(backend, dtype):
    _needs(backend)
    p = _rich_problem(dtype, softcap_and_sinks=True)
    for policy in POLICIES:
        _assert_grads_match(_backend_vjp(backend, p, fully_masked=policy), p, policy, f"{backend} attention_vjp")


# Catalogue cases for the mask layouts and edges the rich problem above does not have (no mask, (T, S) with
# T = 1, (B, 1, 1, S) for one key/value head, (B, 1, T, S), two batch axes, empty axes), each in one dtype
# (rotating through DTYPES): JAX compiles a program per case and dtype.
JAX_CATALOGUE = ("no-mask", "causal-T=1-decode", "mqa-padding", "padding-queries-and-keys", "two-batch-axes",
                 "T=0", "S=0", "B=0")


@pytest.mark.jax_x64
@pytest.mark.parametrize(("case_id", "dtype"), [(c, DTYPES[n % len(DTYPES)]) for n, c in enumerate(JAX_CATALOGUE)])
def test_jax_attention_vjp_matches_oracle_on_the_catalogue(case_id, dtype):
    _needs("jax")
    p = _case_problem(CASES[case_id], dtype)
    for policy in _policies(CASES[case_id]):
        _assert_grads_match(_backend_vjp("jax", p, fully_masked=policy), p, policy, "jax attention_vjp")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ATTENTION_CASES, ids=lambda c: c.id)
def test_torch_attention_vjp_matches_oracle_on_the_catalogue(case, dtype):
    _needs("torch")
    p = _case_problem(case, dtype)
    for policy in _policies(case):
        _assert_grads_match(_backend_vjp("torch", p, fully_masked=policy), p, policy, "torch attention_vjp")


@pytest.mark.jax_x64
@pytest.mark.parametrize(("dtype", "softcap_and_sinks"), [("float32", False), ("float64", True)])
def test_jax_autodiff_of_public_attention_matches_oracle(dtype, softcap_and_sinks):
    _needs("jax")
    import jax
    import jax.numpy as jnp

    p = _rich_problem(dtype, softcap_and_sinks=softcap_and_sinks)
    mask = None if p["mask"] is None else jnp.asarray(p["mask"])
    args = [None if p.get(n) is None else jnp.asarray(p[n]) for n in ("q", "k", "v", "bias", "sinks", "d_out")]
    for policy in ("zero", "uniform"):  # a Python value in the user's function: one program each

        def loss(q, k, v, bias, sinks, d_out, policy=policy):
            out = refmask.attention(q, k, v, mask, bias=bias, scale=p.get("scale"), softcap=p.get("softcap"),
                                    sinks=sinks, fully_masked=policy)
            return jnp.sum(d_out * out)

        got = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))(*args)
        _assert_grads_match(refmask.AttentionGrads(*got), p, policy, "jax.grad of refmask.attention")


@pytest.mark.parametrize("softcap_and_sinks", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_autograd_of_public_attention_matches_oracle(dtype, softcap_and_sinks):
    _needs("torch")
    import torch

    p = _rich_problem(dtype, softcap_and_sinks=softcap_and_sinks)
    for policy in POLICIES:
        names = [n for n in ("q", "k", "v", "bias", "sinks") if p.get(n) is not None]
        leaves = {n: from_numpy(p[n], "torch").requires_grad_(True) for n in names}
        out = refmask.attention(leaves["q"], leaves["k"], leaves["v"], p["mask"], bias=leaves.get("bias"),
                                scale=p.get("scale"), softcap=p.get("softcap"), sinks=leaves.get("sinks"),
                                fully_masked=policy)
        grads = dict(zip(names, torch.autograd.grad(out, list(leaves.values()), from_numpy(p["d_out"], "torch")),
                         strict=True))
        got = refmask.AttentionGrads(*(grads.get(n) for n in ("q", "k", "v", "bias", "sinks")))
        _assert_grads_match(got, p, policy, "torch autograd of refmask.attention")


# ----------------------------------------------------------------------------------------------
# structure: exact zeros, finite values, NaN exactly where the "nan" policy puts it


@pytest.mark.jax_x64
@pytest.mark.parametrize("backend", ["numpy", "jax", "torch"])
def test_masked_entries_get_exactly_zero_and_fully_masked_rows_stay_finite(backend):
    _needs(backend)
    case = CASES["gqa-causal"]
    p = _rich_problem("float32")  # row 0 of every example keeps nothing, nor does batch item 1
    keep = np.broadcast_to(p["mask"], case.scores_shape)
    rows = np.asarray(~keep.any(axis=-1))  # (B, H, T)
    b, h, t, s = case.scores_shape
    # (B, H_kv, S): keys that no query of the key/value head's group attends to (key 4, and all of item 1)
    unread = np.asarray(~keep.reshape(b, case.kv_heads, h // case.kv_heads, t, s).any(axis=(2, 3)))
    assert rows[:, :, 0].all() and rows[1].all() and unread[0, :, 4].all() and not unread[0, :, :4].any()
    for policy in POLICIES:
        grads = _backend_vjp(backend, p, fully_masked=policy)
        assert grads.dsinks is None
        dq, dk, dv, dbias = (np.asarray(to_numpy(x)) for x in grads[:4])
        assert (dq[rows] == 0).all(), "a row with no kept key must give dq exactly 0"
        assert (dk[unread] == 0).all(), "a key no query attends to must get dk exactly 0"
        assert (dbias[~keep.any(axis=(0, 1))] == 0).all(), "a bias entry no row keeps must get exactly 0"
        assert np.isfinite(dq).all() and np.isfinite(dk).all() and np.isfinite(dbias).all(), policy
        if policy == "nan":  # every key/value head has a NaN row (row 0)
            assert np.isnan(dv).all()
        else:
            assert np.isfinite(dv).all()
            assert (dv[1] == 0).all() == (policy == "zero")


# ----------------------------------------------------------------------------------------------
# bad input: refmask's own errors, naming the argument, on every backend


@pytest.mark.parametrize("backend", ["numpy", "jax", "torch"])
def test_bad_input_is_refused_with_the_argument_named(backend):
    _needs(backend)
    p = _case_problem(CASES["gqa-causal"], "float32")
    q, k, v, mask, d_out = _args(p)

    def call(**changes: Any) -> Any:
        given = {"q": q, "k": k, "v": v, "mask": mask, "d_out": d_out} | changes
        return refmask.attention_vjp(from_numpy(given.pop("q"), backend), *given.values(), backend=backend)

    with pytest.raises(ValueError, match=r"d_out must have the output's shape \(2, 4, 5, 4\).*got shape \(2, 4, 5\)"):
        call(d_out=d_out[..., 0])
    with pytest.raises(ValueError, match="d_out must have the output's shape"):
        call(d_out=d_out.transpose(0, 1, 3, 2).copy())
    with pytest.raises(TypeError, match="d_out must have a floating dtype"):
        call(d_out=d_out.astype(np.int32))
    with pytest.raises(TypeError, match=r"d_out must have the output's dtype float32 .*got dtype float16"):
        call(d_out=d_out.astype(np.float16))
    with pytest.raises(TypeError, match="d_out must be an array; got None"):
        call(d_out=None)
    with pytest.raises(TypeError, match="mask must be a boolean array"):
        call(mask=p["mask"].astype(np.int8))
    with pytest.raises(ValueError, match="fully_masked"):
        refmask.attention_vjp(from_numpy(q, backend), k, v, mask, d_out, fully_masked="inf", backend=backend)


# ----------------------------------------------------------------------------------------------
# assert_gradients_close: what it lets through and what it refuses


def test_assert_gradients_close_holds_errors_to_the_terms_not_the_value():
    expected = np.array([1e-6, 1.0, 0.0], np.float32)
    terms = np.array([1.0, 1.0, 0.0])
    eps = float(np.finfo(np.float32).eps)
    bound = tolerances.GRADIENT_MAX_ULP["float32"]
    # a cancelled entry (1e-6 out of terms of size 1) may be off by bound * eps, far beyond its own ULPs
    def off_by(*d: float) -> np.ndarray:
        return expected + np.array(d, np.float32)

    assert_gradients_close(off_by(0.5 * bound * eps, 0, 0), expected, terms=terms)
    with pytest.raises(MismatchError, match=rf"more than {bound} \* eps \* terms apart"):
        assert_gradients_close(off_by(2 * bound * eps, 0, 0), expected, terms=terms)
    with pytest.raises(MismatchError, match="no term contributes"):
        assert_gradients_close(off_by(0, 0, 1e-30), expected, terms=terms, name="dq")
    with pytest.raises(MismatchError, match="NaN"):
        assert_gradients_close(np.array([np.nan, 1.0, 0.0], np.float32), expected, terms=terms)
    with pytest.raises(AssertionError, match="dtype float64 differs"):
        assert_gradients_close(expected.astype(np.float64), expected, terms=terms)
    with pytest.raises(ValueError, match="terms must hold magnitudes"):
        assert_gradients_close(expected, expected, terms=-terms)
