"""refmask.testing.strategies: valid masks and problems, small readable counterexamples, lazy import."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from refmask import oracle
from refmask.testing import MASK_KINDS
from refmask.testing import strategies as rst

FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FIND = settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))

SHAPE_OF_KIND = {
    "none": lambda b, t, s: (t, s),
    "causal": lambda b, t, s: (t, s),
    "sliding_window": lambda b, t, s: (t, s),
    "chunked": lambda b, t, s: (t, s),
    "padding": lambda b, t, s: (b, 1, 1, s),
    "query_padding": lambda b, t, s: (b, 1, t, s),
    "segment": lambda b, t, s: (b, 1, t, s),
    "prefix_lm": lambda b, t, s: (b, 1, t, s),
}


@pytest.mark.parametrize("kind", MASK_KINDS)
@FAST
@given(data=st.data())
def test_masks_have_the_constructors_shape(kind, data):
    b, t, s = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5))
    mask = data.draw(rst.masks(kind, q_len=t, kv_len=s, batch=b))
    assert mask.dtype == np.bool_
    assert mask.shape == SHAPE_OF_KIND[kind](b, t, s)


@FAST
@given(rst.masks("causal+padding", q_len=4, kv_len=6, batch=2))
def test_combined_kinds_are_anded(mask):
    assert mask.shape == (2, 1, 4, 6)
    assert not (mask & ~oracle.causal_mask(4, 6, align="bottom_right") & ~oracle.causal_mask(4, 6)).any()


@FAST
@given(rst.masks(["causal", "none"], q_len=st.integers(1, 4)))
def test_a_list_of_kinds_draws_one(mask):
    assert mask.ndim == 2


@FAST
@given(rst.lengths(6, batch=st.integers(1, 4), min_len=1))
def test_lengths_are_in_range(lengths):
    assert lengths.dtype == np.int64 and lengths.ndim == 1 and 1 <= lengths.size <= 4
    assert ((lengths >= 1) & (lengths <= 6)).all()
    oracle.padding_mask(lengths, 6)  # valid for the constructor


@FAST
@given(rst.segment_ids(2, 7, pad_id=-1))
def test_segment_ids_are_packed_then_padded(ids):
    assert ids.shape == (2, 7) and ids.dtype == np.int64
    for row in ids:
        real = row[row != -1]
        assert (row[: real.size] == real).all(), "padding only at the end"
        assert real.size == 0 or (real[0] == 0 and (np.diff(real) >= 0).all() and (np.diff(real) <= 1).all())
        assert real.size == 0 or real.max() <= 2
    oracle.segment_mask(ids, pad_id=-1)


@FAST
@given(rst.attention_cases())
def test_attention_cases_unpack_and_fit_together(case):
    q, k, v, mask, dtype = case
    b, h, t, d = q.shape
    assert k.shape[:2] == (b, h) and k.shape[3] == d and v.shape[:3] == k.shape[:3]
    assert q.dtype == k.dtype == v.dtype and q.dtype.name == dtype
    assert mask.dtype == np.bool_ and mask.ndim == 4
    np.broadcast_to(mask, (b, h, t, k.shape[2]))
    assert set(case.kind.split("+")) <= set(MASK_KINDS)
    assert np.isin(q.astype(np.float64), [-2, -1, 0, 1, 2]).all()
    oracle.attention(q, k, v, mask)


@FAST
@given(rst.attention_cases(kinds=["padding", "segment"], allow_fully_masked=False, dtypes="float16"))
def test_allow_fully_masked_false_keeps_a_key_in_every_row(case):
    q, k, _v, mask, dtype = case
    assert dtype == "float16"
    assert np.broadcast_to(mask, (*q.shape[:-1], k.shape[2])).any(axis=-1).all()


@FAST
@given(rst.attention_cases(grouped_query=True, heads=2))
def test_grouped_query_heads(case):
    assert case.k.shape[1] == 2 and case.q.shape[1] in (2, 4)


def test_lengths_shrink_to_one_unpadded_sequence():
    assert find(rst.lengths(6), lambda x: True, settings=FIND).tolist() == [6]
    assert find(rst.lengths(6), lambda x: (x < 6).any(), settings=FIND).tolist() == [5]


def test_padding_masks_shrink_to_the_smallest_padded_case():
    mask = find(rst.masks("padding"), lambda m: not m.all(), settings=FIND)
    assert mask.shape == (1, 1, 1, 1) and not mask.any()


def test_segment_ids_shrink_to_one_segment():
    assert find(rst.segment_ids(), lambda x: True, settings=FIND).tolist() == [[0]]
    two = find(rst.segment_ids(), lambda x: x.max() > 0, settings=FIND)
    assert two.tolist() == [[0, 1]]


def test_attention_cases_shrink_to_a_small_readable_example():
    def two_keys_and_a_padded_one(case):
        return case.k.shape[2] >= 2 and not case.mask.all()

    case = find(rst.attention_cases(kinds=["padding"]), two_keys_and_a_padded_one, settings=FIND)
    q, k, v, mask, dtype = case
    assert dtype == "float64"  # the first of refmask.testing.cases.DTYPES
    assert q.shape == (1, 1, 1, 1) and k.shape == (1, 1, 2, 1) and v.shape == (1, 1, 2, 1)
    assert not q.any() and not k.any() and not v.any()
    assert mask.tolist() == [[[[True, False]]]]
    text = repr(case)
    assert "padding(kv_lengths=[1], side='right') B=1 H=1 H_kv=1 T=1 S=2 D=1 Dv=1" in text
    assert "q=[[[[0]]]], k=[[[[0], [0]]]], v=[[[[0], [0]]]], mask(1 = attend)=[[[[1, 0]]]]" in text


def test_bad_arguments():
    with pytest.raises(ValueError, match="mask kind must be one of"):
        rst.masks("diagonal")
    with pytest.raises(ValueError, match="mask kind must be one of"):
        rst.attention_cases(kinds=["causal+diagonal"])
    with pytest.raises(ValueError, match="dtypes must be among"):
        rst.attention_cases(dtypes=["int8"])
    with pytest.raises(ValueError, match="max_segments must be >= 1"):
        rst.segment_ids(max_segments=0)


def test_importing_refmask_testing_does_not_import_hypothesis():
    code = (
        "import sys\n"
        "import refmask.testing\n"
        "from refmask.testing import assert_weights_close, check_attention, cases, tolerances\n"
        "assert 'hypothesis' not in sys.modules, 'refmask.testing imported hypothesis'\n"
        "from refmask.testing import strategies\n"
        "assert 'hypothesis' in sys.modules and strategies.masks\n"
        "assert refmask.testing.strategies is strategies\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
