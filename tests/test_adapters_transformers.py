"""Hugging Face transformers' adapters (comparisons/hf_paths.py): masking_utils builds refmask's masks from
the structure (padding, cache, packed position ids, sliding and chunked windows) in each implementation's
convention, and its attention interfaces behave on fully-masked rows and in half precision as the matrix
records."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest

from comparisons._base import NotExpressible
from comparisons.cases import Case, Spec, all_cases
from comparisons.matrix.frameworks import missing_reason
from refmask import conventions, oracle
from refmask._backends import missing_dependency

_MISSING = missing_reason("transformers")
if _MISSING is not None:
    pytest.skip(_MISSING, allow_module_level=True)

import torch  # noqa: E402
from torch.nn.attention.flex_attention import create_mask  # noqa: E402
from transformers import MistralConfig  # noqa: E402
from transformers.cache_utils import DynamicCache  # noqa: E402
from transformers.masking_utils import (  # noqa: E402
    create_causal_mask,
    create_chunked_causal_mask,
    create_sliding_window_causal_mask,
    find_packed_sequence_indices,
)

from comparisons import hf_paths  # noqa: E402


@functools.cache
def _cases() -> dict[str, Case]:
    return {c.id: c for c in all_cases()}


def cases() -> dict[str, Case]:
    """The matrix's cases by id; skipped where the bfloat16 case cannot be built."""
    why = missing_dependency("ml_dtypes", "test", "the bfloat16 case")
    if why is not None:
        pytest.skip(why)
    return _cases()


def _stated() -> list[Case]:
    """The cases whose structure masking_utils can state."""
    chosen = []
    for case in cases().values():
        try:
            hf_paths.model_mask(case, "sdpa")
        except NotExpressible:
            continue
        chosen.append(case)
    return chosen


def _full(case: Case) -> np.ndarray:
    b, _, t, s = case.shape
    return np.broadcast_to(case.mask, (b, 1, t, s))


def _keep(mask, case: Case) -> np.ndarray:
    """What an implementation's mask keeps, (B, 1, T, S) bool: eager's 0 entries, sdpa's True entries
    (None: SDPA's is_causal for a causal module, else everything), a BlockMask's mask_mod."""
    b, _, t, s = case.shape
    if mask is None:
        keep = oracle.causal_mask(t, s) if case.spec.causal is not None else np.ones((t, s), bool)
        return np.broadcast_to(keep, (b, 1, t, s))
    if isinstance(mask, torch.Tensor):
        return (mask == 0).numpy() if mask.is_floating_point() else mask.numpy()
    return create_mask(mask.mask_mod, b, 1, t, s, device="cpu").numpy()


def test_masking_utils_covers_padding_cache_packing_windows_and_segments():
    """Every structural part masking_utils has is exercised by some case, and the rest is refused."""
    stated = {c.id for c in _stated()}
    assert {"causal-square", "causal-rectangular", "padding-left", "padding-right", "segment", "causal-window",
            "varlen-packed", "float16-fills-upcast", "sinks"} <= stated
    assert not stated & {"sliding-window", "fully-masked-row", "decode-offset", "gradients"}


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_masks_state_the_oracle_mask(implementation):
    """eager's zeros and sdpa's True entries are the oracle's mask on every case masking_utils can state."""
    for case in _stated():
        mask, _, _ = hf_paths.model_mask(case, implementation)
        np.testing.assert_array_equal(_keep(mask, case), _full(case), err_msg=case.id)


def test_flex_block_masks_state_the_oracle_mask():
    """The BlockMask's mask_mod is the oracle's mask (a case of each structural part)."""
    for case_id in ("causal-rectangular", "padding-left", "causal-window", "varlen-packed"):
        case = cases()[case_id]
        mask, _, _ = hf_paths.model_block_mask(case)
        np.testing.assert_array_equal(_keep(mask, case), _full(case), err_msg=case_id)


def test_eager_fill_is_the_embeddings_finfo_min():
    """eager_mask fills with finfo(inputs_embeds.dtype).min: -65504 for a float16 model, cast up to float32."""
    upcast = cases()["float16-fills-upcast"]
    assert set(torch.unique(hf_paths.additive_mask(upcast)).tolist()) == {0.0, -65504.0}
    built, _, _ = hf_paths.model_mask(upcast, "eager")
    assert built.dtype == torch.float16
    assert set(torch.unique(built).tolist()) == {0.0, -65504.0}
    plain, _, _ = hf_paths.model_mask(cases()["padding-right"], "eager")
    assert plain.min().item() == torch.finfo(torch.float32).min


