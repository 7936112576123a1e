"""Bad input, one table for every backend.

Each case is one call written once with NumPy inputs; it runs on numpy, jax and torch (inputs
converted with refmask._backends.from_numpy, backend= passed) and must raise refmask's own
ValueError or TypeError:

- the class is exactly ValueError / TypeError (or a refmask subclass of the expected one);
- the frame that raised it lies inside the refmask package, so an error from deep inside NumPy, jax
  or torch cannot pass, whatever its message says;
- the message names the argument, what came and what was expected (`says` fragments; a tuple of
  fragments means any one of them);
- a jax or torch message is the oracle's, word for word, unless the case says the backends differ
  (devices).

jax runs with x64 enabled inside each case, so int64 and float64 inputs keep their dtype and the
message can name it. The end of the file holds the calls that are *accepted* and whose meaning must
still be pinned down on every backend (dtype spellings, the square 2-D mask of to_torch_mha, torch
tensors given to the numpy and jax backends).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import refmask
from harness.environments import jax_x64
from refmask import _backends, oracle

BACKENDS = ("numpy", "jax", "torch")
FRAMEWORKS = ("jax", "torch")
REFMASK_DIR = Path(refmask.__file__).resolve().parent


# ----------------------------------------------------------------------------------------------
# the case format


@dataclass(frozen=True)
class Lazy:
    """An argument built when the case runs (framework tensors, a function imported on demand)."""

    make: Callable[[], Any]


@dataclass(frozen=True)
class Call:
    fn: str | Callable[..., Any]  # a refmask function name, "module:attr", or a callable
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    takes_backend: bool = True  # pass backend=<the backend the case runs on>
    convert: bool = True  # NumPy arguments become arrays of that backend


def call(fn: str, *args: Any, **kwargs: Any) -> Call:
    """refmask.<fn>(*args, **kwargs, backend=...), NumPy arguments converted to the backend's arrays."""
    return Call(fn, args, kwargs)


def numpy_args(fn: str, *args: Any, **kwargs: Any) -> Call:
    """refmask.<fn>(*args, **kwargs, backend=...), NumPy arguments passed as they are (every backend
    accepts them; used for dtypes no framework has, such as strings)."""
    return Call(fn, args, kwargs, convert=False)


def plain(fn: str | Callable[..., Any], *args: Any, **kwargs: Any) -> Call:
    """fn(*args, **kwargs), no backend=, no conversion (refmask.testing, the oracle's internals)."""
    return Call(fn, args, kwargs, takes_backend=False, convert=False)


@dataclass(frozen=True)
class Bad:
    id: str
    error: type[Exception]
    call: Call
    says: tuple[str | tuple[str, ...], ...]
    on: tuple[str, ...] = BACKENDS
    same_message: bool = True
    unavailable: Callable[[str], str | None] | None = field(default=None, compare=False)


def case(id_: str, error: type[Exception], call_: Call, *says: str | tuple[str, ...], on: tuple[str, ...] = BACKENDS,
         same_message: bool = True, unavailable: Callable[[str], str | None] | None = None) -> Bad:
    return Bad(id_, error, call_, says, on, same_message, unavailable)


# ----------------------------------------------------------------------------------------------
# inputs

F32 = np.float32
S23 = np.zeros((2, 3), F32)
S4D = np.zeros((2, 3, 4, 5), F32)
Q = np.zeros((1, 2, 3, 4), F32)
K = np.zeros((1, 2, 6, 4), F32)
V = np.zeros((1, 2, 6, 7), F32)
B23 = np.ones((2, 3), bool)
B3 = np.ones(3, bool)
HF_MASK = np.array([[1, 1, 0], [1, 0, 0]])  # int64 (B, S), 1 = real token: a Hugging Face attention_mask
FLAX_MASK = np.array([[1, 1, 0], [1, 0, 0]], F32)  # float 1/0, 1 = attend: Flax's make_attention_mask
ADDITIVE = np.array([[0, 0, -1e9], [0, np.finfo(F32).min, -np.inf]], F32)  # 0 = kept, very negative = masked
LENGTHS = np.array([3, 1])
SEGMENTS = np.array([[0, 0, 1]])
IDS = np.array([[5, 7, 0]])
WEIGHTS = np.full((1, 1, 2, 2), 0.5, F32)

CONVERTERS = ("refmask.from_hf", "refmask.from_additive", "refmask.from_torch_mha")
BROADCAST = ("does not broadcast", "(T, S)", "(B, 1, 1, S)", "attention_padding_mask")
POLICIES = "'zero', 'uniform', 'nan'"
ALIGNS = "'top_left', 'bottom_right'"
AN_ARRAY = ("array", "tensor")
AN_INT = ("int", "integer")
A_BOOL = ("bool",)
NON_NEGATIVE = (">= 0", "non-negative", "nonnegative", "not negative")
NAN = ("nan", "NaN")
STRINGS = ("<U1", "str32")  # the spelling and the name of NumPy's 1-character string dtype
ZERO_D = ("0-d", "()", "scalar", "0 dimensions")
AT_LEAST_1D = ("at least 1", "1-D", ">= 1", "one axis", "1 dimension", "out of bounds")
VALID_DTYPE_NAMES = ("'float16'", "'bfloat16'", "'float32'", "'float64'")


def _torch(make: Callable[[Any], Any]) -> Lazy:
    """An argument made with torch (the case is skipped where torch is not installed)."""
    return Lazy(lambda: make(pytest.importorskip("torch")))


def _jax_numpy(make: Callable[[Any], Any]) -> Lazy:
    """An argument made with jax.numpy (the case is skipped where jax is not installed)."""
    return Lazy(lambda: make(pytest.importorskip("jax.numpy")))


def _torch_has(kind: str) -> Callable[[str], str | None]:
    def reason(backend: str) -> str | None:
        if backend != "torch":
            return None
        torch = importlib.import_module("torch")
        available = {"cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available}[kind]()
        return f"torch has a {kind} device here, so device={kind!r} is valid" if available else None

    return reason


def _jax_has(platform: str) -> Callable[[str], str | None]:
    def reason(backend: str) -> str | None:
        if backend != "jax":
            return None
        jax = importlib.import_module("jax")
        try:
            present = bool(jax.devices(platform))
        except RuntimeError:
            present = False
        return f"jax has a {platform} device here, so device={platform!r} is valid" if present else None

    return reason


def _has_accelerator(backend: str) -> str | None:
    return (_torch_has("cuda")(backend) if backend == "torch" else
            _jax_has("gpu")(backend) if backend == "jax" else None)


def _identity_attention(q, k, v, mask):
    return refmask.attention(q, k, v, mask)


# ----------------------------------------------------------------------------------------------
# the table

NON_BOOL_MASKS = [
    case("mask-int01-hf-shape", TypeError, call("masked_softmax", S23, HF_MASK),
         "mask", "got dtype int64", "boolean", "refmask.from_hf"),
    case("mask-int01-hf-against-4d-scores", TypeError,
         call("masked_softmax", S4D, np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])),
         "mask", "int64", "refmask.from_hf"),
    case("mask-float01-flax", TypeError, call("masked_softmax", S23, FLAX_MASK),
         "mask", "got dtype float32", "boolean", "refmask.from_multiplicative"),
    case("mask-float-additive", TypeError, call("masked_softmax", S23, ADDITIVE),
         "mask", "float32", "refmask.from_additive"),
    case("mask-float-additive-float64", TypeError, call("masked_softmax", S23, ADDITIVE.astype(np.float64)),
         "mask", "float64", "refmask.from_additive"),
    case("mask-int01-3d", TypeError, call("masked_softmax", S4D, np.ones((1, 4, 5), np.int64)),
         "mask", "int64", "refmask.from_multiplicative", "refmask.from_torch_mha"),
    case("mask-uint8-3d", TypeError, call("masked_softmax", S4D, np.zeros((3, 4, 5), np.uint8)),
         "mask", "uint8", "refmask.from_torch_mha"),
    case("mask-int-other-values", TypeError, call("masked_softmax", S23, np.array([[2, 0, 1], [0, 1, 1]])),
         "mask", "int64", "boolean", *CONVERTERS),
    case("attention-mask-int8", TypeError, call("attention", Q, K, V, np.ones((3, 6), np.int8)),
         "mask", "int8", "refmask.from_multiplicative"),
    case("attention-mask-additive", TypeError,
         call("attention", Q, K, V, np.where(oracle.causal_mask(3, 6), 0, -np.inf).astype(F32)),
         "mask", "float32", "refmask.from_additive"),
    case("attention-weights-mask-float01", TypeError, call("attention_weights", Q, K, np.ones((3, 6), F32)),
         "mask", "float32", "refmask.from_multiplicative"),
    case("attention-weights-mask-additive-min", TypeError,
         call("attention_weights", Q, K, np.where(oracle.causal_mask(3, 6), 0, np.finfo(F32).min).astype(F32)),
         "mask", "float32", "refmask.from_additive"),
    case("and-masks-int01", TypeError, call("and_masks", B3, np.ones((1, 3), np.int64)),
         "masks[1]", "int64", "refmask.from_multiplicative"),
    case("and-masks-lengths", TypeError, call("and_masks", B3, LENGTHS),
         "masks[1]", "int64", "refmask.padding_mask"),
    case("or-masks-float", TypeError, call("or_masks", np.ones(3, F32)),
         "masks[0]", "float32", "refmask.from_multiplicative"),
    case("or-masks-additive-after-none", TypeError, call("or_masks", None, B3, np.array([0, -np.inf, 0], F32)),
         "masks[2]", "float32", "refmask.from_additive"),
    case("to-additive-int", TypeError, call("to_additive", HF_MASK),
         "mask", "int64", "refmask.from_hf"),
    case("to-additive-float01", TypeError, call("to_additive", FLAX_MASK),
         "mask", "float32", "refmask.from_multiplicative"),
    case("to-torch-mha-int", TypeError, call("to_torch_mha", np.ones((2, 2), np.int64)),
         "mask", "int64", "boolean"),
    case("to-torch-mha-additive", TypeError, call("to_torch_mha", ADDITIVE),
         "mask", "float32", "refmask.from_additive"),
    case("kv-valid-int", TypeError, call("attention_padding_mask", HF_MASK),
         "kv_valid", "int64", "boolean"),
    case("q-valid-float", TypeError, call("attention_padding_mask", B23, FLAX_MASK),
         "q_valid", "float32", "boolean"),
    case("kv-valid-lengths", TypeError, call("attention_padding_mask", LENGTHS),
         "kv_valid", "int64", "padding_mask", "max_len"),
    case("mask-strings", TypeError, numpy_args("masked_softmax", S23, np.array([["1", "0", "1"]] * 2)),
         "mask", STRINGS, "boolean"),
]

