"""The xformers adapters state refmask's masks: each attn_bias class they build materialises (0 kept,
-inf masked) to the oracle's mask in the layout the class is for, and the matrix's findings (NaN rows,
NaN scores through an additive bias) are xformers' reference's."""

from __future__ import annotations

import functools
import logging

import numpy as np
import pytest

from comparisons._base import NotExpressible
from comparisons.cases import Case, all_cases
from comparisons.matrix.frameworks import missing_reason
from refmask import oracle
from refmask.testing import assert_attention_close

_MISSING = missing_reason("xformers")
if _MISSING is not None:
    pytest.skip(_MISSING, allow_module_level=True)

import torch  # noqa: E402

from comparisons import xformers_paths as xf  # noqa: E402


@functools.cache
def _cases() -> dict[str, Case]:
    return {c.id: c for c in all_cases()}


def _stated(state) -> dict[str, xf.Stated]:
    """Every case that `state` states, with what it built."""
    out = {}
    for case in _cases().values():
        try:
            out[case.id] = state(case)
        except NotExpressible:
            continue
    return out


def _kept(stated: xf.Stated, case: Case) -> np.ndarray:
    """The keep mask (bias == 0) the stated bias materialises for the case's layout."""
    b, h, t, s = case.shape
    if stated.packed:
        keys = b * s if stated.used is None else sum(u.stop - u.start for u in stated.used)
        shape: tuple[int, ...] = (b * t, keys)
    else:
        shape = (b, h, t, s)
    bias = stated.bias.materialize(shape, dtype=torch.float32)
    assert set(torch.unique(bias).tolist()) <= {0.0, float("-inf")}
    return (bias == 0).numpy()


def _packed_mask(mask: np.ndarray, used: list[slice] | None) -> np.ndarray:
    """The (B, 1, T, S) mask laid out as a packed bias: example b's queries against its used keys."""
    b, _, t, s = mask.shape
    used = used or [slice(0, s)] * b
    widths = [u.stop - u.start for u in used]
    out = np.zeros((b * t, sum(widths)), bool)
    start = 0
    for n, (u, w) in enumerate(zip(used, widths, strict=True)):
        out[n * t:(n + 1) * t, start:start + w] = mask[n, 0][:, u]
        # The keys packing leaves out are keys the case masks for every query.
        assert not np.delete(mask[n, 0], np.arange(s)[u], axis=-1).any()
        start += w
    return out


@pytest.mark.parametrize("state, align", [(xf.lower_triangular, "top_left"),
                                          (xf.lower_triangular_bottom_right, "bottom_right"),
                                          (xf.local_attention, None)])
def test_biases_on_the_batch_state_the_mask(state, align):
    """LowerTriangularMask is top-left, LowerTriangularFromBottomRightMask bottom-right (the rectangular
    case tells them apart), LocalAttentionFromBottomRightMask the case's window."""
    stated = _stated(state)
    assert stated
    for case_id, st in stated.items():
        case = _cases()[case_id]
        mask = case.masks.get(align, case.mask)
        np.testing.assert_array_equal(_kept(st, case), np.broadcast_to(mask, case.shape), err_msg=case_id)
    assert "causal-window" in _stated(xf.local_attention) and "sliding-window" in _stated(xf.local_attention)


@pytest.mark.parametrize("state", [xf.block_diagonal, xf.padded_keys])
def test_packed_biases_state_the_mask(state):
    """BlockDiagonal* and the padded-keys biases materialise, in the packed row, each example's mask
    against its keys: documents, key padding, causal blocks and the per-example cache offsets."""
    stated = _stated(state)
    for case_id, st in stated.items():
        case = _cases()[case_id]
        mask = case.masks.get("top_left" if state is xf.block_diagonal else "bottom_right", case.mask)
        np.testing.assert_array_equal(_kept(st, case), _packed_mask(mask, st.used), err_msg=case_id)
    assert {"decode-offset", "padding-right", "fully-masked-batch"} <= set(stated)