def test_plain_causal_sdpa_mask_is_none_and_means_is_causal():
    """Causal T = S without padding: sdpa_mask returns None and the interface's is_causal=True (top-left)
    gives the oracle's causal attention."""
    case = cases()["causal-square"]
    mask, _, _ = hf_paths.model_mask(case, "sdpa")
    assert mask is None
    got = hf_paths.masks_sdpa(case).output
    assert got is not None
    np.testing.assert_allclose(got, oracle.attention(case.q, case.k, case.v, case.mask), rtol=1e-5, atol=1e-6)


def test_packed_documents_are_found_where_position_ids_restart():
    """find_packed_sequence_indices numbers the documents of the packed row; the causal mask it leads to
    is flash-attn's varlen mask of the same cu_seqlens."""
    case = cases()["varlen-packed"]
    segments = np.array(case.spec.segments)
    positions = torch.from_numpy(oracle.positions_in_segments(segments))
    documents = find_packed_sequence_indices(positions)
    assert documents is not None
    np.testing.assert_array_equal(documents.numpy(), segments)
    assert find_packed_sequence_indices(torch.arange(6)[None]) is None  # one document: no packing
    mask, _, _ = hf_paths.model_mask(case, "sdpa")
    cu = oracle.cu_seqlens_from_segment_ids(segments[0])
    assert mask is not None
    np.testing.assert_array_equal(mask[0, 0].numpy(), oracle.varlen_mask(cu, causal=True))


@pytest.mark.parametrize("w", [1, 2, 3, 5])
def test_sliding_window_means_what_conventions_says(w):
    """create_sliding_window_causal_mask with sliding_window=w is sliding_window_mask(window=hf_sliding_window(w))."""
    config = hf_paths.mistral_config("sdpa", 2, 4, w)
    mask = create_sliding_window_causal_mask(config=config, inputs_embeds=torch.zeros(1, 7, 8), attention_mask=None,
                                             cache=None, allow_is_causal_skip=False)
    want = oracle.sliding_window_mask(7, window=conventions.hf_sliding_window(w))
    assert mask is not None
    np.testing.assert_array_equal(mask[0, 0].numpy(), want)
    assert hf_paths.hf_sliding_window(conventions.hf_sliding_window(w), 7) == w


@pytest.mark.parametrize("w", [1, 2])
def test_bidirectional_sliding_window_is_symmetric(w):
    """Without causality the same sliding_window=w keeps |i - j| <= w: window=(w, w), not (w - 1, 0)."""
    keep = np.broadcast_to(oracle.sliding_window_mask(6, window=w), (4, 1, 6, 6))
    case = dataclasses.replace(cases()["sliding-window"], spec=Spec(window=(w, w)), masks={"": keep})
    mask, _, _ = hf_paths.model_mask(case, "sdpa")
    np.testing.assert_array_equal(_keep(mask, case), _full(case))
    with pytest.raises(NotExpressible, match="symmetric"):
        hf_paths.model_mask(cases()["sliding-window"], "sdpa")  # window=(2, 1)


def test_chunks_start_at_each_examples_first_real_token():
    """create_chunked_causal_mask: causal chunks of attention_chunk_size counted from each example's first
    real token (left padding); the README's recipe states it: chunked_mask on position_ids_from_padding,
    and-ed with causal and the padding."""
    config = MistralConfig(hidden_size=8, num_attention_heads=2, num_key_value_heads=2, head_dim=4,
                           num_hidden_layers=1, sliding_window=None)
    config._attn_implementation = "sdpa"
    config.attention_chunk_size = 2  # Llama 4's config attribute, read by create_chunked_causal_mask
    valid = oracle.padding_mask(np.array([5, 4, 2]), 5, side="left")
    mask = create_chunked_causal_mask(config=config, inputs_embeds=torch.zeros(3, 5, 8),
                                      attention_mask=torch.from_numpy(valid.astype(np.int64)), cache=None)
    positions = oracle.position_ids_from_padding(valid)
    want = oracle.and_masks(oracle.chunked_mask(chunk_size=2, q_positions=positions, kv_positions=positions),
                            oracle.causal_mask(5), oracle.attention_padding_mask(valid))
    assert mask is not None
    np.testing.assert_array_equal(mask.numpy(), want)
    # example 1 (one padding token): its real tokens 1, 2 form the first chunk, 3, 4 the second
    np.testing.assert_array_equal(mask[1, 0, 4].numpy(), [False, False, False, True, True])