BROADCASTING = [
    case("padding-B-S-against-B-H-T-S", ValueError, call("masked_softmax", S4D, np.ones((2, 5), bool)),
         "mask of shape (2, 5)", "(2, 3, 4, 5)", *BROADCAST),
    case("attention-padding-B-S", ValueError, call("attention", Q, K, V, np.ones((2, 6), bool)),
         "mask of shape (2, 6)", "(1, 2, 3, 6)", *BROADCAST),
    case("mask-wrong-S", ValueError, call("masked_softmax", np.zeros((3, 5), F32), np.ones(4, bool)),
         "mask of shape (4,)", "(3, 5)", *BROADCAST),
    case("mask-more-dims-than-scores", ValueError,
         call("masked_softmax", np.zeros((3, 5), F32), np.ones((1, 1, 3, 5), bool)),
         "mask of shape (1, 1, 3, 5)", "(3, 5)", *BROADCAST),
    case("mask-rows-do-not-broadcast", ValueError, call("masked_softmax", S23, np.ones((3, 3), bool)),
         "mask of shape (3, 3)", "(2, 3)", "does not broadcast"),
    case("mask-T-S-transposed", ValueError, call("masked_softmax", np.zeros((3, 5), F32), np.ones((5, 3), bool)),
         "mask of shape (5, 3)", "(3, 5)", "does not broadcast"),
    case("attention-weights-mask", ValueError, call("attention_weights", Q, K, np.ones((3, 5), bool)),
         "mask of shape (3, 5)", "(1, 2, 3, 6)"),
    case("attention-mask-batch", ValueError, call("attention", Q, K, V, np.ones((2, 1, 1, 6), bool)),
         "mask of shape (2, 1, 1, 6)", "(1, 2, 3, 6)"),
    case("bias-does-not-broadcast", ValueError, call("attention", Q, K, V, bias=np.zeros((3, 5), F32)),
         "bias of shape (3, 5)", "(1, 2, 3, 6)"),
    case("bias-weights-does-not-broadcast", ValueError,
         call("attention_weights", Q, K, bias=np.zeros((2, 2, 3, 6), F32)),
         "bias of shape (2, 2, 3, 6)", "(1, 2, 3, 6)"),
    case("bias-int", TypeError, call("attention", Q, K, V, bias=np.zeros((3, 6), np.int64)),
         "bias", "int64", "floating"),
    case("bias-bool", TypeError, call("attention", Q, K, V, bias=np.ones((3, 6), bool)),
         "bias", "bool", "floating"),
    case("and-masks-do-not-broadcast", ValueError, call("and_masks", B23, np.ones(4, bool)),
         "masks[0]", "masks[1]", "(2, 3)", "(4,)", "broadcast"),
    case("or-masks-do-not-broadcast", ValueError, call("or_masks", B23, np.ones((3, 2), bool)),
         "masks[0]", "masks[1]", "(2, 3)", "(3, 2)", "broadcast"),
    case("and-masks-three-with-none", ValueError,
         call("and_masks", None, np.ones((1, 1, 4, 4), bool), np.ones((2, 1, 1, 5), bool)),
         "masks[1]", "masks[2]", "(1, 1, 4, 4)", "(2, 1, 1, 5)", "broadcast"),
    case("from-torch-mha-attn-and-key-padding", ValueError,
         call("from_torch_mha", np.zeros((3, 4), bool), np.zeros((2, 5), bool)),
         "attn_mask", "key_padding_mask", "(3, 4)", "broadcast"),
]

NONE_FOR_AN_ARRAY = [
    case(f"none-{id_}", TypeError, c, name, "None", AN_ARRAY)
    for id_, name, c in [
        ("scores", "scores", call("masked_softmax", None)),
        ("q-weights", "q", call("attention_weights", None, K)),
        ("k-weights", "k", call("attention_weights", Q, None)),
        ("q", "q", call("attention", None, K, V)),
        ("k", "k", call("attention", Q, None, V)),
        ("v", "v", call("attention", Q, K, None)),
        ("lengths", "lengths", call("padding_mask", None, 4)),
        ("ids", "ids", call("padding_mask_from_ids", None, 0)),
        ("kv-valid", "kv_valid", call("attention_padding_mask", None)),
        ("kv-valid-with-q-valid", "kv_valid", call("attention_padding_mask", None, B23)),
        ("q-segment-ids", "q_segment_ids", call("segment_mask", None)),
        ("q-segment-ids-with-kv", "q_segment_ids", call("segment_mask", None, SEGMENTS)),
        ("prefix-lengths", "prefix_lengths", call("prefix_lm_mask", None, 4)),
        ("mask-to-additive", "mask", call("to_additive", None)),
        ("mask-to-torch-mha", "mask", call("to_torch_mha", None)),
        ("attention-mask-from-hf", "attention_mask", call("from_hf", None)),
        ("bias-from-additive", "bias", call("from_additive", None)),
        ("mask-from-multiplicative", "mask", call("from_multiplicative", None)),
    ]
] + [
    case("string-scores", TypeError, call("masked_softmax", "0.5"), "scores", "str", AN_ARRAY),
    case("dict-q", TypeError, call("attention", {"q": Q}, K, V), "q", "dict", AN_ARRAY),
]

AXIS = [
    case("axis-out-of-range", ValueError, call("masked_softmax", S23, axis=2),
         "axis", "2", ("dimensions", "range", "bounds")),
    case("axis-out-of-range-negative", ValueError, call("masked_softmax", S23, B23, axis=-3),
         "axis", "-3", ("dimensions", "range", "bounds")),
    case("axis-bool", TypeError, call("masked_softmax", S23, axis=True), "axis", "True", AN_INT),
    case("axis-float", TypeError, call("masked_softmax", S23, axis=1.0), "axis", "1.0", AN_INT),
    case("axis-string", TypeError, call("masked_softmax", S23, axis="-1"), "axis", "'-1'", AN_INT),
    case("axis-none", TypeError, call("masked_softmax", S23, axis=None), "axis", "None", AN_INT),
    case("axis-tuple", TypeError, call("masked_softmax", S23, axis=(0, 1)), "axis", "(0, 1)", AN_INT),
]

SCALARS = [
    case("scale-nan", ValueError, call("attention", Q, K, V, scale=math.nan), "scale", NAN, "finite"),
    case("scale-inf", ValueError, call("attention", Q, K, V, scale=math.inf), "scale", "inf", "finite"),
    case("scale-minus-inf", ValueError, call("attention_weights", Q, K, scale=-math.inf), "scale", "-inf", "finite"),
    case("scale-nan-weights", ValueError, call("attention_weights", Q, K, scale=math.nan), "scale", NAN, "finite"),
    case("scale-string", TypeError, call("attention", Q, K, V, scale="x"), "scale", "'x'", "number"),
    case("scale-bool", TypeError, call("attention_weights", Q, K, scale=True), "scale", "True", "number"),
    case("scale-array", TypeError, call("attention", Q, K, V, scale=[0.5]), "scale", "[0.5]", "number"),
    case("is-causal-string", TypeError, call("attention", Q, K, V, is_causal="False"),
         "is_causal", "'False'", A_BOOL),
    case("is-causal-int", TypeError, call("attention", Q, K, V, is_causal=2), "is_causal", "2", A_BOOL),
    case("return-weights-int", TypeError, call("attention", Q, K, V, return_weights=1),
         "return_weights", "1", A_BOOL),
    case("return-weights-string", TypeError, call("attention", Q, K, V, return_weights="yes"),
         "return_weights", "'yes'", A_BOOL),
    case("scores-0d", ValueError, call("masked_softmax", np.array(1.0, F32)),
         "scores", ZERO_D, AT_LEAST_1D),
    case("scores-0d-with-mask", ValueError, call("masked_softmax", np.array(1.0, F32), np.array(True)),
         "scores", ZERO_D, AT_LEAST_1D),
]

FROM_ADDITIVE = [
    case("from-additive-nan", ValueError, call("from_additive", np.array([0.0, np.nan], F32)), "bias", "NaN"),
    case("from-additive-plus-inf", ValueError, call("from_additive", np.array([0.0, np.inf], F32)), "bias", "inf"),
    case("from-additive-flax-1-0", ValueError, call("from_additive", FLAX_MASK),
         "bias", "1.0", "refmask.from_multiplicative"),
    case("from-additive-small-negative", ValueError, call("from_additive", np.array([[0.0, -0.5]], F32)),
         "bias", "-0.5", "threshold"),
    case("from-additive-minus-1e4-without-threshold", ValueError,
         call("from_additive", np.array([[0.0, -1e4]], np.float64)), "bias", "-10000.0", "threshold=-10000.0"),
    case("from-additive-min-threshold-of-upcast-float16-mask", ValueError,
         call("from_additive", np.array([[0.0, -65504.0]], F32), threshold="min"), "bias", "-65504.0", "threshold="),
    case("from-additive-threshold-unknown-word", ValueError,
         call("from_additive", np.array([[0.0, -np.inf]], F32), threshold="max"), "threshold", "'auto'", "'max'"),
    case("from-additive-alibi-bias", ValueError, call("from_additive", np.array([[0.0, -1.0, -2.0]], F32)),
         "bias", "-1.0", "bias="),
    case("from-additive-int", TypeError, call("from_additive", np.array([0, -1])), "bias", "floating", "int64"),
    case("threshold-above-zero", ValueError, call("from_additive", ADDITIVE, threshold=1.0),
         "threshold", "1.0", "negative"),
    case("threshold-zero", ValueError, call("from_additive", ADDITIVE, threshold=0.0),
         "threshold", "0.0", "negative"),
    case("threshold-nan", ValueError, call("from_additive", ADDITIVE, threshold=math.nan),
         "threshold", NAN, "negative"),
    case("threshold-name", ValueError, call("from_additive", np.zeros(2, F32), threshold="max"),
         "threshold", "'min'", "'max'"),
    case("threshold-none", TypeError, call("from_additive", np.zeros(2, F32), threshold=None),
         "threshold", "number", "None"),
    case("threshold-bool", TypeError, call("from_additive", np.zeros(2, F32), threshold=True),
         "threshold", "number", "True"),
    case("from-multiplicative-other-values", ValueError, call("from_multiplicative", np.array([[1.0, 2.0]], F32)),
         "mask", "2.0", "1 (attend)", "0"),
    case("from-multiplicative-additive", ValueError, call("from_multiplicative", ADDITIVE),
         "mask", "refmask.from_additive"),
    case("from-multiplicative-strings", TypeError, numpy_args("from_multiplicative", np.array([["1", "0"]])),
         "mask", STRINGS),
]

