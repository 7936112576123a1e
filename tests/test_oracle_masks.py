"""The oracle's mask constructors: hand-worked grids (written out as 0/1 literals, independent of
the code) and properties against brute-force definitions (np.tril, explicit double loops)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refmask


def grid(*rows):
    """A bool array from rows of 0/1 literals (nested lists for more dimensions)."""
    return np.array(rows, dtype=np.int64).astype(bool)


def assert_mask_equal(actual, expected):
    assert isinstance(actual, np.ndarray) and actual.dtype == np.bool_, f"not a bool array: {actual!r}"
    assert actual.shape == expected.shape, f"shape {actual.shape}, expected {expected.shape}"
    np.testing.assert_array_equal(actual, expected)


# ---------------------------------------------------------------------------------------------
# hand-worked grids

CAUSAL_CASES = {
    "square-4": (dict(q_len=4), grid(
        [1, 0, 0, 0],
        [1, 1, 0, 0],
        [1, 1, 1, 0],
        [1, 1, 1, 1])),
    "T<S-top_left": (dict(q_len=3, kv_len=5), grid(
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0])),
    "T<S-bottom_right": (dict(q_len=3, kv_len=5, align="bottom_right"), grid(
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1])),
    "T>S-top_left": (dict(q_len=5, kv_len=3), grid(
        [1, 0, 0],
        [1, 1, 0],
        [1, 1, 1],
        [1, 1, 1],
        [1, 1, 1])),
    "T>S-bottom_right-first-rows-see-nothing": (dict(q_len=5, kv_len=3, align="bottom_right"), grid(
        [0, 0, 0],
        [0, 0, 0],
        [1, 0, 0],
        [1, 1, 0],
        [1, 1, 1])),
    "offset+1": (dict(q_len=4, offset=1), grid(
        [1, 1, 0, 0],
        [1, 1, 1, 0],
        [1, 1, 1, 1],
        [1, 1, 1, 1])),
    "offset-1-excludes-the-diagonal": (dict(q_len=4, offset=-1), grid(
        [0, 0, 0, 0],
        [1, 0, 0, 0],
        [1, 1, 0, 0],
        [1, 1, 1, 0])),
    "decode-one-query-bottom_right": (dict(q_len=1, kv_len=4, align="bottom_right"), grid(
        [1, 1, 1, 1])),
    "decode-one-query-top_left": (dict(q_len=1, kv_len=4), grid(
        [1, 0, 0, 0])),
    "bottom_right-with-offset": (dict(q_len=2, kv_len=4, align="bottom_right", offset=-1), grid(
        [1, 1, 0, 0],
        [1, 1, 1, 0])),
}


@pytest.mark.parametrize("kwargs, expected", CAUSAL_CASES.values(), ids=CAUSAL_CASES.keys())
def test_causal_mask_hand_worked(kwargs, expected):
    assert_mask_equal(refmask.causal_mask(**kwargs), expected)


WINDOW_CASES = {
    "int-1-means-one-each-side": (dict(q_len=5, window=1), grid(
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [0, 1, 1, 1, 0],
        [0, 0, 1, 1, 1],
        [0, 0, 0, 1, 1])),
    "causal-window-(2,0)": (dict(q_len=5, window=(2, 0)), grid(
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [0, 1, 1, 1, 0],
        [0, 0, 1, 1, 1])),
    "window-0-is-the-diagonal": (dict(q_len=4, window=0), grid(
        [1, 0, 0, 0],
        [0, 1, 0, 0],
        [0, 0, 1, 0],
        [0, 0, 0, 1])),
    "lookahead-(0,2)": (dict(q_len=4, window=[0, 2]), grid(
        [1, 1, 1, 0],
        [0, 1, 1, 1],
        [0, 0, 1, 1],
        [0, 0, 0, 1])),
    "T<S-bottom_right": (dict(q_len=2, kv_len=6, window=(1, 1), align="bottom_right"), grid(
        [0, 0, 0, 1, 1, 1],
        [0, 0, 0, 0, 1, 1])),
    "T<S-top_left": (dict(q_len=2, kv_len=6, window=(1, 1)), grid(
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0])),
    "T>S-bottom_right": (dict(q_len=4, kv_len=2, window=(1, 0), align="bottom_right"), grid(
        [0, 0],
        [0, 0],
        [1, 0],
        [1, 1])),
    "offset+2": (dict(q_len=3, kv_len=5, window=(0, 0), offset=2), grid(
        [0, 0, 1, 0, 0],
        [0, 0, 0, 1, 0],
        [0, 0, 0, 0, 1])),
}


@pytest.mark.parametrize("kwargs, expected", WINDOW_CASES.values(), ids=WINDOW_CASES.keys())
def test_sliding_window_mask_hand_worked(kwargs, expected):
    assert_mask_equal(refmask.sliding_window_mask(**kwargs), expected)


CHUNKED_CASES = {
    "chunks-of-2-last-one-short": (dict(q_len=5, chunk_size=2), grid(
        [1, 1, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 0, 0, 1])),
    "chunk-size-1-is-the-diagonal": (dict(q_len=3, chunk_size=1), grid(
        [1, 0, 0],
        [0, 1, 0],
        [0, 0, 1])),
    "T<S-bottom_right": (dict(q_len=2, kv_len=6, chunk_size=3, align="bottom_right"), grid(
        [0, 0, 0, 1, 1, 1],
        [0, 0, 0, 1, 1, 1])),
    "T<S-top_left": (dict(q_len=2, kv_len=6, chunk_size=3), grid(
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0, 0])),
    "T>S-bottom_right": (dict(q_len=4, kv_len=2, chunk_size=2, align="bottom_right"), grid(
        [0, 0],
        [0, 0],
        [1, 1],
        [1, 1])),
    "negative-offset-floors-below-chunk-0": (dict(q_len=3, chunk_size=2, offset=-1), grid(
        [0, 0, 0],
        [1, 1, 0],
        [1, 1, 0])),
}


@pytest.mark.parametrize("kwargs, expected", CHUNKED_CASES.values(), ids=CHUNKED_CASES.keys())
def test_chunked_mask_hand_worked(kwargs, expected):
    assert_mask_equal(refmask.chunked_mask(**kwargs), expected)


@pytest.mark.parametrize("side, expected", [
    ("right", grid(
        [1, 1, 0, 0],
        [0, 0, 0, 0],
        [1, 1, 1, 1],
        [1, 0, 0, 0])),
    ("left", grid(
        [0, 0, 1, 1],
        [0, 0, 0, 0],
        [1, 1, 1, 1],
        [0, 0, 0, 1])),
])
def test_padding_mask_hand_worked(side, expected):
    assert_mask_equal(refmask.padding_mask(np.array([2, 0, 4, 1]), 4, side=side), expected)


def test_padding_mask_default_side_is_right():
    assert_mask_equal(refmask.padding_mask([3, 1], 3), grid([1, 1, 1], [1, 0, 0]))


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.uint32, np.int64])
def test_padding_mask_left_with_narrow_integer_lengths(dtype):
    # max_len - length must not wrap in the lengths' dtype (uint8 lengths with max_len 300).
    lengths = np.array([1, 2, 0], dtype=dtype)
    mask = refmask.padding_mask(lengths, 300, side="left")
    assert mask.shape == (3, 300)
    np.testing.assert_array_equal(mask.sum(axis=1), [1, 2, 0])
    assert_mask_equal(mask[:, -3:], grid([0, 0, 1], [0, 1, 1], [0, 0, 0]))


# Seed 002 (crossvalidated 598239): a batch padded with id 0.
SEED_002_IDS = np.array([[1, 2, 3, 0, 0, 0], [1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 0]])
SEED_002_VALID = grid(
    [1, 1, 1, 0, 0, 0],
    [1, 1, 1, 1, 1, 1],
    [1, 1, 1, 1, 1, 0])


def test_padding_mask_from_ids_seed_002():
    assert_mask_equal(refmask.padding_mask_from_ids(SEED_002_IDS, 0), SEED_002_VALID)


def test_padding_mask_from_ids_nonzero_pad_id():
    assert_mask_equal(refmask.padding_mask_from_ids(np.array([[5, 7, 7], [7, 7, 7]]), 7), grid([1, 0, 0], [0, 0, 0]))


def test_attention_padding_mask_keys_only_is_b_1_1_s():
    kv_valid = grid([1, 1, 0], [1, 0, 0])
    expected = grid([[[1, 1, 0]]], [[[1, 0, 0]]])
    assert_mask_equal(refmask.attention_padding_mask(kv_valid), expected)


def test_attention_padding_mask_with_query_validity_is_b_1_t_s():
    kv_valid = grid([1, 1, 0], [1, 0, 0])
    q_valid = grid([1, 0], [1, 1])
    expected = grid(
        [[[1, 1, 0],
          [0, 0, 0]]],
        [[[1, 0, 0],
          [1, 0, 0]]])
    assert_mask_equal(refmask.attention_padding_mask(kv_valid, q_valid), expected)


def test_attention_padding_mask_seed_002_with_padded_queries():
    valid = refmask.padding_mask_from_ids(SEED_002_IDS, 0)
    mask = refmask.attention_padding_mask(valid, valid)
    first = grid(
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0])
    assert mask.shape == (3, 1, 6, 6)
    assert_mask_equal(mask[0, 0], first)
    assert mask[1].all()
    assert_mask_equal(mask[2, 0, 5], grid(0, 0, 0, 0, 0, 0))
    assert_mask_equal(mask[2, 0, 0], grid(1, 1, 1, 1, 1, 0))


SEGMENTS = np.array([[0, 0, 1, 1, -1]])


def test_segment_mask_block_diagonal_without_pad_id():
    expected = grid([[
        [1, 1, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 0, 0, 1]]])
    assert_mask_equal(refmask.segment_mask(SEGMENTS), expected)


def test_segment_mask_pad_tokens_attend_nowhere_and_are_never_attended():
    expected = grid([[
        [1, 1, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0]]])
    assert_mask_equal(refmask.segment_mask(SEGMENTS, pad_id=-1), expected)


def test_segment_mask_cross_attention():
    q_seg = np.array([[1, 2], [0, 0]])
    kv_seg = np.array([[1, 1, 2, 3], [0, 9, 0, 9]])
    expected = grid(
        [[[1, 1, 0, 0],
          [0, 0, 1, 0]]],
        [[[1, 0, 1, 0],
          [1, 0, 1, 0]]])
    assert_mask_equal(refmask.segment_mask(q_seg, kv_seg), expected)
    expected_pad_9 = expected.copy()  # id 9 appears only among the keys, which are all masked already
    assert_mask_equal(refmask.segment_mask(q_seg, kv_seg, pad_id=9), expected_pad_9)
    expected_pad_1 = grid(
        [[[0, 0, 0, 0],
          [0, 0, 1, 0]]],
        [[[1, 0, 1, 0],
          [1, 0, 1, 0]]])
    assert_mask_equal(refmask.segment_mask(q_seg, kv_seg, pad_id=1), expected_pad_1)


def test_prefix_lm_mask_bidirectional_prefix_then_causal():
    expected = grid(
        [[[1, 1, 0, 0],
          [1, 1, 0, 0],
          [1, 1, 1, 0],
          [1, 1, 1, 1]]],
        [[[1, 0, 0, 0],
          [1, 1, 0, 0],
          [1, 1, 1, 0],
          [1, 1, 1, 1]]],
        [[[1, 1, 1, 1],
          [1, 1, 1, 1],
          [1, 1, 1, 1],
          [1, 1, 1, 1]]])
    assert_mask_equal(refmask.prefix_lm_mask(np.array([2, 0, 4]), 4), expected)


@pytest.mark.parametrize("align, expected", [
    ("top_left", grid([[[1, 1, 1, 0, 0], [1, 1, 1, 0, 0]]])),
    ("bottom_right", grid([[[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]])),
])
def test_prefix_lm_mask_T_less_than_S(align, expected):
    assert_mask_equal(refmask.prefix_lm_mask(np.array([3]), 2, 5, align=align), expected)


def test_and_masks_broadcasts_and_skips_none():
    causal = grid([1, 0, 0], [1, 1, 0], [1, 1, 1])
    keys = grid([[[1, 1, 0]]])  # (1, 1, 1, 3) after the leading axis below
    expected = grid([[
        [1, 0, 0],
        [1, 1, 0],
        [1, 1, 0]]])
    assert_mask_equal(refmask.and_masks(causal, None, keys[None]), expected[None])


def test_or_masks_broadcasts():
    causal = grid([1, 0, 0], [1, 1, 0], [1, 1, 1])
    lookahead = grid([1, 1, 0], [0, 1, 1], [0, 0, 1])
    expected = grid(
        [1, 1, 0],
        [1, 1, 1],
        [1, 1, 1])
    assert_mask_equal(refmask.or_masks(causal, lookahead), expected)


def test_none_keeps_everything_in_and_masks_and_in_or_masks():
    only = grid([1, 0], [0, 1])
    assert refmask.and_masks() is None
    assert refmask.and_masks(None, None) is None
    assert_mask_equal(refmask.and_masks(None, only), only)
    assert refmask.or_masks(None, only) is None  # keep everything, or anything: keep everything
    nothing = refmask.or_masks()
    assert nothing is not None and nothing.shape == () and not nothing  # the or of no mask keeps nothing


# ---------------------------------------------------------------------------------------------
# shapes: built at their smallest broadcastable shape


@pytest.mark.parametrize("build, shape", [
    (lambda: refmask.causal_mask(3, 5), (3, 5)),
    (lambda: refmask.sliding_window_mask(3, 5, window=1), (3, 5)),
    (lambda: refmask.chunked_mask(3, 5, chunk_size=2), (3, 5)),
    (lambda: refmask.padding_mask([1, 2], 5), (2, 5)),
    (lambda: refmask.attention_padding_mask(np.ones((2, 5), bool)), (2, 1, 1, 5)),
    (lambda: refmask.attention_padding_mask(np.ones((2, 5), bool), np.ones((2, 3), bool)), (2, 1, 3, 5)),
    (lambda: refmask.segment_mask(np.zeros((2, 3), int), np.zeros((2, 5), int)), (2, 1, 3, 5)),
    (lambda: refmask.prefix_lm_mask([1, 2], 3, 5), (2, 1, 3, 5)),
])
def test_masks_have_their_smallest_broadcastable_shape(build, shape):
    mask = build()
    assert mask.dtype == np.bool_ and mask.shape == shape


@pytest.mark.parametrize("build, shape", [
    (lambda: refmask.causal_mask(0, 3), (0, 3)),
    (lambda: refmask.causal_mask(3, 0), (3, 0)),
    (lambda: refmask.sliding_window_mask(0, window=2), (0, 0)),
    (lambda: refmask.chunked_mask(2, 0, chunk_size=3), (2, 0)),
    (lambda: refmask.padding_mask(np.zeros(0, np.int64), 4), (0, 4)),
    (lambda: refmask.padding_mask([0, 0], 0), (2, 0)),
    (lambda: refmask.padding_mask_from_ids(np.zeros((0, 3), np.int64), 0), (0, 3)),
    (lambda: refmask.attention_padding_mask(np.zeros((0, 4), bool)), (0, 1, 1, 4)),
    (lambda: refmask.segment_mask(np.zeros((2, 0), np.int64)), (2, 1, 0, 0)),
    (lambda: refmask.prefix_lm_mask(np.zeros(0, np.int64), 2, 3), (0, 1, 2, 3)),
])
def test_zero_length_masks_are_empty_bool_arrays(build, shape):
    mask = build()
    assert mask.dtype == np.bool_ and mask.shape == shape


# ---------------------------------------------------------------------------------------------
# properties against brute-force definitions

lengths = st.integers(0, 9)
aligns = st.sampled_from(["top_left", "bottom_right"])
offsets = st.integers(-4, 4)


@settings(max_examples=60, deadline=None)
@given(t=lengths, s=lengths)
def test_causal_top_left_is_tril_and_bottom_right_is_tril_k_s_minus_t(t, s):
    ones = np.ones((t, s), bool)
    np.testing.assert_array_equal(refmask.causal_mask(t, s), np.tril(ones))
    np.testing.assert_array_equal(refmask.causal_mask(t, s, align="bottom_right"), np.tril(ones, k=s - t))


@settings(max_examples=60, deadline=None)
@given(t=lengths, s=lengths, align=aligns, offset=offsets)
def test_causal_mask_with_offset_is_shifted_tril(t, s, align, offset):
    shift = 0 if align == "top_left" else s - t
    expected = np.tril(np.ones((t, s), bool), k=offset + shift)
    np.testing.assert_array_equal(refmask.causal_mask(t, s, align=align, offset=offset), expected)


def brute_force(t, s, keep):
    return np.array([[keep(i, j) for j in range(s)] for i in range(t)], dtype=bool).reshape(t, s)


@settings(max_examples=80, deadline=None)
@given(t=lengths, s=lengths, left=st.integers(0, 5), right=st.integers(0, 5), align=aligns, offset=offsets,
       as_int=st.booleans())
def test_sliding_window_equals_its_definition(t, s, left, right, align, offset, as_int):
    if as_int:
        right = left
    window = left if as_int else (left, right)
    shift = 0 if align == "top_left" else s - t

    def keep(i, j):
        aligned = i + offset + shift
        return aligned - left <= j <= aligned + right

    actual = refmask.sliding_window_mask(t, s, window=window, align=align, offset=offset)
    np.testing.assert_array_equal(actual, brute_force(t, s, keep))


@settings(max_examples=60, deadline=None)
@given(t=lengths, s=lengths, c=st.integers(1, 5), align=aligns, offset=offsets)
def test_chunked_mask_equals_its_definition(t, s, c, align, offset):
    shift = 0 if align == "top_left" else s - t
    actual = refmask.chunked_mask(t, s, chunk_size=c, align=align, offset=offset)
    # math.floor division written out for negatives: chunk of position p is the n with n*c <= p < (n+1)*c
    def chunk(p):
        n = 0
        while n * c > p:
            n -= 1
        while (n + 1) * c <= p:
            n += 1
        return n

    np.testing.assert_array_equal(actual, brute_force(t, s, lambda i, j: chunk(i + offset + shift) == chunk(j)))


@settings(max_examples=60, deadline=None)
@given(data=st.data(), max_len=lengths, side=st.sampled_from(["right", "left"]))
def test_padding_mask_counts_and_contiguity(data, max_len, side):
    lens = data.draw(st.lists(st.integers(0, max_len), max_size=4))
    mask = refmask.padding_mask(np.array(lens, dtype=np.int64), max_len, side=side)
    assert mask.shape == (len(lens), max_len)
    for row, n in zip(mask, lens, strict=False):
        expected = [True] * n + [False] * (max_len - n)
        assert row.tolist() == (expected if side == "right" else expected[::-1])


@settings(max_examples=60, deadline=None)
@given(data=st.data(), t=lengths, s=lengths, align=aligns)
def test_prefix_lm_equals_its_definition(data, t, s, align):
    prefixes = data.draw(st.lists(st.integers(0, s), min_size=1, max_size=3))
    shift = 0 if align == "top_left" else s - t
    actual = refmask.prefix_lm_mask(np.array(prefixes), t, s, align=align)
    for b, p in enumerate(prefixes):
        expected = brute_force(t, s, lambda i, j: j < p or j <= i + shift)
        np.testing.assert_array_equal(actual[b, 0], expected)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(0, 7))
def test_segment_mask_equals_its_definition(data, n):
    rows = data.draw(st.lists(st.lists(st.integers(-1, 2), min_size=n, max_size=n), min_size=1, max_size=3))
    ids = np.array(rows, dtype=np.int64).reshape(len(rows), n)
    with_pad = refmask.segment_mask(ids, pad_id=-1)
    without = refmask.segment_mask(ids)
    for b, row in enumerate(ids):
        same = brute_force(n, n, lambda i, j: row[i] == row[j])
        not_pad = brute_force(n, n, lambda i, j: row[i] == row[j] and row[i] != -1)
        np.testing.assert_array_equal(without[b, 0], same)
        np.testing.assert_array_equal(with_pad[b, 0], not_pad)
