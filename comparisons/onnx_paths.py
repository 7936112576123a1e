"""ONNX's `Attention` operator, each path one node run by the ONNX reference evaluator or onnxruntime.

Conventions to translate (refmask: bool mask, True = may attend, broadcastable to (B, H, T, S)):

- Attention (ai.onnx, opset 23 and later) takes Q (B, H, T, D), K and V (B, H, S, D): refmask's layout.
  attn_mask is broadcast to (B, H, T, S) like NumPy; a bool attn_mask means the same as refmask's
  (True = takes part in attention), a float attn_mask is *added* to the scores.
- is_causal=1 is bottom-right (offset) aligned: query i sees keys j <= i + offset, offset = past_key's
  length when the first keys come as past_key / past_value (a KV cache inside the node), else 0
  (top-left). The scores are scaled, soft-capped (softcap=c: s -> c * tanh(s / c)), then masked.
- nonpad_kv_seqlen (opset 24): per-example counts of valid keys, valid keys first (right padding). With
  it and no past_key, the node is an external cache: is_causal and the windows put query i of example b
  at offset nonpad_kv_seqlen[b] - T + i (the spec's errata of onnx 1.23).
- left_window_size / right_window_size (opset 25): query p = offset + i keeps keys p - left .. p + right,
  -1 = unbounded (refmask.conventions.onnx_window_size).
- qk_matmul_output_mode=3 returns the softmax weights as a fourth output; the adapters read them.
- The reference evaluator computes in NumPy in the inputs' dtype (float16 scores, softmax and product,
  as the spec's default softmax_precision says), where refmask computes in float32 and rounds once.
- The spec and the reference evaluator give a query row whose every key's bias is -inf zero weights
  and a zero output; a finite fill (finfo.min) is just added. onnxruntime's CPU kernel (opsets 23 and
  24) masks with finfo(T).min instead of -inf and zeroes a row whose scores all sit at finfo(T).min,
  and it *overwrites* the scores of the keys past nonpad_kv_seqlen. It has no kernel for an opset-25
  node nor for bfloat16: it runs those as ONNX's function body.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnxruntime  # type: ignore[import-untyped]
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from refmask import conventions
from refmask._dtypes import lowest, numpy_dtype

from ._base import Native, NotExpressible, Path, check_expressible

FRAMEWORK_VERSION = f"onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}"

# onnxruntime's newest CPU Attention kernel (onnxruntime/core/providers/cpu/llm/attention.cc).
ORT_KERNEL_OPSET = 24
_WINDOW_OPSET = 25


@dataclass(frozen=True)
class Node:
    """One Attention node and what it is fed besides Q, K and V: the model's cache key."""

    opset: int
    dtype: str
    mask: str | None = None  # None, or "bool" / the additive mask's dtype name
    past: int = 0  # the first `past` keys go in as past_key / past_value
    nonpad: bool = False  # a nonpad_kv_seqlen input
    attrs: tuple[tuple[str, int | float], ...] = ()


@dataclass(frozen=True)
class Structure:
    """A case's mask stated with Attention's own structure: attributes, cache split, valid lengths."""

    opset: int
    attrs: tuple[tuple[str, int | float], ...]
    past: int = 0
    nonpad: tuple[int, ...] | None = None


# ----------------------------------------------------------------------------------------------
# the model and its runners


def _tensor_type(name: str) -> int:
    """The TensorProto element type of a refmask dtype name."""
    return int(helper.np_dtype_to_tensor_dtype(numpy_dtype(name)))


@functools.cache
def attention_model(node: Node) -> onnx.ModelProto:
    """A one-node model: Attention(Q, K, V[, attn_mask, past_key, past_value, nonpad_kv_seqlen]) with
    qk_matmul_output_mode=3, returning Y and the softmax weights (and the present cache with a past)."""
    t = _tensor_type(node.dtype)
    inputs = [helper.make_tensor_value_info(n, t, None) for n in ("Q", "K", "V")]
    names = ["Q", "K", "V", "", "", "", ""]
    if node.mask is not None:
        names[3] = "attn_mask"
        mask_type = TensorProto.BOOL if node.mask == "bool" else _tensor_type(node.mask)
        inputs.append(helper.make_tensor_value_info("attn_mask", mask_type, None))
    if node.past:
        names[4:6] = ["past_key", "past_value"]
        inputs += [helper.make_tensor_value_info(n, t, None) for n in ("past_key", "past_value")]
    if node.nonpad:
        names[6] = "nonpad_kv_seqlen"
        inputs.append(helper.make_tensor_value_info("nonpad_kv_seqlen", TensorProto.INT64, None))
    while not names[-1]:
        names.pop()
    # onnxruntime's kernel refuses a past_key without the present_key output.
    outputs = ["Y", "present_key", "present_value", "weights"] if node.past else ["Y", "", "", "weights"]
    attributes: dict[str, Any] = {"qk_matmul_output_mode": 3, **dict(node.attrs)}
    attention = helper.make_node("Attention", names, outputs, **attributes)
    graph = helper.make_graph([attention], "attention", inputs,
                              [helper.make_tensor_value_info(n, t, None) for n in outputs if n])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", node.opset)])