DTYPES = [
    case("dtype-none", TypeError, call("to_additive", B23, None), "dtype", "None", *VALID_DTYPE_NAMES),
    case("dtype-typo", TypeError, call("to_additive", B23, "flaot32"), "dtype", "'flaot32'", *VALID_DTYPE_NAMES),
    case("dtype-capitalised", TypeError, call("to_additive", B23, "Float32"), "dtype", "'Float32'", "'float32'"),
    case("dtype-float-is-ambiguous", TypeError, call("to_additive", B23, "float"),
         "dtype", "'float'", "ambiguous", "float32", "float64"),
    case("dtype-int-name", TypeError, call("to_additive", B23, "int32"), "dtype", "floating", "int32"),
    case("dtype-int-object", TypeError, call("to_additive", B23, np.int16), "dtype", "floating", "int16"),
    case("dtype-bool-object", TypeError, call("to_additive", B23, np.dtype(bool)), "dtype", "floating", "bool"),
    case("dtype-complex", TypeError, call("to_additive", B23, "complex64"), "dtype", "complex64"),
    case("dtype-torch-int", TypeError, call("to_additive", B23, _torch(lambda t: t.int64)),
         "dtype", "floating", "int64"),
    case("dtype-jax-int", TypeError, call("to_additive", B23, _jax_numpy(lambda jnp: jnp.int8)),
         "dtype", "floating", "int8"),
    case("dtype-number", TypeError, call("to_additive", B23, 32), "dtype", "32"),
    case("fill-name", ValueError, call("to_additive", B3, fill="max"), "fill", "'min', '-inf'", "'max'"),
    case("fill-positive", ValueError, call("to_additive", B3, fill=1e9), "fill", "negative", "1000000000.0"),
    case("fill-zero", ValueError, call("to_additive", B3, fill=0), "fill", "negative", "0"),
    case("fill-nan", ValueError, call("to_additive", B3, fill=math.nan), "fill", "negative", NAN),
    case("fill-none", TypeError, call("to_additive", B3, fill=None), "fill", "negative number", "None"),
    case("fill-overflows-float16", ValueError, call("to_additive", B3, "float16", fill=-1e9),
         "fill=-1000000000.0", "overflows to -inf", "float16", "-65504", 'fill="min"', 'fill="-inf"'),
    case("fill-overflows-bfloat16", ValueError, call("to_additive", B3, "bfloat16", fill=-1e300),
         "fill=-1e+300", "overflows to -inf", "bfloat16"),
]

TO_TORCH_MHA = [
    case("to-torch-mha-B-S-with-q-len", ValueError, call("to_torch_mha", np.ones((2, 5), bool), q_len=3),
         "mask", "(2, 5)", ("(B, 1, 1, S)", "attention_padding_mask")),
    case("to-torch-mha-B-S-with-q-len-and-heads", ValueError,
         call("to_torch_mha", np.ones((4, 6), bool), q_len=2, num_heads=2),
         "mask", "(4, 6)", ("(B, 1, 1, S)", "attention_padding_mask")),
    case("to-torch-mha-4d-without-num-heads", ValueError, call("to_torch_mha", np.ones((2, 2, 3, 3), bool)),
         "num_heads=", "(2, 2, 3, 3)"),
    case("to-torch-mha-3d", ValueError, call("to_torch_mha", np.ones((2, 3, 3), bool)),
         "mask", "(T, S)", "(B, H, T, S)", "(2, 3, 3)"),
    case("to-torch-mha-num-heads-zero", ValueError,
         call("to_torch_mha", np.ones((2, 1, 3, 3), bool), num_heads=0), "num_heads", ">= 1", "0"),
    case("to-torch-mha-num-heads-float", TypeError,
         call("to_torch_mha", np.ones((2, 1, 3, 3), bool), num_heads=2.0), "num_heads", "int", "2.0"),
    case("to-torch-mha-q-len-negative", ValueError, call("to_torch_mha", np.ones((1, 3), bool), q_len=-1),
         "q_len", ">= 0", "-1"),
    case("to-torch-mha-heads-do-not-broadcast", ValueError,
         call("to_torch_mha", np.ones((2, 3, 4, 4), bool), num_heads=2), "mask", "(2, 3, 4, 4)", "broadcast"),
    case("from-torch-mha-3d-without-num-heads", ValueError, call("from_torch_mha", np.zeros((4, 2, 2), bool)),
         "attn_mask", "(4, 2, 2)", "num_heads="),
    case("from-torch-mha-not-a-multiple", ValueError,
         call("from_torch_mha", np.zeros((5, 2, 2), bool), num_heads=2), "attn_mask", "(5)", "multiple of num_heads=2"),
    case("from-torch-mha-bias-is-not-a-mask", ValueError,
         call("from_torch_mha", np.array([[0.0, -0.5]], F32)), "attn_mask", "-0.5", "bias="),
    case("from-torch-mha-minus-1e4-without-threshold", ValueError,
         call("from_torch_mha", np.array([[0.0, -1e4]], F32)), "attn_mask", "threshold="),
    case("from-torch-mha-float-1-0", ValueError, call("from_torch_mha", np.array([[0.0, 1.0]], F32)),
         "attn_mask", "1.0", "refmask.from_multiplicative"),
    case("from-torch-mha-key-padding-nan", ValueError,
         call("from_torch_mha", None, np.array([[0.0, np.nan]], F32)), "key_padding_mask", "NaN"),
    case("from-torch-mha-int", TypeError, call("from_torch_mha", np.zeros((2, 2), np.int64)),
         "attn_mask", "bool (True = masked)", "int64"),
    case("from-torch-mha-key-padding-int", TypeError, call("from_torch_mha", None, np.zeros((2, 2), np.uint8)),
         "key_padding_mask", "bool (True = masked)", "uint8"),
    case("from-torch-mha-key-padding-3d", ValueError,
         call("from_torch_mha", None, np.zeros((1, 2, 2), bool)), "key_padding_mask", "(N, S)", "(1, 2, 2)"),
    case("from-torch-mha-attn-4d", ValueError, call("from_torch_mha", np.zeros((1, 1, 2, 2), bool)),
         "attn_mask", "(T, S)", "(1, 1, 2, 2)"),
]

LENGTHS_AND_IDS = [
    case("lengths-negative", ValueError, call("padding_mask", np.array([2, -1]), 4), "lengths", ">= 0", "-1"),
    case("lengths-too-long", ValueError, call("padding_mask", np.array([2, 5]), 4), "lengths", "max_len=4", "5"),
    case("lengths-too-long-left", ValueError, call("padding_mask", np.array([9]), 4, side="left"),
         "lengths", "max_len=4", "9"),
    case("lengths-list-too-long", ValueError, call("padding_mask", [1, 7], 6), "lengths", "max_len=6", "7"),
    case("lengths-float", TypeError, call("padding_mask", np.array([2.0, 1.5]), 4), "lengths", "integer", "float64"),
    case("lengths-bool", TypeError, call("padding_mask", np.array([True, False]), 4), "lengths", "integer", "bool"),
    case("max-len-negative", ValueError, call("padding_mask", np.array([0]), -1), "max_len", ">= 0", "-1"),
    case("max-len-float", TypeError, call("padding_mask", np.array([0]), 3.0), "max_len", "int", "3.0"),
    case("max-len-none", TypeError, call("padding_mask", np.array([0]), None), "max_len", "int", "None"),
    case("prefix-lengths-too-long", ValueError, call("prefix_lm_mask", np.array([1, 6]), 5),
         "prefix_lengths", "<= max_len=5", "6"),
    case("prefix-lengths-beyond-kv-len", ValueError, call("prefix_lm_mask", np.array([4]), 2, 3),
         "prefix_lengths", "3", "4"),
    case("prefix-lengths-negative", ValueError, call("prefix_lm_mask", np.array([-2]), 5),
         "prefix_lengths", ">= 0", "-2"),
    case("prefix-lengths-float", TypeError, call("prefix_lm_mask", np.array([1.0]), 5),
         "prefix_lengths", "integer", "float64"),
    case("prefix-lengths-2d", ValueError, call("prefix_lm_mask", np.array([[1]]), 5),
         "prefix_lengths", "(B,)", "(1, 1)"),
    case("q-len-negative", ValueError, call("causal_mask", -1), "q_len", ">= 0", "-1"),
    case("kv-len-negative", ValueError, call("causal_mask", 2, -3), "kv_len", ">= 0", "-3"),
    case("q-len-float", TypeError, call("causal_mask", 2.0), "q_len", "int", "2.0"),
    case("q-len-bool", TypeError, call("causal_mask", True), "q_len", "int", "True"),
    case("q-len-string", TypeError, call("causal_mask", "3"), "q_len", "int", "'3'"),
    case("q-len-none-prefix", TypeError, call("prefix_lm_mask", np.array([1]), None), "q_len", "int", "None"),
    case("kv-valid-1d", ValueError, call("attention_padding_mask", np.ones(5, bool)), "kv_valid", "(B, S)", "(5,)"),
    case("q-valid-batch", ValueError, call("attention_padding_mask", np.ones((2, 5), bool), np.ones((3, 4), bool)),
         "q_valid", "kv_valid", "batch", "(3, 4)", "(2, 5)"),
    case("q-valid-1d", ValueError, call("attention_padding_mask", B23, np.ones(2, bool)),
         "q_valid", "(B, T)", "(2,)"),
    case("segment-ids-float", TypeError, call("segment_mask", np.zeros((1, 3))),
         "q_segment_ids", "integer", "float64"),
    case("kv-segment-ids-bool", TypeError, call("segment_mask", SEGMENTS, np.ones((1, 3), bool)),
         "kv_segment_ids", "integer", "bool"),
    case("segment-ids-batch", ValueError, call("segment_mask", np.zeros((1, 3), np.int64), np.zeros((2, 3), np.int64)),
         "q_segment_ids", "kv_segment_ids", "batch"),
    case("segment-ids-1d", ValueError, call("segment_mask", np.array([0, 0, 1])),
         "q_segment_ids", "(B, T)", "(3,)"),
    case("segment-pad-id-float", TypeError, call("segment_mask", SEGMENTS, pad_id=0.0), "pad_id", "int", "0.0"),
    case("ids-float", TypeError, call("padding_mask_from_ids", np.zeros((1, 3)), 0), "ids", "integer", "float64"),
    case("pad-id-float", TypeError, call("padding_mask_from_ids", IDS, 0.0), "pad_id", "int", "0.0"),
    case("pad-id-none", TypeError, call("padding_mask_from_ids", IDS, None), "pad_id", "int", "None"),
    case("from-hf-other-values", ValueError, call("from_hf", np.array([[1, 2, 0]])),
         "attention_mask", "1 (attend)", "0 (padding)", "2"),
    case("from-hf-negative", ValueError, call("from_hf", np.array([[1, -1, 0]])),
         "attention_mask", "1 (attend)", "-1"),
    case("from-hf-float-half", ValueError, call("from_hf", np.array([[1.0, 0.5]], F32)),
         "attention_mask", "1 (attend)", "0.5"),
    case("from-hf-1d", ValueError, call("from_hf", np.array([1, 1, 0])), "attention_mask", "(B, S)", "(3,)"),
    case("from-hf-4d", ValueError, call("from_hf", np.ones((2, 1, 1, 3), np.int64)),
         "attention_mask", "(B, S)", "(2, 1, 1, 3)"),
    case("from-hf-strings", TypeError, numpy_args("from_hf", np.array([["1", "0"]])), "attention_mask", "0/1", STRINGS),
]

