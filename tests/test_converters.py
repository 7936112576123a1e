"""Converters between mask conventions: hand-worked values and round trips."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refmask
from refmask.testing.cases import DTYPES, numpy_dtype


def bools(*rows):
    return np.array(rows, dtype=np.int64).astype(bool)


CAUSAL_2 = bools([1, 0], [1, 1])

# The most negative finite value of each dtype, written out.
MOST_NEGATIVE = {
    "float64": -1.7976931348623157e308,
    "float32": -3.4028234663852886e38,
    "float16": -65504.0,
    "bfloat16": -3.3895313892515355e38,
}


# ---------------------------------------------------------------------------------------------
# to_additive


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fill, masking_value", [
    ("min", None),
    ("-inf", -np.inf),
    (-1e4, None),
])
def test_to_additive_writes_zero_where_kept_and_fill_where_masked(dtype, fill, masking_value):
    d = numpy_dtype(dtype)
    if masking_value is None:
        masking_value = MOST_NEGATIVE[dtype] if fill == "min" else fill
    bias = refmask.to_additive(CAUSAL_2, dtype, fill=fill)
    assert bias.dtype == d and bias.shape == (2, 2)
    expected = np.array([[0.0, masking_value], [0.0, 0.0]]).astype(d)
    np.testing.assert_array_equal(bias, expected)


def test_to_additive_default_is_float32_finfo_min():
    bias = refmask.to_additive(CAUSAL_2)
    assert bias.dtype == np.float32
    assert bias[0, 1] == np.float32(-3.4028234663852886e38) and bias[0, 0] == 0


def test_to_additive_minus_1e9_in_float32_like_the_tutorials():
    bias = refmask.to_additive(CAUSAL_2, np.float32, fill=-1e9)
    np.testing.assert_array_equal(bias, np.array([[0, -1e9], [0, 0]], np.float32))


def test_to_additive_keeps_the_mask_shape():
    mask = refmask.attention_padding_mask(bools([1, 1, 0], [1, 0, 0]))
    assert refmask.to_additive(mask).shape == (2, 1, 1, 3)


# ---------------------------------------------------------------------------------------------
# from_additive: which values count as masking


@pytest.mark.parametrize("dtype", DTYPES)
def test_from_additive_default_counts_only_finfo_min_and_minus_inf(dtype):
    d = numpy_dtype(dtype)
    values = np.array([0.0, MOST_NEGATIVE[dtype], 0.0, -np.inf]).astype(d)
    np.testing.assert_array_equal(refmask.from_additive(values), [True, False, True, False])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("value", [3.0, -1.0, -1e4, 1.0, np.inf])
def test_from_additive_refuses_values_that_are_neither_kept_nor_masking(dtype, value):
    # A bias (ALiBi), a 1/0 multiplicative mask or an unexpected fill is not an additive mask.
    values = np.array([0.0, value, MOST_NEGATIVE[dtype]]).astype(numpy_dtype(dtype))
    with pytest.raises(ValueError, match=r"neither 0 \(kept\) nor a masking value|contains \+inf"):
        refmask.from_additive(values)


def test_from_additive_refuses_a_flax_one_zero_mask_and_names_the_converter():
    flax_mask = np.array([[1.0, 1.0, 0.0]], np.float32)
    with pytest.raises(ValueError, match="from_multiplicative"):
        refmask.from_additive(flax_mask)
    np.testing.assert_array_equal(refmask.from_multiplicative(flax_mask), [[True, True, False]])


def test_from_additive_threshold_reads_tutorial_masks():
    bias = np.array([0.0, -1e4, -2e4, -np.inf], np.float32)  # `(1 - m) * -10000`, then two such masks added
    with pytest.raises(ValueError, match=r"pass threshold=-10000\.0"):
        refmask.from_additive(bias)
    np.testing.assert_array_equal(refmask.from_additive(bias, threshold=-1e4), [True, False, False, False])


_UPCASTS = [("float16", "float32"), ("bfloat16", "float32"), ("float16", "float64"), ("bfloat16", "float64"),
            ("float32", "float64"), ("float32", "float32"), ("float64", "float64")]


@pytest.mark.parametrize(
    ("made_in", "read_as", "fill"),
    # -1e9 overflows float16, where to_additive refuses it (test_bad_input.py)
    [(m, r, f) for m, r in _UPCASTS for f in ("min", "-inf", -1e9) if not (m == "float16" and f == -1e9)],
)
def test_from_additive_reads_framework_masks_after_upcasting(made_in, read_as, fill):
    # Hugging Face, Flax and torch write finfo(dtype).min or -inf in the model's dtype; NumPy users read
    # such a mask after upcasting it. A tutorial's -1e9 is read too. 29 masked entries of a causal+padding mask:
    keep = refmask.and_masks(refmask.causal_mask(8), refmask.attention_padding_mask(np.array([[True] * 7 + [False]])))
    assert keep is not None
    bias = refmask.to_additive(keep, made_in, fill=fill).astype(read_as)
    assert int((~keep).sum()) == 29
    np.testing.assert_array_equal(refmask.from_additive(bias), keep)


def test_from_additive_refuses_values_that_could_be_a_bias_or_a_small_fill():
    for value in (-1.0, -100.0, -65000.0, 3.0):
        with pytest.raises(ValueError, match="neither 0"):
            refmask.from_additive(np.array([0.0, value], np.float32))
    # the strict reading of the mask's own dtype stays available
    with pytest.raises(ValueError, match="neither 0"):
        refmask.from_additive(np.array([0.0, -65504.0], np.float32), threshold="min")
    np.testing.assert_array_equal(refmask.from_additive(np.array([0.0, -65504.0], np.float32)), [True, False])


def test_from_additive_threshold_is_rounded_like_the_fill():
    # -1e4 is -9984 in bfloat16; to_additive writes -9984, from_additive reads it as masking.
    bias = refmask.to_additive(CAUSAL_2, "bfloat16", fill=-1e4)
    assert float(bias[0, 1]) == -9984.0
    np.testing.assert_array_equal(refmask.from_additive(bias, threshold=-1e4), CAUSAL_2)


# ---------------------------------------------------------------------------------------------
# round trips


@st.composite
def bool_masks(draw, max_dims=4):
    shape = tuple(draw(st.lists(st.integers(0, 4), min_size=1, max_size=max_dims)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return rng.random(shape) < draw(st.sampled_from([0.0, 0.5, 1.0]))


FILLS = ["min", "-inf", -1e4, -1e9, -0.1, -3e38]


@settings(max_examples=100, deadline=None)
@given(mask=bool_masks(), dtype=st.sampled_from(DTYPES), fill=st.sampled_from(FILLS))
def test_to_additive_from_additive_round_trip(mask, dtype, fill):
    representable = isinstance(fill, str) or abs(fill) <= -MOST_NEGATIVE[dtype]
    if not representable:
        with pytest.raises(ValueError, match="overflows to -inf"):
            refmask.to_additive(mask, dtype, fill=fill)
        return
    bias = refmask.to_additive(mask, dtype, fill=fill)
    threshold = "min" if isinstance(fill, str) else fill
    np.testing.assert_array_equal(refmask.from_additive(bias, threshold=threshold), mask)


@settings(max_examples=100, deadline=None)
@given(t=st.integers(0, 5), s=st.integers(0, 5), seed=st.integers(0, 2**32 - 1))
def test_to_torch_mha_from_torch_mha_round_trip_for_T_S(t, s, seed):
    mask = np.random.default_rng(seed).random((t, s)) < 0.5
    attn_mask, key_padding = refmask.to_torch_mha(mask)
    assert key_padding is None
    np.testing.assert_array_equal(attn_mask, ~mask)
    np.testing.assert_array_equal(refmask.from_torch_mha(attn_mask), mask)


@settings(max_examples=100, deadline=None)
@given(b=st.integers(0, 3), s=st.integers(0, 5), seed=st.integers(0, 2**32 - 1))
def test_to_torch_mha_from_torch_mha_round_trip_for_key_padding(b, s, seed):
    valid = np.random.default_rng(seed).random((b, s)) < 0.6
    mask = refmask.attention_padding_mask(valid)
    attn_mask, key_padding = refmask.to_torch_mha(mask)
    assert attn_mask is None
    np.testing.assert_array_equal(key_padding, ~valid)
    back = refmask.from_torch_mha(None, key_padding)
    assert back.shape == (b, 1, 1, s)
    np.testing.assert_array_equal(back, mask)


@settings(max_examples=100, deadline=None)
@given(b=st.integers(1, 3), heads=st.integers(1, 3), t=st.integers(0, 4), s=st.integers(0, 4),
       seed=st.integers(0, 2**32 - 1), per_head=st.booleans())
def test_to_torch_mha_from_torch_mha_round_trip_for_4d(b, heads, t, s, seed, per_head):
    rng = np.random.default_rng(seed)
    mask = rng.random((b, heads if per_head else 1, t, s)) < 0.5
    attn_mask, key_padding = refmask.to_torch_mha(mask, num_heads=heads, q_len=t)
    assert key_padding is None and attn_mask is not None and attn_mask.shape == (b * heads, t, s)
    back = refmask.from_torch_mha(attn_mask, num_heads=heads)
    np.testing.assert_array_equal(back, np.broadcast_to(mask, (b, heads, t, s)))


@settings(max_examples=60, deadline=None)
@given(b=st.integers(0, 3), s=st.integers(0, 6), seed=st.integers(0, 2**32 - 1),
       dtype=st.sampled_from([np.int64, np.int32, np.float32, np.bool_]))
def test_from_hf_reads_ones_as_real_tokens(b, s, seed, dtype):
    ones_and_zeros = (np.random.default_rng(seed).random((b, s)) < 0.5).astype(dtype)
    mask = refmask.from_hf(ones_and_zeros)
    assert mask.shape == (b, 1, 1, s) and mask.dtype == np.bool_
    np.testing.assert_array_equal(mask[:, 0, 0, :], ones_and_zeros == 1)
    # round trip: an HF mask is a key-validity array in 1/0 form
    np.testing.assert_array_equal(mask, refmask.attention_padding_mask(ones_and_zeros == 1))
    np.testing.assert_array_equal(mask[:, 0, 0, :].astype(dtype), ones_and_zeros)


# ---------------------------------------------------------------------------------------------
# from_torch_mha: every form nn.MultiheadAttention accepts


def test_from_torch_mha_bool_attn_mask_true_means_masked():
    masked_above_diagonal = bools([0, 1, 1], [0, 0, 1], [0, 0, 0])
    np.testing.assert_array_equal(refmask.from_torch_mha(masked_above_diagonal), bools([1, 0, 0], [1, 1, 0], [1, 1, 1]))


def test_from_torch_mha_float_attn_mask_like_generate_square_subsequent_mask():
    minus_inf_above = np.array([[0.0, -np.inf, -np.inf], [0.0, 0.0, -np.inf], [0.0, 0.0, 0.0]], np.float32)
    np.testing.assert_array_equal(refmask.from_torch_mha(minus_inf_above), bools([1, 0, 0], [1, 1, 0], [1, 1, 1]))


def test_from_torch_mha_key_padding_mask_true_means_ignore():
    ignore = bools([0, 0, 1], [0, 1, 1])
    expected = bools([[[1, 1, 0]]], [[[1, 0, 0]]])
    np.testing.assert_array_equal(refmask.from_torch_mha(key_padding_mask=ignore), expected)


def test_from_torch_mha_float_key_padding_mask():
    ignore = np.array([[0.0, -np.inf, 0.0]], np.float32)
    np.testing.assert_array_equal(refmask.from_torch_mha(None, ignore), bools([[[1, 0, 1]]]))


def test_from_torch_mha_unbatched_key_padding_mask():
    np.testing.assert_array_equal(refmask.from_torch_mha(None, bools(0, 1, 0)), bools([1, 0, 1]))


def test_from_torch_mha_both_masks_are_anded():
    attn_mask = bools([0, 1, 1], [0, 0, 1])  # (T=2, S=3), True = masked
    ignore = bools([0, 0, 0], [1, 0, 0])  # (N=2, S=3)
    expected = bools(
        [[[1, 0, 0],
          [1, 1, 0]]],
        [[[0, 0, 0],
          [0, 1, 0]]])
    np.testing.assert_array_equal(refmask.from_torch_mha(attn_mask, ignore), expected)


def test_from_torch_mha_3d_attn_mask_is_split_into_batch_and_heads():
    # (N*H, T, S) with N=2, H=2: torch's order is batch-major, head n*H + h
    per_row = np.stack([bools([0, 1]), bools([1, 0]), bools([1, 1]), bools([0, 0])])  # (4, T=1, S=2)
    keep = refmask.from_torch_mha(per_row, num_heads=2)
    assert keep.shape == (2, 2, 1, 2)
    np.testing.assert_array_equal(keep[:, :, 0, :], bools([[1, 0], [0, 1]], [[0, 0], [1, 1]]))


def test_from_torch_mha_nothing_means_attend_everywhere():
    assert refmask.from_torch_mha() is None


def test_to_torch_mha_hand_worked():
    attn_mask, key_padding = refmask.to_torch_mha(CAUSAL_2)
    np.testing.assert_array_equal(attn_mask, bools([0, 1], [0, 0]))
    assert key_padding is None
    attn_mask, key_padding = refmask.to_torch_mha(bools([[[1, 0, 1]]]))
    assert attn_mask is None
    np.testing.assert_array_equal(key_padding, bools([0, 1, 0]))


def test_to_torch_mha_q_len_expands_key_padding_into_attn_mask():
    mask = bools([[[1, 0]]], [[[1, 1]]])  # (2, 1, 1, 2)
    attn_mask, key_padding = refmask.to_torch_mha(mask, num_heads=2, q_len=3)
    assert key_padding is None and attn_mask.shape == (4, 3, 2)
    np.testing.assert_array_equal(attn_mask[0], bools([0, 1], [0, 1], [0, 1]))
    np.testing.assert_array_equal(attn_mask[1], attn_mask[0])
    assert not attn_mask[2:].any()


def test_from_hf_hand_worked():
    np.testing.assert_array_equal(refmask.from_hf(np.array([[1, 1, 0], [0, 1, 1]])),
                                  bools([[[1, 1, 0]]], [[[0, 1, 1]]]))
