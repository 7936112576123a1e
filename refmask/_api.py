"""The public API: each function picks a backend and calls that backend's function of the same name.

backend=None infers the backend from the array arguments (NumPy if there are none); "numpy" is the
oracle. The definitions are the oracle's docstrings, copied onto these functions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from . import oracle
from ._backends import resolve

F = TypeVar("F", bound=Callable[..., Any])


def _defined_by(oracle_fn: Callable[..., Any]) -> Callable[[F], F]:
    def decorate(fn: F) -> F:
        fn.__doc__ = (oracle_fn.__doc__ or "") + (
            "\n\n    backend: None (infer from the arrays; NumPy if there are none), \"numpy\" (the oracle),"
            ' "jax" or "torch".\n'
        )
        return fn

    return decorate


# masks from positions


@_defined_by(oracle.causal_mask)
def causal_mask(
    q_len: int,
    kv_len: int | None = None,
    *,
    align: str = "top_left",
    offset: int = 0,
    backend: str | None = None,
    device: Any = None,
) -> Any:
    return resolve(backend).causal_mask(q_len, kv_len, align=align, offset=offset, device=device)


@_defined_by(oracle.sliding_window_mask)
def sliding_window_mask(
    q_len: int,
    kv_len: int | None = None,
    *,
    window: int | tuple[int, int],
    align: str = "top_left",
    offset: int = 0,
    backend: str | None = None,
    device: Any = None,
) -> Any:
    return resolve(backend).sliding_window_mask(q_len, kv_len, window=window, align=align, offset=offset, device=device)


@_defined_by(oracle.chunked_mask)
def chunked_mask(
    q_len: int,
    kv_len: int | None = None,
    *,
    chunk_size: int,
    align: str = "top_left",
    offset: int = 0,
    backend: str | None = None,
    device: Any = None,
) -> Any:
    return resolve(backend).chunked_mask(q_len, kv_len, chunk_size=chunk_size, align=align, offset=offset, device=device)


# masks from data


@_defined_by(oracle.padding_mask)
def padding_mask(
    lengths: Any, max_len: int, *, side: str = "right", backend: str | None = None, device: Any = None
) -> Any:
    return resolve(backend, lengths).padding_mask(lengths, max_len, side=side, device=device)


@_defined_by(oracle.padding_mask_from_ids)
def padding_mask_from_ids(ids: Any, pad_id: int, *, backend: str | None = None, device: Any = None) -> Any:
    return resolve(backend, ids).padding_mask_from_ids(ids, pad_id, device=device)


@_defined_by(oracle.attention_padding_mask)
def attention_padding_mask(
    kv_valid: Any, q_valid: Any = None, *, backend: str | None = None, device: Any = None
) -> Any:
    return resolve(backend, kv_valid, q_valid).attention_padding_mask(kv_valid, q_valid, device=device)


@_defined_by(oracle.segment_mask)
def segment_mask(
    q_segment_ids: Any,
    kv_segment_ids: Any = None,
    *,
    pad_id: int | None = None,
    backend: str | None = None,
    device: Any = None,
) -> Any:
    return resolve(backend, q_segment_ids, kv_segment_ids).segment_mask(
        q_segment_ids, kv_segment_ids, pad_id=pad_id, device=device
    )


@_defined_by(oracle.prefix_lm_mask)
def prefix_lm_mask(
    prefix_lengths: Any,
    q_len: int,
    kv_len: int | None = None,
    *,
    align: str = "top_left",
    backend: str | None = None,
    device: Any = None,
) -> Any:
    return resolve(backend, prefix_lengths).prefix_lm_mask(prefix_lengths, q_len, kv_len, align=align, device=device)


@_defined_by(oracle.and_masks)
def and_masks(*masks: Any, backend: str | None = None) -> Any:
    return resolve(backend, *masks).and_masks(*masks)


@_defined_by(oracle.or_masks)
def or_masks(*masks: Any, backend: str | None = None) -> Any:
    return resolve(backend, *masks).or_masks(*masks)


# converters


@_defined_by(oracle.to_additive)
def to_additive(mask: Any, dtype: Any = "float32", *, fill: Any = "min", backend: str | None = None) -> Any:
    return resolve(backend, mask).to_additive(mask, dtype, fill=fill)


@_defined_by(oracle.from_additive)
def from_additive(bias: Any, *, threshold: Any = "min", backend: str | None = None) -> Any:
    return resolve(backend, bias).from_additive(bias, threshold=threshold)


@_defined_by(oracle.from_torch_mha)
def from_torch_mha(
    attn_mask: Any = None,
    key_padding_mask: Any = None,
    *,
    num_heads: int | None = None,
    threshold: Any = "min",
    backend: str | None = None,
) -> Any:
    return resolve(backend, attn_mask, key_padding_mask).from_torch_mha(
        attn_mask, key_padding_mask, num_heads=num_heads, threshold=threshold
    )


@_defined_by(oracle.to_torch_mha)
def to_torch_mha(
    mask: Any, *, num_heads: int | None = None, q_len: int | None = None, backend: str | None = None
) -> tuple[Any, Any]:
    return resolve(backend, mask).to_torch_mha(mask, num_heads=num_heads, q_len=q_len)


@_defined_by(oracle.from_hf)
def from_hf(attention_mask: Any, *, backend: str | None = None) -> Any:
    return resolve(backend, attention_mask).from_hf(attention_mask)


# softmax and attention


@_defined_by(oracle.masked_softmax)
def masked_softmax(
    scores: Any, mask: Any = None, *, axis: int = -1, fully_masked: str = "zero", backend: str | None = None
) -> Any:
    return resolve(backend, scores, mask).masked_softmax(scores, mask, axis=axis, fully_masked=fully_masked)


@_defined_by(oracle.attention_weights)
def attention_weights(
    q: Any,
    k: Any,
    mask: Any = None,
    *,
    bias: Any = None,
    scale: float | None = None,
    fully_masked: str = "zero",
    backend: str | None = None,
) -> Any:
    return resolve(backend, q, k, mask, bias).attention_weights(
        q, k, mask, bias=bias, scale=scale, fully_masked=fully_masked
    )


@_defined_by(oracle.attention)
def attention(
    q: Any,
    k: Any,
    v: Any,
    mask: Any = None,
    *,
    bias: Any = None,
    scale: float | None = None,
    is_causal: bool = False,
    fully_masked: str = "zero",
    return_weights: bool = False,
    backend: str | None = None,
) -> Any:
    return resolve(backend, q, k, v, mask, bias).attention(
        q,
        k,
        v,
        mask,
        bias=bias,
        scale=scale,
        is_causal=is_causal,
        fully_masked=fully_masked,
        return_weights=return_weights,
    )