@functools.cache
def reference_evaluator(node: Node) -> ReferenceEvaluator:
    """The ONNX reference evaluator (NumPy, in the inputs' dtype) on the node's model."""
    return ReferenceEvaluator(attention_model(node))


@functools.cache
def ort_session(node: Node) -> onnxruntime.InferenceSession:
    """An onnxruntime CPU session on the node's model."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # tiny problems: no thread pool
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(attention_model(node).SerializeToString(), options,
                                        providers=["CPUExecutionProvider"])


def run_node(runner: Callable[[Node], Any], node: Node, case, attn_mask: np.ndarray | None = None,
             nonpad: tuple[int, ...] | None = None) -> Native:
    """Feed the case's q, k, v (and the mask / valid lengths) to the node; (output, weights) back."""
    feeds = {"Q": case.q, "K": case.k[:, :, node.past:], "V": case.v[:, :, node.past:]}
    if attn_mask is not None:
        feeds["attn_mask"] = attn_mask
    if node.past:
        feeds["past_key"], feeds["past_value"] = case.k[:, :, :node.past], case.v[:, :, :node.past]
    if nonpad is not None:
        feeds["nonpad_kv_seqlen"] = np.array(nonpad, np.int64)
    results = runner(node).run(None, feeds)
    return Native(weights=np.asarray(results[-1]), output=np.asarray(results[0]))


def _softcap(case) -> tuple[tuple[str, int | float], ...]:
    """The softcap attribute for a case that soft-caps its scores."""
    return () if case.softcap is None else (("softcap", float(case.softcap)),)


# ----------------------------------------------------------------------------------------------
# masks and structure


def additive_mask(case) -> np.ndarray:
    """The case's mask as a float attn_mask: 0 kept, finfo.min masked, built in case.fill_dtype (else the
    case's dtype) and cast to the case's dtype, as a model in half precision that upcasts does; plus the
    case's score bias (H, T, S), if any (attn_mask is added to the scores, so it carries both)."""
    fill = case.fill_dtype or case.dtype
    mask = np.where(case.mask, 0.0, lowest(fill)).astype(numpy_dtype(fill)).astype(numpy_dtype(case.dtype))
    if case.bias is not None:
        mask = mask + case.bias[None].astype(mask.dtype)
    return mask


def structure(case) -> Structure:
    """The case's mask as Attention states it by structure: is_causal (past_key for a bottom-right
    causal mask), nonpad_kv_seqlen (right padding, or per-example cache offsets) and the windows."""
    check_expressible(
        case, parts={"causal", "window", "kv_lengths", "offset"}, causal=("top_left", "bottom_right", "either"),
        side="right", why="Attention's structure is is_causal, past_key, nonpad_kv_seqlen (valid keys first) "
                          "and windows: no left padding, query lengths or segments")
    spec = case.spec
    _, _, t, s = case.shape
    attrs: dict[str, int | float] = {"is_causal": 1} if spec.causal is not None else {}
    opset, past, nonpad = 23, 0, None
    if spec.kv_lengths is not None or spec.offset is not None:
        if spec.window is not None or (spec.kv_lengths is not None and spec.causal is not None):
            raise NotExpressible("with nonpad_kv_seqlen, is_causal and the windows sit each example's queries at its "
                                 "last valid keys (offset nonpad_kv_seqlen - T): no top-left causal mask or window "
                                 "with right padding")
        # An external cache: query i of example b sits at nonpad_kv_seqlen[b] - T + i.
        nonpad = spec.kv_lengths if spec.offset is None else tuple(o + t for o in spec.offset)
        if max(nonpad) > s:
            raise NotExpressible("the cache offsets leave queries past the last key")
        opset = 24
    elif spec.causal in ("bottom_right", "either") and t != s:
        if t > s:
            raise NotExpressible("a bottom-right causal mask with T > S has no past_key split")
        past = s - t  # the first S - T keys are the cache: is_causal then aligns bottom-right
    if spec.window is not None:
        if past:
            raise NotExpressible("with past_key the window is aligned at the cache's length, not top-left")
        left, right = (-1 if w is None else w for w in spec.window)
        if conventions.onnx_window_size(left, right) != tuple(spec.window):
            raise NotExpressible(f"no left/right_window_size states window={spec.window}")
        attrs |= {"left_window_size": left, "right_window_size": right}
        opset = _WINDOW_OPSET
    return Structure(opset, tuple(attrs.items()) + _softcap(case), past, nonpad)


# ----------------------------------------------------------------------------------------------
# the paths


