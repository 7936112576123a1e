"""Edge numerics and argument decisions every backend must share (decided in refmask/_validate.py).

Scores up to finfo.max, integer arrays of every width, Python ints beyond int64, and the softmax
axis: each backend's answer is the oracle's (or a definition written here with Python ints),
never a wrapped, overflowed or silently moved one.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import refmask
from refmask import oracle
from refmask.testing import assert_attention_close, assert_weights_close, tolerances

BACKENDS = ["numpy", "jax", "torch"]
backends = pytest.mark.parametrize("backend", BACKENDS)
INTEGER_DTYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]


def _framework(backend: str) -> None:
    if backend != "numpy":
        pytest.importorskip(backend)


def _host(x) -> np.ndarray:
    if type(x).__module__.startswith("torch"):
        from refmask.backends import torch as tb

        return tb.to_numpy(x)
    return np.asarray(x)


def _finfo(dtype: str):
    return ml_dtypes.finfo(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.finfo(dtype)


def _array(values, dtype: str) -> np.ndarray:
    return np.asarray(values, np.float64).astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)


# ----------------------------------------------------------------------------------------------
# scores of any finite magnitude


@backends
def test_huge_kept_score_takes_all_the_weight_and_masked_keys_none(backend):
    _framework(backend)
    scores = np.array([[1e30, 0.0, -5.0, 3.0]], np.float32)
    mask = np.array([[True, True, False, True]])
    w = _host(refmask.masked_softmax(scores, mask, backend=backend))
    # exp(0 - 1e30) and exp(3 - 1e30) are 0 in every precision: the weights are exactly one-hot.
    np.testing.assert_array_equal(w, np.array([[1.0, 0.0, 0.0, 0.0]], np.float32))


def _extreme_rows(dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose kept scores span the whole finite range of dtype, beside masked entries that hold
    anything (-inf, +inf, NaN, finfo.max)."""
    big = float(_finfo(dtype).max)
    rows, masks = [], []
    magnitudes = [2.0**e for e in range(0, int(np.log2(big)) + 1, 7)] + [big]
    for v in magnitudes:
        # the largest kept score v, then v - 1, a masked entry, -v (all rounded to dtype)
        rows.append([v, v - 1.0, big, -v])
        masks.append([True, True, False, True])
        rows.append([-v, -v, np.inf, -v])  # all kept equal, however negative: uniform
        masks.append([True, True, False, True])
    rows += [[1e30, -1e30, 1e30, np.nan], [-1e30, -1e30, 1e30, -np.inf], [-big, big, -big, big]]
    masks += [[True, True, True, False], [True, True, False, True], [True, False, True, True]]
    kept = np.abs(np.where(masks, rows, 0.0))
    keep_rows = (kept <= big).all(axis=1)  # 1e30 overflows float16: only the rows dtype can hold
    return _array(np.array(rows)[keep_rows], dtype), np.array(masks)[keep_rows]


@backends
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64"])
def test_scores_up_to_finfo_max_give_the_oracle_weights(backend, dtype):
    _framework(backend)
    scores, mask = _extreme_rows(dtype)
    if backend == "jax" and dtype == "float64":
        import jax

        # float64 needs x64 (without it jax makes float64 input float32, where finfo(float64).max is inf)
        with jax.enable_x64(True):
            actual = _host(refmask.masked_softmax(scores, mask, backend=backend))
    else:
        actual = refmask.masked_softmax(scores, mask, backend=backend)
    expected = oracle.masked_softmax(scores, mask)
    assert_weights_close(actual, expected, mask=mask, table=tolerances.SOFTMAX_MAX_ULP)
    assert (_host(actual)[~mask] == 0).all()


@backends
def test_attention_with_scores_near_1e15_matches_the_oracle(backend):
    _framework(backend)
    # Scores q . k: 9e14, 0 and -9e14 for query 0; the first key is masked for query 1.
    q = np.array([[3e7, 0.0], [1.0, 1.0]], np.float32)
    k = np.array([[3e7, 0.0], [0.0, 0.0], [-3e7, 0.0]], np.float32)
    v = np.array([[1.0, -2.0], [3.0, 4.0], [5.0, 6.0]], np.float32)
    mask = np.array([[True, True, True], [False, True, True]])
    out, w = refmask.attention(q, k, v, mask, scale=1.0, return_weights=True, backend=backend)
    expected_out, expected_w = oracle.attention(q, k, v, mask, scale=1.0, return_weights=True)
    np.testing.assert_array_equal(_host(w)[0], [1.0, 0.0, 0.0])
    assert_weights_close(w, expected_w, mask=mask)
    assert_attention_close(out, expected_out)


# ----------------------------------------------------------------------------------------------
# integer arrays of every dtype


