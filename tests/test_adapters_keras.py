"""Keras's adapters (comparisons/keras_paths.py): MultiHeadAttention's masks state refmask's, and its two
computations behave on masked rows as the matrix records."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from comparisons.matrix.frameworks import missing_reason
from refmask import conventions, oracle
from refmask._backends import missing_dependency


def keras_paths():
    """The adapter module; the test is skipped, with the install hint, where keras or jax is missing."""
    why = missing_reason("keras")
    if why is not None:
        pytest.skip(why)
    from comparisons import keras_paths

    return keras_paths


@functools.cache
def _cases():
    from comparisons.cases import all_cases

    return {c.id: c for c in all_cases()}


def case(case_id: str):
    """One of the matrix's cases; skipped where the bfloat16 case cannot be built."""
    why = missing_dependency("ml_dtypes", "test", "the bfloat16 case")
    if why is not None:
        pytest.skip(why)
    return _cases()[case_id]


@pytest.mark.parametrize("case_id", ["causal-rectangular", "padding-left", "fully-masked-row", "causal-window"])
def test_structure_arguments_state_the_mask(case_id):
    """The layer's own mask builder, given use_causal_mask, sliding_window, value_mask and query_mask as
    mha_structure passes them, builds the oracle's mask (T != S: the top-left one, Keras's alignment)."""
    kp = keras_paths()
    import jax.numpy as jnp

    c = case(case_id)
    spec, (b, h, t, s) = c.spec, c.shape
    mha = kp._mha(c, kp.keras_sliding_window(c))
    query, value = jnp.zeros((b, t, h * c.q.shape[-1])), jnp.zeros((b, s, h * c.q.shape[-1]))
    value_mask = None if spec.kv_lengths is None else kp._lengths_mask(spec.kv_lengths, s, spec.side)
    query_mask = None if spec.q_lengths is None else kp._lengths_mask(spec.q_lengths, t, spec.side)
    got = mha._compute_attention_mask(query, value, query_mask=query_mask, value_mask=value_mask,
                                      use_causal_mask=spec.causal is not None)
    want = c.masks.get("top_left", c.mask)[:, 0]
    np.testing.assert_array_equal(np.broadcast_to(np.asarray(got), want.shape), want)


@pytest.mark.parametrize("w", [1, 3])
def test_sliding_window_is_a_symmetric_band_and_hf_with_causal(w):
    """sliding_window=w keeps |i - j| < w: jax's local_window_size=w - 1; and-ed with the causal mask it is
    Hugging Face's sliding_window=w, which the layer's docstring promises (Mistral's window)."""
    kp = keras_paths()
    import jax.numpy as jnp

    mha = kp.identity_mha(1, 2, "float32", w)
    x = jnp.zeros((1, 5, 2))
    band = np.asarray(mha._compute_sliding_window_mask(x, x))[0]
    causal = np.asarray(mha._compute_causal_mask(x, x))[0]
    np.testing.assert_array_equal(band, oracle.sliding_window_mask(5, window=conventions.jax_local_window_size(w - 1)))
    np.testing.assert_array_equal(band & causal, oracle.sliding_window_mask(5, window=conventions.hf_sliding_window(w)))


def test_fast_path_is_dot_product_attention_and_scores_path_is_not(monkeypatch):
    """Without return_attention_scores the layer calls keras.ops.dot_product_attention; with it, not."""
    kp = keras_paths()
    from keras.src import ops  # type: ignore[import-untyped]

    calls = []
    native = ops.dot_product_attention

    def spy(*args, **kwargs):
        calls.append(kwargs.get("mask") is not None)
        return native(*args, **kwargs)

    monkeypatch.setattr(ops, "dot_product_attention", spy)
    c = case("padding-right")
    kp.mha_scores(c)
    assert calls == []
    kp.mha_fast(c)
    assert calls == [True]


def test_fully_masked_item_is_uniform_on_the_fast_path_and_zero_with_scores():
    """attention_mask True = attend; a batch item with no kept key: jax.nn.dot_product_attention (the fast
    path) gives the mean of v, Keras's Softmax zeroes the masked weights (so the output is 0)."""
    kp = keras_paths()
    c = case("fully-masked-batch")  # key lengths 6, 0, 2, 4
    fast, scores = kp.mha_fast(c), kp.mha_scores(c)
    assert fast.output is not None and scores.output is not None and scores.weights is not None
    mean_v = np.broadcast_to(c.v[1].mean(axis=1, keepdims=True), c.v[1].shape)
    np.testing.assert_allclose(fast.output[1], mean_v, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(scores.output[1], 0.0)
    np.testing.assert_array_equal(scores.weights[~np.broadcast_to(c.mask, c.shape)], 0.0)
    np.testing.assert_allclose(scores.weights[[0, 2, 3]].sum(axis=-1), 1.0, rtol=1e-6)


def test_query_mask_argument_is_dropped():
    """MultiHeadAttention.call replaces query_mask by the query tensor's Keras mask, so padded queries
    passed as query_mask= still attend: their rows are not those of a fully-masked row."""
    kp = keras_paths()
    c = case("fully-masked-row")  # query lengths 3, 1, 6, 4; key lengths 2, 4, 6, 5
    out = kp.mha_structure(c).output
    assert out is not None
    key_padding = np.asarray(oracle.padding_mask(np.array(c.spec.kv_lengths), 6))[:, None, None]
    want = oracle.attention(c.q, c.k, c.v, key_padding)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
