"""Bad input: every case raises ValueError or TypeError whose message names the argument, what
came and what was expected (and, for masks, how to get a canonical one)."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

import refmask
from refmask import _backends, oracle

ZEROS_4D = np.zeros((2, 3, 4, 5))
Q = np.zeros((1, 2, 3, 4))
K = np.zeros((1, 2, 6, 4))
V = np.zeros((1, 2, 6, 7))
CONVERTERS = ["True = may attend", "ambiguous", "refmask.from_hf", "refmask.from_additive", "refmask.from_torch_mha"]
BROADCAST = ["does not broadcast", "(T, S)", "(B, 1, 1, S)", "attention_padding_mask"]
POLICIES = "'zero', 'uniform', 'nan'"
ALIGNS = "'top_left', 'bottom_right'"


def case(id_, error, call, *fragments):
    return pytest.param(error, call, fragments, id=id_)


BAD_INPUT = [
    # non-bool masks: 0/1 ints and floats are ambiguous; point to the converters
    case("mask-int01", TypeError, lambda: refmask.masked_softmax(np.zeros((2, 3)), np.ones((2, 3), np.int64)),
         "mask", "got dtype int64", "boolean", *CONVERTERS),
    case("mask-float01", TypeError, lambda: refmask.masked_softmax(np.zeros((2, 3)), np.ones((2, 3), np.float32)),
         "mask", "got dtype float32", "boolean", *CONVERTERS),
    case("attention-mask-int", TypeError, lambda: refmask.attention(Q, K, V, np.ones((3, 6), np.int8)),
         "mask", "int8", *CONVERTERS),
    case("attention-weights-mask-float", TypeError, lambda: refmask.attention_weights(Q, K, np.ones((3, 6))),
         "mask", "float64", *CONVERTERS),
    case("and-masks-int", TypeError, lambda: refmask.and_masks(np.ones(3, bool), np.ones(3, np.int64)),
         "masks[1]", "int64", *CONVERTERS),
    case("or-masks-float", TypeError, lambda: refmask.or_masks(np.ones(3, np.float32)),
         "masks[0]", "float32", *CONVERTERS),
    case("to-additive-int", TypeError, lambda: refmask.to_additive(np.ones((2, 2), np.int64)),
         "mask", "int64", *CONVERTERS),
    case("to-torch-mha-int", TypeError, lambda: refmask.to_torch_mha(np.ones((2, 2), np.int64)),
         "mask", "int64", *CONVERTERS),
    case("kv-valid-int", TypeError, lambda: refmask.attention_padding_mask(np.ones((2, 3), np.int64)),
         "kv_valid", "int64", *CONVERTERS),
    case("q-valid-float", TypeError,
         lambda: refmask.attention_padding_mask(np.ones((2, 3), bool), np.ones((2, 3), np.float32)),
         "q_valid", "float32", *CONVERTERS),
    # masks that do not broadcast to the scores
    case("padding-B-S-against-B-H-T-S", ValueError,
         lambda: refmask.masked_softmax(ZEROS_4D, np.ones((2, 5), bool)),
         "mask of shape (2, 5)", "(2, 3, 4, 5)", *BROADCAST),
    case("attention-padding-B-S", ValueError, lambda: refmask.attention(Q, K, V, np.ones((2, 6), bool)),
         "mask of shape (2, 6)", "(1, 2, 3, 6)", *BROADCAST),
    case("mask-wrong-S", ValueError, lambda: refmask.masked_softmax(np.zeros((3, 5)), np.ones(4, bool)),
         "mask of shape (4,)", "(3, 5)", *BROADCAST),
    case("mask-more-dims-than-scores", ValueError, lambda: refmask.masked_softmax(np.zeros((3, 5)),
                                                                                 np.ones((1, 1, 3, 5), bool)),
         "mask of shape (1, 1, 3, 5)", "(3, 5)", *BROADCAST),
    case("attention-weights-mask", ValueError, lambda: refmask.attention_weights(Q, K, np.ones((3, 5), bool)),
         "mask of shape (3, 5)", "(1, 2, 3, 6)"),
    case("bias-does-not-broadcast", ValueError, lambda: refmask.attention(Q, K, V, bias=np.zeros((3, 5))),
         "bias of shape (3, 5)", "(1, 2, 3, 6)"),
    case("bias-int", TypeError, lambda: refmask.attention(Q, K, V, bias=np.zeros((3, 6), np.int64)),
         "bias", "int64", "floating"),
    # lengths
    case("lengths-negative", ValueError, lambda: refmask.padding_mask([2, -1], 4),
         "lengths", ">= 0", "-1"),
    case("lengths-float", TypeError, lambda: refmask.padding_mask([2.0, 1.5], 4),
         "lengths", "integer", "float64"),
    case("lengths-bool", TypeError, lambda: refmask.padding_mask(np.array([True, False]), 4),
         "lengths", "integer", "bool"),
    case("lengths-too-long", ValueError, lambda: refmask.padding_mask([2, 5], 4),
         "lengths", "max_len=4", "5"),
    case("max-len-negative", ValueError, lambda: refmask.padding_mask([0], -1), "max_len", ">= 0", "-1"),
    case("max-len-float", TypeError, lambda: refmask.padding_mask([0], 3.0), "max_len", "int", "3.0"),
    case("prefix-lengths-too-long", ValueError, lambda: refmask.prefix_lm_mask([1, 6], 5),
         "prefix_lengths", "<= max_len=5", "6"),
    case("prefix-lengths-negative", ValueError, lambda: refmask.prefix_lm_mask([-2], 5),
         "prefix_lengths", ">= 0", "-2"),
    case("prefix-lengths-float", TypeError, lambda: refmask.prefix_lm_mask([1.0], 5),
         "prefix_lengths", "integer", "float64"),
    case("prefix-lengths-2d", ValueError, lambda: refmask.prefix_lm_mask([[1]], 5),
         "prefix_lengths", "(B,)", "(1, 1)"),
    case("q-len-negative", ValueError, lambda: refmask.causal_mask(-1), "q_len", ">= 0", "-1"),
    case("kv-len-negative", ValueError, lambda: refmask.causal_mask(2, -3), "kv_len", ">= 0", "-3"),
    case("q-len-float", TypeError, lambda: refmask.causal_mask(2.0), "q_len", "int", "2.0"),
    case("q-len-bool", TypeError, lambda: refmask.causal_mask(True), "q_len", "int", "True"),
    case("offset-float", TypeError, lambda: refmask.causal_mask(3, offset=0.5), "offset", "int", "0.5"),
    # window and chunk sizes
    case("window-negative", ValueError, lambda: refmask.sliding_window_mask(4, window=-1),
         "window", ">= 0", "-1"),
    case("window-left-negative", ValueError, lambda: refmask.sliding_window_mask(4, window=(-2, 1)),
         "window[0] (left)", ">= 0", "-2"),
    case("window-right-negative", ValueError, lambda: refmask.sliding_window_mask(4, window=(1, -1)),
         "window[1] (right)", ">= 0", "-1"),
    case("window-string", TypeError, lambda: refmask.sliding_window_mask(4, window="2"),
         "window", "(left, right)", "'2'"),
    case("window-triple", TypeError, lambda: refmask.sliding_window_mask(4, window=(1, 2, 3)),
         "window", "(left, right)", "(1, 2, 3)"),
    case("window-float", TypeError, lambda: refmask.sliding_window_mask(4, window=1.5),
         "window", "int", "1.5"),
    case("chunk-size-zero", ValueError, lambda: refmask.chunked_mask(4, chunk_size=0),
         "chunk_size", ">= 1", "0"),
    case("chunk-size-negative", ValueError, lambda: refmask.chunked_mask(4, chunk_size=-3),
         "chunk_size", ">= 1", "-3"),
    case("chunk-size-float", TypeError, lambda: refmask.chunked_mask(4, chunk_size=2.0),
         "chunk_size", "int", "2.0"),
    # unknown choices
    case("fully-masked-softmax", ValueError, lambda: refmask.masked_softmax(np.zeros(3), fully_masked="ones"),
         "fully_masked", POLICIES, "'ones'"),
    case("fully-masked-attention", ValueError, lambda: refmask.attention(Q, K, V, fully_masked=None),
         "fully_masked", POLICIES, "None"),
    case("fully-masked-weights", ValueError, lambda: refmask.attention_weights(Q, K, fully_masked="Zero"),
         "fully_masked", POLICIES, "'Zero'"),
    case("fully-masked-vjp", ValueError,
         lambda: oracle.masked_softmax_vjp(np.zeros(3), None, np.zeros(3), fully_masked="inf"),
         "fully_masked", POLICIES, "'inf'"),
    case("align-causal", ValueError, lambda: refmask.causal_mask(3, align="bottom"), "align", ALIGNS, "'bottom'"),
    case("align-window", ValueError, lambda: refmask.sliding_window_mask(3, window=1, align="left"),
         "align", ALIGNS, "'left'"),
    case("align-chunked", ValueError, lambda: refmask.chunked_mask(3, chunk_size=1, align="top_right"),
         "align", ALIGNS, "'top_right'"),
    case("align-prefix", ValueError, lambda: refmask.prefix_lm_mask([1], 3, align="center"),
         "align", ALIGNS, "'center'"),
    case("side", ValueError, lambda: refmask.padding_mask([1], 3, side="top"), "side", "'right', 'left'", "'top'"),
    case("fill-name", ValueError, lambda: refmask.to_additive(np.ones(2, bool), fill="max"),
         "fill", "'min', '-inf'", "'max'"),
    case("fill-positive", ValueError, lambda: refmask.to_additive(np.ones(2, bool), fill=1e9),
         "fill", "negative", "1000000000.0"),
    case("fill-none", TypeError, lambda: refmask.to_additive(np.ones(2, bool), fill=None),
         "fill", "negative number", "None"),
    case("fill-overflows-float16", ValueError, lambda: refmask.to_additive(np.ones(2, bool), "float16", fill=-1e9),
         "fill=-1000000000.0", "overflows to -inf", "float16", "-65504", 'fill="min"', 'fill="-inf"'),
    case("threshold-name", ValueError, lambda: refmask.from_additive(np.zeros(2), threshold="max"),
         "threshold", "'min'", "'max'"),
    case("threshold-none", TypeError, lambda: refmask.from_additive(np.zeros(2), threshold=None),
         "threshold", "number", "None"),
    case("dtype-int", TypeError, lambda: refmask.to_additive(np.ones(2, bool), "int32"),
         "dtype", "floating", "int32"),
    # attention shapes and dtypes
    case("head-dim-mismatch", ValueError, lambda: refmask.attention(Q, np.zeros((1, 2, 6, 5)), V),
         "q and k", "head dimension D", "(1, 2, 3, 4)", "(1, 2, 6, 5)"),
    case("head-dim-mismatch-weights", ValueError, lambda: refmask.attention_weights(Q, np.zeros((1, 2, 6, 3))),
         "head dimension D", "(1, 2, 3, 4)", "(1, 2, 6, 3)"),
    case("heads-not-a-multiple", ValueError,
         lambda: refmask.attention(np.zeros((1, 3, 3, 4)), K, V),
         "H=3", "H_kv=2", "multiple"),
    case("batch-mismatch", ValueError, lambda: refmask.attention(np.zeros((2, 2, 3, 4)), K, V),
         "batch dimensions", "(2, 2, 3, 4)", "(1, 2, 6, 4)"),
    case("v-shape", ValueError, lambda: refmask.attention(Q, K, np.zeros((1, 2, 5, 7))),
         "v", "(..., H_kv, S, Dv)", "(1, 2, 6, 4)", "(1, 2, 5, 7)"),
    case("q-k-ndim", ValueError, lambda: refmask.attention(Q, np.zeros((6, 4)), np.zeros((6, 7))),
         "same number of dimensions", "(1, 2, 3, 4)", "(6, 4)"),
    case("integer-scores", TypeError, lambda: refmask.masked_softmax(np.zeros((2, 3), np.int64)),
         "scores", "floating", "int64"),
    case("integer-q", TypeError, lambda: refmask.attention(Q.astype(np.int32), K, V),
         "q", "floating", "int32"),
    case("integer-v", TypeError, lambda: refmask.attention(Q, K, V.astype(np.int16)), "v", "floating", "int16"),
    case("mixed-float-dtypes", TypeError, lambda: refmask.attention(Q, K.astype(np.float32), V),
         "q, k, v", "one floating dtype", "k: float32"),
    case("vjp-cotangent-shape", ValueError,
         lambda: oracle.masked_softmax_vjp(np.zeros((2, 3)), None, np.zeros((3, 2))),
         "cotangent", "(2, 3)", "(3, 2)"),
    # mask-from-data arguments
    case("kv-valid-1d", ValueError, lambda: refmask.attention_padding_mask(np.ones(5, bool)),
         "kv_valid", "(B, S)", "(5,)"),
    case("q-valid-batch", ValueError,
         lambda: refmask.attention_padding_mask(np.ones((2, 5), bool), np.ones((3, 4), bool)),
         "q_valid", "kv_valid", "batch", "(3, 4)", "(2, 5)"),
    case("segment-ids-float", TypeError, lambda: refmask.segment_mask(np.zeros((1, 3))),
         "q_segment_ids", "integer", "float64"),
    case("segment-ids-batch", ValueError,
         lambda: refmask.segment_mask(np.zeros((1, 3), int), np.zeros((2, 3), int)),
         "q_segment_ids", "kv_segment_ids", "batch"),
    case("segment-pad-id-float", TypeError, lambda: refmask.segment_mask(np.zeros((1, 3), int), pad_id=0.0),
         "pad_id", "int", "0.0"),
    case("ids-float", TypeError, lambda: refmask.padding_mask_from_ids(np.zeros((1, 3)), 0),
         "ids", "integer", "float64"),
    case("pad-id-float", TypeError, lambda: refmask.padding_mask_from_ids(np.zeros((1, 3), int), 0.0),
         "pad_id", "int", "0.0"),
    case("device", ValueError, lambda: refmask.causal_mask(3, device="cuda"), "device", '"cpu"', "'cuda'"),
    # converters
    case("from-hf-other-values", ValueError, lambda: refmask.from_hf(np.array([[1, 2, 0]])),
         "attention_mask", "1 (attend)", "0 (padding)", "2"),
    case("from-hf-1d", ValueError, lambda: refmask.from_hf(np.array([1, 1, 0])),
         "attention_mask", "(B, S)", "(3,)"),
    case("from-hf-strings", TypeError, lambda: refmask.from_hf(np.array([["1", "0"]])),
         "attention_mask", "0/1", "<U1"),
    case("from-additive-nan", ValueError, lambda: refmask.from_additive(np.array([0.0, np.nan])),
         "bias", "NaN"),
    case("from-additive-int", TypeError, lambda: refmask.from_additive(np.array([0, -1])),
         "bias", "floating", "int64"),
    case("from-torch-mha-3d-without-num-heads", ValueError,
         lambda: refmask.from_torch_mha(np.zeros((4, 2, 2), bool)), "attn_mask", "(4, 2, 2)", "num_heads="),
    case("from-torch-mha-not-a-multiple", ValueError,
         lambda: refmask.from_torch_mha(np.zeros((5, 2, 2), bool), num_heads=2),
         "attn_mask", "(5)", "multiple of num_heads=2"),
    case("from-torch-mha-bias-is-not-a-mask", ValueError,
         lambda: refmask.from_torch_mha(np.array([[0.0, -0.5]], np.float32)),
         "attn_mask", "other than 0 and masking values", "bias=", "bias, not a mask"),
    case("from-torch-mha-minus-1e9-without-threshold", ValueError,
         lambda: refmask.from_torch_mha(np.array([[0.0, -1e9]], np.float32)),
         "attn_mask", "bias, not a mask"),
    case("from-torch-mha-int", TypeError, lambda: refmask.from_torch_mha(np.zeros((2, 2), np.int64)),
         "attn_mask", "bool (True = masked)", "int64"),
    case("from-torch-mha-key-padding-3d", ValueError,
         lambda: refmask.from_torch_mha(None, np.zeros((1, 2, 2), bool)),
         "key_padding_mask", "(N, S)", "(1, 2, 2)"),
    case("from-torch-mha-attn-4d", ValueError, lambda: refmask.from_torch_mha(np.zeros((1, 1, 2, 2), bool)),
         "attn_mask", "(T, S)", "(1, 1, 2, 2)"),
    case("to-torch-mha-4d-without-num-heads", ValueError, lambda: refmask.to_torch_mha(np.ones((2, 2, 3, 3), bool)),
         "num_heads=", "(2, 2, 3, 3)"),
    case("to-torch-mha-3d", ValueError, lambda: refmask.to_torch_mha(np.ones((2, 3, 3), bool)),
         "mask", "(T, S)", "(B, H, T, S)", "(2, 3, 3)"),
    # backends
    case("unknown-backend", ValueError, lambda: refmask.causal_mask(3, backend="tensorflow"),
         "backend", "'numpy', 'jax', 'torch'", "'tensorflow'"),
]


@pytest.mark.parametrize("error, call, fragments", BAD_INPUT)
def test_bad_input_raises_a_clear_error(error, call, fragments):
    with pytest.raises(error) as raised:
        call()
    assert type(raised.value) is error, f"raised {type(raised.value).__name__}, expected {error.__name__}"
    message = str(raised.value)
    missing = [f for f in fragments if f not in message]
    assert not missing, f"message {message!r} lacks {missing}"


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_backend_whose_framework_is_missing_says_how_to_install_it(monkeypatch, backend):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(_backends.importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == backend else real_find_spec(name, *a, **k))
    monkeypatch.delitem(sys.modules, backend, raising=False)  # as if it had never been imported
    monkeypatch.delitem(sys.modules, f"refmask.backends.{backend}", raising=False)  # nor its backend
    with pytest.raises(ImportError) as raised:
        refmask.causal_mask(3, backend=backend)
    message = str(raised.value)
    assert f'backend "{backend}"' in message and "not installed" in message
    assert f'pip install "refmask[{backend}]"' in message
    assert backend not in refmask.installed_backends()
    assert "numpy" in refmask.installed_backends()