POSITIONS_AND_CHOICES = [
    case("offset-float", TypeError, call("causal_mask", 3, offset=0.5), "offset", "int", "0.5"),
    case("offset-string", TypeError, call("sliding_window_mask", 3, window=1, offset="1"), "offset", "int", "'1'"),
    case("offset-bool", TypeError, call("chunked_mask", 3, chunk_size=2, offset=True), "offset", "int", "True"),
    case("offset-none", TypeError, call("causal_mask", 3, offset=None), "offset", "int", "None"),
    case("window-negative", ValueError, call("sliding_window_mask", 4, window=-1), "window", ">= 0", "-1"),
    case("window-left-negative", ValueError, call("sliding_window_mask", 4, window=(-2, 1)),
         "window[0] (left)", ">= 0", "-2"),
    case("window-right-negative", ValueError, call("sliding_window_mask", 4, window=(1, -1)),
         "window[1] (right)", ">= 0", "-1"),
    case("window-string", TypeError, call("sliding_window_mask", 4, window="2"), "window", "(left, right)", "'2'"),
    case("window-triple", TypeError, call("sliding_window_mask", 4, window=(1, 2, 3)),
         "window", "(left, right)", "(1, 2, 3)"),
    case("window-float", TypeError, call("sliding_window_mask", 4, window=1.5), "window", "int", "1.5"),
    case("window-pair-float", TypeError, call("sliding_window_mask", 4, window=(1.0, 2)),
         "window[0] (left)", "int", "1.0"),
    case("window-bool", TypeError, call("sliding_window_mask", 4, window=True), "window", "int", "True"),
    case("window-none", TypeError, call("sliding_window_mask", 4, window=None), "window", "None"),
    case("chunk-size-zero", ValueError, call("chunked_mask", 4, chunk_size=0), "chunk_size", ">= 1", "0"),
    case("chunk-size-negative", ValueError, call("chunked_mask", 4, chunk_size=-3), "chunk_size", ">= 1", "-3"),
    case("chunk-size-float", TypeError, call("chunked_mask", 4, chunk_size=2.0), "chunk_size", "int", "2.0"),
    case("chunk-size-none", TypeError, call("chunked_mask", 4, chunk_size=None), "chunk_size", "int", "None"),
    case("chunk-size-bool", TypeError, call("chunked_mask", 4, chunk_size=True), "chunk_size", "int", "True"),
    case("fully-masked-softmax", ValueError, call("masked_softmax", np.zeros(3, F32), fully_masked="ones"),
         "fully_masked", POLICIES, "'ones'"),
    case("accuracy-unknown", ValueError, call("masked_softmax", np.zeros(3, F32), accuracy="exact"),
         "accuracy", "'fast', 'accurate'", "'exact'"),
    case("accuracy-bool", ValueError, call("masked_softmax", np.zeros(3, F32), accuracy=True),
         "accuracy", "'fast', 'accurate'", "True"),
    case("fully-masked-attention", ValueError, call("attention", Q, K, V, fully_masked=None),
         "fully_masked", POLICIES, "None"),
    case("fully-masked-weights", ValueError, call("attention_weights", Q, K, fully_masked="Zero"),
         "fully_masked", POLICIES, "'Zero'"),
    case("fully-masked-vjp", ValueError,
         plain(oracle.masked_softmax_vjp, np.zeros(3), None, np.zeros(3), fully_masked="inf"),
         "fully_masked", POLICIES, "'inf'", on=("numpy",)),
    case("align-causal", ValueError, call("causal_mask", 3, align="bottom"), "align", ALIGNS, "'bottom'"),
    case("align-window", ValueError, call("sliding_window_mask", 3, window=1, align="left"),
         "align", ALIGNS, "'left'"),
    case("align-chunked", ValueError, call("chunked_mask", 3, chunk_size=1, align="top_right"),
         "align", ALIGNS, "'top_right'"),
    case("align-prefix", ValueError, call("prefix_lm_mask", np.array([1]), 3, align="center"),
         "align", ALIGNS, "'center'"),
    case("align-none", ValueError, call("causal_mask", 3, align=None), "align", ALIGNS, "None"),
    case("side", ValueError, call("padding_mask", np.array([1]), 3, side="top"), "side", "'right', 'left'", "'top'"),
    case("side-capitalised", ValueError, call("padding_mask", np.array([1]), 3, side="Right"),
         "side", "'right', 'left'", "'Right'"),
    case("unknown-backend", ValueError, plain("causal_mask", 3, backend="tensorflow"),
         "backend", "'numpy', 'jax', 'torch'", "'tensorflow'", on=("numpy",)),
    case("backend-capitalised", ValueError, plain("masked_softmax", S23, backend="Torch"),
         "backend", "'numpy', 'jax', 'torch'", "'Torch'", on=("numpy",)),
    case("offset-array-2d", ValueError, call("causal_mask", 3, offset=np.zeros((2, 1), np.int64)),
         "offset", "(B,)", "(2, 1)"),
    case("offset-array-float", TypeError, call("causal_mask", 3, offset=np.zeros(2)), "offset", "integer", "float64"),
    case("offset-array-beyond-positions", ValueError, call("causal_mask", 3, offset=np.array([0, 2**40])),
         "offset", "2**30", str(2**40)),
    case("offset-array-without-q-len", TypeError, call("causal_mask", offset=np.array([0, 1])), "q_len", "required"),
    case("q-positions-float", TypeError, call("causal_mask", q_positions=np.zeros(3)),
         "q_positions", "integer", "float64"),
    case("kv-positions-3d", ValueError, call("causal_mask", 2, kv_positions=np.zeros((1, 2, 3), np.int64)),
         "kv_positions", "(S,) or (B, S)", "(1, 2, 3)"),
    case("q-positions-conflicting-q-len", ValueError, call("causal_mask", 4, q_positions=np.arange(3)),
         "q_len=4", "q_positions", "(3,)"),
    case("kv-positions-conflicting-kv-len", ValueError,
         call("sliding_window_mask", 2, 5, window=1, kv_positions=np.arange(3)), "kv_len=5", "kv_positions", "(3,)"),
    case("positions-with-align", ValueError,
         call("chunked_mask", chunk_size=2, q_positions=np.arange(3), align="bottom_right"),
         "align", "offset", "q_positions", "'bottom_right'"),
    case("positions-with-offset", ValueError, call("causal_mask", q_positions=np.arange(3), offset=2),
         "align", "offset", "q_positions", "offset=2"),
    case("positions-batch-mismatch", ValueError,
         call("causal_mask", q_positions=np.zeros((2, 3), np.int64), kv_positions=np.zeros((3, 4), np.int64)),
         "q_positions", "kv_positions", "batch size", "(2, 3)", "(3, 4)"),
    case("kv-positions-without-q-len", TypeError, call("causal_mask", kv_positions=np.arange(3)),
         "q_len", "required", "q_positions"),
    case("positions-beyond-range", ValueError, call("causal_mask", q_positions=np.array([0, -(2**31)])),
         "q_positions", "2**30", str(-(2**31))),
    case("prefix-lengths-vs-offsets", ValueError,
         call("prefix_lm_mask", np.array([1, 2]), 3, offset=np.array([0, 1, 2])),
         "prefix_lengths", "2 examples", "3"),
    case("window-right-none-left-negative", ValueError, call("sliding_window_mask", 4, window=(-1, None)),
         "window[0] (left)", ">= 0", "-1"),
]