def _lengths_cases():
    for dtype in INTEGER_DTYPES:
        yield dtype, [100, 5, 0], 200
    yield "uint8", [255, 3], 300
    yield "int16", [30000, 7], 40000


@backends
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize(("dtype", "lengths", "max_len"), list(_lengths_cases()))
def test_padding_mask_of_narrow_integer_lengths(backend, side, dtype, lengths, max_len):
    _framework(backend)
    got = _host(refmask.padding_mask(np.array(lengths, dtype), max_len, side=side, backend=backend))
    position = np.arange(max_len)
    expected = np.stack(
        [position < n if side == "right" else position >= max_len - n for n in lengths]
    )
    np.testing.assert_array_equal(got, expected)


@backends
@pytest.mark.parametrize("dtype", INTEGER_DTYPES)
def test_prefix_lm_mask_of_any_integer_dtype(backend, dtype):
    _framework(backend)
    prefix = np.array([3, 0, 5], dtype)
    got = _host(refmask.prefix_lm_mask(prefix, 4, 5, backend=backend))
    np.testing.assert_array_equal(got, oracle.prefix_lm_mask(prefix.astype(np.int64), 4, 5))


@backends
@pytest.mark.parametrize("dtype", INTEGER_DTYPES)
def test_segment_and_id_masks_of_any_integer_dtype(backend, dtype):
    _framework(backend)
    ids = np.array([[1, 1, 2, 0, 0]], dtype)
    got = _host(refmask.segment_mask(ids, pad_id=0, backend=backend))
    same = ids[0, :, None] == ids[0, None, :]
    real = ids[0] != 0
    np.testing.assert_array_equal(got[0, 0], same & real[:, None] & real[None, :])
    np.testing.assert_array_equal(_host(refmask.padding_mask_from_ids(ids, 0, backend=backend)), ids != 0)


@backends
@pytest.mark.parametrize(
    ("dtype", "pad_id"), [("int8", 300), ("int8", -129), ("uint8", -1), ("uint8", 256), ("int64", 2**70)]
)
def test_a_pad_id_outside_the_ids_dtype_matches_nothing(backend, dtype, pad_id):
    _framework(backend)
    info = np.iinfo(dtype)
    # pad_id wrapped into dtype (300 -> 44 in int8, -1 -> 255 in uint8): the ids hold that value.
    wrapped = pad_id % 2**info.bits
    wrapped -= 2**info.bits if info.min < 0 and wrapped > info.max else 0
    # int64: ids jax can hold without x64 (int32); the pad_id still lies far outside int64.
    ids = np.array([[info.min, wrapped, info.max] if info.bits < 64 else [-5, wrapped, 7]], dtype)
    np.testing.assert_array_equal(_host(refmask.padding_mask_from_ids(ids, pad_id, backend=backend)), True)
    np.testing.assert_array_equal(
        _host(refmask.segment_mask(ids, pad_id=pad_id, backend=backend))[0, 0], ids[0, :, None] == ids[0, None, :]
    )


@backends
def test_lengths_beyond_int32_are_refused_not_wrapped(backend):
    _framework(backend)
    # 2**32 + 3 wraps to 3 in int32 (jax without x64): it must be refused as too long, as everywhere.
    with pytest.raises(ValueError, match=r"lengths must be <= max_len=5; got a length of 4294967299"):
        refmask.padding_mask(np.array([2, 2**32 + 3], np.int64), 5, backend=backend)


@backends
def test_ids_beyond_int32_are_exact_or_refused(backend):
    _framework(backend)
    ids = np.array([2**32, 0], np.int64)  # 2**32 wraps to 0 in int32
    if backend == "jax":
        import jax

        if not jax.config.read("jax_enable_x64"):
            with pytest.raises(ValueError, match=r"ids holds 4294967296, outside the range of int32"):
                refmask.padding_mask_from_ids(ids, 0, backend=backend)
            return
    np.testing.assert_array_equal(_host(refmask.padding_mask_from_ids(ids, 0, backend=backend)), [True, False])


# ----------------------------------------------------------------------------------------------
# Python ints beyond int64: the definitions, with exact Python arithmetic


def _shift(align: str, t: int, s: int) -> int:
    return 0 if align == "top_left" else s - t


def _grid(t: int, s: int, keep) -> np.ndarray:
    return np.array([[keep(i, j) for j in range(s)] for i in range(t)], bool).reshape(t, s)


HUGE = [2**31, 2**63, -(2**63), 2**64 + 3, -(2**70) - 1, 10**30, 7]


@backends
@pytest.mark.parametrize("offset", HUGE)
@pytest.mark.parametrize("align", ["top_left", "bottom_right"])
def test_causal_mask_with_huge_offsets(backend, offset, align):
    _framework(backend)
    t, s = 4, 6
    d = offset + _shift(align, t, s)
    got = _host(refmask.causal_mask(t, s, align=align, offset=offset, backend=backend))
    np.testing.assert_array_equal(got, _grid(t, s, lambda i, j: j <= i + d))


