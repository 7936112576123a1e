"""Varlen batches and position helpers: hand-worked cases (written out as literals), properties against
refmask's other masks and explicit loops, every backend bit-identical to the oracle, and jax.jit (static sizes
passed, traced values refused by name).

Bad input for every argument is in tests/test_bad_input.py's table (VARLEN)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refmask
from harness.compare import assert_identical
from refmask import _backends, oracle

BACKENDS = ("numpy", "jax", "torch")


def a(*rows, dtype=np.int64):
    return np.array(rows, dtype=dtype)


def grid(*rows):
    return np.array(rows, dtype=np.int64).astype(bool)


def assert_array(actual, expected, dtype):
    assert isinstance(actual, np.ndarray) and actual.dtype == np.dtype(dtype), f"{type(actual)} {actual.dtype}"
    assert actual.shape == np.shape(expected), f"shape {actual.shape}, expected {np.shape(expected)}"
    np.testing.assert_array_equal(actual, expected)


# ---------------------------------------------------------------------------------------------
# hand-worked cases


@pytest.mark.parametrize(("lengths", "expected"), [
    (a(3, 0, 2), [0, 3, 3, 5]),
    (a(4), [0, 4]),
    (a(0, 0), [0, 0, 0]),
    (np.zeros(0, np.int64), [0]),
    (np.array([1, 2], np.uint8), [0, 1, 3]),
])
def test_cu_seqlens_hand_worked(lengths, expected):
    assert_array(refmask.cu_seqlens(lengths), expected, np.int32)


@pytest.mark.parametrize(("cu", "total", "expected"), [
    (a(0, 3, 3, 5), None, [0, 0, 0, 2, 2]),  # sequence 1 is empty: its index appears nowhere
    (a(0, 3, 3, 5), 7, [0, 0, 0, 2, 2, -1, -1]),  # two padding tokens after the last sequence
    (a(0, 2), 2, [0, 0]),
    (a(0, 0, 1), None, [1]),
    (a(0), 2, [-1, -1]),  # no sequence: every token is padding
    (a(0), None, np.zeros(0, np.int32)),
])
def test_segment_ids_from_cu_seqlens_hand_worked(cu, total, expected):
    assert_array(refmask.segment_ids_from_cu_seqlens(cu, total), expected, np.int32)


@pytest.mark.parametrize(("ids", "num_segments", "expected"), [
    (a(0, 0, 0, 2, 2), None, [0, 3, 3, 5]),
    (a(0, 0, 0, 2, 2), 4, [0, 3, 3, 5, 5]),  # a trailing empty sequence needs num_segments
    (a(0, 1, 1, -1, -1), None, [0, 1, 3]),  # padding belongs to no sequence
    (a(-1, -1), None, [0]),
    (np.zeros(0, np.int64), 2, [0, 0, 0]),
])
def test_cu_seqlens_from_segment_ids_hand_worked(ids, num_segments, expected):
    assert_array(refmask.cu_seqlens_from_segment_ids(ids, num_segments=num_segments), expected, np.int32)


VARLEN_CASES = {
    # The regression case: q lengths (1, 2), k lengths (2, 1). Sequence 0's one query sits at its last key
    # and sees both; sequence 1's first query sits before its only key (p + shift = -1) and sees nothing.
    "causal-seqlen-q-differs-from-k": (dict(cu_seqlens_q=a(0, 1, 3), cu_seqlens_k=a(0, 2, 3), causal=True), grid(
        [1, 1, 0],
        [0, 0, 0],
        [0, 0, 1])),
    "block-diagonal-without-causal": (dict(cu_seqlens_q=a(0, 1, 3), cu_seqlens_k=a(0, 2, 3)), grid(
        [1, 1, 0],
        [0, 0, 1],
        [0, 0, 1])),
    "self-attention-causal-two-sequences": (dict(cu_seqlens_q=a(0, 2, 5), causal=True), grid(
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 1, 1, 1])),
    # q = 2, k = 5 (shift 3), window (1, 0): query p sees keys p + 2 .. p + 3, as flash-attn's docstring.
    "window-bottom-right-one-sequence": (dict(cu_seqlens_q=a(0, 2), cu_seqlens_k=a(0, 5), window=(1, 0)), grid(
        [0, 0, 1, 1, 0],
        [0, 0, 0, 1, 1])),
    "window-int-means-both-sides": (dict(cu_seqlens_q=a(0, 4), window=1), grid(
        [1, 1, 0, 0],
        [1, 1, 1, 0],
        [0, 1, 1, 1],
        [0, 0, 1, 1])),
    "window-unbounded-left-is-causal": (dict(cu_seqlens_q=a(0, 3), window=(None, 0)), grid(
        [1, 0, 0],
        [1, 1, 0],
        [1, 1, 1])),
    "causal-and-window-right-capped": (dict(cu_seqlens_q=a(0, 3), causal=True, window=(1, 2)), grid(
        [1, 0, 0],
        [1, 1, 0],
        [0, 1, 1])),
    "empty-sequence-and-padding-tokens": (dict(cu_seqlens_q=a(0, 1, 1, 2), total_q=3), grid(
        [1, 0, 0],
        [0, 1, 0],
        [0, 0, 0])),
    "padding-keys-only": (dict(cu_seqlens_q=a(0, 2), causal=True, total_k=3), grid(
        [1, 0, 0],
        [1, 1, 0])),
    "no-sequence": (dict(cu_seqlens_q=a(0), total_q=2), grid([0, 0], [0, 0])),
}


@pytest.mark.parametrize(("kwargs", "expected"), VARLEN_CASES.values(), ids=VARLEN_CASES.keys())
def test_varlen_mask_hand_worked(kwargs, expected):
    assert_array(refmask.varlen_mask(**kwargs), expected, bool)


def test_varlen_mask_huge_window_is_no_window():
    cu = a(0, 3, 5)
    np.testing.assert_array_equal(refmask.varlen_mask(cu, window=(10**30, 10**30)), refmask.varlen_mask(cu))
    np.testing.assert_array_equal(refmask.varlen_mask(cu, window=(10**30, 0)), refmask.varlen_mask(cu, causal=True))


X = np.arange(12).reshape(2, 3, 2)
VALID = grid([1, 0, 1], [0, 1, 1])


def test_unpad_hand_worked():
    packed, indices, cu, max_len = refmask.unpad(X, VALID)
    assert_array(packed, [[0, 1], [4, 5], [8, 9], [10, 11]], X.dtype)  # tokens (0, 0), (0, 2), (1, 1), (1, 2)
    assert_array(indices, [0, 2, 4, 5], np.int64)
    assert_array(cu, [0, 2, 4], np.int32)
    assert type(max_len) is int and max_len == 2


def test_unpad_of_an_empty_batch():
    packed, indices, cu, max_len = refmask.unpad(np.zeros((0, 4, 3), np.float32), np.zeros((0, 4), bool))
    assert packed.shape == (0, 3) and indices.shape == (0,)
    assert_array(cu, [0], np.int32)
    assert max_len == 0


def test_pad_hand_worked():
    out = refmask.pad(np.array([[0, 1], [4, 5], [8, 9], [10, 11]]), a(0, 2, 4, 5), 2, 3)
    assert_array(out, [[[0, 1], [0, 0], [4, 5]], [[0, 0], [8, 9], [10, 11]]], np.int64)


def test_pad_keeps_bool_and_bfloat16():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    flags = refmask.pad(np.array([True, True]), a(1, 2), 1, 3)
    assert_array(flags, [[False, True, True]], bool)
    half = refmask.pad(np.array([1.5], ml_dtypes.bfloat16), a(0), 1, 2)
    assert half.dtype == ml_dtypes.bfloat16 and half.astype(np.float32).tolist() == [[1.5, 0.0]]


@pytest.mark.parametrize(("valid", "expected"), [
    # Hugging Face's generation on a left-padded batch: each row counts its own tokens, padding gets 1.
    (grid([0, 0, 1, 1], [1, 1, 1, 0]), [[1, 1, 0, 1], [0, 1, 2, 1]]),
    (grid([1, 1, 1]), [[0, 1, 2]]),
    (grid([0, 0]), [[1, 1]]),
    (np.zeros((2, 0), bool), np.zeros((2, 0), np.int64)),
])
def test_position_ids_from_padding_hand_worked(valid, expected):
    assert_array(refmask.position_ids_from_padding(valid), expected, np.int64)


@pytest.mark.parametrize(("ids", "expected"), [
    (a([0, 0, 1, 1, 1, -1, -1]), [[0, 1, 0, 1, 2, 0, 1]]),
    (a([5, 5, 5], [1, 2, 2]), [[0, 1, 2], [0, 0, 1]]),
    (a([0, 1, 0]), [[0, 0, 0]]),  # a returning id is a new run
    (np.zeros((1, 0), np.int64), np.zeros((1, 0), np.int64)),
])
def test_positions_in_segments_hand_worked(ids, expected):
    assert_array(refmask.positions_in_segments(ids), expected, np.int64)


@pytest.mark.parametrize(("positions", "expected"), [
    # transformers' docstring: 3 sequences of 2, 3 and 1 tokens packed in one row.
    (a([0, 1, 0, 1, 2, 0]), [[0, 0, 1, 1, 1, 2]]),
    (a([0, 1, 5, 6]), [[0, 0, 1, 1]]),  # any jump starts a sequence, not only a restart at 0
    (a([2, 3, 4, 2, 3]), [[0, 0, 0, 1, 1]]),  # RoBERTa-like positions starting at padding_idx + 1
    (a([1, 1, 0, 1]), [[0, 1, 2, 2]]),  # position_ids_from_padding's left padding: each 1 repeats
    (a([0, 1], [3, 4]), [[0, 0], [0, 0]]),  # ids restart in every row
    (np.zeros((2, 0), np.int64), np.zeros((2, 0), np.int64)),
])
def test_segment_ids_from_positions_hand_worked(positions, expected):
    assert_array(refmask.segment_ids_from_positions(positions), expected, np.int64)


# ---------------------------------------------------------------------------------------------
# properties

lengths_lists = st.lists(st.integers(0, 5), max_size=5)
sides = st.one_of(st.none(), st.integers(0, 6))
windows = st.one_of(st.none(), st.integers(0, 6), st.tuples(sides, sides))


def _block_diagonal(q_lengths, k_lengths, causal, window):
    """varlen_mask's definition assembled from refmask's dense masks: per sequence, bottom-right causal and
    window masks, placed on the diagonal."""
    keep = np.zeros((sum(q_lengths), sum(k_lengths)), bool)
    q0 = k0 = 0
    for lq, lk in zip(q_lengths, k_lengths, strict=True):
        block = np.ones((lq, lk), bool)
        if causal:
            block &= refmask.causal_mask(lq, lk, align="bottom_right")
        if window is not None:
            block &= refmask.sliding_window_mask(lq, lk, window=window, align="bottom_right")
        keep[q0:q0 + lq, k0:k0 + lk] = block
        q0, k0 = q0 + lq, k0 + lk
    return keep


@settings(max_examples=150, deadline=None)
@given(st.data(), lengths_lists, st.booleans(), windows)
def test_varlen_mask_is_a_block_diagonal_of_bottom_right_masks(data, q_lengths, causal, window):
    k_lengths = data.draw(st.lists(st.integers(0, 5), min_size=len(q_lengths), max_size=len(q_lengths)))
    cu_q, cu_k = refmask.cu_seqlens(a(*q_lengths)), refmask.cu_seqlens(a(*k_lengths))
    keep = refmask.varlen_mask(cu_q, cu_k, causal=causal, window=window)
    np.testing.assert_array_equal(keep, _block_diagonal(q_lengths, k_lengths, causal, window))


@settings(max_examples=100, deadline=None)
@given(lengths_lists, st.integers(0, 3))
def test_cu_seqlens_and_segment_ids_round_trip(lengths, padding):
    cu = refmask.cu_seqlens(a(*lengths))
    np.testing.assert_array_equal(cu, np.concatenate([[0], np.cumsum(lengths)]))
    ids = refmask.segment_ids_from_cu_seqlens(cu, total=int(cu[-1]) + padding)
    np.testing.assert_array_equal(ids, [b for b, n in enumerate(lengths) for _ in range(n)] + [-1] * padding)
    np.testing.assert_array_equal(refmask.cu_seqlens_from_segment_ids(ids, num_segments=len(lengths)), cu)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 3), st.integers(0, 5), st.data())
def test_unpad_then_pad_restores_the_valid_tokens(batch, length, data):
    valid = np.array(data.draw(st.lists(st.booleans(), min_size=batch * length, max_size=batch * length)),
                     bool).reshape(batch, length)
    x = np.arange(batch * length * 2, dtype=np.float32).reshape(batch, length, 2) + 1
    packed, indices, cu, max_len = refmask.unpad(x, valid)
    np.testing.assert_array_equal(packed, x[valid])
    np.testing.assert_array_equal(cu, refmask.cu_seqlens(valid.sum(-1)))
    assert max_len == int(valid.sum(-1).max(initial=0))
    np.testing.assert_array_equal(refmask.pad(packed, indices, batch, length), np.where(valid[..., None], x, 0))
    again = refmask.unpad(refmask.pad(packed, indices, batch, length), valid)
    np.testing.assert_array_equal(again[0], packed)


runs = st.lists(st.integers(1, 4), max_size=5)


@settings(max_examples=100, deadline=None)
@given(st.lists(runs, min_size=1, max_size=3).filter(lambda rows: len({sum(r) for r in rows}) == 1))
def test_positions_in_segments_then_segment_ids_from_positions_numbers_the_runs(rows):
    # Each row: runs of lengths r, ids 10, 11, ... (any distinct neighbours); positions restart at every run,
    # so Hugging Face's detection finds exactly the runs, numbered from 0.
    ids = np.array([[10 + k for k, n in enumerate(row) for _ in range(n)] for row in rows], np.int64)
    positions = refmask.positions_in_segments(ids.reshape(len(rows), -1))
    expected = [[t for n in row for t in range(n)] for row in rows]
    np.testing.assert_array_equal(positions, np.array(expected, np.int64).reshape(len(rows), -1))
    runs_index = [[k for k, n in enumerate(row) for _ in range(n)] for row in rows]
    np.testing.assert_array_equal(refmask.segment_ids_from_positions(positions),
                                  np.array(runs_index, np.int64).reshape(len(rows), -1))


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 3), st.integers(0, 6), st.data())
def test_position_ids_from_padding_counts_each_rows_valid_tokens(batch, length, data):
    valid = np.array(data.draw(st.lists(st.booleans(), min_size=batch * length, max_size=batch * length)),
                     bool).reshape(batch, length)
    pos = refmask.position_ids_from_padding(valid)
    for b in range(batch):
        for t in range(length):
            assert pos[b, t] == (valid[b, : t + 1].sum() - 1 if valid[b, t] else 1)


# ---------------------------------------------------------------------------------------------
# every backend, through the public API, bit-identical to the oracle

CALLS: dict[str, tuple[str, tuple[Any, ...], dict[str, Any]]] = {
    "cu_seqlens": ("cu_seqlens", (a(3, 0, 2),), {}),
    "segment_ids_from_cu_seqlens": ("segment_ids_from_cu_seqlens", (a(0, 3, 3, 5),), {}),
    "segment_ids_padded": ("segment_ids_from_cu_seqlens", (a(0, 3, 3, 5),), {"total": 7}),
    "cu_seqlens_from_segment_ids": ("cu_seqlens_from_segment_ids", (a(0, 0, 2, 2, -1),), {}),
    "varlen_regression": ("varlen_mask", (a(0, 1, 3), a(0, 2, 3)), {"causal": True}),
    "varlen_window": ("varlen_mask", (a(0, 3, 3, 7),), {"window": (1, None), "causal": True, "total_k": 9}),
    "unpad": ("unpad", (X.astype(np.float32), VALID), {}),
    "pad": ("pad", (np.arange(8, dtype=np.float32).reshape(4, 2), a(0, 2, 4, 5), 2, 3), {}),
    "position_ids_from_padding": ("position_ids_from_padding", (grid([0, 0, 1, 1], [1, 1, 1, 0]),), {}),
    "positions_in_segments": ("positions_in_segments", (a([0, 0, 1, 1, 1, -1, -1]),), {}),
    "segment_ids_from_positions": ("segment_ids_from_positions", (a([0, 1, 0, 1, 2, 0], [2, 3, 4, 2, 3, 9]),), {}),
}


def _framework_or_skip(backend):
    why = _backends.unavailable_reason(backend)
    if why is not None:
        pytest.skip(why)


def _as_backend_produces(expected, backend):
    """The oracle's result with the dtypes `backend` makes: jax without x64 makes int32 for int64 (JAX's rule)."""
    if isinstance(expected, tuple):
        return tuple(_as_backend_produces(e, backend) for e in expected)
    if backend == "jax" and isinstance(expected, np.ndarray):
        produced = _backends.get_backend("jax").OPS.produced_dtype(expected.dtype.name)
        return expected.astype(produced)
    return expected


def _to_numpy(result):
    if isinstance(result, tuple):
        return tuple(_to_numpy(r) for r in result)
    return result if isinstance(result, int) else np.asarray(_backends.to_numpy(result))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CALLS, ids=list(CALLS))
def test_every_backend_is_bit_identical_to_the_oracle(backend, case):
    _framework_or_skip(backend)
    fn, args, kwargs = CALLS[case]
    result = getattr(refmask, fn)(*(_backends.from_numpy(x, backend) if isinstance(x, np.ndarray) else x
                                    for x in args), backend=backend, **kwargs)
    parts = result if isinstance(result, tuple) else (result,)
    assert all(isinstance(r, int) or _backends.array_backend(r) == backend for r in parts)
    assert_identical(_to_numpy(result), _as_backend_produces(getattr(oracle, fn)(*args, **kwargs), backend), case)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_results_stay_on_the_inputs_framework_for_framework_inputs(backend):
    _framework_or_skip(backend)
    cu = _backends.from_numpy(a(0, 2, 3), backend)
    assert _backends.array_backend(refmask.varlen_mask(cu, causal=True)) == backend
    assert _backends.array_backend(refmask.segment_ids_from_cu_seqlens(cu)) == backend


# ---------------------------------------------------------------------------------------------
# jax.jit: sizes set by values are passed as static ints; without them a traced value is refused by name


@pytest.fixture
def jax():
    _framework_or_skip("jax")
    import jax

    return jax


def test_under_jit_with_static_sizes_results_equal_the_oracles(jax):
    cu_q, cu_k = a(0, 1, 3).astype(np.int32), a(0, 2, 3).astype(np.int32)
    ids = a(0, 0, 2, 2, -1).astype(np.int32)
    packed, indices = np.arange(8, dtype=np.float32).reshape(4, 2), a(0, 2, 4, 5).astype(np.int32)
    jitted = jax.jit(lambda cu_q, cu_k, ids, packed, indices, lengths, valid: (
        refmask.varlen_mask(cu_q, cu_k, causal=True, total_q=3, total_k=3),
        refmask.segment_ids_from_cu_seqlens(cu_k, total=5),
        refmask.cu_seqlens_from_segment_ids(ids, num_segments=4),
        refmask.pad(packed, indices, 2, 3),
        refmask.cu_seqlens(lengths),
        refmask.position_ids_from_padding(valid),
    ))
    lengths = a(3, 0, 2).astype(np.int32)
    got = jitted(cu_q, cu_k, ids, packed, indices, lengths, VALID)
    expected = (
        oracle.varlen_mask(cu_q, cu_k, causal=True),
        oracle.segment_ids_from_cu_seqlens(cu_k, total=5),
        oracle.cu_seqlens_from_segment_ids(ids, num_segments=4),
        oracle.pad(packed, indices, 2, 3),
        oracle.cu_seqlens(lengths),
        oracle.position_ids_from_padding(VALID),
    )
    assert_identical(_to_numpy(tuple(got)), _as_backend_produces(expected, "jax"), "jitted")


@pytest.mark.parametrize(("call", "says"), [
    (lambda cu: refmask.segment_ids_from_cu_seqlens(cu), ("cu_seqlens", "total=")),
    (lambda cu: refmask.varlen_mask(cu), ("cu_seqlens_q", "total_q=")),
    (lambda cu: refmask.varlen_mask(cu, cu, total_q=3), ("cu_seqlens_k", "total_k=")),
    (lambda ids: refmask.cu_seqlens_from_segment_ids(ids), ("segment_ids", "num_segments=")),
    (lambda valid: refmask.unpad(np.zeros((1, 3, 2), np.float32), valid.reshape(1, 3) > 0), ("valid", "outside")),
], ids=["segment-ids-total", "varlen-total-q", "varlen-total-k", "num-segments", "unpad-valid"])
def test_under_jit_a_shape_set_by_traced_values_is_refused_by_name(jax, call, says):
    with pytest.raises(TypeError, match="cannot be read while tracing") as raised:
        jax.jit(call)(np.array([0, 1, 3], np.int32))
    assert all(fragment in str(raised.value) for fragment in says), str(raised.value)