ATTENTION_SHAPES = [
    case("head-dim-mismatch", ValueError, call("attention", Q, np.zeros((1, 2, 6, 5), F32), V),
         "q and k", "head dimension D", "(1, 2, 3, 4)", "(1, 2, 6, 5)"),
    case("head-dim-mismatch-weights", ValueError, call("attention_weights", Q, np.zeros((1, 2, 6, 3), F32)),
         "head dimension D", "(1, 2, 3, 4)", "(1, 2, 6, 3)"),
    case("heads-not-a-multiple", ValueError, call("attention", np.zeros((1, 3, 3, 4), F32), K, V),
         "H=3", "H_kv=2", "multiple"),
    case("heads-not-a-multiple-3d", ValueError,
         call("attention", np.zeros((2, 3, 4), F32), np.zeros((3, 5, 4), F32), np.zeros((3, 5, 2), F32)),
         "H=2", "H_kv=3", "multiple"),
    case("heads-not-a-multiple-4-3", ValueError,
         call("attention", np.zeros((2, 4, 3, 8), F32), np.zeros((2, 3, 3, 8), F32), np.zeros((2, 3, 3, 8), F32)),
         "H=4", "H_kv=3", "multiple"),
    case("batch-mismatch", ValueError, call("attention", np.zeros((2, 2, 3, 4), F32), K, V),
         "batch dimensions", "(2, 2, 3, 4)", "(1, 2, 6, 4)"),
    case("v-shape", ValueError, call("attention", Q, K, np.zeros((1, 2, 5, 7), F32)),
         "v", "(..., H_kv, S, Dv)", "(1, 2, 6, 4)", "(1, 2, 5, 7)"),
    case("q-k-ndim", ValueError, call("attention", Q, np.zeros((6, 4), F32), np.zeros((6, 7), F32)),
         "same number of dimensions", "(1, 2, 3, 4)", "(6, 4)"),
    case("q-1d", ValueError, call("attention_weights", np.zeros(4, F32), np.zeros(4, F32)),
         "q and k", "(4,)", "at least 2"),
    case("integer-scores", TypeError, call("masked_softmax", np.zeros((2, 3), np.int64)),
         "scores", "floating", "int64"),
    case("bool-scores", TypeError, call("masked_softmax", B23), "scores", "floating", "bool"),
    case("complex-scores", TypeError, call("masked_softmax", np.zeros((2, 3), np.complex64)),
         "scores", "floating", "complex64"),
    case("integer-q", TypeError, call("attention", Q.astype(np.int32), K, V), "q", "floating", "int32"),
    case("integer-v", TypeError, call("attention", Q, K, V.astype(np.int16)), "v", "floating", "int16"),
    case("mixed-float-dtypes", TypeError, call("attention", Q, K.astype(np.float64), V),
         "q, k, v", "one floating dtype", "k: float64"),
    case("mixed-float16", TypeError,
         call("attention", np.zeros((2, 3, 4), F32), np.zeros((2, 5, 4), np.float16), np.zeros((2, 5, 2), F32)),
         "q, k, v", "one floating dtype", "k: float16"),
    case("mixed-weights-dtypes", TypeError, call("attention_weights", Q.astype(np.float16), K),
         "q, k", "one floating dtype", "q: float16"),
    case("vjp-cotangent-shape", ValueError,
         plain(oracle.masked_softmax_vjp, np.zeros((2, 3)), None, np.zeros((3, 2))),
         "cotangent", "(2, 3)", "(3, 2)", on=("numpy",)),
]

DEVICES = [
    case(f"device-{device}-{fn}", ValueError, call(fn, *args, device=device), "device", device, "cpu",
         on=on, same_message=False, unavailable=unavailable)
    for fn, args in [("causal_mask", (3,)), ("padding_mask", (LENGTHS, 4)), ("segment_mask", (SEGMENTS,)),
                     ("attention_padding_mask", (B23,))]
    for device, on, unavailable in [
        ("banana", BACKENDS, None),
        ("gpu", ("numpy",), None),
        ("cuda", ("numpy", "torch"), _has_accelerator),
        ("tpu", ("numpy", "jax"), _jax_has("tpu")),
    ]
] + [
    case("device-mps-torch", ValueError, call("causal_mask", 3, device="mps"), "device", "mps", "cpu",
         on=("torch",), same_message=False, unavailable=_torch_has("mps")),
    case("device-gpu-jax", ValueError, call("prefix_lm_mask", np.array([1]), 3, device="gpu"),
         "device", "gpu", "cpu", on=("jax",), same_message=False, unavailable=_jax_has("gpu")),
]


def _meta(shape, dtype="float32"):
    return _torch(lambda torch: torch.zeros(shape, dtype=getattr(torch, dtype), device="meta"))


def _cpu(array):
    return _torch(lambda torch: torch.from_numpy(array))


TORCH_ONLY = [
    case("meta-scores-cpu-mask", ValueError, plain("masked_softmax", _meta((2, 3)), _cpu(B23)),
         "scores", "mask", "meta", "cpu", on=("torch",)),
    case("cpu-q-meta-k", ValueError, plain("attention", _cpu(Q), _meta((1, 2, 6, 4)), _cpu(V)),
         "q", "k", "meta", "cpu", on=("torch",)),
    case("meta-bias", ValueError, plain("attention_weights", _cpu(Q), _cpu(K), bias=_meta((3, 6))),
         "bias", "meta", "cpu", on=("torch",)),
    case("meta-and-cpu-masks", ValueError, plain("and_masks", _meta((2, 3), "bool"), _cpu(B23)),
         "masks[0]", "masks[1]", "meta", "cpu", on=("torch",)),
    case("mixed-frameworks", TypeError,
         plain("masked_softmax", _jax_numpy(lambda jnp: jnp.zeros((2, 3))), _cpu(B23)),
         "jax", "torch", "backend=", on=("torch",)),
]

FLAX_LAYOUT = ("Flax", "heads")


def flax(*args: Any, **kwargs: Any) -> Call:
    """refmask.jax.dot_product_attention(*args, **kwargs), NumPy arguments as jax arrays."""
    return Call("refmask.jax:dot_product_attention", args, kwargs, takes_backend=False)

JAX_ONLY = [
    case("flax-given-refmask-layout", ValueError,
         flax(np.zeros((2, 8, 5, 16), F32), np.zeros((2, 8, 7, 16), F32), np.zeros((2, 8, 7, 16), F32)),
         *FLAX_LAYOUT, "(2, 8, 5, 16)", "(2, 8, 7, 16)", on=("jax",)),
    case("flax-given-refmask-layout-lengths", ValueError,
         flax(np.zeros((1, 2, 3, 4), F32), np.zeros((1, 2, 6, 4), F32), np.zeros((1, 2, 6, 4), F32)),
         *FLAX_LAYOUT, "(1, 2, 3, 4)", "(1, 2, 6, 4)", on=("jax",)),
    case("flax-rank-2", ValueError,
         flax(np.zeros((3, 4), F32), np.zeros((6, 4), F32), np.zeros((6, 4), F32)),
         *FLAX_LAYOUT, "(3, 4)", on=("jax",)),
    case("flax-rank-1", ValueError, flax(np.zeros(4, F32), np.zeros(4, F32), np.zeros(4, F32)),
         *FLAX_LAYOUT, "(4,)", on=("jax",)),
    case("flax-key-value-lengths", ValueError,
         flax(np.zeros((1, 3, 2, 4), F32), np.zeros((1, 6, 2, 4), F32), np.zeros((1, 5, 2, 4), F32)),
         "(1, 6, 2, 4)", "(1, 5, 2, 4)", on=("jax",)),
    case("flax-head-dim", ValueError,
         flax(np.zeros((1, 3, 2, 4), F32), np.zeros((1, 6, 2, 5), F32), np.zeros((1, 6, 2, 4), F32)),
         "(1, 3, 2, 4)", "(1, 6, 2, 5)", on=("jax",)),
    case("flax-none-query", TypeError, flax(None, np.zeros((1, 6, 2, 4), F32), np.zeros((1, 6, 2, 4), F32)),
         "query", "None", AN_ARRAY, on=("jax",)),
    case("flax-dropout-without-rng", ValueError,
         flax(np.zeros((1, 3, 2, 4), F32), np.zeros((1, 6, 2, 4), F32), np.zeros((1, 6, 2, 4), F32),
              dropout_rate=0.5), "dropout_rng", on=("jax",)),
    case("flax-fully-masked", ValueError,
         flax(np.zeros((1, 3, 2, 4), F32), np.zeros((1, 6, 2, 4), F32), np.zeros((1, 6, 2, 4), F32),
               fully_masked="mean"), "fully_masked", "'mean'", on=("jax",)),
]


def sdpa(*args: Any, **kwargs: Any) -> Call:
    """refmask.torch.scaled_dot_product_attention(*args, **kwargs), NumPy arguments as torch tensors."""
    return Call("refmask.torch:scaled_dot_product_attention", args, kwargs, takes_backend=False)


SDPA_ONLY = [
    case("sdpa-none-query", TypeError, sdpa(None, K, V), "query", "None", AN_ARRAY, on=("torch",)),
    case("sdpa-none-value", TypeError, sdpa(Q, K, None), "value", "None", AN_ARRAY, on=("torch",)),
    case("sdpa-int-attn-mask", TypeError, sdpa(Q, K, V, np.ones((3, 6), np.int64)),
         "attn_mask", "int64", on=("torch",)),
    case("sdpa-attn-mask-does-not-broadcast", ValueError, sdpa(Q, K, V, np.ones((2, 6), bool)),
         "attn_mask", "(2, 6)", "broadcast", on=("torch",)),
    case("sdpa-dropout-negative", ValueError, sdpa(Q, K, V, dropout_p=-0.1), "dropout_p", "-0.1", "[0, 1]",
         on=("torch",)),
    case("sdpa-dropout-nan", ValueError, sdpa(Q, K, V, dropout_p=math.nan), "dropout_p", NAN, "[0, 1]",
         on=("torch",)),
    case("sdpa-scale-nan", ValueError, sdpa(Q, K, V, scale=math.nan), "scale", NAN, "finite", on=("torch",)),
    case("sdpa-fully-masked", ValueError, sdpa(Q, K, V, fully_masked="uniformly"),
         "fully_masked", POLICIES, "'uniformly'", on=("torch",)),
]


def _assert_weights_close(*args, **kwargs):
    from refmask.testing import assert_weights_close

    return assert_weights_close(*args, **kwargs)


