"""A kernel author's test file: a flash-style kernel (flash_attention.py), its lse and its backward,
held to refmask's oracle by check_attention; then what check_attention reports for two classic bugs.

Run with `pytest examples/`.
"""

import pytest
from flash_attention import (
    flash_attention,
    flash_attention_grads,
    flash_attention_grads_nan_dv,
    flash_attention_lse_inf,
    flash_attention_varlen,
    flash_attention_varlen_backward,
)

from refmask.testing import check_attention


def test_flash_attention_out_lse_and_gradients_match_refmask():
    check_attention(flash_attention, lse=True, grads=True, backward_fn=flash_attention_grads)


def test_flash_attention_with_grouped_query_heads():
    check_attention(flash_attention, lse=True, grads=True, backward_fn=flash_attention_grads, grouped_query=True,
                    dtypes=["float32"], examples=20)


def test_flash_attention_varlen_matches_refmask():
    # flash-attn's varlen interface: packed sequences, some empty (seqlen_q = 0 or seqlen_k = 0).
    check_attention(flash_attention_varlen, layout="varlen", lse=True, grads=True,
                    backward_fn=flash_attention_varlen_backward, zero_length=True)


def test_lse_of_an_empty_row_that_is_not_minus_inf_is_caught():
    with pytest.raises(AssertionError) as caught:
        check_attention(flash_attention_lse_inf, lse=True, examples=0)
    report = str(caught.value)
    assert "returns an lse that disagrees with the oracle's" in report
    assert "lse: 6 of 12 entries differ (infinite in one and not the other, or of the other sign)" in report
    assert "actual inf, oracle -inf" in report and "its row is fully masked (no key kept)" in report
    assert "hint: this row has no kept key, so its lse is log(0) = -inf" in report


def test_nan_dv_for_an_empty_row_is_caught():
    with pytest.raises(AssertionError) as caught:
        check_attention(flash_attention, lse=True, grads=True, backward_fn=flash_attention_grads_nan_dv, examples=0)
    report = str(caught.value)
    assert ("`flash_attention_grads_nan_dv` (backward_fn) gives gradients that disagree with the oracle's "
            "(refmask.attention_vjp)") in report
    assert "dv: 24 of 24 entries differ (NaN where the oracle has none, or the reverse)" in report
    assert "worst at (batch=0, head=0, key=0, dim=0): actual nan" in report
    assert "exp(-inf - (-inf)) = NaN there unless it takes them as 0" in report