def test_a_cache_aligns_the_queries_bottom_right():
    """With p tokens in a DynamicCache the T new queries sit at p .. p + T - 1; one query without padding
    needs no mask at all in sdpa (it sees every key)."""
    config = hf_paths.mistral_config("sdpa", 2, 4)
    cache = DynamicCache(ddp_cache_data=[(torch.zeros(1, 2, 5, 4), torch.zeros(1, 2, 5, 4))])
    mask = create_causal_mask(config=config, inputs_embeds=torch.zeros(1, 3, 8), attention_mask=None, cache=cache)
    np.testing.assert_array_equal(mask[0, 0].numpy(), oracle.causal_mask(3, 8, align="bottom_right"))
    one = create_causal_mask(config=config, inputs_embeds=torch.zeros(1, 1, 8), attention_mask=None, cache=cache)
    assert one is None


def test_refusals_say_what_masking_utils_lacks():
    """Padded queries, per-example cache offsets and asymmetric non-causal windows have no masking_utils argument."""
    for case_id, words in (("fully-masked-row", "pads keys only"), ("decode-offset", "one length for the whole batch"),
                           ("sliding-window", "symmetric")):
        with pytest.raises(NotExpressible, match=words):
            hf_paths.model_mask(cases()[case_id], "eager")
    with pytest.raises(NotExpressible, match="sliding_window=w is"):
        hf_paths.hf_sliding_window((2, 1), 6)


def test_fully_masked_rows_are_uniform_in_eager_and_zero_in_sdpa():
    """An example with no valid key: eager's finite fill leaves equal scores (weights 1/S), SDPA's bool
    mask gives 0."""
    case = cases()["fully-masked-batch"]
    s = case.shape[3]
    eager, sdpa = hf_paths.masks_eager(case), hf_paths.masks_sdpa(case)
    assert eager.weights is not None and eager.output is not None and sdpa.output is not None
    np.testing.assert_allclose(eager.weights[1], 1.0 / s, rtol=1e-6)
    np.testing.assert_allclose(eager.output[1], np.broadcast_to(case.v[1].mean(axis=-2, keepdims=True), (2, 6, 4)),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(sdpa.output[1], 0.0)


def test_eager_gradients_flow_through_a_finite_fill():
    """On fully-masked rows the eager weights are uniform, yet softmax(s + finfo.min) still depends on s:
    dq is nonzero there (the oracle's is 0), while dv is the uniform policy's."""
    case = cases()["gradients"]
    native = hf_paths.eager_additive(case)
    assert native.grads is not None
    dq, _, dv = native.grads
    want = oracle.attention_vjp(case.q, case.k, case.v, case.mask, case.d_out, fully_masked="uniform")
    dead = np.asarray(~_full(case).any(axis=-1))[:, 0]  # (B, T): the padded queries
    got, oracle_dq = dq.transpose(0, 2, 1, 3), want.dq.transpose(0, 2, 1, 3)  # (B, T, H, D)
    assert np.abs(got[dead]).min() > 0
    np.testing.assert_allclose(got[~dead], oracle_dq[~dead], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(dv, want.dv, rtol=1e-4, atol=1e-6)


def test_gpt_oss_subtracts_the_max_in_half_precision():
    """GPT-OSS's eager softmax: the logits minus their row max, rounded to float16, then one correctly
    rounded softmax: that extra rounding is the matrix's few-ULP difference."""
    case = cases()["float16-fills"]
    got = hf_paths.gpt_oss_eager_additive(case).weights
    q, k = torch.from_numpy(case.q), torch.from_numpy(case.k)
    scores = (q @ k.transpose(-1, -2)) * 0.5 + hf_paths.additive_mask(case)
    shifted = scores - scores.amax(-1, keepdim=True)  # float16
    np.testing.assert_array_equal(got, torch.softmax(shifted.float(), -1).half().numpy())


def test_each_path_declares_what_its_interface_supports():
    """Gradients through every eager interface and sdpa (flex has no CPU backward), softcap in Gemma 2's
    eager and in flex, sinks in GPT-OSS's eager, a score bias wherever the mask is a float added to the
    scores (eager) or flex's position_bias."""
    features = {p.id: p.features for p in hf_paths.PATHS}
    assert features["hf.sdpa"] == features["hf.masks-sdpa"] == {"grad"}
    assert features["hf.eager"] == {"grad", "bias"}
    assert features["hf.eager-gemma2"] == {"softcap", "bias", "grad"}
    assert features["hf.flex_attention"] == {"softcap", "bias"}
    assert features["hf.eager-gpt_oss"] == {"sinks", "bias", "grad"}
    assert {p.framework for p in hf_paths.PATHS} == {"transformers"}