def _assert_attention_close(*args, **kwargs):
    from refmask.testing import assert_attention_close

    return assert_attention_close(*args, **kwargs)


def _ulp_distance(*args):
    from refmask.testing import ulp_distance

    return ulp_distance(*args)


def _check_attention(*args, **kwargs):
    from refmask.testing import check_attention

    return check_attention(*args, **kwargs)


CHECK = {"dtypes": ["float32"], "examples": 0}
OUT = np.ones((1, 1, 2, 3), F32)

TESTING = [
    case(f"ulp-distance-{dt}", TypeError, plain(_ulp_distance, np.zeros(3, dt), np.zeros(3, dt)),
         dt, ("floating", "float"), on=("numpy",))
    for dt in ("int64", "int32", "uint8", "bool", "complex64", "complex128")
] + [
    case("ulp-distance-mixed", TypeError, plain(_ulp_distance, np.zeros(3, np.float16), np.zeros(3, F32)),
         "float16", "float32", on=("numpy",)),
    case("weights-max-ulp-nan", ValueError, plain(_assert_weights_close, WEIGHTS, WEIGHTS, max_ulp=math.nan),
         "max_ulp", NAN, on=("numpy",)),
    case("weights-max-ulp-negative", ValueError, plain(_assert_weights_close, WEIGHTS, WEIGHTS, max_ulp=-1),
         "max_ulp", "-1", NON_NEGATIVE, on=("numpy",)),
    case("weights-rtol-negative", ValueError, plain(_assert_weights_close, WEIGHTS, WEIGHTS, rtol=-1e-3),
         "rtol", "-0.001", NON_NEGATIVE, on=("numpy",)),
    case("weights-atol-nan", ValueError, plain(_assert_weights_close, WEIGHTS, WEIGHTS, atol=math.nan),
         "atol", NAN, on=("numpy",)),
    case("output-max-ulp-negative", ValueError, plain(_assert_attention_close, OUT, OUT, max_ulp=-2),
         "max_ulp", "-2", NON_NEGATIVE, on=("numpy",)),
    case("output-max-ulp-nan", ValueError, plain(_assert_attention_close, OUT, OUT, max_ulp=math.nan),
         "max_ulp", NAN, on=("numpy",)),
    case("output-rtol-nan", ValueError, plain(_assert_attention_close, OUT, OUT, rtol=math.nan),
         "rtol", NAN, on=("numpy",)),
    case("output-atol-negative", ValueError, plain(_assert_attention_close, OUT, OUT, atol=-1.0),
         "atol", "-1.0", NON_NEGATIVE, on=("numpy",)),
    case("output-scale-nan", ValueError, plain(_assert_attention_close, OUT, OUT, scale=math.nan),
         "scale", NAN, on=("numpy",)),
    case("check-max-ulp-negative", ValueError, plain(_check_attention, _identity_attention, max_ulp=-1, **CHECK),
         "max_ulp", "-1", NON_NEGATIVE, on=("numpy",)),
    case("check-rtol-nan", ValueError, plain(_check_attention, _identity_attention, rtol=math.nan, **CHECK),
         "rtol", NAN, on=("numpy",)),
    case("check-atol-negative", ValueError, plain(_check_attention, _identity_attention, atol=-1e-6, **CHECK),
         "atol", "-1e-06", NON_NEGATIVE, on=("numpy",)),
]

CU = np.array([0, 2, 3])  # two packed sequences of 2 and 1 tokens
PACKED = np.zeros((2, 1), F32)

VARLEN = [
    case("varlen-lengths-negative", ValueError, call("cu_seqlens", np.array([2, -1])), "lengths", ">= 0", "-1"),
    case("varlen-lengths-2d", ValueError, call("cu_seqlens", np.array([[1, 2]])), "lengths", "(B,)", "(1, 2)"),
    case("varlen-lengths-float", TypeError, call("cu_seqlens", np.array([1.0])), "lengths", "integer", "float64"),
    case("varlen-lengths-overflow-int32", ValueError, call("cu_seqlens", np.array([2**31 - 1, 1])),
         "lengths", "2147483648", "int32"),
    case("cu-seqlens-not-from-0", ValueError, call("segment_ids_from_cu_seqlens", np.array([1, 3])),
         "cu_seqlens", "start at 0", "cu_seqlens[0] = 1"),
    case("cu-seqlens-decreasing", ValueError, call("segment_ids_from_cu_seqlens", np.array([0, 3, 2])),
         "cu_seqlens", "non-decreasing", "cu_seqlens[2] = 2", "cu_seqlens[1] = 3"),
    case("cu-seqlens-float", TypeError, call("segment_ids_from_cu_seqlens", np.array([0.0, 2.0])),
         "cu_seqlens", "integer", "float64"),
    case("cu-seqlens-2d", ValueError, call("segment_ids_from_cu_seqlens", np.array([[0, 2]])),
         "cu_seqlens", "(B + 1,)", "(1, 2)"),
    case("cu-seqlens-empty", ValueError, call("segment_ids_from_cu_seqlens", np.zeros(0, np.int64)),
         "cu_seqlens", "leading 0", "(0,)"),
    case("segment-ids-total-too-small", ValueError, call("segment_ids_from_cu_seqlens", CU, 2),
         "total=2", "cu_seqlens[-1] = 3"),
    case("segment-ids-total-float", TypeError, call("segment_ids_from_cu_seqlens", CU, 3.0), "total", "int", "3.0"),
    case("varlen-cu-seqlens-q-decreasing", ValueError, call("varlen_mask", np.array([0, 2, 1])),
         "cu_seqlens_q", "non-decreasing"),
    case("varlen-cu-seqlens-k-not-from-0", ValueError, call("varlen_mask", CU, np.array([1, 2, 3])),
         "cu_seqlens_k", "start at 0"),
    case("varlen-cu-seqlens-k-float", TypeError, call("varlen_mask", CU, np.array([0.0, 1.0, 2.0])),
         "cu_seqlens_k", "integer", "float64"),
    case("varlen-different-batches", ValueError, call("varlen_mask", CU, np.array([0, 3])),
         "cu_seqlens_q", "cu_seqlens_k", "same number of sequences", "(3,)", "(2,)"),
    case("varlen-total-k-too-small", ValueError, call("varlen_mask", CU, np.array([0, 1, 4]), total_k=3),
         "total_k=3", "cu_seqlens_k[-1] = 4"),
    case("varlen-total-q-negative", ValueError, call("varlen_mask", CU, total_q=-1), "total_q", ">= 0", "-1"),
    case("varlen-window-negative", ValueError, call("varlen_mask", CU, window=-1), "window", ">= 0", "-1"),
    case("varlen-window-left-negative", ValueError, call("varlen_mask", CU, window=(-1, None)),
         "window[0] (left)", ">= 0", "-1"),
    case("varlen-window-string", TypeError, call("varlen_mask", CU, window="2"), "window", "(left, right)", "'2'"),
    case("varlen-causal-int", TypeError, call("varlen_mask", CU, causal=1), "causal", "bool", "1"),
    case("segment-ids-not-contiguous", ValueError, call("cu_seqlens_from_segment_ids", np.array([0, 1, 0])),
         "segment_ids", "non-decreasing", "contiguous", "segment_ids[2] = 0"),
    case("segment-ids-padding-first", ValueError, call("cu_seqlens_from_segment_ids", np.array([-1, 0])),
         "segment_ids", "padding (-1) before a real token", "at 1"),
    case("segment-ids-below-padding", ValueError, call("cu_seqlens_from_segment_ids", np.array([0, -2])),
         "segment_ids", ">= 0", "-1 (padding)", "-2"),
    case("segment-ids-2d", ValueError, call("cu_seqlens_from_segment_ids", np.array([[0, 1]])),
         "segment_ids", "(total,)", "(1, 2)"),
    case("num-segments-too-small", ValueError, call("cu_seqlens_from_segment_ids", np.array([0, 2]), num_segments=2),
         "num_segments=2", "segment id 2", "at least 3"),
    case("num-segments-bool", TypeError, call("cu_seqlens_from_segment_ids", np.array([0]), num_segments=True),
         "num_segments", "int", "True"),
    case("unpad-valid-hf-ints", TypeError, call("unpad", np.zeros((2, 3, 1), F32), HF_MASK),
         "valid", "boolean", "int64", "refmask.from_hf"),
    case("unpad-x-valid-mismatch", ValueError, call("unpad", np.zeros((2, 4, 1), F32), B23),
         "x", "(B, L, ...)", "(2, 3)", "(2, 4, 1)"),
    case("unpad-x-1d", ValueError, call("unpad", np.zeros(3, F32), np.ones((1, 3), bool)), "x", "(B, L, ...)", "(3,)"),
    case("unpad-valid-1d", ValueError, call("unpad", np.zeros((1, 3), F32), B3), "valid", "(B, L)", "(3,)"),
    case("unpad-x-none", TypeError, call("unpad", None, B23), "x", "array", "None"),
    case("pad-index-beyond-layout", ValueError, call("pad", PACKED, np.array([0, 6]), 2, 3),
         "indices", "[0, 6)", "batch=2", "max_len=3", "6"),
    case("pad-index-negative", ValueError, call("pad", PACKED, np.array([-1, 0]), 2, 3), "indices", "-1"),
    case("pad-indices-repeated", ValueError, call("pad", PACKED, np.array([1, 1]), 2, 3), "indices", "distinct"),
    case("pad-rows-mismatch", ValueError, call("pad", np.zeros((3, 1), F32), np.array([0, 1]), 2, 3),
         "packed", "(total, ...)", "total = 2", "(3, 1)"),
    case("pad-indices-2d", ValueError, call("pad", PACKED, np.array([[0, 1]]), 2, 3), "indices", "(total,)", "(1, 2)"),
    case("pad-indices-float", TypeError, call("pad", PACKED, np.array([0.0, 1.0]), 2, 3),
         "indices", "integer", "float64"),
    case("pad-batch-float", TypeError, call("pad", PACKED, np.array([0, 1]), 2.0, 3), "batch", "int", "2.0"),
    case("pad-max-len-negative", ValueError, call("pad", PACKED, np.array([0, 1]), 2, -3), "max_len", ">= 0", "-3"),
    case("position-ids-valid-hf-ints", TypeError, call("position_ids_from_padding", HF_MASK),
         "valid", "boolean", "refmask.from_hf"),
    case("position-ids-valid-1d", ValueError, call("position_ids_from_padding", B3), "valid", "(B, L)", "(3,)"),
    case("positions-in-segments-float", TypeError, call("positions_in_segments", np.zeros((1, 3))),
         "segment_ids", "integer", "float64"),
    case("positions-in-segments-1d", ValueError, call("positions_in_segments", np.array([0, 0, 1])),
         "segment_ids", "(B, L)", "(3,)"),
    case("segment-ids-from-positions-bool", TypeError, call("segment_ids_from_positions", B23),
         "position_ids", "integer", "bool"),
    case("segment-ids-from-positions-1d", ValueError, call("segment_ids_from_positions", np.array([0, 1, 0])),
         "position_ids", "(B, L)", "(3,)"),
]