def _bool_mask(case, runner, opset: int) -> Native:
    """Attention(attn_mask=case.mask) at `opset`, run by `runner`."""
    node = Node(opset, case.dtype, mask="bool", attrs=_softcap(case))
    return run_node(runner, node, case, attn_mask=case.mask)


def _additive_mask(case, runner, opset: int) -> Native:
    """Attention(attn_mask=additive_mask(case)) at `opset`, run by `runner`."""
    node = Node(opset, case.dtype, mask=case.dtype, attrs=_softcap(case))
    return run_node(runner, node, case, attn_mask=additive_mask(case))


def _structure(case, runner, lowest_opset: int = 23) -> Native:
    """Attention with structure(case), at its opset or `lowest_opset` if newer, run by `runner`."""
    plan = structure(case)
    node = Node(max(plan.opset, lowest_opset), case.dtype, past=plan.past, nonpad=plan.nonpad is not None,
                attrs=plan.attrs)
    return run_node(runner, node, case, nonpad=plan.nonpad)


def ref_bool_mask(case) -> Native:
    """ReferenceEvaluator on Attention-23(attn_mask=mask): a bool mask means what refmask's means."""
    return _bool_mask(case, reference_evaluator, 23)


def ref_additive_mask(case) -> Native:
    """ReferenceEvaluator on Attention-23(attn_mask=bias), bias = 0 kept, finfo(fill dtype).min masked."""
    return _additive_mask(case, reference_evaluator, 23)


def ref_structure(case) -> Native:
    """ReferenceEvaluator on Attention with the mask as structure, at the first opset that has it:
    23 is_causal (+ past_key for bottom-right), 24 nonpad_kv_seqlen, 25 left/right_window_size."""
    return _structure(case, reference_evaluator)


def ort_bool_mask(case) -> Native:
    """onnxruntime's CPU kernel on Attention-24(attn_mask=mask), bool, True = attend."""
    return _bool_mask(case, ort_session, ORT_KERNEL_OPSET)


def ort_additive_mask(case) -> Native:
    """onnxruntime's CPU kernel on Attention-24(attn_mask=bias), bias = 0 kept, finfo(fill dtype).min masked."""
    return _additive_mask(case, ort_session, ORT_KERNEL_OPSET)


def ort_structure(case) -> Native:
    """onnxruntime on Attention-24 with the mask as structure (is_causal, past_key, nonpad_kv_seqlen);
    a window needs opset 25, which onnxruntime runs as ONNX's function body (its kernel stops at 24)."""
    return _structure(case, ort_session, lowest_opset=ORT_KERNEL_OPSET)


_FEATURES = frozenset({"softcap"})
_ADDITIVE_FEATURES = frozenset({"softcap", "bias"})
_NO_GRADS = "no autodiff"  # Path.no_grads: the reference evaluator and onnxruntime run forward only

PATHS = [
    Path("onnx.ref-bool-mask", "onnx", "ReferenceEvaluator: Attention-23(bool attn_mask)", ref_bool_mask,
         "bool attn_mask, True = attend (same as refmask); weights from qk_matmul_output_mode=3",
         _FEATURES, no_grads=_NO_GRADS),
    Path("onnx.ref-additive-mask", "onnx", "ReferenceEvaluator: Attention-23(float attn_mask)", ref_additive_mask,
         "float attn_mask: 0 kept, finfo.min masked (in fill_dtype, cast up), plus any score bias; mode-3 weights",
         _ADDITIVE_FEATURES, no_grads=_NO_GRADS),
    Path("onnx.ref-structure", "onnx", "ReferenceEvaluator: Attention(is_causal, past_key, nonpad_kv_seqlen, "
         "windows)", ref_structure, "structure at opset 23 (is_causal, past_key: bottom-right), 24 "
         "(nonpad_kv_seqlen), 25 (left/right_window_size); mode-3 weights", _FEATURES, no_grads=_NO_GRADS),
    Path("onnx.ort-bool-mask", "onnx", "onnxruntime: Attention-24(bool attn_mask)", ort_bool_mask,
         "bool attn_mask, True = attend; CPU kernel; weights from qk_matmul_output_mode=3",
         _FEATURES, no_grads=_NO_GRADS),
    Path("onnx.ort-additive-mask", "onnx", "onnxruntime: Attention-24(float attn_mask)", ort_additive_mask,
         "float attn_mask: 0 kept, finfo.min masked (in fill_dtype, cast up), plus any score bias; CPU kernel; "
         "mode-3 weights", _ADDITIVE_FEATURES, no_grads=_NO_GRADS),
    Path("onnx.ort-structure", "onnx", "onnxruntime: Attention(is_causal, past_key, nonpad_kv_seqlen, windows)",
         ort_structure, "structure at opset 24 on the CPU kernel; windows at opset 25 (run as ONNX's function "
         "body); mode-3 weights", _FEATURES, no_grads=_NO_GRADS),
]
