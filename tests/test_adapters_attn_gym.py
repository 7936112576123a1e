"""The attention-gym adapters state refmask's masks: the mask_mods they pick from attn_gym.masks
materialise (torch's create_mask) to the oracle's mask, on the batch or on the stacked row of packed
documents; the score_mod and the sinks merge give the oracle's attention; flex has no CPU backward."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest

from comparisons._base import NotExpressible
from comparisons.cases import Case, all_cases
from comparisons.matrix.frameworks import missing_reason
from refmask import oracle
from refmask.testing import assert_attention_close

_MISSING = missing_reason("attn_gym")
if _MISSING is not None:
    pytest.skip(_MISSING, allow_module_level=True)

import torch  # noqa: E402
from torch.nn.attention.flex_attention import create_mask, flex_attention  # noqa: E402

from comparisons import attn_gym_paths as ag  # noqa: E402


@functools.cache
def _cases() -> dict[str, Case]:
    return {c.id: c for c in all_cases()}


def _stacked_mask(mask: np.ndarray) -> np.ndarray:
    """(B, 1, T, T) -> the (B * T, B * T) mask of the examples end to end: each one's block on the diagonal."""
    b, _, t, _ = mask.shape
    out = np.zeros((b * t, b * t), bool)
    for n in range(b):
        out[n * t:(n + 1) * t, n * t:(n + 1) * t] = mask[n, 0]
    return out


def _materialised(fn, case: Case) -> np.ndarray:
    """create_mask(fn) in the layout the adapter runs the case in: (B, H, T, S), or the stacked row."""
    b, h, t, s = case.shape
    if case.spec.segments is not None:
        return create_mask(fn, 1, 1, b * t, b * s, device="cpu")[0, 0].numpy()
    return create_mask(fn, b, h, t, s, device="cpu").numpy()


def test_mask_mods_state_the_mask():
    """causal_mask is top-left (the rectangular case), generate_sliding_window(w) the causal window,
    generate_prefix_lm_mask(p) the prefix LM, generate_dilated_sliding_window(w, d) the dilated window,
    generate_doc_mask_mod the segments and packed causal documents."""
    stated = []
    for case in _cases().values():
        try:
            fn = ag.mask_mod(case)
        except NotExpressible:
            continue
        stated.append(case.id)
        mask = case.masks.get("top_left", case.mask)
        want = _stacked_mask(mask) if case.spec.segments is not None else np.broadcast_to(mask, case.shape)
        np.testing.assert_array_equal(_materialised(fn, case), want, err_msg=case.id)
    assert {"causal-rectangular", "causal-window", "segment", "varlen-packed", "prefix-lm",
            "dilated-window"} <= set(stated)


def test_dilated_window_is_symmetric_only():
    """generate_dilated_sliding_window(w, d) keeps |i - j| <= w: a one-sided dilated window is not stated."""
    case = _cases()["dilated-window"]
    one_sided = dataclasses.replace(case, spec=dataclasses.replace(case.spec, window=(4, 1)))
    with pytest.raises(NotExpressible, match="symmetric"):
        ag.mask_mod(one_sided)


def _alibi_attention(case: Case, heads: int) -> tuple[np.ndarray, np.ndarray]:
    """(attention-gym's output, the oracle's) on the ALiBi case's inputs widened or cut to `heads` heads."""
    b, _, t, s = case.shape
    rng = np.random.default_rng(heads)
    q, k, v = (rng.standard_normal((b, heads, n, 4)).astype(np.float32) for n in (t, s, s))
    bias = oracle.alibi_bias(heads, t, s)
    variant = dataclasses.replace(case, q=q, k=k, v=v, bias=bias)
    got = ag.mask_mods(variant).output
    assert got is not None
    return got, np.asarray(oracle.attention(q, k, v, case.mask, bias=bias))


def test_alibi_score_mod_is_refmasks_for_a_power_of_two_heads_only():
    """generate_alibi_bias(H) uses the slopes 2^(-8 (h + 1) / H): refmask's alibi_slopes (the paper's rule)
    for H = 4, not for H = 3, where it equals the case's power-of-two variant instead."""
    case = _cases()["alibi"]
    got, want = _alibi_attention(case, 4)
    assert_attention_close(got, want)
    got, want = _alibi_attention(case, 3)
    assert np.abs(got - want).max() > 1e-2
    misread = next(bias for label, bias in case.bias_variants.items() if "2^(-8 (h + 1) / H)" in label)
    assert_attention_close(ag.mask_mods(case).output, oracle.attention(case.q, case.k, case.v, case.mask, bias=misread))


def test_alibi_score_mod_refuses_another_bias():
    case = _cases()["alibi"]
    assert case.bias is not None
    other = dataclasses.replace(case, bias=case.bias * 2)
    with pytest.raises(NotExpressible, match="ALiBi only"):
        ag.mask_mods(other)


def test_packed_causal_doc_is_the_doc_mask():
    """generate_packed_causal_doc_mask_mod (one key interval per query) is the document mask with causal
    inner masks, and refmask's varlen mask of the same cu_seqlens."""
    case = _cases()["varlen-packed"]
    offsets = ag.stacked_offsets(case)
    assert offsets.tolist() == [0, 3, 7, 10]
    got = _materialised(ag.generate_packed_causal_doc_mask_mod(offsets), case)
    np.testing.assert_array_equal(got, _materialised(ag.mask_mod(case), case))
    np.testing.assert_array_equal(got, case.mask[0, 0])
    with pytest.raises(NotExpressible, match="causal packed documents"):
        ag.packed_causal_doc(_cases()["segment"])
    square = _cases()["causal-square"]  # a causal batch, T = S: its examples stacked, one document each
    assert ag.stacked_offsets(square).tolist() == [0, 6, 12, 18, 24]


def test_sliding_window_size_through_conventions():
    """generate_sliding_window(w) is (w, 0): the causal-window case's (2, 0) is w = 2; a look-ahead is not."""
    assert ag.sliding_window_size((2, 0)) == 2
    with pytest.raises(NotExpressible, match=r"\(2, 1\)"):
        ag.sliding_window_size((2, 1))
    with pytest.raises(NotExpressible, match="no padding"):
        ag.mask_mod(_cases()["padding-right"])


def test_softcap_and_sinks_are_the_oracles():
    """generate_tanh_softcap as the score_mod and a sink per head merged in by merge_attention: the
    oracle's attention with both."""
    case = dataclasses.replace(_cases()["softcap"], sinks=np.array([0.5, -1.0], np.float32))
    got = ag.mask_mods(case).output
    want = oracle.attention(case.q, case.k, case.v, case.mask, softcap=case.softcap, sinks=case.sinks)
    assert_attention_close(got, want)


def test_flex_attention_has_no_cpu_backward():
    """Why no path declares "grad": flex_attention refuses CPU inputs that require grad."""
    q = torch.zeros(1, 1, 2, 4, requires_grad=True)
    with pytest.raises(NotImplementedError, match="backward on CPU"):
        flex_attention(q, q, q)
    assert not any("grad" in p.features for p in ag.PATHS)