# softcap, sinks, return_lse, ALiBi and the FlexAttention score_mods
SINKS_BROADCAST = ("sinks of shape", "does not broadcast", "rows")
KERNEL_FEATURES = [
    case("softcap-zero", ValueError, call("attention", Q, K, V, softcap=0.0), "softcap", "> 0", "0.0"),
    case("softcap-negative", ValueError, call("attention_weights", Q, K, softcap=-1.0), "softcap", "> 0", "-1.0"),
    case("softcap-nan", ValueError, call("attention", Q, K, V, softcap=math.nan), "softcap", NAN, "finite"),
    case("softcap-inf", ValueError, call("attention_weights", Q, K, softcap=math.inf), "softcap", "inf", "finite"),
    case("softcap-bool", TypeError, call("attention", Q, K, V, softcap=True), "softcap", "True", "number"),
    case("softcap-string", TypeError, call("attention", Q, K, V, softcap="50"), "softcap", "'50'", "number"),
    case("softcap-array", TypeError, call("attention_weights", Q, K, softcap=[50.0]), "softcap", "[50.0]", "number"),
    case("sinks-per-head-wrong-length", ValueError, call("attention", Q, K, V, sinks=np.zeros(3, F32)),
         "sinks of shape (3,)", "one logit per query head", "(H,) = (2,)"),
    case("sinks-rows-do-not-broadcast", ValueError, call("attention_weights", Q, K, sinks=np.zeros((2, 4), F32)),
         "(2, 4)", "(1, 2, 3)", *SINKS_BROADCAST),
    case("sinks-like-scores", ValueError, call("attention", Q, K, V, sinks=np.zeros((1, 2, 3, 6), F32)),
         "(1, 2, 3, 6)", *SINKS_BROADCAST),
    case("sinks-int", TypeError, call("attention", Q, K, V, sinks=np.zeros(2, np.int64)),
         "sinks", "int64", "floating"),
    case("sinks-bool", TypeError, call("attention_weights", Q, K, sinks=np.ones(2, bool)), "sinks", "bool", "floating"),
    case("sinks-strings", TypeError, numpy_args("attention", Q, K, V, sinks=np.array(["0", "1"])),
         "sinks", STRINGS, "floating"),
    case("sinks-softmax-per-head", ValueError, call("masked_softmax", S4D, sinks=np.zeros(5, F32)),
         "sinks of shape (5,)", "(H,) = (3,)", "(1, T)"),
    case("sinks-softmax-axis", ValueError, call("masked_softmax", S23, axis=0, sinks=np.zeros(2, F32)),
         "sinks of shape (2,)", "(3,)", *SINKS_BROADCAST),
    case("sinks-softmax-int", TypeError, call("masked_softmax", S23, sinks=np.zeros(2, np.int32)),
         "sinks", "int32", "floating"),
    case("return-lse-int", TypeError, call("attention", Q, K, V, return_lse=1), "return_lse", "1", A_BOOL),
    case("return-lse-string", TypeError, call("attention", Q, K, V, return_lse="True"),
         "return_lse", "'True'", A_BOOL),
    case("alibi-heads-zero", ValueError, call("alibi_slopes", 0), "num_heads", ">= 1", "0"),
    case("alibi-heads-bool", TypeError, call("alibi_bias", True, 3), "num_heads", "int", "True"),
    case("alibi-heads-float", TypeError, call("alibi_slopes", 8.0), "num_heads", "int", "8.0"),
    case("alibi-q-len-negative", ValueError, call("alibi_bias", 2, -1), "q_len", ">= 0", "-1"),
    case("alibi-align", ValueError, call("alibi_bias", 2, 3, align="left"), "align", ALIGNS, "'left'"),
    case("alibi-offset-float", TypeError, call("alibi_bias", 2, 3, offset=0.5), "offset", "int", "0.5"),
    case("alibi-offset-beyond-float64", ValueError, call("alibi_bias", 2, 3, offset=2**60),
         "offset", "2**53", "positions"),
    case("alibi-dtype-ambiguous", TypeError, call("alibi_bias", 2, 3, dtype="float"), "dtype", "ambiguous"),
    case("alibi-dtype-int", TypeError, call("alibi_slopes", 2, dtype="int32"), "dtype", "floating", "'int32'"),
    case("score-mod-softcap-zero", ValueError, plain("refmask._torch_score_mod:softcap", 0.0),
         "softcap", "> 0", "0.0", on=("torch",)),
    case("score-mod-softcap-none", TypeError, plain("refmask._torch_score_mod:softcap", None),
         "softcap", "None", on=("torch",)),
    case("score-mod-alibi-heads", ValueError, plain("refmask._torch_score_mod:alibi", 0, 4),
         "num_heads", ">= 1", on=("torch",)),
]

CASES: list[Bad] = [
    *NON_BOOL_MASKS, *BROADCASTING, *NONE_FOR_AN_ARRAY, *AXIS, *SCALARS, *FROM_ADDITIVE, *DTYPES,
    *TO_TORCH_MHA, *LENGTHS_AND_IDS, *POSITIONS_AND_CHOICES, *ATTENTION_SHAPES, *DEVICES, *TORCH_ONLY,
    *SDPA_ONLY, *JAX_ONLY, *TESTING, *VARLEN, *KERNEL_FEATURES,
]


# ----------------------------------------------------------------------------------------------
# running a case


def _framework_or_skip(backend: str) -> None:
    if backend != "numpy":
        pytest.importorskip(backend)


@contextlib.contextmanager
def _x64_if_jax(backend: str):
    """int64 and float64 inputs must reach the jax backend as int64 and float64."""
    if backend != "jax":
        yield
        return
    with jax_x64():
        yield


def _resolve(fn: str | Callable[..., Any]) -> Callable[..., Any]:
    if callable(fn):
        return fn
    if ":" in fn:
        module, attr = fn.split(":")
        return getattr(importlib.import_module(module), attr)
    return getattr(refmask, fn)


def _prepared(c: Call, backend: str) -> Callable[[], Any]:
    """The call with its inputs converted to `backend` (done here, outside pytest.raises)."""

    def convert(x: Any) -> Any:
        if isinstance(x, Lazy):
            return x.make()
        if isinstance(x, np.ndarray) and c.convert:
            return _backends.from_numpy(x, backend)
        return x

    fn = _resolve(c.fn)
    args = tuple(convert(a) for a in c.args)
    kwargs = {k: convert(v) for k, v in c.kwargs.items()}
    if c.takes_backend:
        kwargs["backend"] = backend
    return lambda: fn(*args, **kwargs)


def raising_frame(err: BaseException) -> tuple[str, int]:
    """(file, line) of the frame that raised `err`: the last frame of its traceback."""
    tb = err.__traceback__
    assert tb is not None
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_filename, tb.tb_lineno


def _inside_refmask(filename: str) -> bool:
    try:
        return Path(filename).resolve().is_relative_to(REFMASK_DIR)
    except (OSError, ValueError):
        return False


def _raised(c: Bad, backend: str) -> BaseException:
    """Run the case on `backend`; the exception it raised (any), or a test failure if none."""
    run = _prepared(c.call, backend)
    try:
        result = run()
    except Exception as err:  # every exception is judged by assert_refmask_error
        return err
    pytest.fail(f"{c.id} on {backend}: no exception; returned {type(result).__name__} {result!r:.200}")


def assert_refmask_error(err: BaseException, expected: type[Exception], says) -> None:
    """err is refmask's own `expected` error, raised inside refmask, with a message that says `says`."""
    kind = type(err)
    own_subclass = issubclass(kind, expected) and kind.__module__.split(".")[0] == "refmask"
    where, line = raising_frame(err)
    assert kind is expected or own_subclass, (
        f"raised {kind.__module__}.{kind.__qualname__} (from {where}:{line}): {err}; expected {expected.__name__}"
    )
    assert _inside_refmask(where), f"raised inside {where}:{line}, not by refmask itself: {kind.__name__}: {err}"
    message = str(err)
    missing = [f for f in says if not any(alt in message for alt in ((f,) if isinstance(f, str) else f))]
    assert not missing, f"message {message!r} lacks {missing}"


def _params(cases: list[Bad], backends: tuple[str, ...] = BACKENDS):
    for c in cases:
        for backend in c.on:
            if backend in backends:
                yield pytest.param(c, backend, id=f"{backend}-{c.id}")


def _skip_if_unavailable(c: Bad, backend: str) -> None:
    _framework_or_skip(backend)
    if c.unavailable is not None:
        with _x64_if_jax(backend):
            reason = c.unavailable(backend)
        if reason:
            pytest.skip(reason)


def test_case_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


@pytest.mark.parametrize("c, backend", list(_params(CASES)))
def test_bad_input_raises_refmasks_own_clear_error(c: Bad, backend: str):
    _skip_if_unavailable(c, backend)
    with _x64_if_jax(backend):
        err = _raised(c, backend)
    assert_refmask_error(err, c.error, c.says)


@pytest.mark.parametrize("c, backend", list(_params(
    [c for c in CASES if c.same_message and "numpy" in c.on and c.call.takes_backend], FRAMEWORKS)))
