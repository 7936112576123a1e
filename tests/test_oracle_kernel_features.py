"""The oracle's softcap, sinks, log-sum-exp and ALiBi against formulas written out by hand: Gemma 2's and
gpt-oss's eager attention (Hugging Face's eager_attention_forward, transcribed to NumPy), log-sum-exp
over the kept scores, the ALiBi paper's slope tables and its reference `get_slopes`."""

from __future__ import annotations

import math

import numpy as np
import pytest

import refmask
from refmask import oracle
from refmask.testing import assert_attention_close, assert_lse_close, assert_weights_close
from refmask.testing.cases import ATTENTION_CASES, DTYPES, POLICIES, numpy_dtype

CASES = {c.id: c for c in ATTENTION_CASES}


def bits(x):
    return np.ascontiguousarray(x).view(np.uint8)


def assert_bit_identical(actual, expected):
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    np.testing.assert_array_equal(bits(actual), bits(expected))


def repeat_kv(x, n_rep):
    """Hugging Face's repeat_kv: (B, H_kv, S, D) -> (B, H_kv * n_rep, S, D)."""
    return np.repeat(x, n_rep, axis=1)


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def problem(case_id, dtype="float64", seed=0):
    case = CASES[case_id]
    a = case.arrays(dtype, seed)
    return a["q"], a["k"], a["v"], case.mask()


# ---------------------------------------------------------------------------------------------
# softcap: Gemma 2


def gemma2_eager(q, k, v, additive_mask, scaling, softcap):
    """Gemma 2's eager_attention_forward (Hugging Face), in float64 NumPy:
    attn_weights = matmul(query, key_states.T) * scaling; if softcap: / softcap, tanh, * softcap;
    attn_weights = attn_weights + causal_mask; softmax; attn_output = matmul(attn_weights, value_states)."""
    n_rep = q.shape[1] // k.shape[1]
    key_states, value_states = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    attn_weights = np.matmul(q, np.swapaxes(key_states, 2, 3)) * scaling
    attn_weights = attn_weights / softcap
    attn_weights = np.tanh(attn_weights)
    attn_weights = attn_weights * softcap
    attn_weights = attn_weights + additive_mask
    logits = attn_weights
    attn_weights = softmax(attn_weights)
    return np.matmul(attn_weights, value_states), attn_weights, logits


@pytest.mark.parametrize("case_id", ["gqa-causal", "causal-T<S-bottom_right"])
@pytest.mark.parametrize("softcap", [0.5, 50.0])
def test_softcap_is_gemma2s_eager_attention(case_id, softcap):
    q, k, v, mask = problem(case_id)
    q = 4 * q  # scores of several units, so a cap of 0.5 bites
    scaling = q.shape[-1] ** -0.5
    out_hf, w_hf, logits = gemma2_eager(q, k, v, refmask.to_additive(mask, "float64"), scaling, softcap)
    out, w = refmask.attention(q, k, v, mask, softcap=softcap, return_weights=True)
    # Two float64 computations of scores tens of units apart (the transcription rounds s / c, tanh and
    # * c too): each rounding moves a weight by |s| * eps relative, on either side.
    largest = float(np.abs(logits[np.broadcast_to(mask, logits.shape)]).max())
    assert_weights_close(w, w_hf, mask=mask, rtol=16 * np.finfo(np.float64).eps * max(1.0, largest), atol=0)
    assert_attention_close(out, out_hf, scale=float(np.abs(v).max()))
    assert np.abs(refmask.attention_weights(q, k, softcap=softcap) - refmask.attention_weights(q, k)).max() > 1e-3


def test_softcap_applies_before_the_bias_and_the_mask():
    # One query, three keys, scale 1: scores [4, 0, -4] capped at 1 are tanh([4, 0, -4]); the bias is added
    # after the cap (so it is not capped), and the masked key stays masked (weight 0, not exp(-1) / Z).
    q = np.array([[1.0]])
    k = np.array([[4.0], [0.0], [-4.0]])
    bias = np.array([[2.0, 0.0, 0.0]])
    keep = np.array([[True, True, False]])
    capped = np.tanh(np.array([4.0, 0.0]))
    e = np.exp(capped + np.array([2.0, 0.0]))
    expected = e / e.sum()
    w = refmask.attention_weights(q, k, keep, bias=bias, scale=1.0, softcap=1.0)
    assert_weights_close(w, np.array([[expected[0], expected[1], 0.0]]))
    assert w[0, 2] == 0.0


