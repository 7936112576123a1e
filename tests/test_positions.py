"""Per-example offsets, explicit positions and unbounded windows (the oracle; backends agree bit for bit in
test_cross_backend.py through the catalogue's mask calls, and here for the properties' cases)."""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refmask
from refmask import _backends, oracle

BACKENDS = ("numpy", "jax", "torch")


def _on(backend: str, fn: str, *args, **kwargs) -> np.ndarray:
    if (why := _backends.unavailable_reason(backend)) is not None:
        pytest.skip(why)
    def convert(a):
        return _backends.from_numpy(a, backend) if isinstance(a, np.ndarray) else a

    out = getattr(refmask, fn)(*map(convert, args), **{k: convert(v) for k, v in kwargs.items()}, backend=backend)
    return np.asarray(_backends.to_numpy(out))


# ----------------------------------------------------------------------------------------------
# hand-worked cases (the forms other libraries have and refmask could not express before)


def test_per_example_offsets_are_a_static_kv_cache_with_right_padded_keys():
    # ONNX Attention nonpad_kv_seqlen = (3, 5), T = 2 new queries: offset[b] = nonpad[b] - T.
    keep = oracle.causal_mask(2, 5, offset=np.array([3 - 2, 5 - 2]))
    expected = np.array(
        [
            [[1, 1, 0, 0, 0], [1, 1, 1, 0, 0]],  # example 0: queries at positions 1 and 2
            [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]],  # example 1: queries at positions 3 and 4
        ],
        bool,
    )[:, None]
    np.testing.assert_array_equal(keep, expected)


def test_chunks_anchored_at_the_first_real_token_of_a_left_padded_example():
    # Hugging Face create_chunked_causal_mask, chunk 2, one new query after 2 past tokens, attention_mask
    # [[0, 1, 1]]: the real tokens sit at positions 0 and 1, one chunk, so the query sees both of them.
    valid = np.array([[0, 1, 1]])
    positions = np.cumsum(valid, axis=-1) - 1  # [-1, 0, 1]
    chunk = oracle.chunked_mask(chunk_size=2, q_positions=positions[:, -1:], kv_positions=positions)
    keep = oracle.and_masks(chunk, oracle.from_hf(valid))
    assert keep is not None
    np.testing.assert_array_equal(keep[0, 0, 0, 1:], [True, True])
    # the index-based chunks (what refmask could say before) cut them apart
    np.testing.assert_array_equal(oracle.chunked_mask(1, 3, chunk_size=2, align="bottom_right")[0, 1:], [False, True])


def test_unbounded_window_sides():
    t, s = 4, 6
    np.testing.assert_array_equal(
        oracle.sliding_window_mask(t, s, window=(None, 0), align="bottom_right"),
        oracle.causal_mask(t, s, align="bottom_right"),
    )
    np.testing.assert_array_equal(oracle.sliding_window_mask(t, s, window=(None, None)), np.ones((t, s), bool))
    i, j = np.arange(t)[:, None], np.arange(s)[None, :]
    np.testing.assert_array_equal(oracle.sliding_window_mask(t, s, window=(1, None)), j >= i - 1)
    np.testing.assert_array_equal(oracle.sliding_window_mask(t, s, window=(None, 2), offset=1), j <= i + 1 + 2)


def test_a_context_parallel_shard_is_its_global_positions():
    # the second of two shards of an 8-token causal sequence: queries 4..7 against all 8 keys
    shard = oracle.causal_mask(q_positions=np.arange(4, 8), kv_positions=np.arange(8))
    np.testing.assert_array_equal(shard, oracle.causal_mask(8)[4:])


def test_prefix_lm_with_per_example_offsets():
    keep = oracle.prefix_lm_mask(np.array([2, 0]), 2, 4, offset=np.array([0, 2]))
    expected = np.array(
        [
            [[1, 1, 0, 0], [1, 1, 0, 0]],  # prefix 2; queries at 0 and 1 see the prefix
            [[1, 1, 1, 0], [1, 1, 1, 1]],  # no prefix; queries at 2 and 3: causal
        ],
        bool,
    )[:, None]
    np.testing.assert_array_equal(keep, expected)


# ----------------------------------------------------------------------------------------------
# properties


@st.composite
def position_problems(draw):
    t, s = draw(st.integers(0, 6)), draw(st.integers(0, 8))
    align = draw(st.sampled_from(["top_left", "bottom_right"]))
    offsets = draw(st.lists(st.integers(-10, 10), min_size=1, max_size=3))
    kind = draw(st.sampled_from(["causal", "window", "chunked"]))
    side = st.one_of(st.none(), st.integers(0, 5))
    extra = {
        "causal": {},
        "window": {"window": (draw(side), draw(side))},
        "chunked": {"chunk_size": draw(st.integers(1, 5))},
    }[kind]
    return f"{'sliding_window' if kind == 'window' else kind}_mask", t, s, align, offsets, extra


