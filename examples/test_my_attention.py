"""A user's test file: refmask.testing.check_attention holds my_attention.py to the oracle.

Run with `pytest examples/`. The first test is all a user needs for a correct kernel; the others
show what check_attention reports for each classic bug.
"""

import numpy as np
import pytest
from my_attention import (
    attention,
    attention_fill_minus_1e9,
    attention_mask_after_softmax,
    padded_attention,
    padded_attention_broadcast_along_t,
)

from refmask.testing import check_attention


def test_attention_matches_refmask():
    check_attention(attention)  # every mask kind, float32/16/64 and bfloat16, fully_masked="zero"


def test_padded_attention_matches_refmask():
    # A kernel that only takes key padding: adapt refmask's (B, 1, 1, S) mask to its (B, S) one.
    check_attention(lambda q, k, v, mask: padded_attention(q, k, v, mask[:, 0, 0, :]), mask_kinds=["padding"])


def test_mask_applied_after_softmax_is_caught():
    with pytest.raises(AssertionError) as caught:
        check_attention(attention_mask_after_softmax)
    report = str(caught.value)
    assert 'catalogue case "causal-T=S"' in report
    assert "worst at (batch=" in report and "actual" in report and "oracle" in report
    # check_attention reads the kernel's weights (its output for v = identity) to say why:
    assert "not 1: is the mask applied after the softmax?" in report


def test_weights_fn_is_checked_too():
    def weights(q, k, mask):
        # This kernel's weights: its output for v = identity.
        eye = np.broadcast_to(np.eye(k.shape[-2], dtype=k.dtype), (*k.shape[:-1], k.shape[-2]))
        return attention_mask_after_softmax(q, k, eye, mask)

    with pytest.raises(AssertionError, match=r"weights: \d+ of \d+ entries differ"):
        check_attention(attention, weights_fn=weights, dtypes=["float32"])


def test_padding_mask_broadcast_along_t_is_caught():
    def fn(q, k, v, mask):
        return padded_attention_broadcast_along_t(q, k, v, mask[:, 0, 0, :])

    with pytest.raises(AssertionError) as caught:
        check_attention(fn, mask_kinds=["padding"])
    report = str(caught.value)
    assert 'catalogue case "padding-right"' in report
    assert "mask[batch=" in report  # the failing (batch, head)'s mask is drawn, 1 = attend
    assert "a kept key got weight 0: is the mask inverted (True = attend) or broadcast along the wrong axis?" in report


def test_minus_1e9_fill_is_fine_in_float32():
    check_attention(attention_fill_minus_1e9, fully_masked="uniform", dtypes=["float32", "bfloat16"])


def test_minus_1e9_fill_in_float16_is_caught():
    with pytest.raises(AssertionError) as caught:
        check_attention(attention_fill_minus_1e9, fully_masked="uniform", dtypes=["float16"])
    report = str(caught.value)
    assert "dtype float16" in report
    assert "NaN where the oracle has none" in report
    assert "its row is fully masked" in report