@backends
@pytest.mark.parametrize("offset", HUGE)
@pytest.mark.parametrize("window", [2**63, (2**70, 0), (0, 2**64), (2, 2**63 + 1), 1])
def test_sliding_window_mask_with_huge_offsets_and_windows(backend, offset, window):
    _framework(backend)
    t, s = 4, 6
    left, right = (window, window) if isinstance(window, int) else window
    got = _host(refmask.sliding_window_mask(t, s, window=window, offset=offset, backend=backend))
    np.testing.assert_array_equal(got, _grid(t, s, lambda i, j: i + offset - left <= j <= i + offset + right))


@backends
@pytest.mark.parametrize("offset", [*HUGE, 0, -3, 2**70 - 2])
@pytest.mark.parametrize("chunk_size", [1, 3, 2**31 + 1, 2**63, 2**70, 2**70 + 3])
@pytest.mark.parametrize("align", ["top_left", "bottom_right"])
def test_chunked_mask_with_huge_offsets_and_chunks(backend, offset, chunk_size, align):
    _framework(backend)
    t, s = 5, 4
    d = offset + _shift(align, t, s)
    got = _host(refmask.chunked_mask(t, s, chunk_size=chunk_size, align=align, offset=offset, backend=backend))
    np.testing.assert_array_equal(got, _grid(t, s, lambda i, j: (i + d) // chunk_size == j // chunk_size))


@backends
def test_torch_offset_2_63_keeps_everything(backend):
    _framework(backend)
    np.testing.assert_array_equal(_host(refmask.causal_mask(4, 6, offset=2**63, backend=backend)), True)


# ----------------------------------------------------------------------------------------------
# the softmax axis


@backends
@pytest.mark.parametrize("axis", [2, -3, 5])
def test_out_of_range_axis_is_refused(backend, axis):
    _framework(backend)
    scores, mask = np.zeros((2, 3), np.float32), np.ones((2, 3), bool)
    for m in (None, mask):
        with pytest.raises(ValueError, match=rf"axis must be in \[-2, 1\] for scores with 2 dimensions; got {axis}"):
            refmask.masked_softmax(scores, m, axis=axis, backend=backend)


@backends
@pytest.mark.parametrize("axis", [True, 1.0, "0", None])
def test_non_int_axis_is_refused(backend, axis):
    _framework(backend)
    with pytest.raises(TypeError, match=r"axis must be an int; got "):
        refmask.masked_softmax(np.zeros((2, 3), np.float32), np.ones((2, 3), bool), axis=axis, backend=backend)


@backends
@pytest.mark.parametrize("axis", [0, -2, 1, -1])
def test_every_valid_axis_matches_the_oracle(backend, axis):
    _framework(backend)
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((3, 4)).astype(np.float32)
    mask = rng.random((3, 4)) > 0.3
    actual = refmask.masked_softmax(scores, mask, axis=axis, backend=backend)
    expected = oracle.masked_softmax(scores, mask, axis=axis)
    assert_weights_close(actual, expected, mask=mask, table=tolerances.SOFTMAX_MAX_ULP)


def test_masked_softmax_vjp_checks_its_axis():
    scores = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"axis must be in \[-2, 1\]"):
        oracle.masked_softmax_vjp(scores, None, scores, axis=2)
    with pytest.raises(TypeError, match=r"axis must be an int; got bool True"):
        oracle.masked_softmax_vjp(scores, None, scores, axis=True)


@pytest.mark.parametrize("offset", [2**63, -(2**70), 5, -3])
def test_flex_mask_mods_take_python_ints_of_any_size_as_the_constructors_do(offset):
    torch = pytest.importorskip("torch")
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    from refmask.torch import mask_mod

    cases = [
        (mask_mod.causal(4, 6, offset=offset), oracle.causal_mask(4, 6, offset=offset)),
        (
            mask_mod.sliding_window(4, 6, window=(2**64, 1), offset=offset),
            oracle.sliding_window_mask(4, 6, window=(2**64, 1), offset=offset),
        ),
        (
            mask_mod.chunked(4, 6, chunk_size=2**65, offset=offset),
            oracle.chunked_mask(4, 6, chunk_size=2**65, offset=offset),
        ),
        (mask_mod.chunked(4, 6, chunk_size=3, offset=offset), oracle.chunked_mask(4, 6, chunk_size=3, offset=offset)),
    ]
    for mod, expected in cases:
        dense = flex.create_mask(mod, 1, 1, 4, 6, device="cpu")[0, 0]
        assert torch.equal(dense, torch.from_numpy(expected)), mod