@settings(max_examples=150, deadline=None)
@given(problem=position_problems())
def test_explicit_positions_and_per_example_offsets_reproduce_the_int_forms(problem):
    fn, t, s, align, offsets, extra = problem
    build = getattr(oracle, fn)
    singles = np.stack([build(t, s, align=align, offset=o, **extra) for o in offsets])[:, None]
    np.testing.assert_array_equal(build(t, s, align=align, offset=np.array(offsets), **extra), singles)
    shift = 0 if align == "top_left" else s - t
    q = np.arange(t)[None, :] + shift + np.array(offsets)[:, None]  # (B, T)
    np.testing.assert_array_equal(build(q_positions=q, kv_positions=np.arange(s), **extra), singles)
    np.testing.assert_array_equal(build(q_positions=q[0], kv_len=s, **extra), singles[0, 0])


@settings(max_examples=60, deadline=None)
@given(t=st.integers(0, 5), s=st.integers(0, 6), prefix=st.lists(st.integers(0, 6), min_size=1, max_size=3),
       offset=st.integers(-4, 4))
def test_prefix_lm_positions_reproduce_the_int_form(t, s, prefix, offset):
    prefix = np.minimum(np.array(prefix), s)
    expected = oracle.prefix_lm_mask(prefix, t, s, offset=offset)
    per_example = oracle.prefix_lm_mask(prefix, t, s, offset=np.full(len(prefix), offset))
    positions = oracle.prefix_lm_mask(prefix, q_positions=np.arange(t) + offset, kv_positions=np.arange(s))
    np.testing.assert_array_equal(per_example, expected)
    np.testing.assert_array_equal(positions, expected)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("fn", "args", "kwargs"),
    [
        ("causal_mask", (3, 5), {"offset": np.array([-1, 0, 2**29 - 8], np.int64)}),
        ("sliding_window_mask", (), {"window": (None, 1), "q_positions": np.array([[3, 9], [0, 1]], np.int32),
                                     "kv_positions": np.array([[0, 2, 4, 6, 8], [0, 0, 1, 1, 2]], np.int32)}),
        ("sliding_window_mask", (2, 3), {"window": (2**40, 0), "offset": np.array([0, 1], np.uint8)}),
        ("chunked_mask", (), {"chunk_size": 2**40, "q_positions": np.array([-3, 0, 5]), "kv_positions": np.arange(4)}),
        ("prefix_lm_mask", (np.array([1, 3]),), {"q_positions": np.array([2, 3]), "kv_positions": np.arange(4)}),
    ],
    ids=["causal-offsets", "window-positions-batched", "window-huge-left", "chunked-huge-chunk", "prefix-positions"],
)
def test_position_forms_are_bit_identical_on_every_backend(backend, fn, args, kwargs):
    expected = getattr(oracle, fn)(*args, **kwargs)
    actual = _on(backend, fn, *args, **kwargs)
    assert actual.dtype == bool and actual.shape == expected.shape
    np.testing.assert_array_equal(actual, expected)


def test_positions_under_jax_jit_are_data():
    if (why := _backends.unavailable_reason("jax")) is not None:
        pytest.skip(why)
    import jax
    import jax.numpy as jnp

    @jax.jit
    def decode_mask(offsets):
        return refmask.causal_mask(1, 6, offset=offsets, backend="jax")

    for offsets in ([0, 5], [3, 1]):  # new values, one compiled program
        expected = oracle.causal_mask(1, 6, offset=np.array(offsets))
        np.testing.assert_array_equal(np.asarray(decode_mask(jnp.array(offsets))), expected)
    assert cast(Any, decode_mask)._cache_size() == 1


# ----------------------------------------------------------------------------------------------
# or_masks and and_masks with None and with nothing


@pytest.mark.parametrize("backend", BACKENDS)
def test_or_masks_none_keeps_everything_and_no_argument_keeps_nothing(backend):
    if (why := _backends.unavailable_reason(backend)) is not None:
        pytest.skip(why)
    causal = oracle.causal_mask(3)
    assert refmask.or_masks(None, causal, backend=backend) is None
    assert refmask.or_masks(causal, None, backend=backend) is None
    nothing = np.asarray(_backends.to_numpy(refmask.or_masks(backend=backend)))
    assert nothing.shape == () and nothing.dtype == bool and not nothing
    assert refmask.and_masks(backend=backend) is None
    np.testing.assert_array_equal(_on(backend, "and_masks", None, causal), causal)


def test_or_masks_none_still_checks_the_other_masks():
    with pytest.raises(TypeError, match="masks\\[1\\]"):
        oracle.or_masks(None, np.ones(3, np.float32))