def test_which_cases_the_packed_biases_state():
    """The varlen pack takes documents, both paddings and offsets; the padded-keys layout takes right
    padding and offsets but not top-left causal with padding (its causal is bottom-right)."""
    assert {"segment", "varlen-packed", "padding-left", "float16-fills"} <= set(_stated(xf.block_diagonal))
    assert set(_stated(xf.padded_keys)).isdisjoint({"segment", "padding-left", "float16-fills"})
    decode = xf.padded_keys(_cases()["decode-offset"])
    assert type(decode.bias) is xf.attn_bias.BlockDiagonalCausalWithOffsetPaddedKeysMask
    assert decode.bias.k_seqinfo.seqlen_py == [7, 4, 8, 2]  # offset + T keys in use in each 8-key slot


def test_local_attention_window_as_its_docstring_draws_it():
    """LocalAttentionFromBottomRightMask(1, 2) on 4 x 5: xformers' own worked example, and refmask's
    sliding window through conventions.xformers_local_attention, bottom-right."""
    bias = xf.attn_bias.LocalAttentionFromBottomRightMask(window_left=1, window_right=2)
    got = bias.materialize((4, 5)).exp().numpy()
    drawn = np.array([[1, 1, 1, 1, 0], [0, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 1, 1]], np.float32)
    np.testing.assert_array_equal(got, drawn)
    window = xf.local_window((1, 2), 5)
    assert window == (1, 2)
    ours = oracle.sliding_window_mask(4, 5, window=xf.conventions.xformers_local_attention(*window),
                                      align="bottom_right")
    np.testing.assert_array_equal(np.asarray(ours).reshape(4, 5), drawn.astype(bool))


def test_a_query_with_no_key_is_nan():
    """An example with no key in use is an all -inf row: torch's softmax in the reference gives NaN;
    the other examples are the oracle's."""
    case = _cases()["fully-masked-batch"]
    out = xf.bias_path(xf.padded_keys)(case).output
    assert out is not None and np.isnan(out[1]).all()
    keep = [0, 2, 3]
    want = np.asarray(oracle.attention(case.q, case.k, case.v, case.mask))
    assert_attention_close(out[keep], want[keep])


def test_nan_keys_reach_the_additive_bias_but_not_the_pack():
    """Padded keys with NaN scores: the padded-keys bias adds -inf to them and NaN stays NaN. In the
    packed row every query scores every example's keys (the bias masks the other examples'), so one
    NaN key makes every row NaN, the unpadded example's too. The varlen pack leaves those keys out, so
    its output is the oracle's."""
    case = _cases()["nan-at-masked"]
    assert case.spec.kv_lengths is not None and max(case.spec.kv_lengths) == case.shape[-1]
    in_slots = xf.bias_path(xf.padded_keys)(case).output
    assert in_slots is not None and np.isnan(in_slots).all()
    dropped = xf.bias_path(xf.block_diagonal)(case).output
    assert_attention_close(dropped, oracle.attention(case.q, case.k, case.v, case.mask))


def test_fill_dtype_changes_nothing_for_a_minus_inf_fill():
    """materialize(dtype=float16) fills -inf too (log of 0), so building the bias in the case's fill
    dtype gives the float32 bias exactly."""
    bias = xf.attn_bias.LowerTriangularMask()
    half = bias.materialize((3, 3), dtype=torch.float16)
    assert half.dtype == torch.float16
    np.testing.assert_array_equal(half.float().numpy(), bias.materialize((3, 3)).numpy())


def test_import_warning_is_silenced(caplog):
    """xformers warns at import that its C++/CUDA extensions do not load; the adapter's import hides it."""
    logger = logging.getLogger("xformers")
    with caplog.at_level(logging.WARNING, logger="xformers"):
        with xf._quiet_import():
            logger.warning("WARNING[XFORMERS]: xFormers can't load C++/CUDA extensions")
        logger.warning("after")
    assert [r.getMessage() for r in caplog.records] == ["after"]


def test_paths_declare_no_kernel_features_but_the_tensor_bias():
    """The reference has no soft-capping and no sinks; it is not xformers' kernels' backward either. A
    tensor attn_bias is added to the scores, so it carries a score bias; the mask classes do not."""
    assert {p.id: p.features for p in xf.PATHS if p.features} == {"xformers.tensor-bias": {"bias"}}
    assert {p.framework for p in xf.PATHS} == {"xformers"}
