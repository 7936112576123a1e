"""refmask.conventions: each library's window argument, mapped to refmask's (left, right), gives the mask that
library's documented rule gives. Each rule is written out here as the library states it (an explicit loop over
query i and key j), or copied from its docstring's example grid, and compared with
refmask.sliding_window_mask(..., window=mapped, align=...). jax and its splash attention masks are installed
with the jax extra, so they are also compared with directly."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import refmask
from refmask import _backends, conventions

SHAPES = [(5, 5), (3, 6), (6, 3), (1, 4)]


def rule(t, s, keep):
    """The (t, s) mask of a rule keep(i, j) on query index i and key index j."""
    return np.array([[bool(keep(i, j)) for j in range(s)] for i in range(t)], bool).reshape(t, s)


def grid(*rows):
    return np.array(rows, dtype=np.int64).astype(bool)


def assert_same(actual, expected):
    np.testing.assert_array_equal(actual.astype(int), expected.astype(int))


# ---------------------------------------------------------------------------------------------
# Hugging Face: sliding_window_overlay (kv > q - w) and causal_mask_function (kv <= q)


@pytest.mark.parametrize(("t", "s"), SHAPES)
@pytest.mark.parametrize("w", [1, 2, 4])
def test_hf_sliding_window(t, s, w):
    window = conventions.hf_sliding_window(w)
    assert window == (w - 1, 0)
    prefill = rule(t, s, lambda q, kv: kv > q - w and kv <= q)
    assert_same(refmask.sliding_window_mask(t, s, window=window), prefill)
    # With a cache, the t queries sit at cache positions s - t .. s - 1 (bottom-right).
    cached = rule(t, s, lambda i, kv: kv > (i + s - t) - w and kv <= i + s - t)
    assert_same(refmask.sliding_window_mask(t, s, window=window, align="bottom_right"), cached)


def test_an_hf_window_is_not_refmask_window_of_the_same_int():
    w = 2
    hf = rule(6, 6, lambda q, kv: kv > q - w and kv <= q)
    assert hf.sum(-1).max() == w  # w keys, the query's own included
    assert refmask.sliding_window_mask(6, window=w).sum(-1).max() == 2 * w + 1
    assert_same(refmask.sliding_window_mask(6, window=conventions.hf_sliding_window(w)), hf)


# ---------------------------------------------------------------------------------------------
# attention-gym: generate_sliding_window keeps q - kv <= window_size and q >= kv


@pytest.mark.parametrize(("t", "s"), SHAPES)
@pytest.mark.parametrize("w", [0, 1, 3])
def test_attention_gym_sliding_window(t, s, w):
    window = conventions.attention_gym_sliding_window(w)
    assert window == (w, 0)
    assert_same(refmask.sliding_window_mask(t, s, window=window), rule(t, s, lambda q, kv: q - kv <= w and q >= kv))


# ---------------------------------------------------------------------------------------------
# jax.nn.dot_product_attention(local_window_size=): q <= k + left and q >= k - right, an int w is (w, w)

JAX_WINDOWS = [2, 0, (1, 0), (0, 2), (3, 1), None]


@pytest.mark.parametrize(("t", "s"), SHAPES)
@pytest.mark.parametrize("local_window_size", JAX_WINDOWS, ids=str)
def test_jax_local_window_size(t, s, local_window_size):
    window = conventions.jax_local_window_size(local_window_size)
    if local_window_size is None:
        expected = np.ones((t, s), bool)
    else:
        left, right = (local_window_size,) * 2 if isinstance(local_window_size, int) else local_window_size
        expected = rule(t, s, lambda q, k: q <= k + left and q >= k - right)
    assert_same(refmask.sliding_window_mask(t, s, window=window), expected)


@pytest.mark.parametrize(("t", "s"), [(5, 5), (3, 6)])
@pytest.mark.parametrize("local_window_size", JAX_WINDOWS, ids=str)
def test_jax_local_window_size_against_jax(t, s, local_window_size):
    why = _backends.unavailable_reason("jax")
    if why is not None:
        pytest.skip(why)
    import jax

    # Zero scores give equal weights over the kept keys; v = the identity reads each weight out.
    q, k = np.zeros((1, t, 1, s), np.float32), np.zeros((1, s, 1, s), np.float32)
    v = np.eye(s, dtype=np.float32)[None, :, None, :]
    out = np.asarray(jax.nn.dot_product_attention(q, k, v, local_window_size=local_window_size))[0, :, 0, :]
    window = conventions.jax_local_window_size(local_window_size)
    assert_same(refmask.sliding_window_mask(t, s, window=window), out > 0)


# ---------------------------------------------------------------------------------------------
# splash attention: LocalMask keeps q + offset - left <= kv <= q + offset + right, a None side unbounded

SPLASH_WINDOWS = [(1, 1), (2, 0), (None, 0), (0, None), (None, None), (3, 1)]


@pytest.mark.parametrize(("t", "s"), SHAPES)
@pytest.mark.parametrize("offset", [0, 2, -1])
@pytest.mark.parametrize("window_size", SPLASH_WINDOWS, ids=str)
def test_splash_local_mask(t, s, offset, window_size):
    left, right = window_size
    expected = rule(t, s, lambda q, kv: (left is None or q + offset - left <= kv)
                    and (right is None or kv <= q + offset + right))
    window = conventions.splash_local_mask(window_size)
    assert_same(refmask.sliding_window_mask(t, s, window=window, offset=offset), expected)


@pytest.mark.parametrize(("t", "s", "offset"), [(4, 6, 0), (6, 4, 2), (5, 5, -1)])
@pytest.mark.parametrize("window_size", SPLASH_WINDOWS, ids=str)
def test_splash_local_mask_against_splash(t, s, offset, window_size):
    why = _backends.unavailable_reason("jax")
    if why is not None:
        pytest.skip(why)
    mask_module = pytest.importorskip("jax.experimental.pallas.ops.tpu.splash_attention.splash_attention_mask")
    local = mask_module.LocalMask((t, s), window_size=window_size, offset=offset)
    window = conventions.splash_local_mask(window_size)
    assert_same(refmask.sliding_window_mask(t, s, window=window, offset=offset), np.asarray(local[:, :]))


# ---------------------------------------------------------------------------------------------
# flash-attn: keys in [i + S - T - left, i + S - T + right], a negative side unbounded; causal caps right at 0

FLASH_WINDOWS = [(1, 0), (-1, 1), (2, -1), (-1, -1), (0, 0), (3, 2)]


@pytest.mark.parametrize(("t", "s"), SHAPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window_size", FLASH_WINDOWS, ids=str)
def test_flash_attn_window_size(t, s, causal, window_size):
    left, right = window_size
    right = 0 if causal else right
    expected = rule(t, s, lambda i, j: (left < 0 or i + s - t - left <= j) and (right < 0 or j <= i + s - t + right))
    window = conventions.flash_attn_window_size(window_size, causal=causal)
    assert_same(refmask.sliding_window_mask(t, s, window=window, align="bottom_right"), expected)


def test_flash_attn_window_size_is_varlen_masks_window():
    # flash_attn_varlen_func(window_size=(2, -1), causal=True) on sequences of (q, k) lengths (2, 5) and (3, 3).
    window = conventions.flash_attn_window_size((2, -1), causal=True)
    keep = refmask.varlen_mask(np.array([0, 2, 5]), np.array([0, 5, 8]), window=window)
    blocks = [rule(2, 5, lambda i, j: 3 + i - 2 <= j <= 3 + i), rule(3, 3, lambda i, j: i - 2 <= j <= i)]
    expected = np.zeros((5, 8), bool)
    expected[:2, :5], expected[2:, 5:] = blocks
    assert_same(keep, expected)


# ---------------------------------------------------------------------------------------------
# ONNX Attention (opset 25): p = offset + i keeps p - left <= j <= p + right for each bound that is not -1


def test_onnx_window_size_the_specifications_example():
    # onnx/defs/nn/defs.cc: S_q = 4, S_k = 6, left_window_size = 2, right_window_size = 1, offset = 0.
    expected = grid(
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [0, 1, 1, 1, 1, 0])
    assert_same(refmask.sliding_window_mask(4, 6, window=conventions.onnx_window_size(2, 1)), expected)


@pytest.mark.parametrize(("t", "s"), SHAPES)
@pytest.mark.parametrize(("left", "right"), [(2, 1), (-1, 0), (1, -1), (-1, -1), (0, 0)])
def test_onnx_window_size(t, s, left, right):
    window = conventions.onnx_window_size(left, right)

    def keep(i, j, offset):
        p = offset + i
        return (left == -1 or p - left <= j) and (right == -1 or j <= p + right)

    assert_same(refmask.sliding_window_mask(t, s, window=window), rule(t, s, lambda i, j: keep(i, j, 0)))
    if s >= t:  # a past_key of s - t tokens: offset = past_sequence_length
        assert_same(refmask.sliding_window_mask(t, s, window=window, align="bottom_right"),
                    rule(t, s, lambda i, j: keep(i, j, s - t)))


def test_onnx_window_size_defaults_to_no_window():
    assert conventions.onnx_window_size() == (None, None)


# ---------------------------------------------------------------------------------------------
# xformers: LocalAttentionFromBottomRightMask keeps q - window_left <= k + s <= q + window_right, s = T - S


def test_xformers_local_attention_the_docstrings_examples():
    window = conventions.xformers_local_attention(1, 2)
    assert_same(refmask.sliding_window_mask(4, 4, window=window, align="bottom_right"), grid(
        [1, 1, 1, 0],
        [1, 1, 1, 1],
        [0, 1, 1, 1],
        [0, 0, 1, 1]))
    assert_same(refmask.sliding_window_mask(4, 5, window=window, align="bottom_right"), grid(
        [1, 1, 1, 1, 0],
        [0, 1, 1, 1, 1],
        [0, 0, 1, 1, 1],
        [0, 0, 0, 1, 1]))


@pytest.mark.parametrize(("t", "s"), SHAPES)
@pytest.mark.parametrize(("window_left", "window_right"), list(itertools.product([0, 1, 3], [0, 2])))
def test_xformers_local_attention(t, s, window_left, window_right):
    shift = t - s
    expected = rule(t, s, lambda q, k: q - window_left <= k + shift <= q + window_right)
    window = conventions.xformers_local_attention(window_left, window_right)
    assert_same(refmask.sliding_window_mask(t, s, window=window, align="bottom_right"), expected)


# ---------------------------------------------------------------------------------------------
# arguments a library itself refuses, or that no (left, right) means, are refused naming them


@pytest.mark.parametrize(("call", "error", "says"), [
    (lambda: conventions.hf_sliding_window(0), ValueError, ("sliding_window", ">= 1", "0")),
    (lambda: conventions.hf_sliding_window(4.0), TypeError, ("sliding_window", "int", "4.0")),  # type: ignore[arg-type]
    (lambda: conventions.attention_gym_sliding_window(-1), ValueError, ("window_size", ">= 0", "-1")),
    (lambda: conventions.jax_local_window_size(-1), ValueError, ("local_window_size", ">= 0", "-1")),
    (lambda: conventions.jax_local_window_size((1, -1)), ValueError, ("local_window_size[1] (right)", "-1")),
    (lambda: conventions.jax_local_window_size((1, 2, 3)), TypeError, ("local_window_size", "(left, right)")),  # type: ignore[arg-type]
    (lambda: conventions.splash_local_mask((-1, None)), ValueError, ("window_size[0] (left)", ">= 0")),
    (lambda: conventions.splash_local_mask(3), TypeError, ("window_size", "(left, right)", "3")),  # type: ignore[arg-type]
    (lambda: conventions.flash_attn_window_size(4), TypeError, ("window_size", "(left, right)", "4")),  # type: ignore[arg-type]
    (lambda: conventions.flash_attn_window_size((1.5, 0)), TypeError, ("window_size[0] (left)", "int")),  # type: ignore[arg-type]
    (lambda: conventions.flash_attn_window_size((1, 0), causal=1), TypeError, ("causal", "bool")),  # type: ignore[arg-type]
    (lambda: conventions.onnx_window_size(-2), ValueError, ("left_window_size", ">= -1", "-2")),
    (lambda: conventions.onnx_window_size(0, -5), ValueError, ("right_window_size", ">= -1", "-5")),
    (lambda: conventions.xformers_local_attention(-1, 0), ValueError, ("window_left", ">= 0", "-1")),
    (lambda: conventions.xformers_local_attention(0, None), TypeError, ("window_right", "int", "None")),  # type: ignore[arg-type]
])
def test_bad_arguments_are_refused_naming_them(call, error, says):
    with pytest.raises(error) as raised:
        call()
    assert type(raised.value) is error
    assert all(fragment in str(raised.value) for fragment in says), str(raised.value)
