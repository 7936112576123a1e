"""The ONNX adapters state refmask's masks: the masks that Attention builds from the structure, the bool and
additive masks they are given, and the behaviours of the reference evaluator and onnxruntime that the
matrix records (zero rows, finite fills, overwritten padding)."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest

from comparisons._base import NotExpressible
from comparisons.cases import Case, all_cases
from comparisons.matrix.frameworks import missing_reason
from refmask import oracle

_MISSING = missing_reason("onnx")
if _MISSING is not None:
    pytest.skip(_MISSING, allow_module_level=True)

from comparisons import onnx_paths  # noqa: E402


@functools.cache
def _cases() -> dict[str, Case]:
    return {c.id: c for c in all_cases()}


def _blank(case: Case) -> Case:
    """The case with q = k = 0: every score is 0, so a row's weights are 1/n on its n kept keys."""
    return dataclasses.replace(case, q=np.zeros_like(case.q), k=np.zeros_like(case.k))


def _weights(native) -> np.ndarray:
    """The Attention node's softmax weights (its qk_matmul_output in mode 3), as float32."""
    assert native.weights is not None
    return np.asarray(native.weights).astype(np.float32)


def _output(native) -> np.ndarray:
    assert native.output is not None
    return np.asarray(native.output)


def _kept(native) -> np.ndarray:
    return _weights(native) > 0


def _structured() -> list[Case]:
    """The cases whose mask Attention can state by structure."""
    chosen = []
    for case in _cases().values():
        try:
            onnx_paths.structure(case)
        except NotExpressible:
            continue
        chosen.append(case)
    return chosen


def test_structure_covers_causal_cache_padding_and_windows():
    """Every structural part Attention has is exercised: past_key, nonpad_kv_seqlen, windows, opsets 23-25."""
    plans = {c.id: onnx_paths.structure(c) for c in _structured()}
    assert plans["causal-square"] == onnx_paths.Structure(23, (("is_causal", 1),))
    assert plans["causal-rectangular"].past == 3  # T=3, S=6: three keys go in as the cache
    assert plans["padding-right"].nonpad == (4, 1, 6, 3) and plans["padding-right"].opset == 24
    assert plans["decode-offset"].nonpad == (7, 4, 8, 2)  # offset + T: is_causal then sits at offset[b]
    assert dict(plans["sliding-window"].attrs) == {"left_window_size": 2, "right_window_size": 1}
    assert plans["causal-window"].opset == 25


@pytest.mark.parametrize("runner", ["reference", "onnxruntime"])
def test_structure_states_the_mask(runner):
    """With zero scores, the kept keys of Attention's weights are the mask it built from the structure:
    the oracle's mask on every case it can state (bottom-right with a past_key cache)."""
    run = onnx_paths.ref_structure if runner == "reference" else onnx_paths.ort_structure
    for case in _structured():
        got = _kept(run(_blank(case)))
        np.testing.assert_array_equal(got, np.broadcast_to(case.mask, case.shape), err_msg=case.id)


def test_is_causal_without_a_cache_is_top_left():
    """Without past_key, is_causal on T < S is the top-left mask, not the bottom-right one."""
    case = _cases()["causal-rectangular"]
    node = onnx_paths.Node(23, case.dtype, attrs=(("is_causal", 1),))
    native = onnx_paths.run_node(onnx_paths.reference_evaluator, node, _blank(case))
    np.testing.assert_array_equal(_kept(native)[0, 0], oracle.causal_mask(3, 6, align="top_left"))


def test_structure_refuses_what_attention_cannot_state():
    """Causal with right padding needs nonpad_kv_seqlen, which moves is_causal's frontier: refused, saying so."""
    with pytest.raises(NotExpressible, match="nonpad_kv_seqlen"):
        onnx_paths.structure(_cases()["float16-fills"])
    for case_id in ("padding-left", "segment", "fully-masked-row", "varlen-packed"):
        with pytest.raises(NotExpressible, match="left padding, query lengths or segments"):
            onnx_paths.structure(_cases()[case_id])


@pytest.mark.parametrize("path", ["ref_bool_mask", "ort_bool_mask"])
def test_bool_mask_reaches_the_node(path):
    """A bool attn_mask keeps exactly refmask's True entries (True = attend in ONNX too)."""
    for case in _cases().values():
        if case.dtype == "bfloat16" and path.startswith("ort"):
            continue  # onnxruntime has no bfloat16 Attention
        got = _kept(getattr(onnx_paths, path)(_blank(case)))
        np.testing.assert_array_equal(got, np.broadcast_to(case.mask, case.shape), err_msg=case.id)


def test_additive_mask_fills_in_the_fill_dtype():
    """0 where kept, finfo(fill dtype).min where masked, then cast to the case's dtype."""
    upcast = _cases()["float16-fills-upcast"]
    bias = onnx_paths.additive_mask(upcast)
    assert bias.dtype == np.float32
    assert set(np.unique(bias)) == {0.0, -65504.0}
    np.testing.assert_array_equal(bias == 0, upcast.mask)
    plain = onnx_paths.additive_mask(_cases()["padding-right"])
    assert set(np.unique(plain)) == {0.0, float(np.finfo(np.float32).min)}


def test_fully_masked_rows_zero_in_both_but_a_finite_fill_only_in_onnxruntime():
    """The reference evaluator zeroes a row whose bias is all -inf (a bool mask) and just adds a finite
    finfo.min fill (a uniform row); onnxruntime zeroes a row all at finfo.min either way."""
    case = _cases()["fully-masked-row"]
    dead = ~np.broadcast_to(case.mask, case.shape).any(axis=-1)
    assert dead.any()
    s = case.shape[-1]
    np.testing.assert_array_equal(_weights(onnx_paths.ref_bool_mask(case))[dead], 0.0)
    np.testing.assert_allclose(_weights(onnx_paths.ref_additive_mask(case))[dead], 1.0 / s, rtol=1e-6)
    np.testing.assert_array_equal(_weights(onnx_paths.ort_bool_mask(case))[dead], 0.0)
    np.testing.assert_array_equal(_weights(onnx_paths.ort_additive_mask(case))[dead], 0.0)


def test_nonpad_kv_seqlen_overwrites_nan_scores_only_in_onnxruntime():
    """The spec adds -inf at padded keys, so a NaN score stays NaN (the reference evaluator); onnxruntime's
    kernel overwrites those scores with finfo.min, so the output is the oracle's."""
    case = _cases()["nan-at-masked"]
    assert np.isnan(_output(onnx_paths.ref_structure(case))).any()
    got = _output(onnx_paths.ort_structure(case))
    np.testing.assert_allclose(got, oracle.attention(case.q, case.k, case.v, case.mask), rtol=1e-5, atol=1e-6)


def test_every_path_declares_softcap_and_the_float_masks_a_bias():
    """Attention has softcap; it has no sinks and no autodiff; a float attn_mask, added to the scores,
    carries a score bias too."""
    features = {p.id: p.features for p in onnx_paths.PATHS}
    assert {i for i, f in features.items() if "bias" in f} == {"onnx.ref-additive-mask", "onnx.ort-additive-mask"}
    assert set().union(*features.values()) == {"softcap", "bias"}
    assert {p.framework for p in onnx_paths.PATHS} == {"onnx"}