# ---------------------------------------------------------------------------------------------
# sinks: gpt-oss


def gpt_oss_eager(q, k, v, additive_mask, scaling, sinks):
    """gpt-oss's eager_attention_forward (Hugging Face), in float64 NumPy: the sinks, one per head,
    concatenated as one more column of the logits, the row max subtracted, softmax, the column dropped.
        sinks = module.sinks.reshape(1, -1, 1, 1).expand(query.shape[0], -1, query.shape[-2], -1)
        combined_logits = torch.cat([attn_weights, sinks], dim=-1)
        combined_logits = combined_logits - combined_logits.max(dim=-1, keepdim=True).values
        probs = F.softmax(combined_logits, dim=-1, dtype=combined_logits.dtype)
        scores = probs[..., :-1]  # we drop the sink here"""
    n_rep = q.shape[1] // k.shape[1]
    key_states, value_states = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    attn_weights = np.matmul(q, np.swapaxes(key_states, 2, 3)) * scaling
    attn_weights = attn_weights + additive_mask
    sink_column = np.broadcast_to(sinks.reshape(1, -1, 1, 1), (q.shape[0], sinks.shape[0], q.shape[-2], 1))
    combined_logits = np.concatenate([attn_weights, sink_column], axis=-1)
    combined_logits = combined_logits - combined_logits.max(axis=-1, keepdims=True)
    probs = softmax(combined_logits)
    scores = probs[..., :-1]
    return np.matmul(scores, value_states), scores


@pytest.mark.parametrize("case_id", ["gqa-causal", "causal-T>S-bottom_right-fully-masked-rows", "mqa-padding"])
def test_sinks_are_gpt_oss_eager_attention(case_id):
    q, k, v, mask = problem(case_id)
    heads = q.shape[-3]
    sinks = np.linspace(-1.0, 2.0, heads)
    scaling = q.shape[-1] ** -0.5
    out_hf, w_hf = gpt_oss_eager(q, k, v, refmask.to_additive(mask, "float64", fill="-inf"), scaling, sinks)
    out, w = refmask.attention(q, k, v, mask, sinks=sinks, return_weights=True)
    assert_weights_close(w, w_hf, mask=mask)
    assert_attention_close(out, out_hf, scale=float(np.abs(v).max()))
    assert (w.sum(axis=-1) < 1).all()  # the sink takes a share of every row