def test_backend_message_is_the_oracles(c: Bad, backend: str):
    _skip_if_unavailable(c, backend)
    expected = _raised(c, "numpy")
    with _x64_if_jax(backend):
        actual = _raised(c, backend)
    assert (type(actual), str(actual)) == (type(expected), str(expected))


# ----------------------------------------------------------------------------------------------
# accepted calls whose meaning must be the same everywhere

# What each spelling of to_additive's dtype means (None: refused, naming the spelling).
DTYPE_SPELLINGS: list[tuple[str, Any, str | None]] = [
    ("float16", "float16", "float16"),
    ("bfloat16", "bfloat16", "bfloat16"),
    ("float32", "float32", "float32"),
    ("float64", "float64", "float64"),
    ("fp16", "fp16", "float16"),
    ("fp32", "fp32", "float32"),
    ("fp64", "fp64", "float64"),
    ("bf16", "bf16", "bfloat16"),
    ("half", "half", "float16"),
    ("double", "double", "float64"),
    ("np.float16", np.float16, "float16"),
    ("np.dtype-float32", np.dtype("float32"), "float32"),
    ("np.float64", np.float64, "float64"),
    ("ml_dtypes.bfloat16", Lazy(lambda: pytest.importorskip("ml_dtypes").bfloat16), "bfloat16"),
    ("jnp.bfloat16", _jax_numpy(lambda jnp: jnp.bfloat16), "bfloat16"),
    ("jnp.float32", _jax_numpy(lambda jnp: jnp.float32), "float32"),
    ("jnp.dtype-float16", _jax_numpy(lambda jnp: jnp.dtype("float16")), "float16"),
    ("torch.float16", _torch(lambda t: t.float16), "float16"),
    ("torch.bfloat16", _torch(lambda t: t.bfloat16), "bfloat16"),
    ("torch.float64", _torch(lambda t: t.float64), "float64"),
    ("torch.half", _torch(lambda t: t.half), "float16"),
    ("single", "single", "float32"),
    ("float", "float", None),
    ("Float32", "Float32", None),
    ("float8", "float8", None),
    ("torch.int32", _torch(lambda t: t.int32), None),
]


def _canonical_dtype_name(x: Any) -> str:
    return str(x.dtype).removeprefix("torch.")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spelling, dtype, means", DTYPE_SPELLINGS, ids=[s[0] for s in DTYPE_SPELLINGS])
def test_dtype_spelling_means_the_same_on_every_backend(spelling, dtype, means, backend):
    _framework_or_skip(backend)
    with _x64_if_jax(backend):
        if isinstance(dtype, Lazy):
            dtype = dtype.make()
        mask = _backends.from_numpy(oracle.causal_mask(3, 4), backend)
        if means is None:
            with pytest.raises(TypeError) as raised:
                refmask.to_additive(mask, dtype, backend=backend)
            assert_refmask_error(raised.value, TypeError, ("dtype", repr(dtype) if isinstance(dtype, str) else ""))
            if spelling == "float":
                assert_refmask_error(raised.value, TypeError, ("'float'", "float32", "float64"))
            return
        bias = refmask.to_additive(mask, dtype, backend=backend)
        assert _canonical_dtype_name(bias) == means
        expected = oracle.to_additive(oracle.causal_mask(3, 4), means)
        assert _backends.to_numpy(bias).tobytes() == expected.tobytes()


REMEMBERED_SIGNATURE_VARIANTS = [
    ("axis-bool", TypeError, lambda s, m: {"scores": s, "mask": m, "axis": True}, ("axis", "int", "True")),
    ("axis-out-of-range", ValueError, lambda s, m: {"scores": s, "mask": m, "axis": 2}, ("axis", "2")),
    ("policy", ValueError, lambda s, m: {"scores": s, "mask": m, "fully_masked": "Zero"}, ("fully_masked",)),
    ("accuracy", ValueError, lambda s, m: {"scores": s, "mask": m, "accuracy": "Fast"}, ("accuracy",)),
    ("mask-dtype", TypeError, lambda s, m: {"scores": s, "mask": m[None] * 1}, ("mask", "bool")),
    ("mask-shape", ValueError, lambda s, m: {"scores": s, "mask": m[:, :2]}, ("mask", "broadcast")),
    ("scores-dtype", TypeError, lambda s, m: {"scores": s > 0, "mask": m}, ("scores", "floating")),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant, error, kwargs, says", REMEMBERED_SIGNATURE_VARIANTS,
                         ids=[v[0] for v in REMEMBERED_SIGNATURE_VARIANTS])
def test_a_remembered_signature_lets_nothing_else_through(variant, error, kwargs, says, backend):
    """masked_softmax remembers the checks' decisions per signature of its arguments (types, shapes, dtypes,
    options): after an accepted call, each variant of it that is wrong in one respect is still refused."""
    _framework_or_skip(backend)
    with _x64_if_jax(backend):
        scores = _backends.from_numpy(np.zeros((2, 3), F32), backend)
        mask = _backends.from_numpy(oracle.causal_mask(2, 3), backend)
        for _ in range(2):  # the second call is answered from what the first decided
            w = refmask.masked_softmax(scores, mask, axis=-1, fully_masked="zero", accuracy="fast")
            np.testing.assert_array_equal(_backends.to_numpy(w), oracle.masked_softmax(np.zeros((2, 3), F32),
                                                                                     oracle.causal_mask(2, 3)))
        with pytest.raises(error) as raised:
            refmask.masked_softmax(**kwargs(scores, mask))
    assert_refmask_error(raised.value, error, says)


@pytest.mark.parametrize("backend", BACKENDS)
def test_to_torch_mha_reads_a_square_2d_mask_as_attn_mask(backend):
    """A 2-D (B, S) key-padding array with B == T cannot be told from a (T, S) mask by its shape:
    to_torch_mha reads every 2-D mask as (T, S), so it becomes attn_mask (True = masked), never a
    key_padding_mask. Passing q_len makes the (B, S) mistake evident when B != q_len (refused above)."""
    _framework_or_skip(backend)
    keep = np.array([[True, True, False], [True, False, False], [True, True, True]])
    attn_mask, key_padding_mask = refmask.to_torch_mha(_backends.from_numpy(keep, backend), backend=backend)
    assert key_padding_mask is None
    np.testing.assert_array_equal(_backends.to_numpy(attn_mask), ~keep)
    attn_mask, key_padding_mask = refmask.to_torch_mha(_backends.from_numpy(keep, backend), q_len=3, backend=backend)
    assert key_padding_mask is None
    np.testing.assert_array_equal(_backends.to_numpy(attn_mask), ~keep)


TORCH_TENSORS = {
    "bfloat16": lambda torch, x: torch.from_numpy(x).to(torch.bfloat16),
    "requires-grad": lambda torch, x: torch.from_numpy(x).requires_grad_(True),
    "bfloat16-requires-grad": lambda torch, x: torch.from_numpy(x).to(torch.bfloat16).requires_grad_(True),
}


@pytest.mark.parametrize("backend", ["numpy", "jax"])
@pytest.mark.parametrize("kind", TORCH_TENSORS)
def test_torch_tensors_given_to_another_backend_are_converted(kind, backend):
    """A torch tensor that NumPy cannot read directly (bfloat16, requires_grad) passed with
    backend="numpy" or "jax" is converted, values and dtype unchanged: the result is the oracle's on
    the same values, in the backend's array type."""
    torch = pytest.importorskip("torch")
    _framework_or_skip(backend)
    from refmask.testing import assert_attention_close, assert_weights_close

    rng = np.random.default_rng(0)
    scores = rng.standard_normal((2, 3, 4)).astype(F32)
    q, k, v = (rng.standard_normal((1, 2, n, 4)).astype(F32) for n in (3, 5, 5))
    mask = oracle.causal_mask(3, 4)
    scores_t = TORCH_TENSORS[kind](torch, scores)
    q_t, k_t, v_t = (TORCH_TENSORS[kind](torch, x) for x in (q, k, v))
    with _x64_if_jax(backend):
        weights = refmask.masked_softmax(scores_t, torch.from_numpy(mask), backend=backend)
        out = refmask.attention(q_t, k_t, v_t, is_causal=True, backend=backend)
    assert _backends.array_backend(weights) == backend and _backends.array_backend(out) == backend
    same_values = [_backends.to_numpy(x) for x in (scores_t, q_t, k_t, v_t)]
    expected_w = oracle.masked_softmax(same_values[0], mask)
    expected_out = oracle.attention(*same_values[1:], is_causal=True)
    assert_weights_close(weights, expected_w, mask=mask, scores=same_values[0])
    assert_attention_close(out, expected_out)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_backend_whose_framework_is_missing_says_how_to_install_it(monkeypatch, backend):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == backend else real_find_spec(name, *a, **k))
    monkeypatch.delitem(sys.modules, backend, raising=False)  # as if it had never been imported
    monkeypatch.delitem(sys.modules, f"refmask.backends.{backend}", raising=False)  # nor its backend
    monkeypatch.setattr(_backends, "_loaded", {}, raising=False)
    with pytest.raises(ImportError) as raised:
        refmask.causal_mask(3, backend=backend)
    message = str(raised.value)
    assert f'backend "{backend}"' in message and "not installed" in message
    assert f'pip install "refmask[{backend}]"' in message
    assert backend not in refmask.installed_backends()
    assert "numpy" in refmask.installed_backends()


def test_the_check_refuses_an_error_raised_inside_a_framework():
    """assert_refmask_error itself: a ValueError from inside NumPy, whose message happens to hold
    every fragment, does not pass, nor does a refmask message of the wrong class."""
    with pytest.raises(ValueError) as raised:
        np.broadcast_arrays(np.ones((2, 3)), np.ones(4))
    with pytest.raises(AssertionError, match="not by refmask itself"):
        assert_refmask_error(raised.value, ValueError, ("shape",))
    with pytest.raises(TypeError) as raised_type:
        refmask.masked_softmax(S23, HF_MASK)
    assert_refmask_error(raised_type.value, TypeError, ("mask",))
    with pytest.raises(AssertionError, match="expected ValueError"):
        assert_refmask_error(raised_type.value, ValueError, ("mask",))
