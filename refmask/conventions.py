"""Other libraries' window arguments as refmask's window=(left, right): pass the result to sliding_window_mask.

refmask's window=(left, right) keeps key j for the aligned query i' iff i' - left <= j <= i' + right, either
side None for unbounded; an int w means (w, w). Each function here takes one library's window argument as
that library documents and implements it, and returns the (left, right) that gives the same mask, with the
`align=` to use beside it (the library's own alignment of queries and keys):

    refmask.sliding_window_mask(T, S, window=conventions.hf_sliding_window(4096))

The pitfall: an int means different windows in different libraries. refmask's window=w, like
jax.nn.dot_product_attention's local_window_size=w, is (w, w): w keys on each side, 2w + 1 in all.
Hugging Face's sliding_window=w is (w - 1, 0): w keys in all, the query's own and the w - 1 before it.
attention-gym's generate_sliding_window(w) is (w, 0): w + 1 keys. So sliding_window_mask(T, window=w) with
a Hugging Face config's w is not that model's mask; window=hf_sliding_window(w) is.

Pure Python (NumPy only through refmask's argument checks); bad arguments raise ValueError or TypeError
naming them, as everywhere in refmask.
"""

from __future__ import annotations

from . import _validate as check

__all__ = [
    "attention_gym_sliding_window",
    "flash_attn_window_size",
    "hf_sliding_window",
    "jax_local_window_size",
    "onnx_window_size",
    "splash_local_mask",
    "xformers_local_attention",
]

Window = tuple[int | None, int | None]


def _pair(name: str, value: object) -> tuple[object, object]:
    if not (isinstance(value, tuple | list) and len(value) == 2):
        raise TypeError(f"{name} must be a pair (left, right); got {value!r}")
    return value[0], value[1]


def hf_sliding_window(sliding_window: int) -> Window:
    """Hugging Face's `sliding_window=w` (a model config's): (w - 1, 0), with align="top_left".

    transformers' masking_utils.py keeps kv_idx > q_idx - sliding_window (sliding_window_overlay) and
    kv_idx <= q_idx (causal_mask_function): the query's own key and the w - 1 before it. Its flash-attention
    path passes window_size=(w - 1, w - 1) with causal=True, the same window (modeling_flash_attention_utils.py).
    Positions are absolute (cache positions), so with a KV cache use align="bottom_right". w >= 1.
    """
    w = check.integer("sliding_window", sliding_window, minimum=1)
    return w - 1, 0


def attention_gym_sliding_window(window_size: int) -> Window:
    """attention-gym's `generate_sliding_window(window_size=w)`: (w, 0), with align="top_left".

    attn_gym/masks/sliding_window.py keeps q_idx - kv_idx <= window_size and q_idx >= kv_idx (and_masks with
    causal_mask): the query's own key and the w before it, w + 1 in all. A mask_mod sees raw indices, so the
    alignment is top-left. w >= 0.
    """
    return check.integer("window_size", window_size, minimum=0), 0


def jax_local_window_size(local_window_size: int | tuple[int, int] | None) -> Window:
    """jax.nn.dot_product_attention's `local_window_size`: int w -> (w, w), (l, r) -> (l, r), None -> no window.

    jax's nn/functions.py reads an int w as (w, w) and keeps query_pos <= key_pos + left and
    query_pos >= key_pos - right on raw positions (_get_window_mask): top-left alignment. None is no window,
    here (None, None). jax does not read a negative side as unbounded: it would shift the band past the
    diagonal, which no (left, right) here means, so it is refused.
    """
    if local_window_size is None:
        return None, None
    if isinstance(local_window_size, tuple | list):
        left, right = _pair("local_window_size", local_window_size)
        return (
            check.integer("local_window_size[0] (left)", left, minimum=0),
            check.integer("local_window_size[1] (right)", right, minimum=0),
        )
    w = check.integer("local_window_size", local_window_size, minimum=0)
    return w, w


def splash_local_mask(window_size: tuple[int | None, int | None]) -> Window:
    """Splash attention's `LocalMask(shape, window_size=(l, r), offset)`: (l, r), None sides unbounded.

    jax's pallas/ops/tpu/splash_attention/splash_attention_mask.py keeps q + offset - l <= kv and
    q + offset + r >= kv on raw indices, a None side unbounded (both None: everything). So
    LocalMask(shape, window_size, offset) is sliding_window_mask(*shape, window=splash_local_mask(window_size),
    offset=offset), top-left. A negative side would shift the band instead of widening it: refused.
    """
    left, right = _pair("window_size", window_size)
    return (
        None if left is None else check.integer("window_size[0] (left)", left, minimum=0),
        None if right is None else check.integer("window_size[1] (right)", right, minimum=0),
    )


def flash_attn_window_size(window_size: tuple[int, int], *, causal: bool = False) -> Window:
    """flash-attn's `window_size=(l, r)` (flash_attn_func, flash_attn_varlen_func): a negative side is
    unbounded, so (-1, -1) is no window; with align="bottom_right".

    flash_attn_interface.py documents the window [i + seqlen_k - seqlen_q - l, i + seqlen_k - seqlen_q + r],
    inclusive, bottom-right aligned; csrc/flash_attn/flash_api.cpp (set_params_fprop) treats any negative
    side as unbounded and, with causal=True, sets the right side to 0. causal=True here applies that cap, so
    the result alone is flash-attn's mask (use it with varlen_mask(..., window=...) for the varlen functions).
    """
    left, right = _pair("window_size", window_size)
    lo, hi = check.integer("window_size[0] (left)", left), check.integer("window_size[1] (right)", right)
    capped = 0 if check.flag("causal", causal) else (None if hi < 0 else hi)
    return (None if lo < 0 else lo), capped


def onnx_window_size(left_window_size: int = -1, right_window_size: int = -1) -> Window:
    """ONNX Attention's (opset 25) `left_window_size` / `right_window_size`: -1 (the default) unbounded.

    onnx/defs/nn/defs.cc and onnx/reference/ops/op_attention.py (_apply_sliding_window): a query at
    p = offset + i keeps keys p - left <= j <= p + right for each bound that is not -1; values below -1 are
    invalid there and refused here. offset is past_key's length with a KV cache (then, with S = past + T,
    align="bottom_right"), nonpad_kv_seqlen - T per example with an external cache, else 0 (top-left).
    """
    left = check.integer("left_window_size", left_window_size, minimum=-1)
    right = check.integer("right_window_size", right_window_size, minimum=-1)
    return (None if left == -1 else left), (None if right == -1 else right)


def xformers_local_attention(window_left: int, window_right: int) -> Window:
    """xformers' `LocalAttentionFromBottomRightMask(window_left, window_right)`: (window_left, window_right),
    with align="bottom_right".

    xformers/ops/fmha/attn_bias.py keeps q - window_left <= k + s <= q + window_right, s = num_queries -
    num_keys, inclusive on both sides (materialize: triu(shift - window_left), tril(shift + window_right),
    shift = num_keys - num_queries), so a row sees window_left + 1 + window_right keys. Negative windows are
    refused there and here.
    """
    return (
        check.integer("window_left", window_left, minimum=0),
        check.integer("window_right", window_right, minimum=0),
    )