@pytest.mark.parametrize("fully_masked", POLICIES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_with_no_kept_key_and_sinks_give_exactly_zero_under_every_policy(fully_masked, dtype):
    q, k, v, mask = problem("causal-T>S-bottom_right-fully-masked-rows", dtype)
    sinks = np.array([0.5, -3.0], numpy_dtype(dtype))
    out, w, lse = refmask.attention(q, k, v, mask, sinks=sinks, fully_masked=fully_masked,
                                    return_weights=True, return_lse=True)
    none_kept = ~mask.any(axis=-1)  # the first T - S = 3 queries see no key
    assert none_kept.sum() == 3
    assert (w[..., none_kept, :] == 0).all() and (out[..., none_kept, :] == 0).all()
    # their lse is the sink's own logit: log(exp(sink)), rounded to float32 (float64 for float64 inputs)
    expected = np.broadcast_to(sinks.astype(lse.dtype)[:, None], lse.shape)[..., none_kept]
    np.testing.assert_array_equal(lse[..., none_kept], expected)
    assert np.isfinite(w).all() and np.isfinite(out).all()


def test_sink_values_follow_ieee_as_a_kept_score():
    scores = np.array([[1.0, 2.0, 0.0], [1.0, 2.0, 0.0]])
    keep = np.array([[True, True, True], [False, False, False]])
    plain = refmask.masked_softmax(scores, keep, fully_masked="nan")
    # -inf takes no share: the rows are the plain softmax's (and the row that keeps nothing is 0, not NaN)
    minus_inf = refmask.masked_softmax(scores, keep, sinks=np.array([-np.inf, -np.inf]), fully_masked="nan")
    assert_bit_identical(minus_inf[0], plain[0])
    assert (minus_inf[1] == 0).all()
    # NaN and +inf make a row that keeps a key NaN (as a kept NaN or +inf score); a row that keeps none stays 0
    for value in (np.nan, np.inf):
        w = refmask.masked_softmax(scores, keep, sinks=np.array([value, value]))
        assert np.isnan(w[0]).all() and (w[1] == 0).all()
    _, lse = refmask.attention(np.zeros((2, 1, 1)), np.zeros((2, 2, 1)), np.zeros((2, 2, 1)),
                               sinks=np.array([np.nan, np.inf]), return_lse=True)
    assert np.isnan(lse[0, 0]) and lse[1, 0] == np.inf


def test_masked_softmax_sinks_along_any_axis_are_a_concatenated_column():
    rng = np.random.default_rng(1)
    scores = rng.standard_normal((2, 3, 4, 5))
    keep = rng.random((2, 3, 4, 5)) < 0.7
    for axis in range(4):
        sink_shape = list(scores.shape)
        sink_shape[axis] = 1
        sinks = rng.standard_normal(sink_shape)
        rows = np.squeeze(sinks, axis=axis)  # the sinks as given: the rows' shape, the axis left out
        full = np.concatenate([np.where(keep, scores, -np.inf), sinks], axis=axis)
        expected = np.take(softmax(full, axis=axis), np.arange(scores.shape[axis]), axis=axis)
        assert_weights_close(refmask.masked_softmax(scores, keep, axis=axis, sinks=rows), expected)


def test_one_dimensional_sinks_are_per_head_along_the_last_axis_only():
    scores = np.random.default_rng(2).standard_normal((2, 3, 4, 4))  # (B, H, T, S) with T == S
    per_head = np.array([0.0, 1.0, -2.0])
    as_column = refmask.masked_softmax(scores, sinks=per_head[:, None])  # (H, 1): explicitly per head
    assert_bit_identical(refmask.masked_softmax(scores, sinks=per_head), as_column)
    # (T,) per query row must be spelled (1, T); along another axis a 1-D array broadcasts as NumPy does
    row_sinks = np.array([0.0, 1.0, -2.0, 3.0])
    with pytest.raises(ValueError, match=r"one logit per query head.*\(H,\) = \(3,\).*\(1, T\)"):
        refmask.masked_softmax(scores, sinks=row_sinks)
    by_rows = refmask.masked_softmax(scores, sinks=row_sinks[None, :])
    assert_weights_close(by_rows[0, 0], refmask.masked_softmax(scores[0, 0], sinks=row_sinks))
    by_column = refmask.masked_softmax(scores, axis=-2, sinks=row_sinks)  # rows (B, H, S): one per key column
    assert_weights_close(by_column[1, 2, :, 3], refmask.masked_softmax(scores[1, 2, :, 3], sinks=row_sinks[3]))


def test_sinks_are_rounded_to_the_compute_precision():
    scores = np.array([[0.5, -1.0, 2.0]], np.float32)
    precise = np.array([0.1])  # float64 sinks beside float32 scores: read as float32(0.1)
    assert_bit_identical(refmask.masked_softmax(scores, sinks=precise),
                         refmask.masked_softmax(scores, sinks=precise.astype(np.float32)))
    half = scores.astype(np.float16)  # float16 scores are computed in float32: the sink is not rounded to float16
    w = refmask.masked_softmax(half, sinks=np.array([0.1], np.float32))
    e = np.exp(np.array([0.5, -1.0, 2.0, np.float32(0.1)], np.float64))
    assert_bit_identical(w, (e[:3] / e.sum()).astype(np.float16)[None])


# ---------------------------------------------------------------------------------------------
# lse


def lse_by_hand(scores, keep, sinks=None):
    """log(sum over kept keys of exp(score) + exp(sink)), straight from the definition (scores are small)."""
    with np.errstate(divide="ignore"):
        total = np.where(keep, np.exp(scores), 0.0).sum(axis=-1)
        if sinks is not None:
            total = total + np.exp(sinks)
        return np.log(total)


@pytest.mark.parametrize("case_id", ["causal-T>S-bottom_right-fully-masked-rows", "fully-masked-batch-item",
                                     "gqa-causal"])
@pytest.mark.parametrize("with_sinks", [False, True])
def test_lse_is_log_sum_exp_of_the_kept_scores(case_id, with_sinks):
    q, k, v, mask = problem(case_id)
    heads = q.shape[-3]
    sinks = np.linspace(-0.5, 1.5, heads) if with_sinks else None
    bias = refmask.alibi_bias(heads, q.shape[-2], k.shape[-2], dtype="float64")
    _, lse = refmask.attention(q, k, v, mask, bias=bias, softcap=3.0, sinks=sinks, return_lse=True)
    scores = 3.0 * np.tanh(q @ np.swapaxes(np.repeat(k, heads // k.shape[-3], axis=-3), -1, -2)
                           / math.sqrt(q.shape[-1]) / 3.0) + bias
    keep = np.broadcast_to(mask, scores.shape)
    expected = lse_by_hand(scores, keep, None if sinks is None else sinks[:, None])
    none_kept = ~keep.any(axis=-1)
    assert none_kept.any() == (case_id != "gqa-causal")
    if not with_sinks:
        assert np.isneginf(lse[none_kept]).all()  # a row with no kept key and no sink: -inf
    assert_lse_close(lse, expected)
    # exp(s - lse) is the weights
    w = refmask.attention_weights(q, k, mask, bias=bias, softcap=3.0, sinks=sinks)
    with np.errstate(invalid="ignore"):
        from_lse = np.where(keep & np.isfinite(lse[..., None]), np.exp(scores - lse[..., None]), 0.0)
    assert_weights_close(w, from_lse, mask=mask)


@pytest.mark.parametrize("fully_masked", POLICIES)
def test_lse_of_rows_with_no_kept_key_is_minus_inf_whatever_the_policy(fully_masked):
    q, k, v, mask = problem("fully-masked-batch-item")
    _, lse = refmask.attention(q, k, v, mask, fully_masked=fully_masked, return_lse=True)
    assert np.isneginf(lse[1]).all() and np.isfinite(lse[0]).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_lse_dtype_and_the_order_of_results(dtype):
    q, k, v, mask = problem("gqa-causal", dtype)
    out = refmask.attention(q, k, v, mask)
    out_lse = refmask.attention(q, k, v, mask, return_lse=True)
    out_w_lse = refmask.attention(q, k, v, mask, return_weights=True, return_lse=True)
    assert isinstance(out_lse, tuple) and len(out_lse) == 2 and len(out_w_lse) == 3
    lse_dtype = np.float64 if dtype == "float64" else np.float32
    assert out_lse[1].dtype == lse_dtype and out_lse[1].shape == q.shape[:-1]
    assert_bit_identical(out_lse[0], out)
    assert_bit_identical(out_w_lse[0], out)
    assert_bit_identical(out_w_lse[1], refmask.attention_weights(q, k, mask))
    assert_bit_identical(out_w_lse[2], out_lse[1])


def test_query_blocking_is_invisible_to_lse(monkeypatch):
    q, k, v, mask = problem("causal-T>S-bottom_right-fully-masked-rows")
    sinks = np.array([0.3, -0.7])
    _, _, whole = refmask.attention(q, k, v, mask, sinks=sinks, return_weights=True, return_lse=True)
    monkeypatch.setattr(oracle, "_ATTENTION_BLOCK_ELEMENTS", 4)
    _, blocked = refmask.attention(q, k, v, mask, sinks=sinks, return_lse=True)
    assert_lse_close(blocked, whole, max_ulp=1)


# ---------------------------------------------------------------------------------------------
# ALiBi

# The paper's slopes: 8 heads 1/2, 1/4, ..., 1/256; 12 heads: those of 8, then every other slope of 16
# heads (2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5).
SLOPES_8 = [0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0078125, 0.00390625]
SLOPES_12 = [*SLOPES_8, 0.7071067811865476, 0.3535533905932738, 0.1767766952966369, 0.08838834764831845]


def get_slopes(n):
    """The ALiBi authors' reference `get_slopes` (attention_with_linear_biases, as Hugging Face's
    build_alibi_tensor computes it)."""

    def get_slopes_power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        ratio = start
        return [start * ratio**i for i in range(n)]

    if math.log2(n).is_integer():
        return get_slopes_power_of_2(n)
    closest_power_of_2 = 2 ** math.floor(math.log2(n))
    return (get_slopes_power_of_2(closest_power_of_2)
            + get_slopes(2 * closest_power_of_2)[0::2][: n - closest_power_of_2])


@pytest.mark.parametrize("heads, table", [(8, SLOPES_8), (12, SLOPES_12)])
def test_alibi_slopes_are_the_papers_table(heads, table):
    np.testing.assert_array_equal(refmask.alibi_slopes(heads, dtype="float64"), np.array(table))
    default = refmask.alibi_slopes(heads)
    assert default.dtype == np.float32
    np.testing.assert_array_equal(default, np.array(table, np.float32))


@pytest.mark.parametrize("heads", [1, 2, 3, 5, 6, 7, 12, 16, 20, 31, 64, 96])
def test_alibi_slopes_are_the_reference_get_slopes_correctly_rounded(heads):
    mpmath = pytest.importorskip("mpmath")
    slopes = refmask.alibi_slopes(heads, dtype="float64")
    # The reference computes start * ratio**i, rounding as it goes (up to ~16 ULP off for 96 heads)...
    np.testing.assert_allclose(slopes, get_slopes(heads), rtol=32 * np.finfo(np.float64).eps, atol=0)
    # ...of the exact 2^(-8 h / P) (and 2^(-8 (2i + 1) / (2P))), which the oracle rounds once.
    p = 2 ** math.floor(math.log2(heads))
    exponents = [mpmath.mpf(-8 * h) / p for h in range(1, p + 1)] + [
        mpmath.mpf(-8 * (2 * i + 1)) / (2 * p) for i in range(heads - p)]
    with mpmath.workdps(40):
        exact = [float(mpmath.power(2, e)) for e in exponents]
    np.testing.assert_array_equal(slopes, np.array(exact))


def test_alibi_bias_hand_worked():
    # 2 heads: slopes 2^-4 and 2^-8; bias[h, i, j] = slope[h] * (j - i'), with i' = i + shift
    top_left = refmask.alibi_bias(2, 2, 3, dtype="float64")
    np.testing.assert_array_equal(top_left[0], [[0.0, 1 / 16, 2 / 16], [-1 / 16, 0.0, 1 / 16]])
    np.testing.assert_array_equal(top_left[1], [[0.0, 1 / 256, 2 / 256], [-1 / 256, 0.0, 1 / 256]])
    bottom_right = refmask.alibi_bias(2, 2, 3, align="bottom_right", dtype="float64")  # shift S - T = 1
    np.testing.assert_array_equal(bottom_right[0], [[-1 / 16, 0.0, 1 / 16], [-2 / 16, -1 / 16, 0.0]])
    np.testing.assert_array_equal(refmask.alibi_bias(2, 2, 3, offset=1, dtype="float64"), bottom_right)
    assert refmask.alibi_bias(3, 4).shape == (3, 4, 4) and refmask.alibi_bias(3, 4).dtype == np.float32
    assert refmask.alibi_bias(3, 4, dtype="bf16").dtype.name == "bfloat16"
    assert not np.signbit(top_left[:, [0, 1], [0, 1]]).any()  # 0 at the query's own position is +0


@pytest.mark.parametrize("align, offset", [("top_left", 0), ("bottom_right", 0), ("top_left", 3), ("bottom_right", -2)])
def test_alibi_is_zero_on_the_causal_diagonal_and_negative_below(align, offset):
    # The key at the query's own aligned position gets 0; the keys causal_mask keeps get <= 0.
    t, s = 4, 6
    bias = refmask.alibi_bias(8, t, s, align=align, offset=offset, dtype="float64")
    causal = refmask.causal_mask(t, s, align=align, offset=offset)
    assert (bias[:, causal] <= 0).all() and (bias[:, ~causal] > 0).all()


def test_alibi_gives_hugging_faces_weights_under_a_causal_mask():
    # build_alibi_tensor adds slope[h] * j (j the key's position): a constant per row away from alibi_bias,
    # so the weights are the same.
    q, k, _, mask = problem("gqa-causal")
    heads, t = q.shape[-3], q.shape[-2]
    hf = (np.array(get_slopes(heads))[:, None, None] * np.arange(t)[None, None, :]).repeat(t, axis=1)
    ours = refmask.attention_weights(q, k, mask, bias=refmask.alibi_bias(heads, t, dtype="float64"))
    assert_weights_close(ours, refmask.attention_weights(q, k, mask, bias=hf))


def test_alibi_refuses_what_float64_cannot_count():
    with pytest.raises(ValueError, match=r"offset.*2\*\*53"):
        refmask.alibi_bias(2, 3, offset=2**60)
    assert refmask.alibi_bias(1, 1, offset=2**52, dtype="float64")[0, 0, 0] == -(2.0**52) / 256
